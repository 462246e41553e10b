"""GPU: every optimizer of tests/cases.py through lrfast's CUDA back end, against
torch.optim's fused (or foreach) CUDA step and a device-to-device copy moving
the same bytes (the bandwidth bound), on one 50M tensor, 1000 tensors of 1000
and the 146-tensor transformer-like list; the same through ``lrfast.torch`` on
torch CUDA tensors (the host cost a torch user pays); and the global norm.
Each timed call ends with a device synchronisation. Skipped without a real GPU
(the simulator is not timed).

Run: pytest benchmarks/bench_cuda.py. Compare within a group.
"""

import pytest

cuda = pytest.importorskip("numba.cuda")
if cuda.config.ENABLE_CUDASIM or not cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from lrfast.cuda import bench  # noqa: E402
from lrfast.workloads import many_small_shapes, transformer_like_shapes  # noqa: E402
from cases import CUDA_CASES  # noqa: E402

LAYOUTS = {"1x50000000": [(50_000_000,)], "1000x1000": many_small_shapes(),
           "transformer-146": transformer_like_shapes()}


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


def _timed(benchmark, step, sync):
    def fn():
        step()
        sync()

    fn()  # compile the kernels, build the tables
    benchmark(fn)


@pytest.mark.parametrize("impl", ("lrfast", "torch", "copy"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CUDA_CASES, ids=str)
def test_step(benchmark, case, layout, impl):
    benchmark.group = f"cuda {case.name} {layout}"
    shapes = LAYOUTS[layout]
    step, traffic = bench.lrfast_step(case.name, shapes, "float32")
    sync = cuda.synchronize
    if impl == "torch":
        torch = _torch_cuda()
        step, _ = bench.torch_step_of(torch, case.name, shapes, "float32")
        sync = torch.cuda.synchronize
    elif impl == "copy":
        step = bench.copy_of(traffic // 2)
    _timed(benchmark, step, sync)


@pytest.mark.parametrize("impl", ("lrfast.torch", "torch fused"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ("AdamW", "SGD"))
def test_torch_tensors(benchmark, name, layout, impl):
    # What a torch user gets: lrfast.torch.X against torch.optim.X(fused=True)
    # on the same CUDA parameters, host work included.
    torch = _torch_cuda()
    import lrfast.torch

    benchmark.group = f"cuda torch tensors {name} {layout}"
    params = bench.torch_params(torch, LAYOUTS[layout], "float32")
    kwargs = dict(lr=1e-3, momentum=0.9) if name == "SGD" else dict(lr=1e-3)
    if impl == "torch fused":
        optimizer = getattr(torch.optim, name)(params, **kwargs, fused=True)
    else:
        optimizer = getattr(lrfast.torch, name)(params, **kwargs)
    _timed(benchmark, optimizer.step, torch.cuda.synchronize)


@pytest.mark.parametrize("impl", ("lrfast", "lrfast on torch tensors", "torch"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_global_norm(benchmark, layout, impl):
    benchmark.group = f"cuda global norm {layout}"
    shapes = LAYOUTS[layout]
    if impl == "lrfast":
        norm = bench.lrfast_norm(shapes, "float32")
        _timed(benchmark, norm, cuda.synchronize)
        return
    torch = _torch_cuda()
    grads = [p.grad for p in bench.torch_params(torch, shapes, "float32")]
    if impl == "torch":
        _timed(benchmark, lambda: torch.nn.utils.get_total_norm(grads).item(),
               torch.cuda.synchronize)
    else:
        import lrfast

        _timed(benchmark, lambda: lrfast.global_norm(grads), torch.cuda.synchronize)
