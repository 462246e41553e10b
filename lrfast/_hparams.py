"""Hyperparameter checks and the per-step scalars each kernel receives.

Every step function passes its keywords through one of the functions here
before any array is touched. The returned dict is exactly the Params struct of
cpp/include/lrfast/hparams.hpp (same field names; flags as 0.0/1.0), computed
in double, and is shared by the C++ and the CUDA back ends. Each ends with the
fields of :func:`rounding` (stochastic rounding of 16-bit params).
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from . import precision


# steps are counted in int64, as torch counts them and as lrfast.schedules takes them
MAX_STEP = 2**63 - 1


def real(name: str, value) -> float:
    if type(value) is float or type(value) is int:  # the common case, without the ABC check
        if value != value:
            raise ValueError(f"{name} must not be NaN")
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range
            raise ValueError(f"{name} is too large for a float ({describe_int(int(value))})") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float") from None
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    return v


def describe_int(value: int) -> str:
    """An int for an error message, without printing hundreds of digits."""
    return repr(value) if abs(value) < 10**30 else f"an integer of {value.bit_length()} bits"


def non_negative(name: str, value) -> float:
    v = real(name, value)
    if not 0.0 <= v < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def finite(name: str, value) -> float:
    v = real(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def unit_interval(name: str, value, *, closed: bool = False) -> float:
    v = real(name, value)
    if not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        bound = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{name} must lie in {bound}, got {value!r}")
    return v


def flag(name: str, value) -> float:
    if value is True or value is False:
        return 1.0 if value else 0.0
    if not isinstance(value, np.bool_):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return 1.0 if value else 0.0


def step_count(value) -> int:
    if type(value) is int and 1 <= value <= MAX_STEP:
        return value
    if isinstance(value, bool):
        raise TypeError("step must be an int, got bool")
    try:
        step = operator.index(value)
    except TypeError:
        raise TypeError(f"step must be an int, got {type(value).__name__}") from None
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based index of this update), got {step}")
    if step > MAX_STEP:
        raise ValueError(f"step must be < 2**63, got {describe_int(step)}")
    return step


def random_seed(value) -> int:
    """A stochastic-rounding seed: an int in [0, 2**64)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed must be an int, got a {type(value).__name__}")
    if not 0 <= int(value) < 2**64:
        raise ValueError(f"seed must be an integer from 0 to 2**64 - 1, got "
                         f"{describe_int(int(value))}")
    return int(value)


def rounding(stochastic_rounding, seed, step) -> dict:
    """The rounding fields every kernel's hparams end with: the flag, and
    ``sr_key``, :func:`lrfast.precision.call_key` of (seed, step), a 32-bit
    value, exact as a float. ``step`` is None for a step function without
    one: the hash then uses step 0."""
    on = flag("stochastic_rounding", stochastic_rounding)
    seed = random_seed(seed)
    if not on:
        return dict(stochastic_rounding=0.0, sr_key=0.0)
    key = precision.call_key(seed, 0 if step is None else step)
    return dict(stochastic_rounding=1.0, sr_key=float(key))


# Public as lrfast.clip_coefficient (through lrfast.clip); it lives here, below
# the back ends, so that the CUDA back end uses it without importing lrfast.clip,
# which imports the router lrfast._backend, which imports the CUDA back end.
def clip_coefficient(norm: float, max_norm: float) -> float:
    """The factor ``clip_grad_norm`` applies: ``min(1, max_norm / (norm + 1e-6))``,
    to pass as a step's ``grad_scale``."""
    coef = max_norm / (norm + 1e-6)
    return coef if coef < 1.0 or math.isnan(coef) else 1.0


def signed_scale(grad_scale, maximize) -> float:
    """The gradient multiplier, negated for maximize (negation is exact)."""
    scale = finite("grad_scale", grad_scale)
    return -scale if flag("maximize", maximize) else scale


def sgd(*, lr, step, momentum, dampening, nesterov, weight_decay, maximize, grad_scale,
        stochastic_rounding=False, seed=0):
    lr = non_negative("lr", lr)
    momentum = non_negative("momentum", momentum)
    dampening = finite("dampening", dampening)
    nesterov = flag("nesterov", nesterov)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov requires momentum > 0 and dampening = 0")
    if step is not None:
        step = step_count(step)
    elif momentum != 0 and dampening != 0:
        # With zeroed buffers, step 1 of momentum * b + (1 - dampening) * g only
        # equals torch's b = g when dampening is 0.
        raise ValueError("step is required when momentum and dampening are both non-zero")
    return dict(lr=lr, momentum=momentum, dampening=dampening,
                weight_decay=non_negative("weight_decay", weight_decay),
                grad_scale=signed_scale(grad_scale, maximize), nesterov=nesterov,
                first_step=1.0 if step == 1 else 0.0, **rounding(stochastic_rounding, seed, step))


def adam(*, lr, step, betas, eps, weight_decay, amsgrad, maximize, grad_scale, decoupled,
         stochastic_rounding=False, seed=0):
    lr = non_negative("lr", lr)
    step = step_count(step)
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair of numbers, got {betas!r}") from None
    beta1 = unit_interval("betas[0]", beta1)
    beta2 = unit_interval("betas[1]", beta2)
    return dict(lr=lr, beta1=beta1, beta2=beta2, eps=non_negative("eps", eps),
                weight_decay=non_negative("weight_decay", weight_decay),
                grad_scale=signed_scale(grad_scale, maximize),
                step_size=lr / (1.0 - beta1**step),
                bias_correction2_sqrt=math.sqrt(1.0 - beta2**step),
                decoupled=1.0 if decoupled else 0.0, amsgrad=flag("amsgrad", amsgrad),
                **rounding(stochastic_rounding, seed, step))


def rmsprop(*, lr, alpha, eps, weight_decay, momentum, centered, maximize, grad_scale,
            stochastic_rounding=False, seed=0):
    return dict(lr=non_negative("lr", lr), alpha=unit_interval("alpha", alpha, closed=True),
                eps=non_negative("eps", eps),
                weight_decay=non_negative("weight_decay", weight_decay),
                momentum=non_negative("momentum", momentum),
                grad_scale=signed_scale(grad_scale, maximize),
                centered=flag("centered", centered), **rounding(stochastic_rounding, seed, None))


def adagrad(*, lr, step, lr_decay, weight_decay, eps, maximize, grad_scale,
            stochastic_rounding=False, seed=0):
    lr = non_negative("lr", lr)
    lr_decay = non_negative("lr_decay", lr_decay)
    step = step_count(step)
    return dict(clr=lr / (1.0 + (step - 1) * lr_decay), eps=non_negative("eps", eps),
                weight_decay=non_negative("weight_decay", weight_decay),
                grad_scale=signed_scale(grad_scale, maximize),
                **rounding(stochastic_rounding, seed, step))


def adadelta(*, lr, rho, eps, weight_decay, maximize, grad_scale,
             stochastic_rounding=False, seed=0):
    return dict(lr=non_negative("lr", lr), rho=unit_interval("rho", rho, closed=True),
                eps=non_negative("eps", eps),
                weight_decay=non_negative("weight_decay", weight_decay),
                grad_scale=signed_scale(grad_scale, maximize),
                **rounding(stochastic_rounding, seed, None))


def norm_type(value) -> float:
    p = real("norm_type", value)
    if not p > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {value!r}")
    return p
