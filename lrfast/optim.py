"""Optimizers for NumPy parameters: torch.optim's interface over the fused steps.

::

    import lrfast.optim
    from lrfast.schedules import cosine_decay, warmup

    opt = lrfast.optim.AdamW(params, lr=warmup(cosine_decay(1e-3, 10_000), 500),
                             weight_decay=0.05, max_grad_norm=1.0)
    for x, y in batches:
        opt.step(loss_grads(params, x, y))   # gradients: arrays shaped like params

Each class takes torch.optim's hyperparameters, with the same names and
defaults, for the whole optimizer or per parameter group (a list of dicts
``{"params": [...], "lr": ..., ...}`` as in torch). ``opt.step(grads)`` takes
the gradients of every parameter, in the order of the groups and of the
parameters within them, and updates every group with one call of its step
function from :mod:`lrfast.steps`; the maths is there and nowhere else. The
optimizer owns the state arrays (allocated once: zeros, or
``initial_accumulator_value`` for Adagrad) and the step count.

``lr`` is a float or any schedule from :mod:`lrfast.schedules`: the update that
follows ``opt.step_count`` completed updates uses ``lr(opt.step_count)``.

Options every class takes (keyword-only):

``plateau``
    A :class:`lrfast.schedules.ReduceLROnPlateau`. ``opt.report(metric)``
    feeds it a metric (e.g. a validation loss); from then on every group runs
    at ``plateau.rate(scheduled rate)``.
``max_grad_norm``
    Clips the global 2-norm of all gradients (all groups together) like
    ``torch.nn.utils.clip_grad_norm_``, fused: one :func:`lrfast.global_norm`
    call, then the steps with ``grad_scale=clip_coefficient(norm, max_grad_norm)``.
    The gradients are never written.
``clip_value``
    Clamps every gradient element to ``[-clip_value, clip_value]``. This one
    *writes the gradients*, in place, through :func:`lrfast.clip_grad_value`.
    Not together with ``max_grad_norm``.
``grad_scale``
    A factor (> 0) every gradient is multiplied by inside the kernels, e.g.
    ``1 / loss_scale`` to unscale loss-scaled gradients. ``max_grad_norm``,
    ``clip_value`` and ``last_grad_norm`` refer to the gradients after it.
``skip_nonfinite``
    A step whose gradients hold an inf or NaN (whose global norm is not finite)
    changes nothing, neither parameters nor state nor step count: ``step()``
    returns False and ``opt.skipped_steps`` counts it.

``opt.last_grad_norm`` is the global gradient norm of the last step (None
unless ``max_grad_norm`` or ``skip_nonfinite`` made the step compute it).
``state_dict()``/``load_state_dict()`` and ``save(path)``/``load(path)`` (an
``.npz`` file read without pickle) capture everything a run needs to continue
bit-identically: state arrays, step count, hyperparameters, schedules,
plateau and options; the parameters themselves are the caller's to save.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from . import _core, _hparams, steps
from ._backend import tensors
from .clip import clip_coefficient, clip_grad_value, global_norm
from .schedules import ReduceLROnPlateau, Schedule, from_dict

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"]

_FORMAT = "lrfast.optim/1"
_KEYS = ("format", "optimizer", "step_count", "skipped_steps", "last_grad_norm", "options",
         "plateau", "param_groups", "state")


# ------------------------------------------------------- the step functions


@dataclass(frozen=True)
class Kernel:
    """How a front door drives one step function (shared with :mod:`lrfast.torch`)."""

    step: Callable
    states: tuple[str, ...]  # the function's positional state arguments, in order
    hyper: tuple[str, ...]  # its keywords that come from a param group, besides lr
    uses: Callable[[Mapping], tuple[str, ...]]  # the states a group's options need
    counts_steps: bool = True  # takes step=
    # state -> the group key of its start value (the others start at 0)
    initial: Mapping[str, str] = field(default_factory=dict)

    def hparams(self, group: Mapping, plain: Callable = lambda v: v) -> dict:
        """The step function's keywords from a param group (lr and step excluded)."""
        return {key: plain(group[key]) for key in self.hyper}

    def __call__(self, params, grads, states: Mapping, hparams: Mapping, *, lr, step,
                 grad_scale=1.0):
        """One fused update; ``states`` maps state names to lists (absent: unused)."""
        if self.counts_steps:
            hparams = {**hparams, "step": step}
        self.step(params, grads, *(states.get(name) for name in self.states), lr=lr,
                  grad_scale=grad_scale, **hparams)

    def validate(self, hparams: Mapping, lr) -> None:
        """Checks the hyperparameters the way a step would, by a step over no tensors."""
        self([], [], {name: [] for name in self.states}, hparams, lr=lr, step=1)

    def check_group(self, group: Mapping, lr, plain: Callable = lambda v: v) -> None:
        """Checks a param group's hyperparameters, the states' start values included."""
        self.validate(self.hparams(group, plain), lr)
        self.check_start_values(group, plain)

    def check_start_values(self, group: Mapping, plain: Callable = lambda v: v) -> None:
        """Checks the group's start values of states (Adagrad's initial_accumulator_value)."""
        for key in self.initial.values():
            _hparams.non_negative(key, plain(group[key]))


