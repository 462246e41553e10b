"""The low-precision specification: lrfast.precision and the low-precision
paths of lrfast.reference (issue 12), checked against independent oracles."""

import sys
import warnings

import numpy as np
import pytest

from lrfast import reference
from lrfast.precision import (
    BLOCK, Q8State, bfloat16, create_dynamic_map, dequantize_blockwise, quantize_blockwise,
    random_bits, round_nearest, round_stochastic, zeros_state,
)

BF16 = bfloat16()
F16 = np.dtype(np.float16)
SIZES = [0, 1, 255, 256, 257, 4095, 4096, 5000]


def bits16(x):
    return np.asarray(x).view(np.uint16)


# --- the dynamic map -------------------------------------------------------------------------

def test_dynamic_maps_shape_and_symmetry():
    for signed in (True, False):
        m = create_dynamic_map(signed)
        assert m.dtype == np.float32 and m.shape == (256,)
        assert np.all(np.diff(m) > 0)
        assert m[255] == 1.0
    signed, unsigned = create_dynamic_map(True), create_dynamic_map(False)
    assert signed[127] == 0 and unsigned[0] == 0
    np.testing.assert_array_equal(signed[:255], -signed[254::-1])  # no -1: the ends are -0.993, 1
    assert signed[0] == np.float32(-0.99296874)
    assert unsigned.min() == 0 and 1 - unsigned[254] < 0.004
    signed[0] = 5  # a copy: the module's table is untouched
    assert create_dynamic_map(True)[0] != 5


