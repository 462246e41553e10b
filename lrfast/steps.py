"""The fused optimizer steps: one call updates every tensor of a list in place.

The maths of each step is in the docstring of its NumPy reference in
:mod:`lrfast.reference`; these functions give the same results, fused into one
pass over memory per tensor and one native call per list.

Arguments: every tensor argument takes one array or a list/tuple of arrays
(float32/float64, C-contiguous; params and states writeable). Hyperparameters
are keyword-only; ``step`` is the 1-based index of the update being applied.
``grad_scale`` multiplies the gradient inside the kernel (an unscale factor or
a clip coefficient) and the gradients themselves are never written. Invalid
input raises TypeError/ValueError naming the argument and list index before
any array is written.
"""

from __future__ import annotations

from typing import Any

from . import _hparams
from ._backend import run
from .array_types import Bool, Int, Real, Tensors

__all__ = ["sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step", "adadelta_step"]


def sgd_step(params: Tensors, grads: Tensors, momentum_buffers: Tensors | None = None, *,
             lr: Real, step: Int | None = None, momentum: Real = 0.0, dampening: Real = 0.0,
             nesterov: Bool = False, weight_decay: Real = 0.0, maximize: Bool = False,
             grad_scale: Real = 1.0) -> None:
    """SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD).

    ``momentum_buffers`` is needed when ``momentum != 0``; on ``step == 1`` the
    buffer takes the gradient itself whatever it held. Without ``step`` the
    buffers must start at zero (which gives the same first step when
    ``dampening == 0``). See :func:`lrfast.reference.sgd_step`.
    """
    hp = _hparams.sgd(lr=lr, step=step, momentum=momentum, dampening=dampening,
                      nesterov=nesterov, weight_decay=weight_decay, maximize=maximize,
                      grad_scale=grad_scale)
    uses_buffers = hp["momentum"] != 0
    run("sgd", hp, {"params": params, "grads": grads,
                    "momentum_buffers": momentum_buffers if uses_buffers else None},
        required=("params", "grads") + (("momentum_buffers",) if uses_buffers else ()))


def _adam(kernel_decoupled: bool, params: Tensors, grads: Tensors, exp_avgs: Tensors,
          exp_avg_sqs: Tensors, max_exp_avg_sqs: Tensors | None, **kw: Any) -> None:
    hp = _hparams.adam(decoupled=kernel_decoupled, **kw)
    amsgrad = hp["amsgrad"] != 0
    run("adam", hp, {"params": params, "grads": grads, "exp_avgs": exp_avgs,
                     "exp_avg_sqs": exp_avg_sqs,
                     "max_exp_avg_sqs": max_exp_avg_sqs if amsgrad else None},
        required=("params", "grads", "exp_avgs", "exp_avg_sqs")
        + (("max_exp_avg_sqs",) if amsgrad else ()))


def adam_step(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
              max_exp_avg_sqs: Tensors | None = None, *, lr: Real = 1e-3, step: Int,
              betas: tuple[Real, Real] = (0.9, 0.999), eps: Real = 1e-8, weight_decay: Real = 0.0,
              amsgrad: Bool = False, maximize: Bool = False, grad_scale: Real = 1.0) -> None:
    """Adam (torch.optim.Adam); weight decay is added to the gradient.
    ``max_exp_avg_sqs`` is needed when ``amsgrad``. See
    :func:`lrfast.reference.adam_step`."""
    _adam(False, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, step=step,
          betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          grad_scale=grad_scale)


def adamw_step(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
               max_exp_avg_sqs: Tensors | None = None, *, lr: Real = 1e-3, step: Int,
               betas: tuple[Real, Real] = (0.9, 0.999), eps: Real = 1e-8,
               weight_decay: Real = 1e-2, amsgrad: Bool = False, maximize: Bool = False,
               grad_scale: Real = 1.0) -> None:
    """AdamW (torch.optim.AdamW): decoupled weight decay, ``p *= 1 - lr * weight_decay``
    before the Adam update. See :func:`lrfast.reference.adamw_step`."""
    _adam(True, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, step=step,
          betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          grad_scale=grad_scale)


def rmsprop_step(params: Tensors, grads: Tensors, square_avgs: Tensors,
                 momentum_buffers: Tensors | None = None, grad_avgs: Tensors | None = None, *,
                 lr: Real = 1e-2, alpha: Real = 0.99, eps: Real = 1e-8, weight_decay: Real = 0.0,
                 momentum: Real = 0.0, centered: Bool = False, maximize: Bool = False,
                 grad_scale: Real = 1.0) -> None:
    """RMSprop (torch.optim.RMSprop). ``momentum_buffers`` is needed when
    ``momentum > 0``, ``grad_avgs`` when ``centered``. See
    :func:`lrfast.reference.rmsprop_step`."""
    hp = _hparams.rmsprop(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                          momentum=momentum, centered=centered, maximize=maximize,
                          grad_scale=grad_scale)
    with_momentum, centered = hp["momentum"] != 0, hp["centered"] != 0
    run("rmsprop", hp, {"params": params, "grads": grads, "square_avgs": square_avgs,
                        "momentum_buffers": momentum_buffers if with_momentum else None,
                        "grad_avgs": grad_avgs if centered else None},
        required=("params", "grads", "square_avgs")
        + (("momentum_buffers",) if with_momentum else ()) + (("grad_avgs",) if centered else ()))


def adagrad_step(params: Tensors, grads: Tensors, state_sums: Tensors, *, lr: Real = 1e-2,
                 step: Int, lr_decay: Real = 0.0, weight_decay: Real = 0.0, eps: Real = 1e-10,
                 maximize: Bool = False, grad_scale: Real = 1.0) -> None:
    """Adagrad (torch.optim.Adagrad), with the rate ``lr / (1 + (step - 1) * lr_decay)``.
    See :func:`lrfast.reference.adagrad_step`."""
    hp = _hparams.adagrad(lr=lr, step=step, lr_decay=lr_decay, weight_decay=weight_decay,
                          eps=eps, maximize=maximize, grad_scale=grad_scale)
    run("adagrad", hp, {"params": params, "grads": grads, "state_sums": state_sums},
        required=("params", "grads", "state_sums"))


def adadelta_step(params: Tensors, grads: Tensors, square_avgs: Tensors, acc_deltas: Tensors, *,
                  lr: Real = 1.0, rho: Real = 0.9, eps: Real = 1e-6, weight_decay: Real = 0.0,
                  maximize: Bool = False, grad_scale: Real = 1.0) -> None:
    """Adadelta (torch.optim.Adadelta). See :func:`lrfast.reference.adadelta_step`."""
    hp = _hparams.adadelta(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                           maximize=maximize, grad_scale=grad_scale)
    run("adadelta", hp, {"params": params, "grads": grads, "square_avgs": square_avgs,
                         "acc_deltas": acc_deltas},
        required=("params", "grads", "square_avgs", "acc_deltas"))
