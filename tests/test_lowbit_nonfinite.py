"""A NaN or an inf in a q8 or q4 block reaches only its own element (issue 19).

lrfast.precision takes a block's scale from its finite values, and gives a
non-finite value a code of its own: +inf the map's top code, -inf its bottom
one, NaN the code of 0 (q4's unsigned map, which has no 0: its least value).
So one bad gradient element may turn its own param into NaN or inf, as with
float32 states, but its block's other params, state elements and scale stay
finite. The steps are checked against the oracle of tests/test_q8_sr_kernels.py
(the states dequantized, lrfast's step on float32 states, re-quantized by
lrfast.precision) bit for bit, on one and two threads and every ISA, against
lrfast.reference, and on the CUDA simulator.
"""

import cuda_sim  # noqa: F401  (before numba: the simulator where no GPU is visible)
import numpy as np
import pytest

import lrfast
from cases import CASE_BY_NAME, call_step
from isa_run import saved_arrays
from lowp_states import assert_same_state, bits
from lrfast import precision, reference
from lrfast.precision import BLOCK, Q4_BLOCK, Q4State, Q8State, unpack_nibbles

pytestmark = pytest.mark.filterwarnings(
    "ignore:(overflow|invalid value) encountered:RuntimeWarning")  # the reference's NaNs

BLOCKS = {"q8": BLOCK, "q4": Q4_BLOCK}
BAD = [np.inf, -np.inf, np.nan]
# The codes +inf, -inf and NaN take, by (kind, signed), and what they hold
# then, in units of their block's absmax: the map's top (1), its low end, and
# 0 (q4's unsigned map has no 0: its least value, 1/16).
CODES = {("q8", True): [255, 0, 127], ("q8", False): [255, 0, 0],
         ("q4", True): [15, 0, 7], ("q4", False): [15, 0, 0]}
HOLDS = {("q8", True): [1, -0.99296874, 0], ("q8", False): [1, 0, 0],
         ("q4", True): [1, -0.8875, 0], ("q4", False): [1, 1 / 16, 1 / 16]}


def codes_of(kind, codes, size):
    """One code per element."""
    return unpack_nibbles(codes, size) if kind == "q4" else codes.reshape(-1)


def dequantize(kind, codes, absmax, size, signed):
    if kind == "q4":
        return precision.dequantize_blockwise_q4(codes, absmax, (size,), signed)
    return precision.dequantize_blockwise(codes, absmax, signed)


# -- the quantizer -------------------------------------------------------------------

@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_non_finite_values_take_their_own_codes_and_leave_the_scale(kind, signed):
    block = BLOCKS[kind]
    x = np.random.default_rng(3).standard_normal(3 * block).astype(np.float32)
    if signed:
        x[block + 9] = -4.0  # block 1's extreme is negative: its scale is 4 / the map's low end
    else:
        x = np.abs(x)
    at = block + np.array([5, 77, block - 1])  # +inf, -inf, NaN in block 1
    others = np.ones(x.size, bool)
    others[at] = False
    clean = np.where(others, x, np.float32(0))
    x[at] = BAD
    codes, absmax = precision.quantize_low_bit(kind, x, signed)
    clean_codes, clean_absmax = precision.quantize_low_bit(kind, clean, signed)
    assert np.isfinite(absmax).all()
    np.testing.assert_array_equal(bits(absmax), bits(clean_absmax))
    got = codes_of(kind, codes, x.size)
    np.testing.assert_array_equal(got[others], codes_of(kind, clean_codes, x.size)[others])
    assert list(got[at]) == CODES[kind, signed]
    y = dequantize(kind, codes, absmax, x.size, signed)
    np.testing.assert_allclose(y[at], np.multiply(HOLDS[kind, signed], absmax[1]), rtol=1e-6)
    np.testing.assert_array_equal(y[others], dequantize(kind, clean_codes, clean_absmax, x.size,
                                                        signed)[others])


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_a_block_without_a_finite_nonzero_value_is_an_all_zero_block(kind, signed):
    block = BLOCKS[kind]
    x = np.zeros(block + 5, np.float32)
    x[[0, 3, 7]] = BAD
    x[block:] = [np.nan, np.inf, -np.inf, np.nan, -np.inf]  # a short last block
    codes, absmax = precision.quantize_low_bit(kind, x, signed)
    zero = CODES[kind, signed][2]  # NaN's code is the code of 0
    assert list(absmax) == [0, 0] and np.all(codes_of(kind, codes, x.size) == zero)