def _bitsandbytes_algorithm(torch, signed):
    """bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8), rewritten."""
    values = []
    for i in range(7):
        points = torch.linspace(0.1, 1, (2**i if signed else 2 ** (i + 1)) + 1)
        means = (points[:-1] + points[1:]) / 2.0
        values += (10 ** (i - 6) * means).tolist()
        if signed:
            values += (-(10 ** (i - 6)) * means).tolist()
    return torch.tensor(sorted(values + [0.0, 1.0])).numpy()


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_is_the_bitsandbytes_algorithm(signed):
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(create_dynamic_map(signed).view(np.uint32),
                                  _bitsandbytes_algorithm(torch, signed).view(np.uint32))


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_equals_bitsandbytes(signed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        functional = pytest.importorskip("bitsandbytes.functional")
        theirs = functional.create_dynamic_map(signed=signed).numpy()
    np.testing.assert_array_equal(create_dynamic_map(signed).view(np.uint32),
                                  theirs.view(np.uint32))


# --- block-wise quantization -----------------------------------------------------------------

def _values(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * np.exp(rng.uniform(-8, 2, n))).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", SIZES)
def test_quantize_picks_the_nearest_code(n, signed):
    x = _values(n, seed=n)
    if not signed:
        x = np.abs(x)
    codes, absmax = quantize_blockwise(x, signed)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    assert absmax.dtype == np.float32 and absmax.shape == (-(-n // BLOCK),)
    padded = np.zeros(absmax.size * BLOCK, np.float32)
    padded[:n] = x
    blocks = padded.reshape(-1, BLOCK)
    top = np.abs(blocks).max(axis=1)
    negative = np.any(blocks == -top[:, None], axis=1) & (top > 0) & signed
    np.testing.assert_array_equal(absmax, np.where(negative, top / np.float32(0.99296874), top))
    scale = np.repeat(absmax.astype(np.float64), BLOCK)[:n]
    normalized = x / scale
    table = create_dynamic_map(signed).astype(np.float64)
    distance = np.abs(table[codes] - normalized)
    nearest = np.abs(table[None, :] - normalized[:, None]).min(axis=1)
    # nearest up to the float32 rounding of x / absmax and of the midpoints
    assert np.all(distance <= nearest + 2**-23 * np.abs(normalized) + 2**-30)
    y = dequantize_blockwise(codes, absmax, signed)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y, (table[codes] * scale).astype(np.float32))
    assert np.all(np.abs(y - x) <= 0.00704 * scale)  # half the widest gap of the map


@pytest.mark.parametrize("n", SIZES)
def test_round_trip_keeps_the_codes(n):
    """quantize(dequantize(q)) == q wherever the block's absmax comes back: unsigned states,
    and signed blocks whose largest magnitude is positive (the map has 1.0 but no -1)."""
    for signed, x in ((False, np.abs(_values(n, 1))), (True, _values(n, 2))):
        if signed and n:
            x[::BLOCK] = np.abs(x).max() * 2  # every block's largest value is positive
        codes, absmax = quantize_blockwise(x, signed)
        again, absmax_again = quantize_blockwise(dequantize_blockwise(codes, absmax, signed), signed)
        np.testing.assert_array_equal(again, codes)
        np.testing.assert_array_equal(absmax_again, absmax)


@pytest.mark.parametrize("extreme", [-2.0, 2.0, -3e-30, 7.5e30, -np.float32(1.3).item()])
def test_extremes_of_either_sign_come_back_exactly(extreme):
    """The scale is |extreme| / |the map's end on its side|: the extreme takes the end's
    code and comes back as itself, and a block quantized again keeps its codes and scale."""
    x = _values(BLOCK) * np.float32(abs(extreme) / 100)
    x[17] = extreme
    codes, absmax = quantize_blockwise(x)
    assert codes[17] == (0 if extreme < 0 else 255)
    y = dequantize_blockwise(codes, absmax)
    assert y[17] == np.float32(extreme)
    again, absmax_again = quantize_blockwise(y)
    np.testing.assert_array_equal(again, codes)
    np.testing.assert_array_equal(absmax_again, absmax)


def test_a_tie_of_extremes_keeps_both():
    x = np.array([2.0, -2.0, 1.0, -0.5], np.float32)
    codes, absmax = quantize_blockwise(x)
    assert list(codes[:2]) == [254, 0] and absmax[0] == np.float32(2) / np.float32(0.99296874)
    np.testing.assert_array_equal(dequantize_blockwise(codes, absmax)[:2], [2.0, -2.0])


def test_an_extreme_float32_cannot_hold_comes_back_within_an_ulp_then_stays():
    """|e| / 0.99296874 * 0.99296874 misses |e| by an ulp for 0.7 % of float32 values
    (the last ones of each binade, whose scale lies a binade up: no scale hits them): they move once, then stay."""
    x = np.zeros(BLOCK, np.float32)
    x[0] = -np.nextafter(np.float32(2), np.float32(0))
    codes, absmax = quantize_blockwise(x)
    y = dequantize_blockwise(codes, absmax)
    assert y[0] != x[0] and abs(int(y[0:1].view(np.int32)[0]) - int(x[0:1].view(np.int32)[0])) == 1
    again, absmax_again = quantize_blockwise(y)
    np.testing.assert_array_equal(dequantize_blockwise(again, absmax_again), y)


@pytest.mark.parametrize("signed", [True, False])
def test_zero_blocks_and_partial_last_block(signed):
    x = np.abs(_values(3 * BLOCK + 3)) if not signed else _values(3 * BLOCK + 3)
    x[BLOCK:2 * BLOCK] = 0
    x[-3:] = [0.0, 0.5, 0.25]
    codes, absmax = quantize_blockwise(x, signed)
    zero = 127 if signed else 0
    assert absmax[1] == 0 and np.all(codes[BLOCK:2 * BLOCK] == zero)
    assert absmax[3] == 0.5 and list(codes[-3:]) == [zero, 255, codes[-1]]
    y = dequantize_blockwise(codes, absmax, signed)
    assert np.all(y[BLOCK:2 * BLOCK] == 0) and y[-2] == 0.5 and abs(y[-1] - 0.25) < 0.002


@pytest.mark.parametrize("signed", [True, False])
def test_ties_take_the_lower_code(signed):
    table = create_dynamic_map(signed).astype(np.float64)
    midpoints = (table[:-1] + table[1:]) / 2
    exact = np.flatnonzero(midpoints == midpoints.astype(np.float32))
    assert exact.size > 100
    above = np.nextafter(midpoints[exact].astype(np.float32), np.float32(np.inf))
    for x, expected in ((midpoints[exact], exact), (above, exact + 1)):
        codes, absmax = quantize_blockwise(np.concatenate([[1.0], x]).astype(np.float32), signed)
        assert list(absmax) == [1.0]
        np.testing.assert_array_equal(codes[1:], expected)


# --- Q8State and zeros_state -----------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, BF16, F16])
def test_zeros_state(n, dtype):
    param = np.ones((n,), dtype)
    for name in (None, "float32", "bfloat16", param.dtype.name):
        s = zeros_state(param, name)
        assert s.dtype == (param.dtype if name is None else np.dtype(name))
        assert s.shape == param.shape and not s.any() and s.flags.c_contiguous
    for signed in (True, False):
        s = zeros_state(param, "q8", signed=signed)
        if n < 4096:
            assert isinstance(s, np.ndarray) and s.dtype == np.float32 and not s.any()
            continue
        assert isinstance(s, Q8State) and s.signed is signed and s.shape == (n,)
        assert np.all(s.codes == (127 if signed else 0)) and s.absmax.shape == (-(-n // 256),)
        assert s.nbytes == n + 4 * s.absmax.size <= 1.05 * n
        np.testing.assert_array_equal(s.dequantize(), np.zeros(n, np.float32))


def test_zeros_state_q8_keeps_the_shape():
    s = zeros_state(np.zeros((64, 80), BF16), "q8")
    assert s.codes.shape == (64, 80) and s.absmax.shape == (20,) and s.dequantize().shape == (64, 80)


def test_zeros_state_refuses_bad_arguments():
    f32 = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="dtype: float64 states need a float64 param"):
        zeros_state(np.zeros(8, BF16), "float64")
    with pytest.raises(ValueError, match="dtype: float16 states need a float16 param"):
        zeros_state(f32, "float16")
    with pytest.raises(ValueError, match="dtype: expected"):
        zeros_state(f32, "int8")
    with pytest.raises(TypeError, match="dtype: expected"):
        zeros_state(f32, np.float32)
    with pytest.raises(TypeError, match="param: expected a NumPy array"):
        zeros_state([1.0, 2.0])
    with pytest.raises(TypeError, match="param: dtype int32"):
        zeros_state(np.zeros(8, np.int32))
    with pytest.raises(TypeError, match="signed: expected a bool"):
        zeros_state(f32, "q8", signed=1)


def test_q8state_refuses_bad_arrays():
    codes, absmax = np.zeros(600, np.uint8), np.zeros(3, np.float32)
    Q8State(codes, absmax)
    with pytest.raises(TypeError, match="codes: expected dtype uint8"):
        Q8State(codes.astype(np.int8), absmax)
    with pytest.raises(ValueError, match="codes: the array must be C-contiguous"):
        Q8State(np.zeros(1200, np.uint8)[::2], absmax)
    readonly = codes.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="codes: the array must be writeable"):
        Q8State(readonly, absmax)
    with pytest.raises(ValueError, match="absmax: expected 3 values"):
        Q8State(codes, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="absmax: expected a NumPy array"):
        Q8State(codes, [0.0, 0.0, 0.0])


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(ImportError, match="bfloat16 arrays need ml_dtypes: pip install ml_dtypes"):
        zeros_state(np.zeros(8, np.float32), "bfloat16")


# --- 16-bit rounding -------------------------------------------------------------------------

def _float32_bits(n, seed):
    """float32 values of every kind: random bit patterns, ties, subnormals, infs and NaNs."""
    u = np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    u[: n // 8] = (u[: n // 8] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)  # bfloat16 ties
    return u


def test_nearest_bfloat16_is_the_rounding_bit_trick():
    u = _float32_bits(1 << 16, 0)
    x = u.view(np.float32)
    finite = np.isfinite(x)
    trick = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    got = bits16(round_nearest(x, BF16))
    np.testing.assert_array_equal(got[finite], trick[finite])
    assert np.all(np.isnan(round_nearest(x, BF16)[np.isnan(x)].astype(np.float32)))


def test_nearest_from_float64_goes_through_float32():
    x = np.array([1 + 2**-8 + 2**-30, 1 + 2**-11 + 2**-40])
    np.testing.assert_array_equal(bits16(round_nearest(x, BF16)),
                                  bits16(x.astype(np.float32).astype(BF16)))
    np.testing.assert_array_equal(round_nearest(x, F16), x.astype(np.float32).astype(F16))


def test_stochastic_bfloat16_is_the_bit_trick():
    u = _float32_bits(1 << 16, 1)
    x = u.view(np.float32)
    r = random_bits(5, 9, 0, u.size)
    got = bits16(round_stochastic(x, BF16, r))
    trick = ((u.astype(np.uint64) + (0xFFFF - (r >> 16))) >> 16).astype(np.uint16)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(got[finite], trick[finite])
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[nan], (u[nan] >> 16).astype(np.uint16) | np.uint16(0x40))
    inf = np.isinf(x)
    np.testing.assert_array_equal(got[inf], (u[inf] >> 16).astype(np.uint16))


def test_stochastic_float16_in_the_normal_range_is_the_bit_trick():
    rng = np.random.default_rng(2)
    x = (rng.uniform(2**-14, 65504, 1 << 16) * rng.choice([-1, 1], 1 << 16)).astype(np.float32)
    x[:1000] = np.float32(2.0) ** rng.integers(-14, 16, 1000)  # exact values never move
    u = x.view(np.uint32)
    r = random_bits(1, 2, 3, x.size)
    exponent = ((u >> 23) & 0xFF).astype(np.int64) - 127 + 15
    truncated = ((u >> 16) & 0x8000) | (exponent << 10).astype(np.uint32) | ((u >> 13) & 0x3FF)
    expected = (truncated + ((r >> 19) < (u & 0x1FFF))).astype(np.uint16)
    np.testing.assert_array_equal(bits16(round_stochastic(x, F16, r)), expected)


def test_stochastic_float16_edges():
    x = np.array([0.0, -0.0, 2**-24, 2**-25, -(2**-26), 1e-30, 65504, 65519, 65535.9, 65536,
                  1e10, -1e10, np.inf, -np.inf, np.nan], np.float32)
    never, always = np.zeros(x.size, np.uint32), np.full(x.size, 2**32 - 1, np.uint32)
    lo, hi = round_stochastic(x, F16, always), round_stochastic(x, F16, never)
    tiny = 2.0**-24
    assert list(lo[:6]) == [0, 0, tiny, 0, 0, 0] and list(hi[:6]) == [0, 0, tiny, tiny, -tiny, tiny]
    assert np.signbit(lo[1]) and np.signbit(lo[4])
    assert list(lo[6:9]) == [65504] * 3 and list(hi[6:9]) == [65504, np.inf, np.inf]
    assert np.all(np.isinf(lo[9:14])) and np.all(np.isinf(hi[9:14]))
    assert np.isnan(lo[14]) and np.isnan(hi[14])


@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("value", [1 + 2**-12, -(1 + 3 * 2**-13), 3.3e-6, 1e-7, -3e-8, 300.7])
def test_stochastic_rounding_is_unbiased(dtype, value):
    n = 1 << 16
    x = np.full(n, value, np.float32)
    y = round_stochastic(x, dtype, random_bits(11, 1, 0, n)).astype(np.float64)
    neighbours = np.unique(y)
    assert neighbours.size <= 2
    gap = np.diff(neighbours)[0] if neighbours.size == 2 else 1.0
    assert abs(y.mean() - float(x[0])) < 5 * 0.5 * gap / np.sqrt(n)


def test_random_bits_golden_values():
    """The first numbers of the hash, for the kernels to reproduce (see random_bits)."""
    assert [hex(r) for r in random_bits(0, 0, 0, 4)] == [
        "0xa67abac", "0xacfea16f", "0x8776609", "0x3bc19c08"]
    assert [hex(r) for r in random_bits(12345, 7, 2**32 - 2, 4)] == [
        "0x1eb17e75", "0x93772931", "0xc948f889", "0xec579b98"]
    assert random_bits(2**64 - 1, 2**64 - 1, 2**40, 3).dtype == np.uint32
    np.testing.assert_array_equal(random_bits(3, 4, 100, 50), random_bits(3, 4, 0, 150)[100:])
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            random_bits(bad, 0, 0, 1)
    with pytest.raises(TypeError, match="step: expected an int"):
        random_bits(0, 1.5, 0, 1)


def test_random_bits_look_uniform():
    r = random_bits(0, 0, 0, 1 << 16)
    counts = np.bincount(r >> 28, minlength=16)
    assert np.all(np.abs(counts - 4096) < 5 * 64)
    assert np.mean(random_bits(0, 0, 0, 4096) == random_bits(1, 0, 0, 4096)) < 0.01
    assert np.mean(random_bits(0, 0, 0, 4096) == random_bits(0, 1, 0, 4096)) < 0.01


# --- stochastic rounding in the steps --------------------------------------------------------

def test_sgd_stochastic_rounding_moves_a_bfloat16_param_by_the_right_amount():
    """1.0 + 4096 updates of 1/32 ulp (2**-12) is 2.0 on average; to nearest, nothing moves."""
    n, steps = 256, 4096
    grad = np.full(n, -(2.0**-12), np.float32)
    sr, rne = np.ones(n, BF16), np.ones(n, BF16)
    for step in range(1, steps + 1):
        reference.sgd_step([sr], [grad], lr=1.0, step=step, stochastic_rounding=True, seed=7)
        reference.sgd_step([rne], [grad], lr=1.0, step=step)
    assert np.all(rne == 1)
    moved = sr.astype(np.float64)
    assert abs(moved.mean() - 2.0) < 0.03  # std of the mean ~ 0.006
    assert moved.std() > 0


def _sgd_run(sizes, seed, stochastic_rounding=True):
    rng = np.random.default_rng(0)
    total = sum(sizes)
    p = rng.standard_normal(total).astype(BF16)
    g = (rng.standard_normal(total) * 1e-3).astype(np.float32)
    ps = np.split(p.copy(), np.cumsum(sizes)[:-1])
    gs = np.split(g, np.cumsum(sizes)[:-1])
    reference.sgd_step(ps, gs, lr=1.0, step=3, stochastic_rounding=stochastic_rounding, seed=seed)
    return bits16(np.concatenate(ps))


def test_stochastic_rounding_is_reproducible_and_independent_of_the_split():
    whole = _sgd_run([5000], seed=1)
    np.testing.assert_array_equal(whole, _sgd_run([5000], seed=1))
    np.testing.assert_array_equal(whole, _sgd_run([1000, 3000, 1000], seed=1))
    np.testing.assert_array_equal(whole, _sgd_run([1, 4998, 1], seed=1))
    assert np.mean(whole != _sgd_run([5000], seed=2)) > 0.1
    assert np.mean(whole != _sgd_run([5000], seed=1, stochastic_rounding=False)) > 0.1


def test_stochastic_rounding_leaves_float32_params_alone():
    p = np.linspace(-1, 1, 100, dtype=np.float32)
    q = p.copy()
    g = np.full(100, 1e-3, np.float32)
    reference.sgd_step([p], [g], lr=0.1, stochastic_rounding=True, seed=5)
    reference.sgd_step([q], [g], lr=0.1)
    np.testing.assert_array_equal(p, q)


# --- every step against an fp32 oracle -------------------------------------------------------

SIGNED_SLOTS = {"momentum_buffers", "exp_avgs", "grad_avgs"}
OPTIMIZERS = {
    "sgd": (reference.sgd_step, ["momentum_buffers"],
            dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), True),
    "adam": (reference.adam_step, ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
             dict(lr=1e-2, amsgrad=True, weight_decay=0.01, maximize=True), True),
    "adamw": (reference.adamw_step, ["exp_avgs", "exp_avg_sqs"],
              dict(lr=1e-2, weight_decay=0.1, grad_scale=0.5), True),
    "rmsprop": (reference.rmsprop_step, ["square_avgs", "momentum_buffers"],
                dict(lr=1e-2, momentum=0.9, weight_decay=0.01), False),
    "rmsprop_centered": (reference.rmsprop_step, ["square_avgs", "grad_avgs"],
                         dict(lr=1e-3, centered=True), False),
    "adagrad": (reference.adagrad_step, ["state_sums"],
                dict(lr=0.1, lr_decay=0.01, weight_decay=0.01), True),
    "adadelta": (reference.adadelta_step, ["square_avgs", "acc_deltas"],
                 dict(lr=1.0, weight_decay=0.01), False),
}


def _widen(x, dtype):
    return x.dequantize().astype(dtype) if isinstance(x, Q8State) else x.astype(dtype)


def _oracle_step(fn, params, grads, states, kwargs, step, has_step, seed, stochastic_rounding):
    """The fp32 (fp64) reference on widened copies, then every result rounded once: returns the
    expected new params and states (arrays, or (codes, absmax) for q8)."""
    dtypes = [np.float64 if p.dtype == np.float64 else np.float32 for p in params]
    wide_params = [p.astype(d) for p, d in zip(params, dtypes)]
    wide_states = {k: [_widen(s, d) for s, d in zip(v, dtypes)] for k, v in states.items()}
    fn(wide_params, [g.astype(d) for g, d in zip(grads, dtypes)], **wide_states, **kwargs,
       **(dict(step=step) if has_step else {}))
    new_params, position = [], 0
    for p, w in zip(params, wide_params):
        if stochastic_rounding and p.dtype.itemsize == 2:
            bits = random_bits(seed, step if has_step else 0, position, p.size)
            new_params.append(round_stochastic(w, p.dtype, bits))
        else:
            new_params.append(round_nearest(w, p.dtype))
        position += p.size
    new_states = {k: [quantize_blockwise(w, s.signed) if isinstance(s, Q8State)
                      else round_nearest(w, s.dtype) for s, w in zip(states[k], wide_states[k])]
                  for k in states}
    return new_params, new_states


def _assert_same_bits(got, expected):
    if isinstance(got, Q8State):
        np.testing.assert_array_equal(got.codes, expected[0])
        np.testing.assert_array_equal(got.absmax.view(np.uint32), expected[1].view(np.uint32))
    else:
        assert got.dtype == expected.dtype
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
        np.testing.assert_array_equal(got.view(width), expected.view(width))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("param_dtype, grad_dtype, state_dtype, stochastic_rounding", [
    (BF16, BF16, None, False),
    (BF16, np.float32, "q8", True),
    (BF16, BF16, "float32", True),
    (F16, F16, None, True),
    (F16, np.float32, "q8", False),
    (F16, F16, "bfloat16", False),
    (np.float32, np.float32, "q8", False),
    (np.float32, np.float32, "bfloat16", True),
    (np.float64, np.float64, "q8", False),
])
def test_low_precision_step_is_the_fp32_step_rounded(name, param_dtype, grad_dtype, state_dtype,
                                                     stochastic_rounding):
    fn, slots, kwargs, has_step = OPTIMIZERS[name]
    rng = np.random.default_rng(len(name))
    params = [rng.standard_normal(n).astype(param_dtype) for n in (5000, 300)]
    states = {k: [zeros_state(p, state_dtype, signed=k in SIGNED_SLOTS) for p in params]
              for k in slots}
    if state_dtype == "q8":
        assert isinstance(states[slots[0]][0], Q8State)
    for step in (1, 2, 3):
        grads = [(rng.standard_normal(p.shape) * 0.1).astype(grad_dtype) for p in params]
        expected_params, expected_states = _oracle_step(
            fn, params, grads, states, kwargs, step, has_step, 4, stochastic_rounding)
        fn(params, grads, **states, **kwargs, stochastic_rounding=stochastic_rounding, seed=4,
           **(dict(step=step) if has_step else {}))
        for p, e in zip(params, expected_params):
            _assert_same_bits(p, e)
        for k in slots:
            for s, e in zip(states[k], expected_states[k]):
                _assert_same_bits(s, e)
    assert np.all(np.isfinite(params[0].astype(np.float32)))


def test_param_update_uses_the_unquantized_moments():
    """One Adam step from zero states: m = 0.1 g, v = 0.001 g², so the update is lr * sign(g)
    up to eps, whatever the quantization of m and v does."""
    rng = np.random.default_rng(3)
    p = np.zeros(4096, np.float32)
    g = rng.standard_normal(4096).astype(np.float32)
    m, v = zeros_state(p, "q8"), zeros_state(p, "q8", signed=False)
    reference.adam_step([p], [g], [m], [v], lr=1e-3, step=1, eps=1e-12)
    np.testing.assert_allclose(p, -1e-3 * np.sign(g), rtol=1e-5)
    assert np.abs(m.dequantize() - 0.1 * g).max() > 1e-4  # the stored moments did round


def test_unsigned_q8_refused_where_values_can_be_negative():
    p = np.zeros(4096, np.float32)
    g = np.ones(4096, np.float32)
    unsigned, signed = zeros_state(p, "q8", signed=False), zeros_state(p, "q8")
    with pytest.raises(ValueError, match=r"exp_avgs\[0\]: an unsigned q8 state"):
        reference.adam_step([p], [g], [unsigned], [zeros_state(p, "q8", signed=False)], step=1)
    with pytest.raises(ValueError, match=r"momentum_buffers\[0\]"):
        reference.sgd_step([p], [g], [unsigned], lr=0.1, momentum=0.9, step=1)
    with pytest.raises(ValueError, match=r"grad_avgs\[0\]"):
        reference.rmsprop_step([p], [g], [unsigned], None, [unsigned], centered=True)
    assert not p.any() and np.all(unsigned.codes == 0)
    reference.adam_step([p], [g], [signed], [unsigned], step=1)  # unsigned second moments: fine
    assert np.all(p < 0)


# --- torch's bfloat16 optimizers ------------------------------------------------------------
# torch keeps the states in the param's dtype. Adam and AdamW are compared with torch's fused
# CPU kernels over 5 steps. SGD and Adagrad over one step with torch's single-tensor code: in
# torch 2.13 the fused CPU SGD leaves bfloat16 params unchanged in its vectorized body, and the
# fused CPU Adagrad divides by the bfloat16-rounded sum (several ulps off where the update
# cancels the param); the single-tensor code rounds after every op, which after a few steps
# drifts by more than an ulp where the update cancels the param.

TORCH_CASES = {
    "Adam": (reference.adam_step, dict(lr=1e-2, weight_decay=0.01, fused=True),
             ["exp_avg", "exp_avg_sq"], 5),
    "AdamW": (reference.adamw_step, dict(lr=1e-2, weight_decay=0.1, fused=True),
              ["exp_avg", "exp_avg_sq"], 5),
    "SGD": (reference.sgd_step, dict(lr=1e-2, momentum=0.9, weight_decay=0.01, foreach=False),
            ["momentum_buffer"], 1),
    "Adagrad": (reference.adagrad_step, dict(lr=1e-1, lr_decay=0.01, foreach=False), ["sum"], 1),
}


def _to_torch(torch, x):
    return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)


