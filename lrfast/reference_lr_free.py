"""NumPy references for the optimizers that take the learning rate off the
user's hands: Lion, schedule-free SGD and AdamW, Prodigy.

The readable specification and test oracle of their fused kernels, as
:mod:`lrfast.reference` is for the six. They follow the reference packages
step for step (lion-pytorch 0.2.x, schedulefree 1.4.x, prodigyopt 1.1.x) and
are tested against them in ``tests/test_lr_free_reference.py``.

Conventions (those of :mod:`lrfast.reference`): every function updates its
arrays in place; ``params``, ``grads`` and each state are lists of arrays or
single arrays; float32 and float64 arrays, with arithmetic in the params'
dtype; per-step scalars are Python floats (double), rounded once to the
arithmetic dtype where they meet an array. Low precision as in
:mod:`lrfast.reference` (16-bit params and grads, float32, bfloat16 or q8
states, ``stochastic_rounding`` and ``seed``): each array is loaded in the
arithmetic dtype (float32 for 16-bit params), updated by the formulas below,
and stored rounded; a step without a ``step`` argument hashes with step 0.
Schedule-free's ``z`` holds the weights: the param's dtype, or float32, and a
16-bit ``z`` rounds stochastically as its param does, with bits of its own.
Prodigy's ``|s|`` sums the new ``s`` before it is rounded or quantized. The
gradient as the update sees it is, for each tensor::

    g = grad * grad_scale
    g = -g                          if maximize

(none of the three packages has ``maximize`` or ``grad_scale``: they are the
identity at their defaults). Where a package adds weight decay to the gradient
it does so in place on ``p.grad``; the references never write the grads.

``lerp(a, b, w)`` is torch's, which the schedule-free package uses::

    lerp(a, b, w) = a + w * (b - a)          if |w| < 0.5
                  = b - (b - a) * (1 - w)    otherwise

Host and device: what the classes compute once per step on the host (Python
floats, no array touched) is in :class:`ScheduleFreeScalars`,
:func:`prodigy_dlr` and :func:`prodigy_d_update`; everything else is one pass
over each tensor (Prodigy: two passes, the first a reduction).

Argument rules: the references check nothing; the fast functions and the
classes must refuse these with a clear error (ValueError), before writing
anything:

- a rate that is negative or not finite: ``lr``, ``weight_decay``, ``eps``,
  ``warmup_steps``, ``d0``, ``d_coef``, and ``growth_rate`` (which may be
  ``inf``); ``lr == 0`` too for Prodigy and for the Lion classes'
  constructors (the packages assert ``lr > 0`` there; lion-pytorch's step, as
  :func:`lion_step`, takes 0 and moves only the moment), ``eps == 0`` and
  ``d0 == 0`` too for Prodigy (as prodigyopt);
  ``grad_scale``, ``r`` and ``weight_lr_power`` not finite (the packages take
  any ``d_coef >= 0``, ``growth_rate`` below 1 and negative ``r``: so must we);
- betas outside ``[0, 1)``: Lion's two (lion-pytorch lets 1 through),
  schedule-free AdamW's and Prodigy's ``beta1`` and ``beta2``, Prodigy's
  ``beta3`` when given; schedule-free's ``momentum`` (SGD) and ``beta1``
  (AdamW) also at 0, since ``eval()`` divides by it (schedulefree refuses
  ``momentum`` outside ``(0, 1)`` and checks nothing for AdamW);
- ``warmup_steps`` or ``slice_p`` not an integer, ``warmup_steps < 0``,
  ``slice_p < 1``;
- ``step()`` of a schedule-free optimizer in eval mode (schedulefree raises);
  for the schedule-free step functions, which take the per-step scalars
  directly: ``ckp1`` outside ``[0, 1]``, ``step < 1``;
- states of other shapes than the params' (Prodigy's ``s`` and ``p0``: the
  size of ``param.ravel()[::slice_p]``, ``ceil(param.size / slice_p)``), dtypes
  as for the other steps;
- a schedule-free ``z`` that cannot hold its param's values (a ValueError
  naming ``zs``): ``z`` holds the weights, and an update moves it by far less
  than a q8 or q4 code or half a bfloat16 ulp of a float32 weight, so it
  must have the param's dtype, or float32 for a 16-bit param (not q8, q4, a
  16-bit ``z`` of a float32 or float64 param, a float32 ``z`` of a float64
  param, nor a bfloat16 ``z`` of a float16 param).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .precision import WEIGHT_STREAM
from .reference_arrays import ParamStore, arithmetic_dtype, check_signed, each, load, store

__all__ = [
    "lion_step",
    "schedulefree_sgd_step", "schedulefree_adamw_step", "schedulefree_to_eval",
    "schedulefree_to_train", "ScheduleFreeScalars", "ScheduleFreeStepScalars",
    "prodigy_dlr", "prodigy_reduce", "prodigy_d_update", "prodigy_update", "ProdigyD",
]


def _grad(g, t, grad_scale, maximize):
    """The gradient as the update sees it, in the arithmetic type ``t``."""
    d = load(g, np.dtype(t)) * t(grad_scale)
    return -d if maximize else d


def _loaded(t, *arrays):
    """Each array (or Q8State, or None) in the arithmetic type ``t``."""
    return (load(x, np.dtype(t)) for x in arrays)


def _lerp(a, b, w, t):
    """torch.lerp(a, b, w) with a Python weight ``w`` rounded to ``t``."""
    if abs(w) < 0.5:
        return a + t(w) * (b - a)
    return b - (b - a) * t(1 - w)


# ---------------------------------------------------------------- Lion

def lion_step(params, grads, exp_avgs, *, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
              maximize=False, grad_scale=1.0, stochastic_rounding=False, seed=0):
    """Lion (Chen et al. 2023; lion-pytorch 0.2.x ``Lion``), in its order::

        param = param * (1 - lr * weight_decay)
        c = beta1 * m + (1 - beta1) * g
        param = param - lr * sign(c)
        m = beta2 * m + (1 - beta2) * g

    ``sign(0) = 0``. ``1 - lr * weight_decay`` is one scalar (the multiply
    happens also when ``weight_decay == 0``: it is by 1, exact).
    lion-pytorch's ``decoupled_weight_decay=True`` is this step with
    ``weight_decay / initial lr``, a matter for the class. One pass: reads grad, param, m;
    writes param, m.
    """
    check_signed(exp_avgs, "exp_avgs")
    store_param = ParamStore(stochastic_rounding, seed, None)
    beta1, beta2 = betas
    for p, g, m in each(params, grads, exp_avgs):
        t = arithmetic_dtype(p).type
        P, M = _loaded(t, p, m)
        d = _grad(g, t, grad_scale, maximize)
        P *= t(1 - lr * weight_decay)
        c = M * t(beta1) + t(1 - beta1) * d
        P += t(-lr) * np.sign(c)
        store(m, M * t(beta2) + t(1 - beta2) * d)
        store_param(p, P)


# ---------------------------------------------------------------- schedule-free

class ScheduleFreeStepScalars(NamedTuple):
    """The per-step scalars of one param group of a schedule-free optimizer."""
    lr: float    # the rate after warmup: lr * min(1, (k + 1) / warmup_steps)
    ckp1: float  # the weight of the newest point in the average x
    step: int    # k + 1, the number of this step (AdamW's bias correction)


class ScheduleFreeScalars:
    """The host side of one param group of schedulefree's ``SGDScheduleFree``
    and ``AdamWScheduleFree``: ``k`` (steps taken), ``lr_max`` (from -1.0) and
    ``weight_sum`` (from 0.0), all Python floats. :meth:`next` does, in order::

        sched = (k + 1) / warmup_steps     if k < warmup_steps else 1.0
        lr_k = lr * sched
        lr_max = max(lr_k, lr_max)
        weight = (k + 1)**r * lr_max**weight_lr_power
        weight_sum = weight_sum + weight
        ckp1 = weight / weight_sum         (0 when weight_sum == 0)
        k = k + 1

    and returns ``(lr_k, ckp1, k)`` (the new ``k``, this step's number), the
    keywords of :func:`schedulefree_sgd_step` / :func:`schedulefree_adamw_step`.
    The classes call it only from ``step()`` in train mode; ``lr`` may change
    between steps, as a group's ``"lr"`` may.
    """

    def __init__(self, lr, *, warmup_steps=0, r=0.0, weight_lr_power=2.0):
        self.lr, self.warmup_steps, self.r = lr, warmup_steps, r
        self.weight_lr_power = weight_lr_power
        self.k, self.lr_max, self.weight_sum = 0, -1.0, 0.0

    def next(self):
        k = self.k
        sched = (k + 1) / self.warmup_steps if k < self.warmup_steps else 1.0
        lr = self.lr * sched
        self.lr_max = max(lr, self.lr_max)
        weight = (k + 1)**self.r * self.lr_max**self.weight_lr_power
        self.weight_sum += weight
        ckp1 = weight / self.weight_sum if self.weight_sum != 0 else 0.0
        self.k = k + 1
        return ScheduleFreeStepScalars(lr, ckp1, self.k)


def schedulefree_sgd_step(params, grads, zs, *, lr, ckp1, step=None, momentum=0.9,
                          weight_decay=0.0, maximize=False, grad_scale=1.0,
                          stochastic_rounding=False, seed=0):
    """Schedule-free SGD (Defazio et al. 2024; schedulefree 1.4.x
    ``SGDScheduleFree.step``, train mode), with ``lr`` and ``ckp1`` from
    :class:`ScheduleFreeScalars`. The param holds ``y``, the point where the
    gradient is taken; ``x`` (the average) is implicit. In order::

        g = g + weight_decay * y                            if weight_decay != 0
        y = lerp(y, z, ckp1)
        y = y + lr * (momentum * (1 - ckp1) - 1) * g
        z = z - lr * g

    ``z`` starts as a copy of the param, made by the class at the param's first
    step. One pass: reads grad, y, z; writes y, z. ``step`` only feeds the
    stochastic-rounding hash.

    ``z`` holds the weights: it has the param's dtype, or float32 for a
    16-bit param. With ``stochastic_rounding`` a 16-bit ``z`` rounds
    stochastically too, with the random bits of positions ``WEIGHT_STREAM +
    i`` (:func:`lrfast.precision.random_bits`), independent of the param's.
    """
    check_signed(zs, "zs")
    store_param = ParamStore(stochastic_rounding, seed, step)
    store_z = ParamStore(stochastic_rounding, seed, step, WEIGHT_STREAM)
    for y, g, z in each(params, grads, zs):
        t = arithmetic_dtype(y).type
        Y, Z = _loaded(t, y, z)
        d = _grad(g, t, grad_scale, maximize)
        if weight_decay != 0:
            d = d + t(weight_decay) * Y
        Y = _lerp(Y, Z, ckp1, t)
        Y += t(lr * (momentum * (1 - ckp1) - 1)) * d
        store_z(z, Z + t(-lr) * d)
        store_param(y, Y)


def schedulefree_adamw_step(params, grads, zs, exp_avg_sqs, *, lr, ckp1, step,
                            betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False,
                            grad_scale=1.0, stochastic_rounding=False, seed=0):
    """Schedule-free AdamW (schedulefree 1.4.x ``AdamWScheduleFree.step``,
    train mode), with ``lr``, ``ckp1`` and ``step`` (= k + 1) from
    :class:`ScheduleFreeScalars`. In order::

        v = beta2 * v + (1 - beta2) * g * g
        u = g / (sqrt(v / (1 - beta2**step)) + eps)
        u = u + weight_decay * y                            if weight_decay != 0
        y = lerp(y, z, ckp1)
        y = y + lr * (beta1 * (1 - ckp1) - 1) * u
        z = z - lr * u

    The weight decay is taken at ``y`` and is not seen by ``v``; there is no
    first moment (``beta1`` only sets the interpolation), and no bias
    correction but ``v``'s. One pass: reads grad, y, z, v; writes y, z, v.
    ``z`` is stored as in :func:`schedulefree_sgd_step`; ``v`` may be of
    any state dtype.
    """
    check_signed(zs, "zs")
    store_param = ParamStore(stochastic_rounding, seed, step)
    store_z = ParamStore(stochastic_rounding, seed, step, WEIGHT_STREAM)
    beta1, beta2 = betas
    bias_correction2 = 1 - beta2**step
    for y, g, z, v in each(params, grads, zs, exp_avg_sqs):
        t = arithmetic_dtype(y).type
        Y, Z, V = _loaded(t, y, z, v)
        d = _grad(g, t, grad_scale, maximize)
        V = V * t(beta2) + t(1 - beta2) * d * d
        u = d / (np.sqrt(V / t(bias_correction2)) + t(eps))
        if weight_decay != 0:
            u = u + t(weight_decay) * Y
        Y = _lerp(Y, Z, ckp1, t)
        Y += t(lr * (beta1 * (1 - ckp1) - 1)) * u
        store(v, V)
        store_z(z, Z + t(-lr) * u)
        store_param(y, Y)


def schedulefree_to_eval(params, zs, *, beta1):
    """``eval()`` of both schedule-free optimizers: the param goes from ``y``
    to ``x``::

        param = lerp(param, z, 1 - 1 / beta1)

    ``beta1`` is SGD's ``momentum``. Only for params that have a ``z`` (that
    have taken a step), and only when the group is in train mode.
    """
    _schedulefree_lerp(params, zs, 1 - 1 / beta1)


def schedulefree_to_train(params, zs, *, beta1):
    """``train()`` of both schedule-free optimizers: the param goes from ``x``
    to ``y``::

        param = lerp(param, z, 1 - beta1)

    Only for params that have a ``z``, and only when the group is in eval mode
    (where a group starts).
    """
    _schedulefree_lerp(params, zs, 1 - beta1)


def _schedulefree_lerp(params, zs, w):
    """param = lerp(param, z, w), the param rounded to nearest even."""
    for p, z in each(params, zs):
        t = arithmetic_dtype(p).type
        P, Z = _loaded(t, p, z)
        store(p, _lerp(P, Z, w, t))


# ---------------------------------------------------------------- Prodigy

def prodigy_dlr(*, d, lr, step, betas=(0.9, 0.999), use_bias_correction=False):
    """The step size of Prodigy's step number ``step`` (= k + 1), made from the
    estimate ``d`` that the step starts with (host, before both passes)::

        dlr = d * lr * sqrt(1 - beta2**step) / (1 - beta1**step)   if use_bias_correction
        dlr = d * lr * 1                                            otherwise

    ``lr`` is the largest of the groups' rates (prodigyopt allows the others
    to be 0 only); ``k`` is the first group's.
    """
    beta1, beta2 = betas
    bias_correction = (1 - beta2**step)**0.5 / (1 - beta1**step) if use_bias_correction else 1
    return d * lr * bias_correction


def _beta3(betas, beta3):
    return math.sqrt(betas[1]) if beta3 is None else beta3


def _prodigy_grad(p, g, t, weight_decay, decouple, grad_scale, maximize):
    """The gradient as the update sees it; ``p`` loaded in ``t``."""
    d = _grad(g, t, grad_scale, maximize)
    if weight_decay != 0 and not decouple:
        d = d + t(weight_decay) * p
    return d


def prodigy_reduce(params, grads, ss, p0s, *, d, d0, dlr, betas=(0.9, 0.999), beta3=None,
                   weight_decay=0.0, decouple=True, safeguard_warmup=False, slice_p=1,
                   maximize=False, grad_scale=1.0):
    """Prodigy's first pass (Mishchenko & Defazio 2024; prodigyopt 1.1.x
    ``Prodigy.step``, its first loop): updates ``s`` and returns the two
    sums, in float64, that :func:`prodigy_d_update` turns into the new ``d``.

    ``d`` is the estimate the step starts with, ``dlr`` from
    :func:`prodigy_dlr`; ``beta3`` defaults to ``sqrt(beta2)``. For each
    tensor, with the slice ``[::slice_p]`` of the flattened param and grad::

        g = g + weight_decay * param                  if weight_decay != 0 and not decouple
        gs = g.ravel()[::slice_p]
        ps = param.ravel()[::slice_p]
        dot += sum(gs * (p0 - ps))
        s = beta3 * s + (d / d0) * d * gs             if safeguard_warmup
        s = beta3 * s + (d / d0) * dlr * gs           otherwise
        s_abs += sum(|s|)                             (the new s)

    and returns ``(dot, s_abs)``. ``g``, ``gs`` and ``s`` are computed in the
    arithmetic dtype; ``p0 - ps`` (exact from float32 arrays), the products
    and the sums in float64, the sums in any order. The scalar
    ``(d / d0) * dlr`` that prodigyopt puts on each tensor's dot is applied
    once to the total in :func:`prodigy_d_update`.

    prodigyopt computes each tensor's dot and ``|s|`` sum in the tensors'
    dtype, which for float32 params is a float32 accumulation (relative
    error up to about ``log2(n) * 2**-24`` times the cancellation
    ``sum|terms| / |sum|``), and adds the tensors' results in Python floats.
    In float64 the orders of summation differ too (torch's, BLAS's, a
    kernel's): about ``log2(n) * 2**-53`` times the cancellation. ``|s|`` does
    not cancel; the dot does, and ``d`` (their ratio, carried over the steps)
    is equal to 1e-9 relative while the dot's cancellation stays below about
    1e5 on every step, as it does for a gradient that points somewhere. On
    the first step ``p0 - ps`` is exactly 0 and so is ``dot``.

    State per tensor: ``p0`` is the slice ``param.ravel()[::slice_p]`` taken
    (copied) at the param's first step (prodigyopt keeps a 0-d zero instead
    when the param is all zeros then: the same values), ``s`` zeros of that
    size (``ceil(param.size / slice_p)``). This pass reads grad, param (the
    slice only) and ``p0``, reads and writes ``s``; it writes nothing else,
    and the param and the moments are untouched until :func:`prodigy_update`.
    """
    check_signed(ss, "ss")
    beta3 = _beta3(betas, beta3)
    s_rate = (d / d0) * (d if safeguard_warmup else dlr)
    dot = s_abs = 0.0
    for p, g, s, p0 in each(params, grads, ss, p0s):
        t = arithmetic_dtype(p).type
        P, S = _loaded(t, p, s)
        gs = _prodigy_grad(P, g, t, weight_decay, decouple, grad_scale, maximize).ravel()[::slice_p]
        ps = P.ravel()[::slice_p]
        dot += float(np.dot(gs.astype(np.float64),
                            load(p0, np.dtype(np.float64)) - ps.astype(np.float64)))
        S = S * t(beta3) + t(s_rate) * gs
        s_abs += float(np.abs(S).sum(dtype=np.float64))
        store(s, S)
    return dot, s_abs


class ProdigyD(NamedTuple):
    """The group state that :func:`prodigy_d_update` returns, named as
    prodigyopt's ``param_groups[i]`` keys."""
    d: float
    d_max: float
    d_hat: float
    d_numerator: float
    d_denom: float