# -- steps on the CPU ------------------------------------------------------------------

OPTIMIZERS = {"adamw": dict(lr=1e-2, weight_decay=0.1), "sgd": dict(lr=0.05, momentum=0.9),
              "lion": dict(lr=1e-3, weight_decay=0.1), "adagrad": dict(lr=0.1)}
# Two params over two driver blocks (32768 elements each), so that two
# threads share them; step BAD_STEP's grads hold the non-finite values from
# AT[t] on, inside one q8 and one q4 block of each param.
SHAPES = [(40000,), (5000,)]
AT = [33007, 300]
BAD_VALUES = {"nan": [np.nan], "inf": [np.inf], "-inf": [-np.inf], "all": BAD}
STEPS, BAD_STEP = 5, 2


def zero_state(kind, param, signed):
    """A zero q8 or q4 state of any size (zeros_state's are float32 below 4096
    elements)."""
    codes, absmax = precision.quantize_low_bit(kind, np.zeros(param.size, np.float32), signed)
    if kind == "q4":
        return Q4State(codes, absmax, param.shape, signed)
    return Q8State(codes.reshape(param.shape), absmax, signed)


def problem(name, kind, dtype, shapes=SHAPES):
    """Params and zero low-bit states (unsigned where the slot allows it)."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    states = {k: [zero_state(kind, p, k in precision.SIGNED_STATES) for p in params]
              for k in CASE_BY_NAME[name].states_for(OPTIMIZERS[name])}
    return params, states


def grads_for(params, step, bad, at=AT):
    rng = np.random.default_rng((1, step))
    grads = [(rng.standard_normal(p.shape) + 0.1).astype(p.dtype) for p in params]
    if step == BAD_STEP:
        for g, i in zip(grads, at):
            g[i:i + len(BAD_VALUES[bad])] = BAD_VALUES[bad]
    return grads


def oracle_step(fn, case, hp, params, grads, states, step):
    """The spec: the states dequantized, lrfast's step on float32 states, then
    re-quantized by lrfast.precision."""
    wide = {k: [s.dequantize() for s in v] for k, v in states.items()}
    call_step(fn, case, hp, params, grads, wide, step)
    for k, v in states.items():
        for s, w in zip(v, wide[k]):
            kind = "q4" if isinstance(s, Q4State) else "q8"
            s.codes[...], s.absmax[...] = precision.quantize_low_bit(kind, w, s.signed)


def run(name, kind, dtype, bad, impl="kernel"):
    """(params, states) after STEPS steps of lrfast's kernel, the oracle or
    lrfast.reference."""
    case, hp = CASE_BY_NAME[name], OPTIMIZERS[name]
    params, states = problem(name, kind, dtype)
    for step in range(1, STEPS + 1):
        grads = grads_for(params, step, bad)
        if impl == "oracle":
            oracle_step(getattr(lrfast, case.step_fn), case, hp, params, grads, states, step)
        else:
            call_step(getattr(lrfast if impl == "kernel" else reference, case.step_fn), case, hp,
                      params, grads, states, step)
    return params, states


def assert_contained(params, states, bad, at=AT):
    """Only the elements given non-finite grads may have non-finite params;
    every state element and scale is finite."""
    for t, p in enumerate(params):
        others = np.ones(p.size, bool)
        others[at[t]:at[t] + len(BAD_VALUES[bad])] = False
        assert np.isfinite(p[others]).all(), f"params[{t}]"
        for name, v in states.items():
            assert np.isfinite(v[t].absmax).all(), f"{name}[{t}].absmax"
            assert np.isfinite(v[t].dequantize()).all(), f"{name}[{t}]"


def assert_same_run(got, want, what):
    (p_got, s_got), (p_want, s_want) = got, want
    for t, (a, b) in enumerate(zip(p_got, p_want, strict=True)):
        np.testing.assert_array_equal(bits(a), bits(b), err_msg=f"{what}: params[{t}]")
    for name in s_want:
        for t, (a, b) in enumerate(zip(s_got[name], s_want[name], strict=True)):
            assert_same_state(a, b, f"{what}: {name}[{t}]")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("kind", ["q8", "q4"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_non_finite_grad_reaches_only_its_element(name, kind, bad, dtype):
    want = run(name, kind, dtype, bad, "oracle")
    assert_contained(*want, bad)
    before = lrfast.get_num_threads()
    try:
        for threads in (1, 2):
            lrfast.set_num_threads(threads)
            assert_same_run(run(name, kind, dtype, bad), want, f"{threads} threads")
    finally:
        lrfast.set_num_threads(before)
    # lrfast.reference: the same states; params of the same kind (finite or
    # not), within the case's tolerance (its float32 arithmetic may differ
    # in the last bit).
    ref_params, ref_states = run(name, kind, dtype, bad, "reference")
    for slot, v in want[1].items():
        for t, s in enumerate(v):
            assert_same_state(ref_states[slot][t], s, f"reference {slot}[{t}]")
    rtol, atol = CASE_BY_NAME[name].tol[dtype]
    for a, b in zip(ref_params, want[0]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def isa_workload(impl="kernel"):
    """Every optimizer and kind with all three non-finite values, float32 and
    float64 params: the arrays of `impl`'s runs (each checked by
    assert_contained), low-bit states as codes and absmax."""
    out = []
    for name in OPTIMIZERS:
        for kind in ("q8", "q4"):
            for dtype in (np.float32, np.float64):
                params, states = run(name, kind, dtype, "all", impl)
                assert_contained(params, states, "all")
                out += [bits(p) for p in params]
                out += [a for v in states.values() for s in v for a in (s.codes, bits(s.absmax))]
    return out


WORKLOAD = """
import sys
import numpy as np
import test_lowbit_nonfinite as t
np.savez(sys.argv[1], *t.isa_workload())
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_isa_matches_the_oracle(isa, tmp_path):
    got = saved_arrays(WORKLOAD, isa, tmp_path)
    want = isa_workload("oracle")
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(a, b, err_msg=f"LRFAST_CPU_ISA={isa}: array {i}")


