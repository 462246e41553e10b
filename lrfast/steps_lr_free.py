"""The fused steps of the optimizers that take the learning rate off the
user's hands: Lion, schedule-free SGD and AdamW, Prodigy's two passes.

As :mod:`lrfast.steps` (whose module docstring states the rules for arrays,
dtypes, low-precision states, stochastic rounding and errors, all of which
hold here): one pass over memory per tensor, one native call per list, the
arrays updated in place. The maths and the argument rules are those of
:mod:`lrfast.reference_lr_free`; what the classes compute once per step on the
host (:class:`~lrfast.ScheduleFreeScalars`, :func:`~lrfast.prodigy_dlr`,
:func:`~lrfast.prodigy_d_update`) is pure Python, re-exported from there by
:mod:`lrfast`.

``lerp(a, b, w)`` is torch's: ``a + w * (b - a)`` if ``|w| < 0.5``, else
``b - (b - a) * (1 - w)``.
"""

from __future__ import annotations

from . import _hparams
from ._backend import run
from .array_types import Bool, Int, Real, States, Tensors

__all__ = ["lion_step", "schedulefree_sgd_step", "schedulefree_adamw_step",
           "schedulefree_to_eval", "schedulefree_to_train", "prodigy_reduce", "prodigy_update"]


def lion_step(params: Tensors, grads: Tensors, exp_avgs: States, *, lr: Real = 1e-4,
              betas: tuple[Real, Real] = (0.9, 0.99), weight_decay: Real = 0.0,
              maximize: Bool = False, grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
              seed: Int = 0) -> None:
    """Lion (Chen et al. 2023; lion-pytorch's ``Lion``), every tensor updated
    in place in one pass.

    For each tensor, with ``g = grad * grad_scale``, negated if ``maximize``::

        param = param * (1 - lr * weight_decay)
        c = beta1 * m + (1 - beta1) * g
        param = param - lr * sign(c)
        m = beta2 * m + (1 - beta2) * g

    with ``sign(0) = 0``. ``lr`` must be >= 0 (at 0 only ``m`` moves, as in
    lion-pytorch's step; the classes' constructors refuse 0, as its does). State: ``exp_avgs`` (``m``: one
    array per param, its shape, zeros before the first step): float32, the
    param's dtype, bfloat16 or a signed q8 or q4 state. There is no step: with
    ``stochastic_rounding=True`` the hash uses step 0, so vary ``seed`` per
    call (see :mod:`lrfast.steps`).

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0, 3.0], np.float32)
    >>> g = np.array([0.5, -1.0, 0.0], np.float32)
    >>> m = np.zeros_like(p)
    >>> lrfast.lion_step(p, g, m, lr=0.25, weight_decay=1.0)
    >>> print(p, m)
    [ 0.5  -1.25  2.25] [ 0.005 -0.01   0.   ]
    """
    hp = _hparams.lion(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                       grad_scale=grad_scale, stochastic_rounding=stochastic_rounding, seed=seed)
    run("lion", hp, {"params": params, "grads": grads, "exp_avgs": exp_avgs},
        required=("params", "grads", "exp_avgs"))


def schedulefree_sgd_step(params: Tensors, grads: Tensors, zs: States, *, lr: Real, ckp1: Real,
                          step: Int | None = None, momentum: Real = 0.9,
                          weight_decay: Real = 0.0, maximize: Bool = False,
                          grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
                          seed: Int = 0) -> None:
    """Schedule-free SGD (Defazio et al. 2024; schedulefree's
    ``SGDScheduleFree``, train mode), every tensor updated in place in one pass.

    The param holds ``y``, where the gradient is taken; ``lr`` and ``ckp1``
    are this step's, from :class:`ScheduleFreeScalars`. For each tensor, with
    ``g = grad * grad_scale``, negated if ``maximize``::

        g = g + weight_decay * y                            if weight_decay != 0
        y = lerp(y, z, ckp1)
        y = y + lr * (momentum * (1 - ckp1) - 1) * g
        z = z - lr * g

    ``ckp1`` in [0, 1], ``momentum`` in (0, 1). State: ``zs`` (``z``: one
    array per param, its shape, a copy of the param before the first step).
    ``z`` holds the weights, so it keeps the param's precision: it has the
    param's dtype, or float32 for a 16-bit param; a q8 or q4 state, a 16-bit
    ``z`` of a float32 or float64 param, a float32 one of a float64 param or
    a bfloat16 one of a float16 param is refused (ValueError naming ``zs``).
    With ``stochastic_rounding=True`` a 16-bit ``z`` rounds stochastically
    like its param, with random bits of its own (see
    :func:`lrfast.precision.random_bits`). ``step`` (>= 1) only feeds the
    stochastic-rounding hash (step 0 when None).

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> z = p.copy()
    >>> lrfast.schedulefree_sgd_step(p, g, z, lr=0.1, ckp1=1.0, step=1)
    >>> print(p, z)
    [ 0.95 -1.9 ] [ 0.95 -1.9 ]
    """
    hp = _hparams.schedulefree_sgd(lr=lr, ckp1=ckp1, step=step, momentum=momentum,
                                   weight_decay=weight_decay, maximize=maximize,
                                   grad_scale=grad_scale,
                                   stochastic_rounding=stochastic_rounding, seed=seed)
    run("schedulefree_sgd", hp, {"params": params, "grads": grads, "zs": zs},
        required=("params", "grads", "zs"))


