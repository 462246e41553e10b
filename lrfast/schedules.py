"""Learning-rate schedules as pure functions of the step count.

A schedule is a small immutable object: ``s(t)`` is the learning rate for the
update that follows ``t`` completed updates (``t >= 0``), which is also the
rate torch's scheduler holds after ``t`` calls to ``scheduler.step()``.
Nothing is recursive: every value comes from a closed form in float64, so a
schedule can be evaluated at any step, resumed anywhere and plotted without
replaying history.

Every schedule offers

* ``s(t) -> float`` and the vectorised ``s.values(steps) -> ndarray``
  (``steps`` is an int ``n``, meaning ``range(n)``, or an array of step counts);
* ``s.to_dict()`` / :func:`from_dict` to save and restore it as plain
  JSON-able data (nested schedules nest as dicts);
* a ``repr`` that is also a valid expression for :func:`parse_schedule`, and
  equality and hashing by value.

Where torch has the schedule, arguments carry torch's names and ``s(t)``
reproduces torch's closed form with the same floating-point expression.
Finite schedules hold their final value past the end (torch's
``CosineAnnealingLR`` would rise again, ``OneCycleLR`` would raise);
``cyclic`` and ``cosine_restarts`` go on cycling.

:class:`ReduceLROnPlateau` multiplies any of these by a factor that drops
when a metric stops improving, and
:func:`plot_schedule` draws a schedule (needs ``pip install lrfast[plot]``).
"""

from __future__ import annotations

import ast
import math
import numbers
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "Schedule",
    "constant",
    "step_decay",
    "multistep_decay",
    "exponential_decay",
    "polynomial_decay",
    "inverse_time_decay",
    "cosine_decay",
    "cosine_restarts",
    "cyclic",
    "one_cycle",
    "linear",
    "warmup",
    "join",
    "from_dict",
    "parse_schedule",
    "plot_schedule",
    "ReduceLROnPlateau",
]


# ---------------------------------------------------------------- validation


