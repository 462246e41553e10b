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

The optimizers that take the learning rate off the user's hands take their
reference packages' arguments: :class:`Lion` (lion-pytorch),
:class:`ScheduleFreeSGD` and :class:`ScheduleFreeAdamW` (schedulefree: call
``train()`` before training and ``eval()`` before evaluating or saving; the
groups start in eval mode and a step there raises ValueError) and
:class:`Prodigy` (prodigyopt; its estimate is ``opt.d``). Their param groups
also hold the scalars the packages keep there (schedule-free's ``k``,
``lr_max``, ``weight_sum``, ``train_mode``; Prodigy's ``d``, ``d_max``, ...),
which checkpoints carry.

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
    A step whose gradients hold an inf or NaN (whose global norm is not finite),
    or would once scaled (``grad_scale`` and the clip coefficient multiply
    each gradient in its own dtype, so a float32 gradient of 1e10 times 1e30
    overflows), changes nothing, neither parameters nor state nor step count:
    ``step()`` returns False and ``opt.skipped_steps`` counts it.
``state_dtype``
    The states' dtype: ``None`` (the parameter's), ``"float32"``,
    ``"bfloat16"``, ``"q8"`` (a :class:`lrfast.Q8State`, 8-bit block-wise) or
    ``"q4"`` (a :class:`lrfast.Q4State`, torchao's 4-bit layout); parameters
    under 4096 elements keep float32 states, see :func:`lrfast.zeros_state`.
    Momentum buffers, first moments and RMSprop's grad averages take the
    signed map, the never-negative states the unsigned one. Schedule-free's
    ``zs`` (the weights) and Prodigy's ``p0s`` keep the parameter's dtype
    (``zs`` float32 too, where ``state_dtype="float32"`` for 16-bit ones).
``stochastic_rounding``, ``seed``
    Round bfloat16/float16 parameter writes stochastically (float32 and
    float64 parameters ignore it). The update after ``step_count`` others
    passes ``seed=lrfast.precision.mix_seed(seed, step_count, group_index, 0)``
    to group ``group_index``'s step function, so a run is reproducible from
    its seed, every param of every group draws its own bits at every update,
    and no (seed, update) pair draws another's.

Parameters may be float32, float64, bfloat16 (``ml_dtypes.bfloat16``) or
float16 arrays, and gradients of their dtype (or float32 for 16-bit ones).

``opt.last_grad_norm`` is the global gradient norm of the last step (None
unless ``max_grad_norm`` or ``skip_nonfinite`` made the step compute it).
``state_dict()``/``load_state_dict()`` and ``save(path)``/``load(path)`` (an
``.npz`` file read without pickle) capture everything a run needs to continue
bit-identically: state arrays, step count, hyperparameters, schedules,
plateau and options (``state_dtype``, ``stochastic_rounding`` and ``seed``
among them: a checkpoint's states keep its ``state_dtype``); the parameters
themselves are the caller's to save. In ``state_dict()`` a q8 or q4 state is
a :class:`lrfast.Q8State` or :class:`lrfast.Q4State` (copied); in a saved
file, members ``.../codes`` and ``.../absmax`` beside the arrays'
``state/<group>/<name>/<index>``, and a
bfloat16 array as its uint16 bits (``.npy`` has no bfloat16).
``save`` writes a temporary file of its own beside ``path`` and renames it
over ``path`` once complete, so a failed or concurrent save never leaves a
damaged checkpoint. A malformed checkpoint raises ValueError naming the field
and changes nothing; ``load`` reads a state array only after its header
matched the shape and dtype the parameter's state must have.

Threads: one optimizer's ``step``, ``state_dict``, ``load_state_dict``,
``save`` and ``load`` hold its lock (a ``threading.RLock``), so calls from
several threads run one after the other: a ``save`` while another thread
steps writes the state before or after that step, never a mix, and two
threads stepping n times each make 2n steps. Optimizers do not share locks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import numbers
import os
import secrets
import threading
import zipfile
from typing import IO, Any, Callable, Mapping, Union

import numpy as np

from . import _adafactor, _core, _hparams, _lowp, _prodigy, _schedulefree, steps
from ._kernel import Kernel, Piece, Slot, Update
from ._adaptive import ADAMAX, NADAM, RADAM
from ._lion import LION
from ._backend import tensors
from .clip import clip_coefficient, clip_grad_value, global_norm
from .precision import (SIGNED_STATES, Q4State, Q8State, bfloat16, low_bit_shapes,
                        quantize_low_bit)
from .schedules import ReduceLROnPlateau, Schedule, from_dict

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Lion",
           "ScheduleFreeSGD", "ScheduleFreeAdamW", "Prodigy", "NAdam", "RAdam", "Adamax",
           "Adafactor"]

_FORMAT = "lrfast.optim/1"
_KEYS = ("format", "optimizer", "step_count", "skipped_steps", "last_grad_norm", "options",
         "plateau", "param_groups", "state")
_OPTIONS = ("max_grad_norm", "clip_value", "grad_scale", "skip_nonfinite", "state_dtype",
            "stochastic_rounding", "seed")
# the options checkpoints written before low precision lack, at the values they ran with
_LOWP_DEFAULTS = {"state_dtype": None, "stochastic_rounding": False, "seed": 0}
# the JSON of a checkpoint, in characters: far beyond what thousands of groups need
_MAX_META = 2**22

State = Union[np.ndarray, Q8State, Q4State]  # one parameter's state


# ------------------------------------------------------- the step functions


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
                      slots={"state_sums": Slot(start="initial_accumulator_value")}),
    "adadelta": Kernel(steps.adadelta_step, ("square_avgs", "acc_deltas"),
                       ("rho", "eps", "weight_decay", "maximize"),
                       lambda hp: ("square_avgs", "acc_deltas"), counts_steps=False),
    "lion": LION,
    "schedulefree_sgd": _schedulefree.SGD,
    "schedulefree_adamw": _schedulefree.ADAMW,
    "prodigy": _prodigy.PRODIGY,
    "nadam": NADAM,
    "radam": RADAM,
    "adamax": ADAMAX,
}


