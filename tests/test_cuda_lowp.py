"""The CUDA back end with bfloat16/float16 arrays and q8/q4 states, against
lrfast.reference on host copies.

In Numba's CUDA simulator (no GPU visible) every result must equal the
reference bit for bit: the simulator computes in NumPy scalars and fuses
nothing. On a GPU NVVM may contract multiply-adds, so 16-bit values may be
one ulp off and q8/q4 codes one code off. The steps call the back end directly
(``ops.<kernel>(arrays, names, hparams)``) with the hparams keys the front
end adds: ``stochastic_rounding`` and ``sr_key`` (see lrfast._hparams.rounding).
"""

import numpy as np
import pytest

from cuda_sim import Exported, assert_same, device, host, numba_cuda  # before numba: GPU or simulator

cuda = numba_cuda()
ml_dtypes = pytest.importorskip("ml_dtypes")

from lrfast import _hparams, reference  # noqa: E402
from lrfast.cuda import launch, ops  # noqa: E402
from lrfast.precision import BLOCK, Q4_BLOCK, Q4State, Q8State, zeros_state  # noqa: E402

SIMULATED = launch.SIMULATED
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
STEPS = 3
SHAPES = [(0,), (1,), (7,), (255,), (257,)]
# q4 blocks are 128 elements, two codes a byte: odd sizes, a second block,
# and a second walk of 256 (the kernels' unit) with a partial block.
Q4_SHAPES = [(0,), (1,), (7,), (129,), (300,)]
SHAPES_OF = {"q4": Q4_SHAPES}  # per state kind; SHAPES otherwise

if SIMULATED:
    pytestmark = pytest.mark.filterwarnings(
        "ignore:(overflow|invalid value) encountered in scalar:RuntimeWarning")


# -- problems -------------------------------------------------------------------------

# kernel, reference function, state names, hyperparameters using every state slot
OPTIMIZERS = {
    "sgd": ("sgd", ("momentum_buffers",),
            dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.01)),
    "adam": ("adam", ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
             dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=True)),
    "adamw": ("adam", ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
              dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, amsgrad=True)),
    "rmsprop": ("rmsprop", ("square_avgs", "momentum_buffers", "grad_avgs"),
                dict(lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.1, momentum=0.5,
                     centered=True)),
    "adagrad": ("adagrad", ("state_sums",), dict(lr=0.1, lr_decay=0.01, weight_decay=0.1,
                                                 eps=1e-10)),
    "adadelta": ("adadelta", ("square_avgs", "acc_deltas"),
                 dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.1)),
}
TAKES_STEP = {"sgd", "adam", "adamw", "adagrad"}
NEVER_NEGATIVE = {"exp_avg_sqs", "max_exp_avg_sqs", "square_avgs", "state_sums", "acc_deltas"}


def hparams(name, step, stochastic_rounding=False, seed=0):
    kernel, _, kw = OPTIMIZERS[name]
    kw = dict(kw, maximize=False, grad_scale=1.0, stochastic_rounding=stochastic_rounding,
              seed=seed)
    if name in ("adam", "adamw"):
        hp = _hparams.adam(step=step, decoupled=name == "adamw", **kw)
    elif name in ("sgd", "adagrad"):
        hp = getattr(_hparams, kernel)(step=step, **kw)
    else:
        hp = getattr(_hparams, kernel)(**kw)
    return hp


