"""NumPy reference for Adafactor (Shazeer & Stern 2018) as torch 2.13's
``torch.optim.Adafactor`` computes it: the readable specification and test
oracle of :func:`lrfast.adafactor_step`.

Conventions (those of :mod:`lrfast.reference`): arrays updated in place,
lists or single arrays, arithmetic in the param's dtype (float32 for 16-bit
params, whose states are float32), every store rounded to nearest even. Sums
(the squares of a param, of the gradient's rows and columns, of the update)
run in float64.
"""

from __future__ import annotations

import math

import numpy as np

from .reference_arrays import arithmetic_dtype, each, store

__all__ = ["adafactor_step", "adafactor_eps1", "factored"]


def factored(shape) -> bool:
    """Whether a param of ``shape`` keeps a factored second moment (2 or more
    dims: a row and a column factor over its last two), else a full one."""
    return len(shape) >= 2


def adafactor_eps1(eps1, dtype) -> float:
    """``eps[0]``, or the machine epsilon of the param's dtype when None (as
    torch; bfloat16's is 2**-7)."""
    if eps1 is not None:
        return float(eps1)
    return 2.0**-7 if np.dtype(dtype).name == "bfloat16" else float(np.finfo(dtype).eps)


def _lerp(a, b, w):
    """torch's lerp in a's dtype: ``a + w * (b - a)`` if ``|w| < 0.5``, else
    ``b - (b - a) * (1 - w)``."""
    w = a.dtype.type(w)
    if abs(w) < 0.5:
        return a + w * (b - a)
    return b - (b - a) * (a.dtype.type(1) - w)


def _sum_squares(x) -> float:
    return float(np.sum(np.square(x, dtype=np.float64)))


def adafactor_step(params, grads, row_vars, col_vars, variances, *, lr=1e-2, step,
                   beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                   maximize=False, grad_scale=1.0):
    """Adafactor, torch 2.13's single-tensor formulas. For each tensor, with
    ``g = grad * grad_scale`` (negated if ``maximize``), ``t = step``,
    ``eps1 = eps[0]`` (the param dtype's machine epsilon if None),
    ``eps2 = eps[1]`` and ``RMS(x) = sqrt(mean(x**2))``::

        w = t ** beta2_decay                      (1 - beta2_t)
        alpha = max(eps2, RMS(param)) * min(lr, 1 / sqrt(t))
        param = param * (1 - lr * weight_decay)   if weight_decay != 0
        params of 2 or more dims (the last two factored: rows i, columns j):
            R = lerp(R, mean_j(g**2), w)          row_vars, shape (..., n, 1)
            C = lerp(C, mean_i(g**2), w)          col_vars, shape (..., 1, m)
            V = R * C / max(mean_i(R), eps1)
        params of 0 or 1 dims:
            V = lerp(V, g * g, w)                 variances, the param's shape
        U = g * (1 / sqrt(max(V, eps1 * eps1)))
        param = param + (-alpha / max(1, RMS(U) / d)) * U

    A factored ``U`` is computed as ``g * min(a_i * b_j, 1 / eps1)``, ``a_i =
    1 / sqrt(R_i / max(mean_i(R), eps1))``, ``b_j = 1 / sqrt(C_j)``: the same
    value, without a square root and two divisions per element (its
    rounding differs from torch's by a few ulps). A param without elements
    is left as it is (torch would make a factored state NaN: the mean of no
    elements).
    """
    for p, g, r, c, v in each(params, grads, row_vars, col_vars, variances):
        if p.size == 0:
            continue
        dt = arithmetic_dtype(p)
        x = p.astype(dt)
        grad = g.astype(dt) * dt.type(grad_scale)
        if maximize:
            grad = -grad
        eps1 = adafactor_eps1(eps[0], p.dtype)
        w = float(step) ** beta2_decay
        rho = min(lr, 1.0 / math.sqrt(step))
        alpha = max(eps[1], math.sqrt(_sum_squares(x)) / math.sqrt(p.size)) * rho
        if weight_decay != 0:
            x = x * dt.type(1.0 - lr * weight_decay)
        if factored(p.shape):
            sq = np.square(grad, dtype=np.float64)
            row_mean = (sq.sum(axis=-1, keepdims=True) / p.shape[-1]).astype(dt)
            col_mean = (sq.sum(axis=-2, keepdims=True) / p.shape[-2]).astype(dt)
            r[...] = _lerp(r, row_mean, w)
            c[...] = _lerp(c, col_mean, w)
            r_mean = (r.astype(np.float64).sum(axis=-2, keepdims=True) / p.shape[-2]).astype(dt)
            r_mean = np.where(r_mean < dt.type(eps1), dt.type(eps1), r_mean)
            with np.errstate(divide="ignore"):  # a zero factor: inf, then the cap
                weight = (dt.type(1) / np.sqrt(r / r_mean)) * (dt.type(1) / np.sqrt(c))
            cap = dt.type(math.inf if eps1 == 0 else 1.0 / eps1)
            u = grad * np.where(weight < cap, weight, cap)
        else:
            v[...] = _lerp(v, grad * grad, w)
            u = grad * (dt.type(1) / np.sqrt(np.where(v < dt.type(eps1 * eps1),
                                                      dt.type(eps1 * eps1), v)))
        denom = max(1.0, math.sqrt(_sum_squares(u)) / (math.sqrt(u.size) * d))
        store(p, x + dt.type(-alpha / denom) * u)

