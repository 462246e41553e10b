"""What the tests of the Lion, schedule-free and Prodigy classes share: the
argument sets, each with the reference package's class (lion-pytorch 0.2.x,
schedulefree 1.4.x, prodigyopt 1.1.x), a noisy quadratic's gradients, and
the tolerances (float64 to 1e-9 relative, float32 within float32 rounding)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from lrfast.precision import Q4State, Q8State, quantize_low_bit

SHAPES = [(3, 5), (7,), (17,)]  # the first two in group 0, the last in group 1
STEPS = 8
SWITCH_AT = 3  # schedule-free: eval() and train() after this many steps
RTOL = {np.float64: 1e-9, np.float32: 1e-4}


@dataclass(frozen=True)
class Case:
    name: str  # lrfast's class
    package: str  # the reference's module and class
    kw: dict  # for every group
    group1: dict = field(default_factory=dict)  # group 1's own options
    schedule_free: bool = False

    @property
    def id(self) -> str:
        return f"{self.name}-" + "-".join(f"{k}={v}" for k, v in {**self.kw, **self.group1}.items())

    def reference(self):
        module, cls = self.package.rsplit(".", 1)
        return getattr(pytest.importorskip(module), cls)

    def groups(self, params):
        return [{"params": params[:2]}, {"params": params[2:], **self.group1}]


def _cases(name, package, *arg_sets, schedule_free=False):
    return [Case(name, package, kw, group1, schedule_free) for kw, group1 in arg_sets]


CASES = (
    _cases("Lion", "lion_pytorch.Lion",
           (dict(lr=1e-2), dict(lr=3e-3)),
           (dict(lr=1e-2, weight_decay=0.5, betas=(0.8, 0.95)), dict(weight_decay=0.0)),
           (dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True), dict(lr=5e-3)))
    + _cases("ScheduleFreeSGD", "schedulefree.SGDScheduleFree",
             (dict(lr=0.1), dict(lr=0.05)),
             (dict(lr=0.1, warmup_steps=3, weight_decay=0.01, momentum=0.8), {}),
             (dict(lr=0.2, r=0.5, weight_lr_power=1.0), dict(warmup_steps=5)),
             schedule_free=True)
    + _cases("ScheduleFreeAdamW", "schedulefree.AdamWScheduleFree",
             (dict(lr=0.02), dict(lr=0.01)),
             (dict(lr=0.02, warmup_steps=4, r=1.0, weight_lr_power=0.0), {}),
             (dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.05), dict(weight_decay=0.0)),
             schedule_free=True)
    + _cases("Prodigy", "prodigyopt.Prodigy",
             (dict(), dict(weight_decay=0.1)),
             (dict(weight_decay=0.1, decouple=False), dict(eps=1e-6)),
             (dict(use_bias_correction=True, slice_p=3), dict(slice_p=1)),
             (dict(safeguard_warmup=True, growth_rate=1.02, d_coef=0.5), {}),
             (dict(betas=(0.0, 0.99), beta3=0.9, slice_p=3), dict(safeguard_warmup=True)),
             (dict(d0=1e-3, lr=0.5), dict(lr=0.0)))
)
IDS = [case.id for case in CASES]
GROUP_KEYS = {"ScheduleFreeSGD": ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode"),
              "Prodigy": ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")}
GROUP_KEYS["ScheduleFreeAdamW"] = GROUP_KEYS["ScheduleFreeSGD"]


def side_by_side(case, pairs, steps, step_all, compare):
    """Runs ``step_all(step)`` for each of ``steps`` and ``compare(what)``
    after each; schedule-free optimizers also go through ``eval()`` (compared
    there) and back to ``train()`` after step ``SWITCH_AT``. ``pairs``: the
    optimizers to switch."""
    for step in steps:
        step_all(step)
        compare(f"step {step}")
        if case.schedule_free and step == SWITCH_AT:
            for opt in pairs:
                opt.eval()
            compare("eval")
            for opt in pairs:
                opt.train()


def initial_params(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def gradients(params, step):
    """A noisy quadratic's gradients at ``params`` (arrays), so that Prodigy
    has a distance to find."""
    rng = np.random.default_rng([1, step])
    return [(0.5 * (p - 1.0) + 0.3 * rng.standard_normal(p.shape)).astype(p.dtype)
            for p in params]


def close(ours, theirs, dtype, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    atol = 0.0 if dtype == np.float64 else RTOL[dtype] * max(float(np.abs(theirs).max()), 1e-30)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL[dtype], atol=atol, err_msg=what)


def close_keys(ours: dict, theirs: dict, keys, dtype, what):
    for key in keys:
        if key not in theirs:  # prodigyopt's d_denom and d_hat come with the first step
            continue
        a, b = ours[key], theirs[key]
        if isinstance(b, bool) or isinstance(b, int):
            assert a == b, (what, key, a, b)
        else:
            assert math.isclose(a, float(b), rel_tol=RTOL[dtype], abs_tol=1e-300), (what, key, a, b)


# low precision, smoke level: bfloat16 params with stochastic rounding and
# bfloat16 or q8 states (the 4100-element tensor gets a Q8State) against float32
LOWP = [("Lion", dict(lr=1e-3)), ("ScheduleFreeSGD", dict(lr=0.1)),
        ("ScheduleFreeAdamW", dict(lr=0.01)), ("Prodigy", {})]
# (name, kw, state_dtype) of the low-precision runs (schedule-free's z keeps
# the params' dtype: the state_dtype is its exp_avg_sqs')
LOWP_STATES = [(name, kw, state_dtype) for name, kw in LOWP
               for state_dtype in ("bfloat16", "q8", "q4")]
LOWP_SHAPES = [(4100,), (7,)]
LOWP_STEPS = 10

# Issue 19: schedule-free's z holds the weights. With z in a q8 state, an
# update of 1e-6 moved float32 params by up to 0.027 and 200 of them by 0.33
# on average; with z in bfloat16, by up to 0.008, and then not at all.
# (name, state_dtype) of those runs: Z_STEPS updates of Z_LR * 1 (AdamW's
# normalized update of a constant gradient is 1 too) of Z_SIZE params.
Z_CASES = [(name, state_dtype) for name in ("ScheduleFreeSGD", "ScheduleFreeAdamW")
           for state_dtype in ("q8", "q4", "bfloat16")]
Z_SIZE, Z_LR, Z_STEPS = 4096, 1e-6, 200
# bfloat16 params with stochastic rounding: updates of 1/32 of an ulp at 1.5,
# which rounding to nearest loses.
SR_SIZE, SR_LR, SR_STEPS, SR_START = 8192, 2.0**-12, 64, 1.5


def z_start(seed=0):
    """Z_SIZE float32 params in [-1, 1] (ulps of 2**-24 to 2**-23)."""
    return np.random.default_rng(seed).uniform(-1, 1, Z_SIZE).astype(np.float32)


def assert_first_step_moved_by_the_update(moved):
    np.testing.assert_allclose(moved, -Z_LR, atol=2.5e-7)  # within two float32 ulps


def assert_z_moved_by_every_update(moved):
    """How z moved over Z_STEPS steps (float32 rounding: about 1 %)."""
    np.testing.assert_allclose(moved, -Z_STEPS * Z_LR, rtol=0.05)


def narrow(values, kind):
    """float32 ``values`` as lrfast kept a z of ``state_dtype=kind`` before
    issue 19: a signed q8 or q4 state, or a bfloat16 array."""
    if kind == "bfloat16":
        return values.astype(pytest.importorskip("ml_dtypes").bfloat16)
    codes, absmax = quantize_low_bit(kind, values)
    return Q8State(codes, absmax) if kind == "q8" else Q4State(codes, absmax, values.shape)


def widened(state):
    """A z of :func:`narrow` as float32 values."""
    return state.astype(np.float32) if isinstance(state, np.ndarray) else state.dequantize()


def assert_z_follows_in_expectation(sr, nearest, exact):
    """z after SR_STEPS steps from SR_START: bfloat16 with stochastic
    rounding (``sr``) and to nearest (``nearest``), float64 (``exact``)."""
    assert np.all(nearest == SR_START)  # every update lost: the issue
    moved, want = sr.mean() - SR_START, exact.mean() - SR_START
    assert want < -SR_STEPS * SR_LR * 0.99
    assert abs(moved / want - 1) < 0.05, (moved, want)


def assert_low_precision_stays_close(train):
    """``train(low_precision)`` gives the params as float32 arrays after
    LOWP_STEPS steps, run in float32 or in low precision; skips while the
    step functions refuse 16-bit arrays (TypeError)."""
    try:
        runs = [train(False), train(True)]
    except TypeError as exc:
        pytest.skip(f"low precision not supported by the step functions yet: {exc}")
    for a, b in zip(*runs):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05
