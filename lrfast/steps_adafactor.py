"""Adafactor's fused step (Shazeer & Stern 2018; torch 2.13's
``torch.optim.Adafactor``): one native call per list, two passes over
memory (three where some element of the update is capped), the second
moment of a matrix kept as a row and a column factor. Device arrays (CUDA
torch tensors too) run on the CUDA path (:mod:`lrfast.cuda.adafactor_kernels`:
three passes).

The maths and argument rules are those of :mod:`lrfast.reference_adafactor`;
the array rules those of :mod:`lrfast.steps`, but for the states, whose
shapes are not their params'. Params and grads: float32 or float64, or a
16-bit param (its grad 16-bit or float32) with float32 states.
"""

from __future__ import annotations

from typing import Sequence

from . import _hparams
from ._backend import run
from .array_types import Bool, Int, Real, Tensors

__all__ = ["adafactor_step"]


def adafactor_step(params: Tensors, grads: Tensors, row_vars, col_vars, variances, *,
                   lr: Real = 1e-2, step: Int, beta2_decay: Real = -0.8,
                   eps: Sequence = (None, 1e-3), d: Real = 1.0, weight_decay: Real = 0.0,
                   maximize: Bool = False, grad_scale: Real = 1.0) -> None:
    """Adafactor, every tensor updated in place; torch 2.13's single-tensor
    formulas. For each tensor, with ``g = grad * grad_scale`` (negated if
    ``maximize``), ``t = step`` (1-based), ``eps1 = eps[0]`` (the param
    dtype's machine epsilon if None), ``eps2 = eps[1]`` and ``RMS(x) =
    sqrt(mean(x**2))``::

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

    ``lerp(a, b, w)`` is torch's. A factored ``U`` is computed as ``g *
    min(a_i * b_j, 1 / eps1)`` with ``a_i = 1 / sqrt(R_i / max(mean_i(R),
    eps1))`` and ``b_j = 1 / sqrt(C_j)``: the same value at three multiplies
    per element (rounded a few ulps from torch's). ``row_vars``, ``col_vars`` and
    ``variances`` are lists as long as ``params`` with None where a param
    does not use them (or None for a whole list that no param uses); they
    start as zeros and have the param's dtype. A param without elements is
    left as it is. Rules: ``lr``, ``eps`` >= 0, ``beta2_decay`` <= 0, ``d``
    >= 1, ``weight_decay`` >= 0, as torch's constructor.

    The passes: a reduction (sum(param**2); a matrix's rows' sums of
    ``g**2``, from which its row factors are updated at once, its columns'
    sums of ``g**2`` and of ``g**2 / R_i``; a vector's ``V`` and
    sum(U**2)), then the update. A matrix's sum(U**2) comes from those sums:
    ``rmean * sum_j (sum_i g_ij**2 / R_i) / C_j``, the same value as summing
    ``U**2`` where no element of ``U`` reaches the cap ``1 / eps1``; where
    one does (a row of zero gradients, a large ``eps[0]``), a pass between
    the two sums ``U**2`` itself. Pass 1 sums its squares in the param's
    dtype over runs of 16 (256 columns along a row, 16 rows down a column),
    then in float64; the other sums run in float64; all over ranges fixed by
    the shapes: the result is bitwise the same for any thread count
    and ISA, and on the CUDA path (device arrays) for any grid size.

    >>> import numpy as np, lrfast
    >>> p = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    >>> g = np.array([[0.5, -1.0], [2.0, 0.1]], np.float32)
    >>> r, c = np.zeros((2, 1), np.float32), np.zeros((1, 2), np.float32)
    >>> lrfast.adafactor_step([p], [g], [r], [c], [None], step=1)
    >>> print(r.ravel(), c.ravel())
    [0.625 2.005] [2.125 0.505]
    """
    hp = _hparams.adafactor(lr=lr, step=step, beta2_decay=beta2_decay, eps=eps, d=d,
                            weight_decay=weight_decay, maximize=maximize, grad_scale=grad_scale)
    run("adafactor", hp, {"params": params, "grads": grads, "row_vars": row_vars,
                          "col_vars": col_vars, "variances": variances},
        required=("params", "grads"))
