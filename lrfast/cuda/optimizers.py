"""The per-element update of each optimizer, as Numba CUDA device functions.

Each body does the arithmetic of its cpp/kernels/<name>.cpp in the same order,
in the arithmetic dtype: the per-step scalars are computed here in double from
the hparams dict of :mod:`lrfast._hparams` (exactly as the C++ kernels compute
them from the same fields) and cast to the dtype on the host before the
launch. The options that change the maths (weight decay, momentum, amsgrad...)
are closure constants, so each combination compiles to its own branch-free
kernel, like the C++ ``branch`` templates; ``maximize`` is already the sign of
``grad_scale``. One difference remains: NVVM may fuse ``a * b + c`` into one
multiply-add (numba-cuda has no switch for it), where the C++ kernels are
built with -ffp-contract=off, so a result may differ from the CPU's in its
last bit.

A body works on values: ``body(p, g, s0, s1, s2, k) -> (p, s0, s1, s2)``
takes the param, the grad and the three state slots (a slot the options do
not use holds 0 and comes back as it went), ``k`` the tuple of scalars, and
returns the new param and states. The kernels around it load and store: the
float32/float64 kernel of :mod:`.launch` indexes one array of the call's
dtype (:func:`.access.tiles`), the low-precision one (:mod:`.lowp_launch`) widens,
rounds and quantizes.

Low precision follows :mod:`lrfast.reference` operation for operation, its
bitwise spec. The bodies already do, except Adam's denominator: the C++
kernels multiply by ``1 / sqrt(1 - beta2**step)``, the reference divides by
``sqrt(1 - beta2**step)``; :meth:`Optimizer.plan` picks the flags and
scalars of either order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import cuda

from . import access, launch

if launch.SIMULATED:
    # The simulator computes in NumPy scalars, where math.sqrt returns a
    # Python float (double): np.sqrt keeps float32 a correctly rounded float32.
    @cuda.jit(device=True)
    def root(x):
        return np.sqrt(x)
else:
    @cuda.jit(device=True)
    def root(x):
        return math.sqrt(x)


@dataclass(frozen=True)
class Optimizer:
    flags: Callable[[dict], tuple]    # hparams -> the compile-time options
    scalars: Callable[[dict], tuple]  # hparams -> the per-step scalars (double), in k's order
    body: Callable                    # *flags -> device function on values
    states: Callable[[dict], tuple]   # hparams -> which of the three state slots it updates
    # hparams -> (flags, scalars) in lrfast.reference's order, where it differs
    exact: Callable[[dict], tuple] | None = None
    grad: bool = True                 # whether the body reads a gradient (the lerp does not)
    read_only: tuple = (False, False, False)  # state slots loaded but never stored
    # state slots that hold weights (schedule-free's z): 16-bit ones round
    # stochastically as the param does, with bits of their own
    weights: tuple = (False, False, False)

    def stores(self, hp: dict) -> tuple:
        """Which of the three state slots are written back."""
        return tuple(used and not kept for used, kept in zip(self.states(hp), self.read_only))

    def plan(self, hp: dict, exact: bool) -> tuple[tuple, tuple]:
        """``(flags, scalars)``: in the reference's order of operations if
        `exact`, else in the C++ kernels' order."""
        if exact and self.exact is not None:
            return self.exact(hp)
        return self.flags(hp), self.scalars(hp)

    def kernel(self, hp: dict, dtype: np.dtype):
        """The compiled-on-first-use kernel for these options over arrays of
        `dtype` (float32 or float64)."""
        return _kernel(self.body, self.flags(hp), self.states(hp), self.stores(hp), self.grad,
                       np.dtype(dtype))


@functools.cache
def _kernel(body, flags, states, stores, grad, dtype):
    return launch.elementwise(*access.tiles(body(*flags), states, stores, grad, dtype))


def _sgd(weight_decay, momentum, nesterov, first_step):
    @cuda.jit(device=True)
    def body(p, g, b, unused1, unused2, k):
        neg_lr, gs, wd, mom, one_minus_damp = k
        d = g * gs
        if weight_decay:
            d = d + wd * p
        if momentum:
            if first_step:  # torch: the buffer takes the gradient itself
                b = d
            else:
                b = b * mom + one_minus_damp * d
            if nesterov:
                d = d + mom * b
            else:
                d = b
        return p + neg_lr * d, b, unused1, unused2

    return body


