"""What the rows of tests/cases.py cannot drive: Prodigy's reduction pass (and
the two passes together over 10 steps), the schedule-free eval()/train()
switch, which takes no gradients, schedule-free's z in 16 bits under
stochastic rounding (every ISA), and the argument checks of the four
optimizers' step functions (lion, schedule-free, Prodigy).

Prodigy's sums run in float64 in another order than the reference's (NumPy's
dot and sum): they agree to 1e-12 relative, and are bitwise the same for any
thread count (and ISA: tests/test_isa.py). Everything else is the reference's
to the bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lrfast
from lrfast import reference
from lrfast.precision import Q4State, Q8State, quantize_low_bit, zeros_state
from cases import SIZES, gradients
from isa_run import saved_arrays

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
STEPS = 10
LIST_SHAPES = [(3, 5), (17,), (0,), (1,), (2, 3, 4), (40000,), (8,), (33000,)]
PRODIGY = dict(betas=(0.9, 0.999), d0=1e-6)


def sums_close(got, want):
    for a, b in zip(got, want, strict=True):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0), (got, want)


def assert_bits(got, want, what):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if isinstance(b, Q8State):
            np.testing.assert_array_equal(a.codes, b.codes, err_msg=f"{what}[{i}].codes")
            np.testing.assert_array_equal(a.absmax, b.absmax, err_msg=f"{what}[{i}].absmax")
        else:
            assert a.dtype == b.dtype, what
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=f"{what}[{i}]")


def copy(x):
    return Q8State(x.codes.copy(), x.absmax.copy(), x.signed) if isinstance(x, Q8State) else x.copy()


def prodigy_problem(shapes, dtype, slice_p, state=None, beta1=0.9, seed=0):
    """Params, and zeroed states: s and p0 of the slices' length (p0 the
    params' slices, as at the first step), m (None for beta1 == 0) and v."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    s = [zeros_state(p.ravel()[::slice_p], state) for p in params]
    p0 = [p.ravel()[::slice_p].copy() for p in params]
    m = [zeros_state(p, state) for p in params] if beta1 > 0 else None
    v = [zeros_state(p, state, signed=False) for p in params]
    return params, s, p0, m, v


def run_prodigy(impl, shapes, dtype, slice_p, grad_dtype=None, steps=STEPS, state=None,
                beta1=0.9, **options):
    """``steps`` Prodigy steps through `impl`'s two passes and the host update
    of d, as prodigyopt's step does; returns the final arrays and the sums."""
    params, s, p0, m, v = prodigy_problem(shapes, dtype, slice_p, state, beta1)
    betas = (beta1, PRODIGY["betas"][1])
    d = d_max = PRODIGY["d0"]
    d_numerator, sums = 0.0, []
    for step in range(1, steps + 1):
        grads = [g.astype(grad_dtype or dtype) for g in gradients(shapes, np.float64, step)]
        dlr = lrfast.prodigy_dlr(d=d, lr=1.0, step=step, betas=betas)
        got = impl.prodigy_reduce(params, grads, s, p0, d=d, d0=PRODIGY["d0"], dlr=dlr,
                                  betas=betas, slice_p=slice_p, **options)
        sums.append(got)
        new = lrfast.prodigy_d_update(*got, d=d, d0=PRODIGY["d0"], d_max=d_max,
                                      d_numerator=d_numerator, dlr=dlr, betas=betas,
                                      beta3=options.get("beta3"))
        update = {k: x for k, x in options.items() if k not in ("safeguard_warmup", "beta3")}
        if new is None:  # no gradient in s yet: the moments move, the params do not
            impl.prodigy_update(params, grads, m, v, d=d, d_new=d, dlr=0.0, betas=betas, **update)
            continue
        impl.prodigy_update(params, grads, m, v, d=d, d_new=new.d, dlr=dlr, betas=betas,
                            **update)
        d, d_max, d_numerator = new.d, new.d_max, new.d_numerator
    return params, s, m or [], v, sums, d


OPTIONS = [dict(), dict(weight_decay=0.1, decouple=False, maximize=True, grad_scale=0.5),
           dict(weight_decay=0.1, safeguard_warmup=True, beta3=0.9)]