def schedulefree_adamw_step(params: Tensors, grads: Tensors, zs: States, exp_avg_sqs: States, *,
                            lr: Real, ckp1: Real, step: Int,
                            betas: tuple[Real, Real] = (0.9, 0.999), eps: Real = 1e-8,
                            weight_decay: Real = 0.0, maximize: Bool = False,
                            grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
                            seed: Int = 0) -> None:
    """Schedule-free AdamW (schedulefree's ``AdamWScheduleFree``, train mode),
    every tensor updated in place in one pass.

    ``lr``, ``ckp1`` and ``step`` (the 1-based step, for the bias correction)
    come from :class:`ScheduleFreeScalars`. For each tensor, with ``g = grad
    * grad_scale``, negated if ``maximize``::

        v = beta2 * v + (1 - beta2) * g * g
        u = g / (sqrt(v / (1 - beta2**step)) + eps)
        u = u + weight_decay * y                            if weight_decay != 0
        y = lerp(y, z, ckp1)
        y = y + lr * (beta1 * (1 - ckp1) - 1) * u
        z = z - lr * u

    ``beta1`` in (0, 1) (only the interpolation: there is no first moment).
    State (one array per param, its shape): ``zs`` (``z``, a copy of the
    param before the first step; the param's dtype or float32, rounded as in
    :func:`schedulefree_sgd_step`) and ``exp_avg_sqs`` (``v``, zeros;
    float32, the param's dtype, bfloat16 or a q8 or q4 state, signed or
    not).

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> z, v = p.copy(), np.zeros_like(p)
    >>> lrfast.schedulefree_adamw_step(p, g, z, v, lr=0.1, ckp1=1.0, step=1)
    >>> print(p, z)
    [ 0.9 -1.9] [ 0.9 -1.9]
    """
    hp = _hparams.schedulefree_adamw(lr=lr, ckp1=ckp1, step=step, betas=betas, eps=eps,
                                     weight_decay=weight_decay, maximize=maximize,
                                     grad_scale=grad_scale,
                                     stochastic_rounding=stochastic_rounding, seed=seed)
    run("schedulefree_adamw", hp,
        {"params": params, "grads": grads, "zs": zs, "exp_avg_sqs": exp_avg_sqs},
        required=("params", "grads", "zs", "exp_avg_sqs"))


def _lerp_to(params: Tensors, zs: States, beta1: Real, to_eval: bool) -> None:
    hp = _hparams.schedulefree_lerp(beta1=beta1, to_eval=to_eval)
    # No gradient: the z's take the first state slot, the grads' stays empty.
    run("schedulefree_lerp", hp, {"params": params, "grads": None, "zs": zs},
        required=("params", "zs"))


def schedulefree_to_eval(params: Tensors, zs: States, *, beta1: Real) -> None:
    """``eval()`` of the schedule-free optimizers: each param goes from ``y``
    to ``x``, in place, in one pass::

        param = lerp(param, z, 1 - 1 / beta1)

    ``beta1`` (SGD's ``momentum``) in (0, 1). Arithmetic in float32 (float64
    for float64 params); 16-bit params round to nearest even. Only for params
    that have a ``z`` (of the dtypes :func:`schedulefree_sgd_step` takes), in
    train mode.

    >>> import numpy as np, lrfast
    >>> p, z = np.array([1.0, 2.0], np.float32), np.array([0.0, 4.0], np.float32)
    >>> lrfast.schedulefree_to_eval(p, z, beta1=0.5)
    >>> print(p)
    [2. 0.]
    """
    _lerp_to(params, zs, beta1, True)


def schedulefree_to_train(params: Tensors, zs: States, *, beta1: Real) -> None:
    """``train()`` of the schedule-free optimizers: each param goes from ``x``
    to ``y``, in place, in one pass::

        param = lerp(param, z, 1 - beta1)

    As :func:`schedulefree_to_eval`, which it undoes (up to rounding). Only
    for params that have a ``z``, in eval mode.

    >>> import numpy as np, lrfast
    >>> p, z = np.array([2.0, 0.0], np.float32), np.array([0.0, 4.0], np.float32)
    >>> lrfast.schedulefree_to_train(p, z, beta1=0.5)
    >>> print(p)
    [1. 2.]
    """
    _lerp_to(params, zs, beta1, False)


