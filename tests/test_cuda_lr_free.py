"""The CUDA back end of Lion, schedule-free SGD and AdamW (with their
eval/train switches) and Prodigy's two passes, against
lrfast.reference_lr_free.

In Numba's CUDA simulator (no GPU visible) every array must equal the
reference bit for bit: the simulator computes in NumPy scalars and fuses
nothing. On a GPU NVVM may contract multiply-adds: float32/float64 results
within a tolerance, 16-bit values one ulp, q8/q4 codes one code. Prodigy's sums
are exact across launch configurations and equal to the reference's up to
the order of summation.
"""

import math

import numpy as np
import pytest

from cuda_sim import assert_same, device, host, numba_cuda, to_device  # before numba: GPU or simulator

cuda = numba_cuda()
ml_dtypes = pytest.importorskip("ml_dtypes")

import lrfast  # noqa: E402
import lrfast.cuda  # noqa: E402
from lrfast import reference  # noqa: E402
from lrfast.cuda import launch  # noqa: E402
from lrfast.precision import (Q4State, Q8State, holds_param, quantize_blockwise,  # noqa: E402
                              quantize_blockwise_q4)

SIMULATED = launch.SIMULATED
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
STEPS = 4
SIZES = [0, 1, 7, 17]
LIST_SHAPES = [(0,), (1,), (7,), (17,), (3, 5)]

if SIMULATED:
    pytestmark = pytest.mark.filterwarnings(
        "ignore:(overflow|invalid value) encountered in scalar:RuntimeWarning")


# -- arrays ------------------------------------------------------------------------------

def copy(a):
    if isinstance(a, Q8State):
        return Q8State(a.codes.copy(), a.absmax.copy(), a.signed)
    if isinstance(a, Q4State):
        return Q4State(a.codes.copy(), a.absmax.copy(), a.shape, a.signed)
    return a.copy()


def assert_all_same(got: dict, want: dict):
    assert got.keys() == want.keys()
    for name in want:
        for t, (a, b) in enumerate(zip(got[name], want[name], strict=True)):
            assert_same(a, b, f"{name}[{t}]")


# -- problems ------------------------------------------------------------------------------

def make_params(shapes, dtypes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32).astype(d) for s, d in zip(shapes, dtypes)]


def gradients(params, step, grad_dtypes=None):
    """Non-zero gradients of a noisy quadratic, in `grad_dtypes` (default: the params')."""
    rng = np.random.default_rng([1, step])
    grad_dtypes = grad_dtypes or [p.dtype for p in params]
    return [(0.5 * (p.astype(np.float64) - 1.0) + rng.standard_normal(p.shape)).astype(np.float32)
            .astype(d) for p, d in zip(params, grad_dtypes)]


def state_like(values, kind):
    """An array of `values` as a state of `kind`: "param" (their dtype),
    "float32", "bfloat16", "q8" or "q4" (signed)."""
    if kind == "q8":
        return Q8State(*quantize_blockwise(values.astype(np.float32), signed=True), True)
    if kind == "q4":
        return Q4State(*quantize_blockwise_q4(values.astype(np.float32), signed=True),
                       values.shape, True)
    return values.astype({"param": values.dtype, "float32": np.float32, "bfloat16": BF16}[kind])


# Each optimizer: the states it takes (name -> maker from a param) and a
# driver doing one step with `impl` (lrfast or lrfast.reference), keeping
# its host scalars in `ctx`.

def _lion(impl, params, grads, states, step, ctx, hp):
    impl.lion_step(params, grads, states["exp_avgs"], **hp)


def _snapshot(params):
    """Host copies of `params` (a list or one array, on the device or not)."""
    params = params if isinstance(params, list) else [params]
    return [p.copy() if isinstance(p, np.ndarray) else host(p) for p in params]


