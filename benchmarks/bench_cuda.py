"""GPU: every optimizer of tests/cases.py through lrfast's CUDA back end, against
torch.optim's fused (or foreach) CUDA step (for Lion and schedule-free SGD and
AdamW: lion-pytorch's and schedulefree's, when installed) and a
device-to-device copy moving the same bytes (the bandwidth bound), on one 50M
tensor, 1000 tensors of 1000 and the 146-tensor transformer-like list; a whole
Prodigy step (both passes) against prodigyopt's; the same through
``lrfast.torch`` on torch CUDA tensors (the host cost a torch user pays); and
the global norm.
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
from cases import CASES  # noqa: E402

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


# The reference packages of the optimizers torch.optim lacks: (module, class).
PACKAGES = {"lion": ("lion_pytorch", "Lion"), "schedulefree_sgd": ("schedulefree", "SGDScheduleFree"),
            "schedulefree_adamw": ("schedulefree", "AdamWScheduleFree"),
            "prodigy": ("prodigyopt", "Prodigy")}


def _package_step(name, shapes, lr):
    """The reference package's step on CUDA tensors of the same values."""
    torch = _torch_cuda()
    module, cls = PACKAGES[name]
    optimizer = getattr(pytest.importorskip(module), cls)(
        bench.torch_params(torch, shapes, "float32"), lr=lr)
    if hasattr(optimizer, "train"):  # schedule-free: steps in train mode
        optimizer.train()
    return optimizer.step


@pytest.mark.parametrize("impl", ("lrfast", "torch", "copy"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_step(benchmark, case, layout, impl):
    # "torch": torch.optim's class, or the reference package's
    benchmark.group = f"cuda {case.name} {layout}"
    shapes = LAYOUTS[layout]
    hp = dict(case.bench, **({"step": 2} if case.takes_step else {}))
    states = [name if name in case.states_for(hp) else None for name in case.states]
    step, traffic = bench.step_of(case.step_fn, hp, states, shapes, "float32")
    sync = cuda.synchronize
    if impl == "torch":
        torch = _torch_cuda()
        sync = torch.cuda.synchronize
        if case.torch_name is not None:
            step, _ = bench.torch_step_of(torch, case.name, shapes, "float32")
        elif case.name in PACKAGES and case.name != "prodigy":  # (its whole step: below)
            step = _package_step(case.name, shapes, hp["lr"])
        else:
            pytest.skip(f"no torch class or package step for {case.name}")
    elif impl == "copy":
        step = bench.copy_of(traffic // 2)
    _timed(benchmark, step, sync)


@pytest.mark.parametrize("impl", ("lrfast", "prodigyopt", "copy"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_prodigy_step(benchmark, layout, impl):
    # Both passes and the host update of d between them (a synchronisation).
    benchmark.group = f"cuda prodigy (both passes) {layout}"
    shapes = LAYOUTS[layout]
    step, traffic = bench.prodigy_step(shapes, "float32")
    sync = cuda.synchronize
    if impl == "prodigyopt":
        step, sync = _package_step("prodigy", shapes, 1.0), _torch_cuda().cuda.synchronize
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
