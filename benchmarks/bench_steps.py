"""Every optimizer of tests/cases.py (its typical hyperparameters) against its
NumPy reference and torch.optim's fused/foreach step, at 1e3..5e7 elements,
on a list of 1000 tensors of 1000, and global-norm clipping + AdamW on the
146-tensor transformer-like list. Also each step right after torch work, when
torch's OpenMP threads may still be spinning.

Run: pytest benchmarks/ (add --benchmark-json=out.json to keep the numbers).
Compare within a group: the same arrays, the same run.
"""

import numpy as np
import pytest

import lrfast
from lrfast import reference
from lrfast.workloads import many_small_shapes, transformer_like_shapes
from cases import CASES, gradients, make_problem

SIZES = (1_000, 100_000, 1_000_000, 50_000_000)
IMPLS = ("lrfast", "numpy", "torch")
TORCH_FUSED = {"SGD", "Adam", "AdamW", "Adagrad"}


def setup(case, shapes, dtype=np.float32):
    hp = dict(case.bench)
    params, states = make_problem(case, hp, shapes, dtype)
    grads = gradients(shapes, dtype, 1)
    if case.takes_step:
        hp["step"] = 2
    positional = [states.get(name) for name in case.states]
    return params, grads, positional, hp


def torch_optimizer(case, params, grads, hp):
    """torch.optim's fastest CPU implementation of the case, over the same arrays."""
    torch = pytest.importorskip("torch")
    tensors = [torch.from_numpy(p).requires_grad_() for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g)
    kind = "fused" if case.torch_name in TORCH_FUSED else "foreach"
    kwargs = {k: v for k, v in hp.items() if k != "step"}
    return getattr(torch.optim, case.torch_name)(tensors, **kwargs, **{kind: True})


def step_fn(impl, case, shapes):
    """A zero-argument step of `impl` ("lrfast", "numpy" or "torch") on fresh arrays."""
    params, grads, states, hp = setup(case, shapes)
    if impl == "torch":
        if case.torch_name is None:
            pytest.skip(f"torch.optim has no {case.name}")
        return torch_optimizer(case, params, grads, hp).step
    fn = getattr(lrfast if impl == "lrfast" else reference, case.step_fn)
    return lambda: fn(params, grads, *states, **hp)


def run(benchmark, fn, large):
    if large:
        benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    else:
        benchmark(fn)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_single_tensor(benchmark, case, size, impl):
    benchmark.group = f"{case.name} 1x{size}"
    run(benchmark, step_fn(impl, case, [(size,)]), size >= 10_000_000)


@pytest.mark.parametrize("impl", ("lrfast", "torch"))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_thousand_tensors(benchmark, case, impl):
    benchmark.group = f"{case.name} 1000x1000"
    run(benchmark, step_fn(impl, case, many_small_shapes()), False)


@pytest.mark.parametrize("impl", ("lrfast", "torch"))
def test_clip_and_adamw_transformer(benchmark, impl):
    """torch: clip_grad_norm_ then fused AdamW. lrfast: global_norm, then AdamW
    with the clip coefficient as grad_scale (gradients read twice, never written)."""
    benchmark.group = "clip+adamw transformer-146"
    case = next(c for c in CASES if c.name == "adamw")
    shapes = transformer_like_shapes()
    params, grads, states, hp = setup(case, shapes)
    if impl == "torch":
        torch = pytest.importorskip("torch")
        opt = torch_optimizer(case, params, grads, hp)
        tensors = opt.param_groups[0]["params"]

        def fn():
            torch.nn.utils.clip_grad_norm_(tensors, 1.0)
            opt.step()
    else:
        def fn():
            norm = lrfast.global_norm(grads)
            lrfast.adamw_step(params, grads, *states, grad_scale=lrfast.clip_coefficient(norm, 1.0),
                              **hp)
    run(benchmark, fn, False)


@pytest.mark.parametrize("layout", ["1x1000000", "1000x1000"])
@pytest.mark.parametrize("impl", ("lrfast", "torch"))
def test_adam_after_torch_work(benchmark, impl, layout):
    """The step timed right after a torch matmul, as in a training loop: two
    thread pools share the cores."""
    torch = pytest.importorskip("torch")
    benchmark.group = f"adam {layout} after torch work"
    case = next(c for c in CASES if c.name == "adam")
    shapes = [(1_000_000,)] if layout == "1x1000000" else many_small_shapes()
    fn = step_fn(impl, case, shapes)
    a = torch.randn(512, 512)

    def torch_work():
        torch.mm(a, a)

    benchmark.pedantic(fn, setup=torch_work, rounds=200, iterations=1)
