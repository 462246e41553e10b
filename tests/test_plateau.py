"""lrfast.schedules.ReduceLROnPlateau: torch's decisions, negative metrics, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lrfast.schedules import ReduceLROnPlateau, cosine_decay


def trace(seed, n=1000, sign=1.0):
    """A noisy loss curve with long plateaus, the odd spike and repeated values."""
    rng = np.random.default_rng(seed)
    level, out = 10.0, []
    while len(out) < n:
        length = int(rng.integers(5, 60))
        if rng.random() < 0.5:  # improving stretch
            seg = level * np.exp(-np.cumsum(rng.uniform(0, 0.05, length)))
        else:  # plateau: noise around a level, sometimes exactly flat
            noise = 0.0 if rng.random() < 0.3 else level * 0.01
            seg = level + noise * rng.standard_normal(length)
        if rng.random() < 0.1:
            seg[rng.integers(length)] *= 3.0
        level = float(seg[-1])
        out.extend(seg)
    return sign * np.abs(np.array(out[:n]))


SETTINGS = [
    {},
    dict(patience=3),
    dict(patience=0, factor=0.5),
    dict(patience=5, cooldown=4, factor=0.3),
    dict(patience=2, threshold=0.01),
    dict(patience=4, threshold=0.05, threshold_mode="abs", cooldown=2),
    dict(mode="max", patience=3),
    dict(mode="max", patience=6, threshold=0.02, threshold_mode="abs", factor=0.7),
    dict(patience=1, min_lr=1e-3),
    dict(patience=1, factor=0.5, eps=1e-3),
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=[str(k) for k in SETTINGS])
@pytest.mark.parametrize("seed", [0, 1])
def test_decisions_match_torch(kwargs, seed):
    torch = pytest.importorskip("torch")
    metrics = trace(seed)
    if kwargs.get("mode") == "max":
        metrics = 100.0 / metrics  # positive and rising
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    ours = ReduceLROnPlateau(**kwargs)
    reductions = 0
    for value in metrics:
        before = opt.param_groups[0]["lr"]
        theirs.step(float(value))
        multiplier = ours.step(value)
        lr = opt.param_groups[0]["lr"]
        reductions += lr < before
        # with an initial lr of 1.0, torch's lr is our rate; without a floor
        # it is also the multiplier itself
        assert ours.rate(1.0) == pytest.approx(lr, rel=1e-12, abs=0)
        if ours.min_lr == 0:
            assert multiplier == pytest.approx(lr, rel=1e-12, abs=0)
        assert (ours.best, ours.num_bad_epochs, ours.cooldown_counter) == (
            theirs.best,
            theirs.num_bad_epochs,
            theirs.cooldown_counter,
        )
    assert reductions >= 2  # the trace really exercises the logic


def test_nan_is_not_an_improvement_as_in_torch():
    torch = pytest.importorskip("torch")
    metrics = [5.0, 4.0, math.nan, math.nan, 3.9, math.nan, math.nan, math.nan, 1.0, math.nan]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2)
    ours = ReduceLROnPlateau(patience=2)
    for value in metrics:
        theirs.step(value)
        assert ours.step(value) == opt.param_groups[0]["lr"]
        assert not math.isnan(ours.best)
    assert ours.multiplier == pytest.approx(0.1) and ours.best == 1.0


def test_flat_negative_trace_reduces():
    # torch's best * (1 - threshold) never lets a constant negative metric
    # count as "no improvement"; measured against |best| it does
    plateau = ReduceLROnPlateau(patience=2)
    multipliers = [plateau.step(-1.0) for _ in range(8)]
    assert multipliers == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("mode, sign", [("min", 1.0), ("min", -1.0), ("max", 1.0), ("max", -1.0)])
def test_relative_threshold_is_symmetric_in_sign(mode, sign):
    # improvements of 0.5% of |best| pass a 1% threshold in no case, 2% in all
    direction = -1.0 if mode == "min" else 1.0
    for step, expected in [(0.005, 0.1), (0.02, 1.0)]:
        plateau = ReduceLROnPlateau(mode=mode, patience=0, threshold=0.01)
        value = 10.0 * sign
        plateau.step(value)
        assert plateau.step(value + direction * step * abs(value)) == expected


def test_negative_losses_follow_positive_ones():
    # the same curve shifted below zero keeps the same decisions in abs mode
    metrics = trace(3)
    pos = ReduceLROnPlateau(patience=3, threshold=0.1, threshold_mode="abs")
    neg = ReduceLROnPlateau(patience=3, threshold=0.1, threshold_mode="abs")
    assert [pos.step(m) for m in metrics] == [neg.step(m - 1000.0) for m in metrics]


def test_rate_composes_with_a_schedule():
    schedule = cosine_decay(0.1, 100)
    plateau = ReduceLROnPlateau(patience=0, min_lr=1e-4)
    plateau.step(1.0)
    plateau.step(2.0)  # one reduction
    assert plateau.rate(schedule(10)) == pytest.approx(0.1 * schedule(10))
    assert plateau.rate(schedule(100)) == 1e-4  # floored at min_lr


def test_eps_ignores_tiny_reductions():
    plateau = ReduceLROnPlateau(patience=0, factor=0.1)
    plateau.step(1.0)
    multipliers = [plateau.step(2.0) for _ in range(12)]
    # 1e-8 -> 1e-9 would change the multiplier by 9e-9 <= eps = 1e-8
    assert multipliers[-1] == multipliers[7] == pytest.approx(1e-8)


@pytest.mark.parametrize("kwargs", SETTINGS[:6], ids=[str(k) for k in SETTINGS[:6]])
def test_state_dict_resumes_exactly(kwargs):
    metrics = trace(7, n=600, sign=-1.0)
    reference = ReduceLROnPlateau(**kwargs)
    expected = [reference.step(m) for m in metrics]
    for cut in (0, 1, 137, 599):
        first = ReduceLROnPlateau(**kwargs)
        got = [first.step(m) for m in metrics[:cut]]
        state = json.loads(json.dumps(first.state_dict()))
        resumed = ReduceLROnPlateau()  # settings come from the state
        resumed.load_state_dict(state)
        assert resumed.state_dict() == first.state_dict()
        got += [resumed.step(m) for m in metrics[cut:]]
        assert got == expected


def test_repr_and_validation():
    assert repr(ReduceLROnPlateau(mode="max")).startswith("ReduceLROnPlateau(mode='max', factor=0.1")
    for kwargs, error, name in [
        (dict(mode="minimum"), ValueError, "mode"),
        (dict(threshold_mode="relative"), ValueError, "threshold_mode"),
        (dict(factor=1.0), ValueError, "factor"),
        (dict(factor=0.0), ValueError, "factor"),
        (dict(factor=math.nan), ValueError, "factor"),
        (dict(patience=-1), ValueError, "patience"),
        (dict(patience=1.5), TypeError, "patience"),
        (dict(threshold=-1e-4), ValueError, "threshold"),
        (dict(threshold=1.0), ValueError, "threshold"),
        (dict(cooldown=-2), ValueError, "cooldown"),
        (dict(min_lr=-1.0), ValueError, "min_lr"),
        (dict(eps=math.inf), ValueError, "eps"),
        (dict(mode=1), TypeError, "mode"),
    ]:
        with pytest.raises(error, match=name):
            ReduceLROnPlateau(**kwargs)
    plateau = ReduceLROnPlateau()
    with pytest.raises(TypeError, match="metric"):
        plateau.step("0.5")
    with pytest.raises(ValueError, match="missing"):
        plateau.load_state_dict({"mode": "min"})
    with pytest.raises(ValueError, match="scheduled_lr"):
        plateau.rate(-0.1)


@pytest.mark.parametrize("field, value, error", [
    ("patience", "x", TypeError),        # after mode, factor and threshold in _CONFIG
    ("eps", -1.0, ValueError),           # the last setting
    ("multiplier", "x", TypeError),      # the last field of progress
    ("best", "x", TypeError),
    ("last_epoch", -1, ValueError),
    ("multiplier", 10**400, ValueError),
], ids=["patience", "eps", "multiplier", "best", "last_epoch", "huge multiplier"])
def test_load_state_dict_with_one_bad_field_changes_nothing(field, value, error):
    source = ReduceLROnPlateau(mode="max", factor=0.5, patience=2, threshold_mode="abs",
                               cooldown=1, min_lr=1e-4)
    for metric in (1.0, 0.5, 0.5, 0.5, 0.5):
        source.step(metric)
    state = source.state_dict()
    state[field] = value
    target = ReduceLROnPlateau()
    target.step(3.0)
    before = target.state_dict()
    with pytest.raises(error, match=field):
        target.load_state_dict(state)
    assert target.state_dict() == before


def test_a_metric_too_large_for_a_float_is_a_value_error():
    with pytest.raises(ValueError, match="metric"):
        ReduceLROnPlateau().step(10**400)