@pytest.mark.parametrize("slice_p", [1, 3, 11])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "coupled", "safeguard"])
def test_prodigy_passes_match_the_reference(dtype, slice_p, options):
    for shapes in [[(n,)] for n in SIZES] + [LIST_SHAPES]:
        got = run_prodigy(lrfast, shapes, dtype, slice_p, **options)
        want = run_prodigy(reference, shapes, dtype, slice_p, **options)
        for a, b in zip(got[4], want[4]):
            sums_close(a, b)
        assert math.isclose(got[5], want[5], rel_tol=1e-9), (got[5], want[5])
        if got[4] == want[4]:  # then d is the same, and every array is the reference's
            for k, what in enumerate(("params", "s", "m", "v")):
                assert_bits(got[k], want[k], what)
        else:  # the sums differ in their last bits, and so d: arrays within tolerance
            for a, b in zip(got[0], want[0]):
                np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-9)


def test_prodigy_without_a_first_moment(dtype):
    got = run_prodigy(lrfast, [(1000,), (7,)], dtype, 3, beta1=0.0)
    want = run_prodigy(reference, [(1000,), (7,)], dtype, 3, beta1=0.0)
    for a, b in zip(got[4], want[4]):
        sums_close(a, b)
    for a, b in zip(got[0], want[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype, state", [(np.float32, None), (BF16, "q8")],
                         ids=["float32", "bfloat16-q8"])  # the second through the tiles
@pytest.mark.parametrize("slice_p", [1, 3])
def test_prodigy_sums_are_the_same_bits_for_one_and_two_threads(slice_p, dtype, state):
    shapes = [(600001,), (5,), (70000,)]
    configured, runs = lrfast.get_num_threads(), []
    try:
        for threads in (1, 2):
            lrfast.set_num_threads(threads)
            runs.append(run_prodigy(lrfast, shapes, dtype, slice_p, grad_dtype=np.float32,
                                    steps=3, state=state))
    finally:
        lrfast.set_num_threads(configured)
    assert runs[0][4] == runs[1][4]
    for k in range(4):
        assert_bits(runs[0][k], runs[1][k], "1 vs 2 threads")


@pytest.mark.parametrize("state", [None, "float32", "bfloat16", "q8"])
@pytest.mark.parametrize("slice_p", [1, 3])
def test_prodigy_low_precision_matches_the_reference(state, slice_p):
    # bfloat16 params, float32 grads; p0 in the params' dtype; s, m, v of `state`
    # (q8 for tensors of at least 4096 elements, float32 below).
    shapes = [(40000,), (5000,), (7,), (0,)]
    got = run_prodigy(lrfast, shapes, BF16, slice_p, grad_dtype=np.float32, steps=3, state=state)
    want = run_prodigy(reference, shapes, BF16, slice_p, grad_dtype=np.float32, steps=3,
                       state=state)
    for a, b in zip(got[4], want[4]):
        sums_close(a, b)
    if got[4] == want[4]:
        for k, what in enumerate(("params", "s", "m", "v")):
            assert_bits(got[k], want[k], what)
    else:
        for a, b in zip(got[0], want[0]):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2)


# ------------------------------------------------------------ eval() / train()

def lerp_both(params, zs, beta1):
    results = []
    for impl in (lrfast, reference):
        p, z = [copy(x) for x in params], [copy(x) for x in zs]
        impl.schedulefree_to_eval(p, z, beta1=beta1)
        evaluated = [x.copy() for x in p]
        impl.schedulefree_to_train(p, z, beta1=beta1)
        results.append((evaluated, p, z))
    return results


@pytest.mark.parametrize("beta1", [0.9, 0.6, 0.3])  # |1 - 1/beta1| on both sides of 0.5
def test_eval_and_train_switches_match_the_reference(dtype, beta1):
    rng = np.random.default_rng(0)
    for shapes in [[(n,)] for n in SIZES] + [LIST_SHAPES]:
        params = [rng.standard_normal(s).astype(dtype) for s in shapes]
        zs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        got, want = lerp_both(params, zs, beta1)
        for k, what in enumerate(("x", "y", "z")):
            assert_bits(got[k], want[k], what)


@pytest.mark.parametrize("z_kind", ["bfloat16", "float32"])
def test_eval_and_train_of_bfloat16_params_match_the_reference(z_kind):
    rng = np.random.default_rng(1)
    shapes = [(5000,), (17,), (0,)]
    params = [rng.standard_normal(s).astype(BF16) for s in shapes]
    zs = [rng.standard_normal(s).astype(z_kind) for s in shapes]
    got, want = lerp_both(params, zs, 0.9)
    for k, what in enumerate(("x", "y", "z")):
        assert_bits(got[k], want[k], what)


# ------------------------------------------------------------ schedule-free's z in 16 bits

# Lists crossing the tiles (512) and the driver's blocks (32768) at odd
# offsets; z in the param's dtype, or float32 (which holds it).
Z_SHAPES = [(7,), (513,), (3, 5), (40000,), (0,), (1000,)]
Z_STEPS = 3


