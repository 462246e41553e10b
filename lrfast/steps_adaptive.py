"""The fused steps of the rest of torch.optim's adaptive family: NAdam, RAdam
and Adamax (torch runs them single-tensor or ``foreach``, never fused).

As :mod:`lrfast.steps` (whose module docstring states the rules for arrays,
dtypes, low-precision states, stochastic rounding and errors, all of which
hold here): one pass over memory per tensor, one native call per list, the
arrays updated in place, the maths that of :mod:`lrfast.reference_adaptive`
(torch 2.13's single-tensor formulas). What depends on the step alone
(bias corrections, NAdam's momentum schedule, RAdam's rectification switch)
is computed once per call on the host, in double.
"""

from __future__ import annotations

from . import _hparams
from ._backend import run
from .array_types import Bool, Int, Real, States, Tensors

__all__ = ["nadam_step", "radam_step", "adamax_step"]


def nadam_step(params: Tensors, grads: Tensors, exp_avgs: States, exp_avg_sqs: States, *,
               lr: Real = 2e-3, step: Int, mu_product: Real, betas: tuple[Real, Real] = (0.9, 0.999),
               eps: Real = 1e-8, weight_decay: Real = 0.0, momentum_decay: Real = 4e-3,
               decoupled_weight_decay: Bool = False, maximize: Bool = False,
               grad_scale: Real = 1.0, stochastic_rounding: Bool = False, seed: Int = 0) -> None:
    """NAdam (torch.optim.NAdam: Adam with Nesterov momentum, Dozat 2016),
    every tensor updated in place in one pass.

    For each tensor, with ``g = grad * grad_scale``, negated if ``maximize``::

        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))
        param = param * (1 - lr * weight_decay)     if decoupled_weight_decay
        g = g + weight_decay * param                otherwise
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v / (1 - beta2**step)) + eps
        param = param - lr * (1 - mu_step) / (1 - mu_product) * g / denom
        param = param - lr * mu_next / (1 - mu_product * mu_next) * m / denom

    ``mu_product`` is ``mu_1 * mu_2 * ... * mu_step``, this step's factor
    included (torch's ``state["mu_product"]`` after the step; in [0, 1)),
    ``mu_next`` is ``mu_(step + 1)``. The classes keep it as torch does, a
    float32 product multiplied by ``lrfast.reference.nadam_mu(step, beta1,
    momentum_decay)`` at each step.

    States (one array per param, its shape, zeros before the first step):
    ``exp_avgs`` (``m``) and ``exp_avg_sqs`` (``v``), each float32, the
    param's dtype, bfloat16, a q8 or a q4 state (``exp_avgs`` signed,
    ``exp_avg_sqs``, never negative, signed or unsigned).
    ``stochastic_rounding=True`` rounds 16-bit params stochastically with
    random bits of (``seed``, ``step``, position).

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> m, v = np.zeros_like(p), np.zeros_like(p)
    >>> mu = lrfast.reference.nadam_mu(1, 0.9, 4e-3)
    >>> lrfast.nadam_step(p, g, m, v, lr=0.1, step=1, mu_product=mu)
    >>> print(p.round(4), m)
    [ 0.8944 -1.8944] [ 0.05 -0.1 ]
    """
    hp = _hparams.nadam(lr=lr, step=step, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, mu_product=mu_product,
                        maximize=maximize, grad_scale=grad_scale,
                        stochastic_rounding=stochastic_rounding, seed=seed)
    run("nadam", hp, {"params": params, "grads": grads, "exp_avgs": exp_avgs,
                      "exp_avg_sqs": exp_avg_sqs},
        required=("params", "grads", "exp_avgs", "exp_avg_sqs"))


