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


def positive(name: str, value) -> float:
    """A finite number > 0 (the rates the reference packages assert positive)."""
    v = real(name, value)
    if not 0.0 < v < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def beta_pair(betas, *, name: str = "betas") -> tuple[float, float]:
    """Two numbers in [0, 1)."""
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of numbers, got {betas!r}") from None
    return unit_interval(f"{name}[0]", beta1), unit_interval(f"{name}[1]", beta2)


def open_unit_interval(name: str, value) -> float:
    """A number in (0, 1): schedule-free's momentum, which eval() divides by."""
    v = real(name, value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return v


_FLOAT32_MAX = 3.4028234663852886e38


def gradient_factor(grad_scale) -> float:
    """``grad_scale``: a finite number that float32 holds (the kernels of
    float32 and 16-bit params multiply in float32, where 1e300 is inf and
    would turn every state it touches into inf or NaN)."""
    scale = finite("grad_scale", grad_scale)
    if abs(scale) > _FLOAT32_MAX:
        raise ValueError(f"grad_scale must lie within float32's range (|grad_scale| <= "
                         f"3.4028235e+38), got {grad_scale!r}")
    return scale


def signed_scale(grad_scale, maximize) -> float:
    """The gradient multiplier, negated for maximize (negation is exact)."""
    scale = gradient_factor(grad_scale)
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
    beta1, beta2 = beta_pair(betas)
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


# ---------------------------------------------------------------- the optimizers
# that take the learning rate off the user's hands (lrfast.reference_lr_free
# holds their maths and argument rules; the kernels compute the scalars that
# combine these fields, in double, once per call, as the reference does).

def lion(*, lr, betas, weight_decay, maximize, grad_scale, stochastic_rounding=False, seed=0):
    lr = non_negative("lr", lr)
    beta1, beta2 = beta_pair(betas)
    return dict(lr=lr, beta1=beta1, beta2=beta2,
                weight_decay=non_negative("weight_decay", weight_decay),
                grad_scale=signed_scale(grad_scale, maximize),
                **rounding(stochastic_rounding, seed, None))


def _schedulefree(lr, ckp1, weight_decay):
    return (non_negative("lr", lr), unit_interval("ckp1", ckp1, closed=True),
            non_negative("weight_decay", weight_decay))


def schedulefree_sgd(*, lr, ckp1, step, momentum, weight_decay, maximize, grad_scale,
                     stochastic_rounding=False, seed=0):
    lr, ckp1, weight_decay = _schedulefree(lr, ckp1, weight_decay)
    if step is not None:
        step = step_count(step)
    return dict(lr=lr, ckp1=ckp1, momentum=open_unit_interval("momentum", momentum),
                weight_decay=weight_decay, grad_scale=signed_scale(grad_scale, maximize),
                **rounding(stochastic_rounding, seed, step))


def schedulefree_adamw(*, lr, ckp1, step, betas, eps, weight_decay, maximize, grad_scale,
                       stochastic_rounding=False, seed=0):
    lr, ckp1, weight_decay = _schedulefree(lr, ckp1, weight_decay)
    step = step_count(step)
    beta1, beta2 = beta_pair(betas)
    if beta1 == 0:
        raise ValueError("betas[0] must lie in (0, 1) (eval() divides by it), got 0.0")
    return dict(lr=lr, ckp1=ckp1, beta1=beta1, beta2=beta2, eps=non_negative("eps", eps),
                weight_decay=weight_decay, grad_scale=signed_scale(grad_scale, maximize),
                bias_correction2=1.0 - beta2**step,
                **rounding(stochastic_rounding, seed, step))


def schedulefree_lerp(*, beta1, to_eval: bool):
    """eval() (y to x) or train() (x to y): param = lerp(param, z, weight). The
    param rounds to nearest even (the classes' switch has no seed)."""
    beta1 = open_unit_interval("beta1", beta1)
    return dict(weight=1.0 - 1.0 / beta1 if to_eval else 1.0 - beta1,
                **rounding(False, 0, None))


def slice_step(value) -> int:
    """Prodigy's slice_p: an int >= 1 (every slice_p-th element is estimated)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("slice_p must be an int, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"slice_p must be an int, got {type(value).__name__}") from None
    if not 1 <= v <= 2**53:  # exact as a double
        raise ValueError(f"slice_p must be an integer from 1 to 2**53, got {describe_int(v)}")
    return v


def _prodigy_d(d, dlr, weight_decay, decouple):
    return dict(d=positive("d", d), dlr=non_negative("dlr", dlr),
                weight_decay=non_negative("weight_decay", weight_decay),
                decouple=flag("decouple", decouple))


def prodigy_reduce(*, d, d0, dlr, betas, beta3, weight_decay, decouple, safeguard_warmup,
                   slice_p, maximize, grad_scale):
    common = _prodigy_d(d, dlr, weight_decay, decouple)
    beta2 = beta_pair(betas)[1]
    beta3 = math.sqrt(beta2) if beta3 is None else unit_interval("beta3", beta3)
    return dict(common, d0=positive("d0", d0), beta3=beta3,
                safeguard_warmup=flag("safeguard_warmup", safeguard_warmup),
                slice_p=float(slice_step(slice_p)), grad_scale=signed_scale(grad_scale, maximize),
                **rounding(False, 0, None))


def prodigy_update(*, d, d_new, dlr, betas, eps, weight_decay, decouple, maximize, grad_scale,
                   stochastic_rounding=False, seed=0):
    common = _prodigy_d(d, dlr, weight_decay, decouple)
    beta1, beta2 = beta_pair(betas)
    return dict(common, d_new=positive("d_new", d_new), beta1=beta1, beta2=beta2,
                eps=positive("eps", eps), grad_scale=signed_scale(grad_scale, maximize),
                **rounding(stochastic_rounding, seed, None))


# ---------------------------------------------------------------- the rest of
# torch.optim's adaptive family (lrfast.reference_adaptive holds their maths):
# torch's per-step scalars, computed as its single-tensor path does, in double.

def _decay(lr, weight_decay, decoupled_weight_decay):
    return (non_negative("lr", lr), non_negative("weight_decay", weight_decay),
            flag("decoupled_weight_decay", decoupled_weight_decay))


def nadam_mu(step, beta1, momentum_decay) -> float:
    """NAdam's momentum at ``step``: ``beta1 * (1 - 0.5 * 0.96**(step * momentum_decay))``."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def nadam_mu_product(previous, step, beta1, momentum_decay) -> float:
    """NAdam's ``mu_product`` after ``step``: ``previous * mu_step`` in
    float32, as torch's ``state["mu_product"]`` (a float32 tensor under
    torch's default dtype) is multiplied."""
    return float(np.float32(previous) * np.float32(nadam_mu(step, beta1, momentum_decay)))


def nadam(*, lr, step, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay,
          mu_product, maximize, grad_scale, stochastic_rounding=False, seed=0):
    lr, weight_decay, decoupled = _decay(lr, weight_decay, decoupled_weight_decay)
    step = step_count(step)
    beta1, beta2 = beta_pair(betas)
    momentum_decay = non_negative("momentum_decay", momentum_decay)
    mu_product = unit_interval("mu_product", mu_product)
    mu = nadam_mu(step, beta1, momentum_decay)
    mu_next = nadam_mu(step + 1, beta1, momentum_decay)
    return dict(lr=lr, beta1=beta1, beta2=beta2, eps=non_negative("eps", eps),
                weight_decay=weight_decay, grad_scale=signed_scale(grad_scale, maximize),
                decoupled=decoupled, bias_correction2=1.0 - beta2**step,
                grad_coef=-lr * (1.0 - mu) / (1.0 - mu_product),
                avg_coef=(-lr * mu_next) / (1.0 - mu_product * mu_next),
                **rounding(stochastic_rounding, seed, step))


def radam_rectification(step, beta2) -> float | None:
    """RAdam's rectification term at ``step``, or None where torch's switch
    (the approximated SMA length ``rho_t > 5``) leaves the update unadapted."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / (1 - beta2**step)
    if not rho_t > 5.0:
        return None
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


def radam(*, lr, step, betas, eps, weight_decay, decoupled_weight_decay, maximize, grad_scale,
          stochastic_rounding=False, seed=0):
    lr, weight_decay, decoupled = _decay(lr, weight_decay, decoupled_weight_decay)
    step = step_count(step)
    beta1, beta2 = beta_pair(betas)
    rect = radam_rectification(step, beta2)
    return dict(lr=lr, beta1=beta1, beta2=beta2, eps=non_negative("eps", eps),
                weight_decay=weight_decay, grad_scale=signed_scale(grad_scale, maximize),
                decoupled=decoupled, bias_correction1=1.0 - beta1**step,
                bias_correction2_sqrt=(1.0 - beta2**step) ** 0.5,
                rectified=0.0 if rect is None else 1.0, rect=0.0 if rect is None else rect,
                **rounding(stochastic_rounding, seed, step))


def adamax(*, lr, step, betas, eps, weight_decay, maximize, grad_scale,
           stochastic_rounding=False, seed=0):
    lr = non_negative("lr", lr)
    step = step_count(step)
    beta1, beta2 = beta_pair(betas)
    return dict(clr=lr / (1.0 - beta1**step), beta1=beta1, beta2=beta2,
                eps=non_negative("eps", eps),
                weight_decay=non_negative("weight_decay", weight_decay),
                grad_scale=signed_scale(grad_scale, maximize),
                **rounding(stochastic_rounding, seed, step))
def adafactor(*, lr, step, beta2_decay, eps, d, weight_decay, maximize, grad_scale):
    """Adafactor's fields: torch's ``1 - beta2_t = step**beta2_decay`` and
    ``rho = min(lr, 1 / sqrt(step))``; ``eps1 = -1`` for torch's None (the
    kernels take each param's dtype's machine epsilon)."""
    lr = non_negative("lr", lr)
    step = step_count(step)
    beta2_decay = finite("beta2_decay", beta2_decay)
    if beta2_decay > 0:
        raise ValueError(f"beta2_decay must be <= 0, got {beta2_decay!r}")
    try:
        eps1, eps2 = eps
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}") from None
    eps1 = -1.0 if eps1 is None else non_negative("eps[0]", eps1)
    d = finite("d", d)
    if d < 1:
        raise ValueError(f"d (the clipping threshold) must be >= 1, got {d!r}")
    return dict(lr=lr, rho=min(lr, 1.0 / math.sqrt(step)), beta2_weight=float(step)**beta2_decay,
                eps1=eps1, eps2=non_negative("eps[1]", eps2), d=d,
                weight_decay=non_negative("weight_decay", weight_decay),
                grad_scale=signed_scale(grad_scale, maximize), **rounding(False, 0, step))