def schedulefree_run(impl, name, param, z_dtypes, seed=9):
    """Z_STEPS stochastically rounded schedule-free steps of `impl` on
    params of dtype `param` (float32 grads) and zs of `z_dtypes` (None: the
    param's); returns params, zs and (AdamW) vs."""
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(s).astype(param) for s in Z_SHAPES]
    zs = [(p.astype(np.float32) + 0.5).astype(d or param) for p, d in zip(params, z_dtypes)]
    vs = [np.zeros(s, np.float32) for s in Z_SHAPES]
    scalars = lrfast.ScheduleFreeScalars(0.05, warmup_steps=2)
    for step in range(1, Z_STEPS + 1):
        grads = gradients(Z_SHAPES, np.float32, step)
        lr, ckp1, k = scalars.next()
        options = dict(lr=lr, ckp1=ckp1, step=k, weight_decay=0.01, stochastic_rounding=True,
                       seed=seed)
        if name == "sgd":
            impl.schedulefree_sgd_step(params, grads, zs, **options)
        else:
            impl.schedulefree_adamw_step(params, grads, zs, vs, **options)
    return params + zs + (vs if name == "adamw" else [])


Z_RUNS = [(name, param, z_dtypes) for name in ("sgd", "adamw") for param in (BF16, np.float16)
          for z_dtypes in ([None] * 6, [None, np.float32, None, None, np.float32, None])]


@pytest.mark.parametrize("name, param, z_dtypes", Z_RUNS)
def test_16_bit_zs_round_stochastically_as_the_reference(name, param, z_dtypes):
    # A 16-bit z rounds with the bits of positions 2**63 + i, the param with
    # those of i: the kernel's bits are the reference's (issue 19).
    got = schedulefree_run(lrfast, name, param, z_dtypes)
    assert_bits(got, schedulefree_run(reference, name, param, z_dtypes), f"{name} {param}")


def tie_run(impl, param):
    """y and z of an SGD step that takes both from 1.5 to half an ulp below."""
    p = np.full(20000, 1.5, param)
    z, g = p.copy(), np.full(p.shape, np.finfo(param).eps / 2, np.float32)
    impl.schedulefree_sgd_step(p, g, z, lr=1.0, ckp1=1.0, momentum=0.5, step=1,
                               stochastic_rounding=True, seed=0)
    return [p, z]


def assert_tie_rounded_with_bits_of_their_own(y, z):
    # Each rounds down at about half the elements, and with bits of their
    # own they part at about half (rounding to nearest keeps z at 1.5, and
    # the param's bits would keep z equal to y).
    for share in (np.mean(y != 1.5), np.mean(z != 1.5), np.mean(y != z)):
        assert 0.45 < share < 0.55, share


@pytest.mark.parametrize("param", [BF16, np.float16], ids=["bf16", "f16"])
def test_a_16_bit_z_rounds_stochastically_with_bits_of_its_own(param):
    got = tie_run(lrfast, param)
    assert_bits(got, tie_run(reference, param), "the reference")
    assert_tie_rounded_with_bits_of_their_own(*got)


def z_workload(impl):
    return ([a for name, param, z_dtypes in Z_RUNS
             for a in schedulefree_run(impl, name, param, z_dtypes)]
            + [a for param in (BF16, np.float16) for a in tie_run(impl, param)])