def radam_step(params: Tensors, grads: Tensors, exp_avgs: States, exp_avg_sqs: States, *,
               lr: Real = 1e-3, step: Int, betas: tuple[Real, Real] = (0.9, 0.999),
               eps: Real = 1e-8, weight_decay: Real = 0.0, decoupled_weight_decay: Bool = False,
               maximize: Bool = False, grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
               seed: Int = 0) -> None:
    """RAdam (torch.optim.RAdam: Adam with the variance of its adaptive rate
    rectified, Liu et al. 2020), every tensor updated in place in one pass.

    For each tensor, with ``g = grad * grad_scale``, negated if ``maximize``::

        param = param * (1 - lr * weight_decay)     if decoupled_weight_decay
        g = g + weight_decay * param                otherwise
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        b = m / (1 - beta1**step)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
        rect = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))
        param = param - b * lr * sqrt(1 - beta2**step) / (sqrt(v) + eps) * rect   if rho_t > 5
        param = param - b * lr                                                    otherwise

    The switch (the first five steps with beta2 = 0.999 take the
    un-adapted branch) and ``rect`` are host scalars of ``step`` and ``beta2``.

    States as :func:`nadam_step`'s: ``exp_avgs`` (``m``, signed) and
    ``exp_avg_sqs`` (``v``, signed or unsigned); ``v`` is kept on the
    un-adapted steps too.

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> m, v = np.zeros_like(p), np.zeros_like(p)
    >>> lrfast.radam_step(p, g, m, v, lr=0.1, step=1)
    >>> print(p, v)
    [ 0.95 -1.9 ] [0.00025 0.001  ]
    """
    hp = _hparams.radam(lr=lr, step=step, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        grad_scale=grad_scale, stochastic_rounding=stochastic_rounding, seed=seed)
    run("radam", hp, {"params": params, "grads": grads, "exp_avgs": exp_avgs,
                      "exp_avg_sqs": exp_avg_sqs},
        required=("params", "grads", "exp_avgs", "exp_avg_sqs"))


def adamax_step(params: Tensors, grads: Tensors, exp_avgs: States, exp_infs: States, *,
                lr: Real = 2e-3, step: Int, betas: tuple[Real, Real] = (0.9, 0.999),
                eps: Real = 1e-8, weight_decay: Real = 0.0, maximize: Bool = False,
                grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
                seed: Int = 0) -> None:
    """Adamax (torch.optim.Adamax: Adam with an infinity norm, Kingma & Ba
    2015), every tensor updated in place in one pass.

    For each tensor, with ``g`` the gradient as the update sees it (``grad *
    grad_scale``, negated if ``maximize``, plus ``weight_decay * param`` when
    ``weight_decay != 0``)::

        g = g + weight_decay * param
        m = m + (1 - beta1) * (g - m)
        u = max(beta2 * u, |g| + eps)       (NaN if either is, as torch.maximum)
        param = param - lr / (1 - beta1**step) * m / u

    States (one array per param, its shape, zeros before the first step):
    ``exp_avgs`` (``m``: float32, the param's dtype, bfloat16, a signed q8 or
    q4 state) and ``exp_infs`` (``u``, torch's ``exp_inf``: the same dtypes,
    signed or unsigned). ``u`` is a running maximum, never negative, so an
    unsigned low-bit state suits it; it is at least ``eps`` after every step,
    so a small ``u`` that a q8 block rounds to zero only makes the next
    step's maximum take ``|g| + eps``, never a division by zero.

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> m, u = np.zeros_like(p), np.zeros_like(p)
    >>> lrfast.adamax_step(p, g, m, u, lr=0.1, step=1)
    >>> print(p, u)
    [ 0.9 -1.9] [0.5 1. ]
    """
    hp = _hparams.adamax(lr=lr, step=step, betas=betas, eps=eps, weight_decay=weight_decay,
                         maximize=maximize, grad_scale=grad_scale,
                         stochastic_rounding=stochastic_rounding, seed=seed)
    run("adamax", hp, {"params": params, "grads": grads, "exp_avgs": exp_avgs,
                       "exp_infs": exp_infs},
        required=("params", "grads", "exp_avgs", "exp_infs"))