def prodigy_d_update(dot, s_abs, *, d, d0, d_max, d_numerator, dlr, betas=(0.9, 0.999),
                     beta3=None, d_coef=1.0, growth_rate=math.inf):
    """Prodigy's host step between the passes: the sums of
    :func:`prodigy_reduce` to the new estimate, in Python floats, in
    prodigyopt's order::

        d_numerator = beta3 * d_numerator + (d / d0) * dlr * dot
        d_denom = s_abs
        d_hat = d_coef * d_numerator / d_denom
        d = max(d, d_hat)                   if d == d0 (exactly: no growth yet)
        d_max = max(d_max, d_hat)
        d = min(d_max, d * growth_rate)

    Returns a :class:`ProdigyD`, or ``None`` when ``s_abs == 0`` (no gradient
    has reached ``s`` yet): prodigyopt then returns early, changing none of
    ``d``, ``d_max``, ``d_numerator`` nor ``k``, and no param, but it has
    already updated the moments; do it with :func:`prodigy_update` at
    ``dlr=0.0, d_new=d``, which leaves the params as they are.

    Note that ``growth_rate`` does not bound the step from ``d0``: on the
    step that first leaves ``d0``, ``d`` jumps to ``min(d_max, d_hat *
    growth_rate) = d_hat``. The groups share ``d``, ``d_max``, ``d_hat``,
    ``d_numerator`` and ``d_denom``; ``d0``, ``d_coef``, ``growth_rate`` and
    ``betas`` are the first group's. (prodigyopt also needs ``lr > 0``
    here, which its constructor ensures.)
    """
    if s_abs == 0:
        return None
    d_numerator = _beta3(betas, beta3) * d_numerator + (d / d0) * dlr * dot
    d_hat = d_coef * d_numerator / s_abs
    if d == d0:
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    d = min(d_max, d * growth_rate)
    return ProdigyD(d, d_max, d_hat, d_numerator, s_abs)


