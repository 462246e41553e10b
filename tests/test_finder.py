"""lrfast.finder: the range test on synthetic loss curves of known shape."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from lrfast.finder import DEFAULT_SUGGESTION, SUGGESTION_METHODS, LRFinderResult, find_lr


def range_curve(lr):
    """A range test's typical shape in x = log10(lr): flat at 3 up to ~1e-4,
    a descent centred on 1e-2.5, then a blow-up that sets in past 1e-1."""
    x = math.log10(lr)
    return 3.0 - 2.5 / (1.0 + math.exp(-(x + 2.5) / 0.3)) + math.exp(4.0 * (x + 1.0))


def stepper(curve, noise=0.0, seed=0):
    """A train_step whose loss is ``curve(lr)`` times lognormal noise."""
    rng = np.random.default_rng(seed)
    return lambda lr: curve(lr) * math.exp(noise * rng.standard_normal())


def true_minimum():
    grid = np.geomspace(1e-7, 10, 100_001)
    return float(grid[np.argmin([range_curve(lr) for lr in grid])])


@pytest.mark.parametrize("seed", range(5))
def test_suggestions_land_on_the_descent(seed):
    result = find_lr(stepper(range_curve, noise=0.05, seed=seed))
    best = true_minimum()  # about 0.05
    for method in SUGGESTION_METHODS:
        lr = result.suggest(method)
        assert 1e-4 < lr < best, (method, lr)
    # the default: the minimum / 10, where the averaging window pulls the
    # minimum of this lopsided valley a little to the left
    assert best / 20 < result.suggest() < best / 10 * 1.5


@pytest.mark.parametrize("num_steps", [100, 200])
def test_minimum_of_a_symmetric_valley_is_exact_to_a_step(num_steps):
    # symmetric in log-rate, so the centred average has its minimum at 1e-2 too
    result = find_lr(lambda lr: 1.0 + (math.log10(lr) + 2.0) ** 2, num_steps=num_steps)
    step = (10 / 1e-7) ** (1 / (num_steps - 1))
    assert 1e-2 / step <= 10 * result.suggest("minimum") <= 1e-2 * step


def test_divergence_stops_early_and_truncates():
    blow_up = lambda lr: 1.0 if lr < 1e-3 else 1.0 + 1e4 * (lr - 1e-3)  # noqa: E731
    result = find_lr(blow_up, num_steps=100)
    assert result.stopped_early
    n = len(result.lrs)
    assert n < 100
    assert len(result.losses) == len(result.smoothed_losses) == n
    # it stopped at the first step whose smoothed loss passed 4x the best
    assert result.smoothed_losses[-1] > 4 * result.smoothed_losses.min()
    assert np.all(result.smoothed_losses[:-1] <= 4 * np.minimum.accumulate(result.smoothed_losses)[:-1])
    assert result.suggest() < 1e-3 * 10
    assert np.array_equal(result.lrs, np.geomspace(1e-7, 10, 100)[:n])


def test_diverge_threshold_is_configurable():
    blow_up = lambda lr: 1.0 + 1e3 * lr  # noqa: E731
    early = find_lr(blow_up, diverge_threshold=2)
    late = find_lr(blow_up, diverge_threshold=50)
    never = find_lr(blow_up, diverge_threshold=math.inf)
    assert len(early.lrs) < len(late.lrs) < len(never.lrs) == 100
    assert not never.stopped_early


@pytest.mark.parametrize("method", SUGGESTION_METHODS)
@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_flat_curve_gives_a_defined_suggestion(method, mode):
    result = find_lr(lambda lr: 2.0, mode=mode)
    assert not result.stopped_early and len(result.lrs) == 100
    np.testing.assert_allclose(result.smoothed_losses, 2.0, rtol=1e-12)  # bias-corrected from step 1
    lr = result.suggest(method)
    assert math.isfinite(lr) and 1e-8 <= lr <= 10
    # no descent: the smallest rate considered (after the first tenth)
    first = result.lrs[10]
    assert lr == pytest.approx(first / 10 if method == "minimum" else first)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_without_crashing(bad):
    curve = lambda lr: bad if lr > 1e-2 else range_curve(lr)  # noqa: E731
    result = find_lr(curve, diverge_threshold=math.inf)
    n = len(result.lrs)
    assert result.stopped_early
    assert result.lrs[-1] > 1e-2 >= result.lrs[-2]  # stopped at the first bad step
    assert not np.isfinite(result.losses[-1]) and np.isfinite(result.losses[:-1]).all()
    for method in SUGGESTION_METHODS:
        assert result.suggest(method) <= 1e-2
    assert n < 100


def test_nan_from_the_first_step():
    result = find_lr(lambda lr: math.nan)
    assert len(result.lrs) == 1 and result.stopped_early
    with pytest.raises(ValueError, match="no finite loss"):
        result.suggest()


def test_debiased_moving_average():
    losses = iter([4.0, 2.0, 3.0])
    result = find_lr(lambda lr: next(losses), num_steps=3, smoothing=0.5)
    # avg: 2, 2, 2.5 -> debiased by 1 - 0.5**k: 4, 2 / 0.75, 2.5 / 0.875
    np.testing.assert_allclose(result.smoothed_losses, [4.0, 2 / 0.75, 2.5 / 0.875])
    np.testing.assert_array_equal(result.losses, [4.0, 2.0, 3.0])
    unsmoothed = find_lr(lambda lr: lr, num_steps=5, smoothing=0)
    np.testing.assert_array_equal(unsmoothed.smoothed_losses, unsmoothed.lrs)


def test_rates_of_the_sweep():
    seen = []
    find_lr(lambda lr: seen.append(lr) or 1.0, start_lr=1e-3, end_lr=1.0, num_steps=4)
    np.testing.assert_allclose(seen, [1e-3, 1e-2, 1e-1, 1.0])
    seen.clear()
    find_lr(lambda lr: seen.append(lr) or 1.0, start_lr=1.0, end_lr=4.0, num_steps=4, mode="linear")
    np.testing.assert_allclose(seen, [1.0, 2.0, 3.0, 4.0])


class Recorder:
    def __init__(self):
        self.calls = []

    def save(self):
        self.calls.append("save")
        return "state"

    def restore(self, state):
        self.calls.append(("restore", state))


def test_restore_is_called_once_after_the_run():
    rec = Recorder()
    find_lr(lambda lr: rec.calls.append("step") or 1.0, num_steps=3, save=rec.save, restore=rec.restore)
    assert rec.calls == ["save", "step", "step", "step", ("restore", "state")]


def test_restore_is_called_on_divergence_and_without_save():
    states = []
    find_lr(lambda lr: math.nan, restore=states.append)
    assert states == [None]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_restore_is_called_when_the_step_raises(error):
    rec = Recorder()

    def step(lr):
        if len(rec.calls) > 3:
            raise error
        rec.calls.append("step")
        return 1.0

    with pytest.raises(type(error)):
        find_lr(step, save=rec.save, restore=rec.restore)
    assert rec.calls == ["save", "step", "step", "step", ("restore", "state")]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"start_lr": 0.0}, "start_lr"),
        ({"start_lr": -1e-3}, "start_lr"),
        ({"start_lr": math.nan}, "start_lr"),
        ({"end_lr": 1e-7}, "end_lr"),
        ({"start_lr": 1.0, "end_lr": 0.5}, "end_lr"),
        ({"num_steps": 1}, "num_steps"),
        ({"num_steps": 0}, "num_steps"),
        ({"mode": "cubic"}, "mode"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"smoothing": -0.1}, "smoothing"),
        ({"diverge_threshold": 1.0}, "diverge_threshold"),
    ],
)
def test_invalid_arguments_raise_before_any_step(kwargs, name):
    rec = Recorder()
    with pytest.raises(ValueError, match=name):
        find_lr(lambda lr: rec.calls.append("step") or 1.0, save=rec.save, restore=rec.restore, **kwargs)
    assert rec.calls == []


@pytest.mark.parametrize(("kwargs", "name"), [({"num_steps": 10.0}, "num_steps"), ({"start_lr": "1e-3"}, "start_lr")])
def test_wrong_types_raise_type_error(kwargs, name):
    with pytest.raises(TypeError, match=name):
        find_lr(lambda lr: 1.0, **kwargs)


def test_unknown_method():
    result = find_lr(lambda lr: 1.0, num_steps=10)
    with pytest.raises(ValueError, match="method"):
        result.suggest("fastest")
    assert DEFAULT_SUGGESTION in SUGGESTION_METHODS


@pytest.mark.parametrize("n", [2, 3, 7])
def test_short_runs_still_suggest(n):
    result = find_lr(stepper(range_curve), num_steps=n, diverge_threshold=math.inf)
    for method in SUGGESTION_METHODS:
        assert 1e-8 <= result.suggest(method) <= 10


@pytest.mark.parametrize("method", SUGGESTION_METHODS)
def test_plot_writes_a_png(tmp_path, method):
    pytest.importorskip("matplotlib")
    result = find_lr(stepper(range_curve, noise=0.05))
    path = tmp_path / f"{method}.png"
    fig = result.plot(path, method=method)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert method in fig.axes[0].get_legend().get_texts()[-1].get_text()


def test_plot_without_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = find_lr(lambda lr: 1.0, num_steps=10)
    with pytest.raises(ImportError, match=r"pip install lrfast\[plot\]"):
        result.plot("never.png")


def test_result_is_a_dataclass_of_arrays():
    result = find_lr(lambda lr: 1.0, num_steps=10)
    assert isinstance(result, LRFinderResult)
    assert result.num_steps == 10 and result.mode == "exp" and not result.stopped_early
    assert all(isinstance(a, np.ndarray) for a in (result.lrs, result.losses, result.smoothed_losses))
