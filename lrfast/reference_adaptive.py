"""NumPy references of the rest of torch.optim's adaptive family: NAdam,
RAdam and Adamax, each following torch 2.13's single-tensor formulas
(``torch.optim.NAdam``, ``RAdam``, ``Adamax``) step for step.

Conventions as in :mod:`lrfast.reference` (arithmetic in float32, float64
for float64 params; per-step scalars in double, computed by
:mod:`lrfast._hparams` as torch computes them, rounded once to the
arithmetic dtype; low-precision loads and stores). ``g`` is the gradient as
the update sees it: ``grad * grad_scale``, negated if ``maximize``.

States and their dtypes: ``exp_avgs`` (``m``) can be negative and takes a
signed low-bit state; ``exp_avg_sqs`` (``v``, NAdam and RAdam) and Adamax's
``exp_infs`` (``u``, a running maximum of ``|g| + eps``) are never negative,
so an unsigned q8 or q4 state holds them with twice the resolution of a
signed one. ``u`` is at least ``eps`` after every step, whatever it held
before: a low-bit ``u`` rounded to zero cannot make the division blow up.
"""

from __future__ import annotations

import numpy as np

from . import _hparams
from .reference_arrays import ParamStore, arithmetic_dtype, check_signed, each, load, store

__all__ = ["nadam_step", "radam_step", "adamax_step", "nadam_mu"]

nadam_mu = _hparams.nadam_mu


def _grad(g, t, grad_scale, maximize):
    d = load(g, np.dtype(t)) * t(grad_scale)
    return -d if maximize else d


def _with_moments(params, grads, exp_avgs, exp_avg_sqs, *, step, betas, lr, weight_decay,
                  decoupled, maximize, grad_scale, stochastic_rounding, seed, update):
    """What NAdam and RAdam share with torch's Adam, per tensor: the weight
    decay (the param shrinks first if ``decoupled``, else the gradient takes
    ``weight_decay * param``), then the moments (the lerp as Adam's); then
    ``update(P, d, M, V, t)`` returns the new param."""
    check_signed(exp_avgs, "exp_avgs")
    store_param = ParamStore(stochastic_rounding, seed, step)
    beta1, beta2 = betas
    for p, g, m, v in each(params, grads, exp_avgs, exp_avg_sqs):
        t = arithmetic_dtype(p).type
        P, M, V = (load(x, np.dtype(t)) for x in (p, m, v))
        d = _grad(g, t, grad_scale, maximize)
        if weight_decay != 0 and decoupled:
            P = P * t(1 - lr * weight_decay)
        elif weight_decay != 0:
            d = d + t(weight_decay) * P
        M = M + t(1 - beta1) * (d - M)
        V = V * t(beta2) + t(1 - beta2) * d * d
        store(m, M)
        store(v, V)
        store_param(p, update(P, d, M, V, t))


def nadam_step(params, grads, exp_avgs, exp_avg_sqs, *, lr=2e-3, step, mu_product,
               betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
               decoupled_weight_decay=False, maximize=False, grad_scale=1.0,
               stochastic_rounding=False, seed=0):
    """NAdam (torch.optim.NAdam; Dozat 2016)::

        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))
        param = param * (1 - lr * weight_decay)     if decoupled_weight_decay
        g = g + weight_decay * param                otherwise
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v / (1 - beta2**step)) + eps
        param = param - lr * (1 - mu_step) / (1 - mu_product) * g / denom
        param = param - lr * mu_next / (1 - mu_product * mu_next) * m / denom

    ``mu_product`` is ``mu_1 * ... * mu_step``, this step's included: torch's
    ``state["mu_product"]`` after the step (torch accumulates it in float32,
    and so do lrfast's classes); ``mu_next = mu_(step + 1)``. Where torch
    divides (by ``1 - beta2**step``, then each term by ``denom``), this
    multiplies by reciprocals, ``1 / (1 - beta2**step)`` computed in double
    and ``r = 1 / denom``: ``param + (coef * g) * r``, an ulp or two from
    torch's ``param + (coef * g) / denom``, one division per element.
    """
    hp = _hparams.nadam(lr=lr, step=step, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, mu_product=mu_product,
                        maximize=maximize, grad_scale=grad_scale)

    def update(P, d, M, V, t):
        r = t(1) / (np.sqrt(V * t(1.0 / hp["bias_correction2"])) + t(eps))
        P = P + t(hp["grad_coef"]) * d * r
        return P + t(hp["avg_coef"]) * M * r

    _with_moments(params, grads, exp_avgs, exp_avg_sqs, step=step, betas=betas, lr=lr,
                  weight_decay=weight_decay, decoupled=decoupled_weight_decay, maximize=maximize,
                  grad_scale=grad_scale, stochastic_rounding=stochastic_rounding, seed=seed,
                  update=update)


def radam_step(params, grads, exp_avgs, exp_avg_sqs, *, lr=1e-3, step, betas=(0.9, 0.999),
               eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
               grad_scale=1.0, stochastic_rounding=False, seed=0):
    """RAdam (torch.optim.RAdam; Liu et al. 2020)::

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

    The switch and ``rect`` depend on ``step`` and ``beta2`` only: host
    scalars. ``b`` is ``m`` times ``1 / (1 - beta1**step)`` (computed in
    double), where torch divides: an ulp apart, one division fewer.
    """
    hp = _hparams.radam(lr=lr, step=step, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        grad_scale=grad_scale)

    def update(P, d, M, V, t):
        b = M * t(1.0 / hp["bias_correction1"])
        if hp["rectified"]:
            return P - b * t(lr) * (t(hp["bias_correction2_sqrt"]) / (np.sqrt(V) + t(eps))) \
                * t(hp["rect"])
        return P - b * t(lr)

    _with_moments(params, grads, exp_avgs, exp_avg_sqs, step=step, betas=betas, lr=lr,
                  weight_decay=weight_decay, decoupled=decoupled_weight_decay, maximize=maximize,
                  grad_scale=grad_scale, stochastic_rounding=stochastic_rounding, seed=seed,
                  update=update)


def adamax_step(params, grads, exp_avgs, exp_infs, *, lr=2e-3, step, betas=(0.9, 0.999),
                eps=1e-8, weight_decay=0.0, maximize=False, grad_scale=1.0,
                stochastic_rounding=False, seed=0):
    """Adamax (torch.optim.Adamax; Kingma & Ba 2015, section 7)::

        g = g + weight_decay * param
        m = m + (1 - beta1) * (g - m)
        u = max(beta2 * u, |g| + eps)       (NaN if either is, as torch.maximum)
        param = param - lr / (1 - beta1**step) * m / u
    """
    check_signed(exp_avgs, "exp_avgs")
    store_param = ParamStore(stochastic_rounding, seed, step)
    beta1, beta2 = betas
    clr = lr / (1.0 - beta1**step)
    for p, g, m, u in each(params, grads, exp_avgs, exp_infs):
        t = arithmetic_dtype(p).type
        P, M, U = (load(x, np.dtype(t)) for x in (p, m, u))
        d = _grad(g, t, grad_scale, maximize)
        if weight_decay != 0:
            d = d + t(weight_decay) * P
        M = M + t(1 - beta1) * (d - M)
        U = np.maximum(U * t(beta2), np.abs(d) + t(eps))
        P = P + t(-clr) * M / U
        store(m, M)
        store(u, U)
        store_param(p, P)
