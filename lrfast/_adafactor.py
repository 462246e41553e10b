"""Adafactor's description for :mod:`lrfast.optim`: its states are a param's
row and column factors (2 or more dims) or its full variance (0 or 1 dims).

The optimizer classes keep one array per param in every state list, so a
state that a param does not use is held as an empty array of the param's
dtype (:class:`FactorSlot` gives each state's shape), which checkpoints carry
like any other; the step function gets None there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .reference_adafactor import factored
from .steps_adafactor import adafactor_step
from ._kernel import Kernel, Slot

STATES = ("row_vars", "col_vars", "variances")


@dataclass(frozen=True)
class FactorSlot(Slot):
    """One of Adafactor's states, always of its param's dtype."""

    part: str = "variances"
    param_dtype: bool = True

    def shape(self, shape: tuple[int, ...], hparams) -> tuple[int, ...]:
        shape = tuple(shape)
        if (self.part == "variances") == factored(shape):
            return (0,)  # unused by this param
        if self.part == "row_vars":
            return shape[:-1] + (1,)
        if self.part == "col_vars":
            return shape[:-2] + (1,) + shape[-1:]
        return shape


class AdafactorKernel(Kernel):
    def __call__(self, params, grads, states, hparams, *, lr, step, grad_scale=1.0):
        uses = [factored(np.shape(p)) for p in params]
        lists = {name: [s if use == (name != "variances") else None
                        for s, use in zip(states[name], uses)] for name in STATES}
        adafactor_step(params, grads, *lists.values(), lr=lr, step=step,
                       grad_scale=grad_scale, **hparams)


ADAFACTOR = AdafactorKernel(adafactor_step, STATES,
                            ("beta2_decay", "eps", "d", "weight_decay", "maximize"),
                            lambda hp: STATES,
                            slots={name: FactorSlot(part=name) for name in STATES})