def _from_torch(torch, t):
    return t.detach().view(torch.int16).numpy().view(np.uint16).view(BF16)


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_matches_torch_bfloat16(name):
    torch = pytest.importorskip("torch")
    fn, options, slots, steps = TORCH_CASES[name]
    kwargs = {k: v for k, v in options.items() if k not in ("fused", "foreach")}
    rng = np.random.default_rng(5)
    n = 20000
    p = rng.standard_normal(n).astype(BF16)
    theirs = _to_torch(torch, p).requires_grad_()
    optimizer = getattr(torch.optim, name)([theirs], **options)
    states = [np.zeros(n, BF16) for _ in slots]
    for step in range(1, steps + 1):
        g = (rng.standard_normal(n) * 0.1).astype(BF16)
        theirs.grad = _to_torch(torch, g)
        optimizer.step()
        fn([p], [g], *[[s] for s in states], step=step, **kwargs)
        ours, torch_p = p.astype(np.float64), _from_torch(torch, theirs).astype(np.float64)
        ulp = np.spacing(np.maximum(np.abs(ours), np.abs(torch_p)).astype(BF16)).astype(np.float64)
        diff = np.abs(ours - torch_p)
        assert np.all(diff <= ulp), step
        assert np.mean(diff == 0) >= 0.99, step
    # states: 99% within 1 ulp (torch rounds weight decay's alpha; where the decay cancels the
    # gradient the relative difference grows)
    for s, slot in zip(states, slots):
        ours = s.astype(np.float64)
        torch_s = _from_torch(torch, optimizer.state[theirs][slot]).astype(np.float64)
        ulp = np.spacing(np.maximum(np.abs(ours), np.abs(torch_s)).astype(BF16)).astype(np.float64)
        assert np.mean(np.abs(ours - torch_s) <= ulp) >= 0.99


