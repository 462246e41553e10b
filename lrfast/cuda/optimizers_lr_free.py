"""The per-element updates of Lion, schedule-free SGD and AdamW, their
eval/train switch and Prodigy's update pass, as Numba CUDA device functions.

Bodies as in :mod:`.optimizers` (``body(p, g, s0, s1, s2, k) -> (p, s0, s1,
s2)``, options as closure constants, scalars computed on the host in double
from the hparams dict of :mod:`lrfast._hparams` and cast to the arithmetic
dtype), each following :mod:`lrfast.reference_lr_free` operation for
operation; that order is also the C++ kernels', so one plan serves both the
float32/float64 and the low-precision kernels. Prodigy's reduction pass,
which returns sums, is in :mod:`.prodigy_reduction`.

``lerp`` is torch's: ``a + w * (b - a)`` for ``|w| < 0.5``, else
``b - (b - a) * (1 - w)``. The branch depends on a per-call scalar only, so
it is a compile-time option: schedule-free's ``ckp1`` takes the second form
on its first steps (1, 1/2) and the first after, two kernels in all.
"""

from __future__ import annotations

from numba import cuda

from .optimizers import Optimizer, root


def _lerp(from_end: bool):
    """``lerp(a, b, w, one_minus_w)``: torch's lerp, in the form `from_end`
    (``|w| >= 0.5``) picks; both weights rounded to the dtype on the host."""
    @cuda.jit(device=True)
    def lerp(a, b, w, one_minus_w):
        if from_end:
            return b - (b - a) * one_minus_w
        return a + w * (b - a)

    return lerp


def _from_end(w: float) -> bool:
    return abs(w) >= 0.5


@cuda.jit(device=True)
def _sign(c, one):
    """np.sign: -1, 0 or 1 in c's dtype (`one` is 1 in it: a literal would
    widen float32 to float64 on a GPU); +0 for -0, NaN for NaN."""
    if c > 0:
        return one
    if c < 0:
        return -one
    return c - c  # +0 for either zero, NaN for NaN


def _lion():
    @cuda.jit(device=True)
    def body(p, g, m, unused1, unused2, k):
        gs, decay, beta1, w1, neg_lr, beta2, w2, one = k
        d = g * gs
        c = m * beta1 + w1 * d
        p = p * decay + neg_lr * _sign(c, one)  # decay = 1 - lr * weight_decay, also when 1
        m = m * beta2 + w2 * d
        return p, m, unused1, unused2

    return body


def _schedulefree_sgd(weight_decay, from_end):
    lerp = _lerp(from_end)

    @cuda.jit(device=True)
    def body(y, g, z, unused1, unused2, k):
        gs, wd, ckp1, one_minus_ckp1, y_rate, neg_lr = k
        d = g * gs
        if weight_decay:
            d = d + wd * y
        y = lerp(y, z, ckp1, one_minus_ckp1)
        y = y + y_rate * d  # y_rate = lr * (momentum * (1 - ckp1) - 1)
        z = z + neg_lr * d
        return y, z, unused1, unused2

    return body


def _schedulefree_adamw(weight_decay, from_end):
    lerp = _lerp(from_end)

    @cuda.jit(device=True)
    def body(y, g, z, v, unused, k):
        gs, beta2, w2, bc2, eps, wd, ckp1, one_minus_ckp1, y_rate, neg_lr = k
        d = g * gs
        v = v * beta2 + w2 * d * d
        u = d / (root(v / bc2) + eps)  # bc2 = 1 - beta2**step
        if weight_decay:
            u = u + wd * y
        y = lerp(y, z, ckp1, one_minus_ckp1)
        y = y + y_rate * u  # y_rate = lr * (beta1 * (1 - ckp1) - 1)
        z = z + neg_lr * u
        return y, z, v, unused

    return body