def prodigy_reduce(params: Tensors, grads: Tensors, ss: States, p0s: States, *, d: Real,
                   d0: Real, dlr: Real, betas: tuple[Real, Real] = (0.9, 0.999),
                   beta3: Real | None = None, weight_decay: Real = 0.0, decouple: Bool = True,
                   safeguard_warmup: Bool = False, slice_p: Int = 1, maximize: Bool = False,
                   grad_scale: Real = 1.0) -> tuple[float, float]:
    """Prodigy's first pass (Mishchenko & Defazio 2024; prodigyopt's
    ``Prodigy``): updates ``s`` and returns ``(dot, s_abs)``, the float64 sums
    that :func:`prodigy_d_update` turns into the new ``d``.

    ``d`` is the estimate the step starts with, ``dlr`` from
    :func:`prodigy_dlr`; ``beta3`` defaults to ``sqrt(beta2)``. For each
    tensor, with ``g = grad * grad_scale``, negated if ``maximize``, and the
    slice ``[::slice_p]`` of the flattened param and grad::

        g = g + weight_decay * param                  if weight_decay != 0 and not decouple
        gs = g.ravel()[::slice_p]
        ps = param.ravel()[::slice_p]
        dot += sum(gs * (p0 - ps))
        s = beta3 * s + (d / d0) * d * gs             if safeguard_warmup
        s = beta3 * s + (d / d0) * dlr * gs           otherwise
        s_abs += sum(|s|)                             (the new s)

    The products and sums run in float64, in a fixed order: the sums are
    bitwise the same for any thread count and ISA (and equal to the
    reference's up to the order of summation). State per tensor, 1-D of the
    slice's length ``ceil(param.size / slice_p)``: ``ss`` (``s``, zeros before
    the first step; float32, the param's dtype, bfloat16 or a signed q8 or q4 state)
    and ``p0s`` (``p0``, the slice of the param at its first step, in the
    param's dtype). Reads the grads and the slices of the params; writes
    only ``s``.

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0, 3.0], np.float32)
    >>> g = np.array([0.5, -1.0, 2.0], np.float32)
    >>> p0 = np.array([0.0, 3.0], np.float32)       # p[::2] at the first step
    >>> s = np.zeros(2, np.float32)
    >>> lrfast.prodigy_reduce(p, g, s, p0, d=1.0, d0=1.0, dlr=1.0, slice_p=2)
    (-0.5, 2.5)
    >>> print(s)
    [0.5 2. ]
    """
    hp = _hparams.prodigy_reduce(d=d, d0=d0, dlr=dlr, betas=betas, beta3=beta3,
                                 weight_decay=weight_decay, decouple=decouple,
                                 safeguard_warmup=safeguard_warmup, slice_p=slice_p,
                                 maximize=maximize, grad_scale=grad_scale)
    dot, s_abs = run("prodigy_reduce", hp,
                     {"params": params, "grads": grads, "ss": ss, "p0s": p0s},
                     required=("params", "grads", "ss", "p0s"))
    return dot, s_abs


def prodigy_update(params: Tensors, grads: Tensors, exp_avgs: States | None,
                   exp_avg_sqs: States, *, d: Real, d_new: Real, dlr: Real,
                   betas: tuple[Real, Real] = (0.9, 0.999), eps: Real = 1e-8,
                   weight_decay: Real = 0.0, decouple: Bool = True, maximize: Bool = False,
                   grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
                   seed: Int = 0) -> None:
    """Prodigy's second pass: the Adam-like update, every tensor in place in
    one pass. ``d`` is the estimate the step started with (that of ``dlr``
    and :func:`prodigy_reduce`), ``d_new`` the one :func:`prodigy_d_update`
    returned. For each tensor, with ``g = grad * grad_scale``, negated if
    ``maximize``::

        g = g + weight_decay * param        if weight_decay != 0 and not decouple
        m = beta1 * m + d * (1 - beta1) * g                 (if beta1 > 0)
        v = beta2 * v + d * d * (1 - beta2) * g * g
        param = param + (-weight_decay * dlr) * param       if weight_decay != 0 and decouple
        param = param - dlr * m / (sqrt(v) + d_new * eps)          if beta1 > 0
        param = param - dlr * d_new * g / (sqrt(v) + d_new * eps)  if beta1 == 0

    ``eps`` must be > 0. State (one array per param, its shape, zeros before
    the first step): ``exp_avgs`` (``m``; None when ``beta1 == 0``; float32,
    the param's dtype, bfloat16 or a signed q8 or q4 state) and ``exp_avg_sqs``
    (``v``; also an unsigned q8 or q4 state). There is no step: with
    ``stochastic_rounding=True`` vary ``seed`` per call.

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> m, v = np.zeros_like(p), np.zeros_like(p)
    >>> lrfast.prodigy_update(p, g, m, v, d=1.0, d_new=1.0, dlr=0.1)
    >>> print(p, m)
    [ 0.68377244 -1.6837723 ] [ 0.05 -0.1 ]
    """
    hp = _hparams.prodigy_update(d=d, d_new=d_new, dlr=dlr, betas=betas, eps=eps,
                                 weight_decay=weight_decay, decouple=decouple, maximize=maximize,
                                 grad_scale=grad_scale, stochastic_rounding=stochastic_rounding,
                                 seed=seed)
    first_moment = hp["beta1"] > 0
    run("prodigy", hp, {"params": params, "grads": grads,
                        "exp_avgs": exp_avgs if first_moment else None,
                        "exp_avg_sqs": exp_avg_sqs},
        required=("params", "grads", "exp_avg_sqs") + (("exp_avgs",) if first_moment else ()))