def _schedulefree(kind):
    def drive(impl, params, grads, states, step, ctx, hp):
        hp = dict(hp)
        lr, warmup_steps = hp.pop("lr"), hp.pop("warmup_steps", 0)
        scalars = ctx.setdefault("scalars",
                                 lrfast.ScheduleFreeScalars(lr, warmup_steps=warmup_steps))
        beta1 = hp.get("momentum", 0.9) if kind == "sgd" else hp.get("betas", (0.9,))[0]
        if step == 3:  # an eval() and train() round trip before the step
            impl.schedulefree_to_eval(params, states["zs"], beta1=beta1)
            ctx["evaluated"] = _snapshot(params)
            impl.schedulefree_to_train(params, states["zs"], beta1=beta1)
        lr, ckp1, k = scalars.next()
        if kind == "sgd":
            impl.schedulefree_sgd_step(params, grads, states["zs"], lr=lr, ckp1=ckp1, step=k, **hp)
        else:
            impl.schedulefree_adamw_step(params, grads, states["zs"], states["exp_avg_sqs"],
                                         lr=lr, ckp1=ckp1, step=k, **hp)
    return drive


OPTIMIZERS = {
    "lion": (("exp_avgs",), _lion,
             [dict(lr=1e-2), dict(lr=3e-3, betas=(0.95, 0.98), weight_decay=0.1),
              dict(lr=1e-2, betas=(0.0, 0.5), weight_decay=1.0, maximize=True, grad_scale=0.25)]),
    "schedulefree_sgd": (("zs",), _schedulefree("sgd"),
                         [dict(lr=0.1), dict(lr=0.5, momentum=0.5, weight_decay=0.01,
                                            warmup_steps=2, maximize=True, grad_scale=0.5)]),
    "schedulefree_adamw": (("zs", "exp_avg_sqs"), _schedulefree("adamw"),
                           [dict(lr=0.0025), dict(lr=0.01, betas=(0.5, 0.9), eps=1e-4,
                                                  weight_decay=0.1, warmup_steps=3,
                                                  grad_scale=2.0)]),
}
ZS_LIKE_PARAMS = {"zs"}  # states that start near the param (the others at zero)


def make_states(name, params, kinds):
    """The optimizer's states of `kinds`: z away from the param (as after some
    steps: a z equal to y would hide the interpolation) and in the param's
    dtype where `kind` cannot hold it, the others zeros."""
    def z_kind(p, kind):
        return kind if kind == "param" or holds_param(kind, p.dtype.name) else "param"

    return {s: [state_like((p * 0.5 + 0.25).astype(p.dtype), z_kind(p, kind))
                if s in ZS_LIKE_PARAMS else state_like(np.zeros_like(p), kind)
                for p, kind in zip(params, kinds)] for s in OPTIMIZERS[name][0]}


def run_both(name, params, states, hp, grad_dtypes=None, steps=STEPS):
    """The optimizer's steps on the device and on the reference; returns
    the final arrays of both as {name: list}."""
    drive = OPTIMIZERS[name][1]
    d_params, d_states = [device(p) for p in params], {k: [device(a) for a in v]
                                                       for k, v in states.items()}
    r_params, r_states = [p.copy() for p in params], {k: [copy(a) for a in v]
                                                      for k, v in states.items()}
    d_ctx, r_ctx = {}, {}
    for step in range(1, steps + 1):
        grads = gradients(r_params, step, grad_dtypes)
        d_grads = [device(g) for g in grads]
        drive(lrfast, d_params, d_grads, d_states, step, d_ctx, hp)
        drive(reference, r_params, grads, r_states, step, r_ctx, hp)
        for t, (d, g) in enumerate(zip(d_grads, grads)):
            assert_same(host(d), g, f"grads[{t}] (read-only)")
    got = {"params": [host(p) for p in d_params], **{k: [host(a) for a in v]
                                                    for k, v in d_states.items()}}
    want = {"params": r_params, **r_states}
    if "evaluated" in r_ctx:  # the params in eval mode
        got["evaluated"] = d_ctx["evaluated"]
        want["evaluated"] = r_ctx["evaluated"]
    return got, want


CASES = [pytest.param(name, hp, id=f"{name}-{i}") for name, (_, _, grid) in OPTIMIZERS.items()
         for i, hp in enumerate(grid)]


# -- the elementwise steps ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name, hp", CASES)
def test_list_matches_reference(name, hp, dtype):
    params = make_params(LIST_SHAPES, [dtype] * len(LIST_SHAPES))
    states = make_states(name, params, ["param"] * len(params))
    assert_all_same(*run_both(name, params, states, hp))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_single_arrays_match_reference(name, dtype, size):
    hp = OPTIMIZERS[name][2][-1]
    params = make_params([(size,)], [dtype])
    states = make_states(name, params, ["param"])
    drive = OPTIMIZERS[name][1]
    d_param, d_states = device(params[0]), {k: device(v[0]) for k, v in states.items()}
    r_param, r_states = params[0].copy(), {k: v[0].copy() for k, v in states.items()}
    d_ctx, r_ctx = {}, {}
    for step in range(1, STEPS + 1):
        grad = gradients([r_param], step)[0]
        drive(lrfast, d_param, device(grad), d_states, step, d_ctx, hp)
        drive(reference, r_param, grad, r_states, step, r_ctx, hp)
    assert_same(host(d_param), r_param, "param")
    for k in states:
        assert_same(host(d_states[k]), r_states[k], k)


