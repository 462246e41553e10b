"""lrfast.schedules: values against torch, save/restore, parsing, plotting
(`lrfast schedule` is tested in test_cli.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrfast import schedules as S

RTOL = 1e-12

# ---------------------------------------------------------------- against torch


def torch_rates(make, steps, lr=1.0):
    """(lr, momentum) held by a torch scheduler after t = 0 .. steps-1 steps."""
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make(torch.optim.lr_scheduler, opt)
    lrs, moms = [], []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()  # no gradient: a no-op that keeps torch's call-order check quiet
        sched.step()
    return np.array(lrs), np.array(moms)


TORCH_CASES = [
    # (ours, torch factory, initial lr, steps)
    (S.step_decay(0.1, 30), lambda m, o: m.StepLR(o, 30), 0.1, 400),
    (S.step_decay(1.0, 7, gamma=0.5), lambda m, o: m.StepLR(o, 7, gamma=0.5), 1.0, 400),
    (S.step_decay(0.3, 1, gamma=0.97), lambda m, o: m.StepLR(o, 1, gamma=0.97), 0.3, 400),
    (S.multistep_decay(0.1, [30, 80, 80, 200]), lambda m, o: m.MultiStepLR(o, [30, 80, 80, 200]), 0.1, 400),
    (S.multistep_decay(1.0, [0, 5, 150], 0.5), lambda m, o: m.MultiStepLR(o, [0, 5, 150], 0.5), 1.0, 400),
    (S.exponential_decay(0.1, 0.99), lambda m, o: m.ExponentialLR(o, 0.99), 0.1, 400),
    (S.exponential_decay(1.0, 0.95), lambda m, o: m.ExponentialLR(o, 0.95), 1.0, 400),
    (S.exponential_decay(0.01, 1.01), lambda m, o: m.ExponentialLR(o, 1.01), 0.01, 400),
    (S.polynomial_decay(0.1, 250), lambda m, o: m.PolynomialLR(o, total_iters=250), 0.1, 400),
    (S.polynomial_decay(1.0, 300, power=2.0), lambda m, o: m.PolynomialLR(o, 300, power=2.0), 1.0, 400),
    (S.polynomial_decay(0.5, 100, power=0.5), lambda m, o: m.PolynomialLR(o, 100, power=0.5), 0.5, 400),
    # torch's cosine rises again after T_max: compared up to T_max only
    (S.cosine_decay(0.1, 300), lambda m, o: m.CosineAnnealingLR(o, 300), 0.1, 301),
    (S.cosine_decay(1.0, 350, min_lr=1e-3), lambda m, o: m.CosineAnnealingLR(o, 350, 1e-3), 1.0, 351),
    (S.cosine_decay(0.5, 999, min_lr=0.01), lambda m, o: m.CosineAnnealingLR(o, 999, 0.01), 0.5, 1000),
    (S.cosine_restarts(0.1, 50), lambda m, o: m.CosineAnnealingWarmRestarts(o, 50), 0.1, 400),
    (
        S.cosine_restarts(1.0, 10, cycle_mult=2, min_lr=1e-3),
        lambda m, o: m.CosineAnnealingWarmRestarts(o, 10, T_mult=2, eta_min=1e-3),
        1.0,
        700,
    ),
    (S.cosine_restarts(0.5, 7, cycle_mult=3), lambda m, o: m.CosineAnnealingWarmRestarts(o, 7, 3), 0.5, 400),
    (S.cyclic(0.001, 0.1, 20), lambda m, o: m.CyclicLR(o, 0.001, 0.1, 20), 0.1, 400),
    (
        S.cyclic(0.01, 0.1, 15, 25, mode="triangular2", base_momentum=0.85, max_momentum=0.95),
        lambda m, o: m.CyclicLR(o, 0.01, 0.1, 15, 25, mode="triangular2", base_momentum=0.85, max_momentum=0.95),
        0.1,
        400,
    ),
    (
        S.cyclic(0.0, 1.0, 30, mode="exp_range", gamma=0.995),
        lambda m, o: m.CyclicLR(o, 0.0, 1.0, 30, mode="exp_range", gamma=0.995),
        1.0,
        400,
    ),
    # OneCycleLR is defined up to total_steps - 1
    (S.one_cycle(0.1, 400), lambda m, o: m.OneCycleLR(o, 0.1, total_steps=400), 0.1, 400),
    (
        S.one_cycle(1.0, 300, pct_start=0.25, anneal_strategy="linear"),
        lambda m, o: m.OneCycleLR(o, 1.0, total_steps=300, pct_start=0.25, anneal_strategy="linear"),
        1.0,
        300,
    ),
    (
        S.one_cycle(0.5, 350, pct_start=0.4, div_factor=10.0, final_div_factor=100.0, three_phase=True),
        lambda m, o: m.OneCycleLR(o, 0.5, total_steps=350, pct_start=0.4, div_factor=10.0, final_div_factor=100.0, three_phase=True),
        0.5,
        350,
    ),
    (S.linear(0.025, 0.1, 50), lambda m, o: m.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=50), 0.1, 300),
    (
        S.warmup(S.cosine_decay(0.1, 300), 20, start_lr=0.01),
        lambda m, o: m.SequentialLR(
            o, [m.LinearLR(o, start_factor=0.1, total_iters=20), m.CosineAnnealingLR(o, 300)], milestones=[20]
        ),
        0.1,
        321,
    ),
    (
        S.join([S.step_decay(0.1, 30), S.exponential_decay(0.1, 0.98)], [100]),
        lambda m, o: m.SequentialLR(o, [m.StepLR(o, 30), m.ExponentialLR(o, 0.98)], milestones=[100]),
        0.1,
        400,
    ),
]


@pytest.mark.parametrize("ours, make, lr, steps", TORCH_CASES, ids=[repr(c[0])[:60] for c in TORCH_CASES])
def test_matches_torch(ours, make, lr, steps):
    expected, momentum = torch_rates(make, steps, lr)
    np.testing.assert_allclose(ours.values(steps), expected, rtol=RTOL, atol=0)
    if hasattr(ours, "momentum"):
        np.testing.assert_allclose(ours.momentum_values(steps), momentum, rtol=RTOL, atol=0)
        assert [ours.momentum(t) for t in (0, 7, steps - 1)] == list(ours.momentum_values([0, 7, steps - 1]))


# ---------------------------------------------------------------- formulas without a torch twin


def test_inverse_time_decay_formula():
    s = S.inverse_time_decay(0.1, 10, 0.5)
    assert s(0) == 0.1 and s(20) == pytest.approx(0.1 / 2.0, rel=RTOL)
    stairs = S.inverse_time_decay(0.1, 10, 0.5, staircase=True)
    assert stairs(19) == pytest.approx(0.1 / 1.5, rel=RTOL) and stairs(20) == pytest.approx(0.05, rel=RTOL)


def test_exponential_decay_variants():
    # staircase with decay_steps k is StepLR with step_size k
    assert S.exponential_decay(0.1, 0.5, 10, staircase=True).values(100).tolist() == S.step_decay(0.1, 10, 0.5).values(100).tolist()
    assert S.exponential_decay(0.1, 0.5, 10)(15) == pytest.approx(0.1 * 0.5**1.5, rel=RTOL)
    floor = S.exponential_decay(1.0, 0.5, end_lr=0.1)
    assert floor(3) == 0.125 and floor(4) == 0.1 and floor(10**9) == 0.1
    cap = S.exponential_decay(0.1, 2.0, end_lr=1.0)
    assert cap(3) == 0.8 and cap(4) == 1.0 and cap(10**9) == 1.0
    assert S.exponential_decay(0.1, 2.0)(10**6) == math.inf
    assert S.exponential_decay(0.0, 2.0)(10**6) == 0.0


def test_polynomial_decay_cycle_and_end():
    s = S.polynomial_decay(1.0, 10, power=2.0, end_lr=0.1)
    assert s(5) == pytest.approx(0.9 * 0.25 + 0.1, rel=RTOL) and s(10) == s(10**6) == pytest.approx(0.1)
    c = S.polynomial_decay(1.0, 10, end_lr=0.0, cycle=True)
    assert c(0) == 1.0 and c(10) == 0.0
    assert c(11) == pytest.approx(1 - 11 / 20, rel=RTOL)  # horizon stretched to 20
    assert c(25) == pytest.approx(1 - 25 / 30, rel=RTOL)


def test_finite_schedules_hold_their_final_value():
    assert set(S.cosine_decay(0.1, 100, min_lr=0.001).values(np.arange(100, 500)).tolist()) == {0.001}
    assert set(S.linear(0.0, 0.1, 10).values(np.arange(10, 50)).tolist()) == {0.1}
    one = S.one_cycle(0.1, 100)
    assert set(one.values(np.arange(99, 300)).tolist()) == {one(99)}
    assert one(99) == pytest.approx(0.1 / 25 / 1e4, rel=RTOL) and one.momentum(500) == 0.95


def test_warmup_and_join():
    s = S.warmup(S.constant(0.1), 4, start_lr=0.02)
    assert s.values(6).tolist() == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1], rel=RTOL)
    assert S.warmup(S.constant(0.1), 0)(0) == 0.1
    j = S.join([S.constant(1.0), S.linear(0.5, 0.0, 10), S.step_decay(0.2, 5)], [3, 8])
    assert j.values(15).tolist() == pytest.approx(
        [1.0, 1.0, 1.0, 0.5, 0.45, 0.4, 0.35, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.02, 0.02], rel=RTOL
    )


# ---------------------------------------------------------------- cosine restarts


def restart_starts(first, mult, last_step):
    """Cycle start points up to last_step, one cycle at a time."""
    starts, k = [0], 0
    while starts[-1] <= last_step:
        k += 1
        starts.append(first * k if mult == 1 else round(first * (mult**k - 1) / (mult - 1)))
    return starts


@pytest.mark.parametrize("first, mult", [(10, 1.5), (3, 1.1), (1, 1.01), (7, 2.0), (20, 1.0)])
def test_cosine_restarts_cycles(first, mult):
    s = S.cosine_restarts(1.0, first, cycle_mult=mult, min_lr=0.1, peak_decay=0.8)
    starts = restart_starts(first, mult, 5000)
    t = np.arange(starts[-1])
    k = np.searchsorted(starts, t, side="right") - 1
    lengths = np.diff(starts)
    assert lengths.min() >= 1
    cur = t - np.array(starts)[k]
    peak = np.maximum(0.8**k, 0.1)
    expected = 0.1 + (peak - 0.1) * (1 + np.cos(np.pi * cur / lengths[k])) / 2
    np.testing.assert_allclose(s.values(t), expected, rtol=RTOL)


def test_cosine_restarts_huge_steps_are_constant_time():
    s = S.cosine_restarts(1.0, 1, cycle_mult=2)
    # cycle 50 starts at 2**50 - 1 and lasts 2**50 steps
    t = 2**50 - 1 + 2**48
    assert s(t) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), rel=RTOL)
    assert s(2**50 - 1) == 1.0 and s(2**50 - 2) < 1e-20
    start = time.perf_counter()
    for huge in (10**15, 2**62, 10**18):
        for mult in (1.0, 1.0001, 1.5, 3.0):
            assert 0.0 <= S.cosine_restarts(0.1, 7, cycle_mult=mult)(huge) <= 0.1
    assert time.perf_counter() - start < 0.5


def test_cyclic_keeps_cycling():
    s = S.cyclic(0.1, 1.0, 5, 5)
    np.testing.assert_allclose(s.values(np.arange(10**6, 10**6 + 30)), s.values(30), rtol=1e-9)


# ---------------------------------------------------------------- properties


finite = st.floats(1e-6, 10.0)
count = st.integers(1, 500)


def leaf_schedules():
    return st.one_of(
        st.builds(S.constant, finite),
        st.builds(S.step_decay, finite, count, st.floats(0.01, 1.0)),
        st.builds(S.multistep_decay, finite, st.lists(st.integers(0, 500), max_size=5).map(sorted), st.floats(0.01, 1.0)),
        st.builds(S.exponential_decay, finite, st.floats(0.5, 1.0), count, st.booleans()),
        st.builds(S.polynomial_decay, finite, count, st.floats(0.1, 4.0), st.just(0.0), st.booleans()),
        st.builds(S.inverse_time_decay, finite, count, st.floats(0.0, 5.0), st.booleans()),
        st.builds(S.cosine_decay, finite, count),
        st.builds(S.cosine_restarts, finite, count, st.floats(1.0, 3.0), st.just(0.0), st.floats(0.1, 1.0)),
        st.builds(S.cyclic, finite, finite, count, st.one_of(st.none(), count), st.sampled_from(["triangular", "triangular2", "exp_range"]), st.floats(0.9, 1.0)),
        st.builds(S.one_cycle, finite, st.integers(20, 2000), st.floats(0.1, 0.45), st.sampled_from(["cos", "linear"]), three_phase=st.booleans()),
        st.builds(S.linear, finite, finite, count),
    )


schedules = st.recursive(
    leaf_schedules(),
    lambda inner: st.one_of(
        st.builds(S.warmup, inner, st.integers(0, 100), finite),
        st.lists(inner, min_size=1, max_size=3).flatmap(
            lambda parts: st.lists(st.integers(1, 300), min_size=len(parts) - 1, max_size=len(parts) - 1, unique=True).map(
                lambda b: S.join(parts, sorted(b))
            )
        ),
    ),
    max_leaves=4,
)
step_lists = st.lists(st.integers(0, 10**6), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(schedules, step_lists)
def test_values_equal_calls(s, steps):
    values = s.values(steps)
    assert values.dtype == np.float64 and values.shape == (len(steps),)
    assert values.tolist() == [s(t) for t in steps]
    assert np.all(np.isfinite(values))


@settings(max_examples=60, deadline=None)
@given(schedules, step_lists)
def test_save_restore_and_repr_round_trip(s, steps):
    data = json.loads(json.dumps(s.to_dict()))
    restored = S.from_dict(data)
    assert restored == s and hash(restored) == hash(s)
    assert restored.values(steps).tolist() == s.values(steps).tolist()
    assert S.parse_schedule(repr(s)) == s


def test_resume_mid_schedule_continues_identically():
    s = S.warmup(S.cosine_restarts(0.1, 200, cycle_mult=2, peak_decay=0.8), 50)
    first = s.values(137)
    resumed = S.from_dict(json.loads(json.dumps(s.to_dict())))
    assert np.concatenate([first, resumed.values(np.arange(137, 1000))]).tolist() == s.values(1000).tolist()


def test_repr_equality_immutability():
    s = S.cosine_decay(0.1, 1000)
    assert repr(s) == "cosine_decay(lr=0.1, total_steps=1000, min_lr=0.0)"
    assert s == S.cosine_decay(lr=0.1, total_steps=1000, min_lr=0) and s != S.cosine_decay(0.1, 999)
    assert s != S.polynomial_decay(0.1, 1000) and len({s, S.cosine_decay(0.1, 1000)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 1.0  # type: ignore[misc]
    assert S.multistep_decay(0.1, [1, 2]).milestones == (1, 2)
    assert S.multistep_decay(0.1, np.array([1, 2])) == S.multistep_decay(0.1, (1, 2))


def test_values_accepts_shapes():
    s = S.step_decay(1.0, 2, 0.5)
    assert s.values(0).shape == (0,) and s.values([]).shape == (0,)
    assert s.values(np.array([[0, 2], [4, 6]])).tolist() == [[1.0, 0.5], [0.25, 0.125]]
    assert s(np.int64(4)) == 0.25


# ---------------------------------------------------------------- validation


BAD = [
    (lambda: S.constant(-0.1), ValueError, "lr"),
    (lambda: S.constant(math.nan), ValueError, "lr"),
    (lambda: S.constant(math.inf), ValueError, "lr"),
    (lambda: S.constant("0.1"), TypeError, "lr"),
    (lambda: S.constant(True), TypeError, "lr"),
    (lambda: S.step_decay(0.1, 0), ValueError, "step_size"),
    (lambda: S.step_decay(0.1, 2.5), TypeError, "step_size"),
    (lambda: S.step_decay(0.1, 10, gamma=0.0), ValueError, "gamma"),
    (lambda: S.step_decay(0.1, 10, gamma=-0.5), ValueError, "gamma"),
    (lambda: S.multistep_decay(0.1, [10, 5]), ValueError, "milestones"),
    (lambda: S.multistep_decay(0.1, [-1, 5]), ValueError, "milestones"),
    (lambda: S.multistep_decay(0.1, 5), TypeError, "milestones"),
    (lambda: S.exponential_decay(0.1, 0.0), ValueError, "gamma"),
    (lambda: S.exponential_decay(0.1, 0.9, end_lr=0.2), ValueError, "end_lr"),
    (lambda: S.exponential_decay(0.1, 1.1, end_lr=0.05), ValueError, "end_lr"),
    (lambda: S.exponential_decay(0.1, 0.9, staircase=1), TypeError, "staircase"),
    (lambda: S.polynomial_decay(0.1, 0), ValueError, "total_steps"),
    (lambda: S.polynomial_decay(0.1, -5), ValueError, "total_steps"),
    (lambda: S.polynomial_decay(0.1, 10, power=0), ValueError, "power"),
    (lambda: S.inverse_time_decay(0.1, 10, -1.0), ValueError, "decay_rate"),
    (lambda: S.cosine_decay(0.1, 0), ValueError, "total_steps"),
    (lambda: S.cosine_decay(0.1, 100, min_lr=math.nan), ValueError, "min_lr"),
    (lambda: S.cosine_restarts(0.1, 0), ValueError, "first_cycle_steps"),
    (lambda: S.cosine_restarts(0.1, 10, cycle_mult=0.5), ValueError, "cycle_mult"),
    (lambda: S.cosine_restarts(0.1, 10, peak_decay=1.5), ValueError, "peak_decay"),
    (lambda: S.cosine_restarts(0.1, 10, min_lr=0.2), ValueError, "min_lr"),
    (lambda: S.cyclic(0.01, 0.1, mode="sawtooth"), ValueError, "mode"),
    (lambda: S.cyclic(0.01, 0.1, step_size_up=0), ValueError, "step_size_up"),
    (lambda: S.cyclic(0.01, 0.1, gamma=0.0), ValueError, "gamma"),
    (lambda: S.one_cycle(0.1, 100, pct_start=0.0), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 100, pct_start=1.0), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 10, pct_start=0.1), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 100, pct_start=0.6, three_phase=True), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 0), ValueError, "total_steps"),
    (lambda: S.one_cycle(0.1, 100, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
    (lambda: S.linear(0.0, 0.1, 0), ValueError, "total_steps"),
    (lambda: S.warmup(0.1, 10), TypeError, "schedule"),
    (lambda: S.warmup(S.constant(0.1), -1), ValueError, "warmup_steps"),
    (lambda: S.join([S.constant(0.1), S.constant(0.2)], [10, 20]), ValueError, "boundaries"),
    (lambda: S.join([S.constant(0.1)] * 3, [20, 10]), ValueError, "boundaries"),
    (lambda: S.join([S.constant(0.1)] * 3, [10, 10]), ValueError, "boundaries"),
    (lambda: S.join([], []), ValueError, "schedules"),
    (lambda: S.join([S.constant(0.1), 0.2], [5]), TypeError, "schedules"),
    (lambda: S.from_dict({"type": "nope"}), ValueError, "nope"),
    # integers no float or int64 holds: a ValueError naming the argument
    (lambda: S.constant(10**400), ValueError, "lr"),
    (lambda: S.cosine_decay(0.1, 10**29), ValueError, "total_steps"),
    (lambda: S.step_decay(0.1, 10**400), ValueError, "step_size"),
    (lambda: S.step_decay(0.1, 10, gamma=10**400), ValueError, "gamma"),
    (lambda: S.multistep_decay(0.1, [10, 2**63]), ValueError, r"milestones\[1\]"),
    (lambda: S.warmup(S.constant(0.1), 10**400), ValueError, "warmup_steps"),
    (lambda: S.one_cycle(10**400, 100), ValueError, "max_lr"),
]


@pytest.mark.parametrize("make, error, name", BAD)
def test_bad_arguments(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_bad_steps():
    s = S.constant(0.1)
    with pytest.raises(ValueError, match="t must be >= 0"):
        s(-1)
    with pytest.raises(TypeError, match="t must be an integer"):
        s(1.0)
    with pytest.raises(ValueError, match="steps"):
        s.values(-3)
    with pytest.raises(ValueError, match="steps"):
        s.values([3, -1])
    with pytest.raises(TypeError, match="steps"):
        s.values([0.5])
    with pytest.raises(ValueError, match="t must be >= 0"):
        S.one_cycle(0.1, 100).momentum(-1)
    with pytest.raises(ValueError, match="t must be >= 0"):
        s(2**64)


# ---------------------------------------------------------------- parsing


def test_parse_expression():
    s = S.parse_schedule("warmup(cosine_restarts(0.1, 200, cycle_mult=2, peak_decay=0.8), 50)")
    assert s == S.warmup(S.cosine_restarts(0.1, 200, cycle_mult=2.0, peak_decay=0.8), 50)
    j = S.parse_schedule("join([constant(1e-3), exponential_decay(0.1, 0.99, staircase=True)], (+10,))")
    assert j.boundaries == (10,) and j.schedules[1].staircase is True
    assert S.parse_schedule(" exponential_decay(0.1, 0.9, end_lr=None) ").end_lr is None


@pytest.mark.parametrize(
    "expression, message",
    [
        ("__import__('os').system('echo hacked')", "unknown schedule"),
        ("open('/etc/passwd')", "unknown schedule"),
        ("constant(0.1).__class__", "not allowed"),
        ("cosine_decay(0.1, 2**10)", "not allowed"),
        ("cosine_decay(lr=x, total_steps=10)", "not allowed"),
        ("constant(**{'lr': 0.1})", r"\*\*kwargs"),
        ("[constant(0.1)]", "must be a call"),
        ("0.1", "must be a call"),
        ("lambda: constant(0.1)", "not allowed"),
        ("constant(1e400)", "finite"),
        ("constant(-0.1)", "lr"),
        ("cosine_decay(0.1, -5)", "total_steps"),
        ("cosine_decay(0.1, 1e3)", "total_steps"),
        ("cosine_decay(0.1,", "cannot parse"),
        ("constant(-'a')", "needs a number"),
    ],
)
def test_parse_rejects(expression, message):
    with pytest.raises((ValueError, TypeError), match=message):
        S.parse_schedule(expression)


@pytest.mark.parametrize(
    "expression, message",
    [
        ("constant(" + "-" * 5000 + "0.1)", "deep"),
        ("constant(" + "-" * 100_000 + "0.1)", "long"),
        ("constant(" + "-" * 900 + "0.1)", "deep"),
        ("join(" + "[" * 150 + "]" * 150 + ", [])", "deep"),
        ("constant(" + "-" * 3000 + "0.1)", "deep"),  # ast.parse's RecursionError
        ("constant(" + "9" * 400 + ")", "integer"),
        ("cosine_decay(0.1, " + "1" * 30 + ")", "integer"),
        ("cosine_decay(0.1, -" + "1" * 30 + ")", "integer"),
        ("cosine_decay(0.1, 100, min_lr=0.0, min_lr=0.01)", "min_lr.*more than once|repeated.*min_lr"),
        ("warmup(constant(0.1), warmup_steps=5, warmup_steps=5)", "warmup_steps"),
    ],
)
def test_parse_refuses_hostile_input_with_a_value_error(expression, message):
    """Deep, long or huge input is a ValueError naming the problem, never a
    RecursionError, MemoryError or OverflowError; so is a repeated keyword."""
    with pytest.raises(ValueError, match=message):
        S.parse_schedule(expression)


def test_parse_takes_integers_up_to_int64():
    assert S.parse_schedule(f"cosine_decay(0.1, {2**62})").total_steps == 2**62
    assert S.parse_schedule("constant(12345678901234567890.0)").lr == 12345678901234567890.0


# ---------------------------------------------------------------- plotting


def test_plot_to_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sched.png"
    s = S.warmup(S.cosine_restarts(0.1, 200, cycle_mult=2, peak_decay=0.8), 50)
    fig = S.plot_schedule(s, 1600, path=path)
    assert path.stat().st_size > 10_000
    (ax,) = fig.axes
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "learning rate"
    assert ax.get_title().startswith("warmup(")
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), s.values(1600))


def test_plot_momentum_on_twin_axis_and_given_ax(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = S.plot_schedule(S.one_cycle(0.1, 500), 500, path=tmp_path / "one.png", log=True)
    ax, twin = fig.axes
    assert ax.get_yscale() == "log" and twin.get_ylabel() == "momentum (dashed)"
    assert twin.lines[0].get_ydata()[0] == 0.95

    mine = Figure().add_subplot()
    assert S.plot_schedule(S.constant(0.1), 10, ax=mine, title="flat") is mine.figure
    assert mine.get_title() == "flat"


def test_plot_without_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # None makes `import` fail
    with pytest.raises(ImportError, match=r"pip install lrfast\[plot\]"):
        S.plot_schedule(S.constant(0.1), 10)