# -- steps on the CUDA simulator (or a GPU) ------------------------------------------------

CUDA_SHAPES = [(300,)]  # two q8 blocks, three q4 blocks
CUDA_AT = [100]  # +inf, -inf, NaN in q8 block 0 and q4 block 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["q8", "q4"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cuda_keeps_a_non_finite_grad_to_its_element(name, kind, dtype):
    cuda_sim.numba_cuda()
    case, hp = CASE_BY_NAME[name], OPTIMIZERS[name]
    params, states = problem(name, kind, dtype, CUDA_SHAPES)
    d_params = [cuda_sim.device(p) for p in params]
    d_states = {k: [cuda_sim.device(s) for s in v] for k, v in states.items()}
    for step in range(1, 4):
        grads = grads_for(params, step, "all", CUDA_AT)
        call_step(getattr(lrfast, case.step_fn), case, hp, d_params,
                  [cuda_sim.device(g) for g in grads], d_states, step)
        call_step(getattr(reference, case.step_fn), case, hp, params, grads, states, step)
    got_states = {k: [cuda_sim.host(s) for s in v] for k, v in d_states.items()}
    assert_contained(params, states, "all", CUDA_AT)
    for t, p in enumerate(params):
        cuda_sim.assert_same(cuda_sim.host(d_params[t]), p, f"params[{t}]")
        for k in states:
            cuda_sim.assert_same(got_states[k][t], states[k][t], f"{k}[{t}]")
