"""Global norms and clipping against the reference and torch, and the fused
clip-in-the-step path."""

import math

import numpy as np
import pytest

import lrfast
from lrfast import reference
from cases import SIZES, gradients

NORMS = (2.0, 1.0, math.inf, 3.0, 0.5)


@pytest.mark.parametrize("norm_type", NORMS)
@pytest.mark.parametrize("size", SIZES)
def test_global_norm_matches_reference(dtype, size, norm_type):
    grads = gradients([(size,)], dtype, step=1)
    got = lrfast.global_norm(grads[0], norm_type)
    want = reference.global_norm(grads, norm_type)
    assert got == pytest.approx(want, rel=1e-12, abs=0)


@pytest.mark.parametrize("norm_type", NORMS)
def test_global_norm_of_a_mixed_list(norm_type):
    shapes = [(3, 5), (0,), (40000,), (17,), (70001,)]
    grads = gradients(shapes[:3], np.float32, 1) + gradients(shapes[3:], np.float64, 1)
    assert lrfast.global_norm(grads, norm_type) == pytest.approx(
        reference.global_norm(grads, norm_type), rel=1e-12)


def test_norm_of_nothing_is_zero():
    assert lrfast.global_norm([]) == 0.0
    assert lrfast.global_norm([np.zeros(0, np.float32)], math.inf) == 0.0


@pytest.mark.parametrize("norm_type", NORMS)
def test_norm_is_bitwise_identical_for_any_thread_count(norm_type):
    grads = gradients([(1000003,), (5,), (300000,)], np.float32, 1)
    configured = lrfast.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 7):
            lrfast.set_num_threads(threads)
            results.append(lrfast.global_norm(grads, norm_type))
    finally:
        lrfast.set_num_threads(configured)
    assert len(set(results)) == 1, results


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("norm_type", NORMS)
def test_non_finite_values(bad, norm_type):
    g = gradients([(100,)], np.float32, 1)[0]
    g[37] = bad
    got = lrfast.global_norm(g, norm_type)
    want = reference.global_norm([g], norm_type)
    assert (math.isnan(got) and math.isnan(want)) or got == want


def test_clip_grad_norm_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    for norm_type in NORMS:
        # torch's infinity norm refuses empty tensors
        shapes = [(10, 10), (33,), (7,)] + ([] if math.isinf(norm_type) else [(0,)])
        for max_norm in (0.5, 1e6):
            grads = gradients(shapes, dtype, 1)
            tensors = [torch.tensor(g, requires_grad=False) for g in grads]
            params = [torch.zeros_like(t, requires_grad=True) for t in tensors]
            for p, t in zip(params, tensors):
                p.grad = t.clone()
            want = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type).item()
            got = lrfast.clip_grad_norm(grads, max_norm, norm_type)
            assert got == pytest.approx(want, rel=1e-5 if dtype == np.float32 else 1e-12)
            for g, p in zip(grads, params):
                np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_error_if_nonfinite_writes_nothing():
    grads = gradients([(50,), (9,)], np.float32, 1)
    grads[1][3] = math.inf
    before = [g.copy() for g in grads]
    with pytest.raises(RuntimeError, match="non-finite"):
        lrfast.clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)


def test_clip_grad_norm_leaves_small_gradients_alone():
    grads = gradients([(50,)], np.float64, 1)
    before = grads[0].copy()
    norm = lrfast.clip_grad_norm(grads, 1e9)
    assert norm == pytest.approx(np.linalg.norm(before), rel=1e-14)
    np.testing.assert_array_equal(grads[0], before)


def test_clip_grad_value(dtype):
    grads = gradients([(1000,), (17,)], dtype, 1)
    grads[1][0] = math.nan
    want = [np.clip(g, -0.3, 0.3) for g in grads]
    lrfast.clip_grad_value(grads, 0.3)
    for g, w in zip(grads, want):
        np.testing.assert_array_equal(g, w)


def test_clip_arguments_are_checked():
    g = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="max_norm"):
        lrfast.clip_grad_norm(g, -1.0)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        lrfast.global_norm(g, 0)
    with pytest.raises(ValueError, match="clip_value"):
        lrfast.clip_grad_value(g, math.nan)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[0\] is read-only"):
        lrfast.clip_grad_norm(ro, 1.0)
    assert lrfast.global_norm(ro) == 0.0  # reading is fine


def test_fused_clip_through_grad_scale_equals_clip_then_step():
    shapes = [(1000,), (37,)]
    grads = gradients(shapes, np.float64, 1)
    results = []
    for fused in (True, False):
        g = [x.copy() for x in grads]
        params = [np.ones(s) for s in shapes]
        m, v = [np.zeros(s) for s in shapes], [np.zeros(s) for s in shapes]
        if fused:
            norm = lrfast.global_norm(g)
            lrfast.adamw_step(params, g, m, v, lr=0.1, step=1,
                              grad_scale=lrfast.clip_coefficient(norm, 1.0))
            for a, b in zip(g, grads):
                np.testing.assert_array_equal(a, b)  # never written
        else:
            lrfast.clip_grad_norm(g, 1.0)
            lrfast.adamw_step(params, g, m, v, lr=0.1, step=1)
        results.append(params + m + v)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("bad", [None, math.inf])
def test_infinite_max_norm_is_taken_as_torch_takes_it(bad):
    torch = pytest.importorskip("torch")
    grads = gradients([(50,), (7,)], np.float32, 1)
    if bad is not None:
        grads[1][2] = bad
    tensors = [torch.tensor(g) for g in grads]
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in tensors]
    for p, t in zip(params, tensors):
        p.grad = t.clone()
    want = torch.nn.utils.clip_grad_norm_(params, math.inf).item()
    assert lrfast.clip_grad_norm(grads, math.inf) == pytest.approx(want, rel=1e-6)  # torch: in fp32
    for g, p in zip(grads, params):  # unchanged, or all NaN as torch makes them
        np.testing.assert_array_equal(g, p.grad.numpy())


def lrfast_imports(module: str) -> set[str]:
    """The lrfast modules ``module`` imports anywhere in its source (lazy
    imports inside functions included), read without running it."""
    import ast
    import importlib.util
    import pathlib
    import pkgutil

    every = {"lrfast"} | {m.name for m in pkgutil.walk_packages(lrfast.__path__, "lrfast.")}
    spec = importlib.util.find_spec(module)
    if not spec.origin.endswith(".py"):
        return set()  # the compiled lrfast._core
    package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(pathlib.Path(spec.origin).read_text())):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            # `from . import ops` imports the module ops; `from ..clip import f`, ..clip
            found |= ({f"{base}.{a.name}" for a in node.names} & every) or {base}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & every


def test_the_cuda_back_end_does_not_import_the_front_end():
    """clip_coefficient lives in lrfast._hparams so that lrfast.cuda.ops does
    not import lrfast.clip, which imports lrfast._backend, which imports lrfast.cuda."""
    seen, todo = set(), ["lrfast.cuda.ops"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(lrfast_imports(module))
    assert "lrfast._backend" not in seen and "lrfast.clip" not in seen
    assert lrfast.clip_coefficient(3.0, 1.0) == 1.0 / (3.0 + 1e-6)
