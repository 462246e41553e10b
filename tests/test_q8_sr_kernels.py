"""q8 and q4 states and stochastic rounding in the C++ kernels.

The oracle: widen every array to float32 (q8 and q4 states dequantized by
lrfast.precision), run lrfast's own float32 kernel on the copies, then store
as lrfast.precision does: params round to nearest even (or stochastically, with
precision.random_bits and precision.round_stochastic; so do 16-bit weight
states, schedule-free's z, with the bits of their own stream) and low-bit states are
re-quantized with precision.quantize_blockwise / quantize_blockwise_q4. The kernels must give exactly
those bits. lrfast.reference, an independent implementation whose float32
arithmetic may differ in the last bit, must agree step by step within an ulp
and a code.
"""

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")

import lrfast  # noqa: E402
from lrfast import precision, reference  # noqa: E402
from lrfast.precision import Q4State, Q8State  # noqa: E402
from cases import CASES, call_step, holding_kind  # noqa: E402
from isa_run import saved_arrays  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
STEPS = 3
SIZES = (0, 1, 255, 256, 257, 4096, 5000, 40000)
SIGNED_SLOTS = precision.SIGNED_STATES


LOW_BIT = (Q8State, Q4State)


def q8_zeros(shape, signed):
    size = int(np.prod(shape))
    codes = np.full(shape, 127 if signed else 0, dtype=np.uint8)
    return Q8State(codes, np.zeros(-(-size // 256), np.float32), signed)


def q4_zeros(shape, signed):
    size = int(np.prod(shape))
    codes = np.full((size + 1) // 2, 0x77 if signed else 0, dtype=np.uint8)
    return Q4State(codes, np.zeros(-(-size // 128), np.float32), shape, signed)


ZEROS = {"q8": q8_zeros, "q4": q4_zeros}


def make(case, hp, shapes, param_dtypes, kinds, unsigned=True, seed=0):
    """Params and zero states; kinds[t] is "q8", "q4" or a state dtype for
    tensor t (but for a schedule-free z that it cannot hold: the param's
    dtype). Low-bit states are unsigned where the slot allows it and
    `unsigned` is set."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dt) for s, dt in zip(shapes, param_dtypes)]
    states = {}
    for name in case.states_for(hp):
        signed = name in SIGNED_SLOTS or not unsigned
        held = [holding_kind(name, p.dtype, k) for p, k in zip(params, kinds)]
        states[name] = [ZEROS[k](s, signed) if isinstance(k, str) else np.zeros(s, k)
                        for s, k in zip(shapes, held)]
    return params, states


def grads_for(params, step, seed=0):
    rng = np.random.default_rng((seed, step))
    return [(rng.standard_normal(p.shape) + 0.1).astype(p.dtype) for p in params]


def widen(x):
    return x.dequantize() if isinstance(x, LOW_BIT) else x.astype(F32)


def oracle_step(case, hp, params, grads, states, step, sr_seed=None):
    """The oracle, in place; with sr_seed, 16-bit params and weight states
    (schedule-free's z, from position WEIGHT_STREAM) round stochastically."""
    wide_p = [p.astype(F32) for p in params]
    wide_g = [g.astype(F32) for g in grads]
    wide_s = {k: [widen(s) for s in v] for k, v in states.items()}
    call_step(getattr(lrfast, case.step_fn), case, hp, wide_p, wide_g, wide_s, step)
    positions = np.cumsum([0] + [p.size for p in params])

    def store(x, w, position):
        if sr_seed is not None and x.dtype.itemsize == 2:
            bits = precision.random_bits(sr_seed, step if case.takes_step else 0, position, x.size)
            x[...] = precision.round_stochastic(w, x.dtype, bits)
        else:
            x[...] = precision.round_nearest(w, x.dtype)

    for p, w, position in zip(params, wide_p, positions):
        store(p, w, int(position))
    for k, v in states.items():
        for s, w, position in zip(v, wide_s[k], positions):
            if isinstance(s, Q8State):
                s.codes[...], s.absmax[...] = precision.quantize_blockwise(w, s.signed)
            elif isinstance(s, Q4State):
                s.codes[...], s.absmax[...] = precision.quantize_blockwise_q4(w, s.signed)
            elif k in precision.WEIGHT_STATES:
                store(s, w, precision.WEIGHT_STREAM + int(position))
            else:
                s[...] = precision.round_nearest(w, s.dtype)


def lrfast_step(case, hp, params, grads, states, step, sr_seed=None):
    kw = dict(hp) if sr_seed is None else dict(hp, stochastic_rounding=True, seed=sr_seed)
    call_step(getattr(lrfast, case.step_fn), case, kw, params, grads, states, step)


def run(case, hp, shapes, param_dtypes, kinds, fn, steps=STEPS, sr_seed=None, unsigned=True):
    params, states = make(case, hp, shapes, param_dtypes, kinds, unsigned)
    for step in range(1, steps + 1):
        fn(case, hp, params, grads_for(params, step), states, step, sr_seed=sr_seed)
    return params, states


def flat(params, states):
    """Every array of a run, low-bit states as codes and absmax."""
    out = list(params)
    for v in states.values():
        for s in v:
            out += [s.codes, s.absmax] if isinstance(s, LOW_BIT) else [s]
    return out


def assert_bits_equal(got, want, what):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: array {i}"
        bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
        ua, ub = a.view(bits).ravel(), b.view(bits).ravel()
        if not np.array_equal(ua, ub):
            bad = np.flatnonzero(ua != ub)
            raise AssertionError(f"{what}: array {i}: {bad.size} of {a.size} differ, first at "
                                 f"{bad[0]}: {a.ravel()[bad[0]]!r} vs {b.ravel()[bad[0]]!r}")


def same(case, hp, shapes, param_dtypes, kinds, **kw):
    got = run(case, hp, shapes, param_dtypes, kinds, lrfast_step, **kw)
    want = run(case, hp, shapes, param_dtypes, kinds, oracle_step, **kw)
    assert_bits_equal(flat(*got), flat(*want), f"{case.name} {hp} {kw}")


# One list per call: every size, q8 blocks and driver blocks (32768) crossed at
# offsets that are not multiples of 256, params and states of mixed kinds.
MIXED = [((257,), F32, "q8"), ((1,), BF16, "q8"), ((3, 5), F32, F32), ((4096,), BF16, "q8"),
         ((0,), F32, "q8"), ((40000,), F32, "q8"), ((255,), BF16, BF16), ((5000,), BF16, "q8"),
         ((33000,), BF16, F32), ((256,), F32, "q8")]


# The same list with q4 states in every other low-bit place, odd sizes included.
MIXED_Q4 = [(shape, dtype, "q4" if kind == "q8" and i % 4 else kind)
            for i, (shape, dtype, kind) in enumerate(MIXED)] + [((4097,), F32, "q4")]


@pytest.mark.parametrize("kind", ["q8", "q4"])
@pytest.mark.parametrize("param", [F32, BF16], ids=["f32", "bf16"])
def test_low_bit_lists_match_the_oracle_bitwise(case, hp, param, kind):
    shapes = [(n,) for n in SIZES]
    same(case, hp, shapes, [param] * len(shapes), [kind] * len(shapes))


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_low_bit_signed_everywhere_and_mixed_lists_match_the_oracle_bitwise(case, hp, kind):
    shapes, dtypes, kinds = zip(*(MIXED if kind == "q8" else MIXED_Q4))
    same(case, hp, shapes, dtypes, kinds)
    same(case, hp, [(n,) for n in SIZES], [BF16] * len(SIZES), [kind] * len(SIZES),
         unsigned=False)


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_low_bit_with_float64_params_matches_the_reference(kind):
    case = next(c for c in CASES if c.name == "adamw")
    hp = dict(lr=1e-2, amsgrad=True)
    params, states = make(case, hp, [(5001,)], [F64], [kind])
    ref_p, ref_s = [p.copy() for p in params], {k: [s.copy() for s in v] for k, v in states.items()}
    for step in (1, 2):
        grads = grads_for(params, step)
        call_step(lrfast.adamw_step, case, hp, params, grads, states, step)
        call_step(reference.adamw_step, case, hp, ref_p, grads, ref_s, step)
        np.testing.assert_allclose(params[0], ref_p[0], rtol=1e-12)
        for k in states:
            assert np.array_equal(states[k][0].codes, ref_s[k][0].codes)


def codes_of(state):
    """A low-bit state's codes, one per element."""
    if isinstance(state, Q4State):
        return precision.unpack_nibbles(state.codes, int(np.prod(state.shape)))
    return state.codes


def ulps(a, b):
    """Distance in units of the last place of two arrays of one float dtype."""
    bits = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
    def ordered(x):
        v = x.view(bits).astype(np.int64)
        return np.where(v < 0, np.iinfo(bits).min - v, v)
    return np.abs(ordered(a) - ordered(b))


def assert_close_to_reference(case, param, a, b, what):
    if param == F32:  # cancellation near 0 may cost more than an ulp there
        rtol, atol = case.tol[np.float32]
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)
    else:
        assert ulps(a, b).max(initial=0) <= 1, what


@pytest.mark.parametrize("kind", ["q8", "q4"])
@pytest.mark.parametrize("param", [F32, BF16], ids=["f32", "bf16"])
def test_low_bit_steps_agree_with_the_reference_within_an_ulp_and_a_code(case, hp, param, kind):
    """Step by step from the same inputs: codes exact for >= 99% of elements and
    never more than one code off; bf16 params within one ulp, float32 params
    within the case's float32 tolerance."""
    shapes = [(n,) for n in SIZES]
    params, states = make(case, hp, shapes, [param] * len(shapes), [kind] * len(shapes))
    codes = exact = 0
    for step in range(1, STEPS + 1):
        grads = grads_for(params, step)
        ref_p = [p.copy() for p in params]
        ref_s = {k: [s.copy() for s in v] for k, v in states.items()}
        call_step(getattr(lrfast, case.step_fn), case, hp, params, grads, states, step)
        call_step(getattr(reference, case.step_fn), case, hp, ref_p, grads, ref_s, step)
        for a, b in zip(params, ref_p):
            assert_close_to_reference(case, param, a, b, f"{case.name} {hp} step {step}")
        for k in states:
            for a, b in zip(states[k], ref_s[k]):
                if not isinstance(b, LOW_BIT):  # schedule-free's z, in the param's dtype
                    assert_close_to_reference(case, param, a, b, f"{case.name} {hp} {k}")
                    continue
                off = np.abs(codes_of(a).astype(int) - codes_of(b).astype(int))
                assert off.max(initial=0) <= 1, f"{case.name} {hp} {k} step {step}"
                codes += off.size
                exact += int((off == 0).sum())
    assert exact >= 0.99 * codes


# Stochastic rounding.

SR_SHAPES = [(1,), (7,), (3, 5), (513,), (40000,), (0,), (255,)]


@pytest.mark.parametrize("param", [BF16, F16], ids=["bf16", "f16"])
def test_stochastic_rounding_matches_the_oracle_bitwise(case, hp, param):
    n = len(SR_SHAPES)
    same(case, hp, SR_SHAPES, [param] * n, [F32] * n, sr_seed=12345)
    # with q8, q4 and bf16 states, and params of both 16-bit dtypes in one list
    same(case, hp, SR_SHAPES, [param, F32, BF16, F16, param, F32, param],
         ["q8", BF16, "q4", F32, "q8", "q4", BF16], sr_seed=2**64 - 1)


@pytest.mark.parametrize("param", [BF16, F16], ids=["bf16", "f16"])
def test_stochastic_rounding_agrees_with_the_reference(case, hp, param):
    """lrfast.reference's SR takes the same bits wherever the float32 values
    agree; they may differ in the last float32 bit (Adam's bias correction is a
    multiplication by a reciprocal here), which moves an SR decision only when
    the random number falls on that bit: equal for >= 99.9%, within an ulp."""
    n = len(SR_SHAPES)
    params, states = make(case, hp, SR_SHAPES, [param] * n, [F32] * n)
    equal = total = 0
    for step in range(1, STEPS + 1):
        grads = grads_for(params, step)
        ref_p = [p.copy() for p in params]
        ref_s = {k: [s.copy() for s in v] for k, v in states.items()}
        kw = dict(hp, stochastic_rounding=True, seed=7)
        call_step(getattr(lrfast, case.step_fn), case, kw, params, grads, states, step)
        call_step(getattr(reference, case.step_fn), case, kw, ref_p, grads, ref_s, step)
        for a, b in zip(params, ref_p):
            d = ulps(a, b)
            assert d.max(initial=0) <= 1
            equal += int((d == 0).sum())
            total += d.size
    assert equal >= 0.999 * total


def sr_workload(threads=None):
    """Params of an SR + q8/q4 AdamW run and an SR RMSprop run, for comparing
    thread counts and ISAs (over 4 driver blocks, so two threads share them)."""
    if threads is not None:
        lrfast.set_num_threads(threads)
    out = []
    for param in (BF16, F16):
        shapes = [(70001,), (5,), (100000,), (300,)]
        params, states = make(CASES[2], {}, shapes, [param] * 4, ["q8", F32, "q4", BF16])
        for step in (1, 2):
            lrfast.adamw_step(params, grads_for(params, step), states["exp_avgs"],
                              states["exp_avg_sqs"], lr=1e-2, step=step,
                              stochastic_rounding=True, seed=99)
        out += flat(params, states)
        p = [x.copy() for x in params]
        lrfast.rmsprop_step(p, grads_for(p, 1), [np.zeros(x.shape, F32) for x in p],
                            stochastic_rounding=True, seed=5)
        out += p
    return out


def test_one_and_two_threads_agree_bitwise():
    before = lrfast.get_num_threads()
    try:
        assert_bits_equal(sr_workload(1), sr_workload(2), "1 vs 2 threads")
    finally:
        lrfast.set_num_threads(before)


WORKLOAD = """
import sys
import numpy as np
import test_q8_sr_kernels as t
arrays = t.sr_workload()
np.savez(sys.argv[1], *[a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])
                        for a in arrays])
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_isa_gives_the_same_bits(isa, tmp_path):
    got = saved_arrays(WORKLOAD, isa, tmp_path)
    want = [a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])
            for a in sr_workload()]
    assert_bits_equal(got, want, f"LRFAST_CPU_ISA={isa}")


def test_another_seed_gives_other_bits_and_float32_params_ignore_it():
    def sgd(seed, dtype, sr=True):
        p = np.linspace(-3, 3, 10000).astype(dtype)
        lrfast.sgd_step(p, np.full(p.shape, 0.3, dtype), lr=1e-3, stochastic_rounding=sr,
                        seed=seed)
        return p.view(np.uint16 if dtype.itemsize == 2 else np.uint32)

    for dtype in (BF16, F16):
        a, b = sgd(1, dtype), sgd(2, dtype)
        assert np.array_equal(a, sgd(1, dtype))
        assert (a != b).mean() > 0.1
        assert not np.array_equal(a, sgd(1, dtype, sr=False))
    assert np.array_equal(sgd(1, F32), sgd(2, F32)) and np.array_equal(sgd(1, F32), sgd(0, F32, False))


def test_stochastic_rounding_is_unbiased():
    """A bf16 param at 1.0 (ulp 2**-7) taking 64 updates of 1/32 ulp moves by
    2 ulps on average; rounding to nearest never moves it."""
    n, steps = 4096, 64
    grad = np.full(n, -2.0**-12, BF16)
    for sr in (True, False):
        p = np.ones(n, BF16)
        for step in range(1, steps + 1):
            lrfast.sgd_step(p, grad, lr=1.0, step=step, stochastic_rounding=sr, seed=3)
        moved = (p.astype(np.float64) - 1.0) / 2.0**-7
        if sr:
            assert abs(moved.mean() - steps / 32) < 0.15
            assert moved.std() > 0.5  # elements decide independently
        else:
            assert np.all(moved == 0)


def test_seed_and_flag_are_checked():
    p, g = np.ones(3, BF16), np.ones(3, BF16)
    for seed, error in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError),
                        (True, TypeError), ("1", TypeError)):
        with pytest.raises(error, match="seed"):
            lrfast.sgd_step(p, g, lr=0.1, stochastic_rounding=True, seed=seed)
    with pytest.raises(TypeError, match="stochastic_rounding"):
        lrfast.sgd_step(p, g, lr=0.1, stochastic_rounding="yes")
    lrfast.sgd_step(p, g, lr=0.1, stochastic_rounding=np.bool_(True), seed=np.uint64(2**64 - 1))


# Bad input: a clear error naming the argument, and nothing written.

def adam_arrays(param=F32, n=3, size=300):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(param) for _ in range(n)]
    grads = [np.ones(size, param) for _ in range(n)]
    exp_avgs = [q8_zeros((size,), True) for _ in range(n)]
    exp_avg_sqs = [q8_zeros((size,), False) for _ in range(n)]
    return params, grads, exp_avgs, exp_avg_sqs


def snapshot(*lists):
    return [a.copy() for lst in lists for s in lst
            for a in ((s.codes, s.absmax) if isinstance(s, LOW_BIT) else (s,))]


def noncontiguous(q):
    codes = np.zeros(2 * q.codes.size, np.uint8)[::2]
    codes[...] = q.codes
    q.codes = codes


def readonly(q):
    q.codes.flags.writeable = False


def short_absmax(q):
    q.absmax = np.zeros(q.absmax.size + 1, np.float32)


def other_shape(q):
    q.codes = np.zeros(q.codes.size + 1, np.uint8)


def wrong_codes_dtype(q):
    q.codes = q.codes.astype(np.int8)


def readonly_absmax(q):
    q.absmax.flags.writeable = False


@pytest.mark.parametrize("param", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("spoil, error, message", [
    (noncontiguous, ValueError, r"exp_avg_sqs\[2\]\.codes is not C-contiguous"),
    (readonly, ValueError, r"exp_avg_sqs\[2\]\.codes is read-only"),
    (readonly_absmax, ValueError, r"exp_avg_sqs\[2\]\.absmax is read-only"),
    (short_absmax, ValueError, r"exp_avg_sqs\[2\]\.absmax has shape \(3,\); expected \(2,\)"),
    (other_shape, ValueError, r"exp_avg_sqs\[2\]\.codes has shape \(301,\) but params\[2\]"),
    (wrong_codes_dtype, TypeError, r"exp_avg_sqs\[2\]\.codes has dtype int8; expected uint8"),
])
def test_bad_q8_states_are_refused_before_any_write(param, spoil, error, message):
    refused_before_any_write(adam_arrays(param), spoil, error, message)


def refused_before_any_write(arrays, spoil, error, message):
    params, grads, m, v = arrays
    spoil(v[2])
    before = snapshot(params, m, v)
    with pytest.raises(error, match=message):
        lrfast.adam_step(params, grads, m, v, lr=0.1, step=1)
    assert_bits_equal(snapshot(params, m, v), before, "written")


def test_unsigned_q8_in_a_signed_slot_is_refused():
    params, grads, m, v = adam_arrays()
    m[1] = q8_zeros((300,), False)
    before = snapshot(params, m, v)
    with pytest.raises(ValueError, match=r"exp_avgs\[1\]: an unsigned q8 state cannot hold"):
        lrfast.adam_step(params, grads, m, v, lr=0.1, step=1)
    assert_bits_equal(snapshot(params, m, v), before, "written")
    for fn, args in ((lrfast.sgd_step, dict(momentum=0.9)),):
        with pytest.raises(ValueError, match=r"momentum_buffers\[0\]: an unsigned"):
            fn(params, grads, [q8_zeros((300,), False)] * 3, lr=0.1, **args)
    with pytest.raises(ValueError, match=r"grad_avgs\[0\]: an unsigned"):
        lrfast.rmsprop_step(params, grads, v, None, [q8_zeros((300,), False) for _ in range(3)],
                            centered=True)
    # unsigned is fine where values are never negative
    lrfast.rmsprop_step(params, grads, v, lr=0.1)
    lrfast.adagrad_step(params, grads, v, lr=0.1, step=1)


def test_a_float64_state_or_a_shared_q8_state_is_refused():
    params, grads, m, v = adam_arrays(BF16)
    m[0] = np.zeros(300, F64)
    before = snapshot(params, m, v)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] has dtype float64"):
        lrfast.adam_step(params, grads, m, v, lr=0.1, step=1)
    params, grads, m, v = adam_arrays(BF16)
    v[2] = v[0]
    with pytest.raises(ValueError, match="overlap"):
        lrfast.adam_step(params, grads, m, v, lr=0.1, step=1)
    assert_bits_equal(snapshot(params, m, v), before[:3] + snapshot(m, v), "written")


def test_zeros_state_is_exported_and_runs_in_a_step():
    assert lrfast.zeros_state is precision.zeros_state and lrfast.Q8State is Q8State
    assert {"zeros_state", "Q8State"} <= set(lrfast.__all__)
    p = np.random.default_rng(0).standard_normal((64, 80)).astype(BF16)
    m, v = lrfast.zeros_state(p, "q8"), lrfast.zeros_state(p, "q8", signed=False)
    assert isinstance(m, Q8State) and m.codes.shape == p.shape and m.absmax.shape == (20,)
    assert m.nbytes == p.size + 20 * 4
    small = lrfast.zeros_state(np.ones(10, BF16), "q8")
    assert isinstance(small, np.ndarray) and small.dtype == F32
    assert lrfast.zeros_state(p).dtype == BF16 and lrfast.zeros_state(p, "float32").dtype == F32
    g = np.ones_like(p)
    lrfast.adamw_step(p, g, m, v, lr=1e-2, step=1, stochastic_rounding=True, seed=1)
    np.testing.assert_allclose(m.dequantize(), 0.1, rtol=0.01)
    assert m.codes.min() == m.codes.max() and np.all(m.absmax == np.float32(0.1))


def q4_arrays(size=301):
    params, grads, _, _ = adam_arrays(size=size)
    return (params, grads, [q4_zeros((size,), True) for _ in range(3)],
            [q4_zeros((size,), False) for _ in range(3)])


@pytest.mark.parametrize("spoil, error, message", [
    (noncontiguous, ValueError, r"exp_avg_sqs\[2\]\.codes is not C-contiguous"),
    (readonly, ValueError, r"exp_avg_sqs\[2\]\.codes is read-only"),
    (short_absmax, ValueError, r"exp_avg_sqs\[2\]\.absmax has shape \(4,\); expected \(3,\)"),
    (other_shape, ValueError, r"exp_avg_sqs\[2\]\.codes has shape \(152,\); expected \(151,\)"),
    (lambda q: object.__setattr__(q, "_shape", (302,)), ValueError,
     r"exp_avg_sqs\[2\] has shape \(302,\) but params\[2\] has shape \(301,\)"),
    (wrong_codes_dtype, TypeError, r"exp_avg_sqs\[2\]\.codes has dtype int8; expected uint8"),
])
def test_bad_q4_states_are_refused_before_any_write(spoil, error, message):
    refused_before_any_write(q4_arrays(), spoil, error, message)


def test_unsigned_q4_in_a_signed_slot_is_refused():
    params, grads, m, v = q4_arrays()
    m[1] = q4_zeros((301,), False)
    with pytest.raises(ValueError, match=r"exp_avgs\[1\]: an unsigned q4 state cannot hold"):
        lrfast.adam_step(params, grads, m, v, lr=0.1, step=1)
