"""Adafactor's fused step against its NumPy reference (and the reference
against torch.optim.Adafactor), its bits across thread counts and ISAs, and
its argument checks."""

import copy
import math

import numpy as np
import pytest

import lrfast
import lrfast.reference as ref
from lrfast.reference_adafactor import adafactor_eps1
from cases import ADAFACTOR, adafactor_states, assert_close, gradients
from isa_run import saved_arrays

# vectors at and around the SIMD widths, a 0-d, empty and 1x1 params, matrices
# whose widths straddle the lanes (16), a 3-d one, and one of each family
# across the driver's chunks (2**17 elements)
SHAPES = [(), (0,), (1,), (7,), (8,), (15,), (16,), (17,), (1, 1), (3, 0), (5, 3), (8, 16),
          (17, 15), (2, 4, 6)]
LARGE = [(1000003,), (131, 1001)]
DTYPES = (np.float32, np.float64)


def run(fn, shapes, dtype, hp, steps, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    states = adafactor_states(shapes, dtype)
    for step in range(1, steps + 1):
        fn(params, gradients(shapes, dtype, step, seed), *states.values(), step=step, **hp)
    return params, {k: [x for x in v if x is not None] for k, v in states.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("hp", ADAFACTOR.grid, ids=str)
def test_matches_reference(hp, dtype):
    got = run(lrfast.adafactor_step, SHAPES, dtype, hp, 5)
    want = run(ref.adafactor_step, SHAPES, dtype, hp, 5)
    assert_close(ADAFACTOR, dtype, got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_large_matches_reference(dtype):
    got = run(lrfast.adafactor_step, LARGE, dtype, dict(weight_decay=0.1), 3)
    want = run(ref.adafactor_step, LARGE, dtype, dict(weight_decay=0.1), 3)
    assert_close(ADAFACTOR, dtype, got, want)


# Matrices for the two ways to sum(U**2): from pass 1's column sums where no
# element of U reaches the cap 1 / eps1, else an explicit pass. Gradients jump
# at the last step, so the variance lags, RMS(U) > d and the update is clipped:
# a wrong sum(U**2) moves the params. Matrix 1 has a zero row (R = 0: U capped
# at any eps1), matrix 2 a row 1e-4 times smaller (capped at eps1 = 0.1 only),
# the 3-d param a zero row in its second matrix only.
CAP_SHAPES = [(40, 33), (6, 20), (9, 17), (2, 5, 19)]


def _cap_grads(step, dtype):
    grads = gradients(CAP_SHAPES, dtype, step)
    for g in grads:
        g *= dtype(10.0 if step == 4 else 1e-2)
    grads[1][2] = 0
    grads[2][4] *= dtype(1e-4)
    grads[3][1, 0] = 0
    return grads


def _cap_run(fn, dtype, hp):
    params = [np.linspace(-1, 1, math.prod(s)).reshape(s).astype(dtype) for s in CAP_SHAPES]
    states = adafactor_states(CAP_SHAPES, dtype)
    for step in range(1, 5):
        fn(params, _cap_grads(step, dtype), *states.values(), step=step, **hp)
    return params, {k: [x for x in v if x is not None] for k, v in states.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("eps1", [None, 0.1])
def test_sum_of_u_squared_with_and_without_capped_elements(dtype, eps1):
    hp = dict(eps=(eps1, 1e-3))
    want = _cap_run(ref.adafactor_step, dtype, hp)
    assert_close(ADAFACTOR, dtype, _cap_run(lrfast.adafactor_step, dtype, hp), want)
    # the premises: every update is clipped, and U is capped where said
    unclipped = _cap_run(ref.adafactor_step, dtype, dict(hp, d=1e9))[0]
    for a, b in zip(want[0], unclipped):
        assert not np.allclose(a, b, rtol=1e-3, atol=0)
    e1 = adafactor_eps1(eps1, dtype)
    capped = []
    for r, c in zip(want[1]["row_vars"], want[1]["col_vars"]):
        rmean = np.maximum(r.mean(axis=-2, keepdims=True, dtype=np.float64), e1)
        with np.errstate(divide="ignore"):
            ab = np.sqrt(rmean / r) / np.sqrt(c)
        capped.append([bool((m >= 1 / e1).any()) for m in ab.reshape(-1, *ab.shape[-2:])])
    assert capped == [[False], [True], [eps1 == 0.1], [False, True]]


def test_single_arrays_and_empty_list():
    p = np.ones(5, np.float32)
    v = np.zeros(5, np.float32)
    lrfast.adafactor_step(p, np.full(5, 2.0, np.float32), None, None, v, step=1)
    np.testing.assert_array_equal(v, 4.0)
    lrfast.adafactor_step([], [], [], [], [], step=1)


def test_update_clipped_to_d():
    """At step 1 a vector's U is sign(g) (RMS 1); d = 1 leaves it, the step
    is max(eps2, RMS(p)) * lr in every element."""
    p = np.full(4, 3.0)
    lrfast.adafactor_step(p, np.array([1.0, -2.0, 3.0, -4.0]), None, None, np.zeros(4), step=1)
    np.testing.assert_allclose(p, 3.0 - 3.0 * 1e-2 * np.array([1, -1, 1, -1]), rtol=1e-15)


def test_threads_give_the_same_bits():
    shapes = [(1000003,), (300, 1000), (2, 400, 170)]
    results = []
    for threads in (1, 2, 3):
        before = lrfast.get_num_threads()
        lrfast.set_num_threads(threads)
        try:
            params, states = run(lrfast.adafactor_step, shapes, np.float32, {}, 2)
            capped = _cap_run(lrfast.adafactor_step, np.float32, {})
        finally:
            lrfast.set_num_threads(before)
        arrays = params + sum(states.values(), []) + capped[0] + sum(capped[1].values(), [])
        results.append(np.concatenate([x.ravel() for x in arrays]))
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


WORKLOAD = """
import sys, numpy as np, lrfast
from cases import adafactor_states, gradients
shapes = [(1000003,), (17,), (300, 1000), (2, 40, 17), (7, 33)]
out = []
for dtype in (np.float32, np.float64):
    params = [np.linspace(-1, 1, int(np.prod(s))).reshape(s).astype(dtype) for s in shapes]
    states = adafactor_states(shapes, dtype)
    for step in range(1, 4):
        lrfast.adafactor_step(params, gradients(shapes, dtype, step), *states.values(),
                              step=step, weight_decay=0.1)
    out += params + [x for v in states.values() for x in v if x is not None]
half = [np.linspace(-1, 1, 3 * 70001).reshape(3, 70001).astype(np.float16), np.ones(9, np.float16)]
states = adafactor_states([(3, 70001), (9,)], np.float32)
lrfast.adafactor_step(half, [h * 2 for h in half], *states.values(), step=1)
out += [h.view(np.uint16) for h in half]
np.savez(sys.argv[1], *out)
"""


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_every_isa_gives_the_same_bits(isa, tmp_path):
    if isa == "avx512" and lrfast.cpu_isa() != "avx512":
        pytest.skip("this CPU has no AVX-512")
    for got, want in zip(saved_arrays(WORKLOAD, isa, tmp_path),
                         saved_arrays(WORKLOAD, "baseline", tmp_path), strict=True):
        np.testing.assert_array_equal(got, want)


def _problem():
    p = [np.ones((3, 4), np.float32), np.ones(5, np.float32)]
    g = [np.ones((3, 4), np.float32), np.ones(5, np.float32)]
    return p, g, adafactor_states([(3, 4), (5,)], np.float32)


@pytest.mark.parametrize("change, error, match", [
    (lambda s: s["row_vars"].__setitem__(0, np.zeros((3, 4), np.float32)), ValueError,
     r"row_vars\[0\] has shape \(3, 4\).*takes \(3, 1\)"),
    (lambda s: s["col_vars"].__setitem__(0, np.zeros((1, 4))), TypeError,
     r"col_vars\[0\] has dtype float64"),
    (lambda s: s["row_vars"].__setitem__(0, None), ValueError, r"row_vars\[0\] is None"),
    (lambda s: s["variances"].__setitem__(0, np.zeros((3, 4), np.float32)), ValueError,
     r"variances\[0\] must be None"),
    (lambda s: s["variances"].__setitem__(1, np.zeros(4, np.float32)), ValueError,
     r"variances\[1\] has shape"),
    (lambda s: s["col_vars"].__setitem__(0, s["row_vars"][0].reshape(1, 3)[:, :4]), ValueError,
     r"col_vars\[0\] has shape"),
    (lambda s: s["variances"].pop(), ValueError, r"len\(variances\)"),
])
def test_bad_states_are_refused_before_any_write(change, error, match):
    p, g, states = _problem()
    change(states)
    before = copy.deepcopy((p, states))
    with pytest.raises(error, match=match):
        lrfast.adafactor_step(p, g, *states.values(), step=1)
    for a, b in zip(p, before[0]):
        np.testing.assert_array_equal(a, b)


def test_overlapping_states_are_refused():
    p, g, states = _problem()
    shared = np.zeros(5, np.float32)
    states["variances"][1] = shared
    p[1] = shared
    with pytest.raises(ValueError, match="overlap"):
        lrfast.adafactor_step(p, g, *states.values(), step=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d=0.5), "d .* >= 1"), (dict(beta2_decay=0.1), "beta2_decay"),
    (dict(eps=(None, -1.0)), r"eps\[1\]"), (dict(eps=1e-3), "eps must be a pair"),
    (dict(lr=-1.0), "lr"), (dict(weight_decay=math.nan), "weight_decay"), (dict(step=0), "step"),
])
def test_bad_hyperparameters(kwargs, match):
    p, g, states = _problem()
    with pytest.raises((TypeError, ValueError), match=match):
        lrfast.adafactor_step(p, g, *states.values(), **{"step": 1, **kwargs})


@pytest.mark.parametrize("param, grad", [("bfloat16", "bfloat16"), ("bfloat16", "float32"),
                                         ("float16", "float16")])
def test_16bit_params_match_reference(param, grad):
    """16-bit params (float32 arithmetic and states), each chunk widened and
    the param rounded back to nearest even: the reference's rounding of the
    same float32 values, but where a float64 sum's last bit moves a scalar."""
    from lrfast.precision import bfloat16

    dtypes = {"bfloat16": bfloat16(), "float16": np.dtype(np.float16), "float32": np.float32}
    shapes = [(7,), (17, 15), (131, 1001), ()]
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(s).astype(dtypes[param]) for s in shapes]
    want = [p.copy() for p in params]
    got_states, want_states = (adafactor_states(shapes, np.float32) for _ in range(2))
    for step in range(1, 4):
        grads = [g.astype(dtypes[grad]) for g in gradients(shapes, np.float32, step)]
        lrfast.adafactor_step(params, grads, *got_states.values(), step=step, weight_decay=0.1)
        ref.adafactor_step(want, grads, *want_states.values(), step=step, weight_decay=0.1)
    for a, b in zip(params, want):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=2**-7)
        assert np.mean(a != b) < 1e-3
    with pytest.raises(TypeError, match="float32"):
        lrfast.adafactor_step(params[0], grads[0], None, None, np.zeros(7, dtypes[param]), step=1)