def _adam_uses(hp):
    return ("exp_avgs", "exp_avg_sqs") + (("max_exp_avg_sqs",) if hp["amsgrad"] else ())


def _rmsprop_uses(hp):
    return (("square_avgs",) + (("momentum_buffers",) if hp["momentum"] else ())
            + (("grad_avgs",) if hp["centered"] else ()))


_ADAM_STATES = ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
_ADAM_HYPER = ("betas", "eps", "weight_decay", "amsgrad", "maximize")

KERNELS = {
    "sgd": Kernel(steps.sgd_step, ("momentum_buffers",),
                  ("momentum", "dampening", "nesterov", "weight_decay", "maximize"),
                  lambda hp: ("momentum_buffers",) if hp["momentum"] else ()),
    "adam": Kernel(steps.adam_step, _ADAM_STATES, _ADAM_HYPER, _adam_uses),
    "adamw": Kernel(steps.adamw_step, _ADAM_STATES, _ADAM_HYPER, _adam_uses),
    "rmsprop": Kernel(steps.rmsprop_step, ("square_avgs", "momentum_buffers", "grad_avgs"),
                      ("alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
                      _rmsprop_uses, counts_steps=False),
    "adagrad": Kernel(steps.adagrad_step, ("state_sums",),
                      ("lr_decay", "weight_decay", "eps", "maximize"),
                      lambda hp: ("state_sums",),
                      initial={"state_sums": "initial_accumulator_value"}),
    "adadelta": Kernel(steps.adadelta_step, ("square_avgs", "acc_deltas"),
                       ("rho", "eps", "weight_decay", "maximize"),
                       lambda hp: ("square_avgs", "acc_deltas"), counts_steps=False),
}


# ------------------------------------------------------------ the optimizer


class Optimizer:
    """Base class: parameter groups, schedules, clipping, skipping, checkpoints.

    A subclass names its :class:`Kernel` and passes its hyperparameter
    defaults; the module docstring describes the options. Attributes:

    * ``param_groups``: dicts holding ``"params"`` and every hyperparameter;
      the hyperparameters may be changed between steps (they are checked at
      each step), the parameter lists may not.
    * ``state``: one dict per group, state name (as the step function calls
      it) -> one array per parameter, e.g. ``opt.state[0]["exp_avgs"]``.
    * ``step_count`` (completed updates), ``skipped_steps``,
      ``last_grad_norm``, ``plateau``, and :attr:`lr` / :attr:`lrs`.
    """

    kernel: Kernel

    def __init__(self, params, defaults: dict, *, plateau: ReduceLROnPlateau | None = None,
                 max_grad_norm: float | None = None, clip_value: float | None = None,
                 grad_scale: float = 1.0, skip_nonfinite: bool = False):
        self.defaults = defaults
        self._set_options(_options(max_grad_norm=max_grad_norm, clip_value=clip_value,
                                   grad_scale=grad_scale, skip_nonfinite=skip_nonfinite))
        if plateau is not None and not isinstance(plateau, ReduceLROnPlateau):
            raise TypeError(f"plateau must be a ReduceLROnPlateau, got {type(plateau).__name__}")
        self.plateau = plateau
        self.step_count = 0  # completed updates; the next one is step_count + 1
        self.skipped_steps = 0
        self.last_grad_norm: float | None = None
        self.param_groups = [self._new_group(spec, i)
                             for i, spec in enumerate(_group_specs(params))]
        params = [p for group in self.param_groups for p in group["params"]]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears more than once")
        _core.check((params,), ("params",), False)  # float32/64, C-contiguous, writeable
        self.state: list[dict[str, list[np.ndarray]]] = [{} for _ in self.param_groups]
        for index, group in enumerate(self.param_groups):
            self._states(index, group, self.kernel.hparams(group))

    # -- hyperparameters and rates

    def _new_group(self, spec: dict, index: int) -> dict:
        group = dict(spec)
        params = group.pop("params")
        params = [params] if isinstance(params, np.ndarray) else list(params)
        unknown = set(group) - set(self.defaults)
        if unknown:
            raise TypeError(f"param group {index} has unknown hyperparameters {sorted(unknown)}; "
                            f"{type(self).__name__} takes {list(self.defaults)}")
        for j, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"param group {index}: params[{j}] must be a NumPy array, "
                                f"got {type(p).__name__}")
        group = {"params": params, **self.defaults, **group}
        self._check_group(group)
        return group

    def _check_group(self, group: Mapping) -> None:
        lr = group["lr"]
        self.kernel.check_group(group, lr(0) if isinstance(lr, Schedule) else lr)

    def _set_options(self, options: Mapping) -> None:
        self.max_grad_norm = options["max_grad_norm"]
        self.clip_value = options["clip_value"]
        self.grad_scale = options["grad_scale"]
        self.skip_nonfinite = options["skip_nonfinite"]

    def _rate(self, group: Mapping) -> float:
        lr = group["lr"]
        rate = lr(self.step_count) if isinstance(lr, Schedule) else lr
        return rate if self.plateau is None else self.plateau.rate(rate)

    @property
    def lr(self) -> float:
        """The learning rate the next step applies to the first param group."""
        return self._rate(self.param_groups[0])

    @property
    def lrs(self) -> list[float]:
        """The learning rates the next step applies, one per param group."""
        return [self._rate(group) for group in self.param_groups]

    def report(self, metric) -> float:
        """Feeds ``metric`` to the attached ReduceLROnPlateau; returns the new :attr:`lr`."""
        if self.plateau is None:
            raise RuntimeError("no ReduceLROnPlateau attached: pass plateau= to the constructor")
        self.plateau.step(metric)
        return self.lr

    # -- the update

    def _states(self, index: int, group: Mapping, hparams: Mapping) -> dict:
        """The group's state arrays its options use, allocated on first use."""
        state = self.state[index]
        for name in self.kernel.uses(hparams):
            if name not in state:
                start = group[self.kernel.initial[name]] if name in self.kernel.initial else 0
                state[name] = [np.full(p.shape, start, p.dtype) for p in group["params"]]
        return state

    def step(self, grads) -> bool:
        """Applies one update to every parameter; returns False for a skipped step.

        ``grads``: one array per parameter, shaped and typed like it, in the
        order of the groups and of their parameters. Everything is checked
        before anything is written, so a bad gradient leaves the optimizer,
        the parameters and the gradients as they were.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        grads = tensors("grads", grads)
        if len(grads) != len(params):
            raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
        calls = []
        for group in self.param_groups:
            hparams, lr = self.kernel.hparams(group), self._rate(group)
            self.kernel.validate(hparams, lr)
            calls.append((group, hparams, lr))
        _core.check((params, grads), ("params", "grads"), self.clip_value is not None)

        if self.max_grad_norm is not None or self.skip_nonfinite:
            self.last_grad_norm = global_norm(grads) * self.grad_scale
            if self.skip_nonfinite and not math.isfinite(self.last_grad_norm):
                self.skipped_steps += 1
                return False
        if self.clip_value is not None:
            clip_grad_value(grads, self.clip_value / self.grad_scale)
        scale = self.grad_scale
        if self.max_grad_norm is not None:
            scale *= clip_coefficient(self.last_grad_norm, self.max_grad_norm)

        start = 0
        for index, (group, hparams, lr) in enumerate(calls):
            stop = start + len(group["params"])
            self.kernel(group["params"], grads[start:stop], self._states(index, group, hparams),
                        hparams, lr=lr, step=self.step_count + 1, grad_scale=scale)
            start = stop
        self.step_count += 1
        return True

    # -- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of everything but the parameters: plain data and copied arrays."""
        return self._state_dict(copy=True)

    def _state_dict(self, copy: bool) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "optimizer": type(self).__name__,
            "step_count": self.step_count,
            "skipped_steps": self.skipped_steps,
            "last_grad_norm": self.last_grad_norm,
            "options": {"max_grad_norm": self.max_grad_norm, "clip_value": self.clip_value,
                        "grad_scale": self.grad_scale, "skip_nonfinite": self.skip_nonfinite},
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "param_groups": [{key: _encode(value) for key, value in group.items()
                              if key != "params"} for group in self.param_groups],
            "state": [{name: [a.copy() if copy else a for a in arrays]
                       for name, arrays in state.items()} for state in self.state],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` output, hyperparameters and schedules included.

        Everything is checked first (same optimizer class, same number of
        groups and parameters, state arrays of the parameters' shapes and
        dtypes); on any error the optimizer is left as it was.
        """
        sd = state_dict
        missing = [key for key in _KEYS if key not in sd]
        if missing:
            raise ValueError(f"not an lrfast optimizer state dict: missing {missing}")
        if sd["format"] != _FORMAT:
            raise ValueError(f"unknown state dict format {sd['format']!r}, expected {_FORMAT!r}")
        if sd["optimizer"] != type(self).__name__:
            raise ValueError(f"state dict of {sd['optimizer']!r} cannot be loaded into "
                             f"{type(self).__name__}")
        n = len(self.param_groups)
        if len(sd["param_groups"]) != n or len(sd["state"]) != n:
            raise ValueError(f"state dict has {len(sd['param_groups'])} param groups, "
                             f"the optimizer {n}")
        groups = [self._loaded_group(saved, group, i)
                  for i, (saved, group) in enumerate(zip(sd["param_groups"], self.param_groups))]
        states = [self._loaded_state(saved, group, i)
                  for i, (saved, group) in enumerate(zip(sd["state"], self.param_groups))]
        options = _options(**sd["options"])
        plateau = None
        if sd["plateau"] is not None:
            plateau = ReduceLROnPlateau()
            plateau.load_state_dict(sd["plateau"])
        counts = [_count(key, sd[key]) for key in ("step_count", "skipped_steps")]
        norm = sd["last_grad_norm"]
        norm = None if norm is None else _hparams.real("last_grad_norm", norm)

        # all checked: commit
        self.param_groups, self.state = groups, states
        self._set_options(options)
        if plateau is not None and self.plateau is not None:
            self.plateau.load_state_dict(sd["plateau"])  # keeps the caller's object
        else:
            self.plateau = plateau
        self.step_count, self.skipped_steps = counts
        self.last_grad_norm = norm

    def _loaded_group(self, saved: Mapping, group: Mapping, index: int) -> dict:
        if set(saved) != set(self.defaults):
            raise ValueError(f"param group {index} of the state dict has hyperparameters "
                             f"{sorted(saved)}, expected {sorted(self.defaults)}")
        loaded = {"params": group["params"], **{key: _decode(v) for key, v in saved.items()}}
        self._check_group(loaded)
        return loaded

    def _loaded_state(self, saved: Mapping, group: Mapping, index: int) -> dict:
        params, state = group["params"], {}
        for name, arrays in saved.items():
            if name not in self.kernel.states:
                raise ValueError(f"param group {index}: unknown state {name!r}")
            if len(arrays) != len(params):
                raise ValueError(f"param group {index}: {len(arrays)} arrays of {name} "
                                 f"for {len(params)} parameters")
            for j, (a, p) in enumerate(zip(arrays, params)):
                if not isinstance(a, np.ndarray) or a.shape != p.shape or a.dtype != p.dtype:
                    raise ValueError(f"param group {index}: {name}[{j}] must be an array of shape "
                                     f"{p.shape} and dtype {p.dtype}, like its parameter")
            state[name] = [np.array(a, order="C") for a in arrays]
        return state

    def save(self, path: str | os.PathLike) -> None:
        """Writes the state dict to ``path`` as an ``.npz`` file (arrays as
        members, the rest as JSON in ``meta``), through a temporary file so an
        interrupted save leaves an older checkpoint intact."""
        sd = self._state_dict(copy=False)
        arrays = {f"state/{i}/{name}/{j}": a for i, state in enumerate(sd["state"])
                  for name, lst in state.items() for j, a in enumerate(lst)}
        sd["state"] = [{name: len(lst) for name, lst in state.items()} for state in sd["state"]]
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(sd)), **arrays)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """Restores a checkpoint written by :meth:`save`. A file that is not
        one (truncated, foreign) raises ValueError and changes nothing."""
        with open(path, "rb") as f:
            try:
                with np.load(f, allow_pickle=False) as npz:
                    sd = json.loads(npz["meta"].item())
                    sd["state"] = [{name: [npz[f"state/{i}/{name}/{j}"] for j in range(count)]
                                    for name, count in state.items()}
                                   for i, state in enumerate(sd["state"])]
            except Exception as exc:  # whatever a damaged zip, npy or JSON raises
                raise ValueError(f"{os.fspath(path)!r} is not a readable lrfast optimizer "
                                 f"checkpoint: {type(exc).__name__}: {exc}") from exc
        self.load_state_dict(sd)


def _group_specs(params) -> list[dict]:
    if isinstance(params, np.ndarray) or isinstance(params, Mapping):
        raise TypeError("params must be a list of arrays or of param group dicts")
    params = list(params)
    if not params:
        raise ValueError("the optimizer got an empty parameter list")
    if all(isinstance(p, Mapping) for p in params):
        for i, spec in enumerate(params):
            if "params" not in spec:
                raise ValueError(f"param group {i} has no 'params'")
        return params
    if any(isinstance(p, Mapping) for p in params):
        raise TypeError("params must be all arrays or all param group dicts")
    return [{"params": params}]


def _options(*, max_grad_norm, clip_value, grad_scale, skip_nonfinite) -> dict:
    if max_grad_norm is not None and clip_value is not None:
        raise ValueError("choose max_grad_norm or clip_value, not both")
    grad_scale = _hparams.finite("grad_scale", grad_scale)
    if grad_scale <= 0:
        raise ValueError(f"grad_scale must be > 0, got {grad_scale}")
    _hparams.flag("skip_nonfinite", skip_nonfinite)
    return {"max_grad_norm": None if max_grad_norm is None
            else _hparams.non_negative("max_grad_norm", max_grad_norm),
            "clip_value": None if clip_value is None
            else _hparams.non_negative("clip_value", clip_value),
            "grad_scale": grad_scale, "skip_nonfinite": bool(skip_nonfinite)}


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


# hyperparameters as JSON: a schedule as its to_dict(), NumPy scalars as Python
# numbers; tuples become lists, which _decode turns back into tuples
def _encode(value):
    if isinstance(value, Schedule):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _decode(value):
    if isinstance(value, Mapping):
        return from_dict(value)
    return tuple(value) if isinstance(value, list) else value


# ------------------------------------------------------------ the optimizers


class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD);
    state ``momentum_buffers`` when ``momentum != 0``. See :func:`lrfast.sgd_step`."""

    kernel = KERNELS["sgd"]

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), **options)


class Adam(Optimizer):
    """Adam (torch.optim.Adam); states ``exp_avgs``, ``exp_avg_sqs`` and, with
    ``amsgrad``, ``max_exp_avg_sqs``. See :func:`lrfast.adam_step`."""

    kernel = KERNELS["adam"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize), **options)


class AdamW(Adam):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay. See
    :func:`lrfast.adamw_step`."""

    kernel = KERNELS["adamw"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, **options):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         **options)


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop); states ``square_avgs``, ``momentum_buffers``
    when ``momentum > 0``, ``grad_avgs`` when ``centered``. See
    :func:`lrfast.rmsprop_step`."""

    kernel = KERNELS["rmsprop"]

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize),
                         **options)


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad); state ``state_sums``, starting at
    ``initial_accumulator_value``. See :func:`lrfast.adagrad_step`."""

    kernel = KERNELS["adagrad"]

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), **options)


class Adadelta(Optimizer):
    """Adadelta (torch.optim.Adadelta); states ``square_avgs`` and ``acc_deltas``.
    See :func:`lrfast.adadelta_step`."""

    kernel = KERNELS["adadelta"]

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False,
                 **options):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **options)