# ------------------------------------------------------------ the optimizer


def exclusive(method):
    """``method`` run holding its optimizer's lock (``self._lock``)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


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
                 grad_scale: float = 1.0, skip_nonfinite: bool = False,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        self._lock = threading.RLock()
        self.defaults = defaults
        self._set_options(_options(max_grad_norm=max_grad_norm, clip_value=clip_value,
                                   grad_scale=grad_scale, skip_nonfinite=skip_nonfinite,
                                   state_dtype=state_dtype,
                                   stochastic_rounding=stochastic_rounding, seed=seed))
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
        _core.check((params,), ("params",), False)  # float dtypes, C-contiguous, writeable
        _lowp.warn_nothing_to_round(stochastic_rounding, params)
        self.state: list[dict[str, list[State]]] = [{} for _ in self.param_groups]
        for index, group in enumerate(self.param_groups):  # all but copies of the params
            self._states(index, group, self.kernel.hparams(group), first_step=False)

    @property
    def lock(self) -> threading.RLock:
        """The lock that ``step``, ``state_dict``, ``load_state_dict``, ``save`` and ``load`` hold."""
        return self._lock

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for index, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {index}")
            lines += [f"    {key}: {value!r}" for key, value in sorted(group.items())
                      if key != "params"]
        options = ", ".join(f"{key}={getattr(self, key)!r}" for key in _OPTIONS)
        return "\n".join(lines + [f"Options: {options}", ")"])

    @exclusive
    def add_param_group(self, param_group: Mapping) -> None:
        """Adds a group (a dict with ``"params"`` and any hyperparameters; the
        rest from the constructor's), as torch.optim's does: its gradients
        come after the others' in ``step(grads)``. Checked like the
        constructor's groups, its states made at once; a parameter already in
        the optimizer is refused."""
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError("param_group must be a dict holding 'params'")
        index = len(self.param_groups)
        group = self._new_group(self.kernel.joining(dict(param_group), self.param_groups), index)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError(f"param group {index}: a parameter appears more than once in "
                                 "the optimizer")
            seen.add(id(p))
        _core.check((group["params"],), ("params",), False)
        _lowp.warn_nothing_to_round(self.stochastic_rounding, group["params"])
        self.param_groups.append(group)
        self.state.append({})
        self._states(index, group, self.kernel.hparams(group), first_step=False)

    def __getstate__(self) -> dict:  # copy and pickle without the lock
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

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
        self.kernel.check_group(group, rate_at(group["lr"], 0))

    def _set_options(self, options: Mapping) -> None:
        self.max_grad_norm = options["max_grad_norm"]
        self.clip_value = options["clip_value"]
        self.grad_scale = options["grad_scale"]
        self.skip_nonfinite = options["skip_nonfinite"]
        self.state_dtype = options["state_dtype"]
        self.stochastic_rounding = options["stochastic_rounding"]
        self.seed = options["seed"]

    def _rate(self, group: Mapping) -> float:
        rate = rate_at(group["lr"], self.step_count)
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

    def _states(self, index: int, group: Mapping, hparams: Mapping, first_step=True) -> dict:
        """The group's states its options use, allocated on first use; those
        that start as copies of the params (schedule-free's z, Prodigy's p0)
        only at the ``first_step``."""
        state = self.state[index]
        for name in self.kernel.uses(hparams):
            slot = self.kernel.slot(name)
            if name not in state and (first_step or not slot.copies_param):
                start = slot.start_value(group)
                state[name] = [self._layout(p, name, self.state_dtype, hparams).new(
                    _start_values(p, slot, hparams) if slot.copies_param else start)
                    for p in group["params"]]
        return state

    def _layout(self, param: np.ndarray, name: str, state_dtype: str | None,
                hparams: Mapping) -> _StateLayout:
        slot = self.kernel.slot(name)
        return _StateLayout(param, name, slot.state_dtype(state_dtype, param.dtype.name),
                            slot.shape(param.shape, hparams))

    def _checkpoint_state(self, read: Callable[[_StateLayout], State], param: np.ndarray,
                          name: str, state_dtype: str | None, hparams: Mapping) -> State:
        """``read(layout)``, the state ``name`` of ``param`` from a checkpoint
        (checked against ``layout``, the one its state must have). A state
        that holds weights (schedule-free's z), which lrfast kept in the
        ``state_dtype`` before it kept the param's precision (a q8 state,
        bfloat16 for a float32 param), is read as such and converted."""
        slot, layout = self.kernel.slot(name), self._layout(param, name, state_dtype, hparams)
        try:
            return read(layout)
        except ValueError as exc:
            if not slot.weights or slot.state_dtype(state_dtype, param.dtype.name) == state_dtype:
                raise
            error = exc
        try:
            old = read(_StateLayout(param, name, state_dtype, slot.shape(param.shape, hparams)))
        except ValueError:
            raise error from None  # neither layout: the error of the one it must have
        return layout.new(old.dequantize() if isinstance(old, (Q8State, Q4State)) else old)

    @exclusive
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
        updates = [Update(group, self.kernel.hparams(group), self._rate(group))
                   for group in self.param_groups]
        self.kernel.check(self.param_groups, updates)
        _core.check((params, grads), ("params", "grads"), self.clip_value is not None)

        scale, scaled_norm = self.grad_scale, None
        if self.max_grad_norm is not None or self.skip_nonfinite:
            norm = global_norm(grads)
            scaled_norm = norm * self.grad_scale
            if self.max_grad_norm is not None:
                scale *= clip_coefficient(scaled_norm, self.max_grad_norm)
            if self.skip_nonfinite and not self._scaled_grads_finite(grads, norm, scale):
                self.last_grad_norm = scaled_norm
                self.skipped_steps += 1
                return False
            if not math.isfinite(scaled_norm):
                raise ValueError(f"the gradients' global norm is {scaled_norm}: max_grad_norm "
                                 "cannot clip an inf or NaN (skip_nonfinite=True skips such "
                                 "steps); nothing was changed")

        start = 0
        for index, update in enumerate(updates):
            params = update.group["params"]
            states = self._states(index, update.group, update.hparams)
            rounding = _lowp.rounding(self.stochastic_rounding, self.seed, self.step_count,
                                      index)
            update.pieces.append(Piece(params, grads[start:start + len(params)], states,
                                       self.step_count + 1, rounding, _written))
            start += len(params)
        self.kernel.preflight(self.param_groups, updates, scale)
        if self.clip_value is not None:
            clip_grad_value(grads, self.clip_value / self.grad_scale)
        self.kernel.run(self.param_groups, updates, grad_scale=scale, grad_norm=scaled_norm)
        self.last_grad_norm = scaled_norm
        self.step_count += 1
        return True

    def _scaled_grads_finite(self, grads, norm: float, scale: float) -> bool:
        """Whether the gradients the kernels compute are all finite: each
        ``g * T(scale)`` in the gradient's dtype T, ``g`` clamped first when
        ``clip_value`` is set. ``norm`` (their 2-norm) bounds every ``|g|``,
        which settles the usual case with one product; past float32's range
        the largest ``|g|`` of each dtype decides, exactly as the kernels round."""
        if not math.isfinite(norm * self.grad_scale):
            return False  # an inf or NaN among them
        clamp = math.inf if self.clip_value is None else self.clip_value / self.grad_scale
        # Below 2**127 both T(scale) and |g| * T(scale) stay finite in float32
        # (T(scale) rounds up by at most 2**-24), a fortiori in float64.
        if max(min(norm, clamp), 1.0) * abs(scale) <= 2.0**127:
            return True
        arrays = [np.asarray(g) for g in grads]
        with np.errstate(over="ignore", invalid="ignore"):
            for dtype in {a.dtype for a in arrays}:
                largest = dtype.type(global_norm([a for a in arrays if a.dtype == dtype], math.inf))
                product = min(largest, dtype.type(clamp)) * dtype.type(abs(scale))
                if not np.isfinite(product):  # inf, or NaN from 0 * T(scale) = 0 * inf
                    return False
        return True

    # -- checkpoints

    @exclusive
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of everything but the parameters: plain data and copied
        arrays (and copied :class:`lrfast.Q8State` / :class:`lrfast.Q4State`
        objects for low-bit states)."""
        return self._state_dict(copy=True)

    def _state_dict(self, copy: bool) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "optimizer": type(self).__name__,
            "step_count": self.step_count,
            "skipped_steps": self.skipped_steps,
            "last_grad_norm": self.last_grad_norm,
            "options": {key: getattr(self, key) for key in _OPTIONS},
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "param_groups": [{key: _encode(value) for key, value in group.items()
                              if key != "params"} for group in self.param_groups],
            "state": [{name: [a.copy() if copy else a for a in arrays]
                       for name, arrays in state.items()} for state in self.state],
        }

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` output, hyperparameters and schedules included.

        Everything is checked first (same optimizer class, same number of
        groups and parameters, state arrays of the parameters' shapes and
        dtypes, every field well formed); any error is a ValueError naming the
        field, and leaves the optimizer as it was.
        """
        sd = state_dict
        self._check_outline(sd)
        groups = [_field(f"param_groups[{i}]", self._loaded_group, saved, group)
                  for i, (saved, group) in enumerate(zip(sd["param_groups"], self.param_groups))]
        options = _field("options", _loaded_options, sd["options"])
        states = [_field(f"state[{i}]", self._loaded_state, saved, group, options["state_dtype"])
                  for i, (saved, group) in enumerate(zip(sd["state"], groups))]
        plateau = None
        if sd["plateau"] is not None:
            plateau = ReduceLROnPlateau()
            _field("plateau", plateau.load_state_dict, sd["plateau"])
        counts = [_field(key, _count, key, sd[key]) for key in ("step_count", "skipped_steps")]
        norm = sd["last_grad_norm"]
        if norm is not None:
            norm = _field("last_grad_norm", _hparams.real, "last_grad_norm", norm)

        # all checked: commit
        self.param_groups, self.state = groups, states
        self._set_options(options)
        if plateau is not None and self.plateau is not None:
            self.plateau.load_state_dict(sd["plateau"])  # keeps the caller's object
        else:
            self.plateau = plateau
        self.step_count, self.skipped_steps = counts
        self.last_grad_norm = norm

    def _check_outline(self, sd) -> None:
        """The keys, the kind and the number of groups of a state dict."""
        if not isinstance(sd, Mapping):
            raise ValueError(f"not an lrfast optimizer state dict: a {type(sd).__name__}")
        missing = [key for key in _KEYS if key not in sd]
        if missing:
            raise ValueError(f"not an lrfast optimizer state dict: missing {missing}")
        unexpected = [key for key in sd if key not in _KEYS]
        if unexpected:
            raise ValueError(f"lrfast optimizer state dict with unexpected keys {unexpected}")
        if sd["format"] != _FORMAT:
            raise ValueError(f"unknown state dict format {sd['format']!r}, expected {_FORMAT!r}")
        if sd["optimizer"] != type(self).__name__:
            raise ValueError(f"state dict of {sd['optimizer']!r} cannot be loaded into "
                             f"{type(self).__name__}")
        n = len(self.param_groups)
        for key in ("param_groups", "state"):
            if not isinstance(sd[key], (list, tuple)) or len(sd[key]) != n:
                got = (f"{len(sd[key])} param groups" if isinstance(sd[key], (list, tuple))
                       else f"a {type(sd[key]).__name__}")
                raise ValueError(f"state dict field {key} must hold one entry for each of the "
                                 f"optimizer's {n} param groups, got {got}")

    def _loaded_group(self, saved, group: Mapping) -> dict:
        if not isinstance(saved, Mapping):
            raise ValueError(f"must be a dict of hyperparameters, got a {type(saved).__name__}")
        if set(saved) != set(self.defaults):
            raise ValueError(f"has hyperparameters {sorted(map(str, saved))}, expected "
                             f"{sorted(self.defaults)}")
        loaded = {"params": group["params"]}
        for key, value in saved.items():
            if value != _CALLABLE:
                loaded[key] = _decode(value)
            elif callable(group[key]) and not isinstance(group[key], Schedule):
                loaded[key] = group[key]
            else:
                raise ValueError(f"{key} was a plain callable, which a checkpoint does not "
                                 f"hold: give the optimizer that callable as {key} before "
                                 "loading")
        self._check_group(loaded)
        return loaded

    def _loaded_state(self, saved, group: Mapping, state_dtype: str | None) -> dict:
        if not isinstance(saved, Mapping):
            raise ValueError(f"must map state names to lists of arrays, got a "
                             f"{type(saved).__name__}")
        params, state = group["params"], {}
        for name, arrays in saved.items():
            if name not in self.kernel.states:
                raise ValueError(f"unknown state {name!r}")
            if not isinstance(arrays, (list, tuple)) or len(arrays) != len(params):
                got = len(arrays) if isinstance(arrays, (list, tuple)) else type(arrays).__name__
                raise ValueError(f"{name} must be a list of {len(params)} arrays, one per "
                                 f"parameter, got {got}")
            hparams = self.kernel.hparams(group)
            state[name] = [self._checkpoint_state(
                               functools.partial(_checked_copy, f"{name}[{j}]", a), p, name,
                               state_dtype, hparams)
                           for j, (a, p) in enumerate(zip(arrays, params))]
        return state

    @exclusive
    def save(self, path: str | os.PathLike) -> None:
        """Writes the state dict to ``path`` as an ``.npz`` file (arrays as
        members, the rest as JSON in ``meta``) through a temporary file of its
        own, renamed over ``path`` once written and flushed to disk: a failed
        or interrupted save leaves an older checkpoint intact and removes its
        temporary file, and saves from several threads to one path each
        leave a whole checkpoint."""
        sd = self._state_dict(copy=False)
        arrays: dict[str, Any] = {member: array for i, state in enumerate(sd["state"])
                  for name, lst in state.items() for j, a in enumerate(lst)
                  for member, array in _members(f"state/{i}/{name}/{j}", a)}
        sd["state"] = [{name: len(lst) for name, lst in state.items()} for state in sd["state"]]
        _write_atomically(os.fspath(path),
                          lambda f: np.savez(f, meta=np.array(json.dumps(sd)), **arrays))

    @exclusive
    def load(self, path: str | os.PathLike) -> None:
        """Restores a checkpoint written by :meth:`save`. A file that is not
        one (truncated, foreign, malformed) raises ValueError and changes
        nothing. Each state array is read only once its ``.npy`` header has
        matched the shape and dtype its parameter's state must have (with the
        checkpoint's ``state_dtype``), so a file cannot make this decompress
        more than such a state."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            with _readable(path):
                archive = zipfile.ZipFile(f)
            meta = _read_npy(archive, "meta.npy", path, _is_meta(path))
            with _readable(path):
                sd = json.loads(meta.item())
            self._check_outline(sd)
            state_dtype = _field("options", _loaded_options, sd["options"])["state_dtype"]
            # the groups first: Prodigy's slice_p sets the shapes of its states
            groups = [_field(f"param_groups[{i}]", self._loaded_group, saved, group)
                      for i, (saved, group) in enumerate(zip(sd["param_groups"],
                                                             self.param_groups))]
            sd["state"] = [_field(f"state[{i}]", self._read_states, archive, path, i, counts,
                                  state_dtype, group)
                           for i, (counts, group) in enumerate(zip(sd["state"], groups))]
        self.load_state_dict(sd)

    def _read_states(self, archive: zipfile.ZipFile, path: str, index: int, counts,
                     state_dtype: str | None, saved_group) -> dict:
        """Group ``index``'s states from a checkpoint whose meta gives their
        number per state name; each array is checked against the layout of
        its parameter's state (under the checkpoint's ``state_dtype`` and its
        checked group ``saved_group``, for Prodigy's ``slice_p``) before it is read."""
        params = self.param_groups[index]["params"]
        hparams = self.kernel.hparams(saved_group)
        if not isinstance(counts, Mapping):
            raise ValueError(f"must map state names to numbers of arrays, got a "
                             f"{type(counts).__name__}")
        state = {}
        for name, count in counts.items():
            if type(count) is not int or not 0 <= count <= len(params):
                raise ValueError(f"{name} must be a number of arrays from 0 to {len(params)}, "
                                 f"got {count!r}")
            if name not in self.kernel.states:
                raise ValueError(f"unknown state {name!r}")
            state[name] = [self._checkpoint_state(
                               functools.partial(_read_state, archive, f"state/{index}/{name}/{j}",
                                                 path, f"{name}[{j}]"), p, name, state_dtype,
                               hparams)
                           for j, p in zip(range(count), params)]
        return state


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


def _options(*, max_grad_norm, clip_value, grad_scale, skip_nonfinite, state_dtype,
             stochastic_rounding, seed) -> dict:
    if max_grad_norm is not None and clip_value is not None:
        raise ValueError("choose max_grad_norm or clip_value, not both")
    grad_scale = _hparams.gradient_factor(grad_scale)
    if grad_scale <= 0:
        raise ValueError(f"grad_scale must be > 0, got {grad_scale}")
    _hparams.flag("skip_nonfinite", skip_nonfinite)
    return {"max_grad_norm": None if max_grad_norm is None
            else _hparams.non_negative("max_grad_norm", max_grad_norm),
            "clip_value": None if clip_value is None
            else _hparams.non_negative("clip_value", clip_value),
            "grad_scale": grad_scale, "skip_nonfinite": bool(skip_nonfinite),
            "state_dtype": _lowp.check_state_dtype(state_dtype),
            "stochastic_rounding": _lowp.check_stochastic_rounding(stochastic_rounding),
            "seed": _hparams.random_seed(seed)}


def _count(name: str, value) -> int:
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not 0 <= int(value) <= _hparams.MAX_STEP):
        got = _hparams.describe_int(value) if isinstance(value, int) else repr(value)
        raise ValueError(f"{name} must be an integer from 0 to 2**63 - 1, got {got}")
    return int(value)


def _field(name: str, check: Callable, *args):
    """``check(*args)``, with a TypeError or ValueError it raises turned into
    a ValueError naming ``name``, the field of the state dict being checked."""
    try:
        return check(*args)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"state dict field {name}: {exc}") from exc


def _loaded_options(saved) -> dict:
    if isinstance(saved, Mapping) and set(saved) == set(_OPTIONS) - set(_LOWP_DEFAULTS):
        saved = {**saved, **_LOWP_DEFAULTS}  # written before low precision
    if not isinstance(saved, Mapping) or set(saved) != set(_OPTIONS):
        got = sorted(map(str, saved)) if isinstance(saved, Mapping) else type(saved).__name__
        raise ValueError(f"must be a dict with the keys {list(_OPTIONS)}, got {got}")
    return _options(**saved)


# ------------------------------------------------------------ the states


class _StateLayout:
    """What a parameter's state must be under a ``state_dtype``: its parts,
    each an array of a shape and dtype; ``""`` for a plain array, ``"codes"``
    and ``"absmax"`` for a Q8State or Q4State (of the signedness its state
    name gets)."""

    def __init__(self, param: np.ndarray, name: str, state_dtype: str | None,
                 shape: tuple[int, ...]):
        size = int(np.prod(shape))
        self.kind = _lowp.low_bit(state_dtype, size)
        self.shape = shape
        self.signed = name in SIGNED_STATES
        self.parts: dict[str, tuple[tuple[int, ...], np.dtype]]
        if self.kind is not None:
            codes_shape, absmax_shape = low_bit_shapes(self.kind, shape)
            self.parts = {"codes": (codes_shape, np.dtype(np.uint8)),
                          "absmax": (absmax_shape, np.dtype(np.float32))}
        elif state_dtype is None:
            self.parts = {"": (shape, param.dtype)}
        else:  # "float32", "bfloat16", and low bits for tensors too small to quantize
            dtype = bfloat16() if state_dtype == "bfloat16" else np.dtype(np.float32)
            self.parts = {"": (shape, dtype)}

    def new(self, start) -> State:
        """A state holding ``start``: a number everywhere, or an array of its shape."""
        if self.kind is not None:
            (codes_shape, _), (blocks, _) = self.parts["codes"], self.parts["absmax"]
            if np.ndim(start):
                codes, absmax = quantize_low_bit(self.kind, start, self.signed)
                return self.join({"codes": codes.reshape(codes_shape), "absmax": absmax})
            code, absmax = _lowp.low_bit_constant(self.kind, start, self.signed)
            return self.join({"codes": np.full(codes_shape, code, np.uint8),
                              "absmax": np.full(blocks, absmax, np.float32)})
        shape, dtype = self.parts[""]
        if np.ndim(start):
            return np.array(start, dtype, order="C").reshape(shape)
        return np.full(shape, start, dtype)

    def check(self, where: str, part: str, shape: tuple, dtype: np.dtype) -> None:
        want_shape, want_dtype = self.parts[part]
        if shape != want_shape or dtype != want_dtype:
            what = f"{where}.{part}" if part else where
            raise ValueError(f"{what} must be an array of shape {want_shape} and dtype "
                             f"{want_dtype}, for its parameter and state_dtype; got shape "
                             f"{shape} and dtype {dtype}")

    def split(self, where: str, state) -> dict[str, Any]:
        """The parts of an in-memory state, each checked."""
        cls = {"q8": Q8State, "q4": Q4State}.get(self.kind)  # type: ignore[arg-type]
        if (cls is None and isinstance(state, (Q8State, Q4State))) or (
                cls is not None and type(state) is not cls):
            want = (f"a {cls.__name__} (signed={self.signed})" if cls is not None
                    else f"an array of dtype {self.parts[''][1]}")
            raise ValueError(f"{where} must be {want} for its parameter and state_dtype, got a "
                             f"{type(state).__name__}")
        if cls is not None and state.signed != self.signed:
            raise ValueError(f"{where} must be a {cls.__name__} with signed={self.signed}, got "
                             f"signed={state.signed}")
        if cls is Q4State and state.shape != self.shape:
            raise ValueError(f"{where} must be a Q4State of shape {self.shape}, got {state.shape}")
        parts = {"codes": state.codes, "absmax": state.absmax} if cls else {"": state}
        for part, array in parts.items():
            if not isinstance(array, np.ndarray):
                raise ValueError(f"{where} must hold arrays, got a {type(array).__name__}")
            self.check(where, part, array.shape, array.dtype)
        return parts

    def join(self, parts: Mapping[str, np.ndarray]) -> State:
        """The state of checked parts (which it takes, not copies)."""
        if self.kind == "q8":
            return Q8State(parts["codes"], parts["absmax"], self.signed)
        if self.kind == "q4":
            return Q4State(parts["codes"], parts["absmax"], self.shape, self.signed)
        return parts[""]


def _written(advance: bool) -> None:
    """A piece's bookkeeping after a pass: none (the optimizer counts its steps)."""


def _start_values(param: np.ndarray, slot: Slot, hparams: Mapping) -> np.ndarray:
    """The param's values a state copies at the first step (float32 for 16-bit
    params, whose states are float32 or narrower)."""
    values = param.ravel()[::int(hparams["slice_p"])] if slot.sliced else param
    return values.astype(np.float32) if values.dtype.itemsize == 2 else values


def _checked_copy(where: str, state, layout: _StateLayout) -> State:
    """A C-contiguous copy of a state from a state dict, once checked."""
    parts = layout.split(where, state)
    return layout.join({part: np.array(a, order="C") for part, a in parts.items()})


def _stored(dtype: np.dtype) -> np.dtype:
    """The dtype of an array in a checkpoint file: .npy has no bfloat16 (it
    would read back as raw bytes, ``V2``), so bfloat16 travels as its bits."""
    return np.dtype(np.uint16) if dtype.name == "bfloat16" else dtype


def _members(prefix: str, state: State) -> list[tuple[str, np.ndarray]]:
    """The .npz members of one state: ``prefix``, or ``prefix/codes`` and
    ``prefix/absmax`` for a Q8State or Q4State."""
    parts = ({"/codes": state.codes, "/absmax": state.absmax}
             if isinstance(state, (Q8State, Q4State)) else {"": state})
    return [(prefix + suffix, a.view(_stored(a.dtype))) for suffix, a in parts.items()]


def _read_state(archive: zipfile.ZipFile, prefix: str, path: str, where: str,
                layout: _StateLayout) -> State:
    """The state in the members at ``prefix`` of a checkpoint, each read once
    its header matched ``layout``."""
    parts = {}
    for part, (_, dtype) in layout.parts.items():
        def check(shape, stored, part=part, dtype=dtype) -> None:
            layout.check(where, part, shape, dtype if stored == _stored(dtype) else stored)
        member = f"{prefix}/{part}.npy" if part else f"{prefix}.npy"
        parts[part] = _read_npy(archive, member, path, check).view(dtype)
    return layout.join(parts)


# ------------------------------------------------------------ checkpoint files


def _write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Calls ``write`` on a new temporary file beside ``path``, flushes it to
    disk and renames it over ``path``: readers find the old file or the new
    one, whole. On any error the temporary file is removed."""
    folder, name = os.path.split(os.path.abspath(path))
    # A unique name, created exclusively. Not tempfile.mkstemp: its files are
    # private (0600), and a checkpoint gets the permissions open() would give.
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def _readable(path: str):
    """Turns whatever a damaged zip, .npy or JSON raises into a ValueError."""
    try:
        yield
    except Exception as exc:
        raise ValueError(f"{path!r} is not a readable lrfast optimizer checkpoint: "
                         f"{type(exc).__name__}: {exc}") from exc


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy(archive: zipfile.ZipFile, member: str, path: str,
              check: Callable[[tuple, np.dtype], None]) -> np.ndarray:
    """The array in ``member`` (an .npy file) of a checkpoint, read only once
    ``check(shape, dtype)`` has accepted its header (or raised ValueError)."""
    with _readable(path), archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADERS:
            raise ValueError(f"{member} has .npy format version {version}")
        shape, _, dtype = _NPY_HEADERS[version](f)
    check(shape, dtype)
    with _readable(path), archive.open(member) as f:
        array = np.lib.format.read_array(f, allow_pickle=False)
        if f.read(1):  # reading to the end also has zipfile check the CRC
            raise ValueError(f"{member} holds more than its array")
    return array


def _is_meta(path: str) -> Callable:
    """A check that an array of this shape and dtype can be a checkpoint's meta."""
    def check(shape, dtype) -> None:
        if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * _MAX_META:
            raise ValueError(f"{path!r} is not a readable lrfast optimizer checkpoint: its meta "
                             f"is not JSON text of at most {_MAX_META} characters (shape "
                             f"{shape}, dtype {dtype})")
    return check


# hyperparameters as JSON: a schedule as its to_dict(), NumPy scalars as Python
# numbers; tuples become lists, which _decode turns back into tuples
def rate_at(lr, t: int):
    """The rate of ``lr`` (a number, a schedule or any callable ``lr(t)``, as
    optax takes) at ``t`` completed updates; a callable's 0-d array result
    (NumPy, JAX, torch) as a float."""
    if not callable(lr):
        return lr
    value = lr(t)
    if isinstance(value, numbers.Real):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"lr({t}) must return a real number, got a "
                        f"{type(value).__name__}") from None


# A plain callable rate in a checkpoint: code, not data (load keeps the optimizer's own).
_CALLABLE = {"type": "callable"}


def _encode(value):
    if isinstance(value, Schedule):
        return value.to_dict()
    if callable(value):
        return dict(_CALLABLE)
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



class Lion(Optimizer):
    """Lion (lion-pytorch's ``Lion``); state ``exp_avgs``. With
    ``decoupled_weight_decay`` the decay is ``weight_decay / init_lr`` per
    unit of rate, ``init_lr`` being the constructor's ``lr`` (its start value
    for a schedule), kept in every group. See :func:`lrfast.lion_step`."""

    kernel = KERNELS["lion"]

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *,
                 decoupled_weight_decay=False, maximize=False, **options):
        _hparams.positive("lr", rate_at(lr, 0))  # lion-pytorch's assert; a step takes 0
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      init_lr=rate_at(lr, 0), maximize=maximize), **options)


class _ScheduleFree(Optimizer):
    """The train/eval switch of the schedule-free optimizers (see
    :mod:`lrfast._schedulefree`): ``train()`` before training, ``eval()``
    before evaluating or saving; a step in eval mode raises ValueError."""

    kernel: _schedulefree.ScheduleFreeKernel

    @exclusive
    def train(self) -> None:
        """Params to y, where the gradients are taken."""
        _schedulefree.switch(self.kernel, self.param_groups, True, self._with_z)

    @exclusive
    def eval(self) -> None:
        """Params to x, the average, to evaluate and to save."""
        _schedulefree.switch(self.kernel, self.param_groups, False, self._with_z)

    def _with_z(self, index: int, group: Mapping) -> list[tuple[list, list]]:
        zs = self.state[index].get("zs")
        return [(group["params"], zs)] if zs else []


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD (schedulefree's ``SGDScheduleFree``); state ``zs``,
    made at the first step in the parameter's dtype (float32 where
    ``state_dtype="float32"`` for a 16-bit parameter): ``z`` holds the
    weights, which a q8, q4 or 16-bit state of a float32 parameter cannot
    (a checkpoint with one, as earlier versions wrote, loads converted).
    Group keys besides the options: ``k``, ``lr_max``, ``weight_sum``,
    ``scheduled_lr``, ``train_mode`` (starting False: call ``train()``
    first). See :func:`lrfast.schedulefree_sgd_step`."""

    kernel = _schedulefree.SGD

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize,
                                      **_schedulefree.START), **options)


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW (schedulefree's ``AdamWScheduleFree``); states
    ``zs`` (made at the first step, stored as :class:`ScheduleFreeSGD`'s)
    and ``exp_avg_sqs`` (of the ``state_dtype``). Group keys as
    :class:`ScheduleFreeSGD`'s. See :func:`lrfast.schedulefree_adamw_step`."""

    kernel = _schedulefree.ADAMW

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize,
                                      **_schedulefree.START), **options)


class Prodigy(Optimizer):
    """Prodigy (prodigyopt's ``Prodigy``; see :mod:`lrfast._prodigy`);
    states ``ss`` and ``p0s`` (1-D, every ``slice_p``-th element; ``p0s``
    copies the params at the first step, in their dtype), ``exp_avgs`` (when
    ``betas[0] > 0``) and ``exp_avg_sqs``. The estimate is :attr:`d`; every
    group holds it as prodigyopt's keys ``d``, ``d_max``, ``d_numerator``,
    ``d_denom``, ``d_hat`` and ``k``. See :func:`lrfast.prodigy_reduce` and
    :func:`lrfast.prodigy_update`."""

    kernel = KERNELS["prodigy"]

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8,
                 weight_decay=0.0, decouple=True, use_bias_correction=False,
                 safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf, slice_p=1, *,
                 maximize=False, **options):
        _hparams.positive("lr", rate_at(lr, 0))
        super().__init__(params, dict(lr=lr, betas=betas, beta3=beta3, eps=eps,
                                      weight_decay=weight_decay, decouple=decouple,
                                      use_bias_correction=use_bias_correction,
                                      safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                                      growth_rate=growth_rate, slice_p=slice_p,
                                      maximize=maximize, **_prodigy.start(d0),
                                      d_denom=0.0, d_hat=0.0), **options)

    @property
    def d(self) -> float:
        """Prodigy's estimate of the distance to the solution (the step size per unit of lr)."""
        return self.param_groups[0]["d"]


class NAdam(Optimizer):
    """NAdam (torch.optim.NAdam); states ``exp_avgs`` and ``exp_avg_sqs``,
    and the group key ``mu_product`` (the product of the momentum schedule
    so far, kept in float32 as torch keeps it, so the steps are torch's bit
    for bit). See :func:`lrfast.nadam_step`."""

    kernel = KERNELS["nadam"]

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False,
                 **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize, mu_product=1.0), **options)


class RAdam(Optimizer):
    """RAdam (torch.optim.RAdam); states ``exp_avgs`` and ``exp_avg_sqs``.
    See :func:`lrfast.radam_step`."""

    kernel = KERNELS["radam"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), **options)


class Adamax(Optimizer):
    """Adamax (torch.optim.Adamax); states ``exp_avgs`` and ``exp_infs``
    (torch's ``exp_inf``). See :func:`lrfast.adamax_step`."""

    kernel = KERNELS["adamax"]

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **options)
class Adafactor(Optimizer):
    """torch.optim.Adafactor (torch 2.13): see :func:`lrfast.adafactor_step`.
    States ``row_vars`` and ``col_vars`` (a param of 2 or more dims: shapes
    ``(..., n, 1)`` and ``(..., 1, m)``) and ``variances`` (0 or 1 dims: the
    param's shape), each in the param's dtype; the two a param does not use
    are empty arrays. ``state_dtype`` and ``stochastic_rounding`` are refused
    (its factors are tiny: they stay in the params' dtype)."""

    kernel = _adafactor.ADAFACTOR

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, maximize=False, **options):
        for option in ("state_dtype", "stochastic_rounding"):
            if options.get(option):
                raise ValueError(f"Adafactor takes no {option}: its states keep the params' "
                                 "dtype (float32 or float64)")
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                      weight_decay=weight_decay, maximize=maximize), **options)
