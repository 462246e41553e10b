"""Lion's description for the optimizer classes: lion-pytorch's
``decoupled_weight_decay=True`` divides ``weight_decay`` by the rate the
optimizer was made with (its ``_init_lr``, kept here as the group key
``init_lr``) before the step, so that ``lr * weight_decay`` is a constant."""

from __future__ import annotations

from typing import Callable, Mapping

from . import _hparams, steps_lr_free
from ._kernel import Kernel


class LionKernel(Kernel):
    def hparams(self, group: Mapping, plain: Callable = lambda v: v) -> dict:
        weight_decay = plain(group["weight_decay"])
        if _hparams.flag("decoupled_weight_decay", plain(group["decoupled_weight_decay"])):
            weight_decay = (_hparams.real("weight_decay", weight_decay)
                            / _hparams.positive("init_lr", plain(group["init_lr"])))
        return {"betas": plain(group["betas"]), "weight_decay": weight_decay,
                "maximize": plain(group["maximize"])}


LION = LionKernel(steps_lr_free.lion_step, ("exp_avgs",),
                  ("betas", "weight_decay", "decoupled_weight_decay", "init_lr", "maximize"),
                  lambda hp: ("exp_avgs",), counts_steps=False)