def q8_zeros(shape, signed):
    return Q8State(np.full(shape, 127 if signed else 0, np.uint8),
                   np.zeros(-(-int(np.prod(shape)) // BLOCK), np.float32), signed)


def q4_zeros(shape, signed):
    size = int(np.prod(shape))
    return Q4State(np.full((size + 1) // 2, 0x77 if signed else 0, np.uint8),
                   np.zeros(-(-size // Q4_BLOCK), np.float32), shape, signed)


def make_state(kind, param, state_name):
    """A zero state of `kind`: "float32", "param" (its dtype), "bfloat16", "q8" or "q4"."""
    if kind in ("q8", "q4"):
        zeros = q8_zeros if kind == "q8" else q4_zeros
        return zeros(param.shape, state_name not in NEVER_NEGATIVE)
    dtype = {"float32": np.float32, "param": param.dtype, "bfloat16": BF16}[kind]
    return np.zeros(param.shape, dtype)


def make_problem(name, shapes, dtypes, state_kinds, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32).astype(d) for s, d in zip(shapes, dtypes)]
    states = {s: [make_state(kind, p, s) for p, kind in zip(params, state_kinds)]
              for s in OPTIMIZERS[name][1]}
    return params, states


def gradients(params, step, grad_dtypes):
    rng = np.random.default_rng(100 + step)
    return [(rng.standard_normal(p.shape) * 0.5 + 0.1).astype(np.float32).astype(d)
            for p, d in zip(params, grad_dtypes)]


def run(name, params, states, grad_dtypes, steps=STEPS, stochastic_rounding=False, seed=7):
    """Steps on the device and on the reference; returns both final states."""
    kernel, state_names, kw = OPTIMIZERS[name]
    d_params = [device(p) for p in params]
    d_states = {k: [device(s) for s in v] for k, v in states.items()}
    r_params = [p.copy() for p in params]
    r_states = {k: [host(device(s)) for s in v] for k, v in states.items()}
    for step in range(1, steps + 1):
        grads = gradients(params, step, grad_dtypes)
        hp = hparams(name, step, stochastic_rounding, seed)
        getattr(ops, kernel)((d_params, [device(g) for g in grads],
                              *(d_states[s] for s in state_names)),
                             ("params", "grads") + state_names, hp)
        ref_kw = dict(kw, stochastic_rounding=stochastic_rounding, seed=seed)
        if name in TAKES_STEP:
            ref_kw["step"] = step
        getattr(reference, f"{name}_step")(r_params, grads, *(r_states[s] for s in state_names),
                                           **ref_kw)
    return ([host(p) for p in d_params], {k: [host(s) for s in v] for k, v in d_states.items()},
            r_params, r_states)


def assert_all_same(result):
    d_params, d_states, r_params, r_states = result
    for t, (got, want) in enumerate(zip(d_params, r_params)):
        assert_same(got, want, f"params[{t}]")
    for name in r_states:
        for t, (got, want) in enumerate(zip(d_states[name], r_states[name])):
            assert_same(got, want, f"{name}[{t}]")


# -- steps -------------------------------------------------------------------------------

@pytest.mark.parametrize("state_kind", ["float32", "param", "bfloat16", "q8", "q4"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_steps_match_reference(name, dtype, state_kind):
    # The grads alternate between float32 and the param's dtype.
    shapes = SHAPES_OF.get(state_kind, SHAPES)
    params, states = make_problem(name, shapes, [dtype] * len(shapes), [state_kind] * len(shapes))
    grad_dtypes = [np.float32 if t % 2 else dtype for t in range(len(shapes))]
    assert_all_same(run(name, params, states, grad_dtypes))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_stochastic_rounding_matches_reference(name, dtype):
    params, states = make_problem(name, SHAPES, [dtype] * len(SHAPES), ["float32"] * len(SHAPES))
    assert_all_same(run(name, params, states, [dtype] * len(SHAPES), stochastic_rounding=True))


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_low_bit_blocks_across_pieces_and_a_wrapping_grid(kind):
    # 600 elements: three pieces of whole q8 blocks in the simulator, more
    # than its two blocks of grid, the last a partial q4 block; 256: exactly
    # one q8 block, two q4 blocks; 3 x 5: an odd count of q4 codes.
    shapes = [(600,), (256,), (3, 5)]
    params, states = make_problem("adam", shapes, [BF16] * 3, [kind] * 3)
    assert_all_same(run("adam", params, states, [np.float32] * 3))


def test_q8_and_q4_states_of_one_param():
    # One kernel re-quantizes q8 and q4 slots: extremes per q4 block, of
    # which a q8 slot takes the extreme of both.
    params, _ = make_problem("adam", [(300,), (129,)], [BF16] * 2, ["float32"] * 2)
    states = {"exp_avgs": [q4_zeros(p.shape, True) for p in params],
              "exp_avg_sqs": [q8_zeros(p.shape, False) for p in params],
              "max_exp_avg_sqs": [q4_zeros(p.shape, False) for p in params]}
    assert_all_same(run("adam", params, states, [np.float32] * 2))


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_a_list_of_every_dtype_and_state_kind(kind):
    # One call, several groups (one launch each); stochastic rounding counts
    # positions over the whole list, across the groups.
    shapes = [(5,), (300,), (9,), (40,), (260,), (3,)]
    dtypes = [BF16, F16, np.float32, np.float64, np.float32, BF16]
    kinds = [kind, "bfloat16", kind, "float32", "bfloat16", "param"]
    params, states = make_problem("adamw", shapes, dtypes, kinds)
    grad_dtypes = [np.float32, F16, np.float32, np.float64, np.float32, BF16]
    assert_all_same(run("adamw", params, states, grad_dtypes, stochastic_rounding=True))


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_float64_params_with_low_precision_states(kind):
    shapes = [(7,), (270,)]
    params, states = make_problem("rmsprop", shapes, [np.float64] * 2, [kind, "bfloat16"])
    assert_all_same(run("rmsprop", params, states, [np.float64] * 2))


def test_stochastic_rounding_is_reproducible_and_keyed_by_the_seed():
    shapes = [(300,), (33,)]

    def final(seed):
        params, states = make_problem("sgd", shapes, [BF16, F16], ["float32"] * 2)
        return run("sgd", params, states, [np.float32] * 2, stochastic_rounding=True,
                   seed=seed)[0]

    a, b, c = final(1), final(1), final(2)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x.view(np.uint16), y.view(np.uint16))
    assert any((x.view(np.uint16) != z.view(np.uint16)).any() for x, z in zip(a, c))


def test_missing_keys_mean_round_to_nearest():
    params, states = make_problem("adagrad", [(20,)], [BF16], ["float32"])
    d_params, d_states = [device(params[0])], [device(states["state_sums"][0])]
    grads = gradients(params, 1, [BF16])
    hp = _hparams.adagrad(step=1, lr=0.1, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                          maximize=False, grad_scale=1.0)  # no stochastic_rounding, seed, step
    ops.adagrad((d_params, [device(g) for g in grads], d_states),
                ("params", "grads", "state_sums"), hp)
    reference.adagrad_step(params, grads, states["state_sums"], lr=0.1, step=1)
    assert_same(host(d_params[0]), params[0], "params[0]")


# -- norms and clipping ---------------------------------------------------------------------

def _grads():
    rng = np.random.default_rng(3)
    return [rng.standard_normal(s).astype(d) for s, d in
            [((40,), BF16), ((7,), F16), ((33,), np.float32), ((0,), BF16), ((300,), F16)]]


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5, float("inf")])
def test_global_norm_of_16_bit_grads(p):
    grads = _grads()
    got = ops.global_norm([device(g) for g in grads], p)
    np.testing.assert_allclose(got, reference.global_norm(grads, p), rtol=1e-12)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_of_16_bit_grads(max_norm):
    grads = _grads()
    d_grads = [device(g) for g in grads]
    got = ops.clip_grad_norm(d_grads, max_norm, 2.0, False)
    want = reference.clip_grad_norm(grads, max_norm)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for t, (d, g) in enumerate(zip(d_grads, grads)):
        assert_same(host(d), g, f"grads[{t}]")


def test_clip_grad_value_of_16_bit_grads():
    grads = _grads()
    d_grads = [device(g) for g in grads]
    ops.clip_grad_value(d_grads, 0.3)
    reference.clip_grad_value(grads, 0.3)
    for t, (d, g) in enumerate(zip(d_grads, grads)):
        assert_same(host(d), g, f"grads[{t}]")


# -- zeros_state on the device ---------------------------------------------------------------

def test_zeros_state_of_a_device_param():
    for dtype in (BF16, F16):
        param = device(np.ones((70, 60), dtype))
        state = zeros_state(param)
        assert host(state).dtype == dtype and not host(state).view(np.uint16).any()
        q8 = zeros_state(param, "q8", signed=False)
        assert isinstance(q8, Q8State) and q8.shape == (70, 60) and not q8.signed
        assert host(q8.codes).dtype == np.uint8 and (host(q8.codes) == 0).all()
        assert host(q8.absmax).shape == (-(-4200 // BLOCK),)
        assert (q8.dequantize() == 0).all() and q8.nbytes == 4200 + 4 * 17
        for signed, code in ((True, 0x77), (False, 0)):
            q4 = zeros_state(param, "q4", signed=signed)
            assert isinstance(q4, Q4State) and q4.shape == (70, 60) and q4.signed == signed
            assert host(q4.codes).shape == (2100,) and (host(q4.codes) == code).all()
            assert host(q4.absmax).shape == (-(-4200 // Q4_BLOCK),)
            assert (q4.dequantize() == 0).all() and q4.nbytes == 2100 + 4 * 33
    for kind in ("q8", "q4"):
        small = zeros_state(device(np.ones(10, BF16)), kind)
        assert host(small).dtype == np.float32
    with pytest.raises(ValueError, match="float64 states need a float64 param"):
        zeros_state(device(np.ones(10, BF16)), "float64")


# -- checks: clear errors, nothing written ---------------------------------------------------

def _adam_call(param, grad, m, v):
    hp = hparams("adam", 1)
    ops.adam(([param], [grad], [m], [v], None),
             ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"), hp)


def _good(n=300, dtype=BF16, kind="q8"):
    p = np.ones(n, dtype)
    zeros = q8_zeros if kind == "q8" else q4_zeros
    return p, np.ones(n, dtype), zeros((n,), True), zeros((n,), False)


def _swap(state, codes=None, absmax=None, shape=None):
    """`state` (a Q8State or Q4State) with other parts, or for a Q4State
    another shape, set past the constructor's checks, as a later assignment
    would."""
    if isinstance(state, Q8State):
        s = Q8State(state.codes, state.absmax, state.signed)
    else:
        s = Q4State(state.codes, state.absmax, state.shape, state.signed)
    s.codes = state.codes if codes is None else codes
    s.absmax = state.absmax if absmax is None else absmax
    if shape is not None:
        object.__setattr__(s, "_shape", shape)
    return s


# Bad calls of 300-element arrays with q8 states, of q4 states, and of
# either ("KIND" in a message: q8 or q4): m signed, v unsigned.
BAD_Q8 = {
    "float64 state for a bfloat16 param": (
        lambda p, g, m, v: (p, g, m, device(np.zeros(300, np.float64))),
        TypeError, r"exp_avg_sqs\[0\] has dtype float64 but params\[0\] has bfloat16"),
    "float16 grad for a bfloat16 param": (
        lambda p, g, m, v: (p, device(np.ones(300, F16)), m, v),
        TypeError, r"grads\[0\] has dtype float16 but params\[0\] has bfloat16"),
    "unsigned q8 where values can be negative": (
        lambda p, g, m, v: (p, g, device(q8_zeros((300,), False)), v),
        ValueError, r"exp_avgs\[0\]: an unsigned q8 state cannot hold values that can be negative"),
    "q8 state of another shape": (
        lambda p, g, m, v: (p, g, device(q8_zeros((299,), True)), v),
        ValueError, r"exp_avgs\[0\].codes has shape \(299,\) but params\[0\] needs \(300,\)"),
    "q8 codes not contiguous": (
        lambda p, g, m, v: (p, g, _swap(m, Exported(m.codes, shape=(150,), strides=(2,))), v),
        ValueError, r"exp_avgs\[0\].codes has shape \(150,\)"),
    "q8 codes of another dtype": (
        lambda p, g, m, v: (p, g, _swap(m, device(np.zeros(300, np.int8))), v),
        TypeError, r"exp_avgs\[0\].codes has dtype int8; expected uint8"),
    "a 16-bit param read-only": (
        lambda p, g, m, v: (Exported(p, readonly=True), g, m, v),
        ValueError, r"params\[0\] is read-only"),
}
BAD_Q4 = {
    "unsigned q4 where values can be negative": (
        lambda p, g, m, v: (p, g, device(q4_zeros((300,), False)), v),
        ValueError, r"^exp_avgs\[0\]: an unsigned q4 state cannot hold values that can be "
                    r"negative; make it with zeros_state\(param, 'q4', signed=True\)$"),
    "q4 state made for another shape": (
        lambda p, g, m, v: (p, g, _swap(m, shape=(2, 150)), v),
        ValueError, r"exp_avgs\[0\] has shape \(2, 150\) but params\[0\] has shape \(300,\)"),
    "q4 state of another size": (
        lambda p, g, m, v: (p, g, device(q4_zeros((301,), True)), v),
        ValueError, r"exp_avgs\[0\] has shape \(301,\) but params\[0\] has shape \(300,\)"),
    "q4 codes one code a byte": (
        lambda p, g, m, v: (p, g, _swap(m, codes=device(np.zeros(300, np.uint8))), v),
        ValueError, r"exp_avgs\[0\].codes has shape \(300,\) but params\[0\] needs \(150,\)"),
    "q4 absmax of q8 blocks": (
        lambda p, g, m, v: (p, g, m, _swap(v, absmax=device(np.zeros(2, np.float32)))),
        ValueError, r"exp_avg_sqs\[0\].absmax has shape \(2,\) but params\[0\] needs \(3,\)"),
    "q4 absmax of another dtype": (
        lambda p, g, m, v: (p, g, _swap(m, absmax=device(np.zeros(3, np.float64))), v),
        TypeError, r"exp_avgs\[0\].absmax has dtype float64; expected float32"),
}
BAD_EITHER = {
    "codes read-only": (
        lambda p, g, m, v: (p, g, _swap(m, Exported(m.codes, readonly=True)), v),
        ValueError, r"exp_avgs\[0\].codes is read-only"),
    "a state as a param": (
        lambda p, g, m, v: (m, g, m, v), TypeError, r"params\[0\] is a KIND state"),
    "host state in a device call": (
        lambda p, g, m, v: (p, g, host(m), v),
        TypeError, r"exp_avgs\[0\].codes is not a CUDA device array"),
    "the same state twice": (
        lambda p, g, m, v: (p, g, m, m),
        ValueError, "overlap in memory"),
    "the same codes in two states": (
        lambda p, g, m, v: (p, g, m, _swap(v, codes=m.codes)),
        ValueError, "overlap in memory"),
}


@pytest.mark.parametrize("kind, bad", [("q8", bad) for bad in [*BAD_Q8, *BAD_EITHER]] +
                         [("q4", bad) for bad in [*BAD_Q4, *BAD_EITHER]])
def test_bad_input_is_refused_before_any_write(kind, bad):
    make, error, message = {**BAD_Q8, **BAD_Q4, **BAD_EITHER}[bad]
    p, g, m, v = (device(x) for x in _good(kind=kind))
    before = [host(p), host(m).codes.copy(), host(v).codes.copy()]
    with pytest.raises(error, match=message.replace("KIND", kind)):
        _adam_call(*make(p, g, m, v))
    np.testing.assert_array_equal(host(p).view(np.uint16), before[0].view(np.uint16))
    np.testing.assert_array_equal(host(m).codes, before[1])
    np.testing.assert_array_equal(host(v).codes, before[2])


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_a_state_given_other_codes_is_checked_again(kind):
    # The fast path prints a q8/q4 state by its parts: codes assigned after
    # a call send the next call through the check.
    p, g, m, v = (device(x) for x in _good(kind=kind))
    _adam_call(p, g, m, v)
    m.codes = device(np.zeros(299, np.uint8))
    with pytest.raises(ValueError, match=r"exp_avgs\[0\].codes has shape \(299,\)"):
        _adam_call(p, g, m, v)


def test_a_non_contiguous_16_bit_array_is_refused():
    p, g, m, v = (device(x) for x in _good(4, F16))
    strided = Exported(device(np.ones(8, F16)), shape=(4,), strides=(4,))
    with pytest.raises(ValueError, match=r"grads\[0\] is not C-contiguous"):
        _adam_call(p, strided, device(np.zeros(4, np.float32)), device(np.zeros(4, np.float32)))


# -- the rounding device functions on edge values ---------------------------------------------

def test_rounding_functions_match_the_spec_on_edge_values():
    from lrfast import precision
    from lrfast.cuda import lowp

    @cuda.jit
    def kernel(x, r, sr16, srb, rneb):
        i = cuda.grid(1)
        if i < x.size:
            sr16[i] = lowp.sr_f16(x[i], r[i])
            srb[i] = lowp.sr_bf16(x[i], r[i])
            rneb[i] = lowp.f32_to_bf16(x[i])

    rng = np.random.default_rng(5)
    edges = np.array([0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 65535.9, 65536.0, 1e9, np.inf,
                      -np.inf, 2.0**-14, 2.0**-15, 3 * 2.0**-25, 2.0**-25, 1e-30, 6.1e-5,
                      3.0e38], np.float32)
    x = np.concatenate([edges, -edges, rng.standard_normal(150).astype(np.float32),
                        (rng.standard_normal(100) * 2.0**-16).astype(np.float32)])
    r = precision.random_bits(11, 3, 0, x.size)
    sr16, srb, rneb = (np.zeros(x.size, np.uint16) for _ in range(3))
    kernel[(x.size + 31) // 32, 32](x, r, sr16, srb, rneb)
    np.testing.assert_array_equal(sr16, precision.round_stochastic(x, F16, r).view(np.uint16))
    np.testing.assert_array_equal(srb, precision.round_stochastic(x, BF16, r).view(np.uint16))
    np.testing.assert_array_equal(rneb, precision.round_nearest(x, BF16).view(np.uint16))


def test_random_words_match_random_bits():
    from lrfast import precision
    from lrfast.cuda import lowp

    @cuda.jit
    def kernel(key, start, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = lowp.random_word(key, start + i)

    for seed, step, start in ((0, 0, 0), (2**64 - 1, 12345, 2**32 - 20), (99, 2**40, 7)):
        out = np.zeros(40, np.uint32)
        key = np.uint64(_hparams.rounding(True, seed, step)["sr_key"])
        kernel[2, 32](key, np.int64(start), out)
        np.testing.assert_array_equal(out, precision.random_bits(seed, step, start, 40))


def test_q4_quantization_matches_the_spec_on_edge_blocks():
    # The step kernels' q4 pieces (extreme, scale, code) on blocks the steps
    # rarely make: ties of -a and a, a negative extreme, zeros, NaN, +-inf,
    # every threshold and its neighbours, one code short of a byte.
    from lrfast import precision
    from lrfast.cuda import lowp

    @cuda.jit
    def kernel(x, tables, signed, codes, absmax):
        b = cuda.grid(1)
        first = b * Q4_BLOCK
        if first < x.size:
            m = min(Q4_BLOCK, x.size - first)
            e = np.float32(0)
            for j in range(m):
                e = lowp.extreme(e, x[first + j])
            at = lowp.Q4_SIGNED_THRESHOLDS if signed else lowp.Q4_UNSIGNED_THRESHOLDS
            scale = lowp.block_scale(e, lowp.Q4_SIGNED_END if signed else np.float32(0))
            absmax[b] = scale
            for j in range(0, m, 2):
                high = lowp.q4_code(x[first + j], scale, tables[lowp.Q4], at)
                low = lowp.q4_code(x[first + j + 1], scale, tables[lowp.Q4], at) if j + 1 < m else 0
                codes[(first + j) // 2] = (high << 4) | low

    rng = np.random.default_rng(9)
    for signed in (True, False):
        edges = precision._Q4_THRESHOLDS[signed]
        blocks = [rng.standard_normal(128), np.r_[2.0, -2.0, rng.uniform(-1, 1, 126)],
                  np.r_[-3.0, rng.uniform(-1, 1, 127)], np.zeros(128),
                  np.r_[np.nan, rng.standard_normal(127)], np.r_[np.inf, rng.standard_normal(127)],
                  np.r_[rng.standard_normal(126), -np.inf, np.nan], np.r_[np.nan, np.inf, np.zeros(126)],
                  np.r_[1.0, edges, np.nextafter(edges, 2), np.nextafter(edges, -2),
                        np.zeros(83)],
                  rng.standard_normal(77)]
        x = np.concatenate(blocks).astype(np.float32)
        codes = np.zeros((x.size + 1) // 2, np.uint8)
        absmax = np.zeros(-(-x.size // Q4_BLOCK), np.float32)
        kernel[-(-absmax.size // 4), 4](x, lowp.TABLES, signed, codes, absmax)
        want_codes, want_absmax = precision.quantize_blockwise_q4(x, signed)
        np.testing.assert_array_equal(codes, want_codes)
        np.testing.assert_array_equal(absmax.view(np.uint32), want_absmax.view(np.uint32))