def _number(name: str, value: Any) -> float:
    """A real number as a float, infinities included."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{name} must be finite, got a number too large for a float") from None


def _real(name: str, value: Any) -> float:
    value = _number(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _nonnegative(name: str, value: Any) -> float:
    value = _real(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _positive(name: str, value: Any) -> float:
    value = _real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value >= 2**63:  # step counts are int64 (see _step)
        raise ValueError(f"{name} must be < 2**63, got an integer of {value.bit_length()} bits")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def _counts(name: str, values: Any, *, strict: bool, minimum: int) -> tuple[int, ...]:
    """A tuple of step counts, increasing (strictly when ``strict``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a list of integers, got {type(values).__name__}")
    out = tuple(_count(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))
    for a, b in zip(out, out[1:]):
        if b < a or (strict and b == a):
            order = "strictly increasing" if strict else "non-decreasing"
            raise ValueError(f"{name} must be {order}, got {list(out)}")
    return out


def _step(t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"step t must be an integer, got {type(t).__name__}")
    if not 0 <= int(t) < 2**63:
        raise ValueError(f"step t must be >= 0 (and < 2**63), got {t}")
    return int(t)


def _steps(steps: Any) -> np.ndarray:
    """``steps`` as an int64 array: an int n means range(n)."""
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        return np.arange(_count("steps", steps), dtype=np.int64)
    arr = np.asarray(steps)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"steps must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"steps must be >= 0, got {int(arr.min())}")
    return arr


# ---------------------------------------------------------------- base class


class Schedule:
    """Base of all schedules: frozen dataclasses whose fields are their arguments.

    Subclasses implement ``_eval(t)``, the rate for a 1-D int64 array of step
    counts; ``__call__`` and ``values`` share it, so they always agree.
    """

    def __call__(self, t: int) -> float:
        return float(self._eval(np.array([_step(t)], dtype=np.int64))[0])

    def values(self, steps: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Rates at ``steps`` (an int n for range(n), or an array of step counts)."""
        t = _steps(steps)
        return self._eval(t.ravel()).reshape(t.shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; :func:`from_dict` rebuilds an equal schedule."""
        data: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):  # type: ignore[arg-type]
            data[f.name] = _encode(getattr(self, f.name))
        return data

    def _eval(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _set(self, **values: Any) -> None:
        """Store normalised arguments on the frozen instance (used in __post_init__)."""
        for name, value in values.items():
            object.__setattr__(self, name, value)


class _Momentum:
    """Mixin for schedules that also cycle momentum (inversely to the rate)."""

    def momentum(self, t: int) -> float:
        """Momentum (or Adam's beta1) for the update that follows ``t`` updates."""
        return float(self._momentum(np.array([_step(t)], dtype=np.int64))[0])

    def momentum_values(self, steps: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectorised :meth:`momentum`, with ``steps`` as in ``values``."""
        t = _steps(steps)
        return self._momentum(t.ravel()).reshape(t.shape)

    def _momentum(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _encode(value: Any) -> Any:
    if isinstance(value, Schedule):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def _schedule(name: str, value: Any) -> Schedule:
    if not isinstance(value, Schedule):
        raise TypeError(f"{name} must be a schedule, got {type(value).__name__}")
    return value


# lowercase class names on purpose: the class *is* the constructor the user
# calls, its repr is the call that rebuilds it, and the name is the "type" key.


# ---------------------------------------------------------------- step-wise


@dataclass(frozen=True)
class constant(Schedule):
    """``lr`` at every step."""

    lr: float

    def __post_init__(self) -> None:
        self._set(lr=_nonnegative("lr", self.lr))

    def _eval(self, t: np.ndarray) -> np.ndarray:
        return np.full(t.shape, self.lr)


@dataclass(frozen=True)
class step_decay(Schedule):
    """torch's StepLR: ``lr * gamma ** floor(t / step_size)``."""

    lr: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        self._set(
            lr=_nonnegative("lr", self.lr),
            step_size=_count("step_size", self.step_size, 1),
            gamma=_positive("gamma", self.gamma),
        )

    def _eval(self, t: np.ndarray) -> np.ndarray:
        return self.lr * self.gamma ** (t // self.step_size)


@dataclass(frozen=True)
class multistep_decay(Schedule):
    """torch's MultiStepLR: ``lr * gamma ** #{m in milestones : m <= t}``.

    ``milestones`` must be non-decreasing; a repeated milestone decays twice,
    as in torch.
    """

    lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        self._set(
            lr=_nonnegative("lr", self.lr),
            milestones=_counts("milestones", self.milestones, strict=False, minimum=0),
            gamma=_positive("gamma", self.gamma),
        )

    def _eval(self, t: np.ndarray) -> np.ndarray:
        passed = np.searchsorted(np.array(self.milestones, dtype=np.int64), t, side="right")
        return self.lr * self.gamma**passed


@dataclass(frozen=True)
class exponential_decay(Schedule):
    """``lr * gamma ** (t / decay_steps)``, the exponent floored when ``staircase``.

    With ``decay_steps=1`` this is torch's ExponentialLR. ``end_lr`` bounds the
    rate: a floor when ``gamma < 1``, a cap when ``gamma > 1``.
    """

    lr: float
    gamma: float
    decay_steps: int = 1
    staircase: bool = False
    end_lr: float | None = None

    def __post_init__(self) -> None:
        lr = _nonnegative("lr", self.lr)
        gamma = _positive("gamma", self.gamma)
        end_lr = self.end_lr
        if end_lr is not None:
            end_lr = _nonnegative("end_lr", end_lr)
            if (gamma < 1 and end_lr > lr) or (gamma > 1 and end_lr < lr):
                kind = "a floor, <= lr" if gamma < 1 else "a cap, >= lr"
                raise ValueError(f"end_lr is {kind} when gamma={gamma}; got end_lr={end_lr}")
        self._set(
            lr=lr,
            gamma=gamma,
            decay_steps=_count("decay_steps", self.decay_steps, 1),
            staircase=_flag("staircase", self.staircase),
            end_lr=end_lr,
        )

    def _eval(self, t: np.ndarray) -> np.ndarray:
        if self.lr == 0:  # spares 0 * inf = nan when gamma**p overflows
            return np.zeros(t.shape)
        p = t // self.decay_steps if self.staircase else t / self.decay_steps
        # gamma > 1 overflows to inf for huge t: that is the true value uncapped,
        # and min() with end_lr below turns it into the cap.
        with np.errstate(over="ignore"):
            rate = self.lr * self.gamma**p
        if self.end_lr is None:
            return rate
        bound = np.maximum if self.gamma < 1 else np.minimum
        return bound(rate, self.end_lr)


@dataclass(frozen=True)
class polynomial_decay(Schedule):
    """``(lr - end_lr) * (1 - min(t, T) / T) ** power + end_lr`` with ``T = total_steps``.

    torch's PolynomialLR (``total_iters=total_steps``) when ``end_lr=0``; held
    at ``end_lr`` after ``total_steps``. With ``cycle=True`` (as TF / optax) the
    horizon ``T`` becomes ``total_steps * max(1, ceil(t / total_steps))``, so
    the decay restarts from a lower peak every ``total_steps`` steps.
    """

    lr: float
    total_steps: int
    power: float = 1.0
    end_lr: float = 0.0
    cycle: bool = False

    def __post_init__(self) -> None:
        self._set(
            lr=_nonnegative("lr", self.lr),
            total_steps=_count("total_steps", self.total_steps, 1),
            power=_positive("power", self.power),
            end_lr=_nonnegative("end_lr", self.end_lr),
            cycle=_flag("cycle", self.cycle),
        )

    def _eval(self, t: np.ndarray) -> np.ndarray:
        n = self.total_steps
        if self.cycle:
            horizon = n * np.maximum(1, -(-t // n))  # -(-a // b) is ceil(a / b)
            frac = t / horizon
        else:
            frac = np.minimum(t, n) / n
        return (self.lr - self.end_lr) * (1.0 - frac) ** self.power + self.end_lr


@dataclass(frozen=True)
class inverse_time_decay(Schedule):
    """``lr / (1 + decay_rate * t / decay_steps)``, ``t / decay_steps`` floored when ``staircase``."""

    lr: float
    decay_steps: int
    decay_rate: float
    staircase: bool = False

    def __post_init__(self) -> None:
        self._set(
            lr=_nonnegative("lr", self.lr),
            decay_steps=_count("decay_steps", self.decay_steps, 1),
            decay_rate=_nonnegative("decay_rate", self.decay_rate),
            staircase=_flag("staircase", self.staircase),
        )

    def _eval(self, t: np.ndarray) -> np.ndarray:
        p = t // self.decay_steps if self.staircase else t / self.decay_steps
        return self.lr / (1 + self.decay_rate * p)


# ---------------------------------------------------------------- cosine


def _cosine(peak: Any, floor: float, t: Any, period: Any) -> Any:
    """``floor + (peak - floor) * (1 + cos(pi * t / period)) / 2``.

    Written exactly as torch writes it, operation for operation, so both give
    the same float. (Near the end of a cycle ``1 + cos`` cancels and loses
    relative accuracy; the absolute error stays ~1e-16 * peak.)
    """
    return floor + (peak - floor) * (1 + np.cos(np.pi * t / period)) / 2


@dataclass(frozen=True)
class cosine_decay(Schedule):
    """torch's CosineAnnealingLR on ``[0, total_steps]``:

    ``min_lr + (lr - min_lr) * (1 + cos(pi * min(t, T) / T)) / 2``, ``T = total_steps``.

    After ``total_steps`` the rate is held at ``min_lr``; torch's scheduler
    would instead rise again along the cosine (period ``2 * T_max``).
    """

    lr: float
    total_steps: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        self._set(
            lr=_nonnegative("lr", self.lr),
            total_steps=_count("total_steps", self.total_steps, 1),
            min_lr=_nonnegative("min_lr", self.min_lr),
        )

    def _eval(self, t: np.ndarray) -> np.ndarray:
        return _cosine(self.lr, self.min_lr, np.minimum(t, self.total_steps), self.total_steps)


@dataclass(frozen=True)
class cosine_restarts(Schedule):
    """SGDR / torch's CosineAnnealingWarmRestarts, with a decaying peak.

    Cycle ``k`` (``k = 0, 1, ...``) starts at step
    ``S_k = round(first_cycle_steps * (cycle_mult**k - 1) / (cycle_mult - 1))``
    (``first_cycle_steps * k`` when ``cycle_mult == 1``) and lasts
    ``T_k = S_{k+1} - S_k`` steps, about ``first_cycle_steps * cycle_mult**k``:
    the start points, not the lengths, are rounded, so a fractional
    ``cycle_mult`` never drifts. Within it, with ``T_cur = t - S_k``,

    ``rate = min_lr + (peak_k - min_lr) * (1 + cos(pi * T_cur / T_k)) / 2``,
    ``peak_k = max(lr * peak_decay**k, min_lr)``.

    For an integer ``cycle_mult`` and ``peak_decay=1`` this is torch's
    scheduler with ``T_0=first_cycle_steps``, ``T_mult=cycle_mult``,
    ``eta_min=min_lr``. Evaluation is O(1): the cycle index comes from a
    logarithm, corrected by exact comparisons with the start points.
    """

    lr: float
    first_cycle_steps: int
    cycle_mult: float = 1.0
    min_lr: float = 0.0
    peak_decay: float = 1.0

    def __post_init__(self) -> None:
        lr = _nonnegative("lr", self.lr)
        min_lr = _nonnegative("min_lr", self.min_lr)
        if min_lr > lr:
            raise ValueError(f"min_lr must be <= lr, got min_lr={min_lr} > lr={lr}")
        cycle_mult = _real("cycle_mult", self.cycle_mult)
        if cycle_mult < 1:
            raise ValueError(f"cycle_mult must be >= 1, got {cycle_mult}")
        peak_decay = _positive("peak_decay", self.peak_decay)
        if peak_decay > 1:
            raise ValueError(f"peak_decay must be in (0, 1], got {peak_decay}")
        self._set(
            lr=lr,
            first_cycle_steps=_count("first_cycle_steps", self.first_cycle_steps, 1),
            cycle_mult=cycle_mult,
            min_lr=min_lr,
            peak_decay=peak_decay,
        )

    def _start(self, k: np.ndarray) -> np.ndarray:
        """S_k, the first step of cycle k. Exact for integer cycle_mult while
        S_k < 2**53: every intermediate is then an integer-valued float."""
        n, m = self.first_cycle_steps, self.cycle_mult
        if m == 1:
            return n * k
        # m**k overflows only for an absurd cycle_mult; inf then stands for a
        # cycle that never ends, which is what it is for any int64 step
        with np.errstate(over="ignore"):
            return np.round(n * (m**k - 1) / (m - 1))

    def _cycle(self, t: np.ndarray) -> np.ndarray:
        n, m = self.first_cycle_steps, self.cycle_mult
        if m == 1:
            return t // n
        # invert S_k <= t: k = floor(log_m(1 + t (m - 1) / n)), then fix the
        # rare off-by-one from rounding in the logarithm and in S_k
        k = np.floor(np.log1p(t * (m - 1) / n) / math.log(m)).astype(np.int64)
        k -= self._start(k) > t
        k += self._start(k + 1) <= t
        return k

    def _eval(self, t: np.ndarray) -> np.ndarray:
        k = self._cycle(t)
        start = self._start(k)
        length = self._start(k + 1) - start
        peak = np.maximum(self.lr * self.peak_decay**k, self.min_lr)
        return _cosine(peak, self.min_lr, t - start, length)


# ---------------------------------------------------------------- cyclical


@dataclass(frozen=True)
class cyclic(_Momentum, Schedule):
    """torch's CyclicLR (Smith's cyclical learning rates) and its momentum.

    With ``L = step_size_up + step_size_down``, ``cycle = floor(1 + t / L)`` and
    ``x = 1 + t / L - cycle`` (the position in the cycle, in [0, 1)), the
    triangle is ``h = x / r`` for ``x <= r`` and ``(x - 1) / (r - 1)`` after,
    ``r = step_size_up / L``. Then

    ``rate = base_lr + (max_lr - base_lr) * h * a``,
    ``momentum = max_momentum - (max_momentum - base_momentum) * h * a``,

    with amplitude ``a = 1`` ("triangular"), ``1 / 2**(cycle - 1)``
    ("triangular2") or ``gamma**t`` ("exp_range"). Momentum moves opposite to
    the rate, as in torch. Expressions follow torch's operation for operation.
    """

    base_lr: float
    max_lr: float
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    base_momentum: float = 0.8
    max_momentum: float = 0.9

    def __post_init__(self) -> None:
        down = self.step_size_down
        self._set(
            base_lr=_nonnegative("base_lr", self.base_lr),
            max_lr=_nonnegative("max_lr", self.max_lr),
            step_size_up=_count("step_size_up", self.step_size_up, 1),
            step_size_down=None if down is None else _count("step_size_down", down, 1),
            mode=_choice("mode", self.mode, ("triangular", "triangular2", "exp_range")),
            gamma=_positive("gamma", self.gamma),
            base_momentum=_nonnegative("base_momentum", self.base_momentum),
            max_momentum=_nonnegative("max_momentum", self.max_momentum),
        )

    def _triangle(self, t: np.ndarray) -> tuple[np.ndarray, Any]:
        """(h, a): the triangle in [0, 1] and the amplitude, kept apart so the
        products below associate as torch's do."""
        up = float(self.step_size_up)
        down = up if self.step_size_down is None else float(self.step_size_down)
        total = up + down
        ratio = up / total
        cycle = np.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        h = np.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        if self.mode == "triangular2":
            # torch's 1 / 2.0**(cycle - 1), the same power of two, but this
            # underflows to 0 instead of overflowing after ~1000 cycles
            return h, 0.5 ** (cycle - 1)
        if self.mode == "exp_range":
            return h, self.gamma**t
        return h, 1.0

    def _eval(self, t: np.ndarray) -> np.ndarray:
        h, a = self._triangle(t)
        return self.base_lr + (self.max_lr - self.base_lr) * h * a

    def _momentum(self, t: np.ndarray) -> np.ndarray:
        h, a = self._triangle(t)
        return self.max_momentum - (self.max_momentum - self.base_momentum) * h * a


@dataclass(frozen=True)
class one_cycle(_Momentum, Schedule):
    """torch's OneCycleLR (1cycle policy) and its momentum.

    The rate starts at ``initial = max_lr / div_factor``, anneals up to
    ``max_lr`` over the first ``pct_start`` of ``total_steps``, then down to
    ``initial / final_div_factor`` at step ``total_steps - 1``. With
    ``three_phase`` it comes back to ``initial`` symmetrically first, then
    anneals to the minimum. Phase ``i`` ends at step ``e_i`` (torch's
    ``pct_start * total_steps - 1``, ``2 * pct_start * total_steps - 2``,
    ``total_steps - 1``) and inside it, with ``p = (t - e_{i-1}) / (e_i - e_{i-1})``,

    * ``"cos"``: ``end + (start - end) / 2 * (cos(pi * p) + 1)``
    * ``"linear"``: ``(end - start) * p + start``.

    Every phase needs a positive length: ``pct_start * total_steps > 1``
    (and ``< (total_steps + 1) / 2`` with ``three_phase``). Momentum anneals
    the other way between ``max_momentum`` and ``base_momentum``. From ``total_steps - 1`` on, both are held at their
    final values (torch raises past ``total_steps`` and at ``total_steps``
    extrapolates the last phase).
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __post_init__(self) -> None:
        total = _count("total_steps", self.total_steps, 1)
        pct = _real("pct_start", self.pct_start)
        if not 0 < pct < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {pct}")
        three = _flag("three_phase", self.three_phase)
        self._set(
            max_lr=_nonnegative("max_lr", self.max_lr),
            total_steps=total,
            pct_start=pct,
            anneal_strategy=_choice("anneal_strategy", self.anneal_strategy, ("cos", "linear")),
            div_factor=_positive("div_factor", self.div_factor),
            final_div_factor=_positive("final_div_factor", self.final_div_factor),
            three_phase=three,
            base_momentum=_nonnegative("base_momentum", self.base_momentum),
            max_momentum=_nonnegative("max_momentum", self.max_momentum),
        )
        # torch divides by each phase's length: an empty phase would be 0 / 0
        ends = np.array(self._ends())
        if np.any(np.diff(ends, prepend=0.0) <= 0):
            need = "1 < pct_start * total_steps < (total_steps + 1) / 2" if three else "pct_start * total_steps > 1"
            raise ValueError(f"pct_start={pct} with total_steps={total} leaves a phase without steps; need {need}")

    def _ends(self) -> list[float]:
        warm = float(self.pct_start * self.total_steps)
        last = float(self.total_steps - 1)
        return [warm - 1, 2 * warm - 2, last] if self.three_phase else [warm - 1, last]

    def _anneal(self, t: np.ndarray, points: list[float]) -> np.ndarray:
        """Interpolate through ``points`` (the value at each phase boundary)."""
        ends = np.array(self._ends())
        starts = np.concatenate(([0.0], ends[:-1]))
        t = np.minimum(t, self.total_steps - 1)
        # phase i is the first one with t <= e_i (the last phase takes the rest)
        i = np.minimum(np.searchsorted(ends, t, side="left"), len(ends) - 1)
        pct = (t - starts[i]) / (ends[i] - starts[i])
        start, end = np.array(points[:-1])[i], np.array(points[1:])[i]
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (np.cos(np.pi * pct) + 1)
        return (end - start) * pct + start

    def _eval(self, t: np.ndarray) -> np.ndarray:
        initial = self.max_lr / self.div_factor
        low = initial / self.final_div_factor
        points = [initial, self.max_lr, initial, low] if self.three_phase else [initial, self.max_lr, low]
        return self._anneal(t, points)

    def _momentum(self, t: np.ndarray) -> np.ndarray:
        hi, lo = self.max_momentum, self.base_momentum
        return self._anneal(t, [hi, lo, hi, hi] if self.three_phase else [hi, lo, hi])


# ---------------------------------------------------------------- composition


@dataclass(frozen=True)
class linear(Schedule):
    """``start_lr + (end_lr - start_lr) * min(t, T) / T``, ``T = total_steps``; then held at ``end_lr``."""

    start_lr: float
    end_lr: float
    total_steps: int

    def __post_init__(self) -> None:
        self._set(
            start_lr=_nonnegative("start_lr", self.start_lr),
            end_lr=_nonnegative("end_lr", self.end_lr),
            total_steps=_count("total_steps", self.total_steps, 1),
        )

    def _eval(self, t: np.ndarray) -> np.ndarray:
        n = self.total_steps
        return self.start_lr + (self.end_lr - self.start_lr) * np.minimum(t, n) / n


@dataclass(frozen=True)
class warmup(Schedule):
    """A linear warm-up in front of ``schedule``:

    ``start_lr + (schedule(0) - start_lr) * t / W`` for ``t < W = warmup_steps``,
    then ``schedule(t - W)``. Like torch's
    ``SequentialLR([LinearLR(...), scheduler], milestones=[W])``.
    """

    schedule: Schedule
    warmup_steps: int
    start_lr: float = 0.0

    def __post_init__(self) -> None:
        self._set(
            schedule=_schedule("schedule", self.schedule),
            warmup_steps=_count("warmup_steps", self.warmup_steps, 0),
            start_lr=_nonnegative("start_lr", self.start_lr),
        )

    def _eval(self, t: np.ndarray) -> np.ndarray:
        w = self.warmup_steps
        ramp = t < w
        out = np.empty(t.shape)
        peak = self.schedule(0)
        out[ramp] = self.start_lr + (peak - self.start_lr) * t[ramp] / w
        out[~ramp] = self.schedule._eval(t[~ramp] - w)
        return out


@dataclass(frozen=True)
class join(Schedule):
    """Schedules one after another (torch's SequentialLR, optax's ``join_schedules``).

    ``schedules[i]`` runs for ``boundaries[i-1] <= t < boundaries[i]`` and is
    evaluated at ``t - boundaries[i-1]`` (at ``t`` for the first one), so
    each schedule starts from its own step 0. ``boundaries`` must be strictly
    increasing and one shorter than ``schedules``.
    """

    schedules: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def __post_init__(self) -> None:
        if isinstance(self.schedules, Schedule) or not isinstance(self.schedules, Sequence):
            raise TypeError(f"schedules must be a list of schedules, got {type(self.schedules).__name__}")
        schedules = tuple(_schedule(f"schedules[{i}]", s) for i, s in enumerate(self.schedules))
        if not schedules:
            raise ValueError("schedules must not be empty")
        boundaries = _counts("boundaries", self.boundaries, strict=True, minimum=1)
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"boundaries must have len(schedules) - 1 = {len(schedules) - 1} entries, got {len(boundaries)}"
            )
        self._set(schedules=schedules, boundaries=boundaries)

    def _eval(self, t: np.ndarray) -> np.ndarray:
        which = np.searchsorted(np.array(self.boundaries, dtype=np.int64), t, side="right")
        offsets = (0, *self.boundaries)
        out = np.empty(t.shape)
        for i, schedule in enumerate(self.schedules):
            here = which == i
            out[here] = schedule._eval(t[here] - offsets[i])
        return out


_SCHEDULES: dict[str, type[Schedule]] = {
    cls.__name__: cls
    for cls in (
        constant,
        step_decay,
        multistep_decay,
        exponential_decay,
        polynomial_decay,
        inverse_time_decay,
        cosine_decay,
        cosine_restarts,
        cyclic,
        one_cycle,
        linear,
        warmup,
        join,
    )
}


# ---------------------------------------------------------------- plateau

_CONFIG = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")
_STATE = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", "multiplier")


class ReduceLROnPlateau:
    """Cut the rate by ``factor`` once a metric has not improved for ``patience`` steps.

    torch's version rewrites the optimizer's learning rate, so it cannot be
    combined with another scheduler. This one only keeps a multiplier:
    ``step(metric)`` returns it (1.0, then ``factor``, ``factor**2``, ...) and
    ``rate(schedule(t))`` applies it to whatever the schedule gives, floored
    at ``min_lr``.

    Decisions are torch's: a metric ``a`` improves on the best so far when

    * ``mode="min"``: ``a < best - threshold * |best|`` ("rel") or ``a < best - threshold`` ("abs")
    * ``mode="max"``: ``a > best + threshold * |best|`` ("rel") or ``a > best + threshold`` ("abs").

    Otherwise it is a bad epoch; when more than ``patience`` bad epochs have
    accumulated, the multiplier is multiplied by ``factor``, the count resets
    and the next ``cooldown`` epochs are not counted as bad.

    Differences from torch, all deliberate:

    * Relative thresholds are measured against ``|best|``. torch uses
      ``best * (1 - threshold)``, which for a negative best demands that the
      metric get *worse* to count as an improvement, so a negative loss never
      triggers a reduction there. For positive metrics the two agree exactly.
    * NaN metrics are never an improvement: they count as bad epochs and never
      become the best (this is also what torch's comparisons do).
    * The multiplier does not know the learning rate, so ``eps`` (a reduction
      changing the multiplier by no more than ``eps`` is ignored) is applied to
      the multiplier, i.e. as torch applies it to a learning rate of 1.0, and
      ``min_lr`` is applied by :meth:`rate`. With a constant base rate of 1.0
      ``rate(1.0)`` is torch's learning rate; for other base rates they differ
      only once the multiplier or the rate has fallen to about
      ``eps / (1 - factor)`` (1.1e-8 by default), long after training stalled.
    """

    # set from the checked settings in __init__ and load_state_dict
    mode: str
    factor: float
    patience: int
    threshold: float
    threshold_mode: str
    cooldown: int
    min_lr: float
    eps: float

    def __init__(
        self,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        settings = _plateau_settings(
            mode=mode,
            factor=factor,
            patience=patience,
            threshold=threshold,
            threshold_mode=threshold_mode,
            cooldown=cooldown,
            min_lr=min_lr,
            eps=eps,
        )
        vars(self).update(settings)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0  # number of metrics seen
        self.multiplier = 1.0

    def _is_better(self, a: float) -> bool:
        best, minimize = self.best, self.mode == "min"
        if self.threshold_mode == "abs":
            return a < best - self.threshold if minimize else a > best + self.threshold
        # target = best -/+ threshold * |best|, written as torch's best * (1 -/+ threshold)
        # when that has the right sign, so positive metrics give torch's exact floats
        shrink = (best >= 0) == minimize
        target = best * (1.0 - self.threshold if shrink else 1.0 + self.threshold)
        return a < target if minimize else a > target

    def step(self, metric: float) -> float:
        """Record one metric value (e.g. a validation loss) and return the multiplier."""
        if isinstance(metric, (str, bytes)):
            raise TypeError(f"metric must be a number, got {type(metric).__name__}")
        try:
            current = float(metric)  # also takes numpy scalars and 0-d tensors
        except OverflowError:
            raise ValueError("metric is too large for a float") from None
        self.last_epoch += 1
        if self._is_better(current):  # never true for NaN
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during cooldown do not count
        if self.num_bad_epochs > self.patience:
            reduced = self.multiplier * self.factor
            if self.multiplier - reduced > self.eps:
                self.multiplier = reduced
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.multiplier

    def rate(self, scheduled_lr: float) -> float:
        """``max(scheduled_lr * multiplier, min_lr)``: the rate to use now."""
        return max(_nonnegative("scheduled_lr", scheduled_lr) * self.multiplier, self.min_lr)

    def state_dict(self) -> dict[str, Any]:
        """Settings and progress as plain data (JSON-able; ``best`` may be +-inf,
        which Python's json writes as Infinity and reads back)."""
        return {name: getattr(self, name) for name in _CONFIG + _STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; later steps continue identically.
        Every field is checked first: on an error nothing changes."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [name for name in _CONFIG + _STATE if name not in state]
        if missing:
            raise ValueError(f"state is missing {missing}")
        loaded = _plateau_settings(**{name: state[name] for name in _CONFIG})
        best = _number("best", state["best"])
        if math.isnan(best):
            raise ValueError("best must not be NaN")
        multiplier = _real("multiplier", state["multiplier"])
        if not 0 <= multiplier <= 1:  # 1, then factor, factor**2, ...
            raise ValueError(f"multiplier must lie in [0, 1], got {multiplier}")
        loaded.update(
            best=best,
            num_bad_epochs=_count("num_bad_epochs", state["num_bad_epochs"]),
            cooldown_counter=_count("cooldown_counter", state["cooldown_counter"]),
            last_epoch=_count("last_epoch", state["last_epoch"]),
            multiplier=multiplier,
        )
        vars(self).update(loaded)

    def __repr__(self) -> str:
        config = ", ".join(f"{name}={getattr(self, name)!r}" for name in _CONFIG)
        return f"ReduceLROnPlateau({config})"


def _plateau_settings(**config: Any) -> dict[str, Any]:
    """ReduceLROnPlateau's settings (the names in _CONFIG), checked."""
    threshold_mode = _choice("threshold_mode", config["threshold_mode"], ("rel", "abs"))
    factor = _real("factor", config["factor"])
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    threshold = _real("threshold", config["threshold"])
    # a relative threshold >= 1 would turn the initial best (inf) into -inf or nan
    if threshold < 0 or (threshold_mode == "rel" and threshold >= 1):
        raise ValueError(f"threshold must be >= 0 (and < 1 when threshold_mode='rel'), got {threshold}")
    return {
        "mode": _choice("mode", config["mode"], ("min", "max")),
        "factor": factor,
        "patience": _count("patience", config["patience"]),
        "threshold": threshold,
        "threshold_mode": threshold_mode,
        "cooldown": _count("cooldown", config["cooldown"]),
        "min_lr": _nonnegative("min_lr", config["min_lr"]),
        "eps": _nonnegative("eps", config["eps"]),
    }


# ---------------------------------------------------------------- save / parse


def from_dict(data: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_dict` output (e.g. after JSON)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a dict, got {type(data).__name__}")
    args = dict(data)
    kind = args.pop("type", None)
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown schedule type {kind!r}; known: {', '.join(_SCHEDULES)}")
    return _SCHEDULES[kind](**{name: _decode(value) for name, value in args.items()})


def _decode(value: Any) -> Any:
    if isinstance(value, Mapping):
        return from_dict(value)
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


def parse_schedule(expression: str) -> Schedule:
    """Build a schedule from Python-call syntax, safely (nothing is evaluated).

    Allowed: calls to the schedule constructors by name, with positional and
    keyword arguments; number, string, bool and None literals; lists and
    tuples; unary minus or plus. Example::

        parse_schedule("warmup(cosine_restarts(0.1, 200, cycle_mult=2), 50)")

    Anything else (attributes, other names, operators, ``**kwargs``, a
    keyword given twice, integers beyond int64, more than
    ``_MAX_LENGTH`` characters or ``_MAX_DEPTH`` levels of nesting) raises
    ``ValueError``. Every ``repr`` of a schedule parses back to an equal one.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > _MAX_LENGTH:
        raise ValueError(f"schedule expression is too long: {len(expression)} characters, "
                         f"at most {_MAX_LENGTH}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:  # ValueError: a null byte
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise ValueError(f"cannot parse schedule expression {expression!r}: {reason}") from None
    except (RecursionError, MemoryError):  # what CPython's parser raises on deep nesting
        raise ValueError(f"schedule expression is nested too deeply (at most {_MAX_DEPTH} "
                         "levels)") from None
    result = _build(tree.body, expression, 0)
    if not isinstance(result, Schedule):
        raise ValueError(f"expression must be a call to a schedule, e.g. cosine_decay(0.1, 1000); got {expression!r}")
    return result


# Limits that keep parsing hostile input cheap and free of RecursionError: far
# beyond any real schedule (a deep one nests about 10 levels in 200 characters).
_MAX_LENGTH = 10_000
_MAX_DEPTH = 50


def _build(node: ast.AST, source: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError(f"schedule expression is nested too deeply (at most {_MAX_DEPTH} levels)")
    depth += 1
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _SCHEDULES:
            name = ast.get_source_segment(source, node.func)
            raise ValueError(f"unknown schedule {name!r}; known: {', '.join(_SCHEDULES)}")
        names: list[str] = []
        for kw in node.keywords:
            if kw.arg is None:
                raise ValueError("**kwargs is not allowed in a schedule expression")
            if kw.arg in names:  # Python's compiler refuses it; ast.parse does not
                raise ValueError(f"keyword argument {kw.arg!r} is given more than once "
                                 f"to {node.func.id}")
            names.append(kw.arg)
        args = [_build(a, source, depth) for a in node.args]
        kwargs = {name: _build(kw.value, source, depth) for name, kw in zip(names, node.keywords)}
        return _SCHEDULES[node.func.id](*args, **kwargs)
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (int, float, str))):
        if isinstance(node.value, int) and not isinstance(node.value, bool) and node.value >= 2**63:
            raise ValueError(f"the integer literal of {len(str(node.value))} digits is out of range: "
                             "integers must be < 2**63 (write a large rate as a float, e.g. 1e20)")
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return tuple(_build(e, source, depth) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _build(node.operand, source, depth)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"unary {'-' if isinstance(node.op, ast.USub) else '+'} needs a number")
        return -value if isinstance(node.op, ast.USub) else value
    snippet = ast.get_source_segment(source, node) or type(node).__name__
    raise ValueError(
        f"not allowed in a schedule expression: {snippet!r} "
        "(only schedule calls, numbers, strings, lists and keyword arguments)"
    )


# ---------------------------------------------------------------- plotting


def plot_schedule(
    schedule: Schedule,
    total_steps: int,
    path: str | None = None,
    ax: Any = None,
    *,
    log: bool = False,
    title: str | None = None,
) -> Any:
    """Plot ``schedule`` over ``range(total_steps)`` and return the figure.

    Draws on ``ax`` when given, else on a new figure; saves a PNG (or any
    format matplotlib knows from the suffix) to ``path`` when given, rendering
    with the Agg backend so no display is needed. ``log=True`` uses a log
    scale for the rate. A schedule with ``momentum`` gets it on a twin axis.
    Needs matplotlib: ``pip install lrfast[plot]``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plot_schedule needs matplotlib: pip install lrfast[plot]") from exc
    _schedule("schedule", schedule)
    steps = np.arange(_count("total_steps", total_steps, 1))

    if ax is None and path is not None:
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    elif ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    else:
        fig = ax.figure

    rate_color, momentum_color = "tab:blue", "tab:orange"
    ax.plot(steps, schedule.values(steps), color=rate_color)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, max(int(steps[-1]), 1))
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if isinstance(schedule, _Momentum):
        # each axis coloured like its curve, instead of a legend that would hide one
        twin = ax.twinx()
        twin.plot(steps, schedule.momentum_values(steps), color=momentum_color, linestyle="--")
        twin.set_ylabel("momentum (dashed)", color=momentum_color)
        twin.tick_params(axis="y", colors=momentum_color)
        ax.set_ylabel("learning rate", color=rate_color)
        ax.tick_params(axis="y", colors=rate_color)
    ax.set_title(title if title is not None else textwrap.fill(repr(schedule), 90), fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
