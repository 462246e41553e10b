"""The per-element update of each optimizer, as Numba CUDA device functions.

Each body does the arithmetic of its cpp/kernels/<name>.cpp in the same order,
in the arrays' dtype: the per-step scalars are computed here in double from
the hparams dict of :mod:`lrfast._hparams` (exactly as the C++ kernels compute
them from the same fields) and cast to the dtype on the host before the
launch. The options that change the maths (weight decay, momentum, amsgrad...)
are closure constants, so each combination compiles to its own branch-free
kernel, like the C++ ``branch`` templates; ``maximize`` is already the sign of
``grad_scale``. One difference remains: NVVM may fuse ``a * b + c`` into one
multiply-add (numba-cuda has no switch for it), where the C++ kernels are
built with -ffp-contract=off, so a result may differ from the CPU's in its
last bit.

A body is ``body(x, piece, i, k)``: ``x`` is the view spanning the call's
arrays, ``piece`` a row of the piece table (see :mod:`.launch`), ``i`` the
element within the piece, ``k`` the tuple of scalars. Element ``i`` of the
params is ``x[piece[PARAM] + i]``, of the grads ``x[piece[GRAD] + i]``, of
the k-th state ``x[piece[STATE + k] + i]``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

from numba import cuda

from . import launch

PARAM, GRAD, STATE = 1, 2, 3  # table columns: the order of the call's arrays


@dataclass(frozen=True)
class Optimizer:
    flags: Callable[[dict], tuple]    # hparams -> the compile-time options
    scalars: Callable[[dict], tuple]  # hparams -> the per-step scalars (double), in k's order
    body: Callable                    # *flags -> device function

    def kernel(self, hp: dict):
        """The compiled-on-first-use kernel for these options."""
        return _kernel(self.body, self.flags(hp))


@functools.cache
def _kernel(body, flags):
    return launch.elementwise(body(*flags))


def _sgd(weight_decay, momentum, nesterov, first_step):
    @cuda.jit(device=True)
    def body(x, piece, i, k):
        neg_lr, gs, wd, mom, one_minus_damp = k
        p, g, b = piece[PARAM] + i, piece[GRAD] + i, piece[STATE] + i
        d = x[g] * gs
        if weight_decay:
            d = d + wd * x[p]
        if momentum:
            if first_step:  # torch: the buffer takes the gradient itself
                buf = d
            else:
                buf = x[b] * mom + one_minus_damp * d
            x[b] = buf
            if nesterov:
                d = d + mom * buf
            else:
                d = buf
        x[p] = x[p] + neg_lr * d

    return body


def _adam(coupled_weight_decay, amsgrad):
    @cuda.jit(device=True)
    def body(x, piece, i, k):
        gs, wd, param_decay, w1, beta2, w2, inv_bc2, eps, neg_step = k
        p, g = piece[PARAM] + i, piece[GRAD] + i
        m, v, vmax = piece[STATE] + i, piece[STATE + 1] + i, piece[STATE + 2] + i
        d = x[g] * gs
        if coupled_weight_decay:
            d = d + wd * x[p]
        mi = x[m] + w1 * (d - x[m])  # torch's lerp
        vi = x[v] * beta2 + w2 * d * d
        x[m] = mi
        x[v] = vi
        if amsgrad:
            vi = x[vmax] if x[vmax] > vi else vi
            x[vmax] = vi
        denom = math.sqrt(vi) * inv_bc2 + eps
        x[p] = x[p] * param_decay + neg_step * (mi / denom)

    return body


def _adam_scalars(hp):
    # AdamW decays the parameter itself; p * 1 is exact, so Adam multiplies by 1.
    decay_param = hp["decoupled"] != 0 and hp["weight_decay"] != 0
    return (hp["grad_scale"], hp["weight_decay"],
            1.0 - hp["lr"] * hp["weight_decay"] if decay_param else 1.0,
            1.0 - hp["beta1"], hp["beta2"], 1.0 - hp["beta2"],
            1.0 / hp["bias_correction2_sqrt"], hp["eps"], -hp["step_size"])


def _rmsprop(weight_decay, momentum, centered):
    @cuda.jit(device=True)
    def body(x, piece, i, k):
        neg_lr, gs, wd, alpha, w, eps, mom = k
        p, g, sq = piece[PARAM] + i, piece[GRAD] + i, piece[STATE] + i
        buf, ga = piece[STATE + 1] + i, piece[STATE + 2] + i
        d = x[g] * gs
        if weight_decay:
            d = d + wd * x[p]
        si = x[sq] * alpha + w * d * d
        x[sq] = si
        if centered:
            ai = x[ga] + w * (d - x[ga])
            x[ga] = ai
            avg = math.sqrt(si - ai * ai) + eps
        else:
            avg = math.sqrt(si) + eps
        if momentum:
            b = x[buf] * mom + d / avg
            x[buf] = b
            x[p] = x[p] + neg_lr * b
        else:
            x[p] = x[p] + neg_lr * (d / avg)

    return body


def _adagrad(weight_decay):
    @cuda.jit(device=True)
    def body(x, piece, i, k):
        neg_clr, gs, wd, eps = k
        p, g, s = piece[PARAM] + i, piece[GRAD] + i, piece[STATE] + i
        d = x[g] * gs
        if weight_decay:
            d = d + wd * x[p]
        si = x[s] + d * d
        x[s] = si
        x[p] = x[p] + neg_clr * (d / (math.sqrt(si) + eps))

    return body


def _adadelta(weight_decay):
    @cuda.jit(device=True)
    def body(x, piece, i, k):
        neg_lr, gs, wd, rho, w, eps = k
        p, g = piece[PARAM] + i, piece[GRAD] + i
        sq, acc = piece[STATE] + i, piece[STATE + 1] + i
        d = x[g] * gs
        if weight_decay:
            d = d + wd * x[p]
        si = x[sq] * rho + w * d * d
        x[sq] = si
        delta = math.sqrt(x[acc] + eps) / math.sqrt(si + eps) * d
        x[acc] = x[acc] * rho + w * delta * delta
        x[p] = x[p] + neg_lr * delta

    return body


OPTIMIZERS = {
    "sgd": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0, hp["momentum"] != 0, hp["nesterov"] != 0,
                          hp["first_step"] != 0),
        scalars=lambda hp: (-hp["lr"], hp["grad_scale"], hp["weight_decay"], hp["momentum"],
                            1.0 - hp["dampening"]),
        body=_sgd),
    "adam": Optimizer(
        flags=lambda hp: (hp["decoupled"] == 0 and hp["weight_decay"] != 0, hp["amsgrad"] != 0),
        scalars=_adam_scalars,
        body=_adam),
    "rmsprop": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0, hp["momentum"] != 0, hp["centered"] != 0),
        scalars=lambda hp: (-hp["lr"], hp["grad_scale"], hp["weight_decay"], hp["alpha"],
                            1.0 - hp["alpha"], hp["eps"], hp["momentum"]),
        body=_rmsprop),
    "adagrad": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0,),
        scalars=lambda hp: (-hp["clr"], hp["grad_scale"], hp["weight_decay"], hp["eps"]),
        body=_adagrad),
    "adadelta": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0,),
        scalars=lambda hp: (-hp["lr"], hp["grad_scale"], hp["weight_decay"], hp["rho"],
                            1.0 - hp["rho"], hp["eps"]),
        body=_adadelta),
}