Z_ISA_WORKLOAD = """
import sys
import numpy as np
import test_lr_free_kernels as t
import lrfast
np.savez(sys.argv[1], *[a.view(np.uint8) for a in t.z_workload(lrfast)])
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_16_bit_zs_match_the_reference_on_every_isa(isa, tmp_path):
    want = z_workload(reference)
    got = [a.view(b.dtype).reshape(b.shape)
           for a, b in zip(saved_arrays(Z_ISA_WORKLOAD, isa, tmp_path), want, strict=True)]
    assert_bits(got, want, f"LRFAST_CPU_ISA={isa}")
    for ties in (got[-4:-2], got[-2:]):
        assert_tie_rounded_with_bits_of_their_own(*ties)


# ------------------------------------------------------------ argument checks

def arrays(n=10, dtype=np.float32):
    rng = np.random.default_rng(2)
    return [rng.standard_normal(n).astype(dtype) for _ in range(4)]


def refused(error, match, fn, *arrays_, **kw):
    """fn(*arrays_, **kw) raises `error` matching `match` and writes nothing."""
    before = [a.copy() for a in arrays_]
    with pytest.raises(error, match=match):
        fn(*arrays_, **kw)
    for a, b in zip(arrays_, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1e-4), r"lr must be a finite number >= 0"),
    (dict(lr=math.inf), r"lr must be a finite number >= 0"),
    (dict(betas=(1.0, 0.99)), r"betas\[0\] must lie in \[0, 1\)"),
    (dict(betas=(0.9, -0.1)), r"betas\[1\] must lie in \[0, 1\)"),
    (dict(weight_decay=-0.1), r"weight_decay must be a finite number >= 0"),
    (dict(grad_scale=math.nan), r"grad_scale must not be NaN"),
])
def test_lion_refuses(kw, match):
    p, g, m, _ = arrays()
    refused(ValueError, match, lrfast.lion_step, p, g, m, **kw)


def test_lion_at_rate_0_moves_only_the_moment():
    """As lion-pytorch's step (its constructor, and the classes', refuse 0):
    torch.distributed.checkpoint steps a fresh optimizer at lr 0 to make its states."""
    p, g, m, _ = arrays()
    want = [x.copy() for x in (p, g, m)]
    lrfast.lion_step(p, g, m, lr=0.0, weight_decay=0.5)
    reference.lion_step(*want, lr=0.0, weight_decay=0.5)
    np.testing.assert_array_equal(p, arrays()[0])
    np.testing.assert_allclose(m, want[2], rtol=1e-6)
    assert np.any(m != 0)


SF_SGD = dict(lr=0.1, ckp1=0.5, step=1)
SF_ADAMW = dict(lr=0.1, ckp1=0.5, step=1)


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-0.1), r"lr must be a finite number >= 0"),
    (dict(ckp1=1.5), r"ckp1 must lie in \[0, 1\]"),
    (dict(ckp1=-0.1), r"ckp1 must lie in \[0, 1\]"),
    (dict(step=0), r"step must be >= 1"),
    (dict(momentum=0.0), r"momentum must lie in \(0, 1\)"),
    (dict(momentum=1.0), r"momentum must lie in \(0, 1\)"),
    (dict(weight_decay=-1.0), r"weight_decay must be a finite number >= 0"),
])
def test_schedulefree_sgd_refuses(kw, match):
    p, g, z, _ = arrays()
    refused(ValueError, match, lrfast.schedulefree_sgd_step, p, g, z, **{**SF_SGD, **kw})


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-0.1), r"lr must be a finite number >= 0"),
    (dict(ckp1=2.0), r"ckp1 must lie in \[0, 1\]"),
    (dict(step=0), r"step must be >= 1"),
    (dict(betas=(0.0, 0.999)), r"betas\[0\] must lie in \(0, 1\)"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0, 1\)"),
    (dict(eps=-1e-8), r"eps must be a finite number >= 0"),
])
def test_schedulefree_adamw_refuses(kw, match):
    p, g, z, v = arrays()
    refused(ValueError, match, lrfast.schedulefree_adamw_step, p, g, z, v,
            **{**SF_ADAMW, **kw})


# (param dtype, z kind) of every z that cannot hold its param's values
NARROW_ZS = [(np.float32, "q8"), (np.float32, "q4"), (np.float32, BF16), (np.float32, np.float16),
             (np.float64, np.float32), (np.float64, BF16), (np.float64, "q8"), (BF16, "q8"),
             (BF16, "q4"), (np.float16, BF16), (np.float16, "q4")]
Z_CALLS = {
    "sgd": lambda p, g, z, v: lrfast.schedulefree_sgd_step(p, g, z, lr=0.1, ckp1=0.5),
    "adamw": lambda p, g, z, v: lrfast.schedulefree_adamw_step(p, g, z, v, lr=0.1, ckp1=0.5,
                                                               step=1),
    "to_eval": lambda p, g, z, v: lrfast.schedulefree_to_eval(p, z, beta1=0.9),
    "to_train": lambda p, g, z, v: lrfast.schedulefree_to_train(p, z, beta1=0.9),
}


def narrow_z(param, kind):
    """A signed q8 or q4 state, or an array of dtype `kind`, holding `param`."""
    if not isinstance(kind, str):
        return param.astype(kind)
    codes, absmax = quantize_low_bit(kind, param.astype(np.float32))
    return Q8State(codes, absmax) if kind == "q8" else Q4State(codes, absmax, param.shape)


def raw(states):
    """Copies of the bytes of arrays and low-bit states."""
    return [np.array(a).view(np.uint8) for x in states
            for a in ((x.codes, x.absmax) if isinstance(x, (Q8State, Q4State)) else (x,))]


@pytest.mark.parametrize("call", list(Z_CALLS))
@pytest.mark.parametrize("param, kind", NARROW_ZS)
def test_a_z_that_cannot_hold_its_param_is_refused_before_any_write(param, kind, call):
    # Issue 19: z holds the weights; a q8 z moved float32 params by 0.027 on
    # an update of 1e-6, a bfloat16 one froze. The second tensor's z is
    # refused, and the first tensor, whose z is fine, is not written either.
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(4096).astype(param) for _ in range(2)]
    grads = [np.ones(4096, np.float64 if param == np.float64 else np.float32)] * 2
    zs = [params[0] + 1, narrow_z(params[1] + 1, kind)]
    vs = [np.zeros(4096, np.float32) for _ in range(2)]
    before = raw(params + zs + vs)
    with pytest.raises(ValueError, match=r"^zs\[1\] (is a q[48] state|has dtype \w+), which "
                                         r"cannot hold the values of params\[1\] \(\w+\): z "
                                         r"holds the weights, so it must be \w+( or float32)?$"):
        Z_CALLS[call](params, grads, zs, vs)
    assert_bits(raw(params + zs + vs), before, "written")


@pytest.mark.parametrize("beta1", [0.0, 1.0, -0.5])
def test_eval_and_train_refuse_beta1_outside_the_open_unit_interval(beta1):
    p, z, _, _ = arrays()
    for fn in (lrfast.schedulefree_to_eval, lrfast.schedulefree_to_train):
        refused(ValueError, r"beta1 must lie in \(0, 1\)", fn, p, z, beta1=beta1)


REDUCE = dict(d=1e-6, d0=1e-6, dlr=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(slice_p=0), r"slice_p must be an integer from 1"),
    (dict(slice_p=1.0), r"slice_p must be an int"),
    (dict(d0=0.0), r"d0 must be a finite number > 0"),
    (dict(d=-1.0), r"d must be a finite number > 0"),
    (dict(dlr=-1.0), r"dlr must be a finite number >= 0"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0, 1\)"),
    (dict(beta3=1.0), r"beta3 must lie in \[0, 1\)"),
    (dict(weight_decay=-0.1), r"weight_decay must be a finite number >= 0"),
])
def test_prodigy_reduce_refuses(kw, match):
    p, g, s, p0 = arrays()
    refused((ValueError, TypeError), match, lrfast.prodigy_reduce, p, g, s, p0,
            **{**REDUCE, **kw})


def test_prodigy_reduce_takes_states_of_the_slices_length_only():
    p, g = arrays(n=30)[:2]
    # ceil(30 / 4) = 8 elements: the right length passes...
    lrfast.prodigy_reduce(p, g, np.zeros(8, np.float32), p[::4].copy(), slice_p=4, **REDUCE)
    # ...any other length or shape is refused, naming the slice, with nothing written.
    for s_shape, p0_shape in [((7,), (8,)), ((8,), (30,)), ((2, 4), (8,)), ((30,), (30,))]:
        s, p0 = np.ones(s_shape, np.float32), np.ones(p0_shape, np.float32)
        bad = "ss" if s_shape != (8,) else "p0s"
        refused(ValueError, rf"{bad}\[0\] has shape .* but the slice params\[0\]\.ravel\(\)"
                            rf"\[::4\] has shape \(8,\)", lrfast.prodigy_reduce, p, g, s, p0,
                slice_p=4, **REDUCE)
    # and the grad keeps the param's shape
    refused(ValueError, r"grads\[0\] has shape \(8,\) but params\[0\] has shape \(30,\)",
            lrfast.prodigy_reduce, p, g[:8].copy(), np.zeros(8, np.float32), p[::4].copy(),
            slice_p=4, **REDUCE)


def test_prodigy_reduce_refuses_an_unsigned_q8_s():
    p = np.ones(5000, np.float32)
    s = zeros_state(p, "q8", signed=False)
    with pytest.raises(ValueError, match=r"ss\[0\]: an unsigned q8 state cannot hold"):
        lrfast.prodigy_reduce(p, p.copy(), s, p.copy(), **REDUCE)


@pytest.mark.parametrize("kw, match", [
    (dict(eps=0.0), r"eps must be a finite number > 0"),
    (dict(d_new=0.0), r"d_new must be a finite number > 0"),
    (dict(dlr=-1.0), r"dlr must be a finite number >= 0"),
    (dict(betas=(-0.1, 0.999)), r"betas\[0\] must lie in \[0, 1\)"),
])
def test_prodigy_update_refuses(kw, match):
    p, g, m, v = arrays()
    refused(ValueError, match, lrfast.prodigy_update, p, g, m, v,
            **{**dict(d=1e-6, d_new=1e-6, dlr=1e-6), **kw})
