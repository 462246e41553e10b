"""Schedule-free SGD and AdamW (schedulefree 1.4.x) for the optimizer
classes: the per-group scalars and the train/eval switch.

As in the package, each param group holds its own schedule state: ``k``
(steps taken), ``lr_max``, ``weight_sum``, ``scheduled_lr`` (the last
warmed-up rate, for logging) and ``train_mode``. A group starts in eval mode
(``train_mode=False``): ``train()`` must come before the first ``step()``,
which refuses to run while a group is in eval mode. The param holds ``y``
(where gradients are taken) in train mode and ``x`` (the average, to evaluate
and to save) in eval mode; a param's ``z`` is made, as a copy of it, at its
first step. ``z`` holds the weights, so it keeps the param's precision: it
takes the ``state_dtype`` only where that holds the param's values (float32
for a 16-bit param), else the param's dtype (``state_dtype`` then applies to
AdamW's ``exp_avg_sqs`` alone). Every group advances its scalars at every
step, also a group whose params have no gradient (as the package does).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Mapping, MutableMapping, Sequence

from . import _hparams, steps_lr_free
from ._backend import through
from ._kernel import Kernel, Slot, Update
from .reference_lr_free import ScheduleFreeScalars, ScheduleFreeStepScalars

# the group keys of the schedule's options and state, not step-function keywords
SCHEDULE = ("warmup_steps", "r", "weight_lr_power", "k", "lr_max", "weight_sum", "train_mode")
# the group keys of its state, at their start values
START = {"k": 0, "train_mode": False, "weight_sum": 0.0, "lr_max": -1.0, "scheduled_lr": 0.0}


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ScheduleFreeKernel(Kernel):
    beta1_key: str = "momentum"  # SGD's; AdamW's is betas[0]

    def beta1(self, group: Mapping, plain: Callable = lambda v: v) -> float:
        value = plain(group[self.beta1_key])
        return value if self.beta1_key == "momentum" else value[0]

    def scalars(self, hparams: Mapping, lr) -> ScheduleFreeScalars:
        """The group's schedule, as it stands before this step, checked."""
        _count("warmup_steps", hparams["warmup_steps"])
        _hparams.finite("r", hparams["r"])
        _hparams.finite("weight_lr_power", hparams["weight_lr_power"])
        scalars = ScheduleFreeScalars(_hparams.non_negative("lr", lr),
                                      warmup_steps=hparams["warmup_steps"], r=hparams["r"],
                                      weight_lr_power=hparams["weight_lr_power"])
        scalars.k = _count("k", hparams["k"])
        scalars.lr_max = _hparams.finite("lr_max", hparams["lr_max"])
        scalars.weight_sum = _hparams.non_negative("weight_sum", hparams["weight_sum"])
        return scalars

    def advance(self, hparams: Mapping, lr) -> tuple[ScheduleFreeScalars,
                                                     ScheduleFreeStepScalars]:
        """The group's schedule after this step, and this step's scalars; a
        ValueError if its averaging weight is no finite float."""
        scalars = self.scalars(hparams, lr)
        try:
            now = scalars.next()
            # the weight of this step, which a positive lr_max must keep above 0
            weight = scalars.k**scalars.r * scalars.lr_max**scalars.weight_lr_power
            fits = math.isfinite(scalars.weight_sum) and (weight > 0 or scalars.lr_max <= 0)
        except (OverflowError, ZeroDivisionError):  # of (k + 1)**r or lr_max**weight_lr_power
            fits = False
        if not fits:
            raise ValueError(
                f"lr={lr!r}, r={hparams['r']!r} and weight_lr_power="
                f"{hparams['weight_lr_power']!r} give step {hparams['k'] + 1} an averaging "
                "weight (k + 1)**r * lr_max**weight_lr_power (or a sum of them) that overflows "
                "or underflows float64")
        return scalars, now

    def _call(self, piece_arrays, hparams: Mapping, scalars, grad_scale, rounding,
              via=None) -> None:
        params, grads, states = piece_arrays
        keywords = {key: v for key, v in hparams.items() if key not in SCHEDULE}
        with through(via):  # lrfast.torch's prepared host calls (see Piece)
            self.step(params, grads, *(states[name] for name in self.states), lr=scalars.lr,
                      ckp1=scalars.ckp1, step=scalars.step, grad_scale=grad_scale, **keywords,
                      **rounding)

    def joining(self, group: dict, groups: Sequence[Mapping]) -> dict:
        """A new group's params have no z yet (x = y = z): it joins in the
        others' mode."""
        return {"train_mode": groups[0]["train_mode"], **group}

    def validate(self, hparams: Mapping, lr) -> None:
        """Checks a group and the scalars its next step would take, by a step
        over no tensors."""
        _hparams.flag("train_mode", hparams["train_mode"])
        self._call(([], [], {name: [] for name in self.states}), hparams,
                   self.advance(hparams, lr)[1], 1.0, {})

    def check(self, groups: Sequence[Mapping], updates: Sequence[Update], *,
              first_checks_itself: bool = False) -> None:
        for index, group in enumerate(groups):
            if not group["train_mode"]:
                raise ValueError(f"param group {index} is in eval mode: call the optimizer's "
                                 "train() before step() (and eval() before evaluating or "
                                 "saving), as schedulefree requires")
        for update in updates:
            self.validate(update.hparams, update.lr)

    def run(self, groups: Sequence[MutableMapping], updates: Sequence[Update],
            grad_scale: float = 1.0, grad_norm: float | None = None) -> None:
        for update in updates:
            scalars, now = self.advance(update.hparams, update.lr)
            for piece in update.pieces:
                self._call(piece[:3], update.hparams, now, grad_scale, piece.rounding, piece.via)
                piece.done(True)
            # after the first call, which checks its arrays before it writes
            update.group.update(k=scalars.k, lr_max=scalars.lr_max,
                                weight_sum=scalars.weight_sum, scheduled_lr=now.lr)

    def _apply(self, update: Update, piece, grad_scale: float) -> None:
        self._call(piece[:3], update.hparams, self.advance(update.hparams, update.lr)[1],
                   grad_scale, piece.rounding, piece.via)


