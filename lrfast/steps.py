"""The fused optimizer steps: one call updates every tensor of a list in place.

Each function's docstring states its update, its state arrays and an example;
the results are those of its NumPy reference in :mod:`lrfast.reference`, fused
into one pass over memory per tensor and one native call per list.

Arguments: every tensor argument takes one array or a list/tuple of arrays
(C-contiguous; params and states writeable). Params are float32, float64,
bfloat16 (``ml_dtypes.bfloat16``, or a torch tensor) or float16; a grad has
its param's dtype, or float32 for a 16-bit param; each state is float32, the
param's dtype, bfloat16 (float64 only with float64 params) or a
:class:`lrfast.Q8State` or :class:`lrfast.Q4State` (8- and 4-bit block-wise
codes, made by :func:`lrfast.zeros_state`), and a list may mix them. A q8 or
q4 state made with ``signed=False`` is refused in a slot whose values can be
negative (momentum buffers, first moments, RMSprop's grad averages).
Arithmetic runs in float32 (float64 for float64 params); a low-bit state is
dequantized, updated and re-quantized block by block with its new scale
(``absmax``) in the same pass, and the
param update uses the new moments before they are stored. Every 16-bit value
written rounds to nearest even, except 16-bit params with
``stochastic_rounding=True``: they round stochastically, with random bits
hashed from (``seed``, ``step``, the element's position in the call's params
laid end to end), so that the result does not depend on the thread count or
the ISA (and so does a 16-bit schedule-free ``z``, which holds weights, with
bits of its own). A step function without a ``step`` argument (and
``sgd_step`` with ``step=None``) hashes with step 0: a caller that varies
nothing gets the same random bits at every call, so vary ``seed`` per call by
hashing, as lrfast's optimizer classes do: ``seed=lrfast.precision.mix_seed(
run_seed, update, call)`` (not ``run_seed + update``, which would give seed s
at update k + 1 the bits of seed s + 1 at update k), with a distinct ``call``
for each call of one update (positions restart at 0 in every call). Hyperparameters
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
from .array_types import Bool, Int, Real, States, Tensors

__all__ = ["sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step", "adadelta_step"]


def sgd_step(params: Tensors, grads: Tensors, momentum_buffers: States | None = None, *,
             lr: Real, step: Int | None = None, momentum: Real = 0.0, dampening: Real = 0.0,
             nesterov: Bool = False, weight_decay: Real = 0.0, maximize: Bool = False,
             grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
             seed: Int = 0) -> None:
    """SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD),
    every tensor updated in place in one pass.

    For each tensor, with ``g`` the gradient as the update sees it (``grad *
    grad_scale``, negated if ``maximize``, plus ``weight_decay * param`` when
    ``weight_decay != 0``)::

        b = g                                    on the first step (step == 1)
        b = momentum * b + (1 - dampening) * g   after it
        g = g + momentum * b if nesterov else b  (when momentum != 0)
        param = param - lr * g

    State: ``momentum_buffers`` (``b``: one array per param, its shape and
    dtype), needed when ``momentum != 0``. On ``step == 1`` a buffer takes the
    gradient whatever it held; without ``step`` the buffers must start at zero
    (the same first step when ``dampening == 0``).

    ``momentum_buffers`` may be float32, the param's dtype, bfloat16 or a signed
    q8 or q4 state. ``stochastic_rounding=True`` rounds 16-bit params stochastically
    with random bits of (``seed``, ``step``, position); with ``step=None`` the
    hash uses step 0, the same bits at every call unless ``seed`` changes (see
    the module docstring).

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, 0.5], np.float32)
    >>> b = np.zeros_like(p)
    >>> lrfast.sgd_step(p, g, b, lr=0.1, momentum=0.9, step=1)
    >>> print(p, b)
    [ 0.95 -2.05] [0.5 0.5]
    """
    hp = _hparams.sgd(lr=lr, step=step, momentum=momentum, dampening=dampening,
                      nesterov=nesterov, weight_decay=weight_decay, maximize=maximize,
                      grad_scale=grad_scale, stochastic_rounding=stochastic_rounding, seed=seed)
    uses_buffers = hp["momentum"] != 0
    run("sgd", hp, {"params": params, "grads": grads,
                    "momentum_buffers": momentum_buffers if uses_buffers else None},
        required=("params", "grads") + (("momentum_buffers",) if uses_buffers else ()))


def _adam(kernel_decoupled: bool, params: Tensors, grads: Tensors, exp_avgs: States,
          exp_avg_sqs: States, max_exp_avg_sqs: States | None, **kw: Any) -> None:
    hp = _hparams.adam(decoupled=kernel_decoupled, **kw)
    amsgrad = hp["amsgrad"] != 0
    run("adam", hp, {"params": params, "grads": grads, "exp_avgs": exp_avgs,
                     "exp_avg_sqs": exp_avg_sqs,
                     "max_exp_avg_sqs": max_exp_avg_sqs if amsgrad else None},
        required=("params", "grads", "exp_avgs", "exp_avg_sqs")
        + (("max_exp_avg_sqs",) if amsgrad else ()))


def adam_step(params: Tensors, grads: Tensors, exp_avgs: States, exp_avg_sqs: States,
              max_exp_avg_sqs: States | None = None, *, lr: Real = 1e-3, step: Int,
              betas: tuple[Real, Real] = (0.9, 0.999), eps: Real = 1e-8, weight_decay: Real = 0.0,
              amsgrad: Bool = False, maximize: Bool = False, grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
              seed: Int = 0) -> None:
    """Adam (torch.optim.Adam), every tensor updated in place in one pass;
    weight decay is added to the gradient (see adamw_step for decoupled decay).

    For each tensor, with ``g`` the gradient as the update sees it (``grad *
    grad_scale``, negated if ``maximize``, plus ``weight_decay * param`` when
    ``weight_decay != 0``)::

        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v); v = vmax                      if amsgrad
        param = param - lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    State (one array per param, its shape and dtype, zeros before the first
    step): ``exp_avgs`` (``m``), ``exp_avg_sqs`` (``v``), and
    ``max_exp_avg_sqs`` (``vmax``), needed only when ``amsgrad``. ``step`` is
    the 1-based index of this update (the bias corrections).

    Each state may be float32, the param's dtype, bfloat16, a q8 or a q4 state
    (``exp_avgs`` signed; ``exp_avg_sqs`` and ``max_exp_avg_sqs`` signed or
    unsigned). ``stochastic_rounding=True`` rounds 16-bit params stochastically
    with random bits of (``seed``, ``step``, position); see the module docstring.

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> m, v = np.zeros_like(p), np.zeros_like(p)
    >>> lrfast.adam_step(p, g, m, v, lr=0.1, step=1)
    >>> print(p, m)
    [ 0.9 -1.9] [ 0.05 -0.1 ]
    """
    _adam(False, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, step=step,
          betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          grad_scale=grad_scale, stochastic_rounding=stochastic_rounding, seed=seed)


def adamw_step(params: Tensors, grads: Tensors, exp_avgs: States, exp_avg_sqs: States,
               max_exp_avg_sqs: States | None = None, *, lr: Real = 1e-3, step: Int,
               betas: tuple[Real, Real] = (0.9, 0.999), eps: Real = 1e-8,
               weight_decay: Real = 1e-2, amsgrad: Bool = False, maximize: Bool = False,
               grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
               seed: Int = 0) -> None:
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay, applied
    first; every tensor updated in place in one pass.

    For each tensor, with ``g = grad * grad_scale``, negated if ``maximize``::

        param = param * (1 - lr * weight_decay)
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v); v = vmax                      if amsgrad
        param = param - lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    State as :func:`adam_step`: ``exp_avgs`` (``m``), ``exp_avg_sqs`` (``v``),
    ``max_exp_avg_sqs`` (``vmax``, only with ``amsgrad``).

    States and ``stochastic_rounding``/``seed`` as :func:`adam_step`.

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> m, v = np.zeros_like(p), np.zeros_like(p)
    >>> lrfast.adamw_step(p, g, m, v, lr=0.1, step=1, weight_decay=0.01)
    >>> print(p)
    [ 0.899 -1.898]
    """
    _adam(True, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, step=step,
          betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          grad_scale=grad_scale, stochastic_rounding=stochastic_rounding, seed=seed)


