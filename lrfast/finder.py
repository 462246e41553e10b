"""The learning-rate range test: which learning rate should I train with?

Method (Smith 2017, "Cyclical Learning Rates for Training Neural Networks",
section 3.3; popularised as fastai's ``lr_find``): start from a tiny rate and
raise it after every minibatch, geometrically (``mode="exp"``) or linearly,
while recording the training loss. The loss stays flat while the rate is too
small to matter, falls once the rate is useful, and blows up once it is too
large. A good rate lies on the falling stretch, below the blow-up.

Two smoothed versions of the noisy minibatch losses are used:

* while the test runs, their exponential moving average with bias correction,
  as fastai's ``Recorder`` (this is :attr:`LRFinderResult.smoothed_losses`)::

      avg_i      = beta * avg_{i-1} + (1 - beta) * loss_i        (avg_{-1} = 0)
      smoothed_i = avg_i / (1 - beta ** (i + 1))

  The test stops early once ``smoothed_i > diverge_threshold * min(smoothed)``
  or a loss is NaN/inf: the rest of the sweep would only show divergence.
* afterwards, to suggest a rate, a centred moving average of the losses
  (:meth:`LRFinderResult.centred_average`). The moving average above is
  causal, so it trails the losses: with ``beta=0.98`` it averages over the
  last ~30-50 steps, which at the end of a 100-step sweep is two decades
  of rate, and its minimum comes well after the loss has started to rise. A
  centred average has no lag, so "the rate where the loss is lowest" means
  what it says. (On the digits example this is what makes fastai's
  "minimum / 10" rule land on the best rates; on the lagging average it
  overshoots five-fold, see DEFAULT_SUGGESTION.)

:func:`find_lr` knows nothing about models or frameworks: it calls
``train_step(lr)``, which must perform one training step at rate ``lr`` and
return that step's loss, and optionally ``save()``/``restore(state)`` so that
the model and optimizer end where they started.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["find_lr", "LRFinderResult", "SUGGESTION_METHODS", "DEFAULT_SUGGESTION"]

SUGGESTION_METHODS = ("minimum", "valley", "steep")

# The default. Judged on the digits MLP of ``lrfast demo`` (20 epochs, 3
# seeds): the suggested rate must train to a mean validation loss within 10%
# of the best rate of a half-decade grid (1e-4 ... 1), for SGD with momentum
# and for Adam. Over all 2,024 triples of 24 seeds, "minimum" met that in 99%
# (SGD) and 100% (Adam) of the triples, "steep" in 87% and 83%, "valley" in
# 0% and 59% (it lands below SGD's flat optimum of about 6e-3 ... 2e-2). The
# same "minimum / 10" read off the lagging moving average, as fastai does,
# overshoots: 44% and 0%. tests/test_demo.py checks the criterion.
DEFAULT_SUGGESTION = "minimum"

# The centred average spans 2 * h + 1 steps, h = num_steps / 12: 8 for 100
# steps, 17 steps = 1.4 decades of rate for the default 1e-7 ... 10 sweep.
_WINDOW_PER_STEP = 1 / 12
# fastai ignores the first tenth of the sweep: nothing happens there yet and
# the first losses are the noisiest.
_SKIP_START_FRACTION = 0.1
# The valley pick: this fraction of the way down the longest descent.
_VALLEY_FRACTION = 2 / 3


@dataclass(frozen=True)
class LRFinderResult:
    """What a range test measured: one entry per training step taken.

    ``lrs[i]`` is the rate of step ``i``, ``losses[i]`` the loss it returned
    and ``smoothed_losses[i]`` the debiased moving average up to it. After an
    early stop the arrays end at the step that triggered it (whose loss may be
    NaN or inf). ``num_steps`` is the length the sweep was planned to have.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    stopped_early: bool
    num_steps: int
    mode: str = "exp"

    def centred_average(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, values)``: the losses averaged over the centred window
        ``i - h ... i + h``, ``h = round(num_steps / 12)`` (smaller if the run is
        too short), at every step ``i`` up to the first non-finite loss where
        the window fits."""
        finite = np.isfinite(self.losses)
        n = len(finite) if finite.all() else int(np.argmin(finite))
        if n == 0:
            raise ValueError("the range test recorded no finite loss: nothing to suggest from")
        h = min(round(self.num_steps * _WINDOW_PER_STEP), (n - 1) // 2)
        values = np.convolve(self.losses[:n], np.full(2 * h + 1, 1 / (2 * h + 1)), mode="valid")
        return np.arange(h, n - h), values

    def suggest(self, method: str = DEFAULT_SUGGESTION) -> float:
        """A learning rate read off the centred average of the losses.

        Candidates are the points of :meth:`centred_average` outside the first
        tenth of the planned sweep (all of them if that leaves fewer than 3).
        Methods:

        ``"minimum"`` (default)
            The rate at the lowest centred average, divided by 10: Smith's
            and fastai's rule of thumb, an order of magnitude below where
            training stops improving.
        ``"valley"``
            fastai's valley rule. Find the longest strictly decreasing
            subsequence of the candidates' losses (points ``i1 < ... < ik``
            with ``loss[i1] > ... > loss[ik]``, by dynamic programming), take
            its first and last points as the top and the bottom of the
            valley, and return the rate ``2/3`` of the way from top to
            bottom, counted in steps (so in log-rate for ``mode="exp"``).
            (fastai measures the top as ``bottom - k`` and goes about half
            way; the subsequence's true first point and 2/3 give a similar
            point that does not depend on how sparse the subsequence is.)
            Cautious: the top sits where the flat start of the curve ends.
        ``"steep"``
            The rate where the loss falls fastest per unit of log-rate:
            argmin of ``np.gradient(average, log(lr))`` over the candidates
            up to the lowest one (what follows is the blow-up).

        A flat or rising curve has no descent: every method then picks the
        first candidate, the smallest rate considered.
        """
        index = self.suggestion_index(method)
        rate = float(self.lrs[index])
        return rate / 10 if method == "minimum" else rate

    def suggestion_index(self, method: str = DEFAULT_SUGGESTION) -> int:
        """Index into :attr:`lrs` of the point :meth:`suggest` reads (for
        ``"minimum"``, the minimum itself, before the division by 10)."""
        if method not in SUGGESTION_METHODS:
            raise ValueError(f"method must be one of {SUGGESTION_METHODS}, got {method!r}")
        index, values = self.centred_average()
        keep = index >= self.num_steps * _SKIP_START_FRACTION
        if keep.sum() >= 3:
            index, values = index[keep], values[keep]
        pick = {"minimum": _minimum, "valley": _valley, "steep": _steep}[method]
        return int(index[pick(values, np.log(self.lrs[index]))])

    def plot(self, path: str | None = None, *, method: str = DEFAULT_SUGGESTION, ax: Any = None,
             title: str | None = None) -> Any:
        """Draw loss against rate (log scale) and mark the suggestion.

        The losses are drawn faint, the moving average that decides the early
        stop thin, the centred average the suggestion is read from solid, with
        a dot where the method looks and a dashed line at the suggested rate.
        Draws on ``ax`` when given, else on a new figure; saves to ``path``
        (any format matplotlib knows from the suffix) when given, rendering
        with the Agg backend so no display is needed. Returns the figure.
        Needs matplotlib (``pip install lrfast[plot]``).
        """
        fig, ax = _axes(ax, path)
        finite = np.isfinite(self.losses)
        ax.plot(self.lrs[finite], self.losses[finite], color="tab:blue", alpha=0.25, lw=1,
                label="loss per step")
        ax.plot(self.lrs, self.smoothed_losses, color="tab:gray", lw=1,
                label="moving average (early stop)")
        index, values = self.centred_average()
        ax.plot(self.lrs[index], values, color="tab:blue", lw=2, label="centred average")
        point, rate = self.suggestion_index(method), self.suggest(method)
        ax.plot(self.lrs[point], values[point - index[0]], "o", color="tab:red", ms=7)
        ax.axvline(rate, color="tab:red", ls="--", lw=1.2,
                   label=f"{method}{' / 10' if method == 'minimum' else ''}: lr = {rate:.2g}")
        ax.set_xscale("log")
        # Divergence would squash the interesting part: cap the view at twice
        # the starting level of the centred average.
        low = min(float(np.min(self.losses[finite])), float(np.min(values)))
        high = min(float(np.max(self.smoothed_losses[np.isfinite(self.smoothed_losses)])),
                   2.0 * float(values[0]))
        margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
        ax.set_ylim(low - margin, high + margin)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        if title is None:
            title = "learning-rate range test" + (" (stopped early)" if self.stopped_early else "")
        ax.set_title(title)
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def find_lr(train_step: Callable[[float], float], *, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 100, mode: str = "exp", smoothing: float = 0.98,
            diverge_threshold: float = 4.0, save: Callable[[], Any] | None = None,
            restore: Callable[[Any], None] | None = None) -> LRFinderResult:
    """Run the learning-rate range test and return what it measured.

    ``train_step(lr)`` performs one training step (a fresh minibatch, forward,
    backward, optimizer update) at learning rate ``lr`` and returns the loss of
    that minibatch as a number. Step ``i`` (from 0) uses
    ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))`` for
    ``mode="exp"`` or the linear interpolation for ``mode="linear"``; the
    first step is at ``start_lr`` and the last at ``end_lr``.

    ``smoothing`` is the moving average's ``beta`` (0 = none). The test stops
    after the step whose smoothed loss exceeds ``diverge_threshold`` times the
    lowest so far, or whose loss is not finite (``diverge_threshold=inf``
    keeps only the second rule). The ratio test assumes positive losses, as
    cross-entropy or squared error.

    ``save()`` is called once before the first step and ``restore(state)``
    with what it returned (None without ``save``) once at the end, also when
    ``train_step`` raises or the run is interrupted, so the model and
    optimizer can go back to where they were: the range test trains them
    into divergence.

    Use :meth:`LRFinderResult.suggest` for a rate and
    :meth:`LRFinderResult.plot` to look at the curve.
    """
    lrs = _sweep(start_lr, end_lr, num_steps, mode)
    if isinstance(smoothing, bool) or not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if isinstance(diverge_threshold, bool) or not diverge_threshold > 1:
        raise ValueError(f"diverge_threshold must be > 1, got {diverge_threshold!r}")
    if not callable(train_step):
        raise TypeError(f"train_step must be callable, got {type(train_step).__name__}")

    state = save() if save is not None else None
    losses: list[float] = []
    smoothed: list[float] = []
    try:
        avg, best = 0.0, math.inf
        for i, lr in enumerate(lrs):
            loss = float(train_step(float(lr)))
            avg = smoothing * avg + (1 - smoothing) * loss
            value = avg / (1 - smoothing ** (i + 1))
            losses.append(loss)
            smoothed.append(value)
            best = min(best, value)
            if not math.isfinite(loss) or value > diverge_threshold * best:
                break
    finally:
        if restore is not None:
            restore(state)
    n = len(losses)
    return LRFinderResult(lrs=lrs[:n], losses=np.array(losses), smoothed_losses=np.array(smoothed),
                          stopped_early=n < num_steps, num_steps=num_steps, mode=mode)


def _sweep(start_lr: float, end_lr: float, num_steps: int, mode: str) -> np.ndarray:
    """The planned rates, after checking the arguments that define them."""
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if start_lr <= 0:
        raise ValueError(f"start_lr must be > 0, got {start_lr}")
    if end_lr <= start_lr:
        raise ValueError(f"end_lr must be > start_lr ({start_lr}), got {end_lr}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an integer, got {type(num_steps).__name__}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if mode == "exp":
        return np.geomspace(start_lr, end_lr, num_steps)
    if mode == "linear":
        return np.linspace(start_lr, end_lr, num_steps)
    raise ValueError(f"mode must be 'exp' or 'linear', got {mode!r}")


# ---------------------------------------------------------------- suggestion rules
# Each takes the candidates' averaged losses and log-rates, returns an index into them.


def _minimum(loss: np.ndarray, log_lr: np.ndarray) -> int:
    return int(np.argmin(loss))


def _valley(loss: np.ndarray, log_lr: np.ndarray) -> int:
    n = len(loss)
    length = np.ones(n, dtype=np.int64)  # longest decreasing subsequence ending at i
    first = np.arange(n)  # where that subsequence starts
    for i in range(1, n):
        before = np.flatnonzero(loss[:i] > loss[i])
        if before.size:
            j = before[np.argmax(length[before])]  # earliest of the longest: widest valley
            length[i], first[i] = length[j] + 1, first[j]
    bottom = int(np.argmax(length))  # earliest end of a longest subsequence
    top = int(first[bottom])
    return top + round(_VALLEY_FRACTION * (bottom - top))


def _steep(loss: np.ndarray, log_lr: np.ndarray) -> int:
    bottom = int(np.argmin(loss))
    if bottom == 0:  # nothing descends
        return 0
    slope = np.gradient(loss[:bottom + 1], log_lr[:bottom + 1])
    return int(np.argmin(slope))


def _axes(ax: Any, path: str | None) -> tuple[Any, Any]:
    """(figure, axes) to draw on, importing matplotlib only now."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install lrfast[plot]") from exc
    if ax is not None:
        return ax.figure, ax
    if path is not None:  # no pyplot: no GUI backend, no global figure list
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        return fig, fig.add_subplot()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    return fig, ax