# --- q4 states --------------------------------------------------------------------------------

from lrfast import precision  # noqa: E402
from lrfast.precision import (Q4_BLOCK, Q4State, create_q4_map, dequantize_blockwise_q4,  # noqa: E402
                              quantize_blockwise_q4, unpack_nibbles)


def test_q4_maps_are_torchaos():
    signed, unsigned = create_q4_map(True), create_q4_map(False)
    assert signed[0] == np.float32(-0.8875) and signed[7] == 0 and signed[15] == 1
    np.testing.assert_array_equal(unsigned, np.arange(1, 17, dtype=np.float32) / 16)
    quant_utils = _torchao_quant_utils()
    np.testing.assert_array_equal(signed, np.array(quant_utils.create_dynamic_map(True, 3, 4),
                                                   np.float32))


def _torchao_quant_utils():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("torchao.optim.quant_utils")


@pytest.mark.parametrize("signed", [True, False])
def test_q4_thresholds_are_torchaos_rounding_rule(signed):
    """Each threshold takes code k + 1 by torchao's float32 comparison, the
    float below it code k: the thresholds are its rule, not a copy of it."""
    table, thresholds = create_q4_map(signed), precision._Q4_THRESHOLDS[signed]
    for k, t in enumerate(thresholds):
        lo, hi = table[k], table[k + 1]
        up = lambda n: np.float32(n - lo) >= np.float32(np.float32(hi - lo) * np.float32(0.5))  # noqa: E731
        below = np.nextafter(t, np.float32(-np.inf))
        assert lo < t <= hi and up(t) and not (below >= lo and up(below))


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [0, 1, 127, 128, 129, 4097, 10000])
def test_q4_codes_are_torchaos_where_the_extreme_is_positive(n, signed):
    torch = pytest.importorskip("torch")
    quant_utils = _torchao_quant_utils()
    x = _values(n, seed=n)
    if not signed:
        x = np.abs(x)
    x[::Q4_BLOCK] = np.abs(x).max(initial=0) * 2  # every block's extreme is positive
    codes, absmax = quantize_blockwise_q4(x, signed)
    assert codes.shape == ((n + 1) // 2,) and absmax.shape == (-(-n // Q4_BLOCK),)
    padded = np.concatenate([x, np.ones(-n % Q4_BLOCK, np.float32)])
    scaled, scale = quant_utils.scale_tensor(torch.from_numpy(padded), Q4_BLOCK)
    theirs = quant_utils.quantize_4bit_with_qmap(scaled, torch.from_numpy(create_q4_map(signed)))
    np.testing.assert_array_equal(unpack_nibbles(codes, n), theirs.numpy()[:n])
    np.testing.assert_array_equal(absmax, scale.numpy())


def test_q4_layout_nibbles_ties_and_specials():
    x = np.array([1.0, 0.0, -0.8875, 0.5, 0.25, np.float32(0.0055) / 2, 0.3], np.float32)
    codes, absmax = quantize_blockwise_q4(x)
    assert absmax[0] == 1 and codes.size == 4
    assert list(codes) == [15 << 4 | 7, 0 << 4 | 12, 11 << 4 | 8, 11 << 4]  # 0.3 -> 0.2125
    y = dequantize_blockwise_q4(codes, absmax, x.shape)
    assert y[0] == 1 and y[1] == 0 and y[2] == np.float32(-0.8875)
    codes, absmax = quantize_blockwise_q4(np.zeros(3, np.float32), signed=False)
    assert absmax[0] == 0 and list(codes) == [0, 0]
    assert np.all(dequantize_blockwise_q4(codes, absmax, (3,), signed=False) == 0)


@pytest.mark.parametrize("extreme", [-2.0, 2.0, -3e-30])
def test_q4_extremes_of_either_sign_come_back(extreme):
    x = _values(Q4_BLOCK) * np.float32(abs(extreme) / 100)
    x[5] = extreme
    codes, absmax = quantize_blockwise_q4(x)
    y = dequantize_blockwise_q4(codes, absmax, x.shape)
    assert y[5] == np.float32(extreme)
    again = quantize_blockwise_q4(y)
    np.testing.assert_array_equal(again[0], codes)
    np.testing.assert_array_equal(again[1], absmax)


def test_q4_state_and_zeros_state():
    p = np.zeros((64, 65), np.float32)
    s = zeros_state(p, "q4")
    assert isinstance(s, Q4State) and s.signed and s.shape == (64, 65)
    assert s.codes.shape == (2080,) and s.absmax.shape == (33,) and np.all(s.codes == 0x77)
    assert s.nbytes == 2080 + 33 * 4 and s.nbytes / p.size <= 0.54
    assert np.all(s.dequantize() == 0) and s.dequantize().shape == (64, 65)
    u = zeros_state(p, "q4", signed=False)
    assert not u.signed and np.all(u.codes == 0) and np.all(u.dequantize() == 0)
    assert zeros_state(np.zeros(4095, np.float32), "q4").dtype == np.float32
    assert repr(s) == "Q4State(shape=(64, 65), signed=True)"
    for args, error, match in (
            ((np.zeros(3, np.uint8), np.zeros(1, np.float32), (5,)), None, None),
            ((np.zeros(2, np.uint8), np.zeros(1, np.float32), (5,)), ValueError, "codes: expected 3"),
            ((np.zeros(3, np.uint8), np.zeros(2, np.float32), (5,)), ValueError, "absmax: expected 1"),
            ((np.zeros(3, np.int8), np.zeros(1, np.float32), (5,)), TypeError, "codes: expected dtype"),
            ((np.zeros(3, np.uint8), np.zeros(1, np.float32), 5), TypeError, "shape"),
            ((np.zeros(3, np.uint8), np.zeros(1, np.float32), (-5,)), TypeError, "shape")):
        if error is None:
            Q4State(*args)
        else:
            with pytest.raises(error, match=match):
                Q4State(*args)
