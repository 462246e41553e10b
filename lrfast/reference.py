"""NumPy reference implementations: the readable specification of every step.

Each function has the signature of its fast counterpart in :mod:`lrfast`,
updates its arrays in place, and follows torch.optim's single-tensor
formulas step for step. They are the test oracle and the benchmark baseline.
They check nothing: pass what the fast functions would accept.

Common to all steps, for each tensor, ``g`` is the gradient as the update sees
it::

    g = grad * grad_scale
    g = -g                          if maximize
    g = g + weight_decay * param    if weight_decay != 0 (coupled decay)

Arithmetic runs in float64 for float64 params and in float32 otherwise;
per-step scalars (bias corrections, step sizes) are computed in Python floats
(double) and rounded once to the arithmetic dtype.

Low precision (the rules are in :mod:`lrfast.precision`): params and grads may
be bfloat16 or float16 (a grad has its param's dtype, or float32 for a 16-bit
param); each state may be float32, the param's dtype, bfloat16 or a
:class:`~lrfast.precision.Q8State` (float64 states only with float64 params).
Per tensor, a step

1. loads: widens 16-bit arrays and dequantizes q8 states to the arithmetic dtype;
2. updates with the formulas below; the param update uses the new moments
   before they are rounded or quantized;
3. stores: states round to nearest even, or are re-quantized block by block
   with their new absmax; the param rounds to nearest even, or, with
   ``stochastic_rounding=True`` and a 16-bit param, stochastically with the
   random bits of ``random_bits(seed, step, position, size)``, ``position``
   counting the elements of the params before it in the list (``step`` is 0
   for a step function without one, and for ``step=None``: vary ``seed``
   per call there).

A q8 state made with ``signed=False`` is refused (ValueError) in a slot whose
values can be negative: momentum buffers, first moments and RMSprop's grad
averages. For float32 and float64 arrays all of this is the identity.
"""

from __future__ import annotations

import math

import numpy as np

from .reference_arrays import ParamStore, arithmetic_dtype, check_signed, each, listify, load, store

__all__ = [
    "sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step",
    "adadelta_step", "global_norm", "clip_grad_norm", "clip_grad_value",
    # from lrfast.reference_lr_free (imported at the end: it builds on this module)
    "lion_step", "schedulefree_sgd_step", "schedulefree_adamw_step", "schedulefree_to_eval",
    "schedulefree_to_train", "prodigy_reduce", "prodigy_update",
    # from lrfast.reference_adaptive
    "nadam_step", "radam_step", "adamax_step", "nadam_mu",
    "adafactor_step",  # from lrfast.reference_adafactor
]


def _grad(p, g, grad_scale, maximize, weight_decay):
    d = g * g.dtype.type(grad_scale)
    if maximize:
        d = -d
    if weight_decay != 0:
        d = d + p.dtype.type(weight_decay) * p
    return d


def sgd_step(params, grads, momentum_buffers=None, *, lr, step=None, momentum=0.0,
             dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False, grad_scale=1.0,
             stochastic_rounding=False, seed=0):
    """SGD with momentum (torch.optim.SGD)::

        b = g                                    on the first step (step == 1)
        b = momentum * b + (1 - dampening) * g   after it
        g = g + momentum * b if nesterov else b  (when momentum != 0)
        param = param - lr * g
    """
    check_signed(momentum_buffers, "momentum_buffers")
    store_param = ParamStore(stochastic_rounding, seed, step)
    for p, g, b in each(params, grads, momentum_buffers):
        dtype = arithmetic_dtype(p)
        t = dtype.type
        P, B = load(p, dtype), load(b, dtype)
        d = _grad(P, load(g, dtype), grad_scale, maximize, weight_decay)
        if momentum != 0:
            if step == 1:
                B[...] = d
            else:
                B[...] = B * t(momentum) + t(1 - dampening) * d
            d = d + t(momentum) * B if nesterov else B
            store(b, B)
        P += t(-lr) * d
        store_param(p, P)


