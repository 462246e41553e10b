"""Gradient norms and clipping over lists of gradients.

Norms accumulate in float64 over fixed blocks combined in a fixed order, so the
result is bitwise the same whatever the thread count. To clip inside a step
without writing the gradients, pass ``grad_scale=clip_coefficient(norm, max_norm)``
to a step function: the gradients are then read twice (norm, step) and never
written.
"""

from __future__ import annotations

from . import _hparams
from ._backend import for_arrays, tensors
from ._hparams import clip_coefficient
from .array_types import Bool, Real, Tensors

__all__ = ["global_norm", "clip_grad_norm", "clip_grad_value", "clip_coefficient"]


def global_norm(grads: Tensors, norm_type: Real = 2.0) -> float:
    """The ``norm_type``-norm of all gradients taken as one vector (2, 1, inf or
    any p > 0). See :func:`lrfast.reference.global_norm`."""
    p = _hparams.norm_type(norm_type)
    grads = tensors("grads", grads)
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
    grads = tensors("grads", grads)
    return for_arrays(grads).clip_grad_norm(grads, max_norm, p, bool(error_if_nonfinite))


def clip_grad_value(grads: Tensors, clip_value: Real) -> None:
    """Clamps every gradient element to ``[-clip_value, clip_value]`` in place."""
    clip_value = _hparams.non_negative("clip_value", clip_value)
    grads = tensors("grads", grads)
    for_arrays(grads).clip_grad_value(grads, clip_value)