def prodigy_update(params, grads, exp_avgs, exp_avg_sqs, *, d, d_new, dlr, betas=(0.9, 0.999),
                   eps=1e-8, weight_decay=0.0, decouple=True, maximize=False, grad_scale=1.0,
                   stochastic_rounding=False, seed=0):
    """Prodigy's second pass: the Adam-like update. ``d`` is the estimate the
    step started with (the one ``dlr`` was made from, and
    :func:`prodigy_reduce`'s), ``d_new`` the one :func:`prodigy_d_update`
    returned. For each tensor, in order::

        g = g + weight_decay * param        if weight_decay != 0 and not decouple
        m = beta1 * m + d * (1 - beta1) * g                 (if beta1 > 0)
        v = beta2 * v + d * d * (1 - beta2) * g * g
        param = param + (-weight_decay * dlr) * param       if weight_decay != 0 and decouple
        param = param - dlr * m / (sqrt(v) + d_new * eps)          if beta1 > 0
        param = param - dlr * d_new * g / (sqrt(v) + d_new * eps)  if beta1 == 0

    ``d * (1 - beta1)`` and ``d * d * (1 - beta2)`` are single scalars. The
    moments use the old ``d``, the denominator the new one: prodigyopt updates
    the moments in its first loop, before ``d`` changes; doing it here gives
    the same numbers and lets the reduction pass read only the slice of the
    param. With ``beta1 == 0`` there is no ``m`` (pass ``exp_avgs=None``).

    One pass: reads grad, param, m, v; writes param, m, v. Under
    ``slice_p > 1`` every element is updated all the same.
    """
    check_signed(exp_avgs, "exp_avgs")
    store_param = ParamStore(stochastic_rounding, seed, None)
    beta1, beta2 = betas
    for p, g, m, v in each(params, grads, exp_avgs, exp_avg_sqs):
        t = arithmetic_dtype(p).type
        P, M, V = _loaded(t, p, m, v)
        dg = _prodigy_grad(P, g, t, weight_decay, decouple, grad_scale, maximize)
        if beta1 > 0:
            M = M * t(beta1) + t(d * (1 - beta1)) * dg
        V = V * t(beta2) + t(d * d * (1 - beta2)) * dg * dg
        denom = np.sqrt(V) + t(d_new * eps)
        if weight_decay != 0 and decouple:
            P += t(-weight_decay * dlr) * P
        if beta1 > 0:
            P += t(-dlr) * (M / denom)
            store(m, M)
        else:
            P += t(-dlr * d_new) * (dg / denom)
        store(v, V)
        store_param(p, P)
