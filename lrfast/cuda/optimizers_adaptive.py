"""The per-element updates of NAdam, RAdam and Adamax as Numba CUDA device
functions, in the order of cpp/kernels/nadam.cpp, radam.cpp and adamax.cpp
(which is also :mod:`lrfast.reference_adaptive`'s). Bodies, flags and
scalars as in :mod:`.optimizers`: the per-step scalars come from the hparams
dict of :mod:`lrfast._hparams`, computed there in double."""

from __future__ import annotations

from numba import cuda

from .optimizers import Optimizer, root


def _weight_decay_flags(hp):
    """(coupled, decoupled): torch's two ways of decaying NAdam's and RAdam's params."""
    decay = hp["weight_decay"] != 0
    return decay and hp["decoupled"] == 0, decay and hp["decoupled"] != 0


def _nadam(coupled_weight_decay, decoupled_weight_decay):
    @cuda.jit(device=True)
    def body(p, g, m, v, unused, k):
        gs, wd, decay, w1, beta2, w2, inv_bc2, eps, grad_coef, avg_coef, one = k
        if decoupled_weight_decay:
            p = p * decay
        d = g * gs
        if coupled_weight_decay:
            d = d + wd * p
        m = m + w1 * (d - m)  # torch's lerp
        v = v * beta2 + w2 * d * d
        r = one / (root(v * inv_bc2) + eps)
        p = p + grad_coef * d * r
        return p + avg_coef * m * r, m, v, unused

    return body


def _radam(coupled_weight_decay, decoupled_weight_decay, rectified):
    @cuda.jit(device=True)
    def body(p, g, m, v, unused, k):
        gs, wd, decay, w1, beta2, w2, inv_bc1, bc2_sqrt, eps, lr, rect = k
        if decoupled_weight_decay:
            p = p * decay
        d = g * gs
        if coupled_weight_decay:
            d = d + wd * p
        m = m + w1 * (d - m)
        v = v * beta2 + w2 * d * d
        b = m * inv_bc1
        if rectified:
            p = p - b * lr * (bc2_sqrt / (root(v) + eps)) * rect
        else:
            p = p - b * lr
        return p, m, v, unused

    return body


def _adamax(weight_decay):
    @cuda.jit(device=True)
    def body(p, g, m, u, unused, k):
        gs, wd, w1, beta2, eps, neg_clr = k
        d = g * gs
        if weight_decay:
            d = d + wd * p
        m = m + w1 * (d - m)
        a, b = u * beta2, abs(d) + eps
        u = a if (a > b or a != a) else b  # torch.maximum: NaN if either is
        return p + neg_clr * m / u, m, u, unused

    return body


def _adam_family(hp):
    return (hp["grad_scale"], hp["weight_decay"], 1.0 - hp["lr"] * hp["weight_decay"],
            1.0 - hp["beta1"], hp["beta2"], 1.0 - hp["beta2"])


OPTIMIZERS = {
    "nadam": Optimizer(
        flags=_weight_decay_flags,
        scalars=lambda hp: _adam_family(hp) + (1.0 / hp["bias_correction2"], hp["eps"],
                                               hp["grad_coef"], hp["avg_coef"], 1.0),
        body=_nadam,
        states=lambda hp: (True, True, False)),
    "radam": Optimizer(
        flags=lambda hp: _weight_decay_flags(hp) + (hp["rectified"] != 0,),
        scalars=lambda hp: _adam_family(hp) + (1.0 / hp["bias_correction1"],
                                               hp["bias_correction2_sqrt"], hp["eps"], hp["lr"],
                                               hp["rect"]),
        body=_radam,
        states=lambda hp: (True, True, False)),
    "adamax": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0,),
        scalars=lambda hp: (hp["grad_scale"], hp["weight_decay"], 1.0 - hp["beta1"], hp["beta2"],
                            hp["eps"], -hp["clr"]),
        body=_adamax,
        states=lambda hp: (True, True, False)),
}