def rmsprop_step(params: Tensors, grads: Tensors, square_avgs: States,
                 momentum_buffers: States | None = None, grad_avgs: States | None = None, *,
                 lr: Real = 1e-2, alpha: Real = 0.99, eps: Real = 1e-8, weight_decay: Real = 0.0,
                 momentum: Real = 0.0, centered: Bool = False, maximize: Bool = False,
                 grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
                 seed: Int = 0) -> None:
    """RMSprop (torch.optim.RMSprop), every tensor updated in place in one pass.

    For each tensor, with ``g`` the gradient as the update sees it (``grad *
    grad_scale``, negated if ``maximize``, plus ``weight_decay * param`` when
    ``weight_decay != 0``)::

        s = alpha * s + (1 - alpha) * g * g
        a = a + (1 - alpha) * (g - a)                   if centered
        avg = sqrt(s - a * a) + eps if centered else sqrt(s) + eps
        b = momentum * b + g / avg; param = param - lr * b      if momentum > 0
        param = param - lr * g / avg                            otherwise

    State (one array per param, its shape and dtype, zeros before the first
    step): ``square_avgs`` (``s``), ``momentum_buffers`` (``b``, needed when
    ``momentum > 0``), ``grad_avgs`` (``a``, needed when ``centered``).

    Each state may be float32, the param's dtype, bfloat16, a q8 or a q4 state
    (``square_avgs`` signed or unsigned; ``momentum_buffers`` and ``grad_avgs``
    signed). ``stochastic_rounding=True`` rounds 16-bit params stochastically
    with random bits of (``seed``, position): there is no step, the hash uses
    step 0, so a caller varying nothing gets the same bits at every call; vary
    ``seed`` per call (see the module docstring).

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> s = np.zeros_like(p)
    >>> lrfast.rmsprop_step(p, g, s, lr=0.01)
    >>> print(p.round(6), s)
    [ 0.9 -1.9] [0.0025 0.01  ]
    """
    hp = _hparams.rmsprop(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                          momentum=momentum, centered=centered, maximize=maximize,
                          grad_scale=grad_scale, stochastic_rounding=stochastic_rounding,
                          seed=seed)
    with_momentum, centered = hp["momentum"] != 0, hp["centered"] != 0
    run("rmsprop", hp, {"params": params, "grads": grads, "square_avgs": square_avgs,
                        "momentum_buffers": momentum_buffers if with_momentum else None,
                        "grad_avgs": grad_avgs if centered else None},
        required=("params", "grads", "square_avgs")
        + (("momentum_buffers",) if with_momentum else ()) + (("grad_avgs",) if centered else ()))


