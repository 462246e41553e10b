"""How the optimizer classes drive a step function: one description per
optimizer (a :class:`Kernel`), read by both front ends, :mod:`lrfast.optim`
(NumPy) and :mod:`lrfast.torch`.

A step of a class goes in two phases. :meth:`Kernel.check` sees every param
group's hyperparameters and may refuse them, before anything is written;
:meth:`Kernel.run` then applies the update to the :class:`Piece` objects the
front end made of each group's arrays. The six torch.optim optimizers make
one step-function call per piece; the optimizers that carry scalar state
across steps in their param groups (schedule-free's averaging weights,
Prodigy's ``d``) subclass :class:`Kernel` in their own modules.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, MutableMapping, NamedTuple, Sequence

from . import _hparams
from ._backend import checks_only, through
from .precision import holds_param


@dataclass(frozen=True)
class Slot:
    """A state that does not start as zeros of its param's shape."""

    start: str | None = None  # the group key of its start value (Adagrad's sums)
    copies_param: bool = False  # starts as the param's values, taken at its first step
    sliced: bool = False  # 1-D: the flattened param's elements [::slice_p]
    param_dtype: bool = False  # the param's dtype whatever the state_dtype
    # holds the weights (schedule-free's z): the state_dtype where it holds the
    # param's values (float32 for a 16-bit param), else the param's dtype
    weights: bool = False

    def state_dtype(self, state_dtype: str | None, param_dtype: str) -> str | None:
        """The state_dtype of this state of a param of dtype ``param_dtype``
        (a name) under the optimizer's ``state_dtype`` (None: the param's)."""
        if self.param_dtype or (self.weights and not holds_param(state_dtype, param_dtype)):
            return None
        return state_dtype

    def shape(self, shape: tuple[int, ...], hparams: Mapping) -> tuple[int, ...]:
        """The state's shape for a param of ``shape``."""
        if not self.sliced:
            return tuple(shape)
        size = 1
        for n in shape:
            size *= n
        return (-(-size // _hparams.slice_step(hparams["slice_p"])),)

    def start_value(self, group: Mapping, plain: Callable = lambda v: v) -> float:
        """The constant a state that does not copy its param starts at."""
        return plain(group[self.start]) if self.start else 0.0


ZEROS = Slot()


class Piece(NamedTuple):
    """The arrays of one step-function call: a group's params (in
    lrfast.torch, those on one device with as many updates behind them),
    their grads and states (name -> list). ``step`` is the 1-based number of
    this update for them, ``rounding`` the stochastic-rounding keywords;
    ``done(advance)`` follows every pass that wrote, ``advance`` True when the
    update is complete (the params' step counts move); ``via``, if not None,
    runs the base kernels' calls instead of a back end (lrfast.torch's
    prepared host calls, see lrfast._backend.through); ``across``, if not
    None, sums floats over the ranks holding the other shards of these
    arrays (lrfast.torch's DTensors): what turns a reduction over the arrays
    into one over the whole tensors; ``scalars``, if not None, maps each of
    the kernel's ``scalar_states`` to the params' 0-d tensors holding it
    (lrfast.torch's, which keeps them per param as torch does)."""

    params: Sequence
    grads: Sequence
    states: Mapping[str, Sequence]
    step: int
    rounding: Mapping
    done: Callable[[bool], None]
    via: Callable | None = None  # what runs the call instead of a back end (_backend.through)
    across: Callable[[Sequence[float]], list[float]] | None = None  # sums over the ranks
    # lrfast.torch's per-param 0-d tensors of the kernel's scalar_states (NAdam's mu_product)
    scalars: Mapping[str, Sequence] | None = None


@dataclass
class Update:
    """One param group's part of a step: its hyperparameters as the kernel
    reads them (plain numbers), its rate, whether any of its params has a
    gradient (lrfast.torch skips those that have none), and its pieces, made
    once the step is checked."""

    group: MutableMapping
    hparams: dict
    lr: float
    has_grads: bool = True
    pieces: list[Piece] = field(default_factory=list)


@dataclass(frozen=True)
class Kernel:
    """How a front door drives one step function."""

    step: Callable
    states: tuple[str, ...]  # the function's positional state arguments, in order
    hyper: tuple[str, ...]  # the group keys the kernel reads, besides lr
    uses: Callable[[Mapping], tuple[str, ...]]  # the states a group's options need
    counts_steps: bool = True  # takes step=
    slots: Mapping[str, Slot] = field(default_factory=dict)  # the states not started as zeros
    # the scalars torch keeps per param beside "step" (name -> start value): NAdam's mu_product
    scalar_states: Mapping[str, float] = field(default_factory=dict)

    def slot(self, name: str) -> Slot:
        return self.slots.get(name, ZEROS)

    def hparams(self, group: Mapping, plain: Callable = lambda v: v) -> dict:
        """The step function's keywords from a param group (lr and step excluded)."""
        return {key: plain(group[key]) for key in self.hyper}

    def __call__(self, params, grads, states: Mapping, hparams: Mapping, *, lr, step,
                 grad_scale=1.0):
        """One fused update; ``states`` maps state names to lists (absent: unused)."""
        if self.counts_steps:
            hparams = {**hparams, "step": step}
        self.step(params, grads, *(states.get(name) for name in self.states), lr=lr,
                  grad_scale=grad_scale, **hparams)

    def joining(self, group: dict, groups: Sequence[Mapping]) -> dict:
        """A group added to ``groups`` after construction (add_param_group),
        with what it must share with them (Prodigy's estimate)."""
        return group

    def validate(self, hparams: Mapping, lr) -> None:
        """Checks the hyperparameters the way a step would, by a step over no tensors."""
        self([], [], {name: [] for name in self.states}, hparams, lr=lr, step=1)

    def check_group(self, group: Mapping, lr, plain: Callable = lambda v: v) -> None:
        """Checks a param group's hyperparameters, the states' start values included."""
        self.validate(self.hparams(group, plain), lr)
        self.check_start_values(group, plain)

    def check_start_values(self, group: Mapping, plain: Callable = lambda v: v) -> None:
        """Checks the group's start values of states (Adagrad's initial_accumulator_value)."""
        for slot in self.slots.values():
            if slot.start:
                _hparams.non_negative(slot.start, plain(group[slot.start]))

    def check(self, groups: Sequence[Mapping], updates: Sequence[Update], *,
              first_checks_itself: bool = False) -> None:
        """Refuses a step of ``updates`` (of the optimizer's ``groups``) with
        bad hyperparameters, before anything is written. With
        ``first_checks_itself`` the first group with gradients is left to its
        own call, which checks before it writes (and nothing is written before
        it). Groups without gradients are not checked: they do not step."""
        skip = first_checks_itself
        for update in updates:
            if update.has_grads and skip:
                skip = False
            elif update.has_grads:
                self.validate(update.hparams, update.lr)

    def run(self, groups: Sequence[MutableMapping], updates: Sequence[Update],
            grad_scale: float = 1.0, grad_norm: float | None = None) -> None:
        """Applies one update (checked by :meth:`check` and :meth:`preflight`):
        a call per piece. ``grad_norm``, the gradients' global norm when the
        caller has computed it, is for kernels that refuse non-finite ones."""
        for update in updates:
            for piece in update.pieces:
                self._apply(update, piece, grad_scale)
                piece.done(True)

    def _apply(self, update: Update, piece: Piece, grad_scale: float) -> None:
        with through(piece.via):
            self(piece.params, piece.grads, piece.states, {**update.hparams, **piece.rounding},
                 lr=update.lr, step=piece.step, grad_scale=grad_scale)

    def preflight(self, groups: Sequence[Mapping], updates: Sequence[Update],
                  grad_scale: float = 1.0, *, first_checks_itself: bool = True) -> None:
        """Runs the checks of every call :meth:`run` would make but the
        first (which checks its arrays before it writes; all of them unless
        ``first_checks_itself``), writing nothing: an
        error in a later group's arrays (a state changed in place, a param
        reshaped) then comes before the first group is written, and names
        the group."""
        pieces = [(update, piece) for update in updates if self._steps(update)
                  for piece in update.pieces]
        with checks_only():
            for n, (update, piece) in enumerate(pieces):
                with naming_group(groups, update.group):
                    self._check(update, piece, grad_scale, n == 0 and first_checks_itself)

    def _steps(self, update: Update) -> bool:
        """Whether :meth:`run` calls the step function on ``update``'s pieces."""
        return True

    def _check(self, update: Update, piece: Piece, grad_scale: float, first: bool) -> None:
        """The checks of a piece's calls, but for what the ``first`` call checks itself."""
        if not first:
            self._apply(update, piece, grad_scale)


@contextlib.contextmanager
def naming_group(groups: Sequence[Mapping], group: Mapping):
    """Prefixes the message of a TypeError or ValueError with the group's index."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        index = next(i for i, g in enumerate(groups) if g is group)
        raise type(exc)(f"param group {index}: {exc}") from None