def _adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, *, lr, step, betas, eps,
          weight_decay, amsgrad, maximize, grad_scale, decoupled, stochastic_rounding, seed):
    check_signed(exp_avgs, "exp_avgs")
    store_param = ParamStore(stochastic_rounding, seed, step)
    beta1, beta2 = betas
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    for p, g, m, v, vmax in each(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs):
        dtype = arithmetic_dtype(p)
        t = dtype.type
        P, M, V, VMAX = (load(x, dtype) for x in (p, m, v, vmax))
        if decoupled and weight_decay != 0:
            P *= t(1 - lr * weight_decay)
        d = _grad(P, load(g, dtype), grad_scale, maximize, 0.0 if decoupled else weight_decay)
        M += t(1 - beta1) * (d - M)
        V = V * t(beta2) + t(1 - beta2) * d * d
        if amsgrad:
            np.maximum(VMAX, V, out=VMAX)
        denom = np.sqrt(VMAX if amsgrad else V) / t(bias_correction2_sqrt) + t(eps)
        P += t(-step_size) * (M / denom)
        store(m, M)
        store(v, V)
        if amsgrad:
            store(vmax, VMAX)
        store_param(p, P)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, lr=1e-3, step,
              betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
              grad_scale=1.0, stochastic_rounding=False, seed=0):
    """Adam (torch.optim.Adam), with weight decay added to the gradient::

        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v); v = vmax                      if amsgrad
        param = param - lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)
    """
    _adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, step=step, betas=betas,
          eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          grad_scale=grad_scale, decoupled=False, stochastic_rounding=stochastic_rounding, seed=seed)


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, lr=1e-3, step,
               betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
               grad_scale=1.0, stochastic_rounding=False, seed=0):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay, applied first::

        param = param * (1 - lr * weight_decay)
        then the Adam update of adam_step with weight_decay = 0
    """
    _adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, step=step, betas=betas,
          eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          grad_scale=grad_scale, decoupled=True, stochastic_rounding=stochastic_rounding, seed=seed)


def rmsprop_step(params, grads, square_avgs, momentum_buffers=None, grad_avgs=None, *, lr=1e-2,
                 alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False, grad_scale=1.0, stochastic_rounding=False, seed=0):
    """RMSprop (torch.optim.RMSprop)::

        s = alpha * s + (1 - alpha) * g * g
        a = a + (1 - alpha) * (g - a)                   if centered
        avg = sqrt(s - a * a) + eps if centered else sqrt(s) + eps
        b = momentum * b + g / avg; param = param - lr * b      if momentum > 0
        param = param - lr * g / avg                            otherwise
    """
    check_signed(momentum_buffers, "momentum_buffers")
    check_signed(grad_avgs, "grad_avgs")
    store_param = ParamStore(stochastic_rounding, seed, None)
    for p, g, s, b, a in each(params, grads, square_avgs, momentum_buffers, grad_avgs):
        dtype = arithmetic_dtype(p)
        t = dtype.type
        P, S, B, A = (load(x, dtype) for x in (p, s, b, a))
        d = _grad(P, load(g, dtype), grad_scale, maximize, weight_decay)
        S = S * t(alpha) + t(1 - alpha) * d * d
        if centered:
            A += t(1 - alpha) * (d - A)
            avg = np.sqrt(S - A * A) + t(eps)
        else:
            avg = np.sqrt(S) + t(eps)
        if momentum > 0:
            B = B * t(momentum) + d / avg
            P += t(-lr) * B
        else:
            P += t(-lr) * (d / avg)
        store(s, S)
        if centered:
            store(a, A)
        if momentum > 0:
            store(b, B)
        store_param(p, P)


def adagrad_step(params, grads, state_sums, *, lr=1e-2, step, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False, grad_scale=1.0, stochastic_rounding=False, seed=0):
    """Adagrad (torch.optim.Adagrad)::

        s = s + g * g
        param = param - lr / (1 + (step - 1) * lr_decay) * g / (sqrt(s) + eps)
    """
    clr = lr / (1 + (step - 1) * lr_decay)
    store_param = ParamStore(stochastic_rounding, seed, step)
    for p, g, s in each(params, grads, state_sums):
        dtype = arithmetic_dtype(p)
        t = dtype.type
        P, S = load(p, dtype), load(s, dtype)
        d = _grad(P, load(g, dtype), grad_scale, maximize, weight_decay)
        S += d * d
        P += t(-clr) * (d / (np.sqrt(S) + t(eps)))
        store(s, S)
        store_param(p, P)


def adadelta_step(params, grads, square_avgs, acc_deltas, *, lr=1.0, rho=0.9, eps=1e-6,
                  weight_decay=0.0, maximize=False, grad_scale=1.0, stochastic_rounding=False,
                  seed=0):
    """Adadelta (torch.optim.Adadelta)::

        s = rho * s + (1 - rho) * g * g
        delta = sqrt(u + eps) / sqrt(s + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        param = param - lr * delta
    """
    store_param = ParamStore(stochastic_rounding, seed, None)
    for p, g, s, u in each(params, grads, square_avgs, acc_deltas):
        dtype = arithmetic_dtype(p)
        t = dtype.type
        P, S, U = (load(x, dtype) for x in (p, s, u))
        d = _grad(P, load(g, dtype), grad_scale, maximize, weight_decay)
        S = S * t(rho) + t(1 - rho) * d * d
        delta = np.sqrt(U + t(eps)) / np.sqrt(S + t(eps)) * d
        U = U * t(rho) + t(1 - rho) * delta * delta
        P += t(-lr) * delta
        store(s, S)
        store(u, U)
        store_param(p, P)


def global_norm(grads, norm_type=2.0):
    """The norm of all gradients as one vector, accumulated in float64::

        (sum_i |g_i|**p) ** (1/p),   max_i |g_i| for p = inf
    """
    flat = [np.asarray(g, dtype=np.float64).ravel() for g in listify(grads)]
    if not flat:
        return 0.0
    x = np.concatenate(flat)
    if x.size == 0:
        return 0.0
    if math.isinf(norm_type):
        return float(np.max(np.abs(x)))
    return float(np.sum(np.abs(x) ** norm_type) ** (1.0 / norm_type))


def clip_grad_norm(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scales the gradients in place so that their global norm is at most
    ``max_norm`` (torch.nn.utils.clip_grad_norm_); returns the norm before::

        coef = min(1, max_norm / (norm + 1e-6)); g = g * coef
    """
    total = global_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite")
    coef = max_norm / (total + 1e-6)
    if coef < 1 or math.isnan(coef):
        for g in listify(grads):
            g *= g.dtype.type(coef)
    return total


def clip_grad_value(grads, clip_value):
    """Clamps every gradient element to [-clip_value, clip_value] in place."""
    for g in listify(grads):
        np.clip(g, -clip_value, clip_value, out=g)


# The optimizers that take the learning rate off the user's hands, beside the
# six under the same names as lrfast's (their module imports this one's helpers).
from .reference_lr_free import (  # noqa: E402
    lion_step, prodigy_reduce, prodigy_update, schedulefree_adamw_step, schedulefree_sgd_step,
    schedulefree_to_eval, schedulefree_to_train,
)
from .reference_adaptive import adamax_step, nadam_mu, nadam_step, radam_step  # noqa: E402
from .reference_adafactor import adafactor_step  # noqa: E402
