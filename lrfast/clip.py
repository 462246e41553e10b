"""Gradient norms and clipping over lists of gradients.

Norms accumulate in float64 over fixed blocks combined in a fixed order, so the
result is bitwise the same whatever the thread count. To clip inside a step
without writing the gradients, pass ``grad_scale=clip_coefficient(norm, max_norm)``
to a step function: the gradients are then read twice (norm, step) and never
written.

Gradients that are DTensors (FSDP2's, see :mod:`lrfast._dtensor`) have the
norm of the whole gradients, across the ranks, as
``torch.nn.utils.clip_grad_norm_`` takes it: every rank gets the same norm and
scales its shards by the same coefficient.
"""

from __future__ import annotations

import math

from . import _dtensor, _hparams
from ._backend import for_arrays, tensors
from ._hparams import clip_coefficient
from .array_types import Bool, Real, Tensors

__all__ = ["global_norm", "clip_grad_norm", "clip_grad_value", "clip_coefficient"]


def global_norm(grads: Tensors, norm_type: Real = 2.0) -> float:
    """The ``norm_type``-norm of all gradients taken as one vector (2, 1, inf or
    any p > 0). See :func:`lrfast.reference.global_norm`."""
    p = _hparams.norm_type(norm_type)
    arrays = tensors("grads", grads)
    if arrays and _dtensor.any_dtensor(arrays):
        return _dtensor.global_norm(arrays, p, _local_norm)
    return _local_norm(arrays, p)


def _local_norm(grads, p: float) -> float:
    return for_arrays(grads).global_norm(grads, p)


def clip_grad_norm(grads: Tensors, max_norm: Real, norm_type: Real = 2.0,
                   error_if_nonfinite: Bool = False) -> float:
    """Scales the gradients in place by ``min(1, max_norm / (norm + 1e-6))`` like
    ``torch.nn.utils.clip_grad_norm_`` and returns the norm before clipping.
    ``max_norm=inf`` clips nothing but a NaN or infinite norm, as in torch.

    With ``error_if_nonfinite`` a NaN or infinite norm raises RuntimeError and
    leaves the gradients untouched.
    """
    max_norm = _hparams.real("max_norm", max_norm)
    if not max_norm >= 0:  # inf is allowed, as torch allows it: no clipping
        raise ValueError(f"max_norm must be a number >= 0 or inf, got {max_norm!r}")
    p = _hparams.norm_type(norm_type)
    _hparams.flag("error_if_nonfinite", error_if_nonfinite)
    arrays = tensors("grads", grads)
    if arrays and _dtensor.any_dtensor(arrays):
        return _clip_across_ranks(arrays, max_norm, p, bool(error_if_nonfinite))
    return for_arrays(arrays).clip_grad_norm(arrays, max_norm, p, bool(error_if_nonfinite))


def _clip_across_ranks(grads, max_norm: float, p: float, error_if_nonfinite: bool) -> float:
    """clip_grad_norm of DTensor gradients: the norm across the ranks, then
    each rank's shards scaled in place (by torch: they are torch tensors)."""
    norm = _dtensor.global_norm(grads, p, _local_norm)
    if error_if_nonfinite and not math.isfinite(norm):  # the same on every rank
        raise RuntimeError(f"the total norm of order {p} of the gradients is non-finite, so "
                           "it cannot be clipped; pass error_if_nonfinite=False to scale "
                           "them anyway")
    coef = clip_coefficient(norm, max_norm)
    if coef != 1.0:  # x * 1 == x: skip the write
        for g in grads:
            _dtensor.local(g).mul_(coef)
    return norm


def clip_grad_value(grads: Tensors, clip_value: Real) -> None:
    """Clamps every gradient element to ``[-clip_value, clip_value]`` in place."""
    clip_value = _hparams.non_negative("clip_value", clip_value)
    arrays = tensors("grads", grads)
    if arrays and _dtensor.any_dtensor(arrays):  # elementwise: each rank clamps its shards
        arrays = list(map(_dtensor.local, arrays))
    for_arrays(arrays).clip_grad_value(arrays, clip_value)