def _adam(coupled_weight_decay, amsgrad, divide_bc2=False):
    @cuda.jit(device=True)
    def body(p, g, m, v, vmax, k):
        gs, wd, param_decay, w1, beta2, w2, bc2, eps, neg_step = k
        d = g * gs
        if coupled_weight_decay:
            d = d + wd * p
        m = m + w1 * (d - m)  # torch's lerp
        v = v * beta2 + w2 * d * d
        vi = v
        if amsgrad:
            vi = vmax if vmax > vi else vi
            vmax = vi
        if divide_bc2:  # bc2 = sqrt(1 - beta2**step), as the reference divides
            denom = root(vi) / bc2 + eps
        else:  # bc2 = its inverse, as the C++ kernels multiply
            denom = root(vi) * bc2 + eps
        return p * param_decay + neg_step * (m / denom), m, v, vmax

    return body


def _adam_flags(hp):
    return hp["decoupled"] == 0 and hp["weight_decay"] != 0, hp["amsgrad"] != 0


def _adam_scalars(hp, bc2):
    # AdamW decays the parameter itself; p * 1 is exact, so Adam multiplies by 1.
    decay_param = hp["decoupled"] != 0 and hp["weight_decay"] != 0
    return (hp["grad_scale"], hp["weight_decay"],
            1.0 - hp["lr"] * hp["weight_decay"] if decay_param else 1.0,
            1.0 - hp["beta1"], hp["beta2"], 1.0 - hp["beta2"], bc2, hp["eps"], -hp["step_size"])


def _rmsprop(weight_decay, momentum, centered):
    @cuda.jit(device=True)
    def body(p, g, s, b, a, k):
        neg_lr, gs, wd, alpha, w, eps, mom = k
        d = g * gs
        if weight_decay:
            d = d + wd * p
        s = s * alpha + w * d * d
        if centered:
            a = a + w * (d - a)
            avg = root(s - a * a) + eps
        else:
            avg = root(s) + eps
        if momentum:
            b = b * mom + d / avg
            p = p + neg_lr * b
        else:
            p = p + neg_lr * (d / avg)
        return p, s, b, a

    return body


def _adagrad(weight_decay):
    @cuda.jit(device=True)
    def body(p, g, s, unused1, unused2, k):
        neg_clr, gs, wd, eps = k
        d = g * gs
        if weight_decay:
            d = d + wd * p
        s = s + d * d
        return p + neg_clr * (d / (root(s) + eps)), s, unused1, unused2

    return body


def _adadelta(weight_decay):
    @cuda.jit(device=True)
    def body(p, g, s, u, unused, k):
        neg_lr, gs, wd, rho, w, eps = k
        d = g * gs
        if weight_decay:
            d = d + wd * p
        s = s * rho + w * d * d
        delta = root(u + eps) / root(s + eps) * d
        u = u * rho + w * delta * delta
        return p + neg_lr * delta, s, u, unused

    return body


OPTIMIZERS = {
    "sgd": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0, hp["momentum"] != 0, hp["nesterov"] != 0,
                          hp["first_step"] != 0),
        scalars=lambda hp: (-hp["lr"], hp["grad_scale"], hp["weight_decay"], hp["momentum"],
                            1.0 - hp["dampening"]),
        body=_sgd,
        states=lambda hp: (hp["momentum"] != 0, False, False)),
    "adam": Optimizer(
        flags=_adam_flags,
        scalars=lambda hp: _adam_scalars(hp, 1.0 / hp["bias_correction2_sqrt"]),
        body=_adam,
        states=lambda hp: (True, True, hp["amsgrad"] != 0),
        exact=lambda hp: (_adam_flags(hp) + (True,),
                          _adam_scalars(hp, hp["bias_correction2_sqrt"]))),
    "rmsprop": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0, hp["momentum"] != 0, hp["centered"] != 0),
        scalars=lambda hp: (-hp["lr"], hp["grad_scale"], hp["weight_decay"], hp["alpha"],
                            1.0 - hp["alpha"], hp["eps"], hp["momentum"]),
        body=_rmsprop,
        states=lambda hp: (True, hp["momentum"] != 0, hp["centered"] != 0)),
    "adagrad": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0,),
        scalars=lambda hp: (-hp["clr"], hp["grad_scale"], hp["weight_decay"], hp["eps"]),
        body=_adagrad,
        states=lambda hp: (True, False, False)),
    "adadelta": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0,),
        scalars=lambda hp: (-hp["lr"], hp["grad_scale"], hp["weight_decay"], hp["rho"],
                            1.0 - hp["rho"], hp["eps"]),
        body=_adadelta,
        states=lambda hp: (True, True, False)),
}