TORCH_SHAPES = [(), (7,), (5, 3), (2, 4, 6), (1, 1), (16, 17)]
TORCH_GROUPS = (dict(), dict(lr=0.05, weight_decay=0.1, beta2_decay=-0.5, d=2.0, eps=(1e-3, 1e-3)))


def _torch_pair(dtype, maximize=False):
    """The same params in torch.optim.Adafactor and lrfast.torch.Adafactor,
    two param groups (the shapes split between them)."""
    import torch

    import lrfast.torch

    rng = np.random.default_rng(3)
    values = [rng.standard_normal(s).astype(dtype) for s in TORCH_SHAPES]
    pairs = []
    for cls in (torch.optim.Adafactor, lrfast.torch.Adafactor):
        params = [torch.tensor(v, requires_grad=True) for v in values]
        groups = [dict(TORCH_GROUPS[0], params=params[:3]), dict(TORCH_GROUPS[1], params=params[3:])]
        pairs.append((params, cls(groups, maximize=maximize)))
    return pairs


def _torch_steps(pairs, dtype, steps, first=1):
    import torch

    for step in range(first, first + steps):
        grads = gradients(TORCH_SHAPES, dtype, step)
        for params, opt in pairs:
            for p, g in zip(params, grads):
                p.grad = torch.tensor(g)
            opt.step()