def adagrad_step(params: Tensors, grads: Tensors, state_sums: States, *, lr: Real = 1e-2,
                 step: Int, lr_decay: Real = 0.0, weight_decay: Real = 0.0, eps: Real = 1e-10,
                 maximize: Bool = False, grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
                 seed: Int = 0) -> None:
    """Adagrad (torch.optim.Adagrad), every tensor updated in place in one pass.

    For each tensor, with ``g`` the gradient as the update sees it (``grad *
    grad_scale``, negated if ``maximize``, plus ``weight_decay * param`` when
    ``weight_decay != 0``)::

        s = s + g * g
        param = param - lr / (1 + (step - 1) * lr_decay) * g / (sqrt(s) + eps)

    State: ``state_sums`` (``s``: one array per param, its shape and dtype,
    zeros, or torch's ``initial_accumulator_value``, before the first step).
    ``step`` is the 1-based index of this update (the rate's decay).

    ``state_sums`` may be float32, the param's dtype, bfloat16, a q8 or a q4 state
    (signed or unsigned). ``stochastic_rounding=True`` rounds 16-bit params
    stochastically with random bits of (``seed``, ``step``, position); see the
    module docstring.

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> s = np.zeros_like(p)
    >>> lrfast.adagrad_step(p, g, s, lr=0.1, step=1)
    >>> print(p, s)
    [ 0.9 -1.9] [0.25 1.  ]
    """
    hp = _hparams.adagrad(lr=lr, step=step, lr_decay=lr_decay, weight_decay=weight_decay,
                          eps=eps, maximize=maximize, grad_scale=grad_scale,
                          stochastic_rounding=stochastic_rounding, seed=seed)
    run("adagrad", hp, {"params": params, "grads": grads, "state_sums": state_sums},
        required=("params", "grads", "state_sums"))


def adadelta_step(params: Tensors, grads: Tensors, square_avgs: States, acc_deltas: States, *,
                  lr: Real = 1.0, rho: Real = 0.9, eps: Real = 1e-6, weight_decay: Real = 0.0,
                  maximize: Bool = False, grad_scale: Real = 1.0, stochastic_rounding: Bool = False,
                  seed: Int = 0) -> None:
    """Adadelta (torch.optim.Adadelta), every tensor updated in place in one pass.

    For each tensor, with ``g`` the gradient as the update sees it (``grad *
    grad_scale``, negated if ``maximize``, plus ``weight_decay * param`` when
    ``weight_decay != 0``)::

        s = rho * s + (1 - rho) * g * g
        delta = sqrt(u + eps) / sqrt(s + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        param = param - lr * delta

    State (one array per param, its shape and dtype, zeros before the first
    step): ``square_avgs`` (``s``) and ``acc_deltas`` (``u``).

    Each state may be float32, the param's dtype, bfloat16, a q8 or a q4 state
    (signed or unsigned). ``stochastic_rounding=True`` rounds 16-bit params
    stochastically with random bits of (``seed``, position): there is no step,
    the hash uses step 0, so a caller varying nothing gets the same bits at
    every call; vary ``seed`` per call (see the module docstring).

    >>> import numpy as np, lrfast
    >>> p = np.array([1.0, -2.0], np.float32)
    >>> g = np.array([0.5, -1.0], np.float32)
    >>> s, u = np.zeros_like(p), np.zeros_like(p)
    >>> lrfast.adadelta_step(p, g, s, u, lr=1.0)
    >>> print(p, s)
    [ 0.9968378 -1.9968377] [0.025 0.1  ]
    """
    hp = _hparams.adadelta(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                           maximize=maximize, grad_scale=grad_scale,
                           stochastic_rounding=stochastic_rounding, seed=seed)
    run("adadelta", hp, {"params": params, "grads": grads, "square_avgs": square_avgs,
                         "acc_deltas": acc_deltas},
        required=("params", "grads", "square_avgs", "acc_deltas"))