def _schedulefree_lerp(from_end):
    lerp = _lerp(from_end)

    @cuda.jit(device=True)
    def body(p, unused_grad, z, unused1, unused2, k):
        w, one_minus_w = k
        return lerp(p, z, w, one_minus_w), z, unused1, unused2

    return body


def _prodigy(coupled_weight_decay, decoupled_weight_decay, first_moment):
    @cuda.jit(device=True)
    def body(p, g, m, v, unused, k):
        gs, wd, beta1, m_rate, beta2, v_rate, d_eps, param_decay, neg_dlr, neg_dlr_d = k
        d = g * gs
        if coupled_weight_decay:
            d = d + wd * p
        if first_moment:
            m = m * beta1 + m_rate * d  # m_rate = d * (1 - beta1)
        v = v * beta2 + v_rate * d * d  # v_rate = d * d * (1 - beta2)
        denom = root(v) + d_eps  # d_eps = d_new * eps
        if decoupled_weight_decay:
            p = p + param_decay * p  # param_decay = -weight_decay * dlr
        if first_moment:
            p = p + neg_dlr * (m / denom)
        else:
            p = p + neg_dlr_d * (d / denom)  # neg_dlr_d = -dlr * d_new
        return p, m, v, unused

    return body


def _schedulefree_scalars(hp, beta1):
    ckp1 = hp["ckp1"]
    return (hp["weight_decay"], ckp1, 1.0 - ckp1, hp["lr"] * (beta1 * (1.0 - ckp1) - 1.0),
            -hp["lr"])


def _prodigy_flags(hp):
    decay = hp["weight_decay"] != 0
    return decay and hp["decouple"] == 0, decay and hp["decouple"] != 0, hp["beta1"] > 0


def _prodigy_scalars(hp):
    d, beta1, beta2 = hp["d"], hp["beta1"], hp["beta2"]
    return (hp["grad_scale"], hp["weight_decay"], beta1, d * (1.0 - beta1), beta2,
            d * d * (1.0 - beta2), hp["d_new"] * hp["eps"], -hp["weight_decay"] * hp["dlr"],
            -hp["dlr"], -hp["dlr"] * hp["d_new"])


OPTIMIZERS = {
    "lion": Optimizer(
        flags=lambda hp: (),
        scalars=lambda hp: (hp["grad_scale"], 1.0 - hp["lr"] * hp["weight_decay"], hp["beta1"],
                            1.0 - hp["beta1"], -hp["lr"], hp["beta2"], 1.0 - hp["beta2"], 1.0),
        body=_lion,
        states=lambda hp: (True, False, False)),
    "schedulefree_sgd": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0, _from_end(hp["ckp1"])),
        scalars=lambda hp: (hp["grad_scale"],) + _schedulefree_scalars(hp, hp["momentum"]),
        body=_schedulefree_sgd,
        states=lambda hp: (True, False, False),
        weights=(True, False, False)),
    "schedulefree_adamw": Optimizer(
        flags=lambda hp: (hp["weight_decay"] != 0, _from_end(hp["ckp1"])),
        scalars=lambda hp: (hp["grad_scale"], hp["beta2"], 1.0 - hp["beta2"],
                            hp["bias_correction2"], hp["eps"])
        + _schedulefree_scalars(hp, hp["beta1"]),
        body=_schedulefree_adamw,
        states=lambda hp: (True, True, False),
        weights=(True, False, False)),
    "schedulefree_lerp": Optimizer(
        flags=lambda hp: (_from_end(hp["weight"]),),
        scalars=lambda hp: (hp["weight"], 1.0 - hp["weight"]),
        body=_schedulefree_lerp,
        states=lambda hp: (True, False, False),
        grad=False, read_only=(True, False, False)),
    "prodigy": Optimizer(
        flags=_prodigy_flags,
        scalars=_prodigy_scalars,
        body=_prodigy,
        states=lambda hp: (hp["beta1"] > 0, True, False)),
}