@pytest.mark.parametrize("ckp1", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("name", ["schedulefree_sgd", "schedulefree_adamw"])
def test_schedulefree_interpolation_weights(name, ckp1):
    # Both of torch's lerp forms, and the weight 0.5 where they switch, with
    # y away from z (the classes' own schedule has y == z whenever ckp1 >= 0.5).
    params = make_params(LIST_SHAPES, [np.float32] * len(LIST_SHAPES))
    states = make_states(name, params, ["param"] * len(params))
    d_params, d_states = [device(p) for p in params], {k: [device(a) for a in v]
                                                      for k, v in states.items()}
    grads = gradients(params, 1)
    for impl, ps, ss, gs in ((lrfast, d_params, d_states, [device(g) for g in grads]),
                             (reference, params, states, grads)):
        getattr(impl, f"{name}_step")(ps, gs, *ss.values(), lr=0.1, ckp1=ckp1, step=3)
    assert_all_same({"params": [host(p) for p in d_params],
                     **{k: [host(a) for a in v] for k, v in d_states.items()}},
                    {"params": params, **states})


def test_lion_sign_of_zero_and_nan():
    # sign(0) = 0 for either zero, sign(NaN) = NaN, as np.sign.
    p = np.array([1.0, -2.0, -0.0, 0.0, 3.0], np.float32)
    g = np.array([0.0, -0.0, 0.0, 1.0, np.nan], np.float32)
    m = np.zeros_like(p)
    d_p, d_m = device(p), device(m)
    lrfast.lion_step(d_p, device(g), d_m, lr=0.5, weight_decay=0.2)
    reference.lion_step(p, g, m, lr=0.5, weight_decay=0.2)
    assert_same(host(d_p), p, "param")
    assert_same(host(d_m), m, "exp_avgs")


@pytest.mark.parametrize("beta1", [0.9, 0.5, 0.2])
def test_eval_and_train_switches(beta1):
    # Weights on both sides of 0.5 (torch's two forms of lerp); z is read only.
    params = make_params(LIST_SHAPES, [np.float32, np.float64, np.float32, np.float64,
                                       np.float32])
    zs = [(p + 1).astype(p.dtype) for p in params]
    d_params, d_zs = [device(p) for p in params], [device(z) for z in zs]
    for switch in ("schedulefree_to_eval", "schedulefree_to_train", "schedulefree_to_eval"):
        getattr(lrfast, switch)(d_params, d_zs, beta1=beta1)
        getattr(reference, switch)(params, zs, beta1=beta1)
        for t, (d, p) in enumerate(zip(d_params, params)):
            assert_same(host(d), p, f"params[{t}] after {switch}")
    for t, (d, z) in enumerate(zip(d_zs, zs)):
        np.testing.assert_array_equal(host(d), z, err_msg=f"zs[{t}] written")


# -- low precision -------------------------------------------------------------------------------

LOWP_SHAPES = [(0,), (1,), (7,), (255,), (257,)]
Q4_SHAPES = [(0,), (1,), (7,), (129,), (300,)]  # odd code counts, partial q4 blocks, two walks


@pytest.mark.parametrize("state_kind", ["float32", "param", "bfloat16", "q8", "q4"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_low_precision_matches_reference(name, dtype, state_kind):
    # The grads alternate between float32 and the param's dtype.
    shapes = Q4_SHAPES if state_kind == "q4" else LOWP_SHAPES
    params = make_params(shapes, [dtype] * len(shapes))
    states = make_states(name, params, [state_kind] * len(params))
    grad_dtypes = [np.float32 if t % 2 else dtype for t in range(len(params))]
    hp = OPTIMIZERS[name][2][-1]
    assert_all_same(*run_both(name, params, states, hp, grad_dtypes, steps=3))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_stochastic_rounding_matches_reference(name):
    # The 16-bit zs (of the bfloat16 and float16 params) round stochastically
    # too, with bits of their own (issue 19); float32 zs of 16-bit params do not.
    shapes = [(5,), (40,), (9,), (33,), (17,)]
    params = make_params(shapes, [BF16, F16, np.float32, BF16, F16])
    states = make_states(name, params, ["float32", "bfloat16", "param", "param", "float32"])
    hp = dict(OPTIMIZERS[name][2][-1], stochastic_rounding=True, seed=11)
    assert_all_same(*run_both(name, params, states, hp, steps=3))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_a_16_bit_z_rounds_stochastically_with_bits_of_its_own(dtype):
    # y and z both go from 1.5 to half an ulp below: each rounds down at about
    # half the elements, and they part at about half (rounding to nearest
    # keeps z at 1.5; the param's bits would keep z equal to y).
    p = np.full(300, 1.5, dtype)
    z, g = p.copy(), np.full(p.shape, np.finfo(dtype).eps / 2, np.float32)
    d_p, d_z = device(p), device(z)
    kw = dict(lr=1.0, ckp1=1.0, momentum=0.5, step=1, stochastic_rounding=True, seed=0)
    lrfast.schedulefree_sgd_step(d_p, device(g), d_z, **kw)
    reference.schedulefree_sgd_step(p, g, z, **kw)
    got = {"params": [host(d_p)], "zs": [host(d_z)]}
    assert_all_same(got, {"params": [p], "zs": [z]})
    y, z = got["params"][0], got["zs"][0]
    for share in (np.mean(y != 1.5), np.mean(z != 1.5), np.mean(y != z)):
        assert 0.35 < share < 0.65, share


def test_eval_switch_with_low_precision_zs():
    shapes = [(300,), (7,), (20,), (9,)]
    params = make_params(shapes, [BF16, F16, np.float64, BF16])
    zs = [state_like((p.astype(np.float32) + 0.5).astype(p.dtype), z_kind)
          for p, z_kind in zip(params, ["float32", "param", "param", "param"])]
    d_params, d_zs = [device(p) for p in params], [device(z) for z in zs]
    lrfast.schedulefree_to_eval(d_params, d_zs, beta1=0.9)
    reference.schedulefree_to_eval(params, zs, beta1=0.9)
    assert_all_same({"params": [host(p) for p in d_params], "zs": [host(z) for z in d_zs]},
                    {"params": params, "zs": zs})


# -- Prodigy -------------------------------------------------------------------------------------

PRODIGY_ARGS = [
    dict(),
    dict(betas=(0.9, 0.99), weight_decay=0.1, slice_p=3, safeguard_warmup=True, d0=1e-4,
         maximize=True, grad_scale=0.5, beta3=0.9),
    dict(betas=(0.0, 0.99), weight_decay=0.05, decouple=False, eps=1e-6, d0=1e-3, slice_p=2),
]


class ProdigyRun:
    """Prodigy's steps with `impl`: its host scalars (d, d_max, d_numerator,
    k) and arrays. Drives the two passes as the classes do."""

    def __init__(self, params, hp, s_kinds=None, wrap=None, p0_kind="param"):
        wrap = wrap or (lambda a: a)
        self.hp = dict(dict(lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0.0,
                            decouple=True, safeguard_warmup=False, d0=1e-6, slice_p=1,
                            maximize=False, grad_scale=1.0), **hp)
        slice_p = self.hp["slice_p"]
        s_kinds = s_kinds or ["param"] * len(params)
        self.d = self.d_max = self.hp["d0"]
        self.d_numerator, self.k = 0.0, 0
        self.params = [wrap(p.copy()) for p in params]
        self.ms = ([wrap(np.zeros_like(p)) for p in params] if self.hp["betas"][0] > 0 else None)
        self.vs = [wrap(np.zeros_like(p)) for p in params]
        self.ss = [wrap(state_like(np.zeros(-(-p.size // slice_p), p.dtype), kind))
                   for p, kind in zip(params, s_kinds)]
        self.p0s = [wrap(state_like(p.ravel()[::slice_p].copy(), p0_kind)) for p in params]

    def common(self):
        hp = self.hp
        return dict(betas=hp["betas"], weight_decay=hp["weight_decay"], decouple=hp["decouple"],
                    maximize=hp["maximize"], grad_scale=hp["grad_scale"])

    def reduce(self, impl, grads, d=None, dlr=None):
        hp = self.hp
        d = self.d if d is None else d
        if dlr is None:
            dlr = lrfast.prodigy_dlr(d=d, lr=hp["lr"], step=self.k + 1, betas=hp["betas"])
        return dlr, impl.prodigy_reduce(self.params, grads, self.ss, self.p0s, d=d,
                                        d0=hp["d0"], dlr=dlr, beta3=hp["beta3"],
                                        safeguard_warmup=hp["safeguard_warmup"],
                                        slice_p=hp["slice_p"], **self.common())

    def update(self, impl, grads, d, d_new, dlr, **kw):
        impl.prodigy_update(self.params, grads, self.ms, self.vs, d=d, d_new=d_new, dlr=dlr,
                            eps=self.hp["eps"], **self.common(), **kw)

    def step(self, impl, grads):
        dlr, (dot, s_abs) = self.reduce(impl, grads)
        hp = self.hp
        new = lrfast.prodigy_d_update(dot, s_abs, d=self.d, d0=hp["d0"], d_max=self.d_max,
                                      d_numerator=self.d_numerator, dlr=dlr, betas=hp["betas"],
                                      beta3=hp["beta3"])
        assert new is not None
        self.update(impl, grads, self.d, new.d, dlr)
        self.d, self.d_max, self.d_numerator, self.k = new.d, new.d_max, new.d_numerator, self.k + 1

    def arrays(self, unwrap=lambda a: a):
        out = {"params": self.params, "exp_avg_sqs": self.vs, "ss": self.ss}
        if self.ms is not None:
            out["exp_avgs"] = self.ms
        return {k: [unwrap(a) for a in v] for k, v in out.items()}


def sum_terms(params, grads, run):
    """sum |terms| of the reference's dot (the scale of its rounding error)."""
    slice_p = run.hp["slice_p"]
    return sum(float(np.abs(g.astype(np.float64).ravel()[::slice_p]
                            * (p0.astype(np.float64) - p.astype(np.float64).ravel()[::slice_p]))
                     .sum()) for p, g, p0 in zip(params, grads, run.p0s))


def assert_sums_close(got, want, dot_scale):
    dot, s_abs = got
    assert isinstance(dot, float) and isinstance(s_abs, float)
    assert abs(dot - want[0]) <= 1e-13 * dot_scale + 1e-300, (dot, want[0])
    assert math.isclose(s_abs, want[1], rel_tol=1e-13), (s_abs, want[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("hp", PRODIGY_ARGS)
def test_prodigy_passes_match_reference(hp, dtype):
    # Both passes at the reference's scalars at every step: the arrays bit
    # for bit, the sums to their order of summation.
    params = make_params(LIST_SHAPES, [dtype] * len(LIST_SHAPES))
    ours, ref = ProdigyRun(params, hp, wrap=device), ProdigyRun(params, hp)
    for step in range(1, STEPS + 1):
        grads = gradients(ref.params, step)
        d_grads = [device(g) for g in grads]
        scale = sum_terms(ref.params, grads, ref)
        dlr, want = ref.reduce(reference, grads)
        _, got = ours.reduce(lrfast, d_grads, d=ref.d, dlr=dlr)
        assert_sums_close(got, want, scale)
        new = lrfast.prodigy_d_update(*want, d=ref.d, d0=ref.hp["d0"], d_max=ref.d_max,
                                      d_numerator=ref.d_numerator, dlr=dlr,
                                      betas=ref.hp["betas"], beta3=ref.hp["beta3"])
        ours.update(lrfast, d_grads, ref.d, new.d, dlr)
        ref.update(reference, grads, ref.d, new.d, dlr)
        ref.d, ref.d_max, ref.d_numerator, ref.k = new.d, new.d_max, new.d_numerator, ref.k + 1
        assert_all_same(ours.arrays(host), ref.arrays())


@pytest.mark.parametrize("hp", [PRODIGY_ARGS[0], PRODIGY_ARGS[2]])
def test_prodigy_estimate_on_the_device_follows_the_reference(hp):
    params = make_params(LIST_SHAPES, [np.float64] * len(LIST_SHAPES))
    ours, ref = ProdigyRun(params, hp, wrap=device), ProdigyRun(params, hp)
    for step in range(1, STEPS + 2):
        grads = gradients(ref.params, step)
        ours.step(lrfast, [device(g) for g in grads])
        ref.step(reference, grads)
        for name in ("d", "d_max", "d_numerator"):
            assert math.isclose(getattr(ours, name), getattr(ref, name), rel_tol=1e-9), name
    assert ref.d != ref.hp["d0"]  # the estimate moved
    for t, (a, b) in enumerate(zip(ours.arrays(host)["params"], ref.params)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"params[{t}]")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("slice_p", [1, 2, 5])
def test_prodigy_single_arrays_and_slices(size, slice_p):
    params = make_params([(size,)], [np.float32])
    hp = dict(slice_p=slice_p, weight_decay=0.1, decouple=False)
    ours, ref = ProdigyRun(params, hp, wrap=device), ProdigyRun(params, hp)
    for step in range(1, 3):
        grads = gradients(ref.params, step)
        dlr, want = ref.reduce(reference, grads)
        _, got = ours.reduce(lrfast, [device(g) for g in grads], d=ref.d, dlr=dlr)
        assert_sums_close(got, want, sum_terms(ref.params, grads, ref))
        ours.update(lrfast, [device(g) for g in grads], ref.d, 2 * ref.d, dlr)
        ref.update(reference, grads, ref.d, 2 * ref.d, dlr)
        assert_all_same(ours.arrays(host), ref.arrays())
    if size == 0:
        assert got == (0.0, 0.0)


@pytest.mark.parametrize("slice_p", [1, 3])
def test_prodigy_sums_are_the_same_for_any_grid(monkeypatch, slice_p):
    # One partial pair per piece, whichever block computes it.
    params = make_params([(100,), (37,), (5,)], [np.float32] * 3)
    grads = [device(g) for g in gradients(params, 1)]
    results = []
    for blocks in (None, 1, 3):
        if blocks is not None:
            monkeypatch.setattr(launch, "max_blocks", lambda: blocks)
        run = ProdigyRun(params, dict(slice_p=slice_p), wrap=device)
        run.p0s = [device(np.asarray(p.ravel()[::slice_p]) + 0.25) for p in params]
        results.append(run.reduce(lrfast, grads, d=1e-3, dlr=0.5)[1])
    assert results[0] == results[1] == results[2]
    assert results[0][0] != 0


@pytest.mark.parametrize("s_kind", ["float32", "param", "bfloat16", "q8", "q4"])
@pytest.mark.parametrize("dtype", [BF16, F16, np.float64], ids=["bfloat16", "float16", "f64"])
def test_prodigy_low_precision_matches_reference(dtype, s_kind):
    # p0 of the param's dtype, or q8/q4 with a q8/q4 s.
    # 520: its slice of 260 spans two q8 blocks; 517: a slice of 259, an odd
    # count of q4 codes in three q4 blocks over two walks.
    shapes = [(0,), (7,), (517 if s_kind == "q4" else 520,)]
    params = make_params(shapes, [dtype] * len(shapes))
    hp = dict(slice_p=2, weight_decay=0.1, decouple=False, d0=1e-3)
    p0_kind = s_kind if s_kind in ("q8", "q4") else "param"
    ours = ProdigyRun(params, hp, [s_kind] * len(shapes), wrap=device, p0_kind=p0_kind)
    ref = ProdigyRun(params, hp, [s_kind] * len(shapes), p0_kind=p0_kind)
    for step in range(1, 4):
        grads = gradients(ref.params, step, [np.float32 if t % 2 and dtype != np.float64
                                             else dtype for t in range(len(shapes))])
        d_grads = [device(g) for g in grads]
        dlr, want = ref.reduce(reference, grads)
        _, got = ours.reduce(lrfast, d_grads, d=ref.d, dlr=dlr)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        ours.update(lrfast, d_grads, ref.d, ref.d * 1.5, dlr, stochastic_rounding=True, seed=step)
        ref.update(reference, grads, ref.d, ref.d * 1.5, dlr, stochastic_rounding=True, seed=step)
        ref.d *= 1.5
        assert_all_same(ours.arrays(host), ref.arrays())


@pytest.mark.parametrize("dtypes", [[np.float32, np.float64, np.float32],
                                    [np.float32, np.float64, BF16]], ids=["f32-f64", "with-bf16"])
def test_prodigy_list_of_several_dtypes(dtypes):
    # One launch per group, the groups' partials summed in the order of the list.
    params = make_params([(9,), (20,), (30,)], dtypes)
    hp = dict(slice_p=2, betas=(0.9, 0.99))
    ours, ref = ProdigyRun(params, hp, wrap=device), ProdigyRun(params, hp)
    for step in range(1, 3):
        grads = gradients(ref.params, step)
        d_grads = [device(g) for g in grads]
        before = lrfast.cuda.launch_count()
        dlr, want = ref.reduce(reference, grads)
        _, got = ours.reduce(lrfast, d_grads, d=ref.d, dlr=dlr)
        assert lrfast.cuda.launch_count() - before == len(set(map(np.dtype, dtypes)))
        np.testing.assert_allclose(got, want, rtol=1e-12)
        ours.update(lrfast, d_grads, ref.d, ref.d, dlr)
        ref.update(reference, grads, ref.d, ref.d, dlr)
        assert_all_same(ours.arrays(host), ref.arrays())


# -- launches and checks ---------------------------------------------------------------------------

def test_a_list_costs_one_launch_per_pass():
    params = make_params([(3,)] * 30, [np.float32] * 30)
    run = ProdigyRun(params, dict(slice_p=2), wrap=device)
    grads = [device(g) for g in gradients(params, 1)]
    for call in (lambda: run.reduce(lrfast, grads, d=1e-3, dlr=1.0),
                 lambda: run.update(lrfast, grads, 1e-3, 1e-3, 1.0),
                 lambda: lrfast.lion_step(run.params, grads, run.vs, lr=0.1),
                 lambda: lrfast.schedulefree_to_eval(run.params, run.vs, beta1=0.9)):
        before = lrfast.cuda.launch_count()
        call()
        assert lrfast.cuda.launch_count() - before == 1


def _prodigy_reduce(params, grads, ss, p0s, slice_p=2):
    return lrfast.prodigy_reduce(params, grads, ss, p0s, d=1e-3, d0=1e-3, dlr=1.0,
                                 slice_p=slice_p)


def test_prodigy_state_of_another_length_is_refused_before_writing():
    p, g = device(np.ones(7, np.float32)), device(np.ones(7, np.float32))
    s, p0 = device(np.ones(4, np.float32)), device(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"^ss\[0\] has shape \(4,\) but the slice "
                                         r"params\[0\]\.ravel\(\)\[::3\] has shape \(3,\)"):
        _prodigy_reduce([p], [g], [s], [p0], slice_p=3)
    np.testing.assert_array_equal(host(s), np.ones(4, np.float32))
    _prodigy_reduce([p], [g], [s], [p0], slice_p=2)  # ceil(7 / 2) = 4
    assert (host(s) != 1).all()


def _ones(n, dtype=np.float32):
    return np.ones(n, dtype)


BAD_CALLS = {  # host arrays -> a bad call; the same call with device arrays
    "slice length": lambda on: _prodigy_reduce([on(_ones(7))], [on(_ones(7))], [on(_ones(3))],
                                               [on(_ones(4))]),
    "slice of a 2-d param": lambda on: _prodigy_reduce([on(_ones((3, 3)))], [on(_ones((3, 3)))],
                                                       [on(_ones((3, 2)))], [on(_ones(5))]),
    "grad shape": lambda on: _prodigy_reduce([on(_ones(7))], [on(_ones(6))], [on(_ones(4))],
                                             [on(_ones(4))]),
    "p0 dtype": lambda on: _prodigy_reduce([on(_ones(7))], [on(_ones(7))], [on(_ones(4))],
                                           [on(_ones(4, np.int32))]),
    "z shape": lambda on: lrfast.schedulefree_to_eval([on(_ones(4))], [on(_ones(5))], beta1=0.9),
    "z length": lambda on: lrfast.schedulefree_sgd_step(
        [on(_ones(4))], [on(_ones(4))], [on(_ones(4)), on(_ones(4))], lr=0.1, ckp1=0.5),
    "lion state dtype": lambda on: lrfast.lion_step([on(_ones(4))], [on(_ones(4))],
                                                    [on(_ones(4, np.float64))]),
    # issue 19: a z that cannot hold its param, by the 16-bit path and the plain one
    "bfloat16 z": lambda on: lrfast.schedulefree_sgd_step(
        [on(_ones(4)), on(_ones(3))], [on(_ones(4)), on(_ones(3))],
        [on(_ones(4)), on(_ones(3, BF16))], lr=0.1, ckp1=0.5),
    "float32 z of a float64 param": lambda on: lrfast.schedulefree_to_eval(
        [on(_ones(4, np.float64))], [on(_ones(4))], beta1=0.9),
    "bfloat16 z of a float16 param": lambda on: lrfast.schedulefree_adamw_step(
        [on(_ones(4, F16))], [on(_ones(4))], [on(_ones(4, BF16))], [on(_ones(4))], lr=0.1,
        ckp1=0.5, step=1),
    "bfloat16 slice length": lambda on: _prodigy_reduce(
        [on(_ones(7, BF16))], [on(_ones(7))], [on(_ones(3, BF16))], [on(_ones(4, BF16))]),
}


@pytest.mark.parametrize("bad", BAD_CALLS)
def test_bad_input_gives_the_cpu_message(bad):
    with pytest.raises((TypeError, ValueError)) as on_host:
        BAD_CALLS[bad](np.copy)
    with pytest.raises(on_host.type) as on_device:
        BAD_CALLS[bad](device)
    assert str(on_device.value) == str(on_host.value)


def test_prodigy_checks_are_cached_per_slice():
    # ceil(4 / 2) == ceil(4 / 3): the same arrays fit both slices, each
    # with its own table; a slice they do not fit is refused.
    params = make_params([(4,)], [np.float64])
    grads = gradients(params, 1)
    results = []
    for slice_p in (2, 3, 2):
        run, ref = (ProdigyRun(params, dict(slice_p=2), wrap=device),
                    ProdigyRun(params, dict(slice_p=2)))
        run.hp["slice_p"] = ref.hp["slice_p"] = slice_p
        results.append(run.reduce(lrfast, [device(g) for g in grads], d=1e-3, dlr=1.0)[1])
        want = ref.reduce(reference, grads, d=1e-3, dlr=1.0)[1]
        np.testing.assert_allclose(results[-1], want, rtol=1e-13)
        assert_all_same(run.arrays(host), ref.arrays())
    assert results[0] == results[2] != results[1]
    with pytest.raises(ValueError, match=r"ss\[0\] has shape \(2,\)"):
        _prodigy_reduce([device(params[0])], [device(grads[0])], run.ss, run.p0s, slice_p=1)


LOW_BIT_ZS = {
    "q8": lambda signed: Q8State(to_device(np.zeros(300, np.uint8)),
                                 to_device(np.zeros(2, np.float32)), signed),
    "q4": lambda signed: Q4State(to_device(np.zeros(150, np.uint8)),
                                 to_device(np.zeros(3, np.float32)), (300,), signed),
}


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("kind", list(LOW_BIT_ZS))
@pytest.mark.parametrize("name, call", [
    ("step", lambda p, z: lrfast.schedulefree_sgd_step(p, device(np.ones(300, BF16)), z, lr=0.1,
                                                       ckp1=0.5)),
    ("eval", lambda p, z: lrfast.schedulefree_to_eval(p, z, beta1=0.9)),
])
def test_low_bit_zs_are_refused_before_writing(name, call, kind, signed):
    # z holds the weights (issue 19); the C++ path's message
    p = device(np.ones(300, BF16))
    with pytest.raises(ValueError, match=rf"^zs\[0\] is a {kind} state, which cannot hold the "
                                         r"values of params\[0\] \(bfloat16\): z holds the "
                                         r"weights, so it must be bfloat16 or float32$"):
        call(p, LOW_BIT_ZS[kind](signed))
    np.testing.assert_array_equal(host(p).astype(np.float32), np.ones(300, np.float32))


def test_a_host_state_in_a_device_call_is_refused_before_writing():
    p = device(np.ones(4, np.float32))
    with pytest.raises(TypeError, match=r"p0s\[0\] is not a CUDA device array"):
        _prodigy_reduce([p], [device(np.ones(4, np.float32))], [device(np.zeros(2, np.float32))],
                        [np.zeros(2, np.float32)])
    with pytest.raises(TypeError, match=r"zs\[1\] is not a CUDA device array"):
        lrfast.schedulefree_to_train([p, device(np.ones(2))], [device(np.ones(4, np.float32)),
                                                               np.ones(2)], beta1=0.9)
    np.testing.assert_array_equal(host(p), np.ones(4, np.float32))
