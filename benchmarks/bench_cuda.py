"""GPU: every optimizer of tests/cases.py through lrfast's CUDA back end, against
torch.optim's fused (or foreach) CUDA step and a device-to-device copy moving
the same bytes (the bandwidth bound), on one 50M tensor, 1000 tensors of 1000
and the 146-tensor transformer-like list. Each timed call ends with a device
synchronisation. Skipped without a real GPU (the simulator is not timed).

Run: pytest benchmarks/bench_cuda.py. Compare within a group.
"""

import pytest

cuda = pytest.importorskip("numba.cuda")
if cuda.config.ENABLE_CUDASIM or not cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from lrfast.cuda import bench  # noqa: E402
from lrfast.workloads import many_small_shapes, transformer_like_shapes  # noqa: E402
from cases import CASES  # noqa: E402

LAYOUTS = {"1x50000000": [(50_000_000,)], "1000x1000": many_small_shapes(),
           "transformer-146": transformer_like_shapes()}


@pytest.mark.parametrize("impl", ("lrfast", "torch", "copy"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_step(benchmark, case, layout, impl):
    benchmark.group = f"cuda {case.name} {layout}"
    shapes = LAYOUTS[layout]
    step, traffic = bench.lrfast_step(case.name, shapes, "float32")
    sync = cuda.synchronize
    if impl == "torch":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("torch without CUDA")
        step, _ = bench.torch_step_of(torch, case.name, shapes, "float32")
        sync = torch.cuda.synchronize
    elif impl == "copy":
        step = bench.copy_of(traffic // 2)

    def fn():
        step()
        sync()

    fn()  # compile the kernels, build the tables
    benchmark(fn)