def _assert_same(pairs, dtype):
    rtol, atol = (1e-12, 1e-13) if dtype == np.float64 else ADAFACTOR.tol[np.float32]
    (want_params, want), (got_params, got) = pairs
    for a, b in zip(got_params, want_params):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)
    for a, b in zip(got_params, want_params):
        sa, sb = got.state[a], want.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, key
            np.testing.assert_allclose(sa[key].numpy(), sb[key].numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_torch_class_matches_torch(dtype, maximize):
    pytest.importorskip("torch")
    pairs = _torch_pair(dtype, maximize)
    _torch_steps(pairs, dtype, 6)
    _assert_same(pairs, dtype)


def test_state_dicts_load_both_ways():
    pytest.importorskip("torch")
    dtype = np.float64
    pairs = _torch_pair(dtype)
    _torch_steps(pairs, dtype, 2)
    (torch_params, torch_opt), (params, opt) = pairs
    # torch's state into ours and ours into torch: the runs swap optimizers
    torch_state, our_state = copy.deepcopy(torch_opt.state_dict()), copy.deepcopy(opt.state_dict())
    opt.load_state_dict(torch_state)
    torch_opt.load_state_dict(our_state)
    _torch_steps(pairs, dtype, 3, first=3)
    _assert_same(pairs, dtype)
    assert opt.state[params[0]]["step"].item() == 5.0


def test_torch_class_checks_every_group_first():
    torch = pytest.importorskip("torch")
    import lrfast.torch

    a = torch.ones(3, 4, requires_grad=True)
    b = torch.ones(4, 6).t().detach().requires_grad_()  # a param that is not contiguous
    opt = lrfast.torch.Adafactor([{"params": [a]}, {"params": [b]}])
    a.grad, b.grad = torch.ones(3, 4), torch.ones(6, 4)
    with pytest.raises(ValueError, match="not C-contiguous"):
        opt.step()
    assert torch.equal(a, torch.ones(3, 4))
    with pytest.raises(ValueError, match="d "):
        lrfast.torch.Adafactor([a], d=0.5)


def test_numpy_class_matches_reference_and_round_trips(tmp_path):
    import lrfast.optim

    shapes, hp = [(5, 3), (7,), ()], dict(lr=0.05, weight_decay=0.1, d=2.0)
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s) for s in shapes]
    want = [p.copy() for p in params]
    opt = lrfast.optim.Adafactor([{"params": params[:1]}, {"params": params[1:], **hp}])
    states = adafactor_states(shapes, np.float64)
    for step in range(1, 4):
        grads = gradients(shapes, np.float64, step)
        opt.step(grads)
        ref.adafactor_step(want[:1], grads[:1], *(s[:1] for s in states.values()), step=step)
        ref.adafactor_step(want[1:], grads[1:], *(s[1:] for s in states.values()), step=step,
                           **hp)
    for a, b in zip(params, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    assert opt.state[0]["row_vars"][0].shape == (5, 1) and opt.state[1]["row_vars"][0].size == 0
    opt.save(tmp_path / "ck.npz")
    again = lrfast.optim.Adafactor([{"params": [p.copy() for p in params[:1]]},
                                    {"params": [p.copy() for p in params[1:]], **hp}])
    again.load(tmp_path / "ck.npz")
    for group, other in zip(opt.state, again.state):
        for name in group:
            for a, b in zip(group[name], other[name]):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="state_dtype"):
        lrfast.optim.Adafactor(params, state_dtype="q8")


def test_torch_class_16bit_params_keep_float32_states():
    torch = pytest.importorskip("torch")
    import lrfast.torch

    w = torch.ones(4, 3, dtype=torch.bfloat16, requires_grad=True)
    theirs = torch.optim.Adafactor([w.detach().clone().requires_grad_()])
    theirs.param_groups[0]["params"][0].grad = torch.ones(4, 3, dtype=torch.bfloat16)
    theirs.step()  # torch keeps a bfloat16 row_var: it loads converted
    opt = lrfast.torch.Adafactor([w])
    opt.load_state_dict(theirs.state_dict())
    w.grad = torch.full((4, 3), 2.0, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[w]["row_var"].dtype == torch.float32
    assert opt.state[w]["step"].item() == 2.0
    assert w.dtype == torch.bfloat16 and bool((w < 1).all())