_HYPER = ("weight_decay", "maximize") + SCHEDULE
_Z = {"zs": Slot(copies_param=True, weights=True)}

SGD = ScheduleFreeKernel(steps_lr_free.schedulefree_sgd_step, ("zs",), ("momentum",) + _HYPER,
                         lambda hp: ("zs",), slots=_Z)
ADAMW = ScheduleFreeKernel(steps_lr_free.schedulefree_adamw_step, ("zs", "exp_avg_sqs"),
                           ("betas", "eps") + _HYPER, lambda hp: ("zs", "exp_avg_sqs"), slots=_Z,
                           beta1_key="betas")


def switch(kernel: ScheduleFreeKernel, groups: Sequence[MutableMapping], to_train: bool,
           pairs: Callable[[int, Mapping], list[tuple[list, list]]],
           plain: Callable = lambda v: v) -> None:
    """``train()`` (``to_train``) or ``eval()``: every group in the other
    mode moves its params that have a ``z`` from x to y or back, and changes
    mode. ``pairs(index, group)`` gives those params and their z's, as lists
    that one call can take (one per device). Every group's ``beta1`` is
    checked before anything moves."""
    move = steps_lr_free.schedulefree_to_train if to_train else steps_lr_free.schedulefree_to_eval
    switching = [(index, group, kernel.beta1(group, plain)) for index, group in enumerate(groups)
                 if bool(group["train_mode"]) != to_train]
    for _, _, beta1 in switching:
        move([], [], beta1=beta1)
    for index, group, beta1 in switching:
        for params, zs in pairs(index, group):
            move(params, zs, beta1=beta1)
        group["train_mode"] = to_train
