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

Arithmetic runs in the arrays' dtype; per-step scalars (bias corrections,
step sizes) are computed in Python floats (double).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step",
    "adadelta_step", "global_norm", "clip_grad_norm", "clip_grad_value",
]


def _listify(x):
    if x is None or isinstance(x, (list, tuple)):
        return x
    return [x]


def _each(params, grads, *states):
    """Yields (param, grad, *states) per tensor; a missing state list gives None."""
    params, grads = _listify(params), _listify(grads)
    states = [_listify(s) if s is not None else [None] * len(params) for s in states]
    return zip(params, grads, *states)


def _grad(p, g, grad_scale, maximize, weight_decay):
    d = g * g.dtype.type(grad_scale)
    if maximize:
        d = -d
    if weight_decay != 0:
        d = d + p.dtype.type(weight_decay) * p
    return d


def sgd_step(params, grads, momentum_buffers=None, *, lr, step=None, momentum=0.0,
             dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False, grad_scale=1.0):
    """SGD with momentum (torch.optim.SGD)::

        b = g                                    on the first step (step == 1)
        b = momentum * b + (1 - dampening) * g   after it
        g = g + momentum * b if nesterov else b  (when momentum != 0)
        param = param - lr * g
    """
    for p, g, b in _each(params, grads, momentum_buffers):
        d = _grad(p, g, grad_scale, maximize, weight_decay)
        t = p.dtype.type
        if momentum != 0:
            if step == 1:
                b[...] = d
            else:
                b[...] = b * t(momentum) + t(1 - dampening) * d
            d = d + t(momentum) * b if nesterov else b
        p += t(-lr) * d


def _adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, *, lr, step, betas, eps,
          weight_decay, amsgrad, maximize, grad_scale, decoupled):
    beta1, beta2 = betas
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    for p, g, m, v, vmax in _each(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs):
        t = p.dtype.type
        if decoupled and weight_decay != 0:
            p *= t(1 - lr * weight_decay)
        d = _grad(p, g, grad_scale, maximize, 0.0 if decoupled else weight_decay)
        m += t(1 - beta1) * (d - m)
        v[...] = v * t(beta2) + t(1 - beta2) * d * d
        if amsgrad:
            np.maximum(vmax, v, out=vmax)
            v = vmax
        denom = np.sqrt(v) / t(bias_correction2_sqrt) + t(eps)
        p += t(-step_size) * (m / denom)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, lr=1e-3, step,
              betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
              grad_scale=1.0):
    """Adam (torch.optim.Adam), with weight decay added to the gradient::

        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v); v = vmax                      if amsgrad
        param = param - lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)
    """
    _adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, step=step, betas=betas,
          eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          grad_scale=grad_scale, decoupled=False)


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, lr=1e-3, step,
               betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
               grad_scale=1.0):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay, applied first::

        param = param * (1 - lr * weight_decay)
        then the Adam update of adam_step with weight_decay = 0
    """
    _adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, step=step, betas=betas,
          eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          grad_scale=grad_scale, decoupled=True)


def rmsprop_step(params, grads, square_avgs, momentum_buffers=None, grad_avgs=None, *, lr=1e-2,
                 alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False, grad_scale=1.0):
    """RMSprop (torch.optim.RMSprop)::

        s = alpha * s + (1 - alpha) * g * g
        a = a + (1 - alpha) * (g - a)                   if centered
        avg = sqrt(s - a * a) + eps if centered else sqrt(s) + eps
        b = momentum * b + g / avg; param = param - lr * b      if momentum > 0
        param = param - lr * g / avg                            otherwise
    """
    for p, g, s, b, a in _each(params, grads, square_avgs, momentum_buffers, grad_avgs):
        t = p.dtype.type
        d = _grad(p, g, grad_scale, maximize, weight_decay)
        s[...] = s * t(alpha) + t(1 - alpha) * d * d
        if centered:
            a += t(1 - alpha) * (d - a)
            avg = np.sqrt(s - a * a) + t(eps)
        else:
            avg = np.sqrt(s) + t(eps)
        if momentum > 0:
            b[...] = b * t(momentum) + d / avg
            p += t(-lr) * b
        else:
            p += t(-lr) * (d / avg)


def adagrad_step(params, grads, state_sums, *, lr=1e-2, step, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False, grad_scale=1.0):
    """Adagrad (torch.optim.Adagrad)::

        s = s + g * g
        param = param - lr / (1 + (step - 1) * lr_decay) * g / (sqrt(s) + eps)
    """
    clr = lr / (1 + (step - 1) * lr_decay)
    for p, g, s in _each(params, grads, state_sums):
        t = p.dtype.type
        d = _grad(p, g, grad_scale, maximize, weight_decay)
        s += d * d
        p += t(-clr) * (d / (np.sqrt(s) + t(eps)))


def adadelta_step(params, grads, square_avgs, acc_deltas, *, lr=1.0, rho=0.9, eps=1e-6,
                  weight_decay=0.0, maximize=False, grad_scale=1.0):
    """Adadelta (torch.optim.Adadelta)::

        s = rho * s + (1 - rho) * g * g
        delta = sqrt(u + eps) / sqrt(s + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        param = param - lr * delta
    """
    for p, g, s, u in _each(params, grads, square_avgs, acc_deltas):
        t = p.dtype.type
        d = _grad(p, g, grad_scale, maximize, weight_decay)
        s[...] = s * t(rho) + t(1 - rho) * d * d
        delta = np.sqrt(u + t(eps)) / np.sqrt(s + t(eps)) * d
        u[...] = u * t(rho) + t(1 - rho) * delta * delta
        p += t(-lr) * delta


def global_norm(grads, norm_type=2.0):
    """The norm of all gradients as one vector, accumulated in float64::

        (sum_i |g_i|**p) ** (1/p),   max_i |g_i| for p = inf
    """
    flat = [np.asarray(g, dtype=np.float64).ravel() for g in _listify(grads)]
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
        for g in _listify(grads):
            g *= g.dtype.type(coef)
    return total


def clip_grad_value(grads, clip_value):
    """Clamps every gradient element to [-clip_value, clip_value] in place."""
    for g in _listify(grads):
        np.clip(g, -clip_value, clip_value, out=g)
