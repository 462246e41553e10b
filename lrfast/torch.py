"""torch.optim drop-ins that run lrfast's fused kernels: change one line. ::

    optimizer = lrfast.torch.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

SGD, Adam, AdamW, RMSprop, Adagrad and Adadelta are ``torch.optim.Optimizer``
subclasses taking torch's constructor arguments (same names, defaults and
param groups) and keeping torch's state format (``state[p]["step"]`` a float32
scalar tensor, ``"exp_avg"``, ``"exp_avg_sq"``, ``"max_exp_avg_sq"``,
``"momentum_buffer"``, ``"square_avg"``, ``"grad_avg"``, ``"sum"``,
``"acc_delta"``), so a state dict loads into ``torch.optim.X`` and back.
Whatever drives a torch optimizer drives these: ``torch.optim.lr_scheduler``
(it writes ``param_groups[i]["lr"]``, read at every step), clipping with
``torch.nn.utils.clip_grad_norm_``, ``torch.amp.GradScaler`` (``unscale_``,
then ``step`` when the gradients are finite), closures, and
``torch.distributed.optim.ZeroRedundancyOptimizer(optimizer_class=...)``.

A step updates each param group with one call of its lrfast step function
over all the group's parameters that have a gradient (``grad is None``:
skipped, as in torch), float32 and float64 together. CPU tensors go to the
C++ kernels as NumPy views of their memory, without copies; CUDA tensors go to
lrfast's Numba CUDA path (``pip install lrfast[cuda]``). The numerics are
torch's single-tensor formulas (see :mod:`lrfast.reference`).

``foreach`` and ``fused`` are accepted and ignored (there is one
implementation); ``capturable=True``, ``differentiable=True`` (at construction
or set in a param group later), sparse gradients, non-contiguous parameters
and dtypes other than float32/float64 raise an error. A step checks every
group (options, hyperparameters, parameters) before it writes anything.

Layouts the kernels cannot read in place are taken as torch.optim takes them:
a gradient that is not contiguous (transposed, expanded) or has its negative
bit set is read from a contiguous copy made for that step (the parameter
itself is always updated in place), and a state tensor that is not contiguous,
as ``load_state_dict`` may bring from a torch state dict, is replaced in the
state dict by a contiguous copy once, before the first step that uses it.

As torch.optim's in-place updates do, a step moves the autograd version
counter of every tensor it writes (parameters, states and step counts), so a
``backward()`` through a graph that saved the old values raises instead of
running with the new ones. It costs no pass over the data.

Why a step costs little Python: the NumPy views of a group's parameters and
states, and its step counters, are made once and reused while the group has
the same parameters with gradients, the same storages (data pointers are
checked every step) and the same state; ``load_state_dict`` starts afresh.
Replace state tensors only through ``load_state_dict``. The ``"step"``
tensors of the parameters updated by one call are views into one tensor, so
a single add advances them all (torch's foreach and fused paths spend ~3 µs
per parameter there on a CPU).
"""

from __future__ import annotations

import operator

import torch

from . import cuda
from .optim import KERNELS, Kernel

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"]

# the step functions' state arguments -> torch.optim's state keys
_STATE_KEYS = {
    "momentum_buffers": "momentum_buffer", "exp_avgs": "exp_avg", "exp_avg_sqs": "exp_avg_sq",
    "max_exp_avg_sqs": "max_exp_avg_sq", "square_avgs": "square_avg", "grad_avgs": "grad_avg",
    "state_sums": "sum", "acc_deltas": "acc_delta",
}


def _plain(value):
    """A hyperparameter as Python numbers (torch allows 0-d tensors, e.g. for lr)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    return tuple(map(_plain, value)) if isinstance(value, tuple) else value


def _step_dtype() -> torch.dtype:
    # torch.optim's dtype for "step": float32 unless the default dtype is float64
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_supported(group) -> None:
    for flag in ("capturable", "differentiable"):
        if group.get(flag):
            raise ValueError(f"lrfast.torch optimizers do not support {flag}=True")


def _host_view(t: torch.Tensor):
    """A NumPy array sharing the memory of the CPU tensor ``t``."""
    try:
        return t.numpy()
    except RuntimeError:  # t requires grad: a parameter, or a grad made with create_graph
        return t.detach().numpy()


def _contiguous(grads: list) -> list:
    """The gradients, with a contiguous copy of each one that is not
    (transposed, expanded): the kernels read C-contiguous memory."""
    if all(map(torch.Tensor.is_contiguous, grads)):
        return grads
    for g in grads:  # a sparse gradient is never contiguous
        if g.layout != torch.strided:
            raise RuntimeError("lrfast.torch optimizers do not support sparse gradients")
    return [g.contiguous() for g in grads]


def _host_views(tensors) -> list:
    try:  # the fast path
        return list(map(torch.Tensor.numpy, tensors))
    except RuntimeError:
        return list(map(_host_view, tensors))


def _host_grad_views(grads) -> list:
    try:  # the fast path, at every step
        return list(map(torch.Tensor.numpy, grads))
    except RuntimeError:  # requires grad, or a negative-bit view: read a resolved copy
        return [_host_view(g.resolve_neg()) for g in grads]


def _device_views(tensors) -> list:
    """The params for the CUDA path, which reads ``__cuda_array_interface__``
    (of a detached view where a tensor requires grad)."""
    return list(tensors)


def _device_grad_views(grads) -> list:
    return [g.resolve_neg() for g in grads]  # the same tensor unless negative-bit


def _device_states(tensors) -> list:
    """Numba device arrays over the memory of the CUDA state tensors, made once
    per plan. The CUDA path must read a torch tensor's layout at every call
    (it can move under the same object), but trusts a numba array by
    identity: for states, which only load_state_dict replaces (and which
    starts a new plan), that saves reading thousands of layouts per step.
    Each array keeps its tensor alive."""
    from numba import cuda as numba_cuda

    return [numba_cuda.as_cuda_array(t.detach(), sync=False) for t in tensors]


def _check_param(p: torch.Tensor, where: str) -> None:
    if p.layout != torch.strided:
        raise TypeError(f"{where} is a {p.layout} tensor; lrfast updates dense tensors")
    if p.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{where} has dtype {p.dtype}; lrfast updates float32 and float64 tensors")
    if p.is_neg():
        raise ValueError(f"{where} is a negative-bit view; lrfast updates plain tensors in place")
    if not p.is_contiguous():
        raise ValueError(f"{where} is not contiguous (strides {p.stride()}); lrfast updates "
                         "contiguous tensors")
    if p.device.type == "cuda":
        try:
            cuda.backend()  # imports numba-cuda
        except ImportError as exc:
            raise ImportError(f"{where} is on {p.device}: {exc}") from exc
    elif p.device.type != "cpu":
        raise TypeError(f"{where} is on {p.device}; lrfast runs on CPU and CUDA tensors")


class _Call:
    """One step-function call: the parameters of a group on one device with
    the same number of completed updates (all of them, unless some missed
    updates), as views made once."""

    def __init__(self, opt, params, index, device, completed, names):
        # positions in the group's list of parameters with gradients; None: all
        self.index = None if len(index) == len(params) else index
        on_host = device.type == "cpu"
        self.views = _host_views if on_host else _device_views
        self.grad_views = _host_grad_views if on_host else _device_grad_views
        state_views = _host_views if on_host else _device_states
        params = [params[i] for i in index]
        states = [opt.state[p] for p in params]
        tensors = {name: [s[_STATE_KEYS[name]] for s in states] for name in names}
        # what a step writes besides the step counts, whose own in-place add moves their version
        self.written = params + [t for ts in tensors.values() for t in ts]
        self.params = self.views(params)
        self.states = {name: state_views(ts) for name, ts in tensors.items()}
        self.completed = completed
        self.counter = None
        if opt._keeps_step:
            self.counter = torch.full((len(params),), completed, dtype=_step_dtype())
            for j, state in enumerate(states):
                state["step"] = self.counter[j]  # a float32 scalar, as torch keeps it

    def run(self, kernel: Kernel, grads, hparams, lr) -> None:
        if self.index is not None:
            grads = [grads[i] for i in self.index]
        kernel(self.params, self.grad_views(grads), self.states, hparams, lr=lr,
               step=self.completed + 1)
        # the kernel wrote through views autograd does not see: tell it, as
        # torch's in-place ops do, so backward() refuses graphs with old values
        torch.autograd.graph.increment_version(self.written)
        self.completed += 1
        if self.counter is not None:
            self.counter += 1


class _Plan:
    """A param group's update, prepared once and reused while it fits."""

    def __init__(self, opt, index, group, kernel, names, params):
        self.group, self.state, self.kernel, self.names = group, opt.state, kernel, names
        self.params = params
        self.pointers = [p.data_ptr() for p in params]
        calls: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            _check_param(p, f"param group {index}, parameter {i} (of those with a grad)")
            completed = opt._init_state(p, group, kernel, names)
            calls.setdefault((p.device, completed), []).append(i)
        self.calls = [_Call(opt, params, i, device, completed, names)
                      for (device, completed), i in calls.items()]

    def fits(self, group, state, kernel, names, params) -> bool:
        return (group is self.group and state is self.state and kernel is self.kernel
                and names == self.names and len(params) == len(self.params)
                and all(map(operator.is_, params, self.params))
                and list(map(torch.Tensor.data_ptr, params)) == self.pointers)


class _Optimizer(torch.optim.Optimizer):
    """Base class: torch's Optimizer whose step runs lrfast's step functions."""

    kernel: Kernel
    _keeps_step = True  # torch keeps state["step"] (SGD does not)

    def __init__(self, params, defaults):
        _check_supported(defaults)
        self._kernel(defaults).check_group(defaults, _plain(defaults["lr"]), _plain)
        super().__init__(params, defaults)
        self._plans: dict[int, _Plan] = {}

    def _kernel(self, group) -> Kernel:
        return self.kernel

    def __setstate__(self, state):  # also the end of load_state_dict
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._plans = {}

    def _init_state(self, p, group, kernel, names) -> int:
        """Creates ``p``'s missing state as torch.optim would; returns the
        number of updates ``p`` has had."""
        state = self.state[p]
        if self._keeps_step:
            completed = int(state.get("step", 0))
            state.setdefault("step", torch.tensor(0.0, dtype=_step_dtype()))
        else:  # SGD counts nothing; only its first step differs (buffer = gradient)
            completed = int(all(_STATE_KEYS[name] in state for name in names))
        for name in names:
            key = _STATE_KEYS[name]
            if key not in state:
                start = _plain(group[kernel.initial[name]]) if name in kernel.initial else 0
                state[key] = torch.full_like(p, start, memory_format=torch.preserve_format)
            elif not state[key].is_contiguous() or state[key].is_neg():
                # e.g. loaded from a torch state dict: written in place from now on
                state[key] = state[key].resolve_neg().contiguous()
        return completed

    def step(self, closure=None):
        """Performs one update (one fused call per param group); returns the
        closure's loss, if a closure was given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Every group is checked before the first write, so an error leaves
        # them all as they were (as a step function does for its list).
        work = []
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            kernel = self._kernel(group)
            hparams = kernel.hparams(group, _plain)
            lr = _plain(group["lr"])
            # what the constructor refuses, refused when set later too; the
            # first call checks its own hyperparameters before it writes
            _check_supported(group)
            kernel.check_start_values(group, _plain)
            if work:
                kernel.validate(hparams, lr)
            names = kernel.uses(hparams)
            plan = self._plans.get(index)
            if plan is None or not plan.fits(group, self.state, kernel, names, params):
                plan = self._plans[index] = _Plan(self, index, group, kernel, names, params)
            work.append((plan, kernel, _contiguous([p.grad for p in params]), hparams, lr))
        for plan, kernel, grads, hparams, lr in work:
            for call in plan.calls:
                call.run(kernel, grads, hparams, lr)
        return loss


class SGD(_Optimizer):
    """torch.optim.SGD running :func:`lrfast.sgd_step`."""

    kernel = KERNELS["sgd"]
    _keeps_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))


class Adam(_Optimizer):
    """torch.optim.Adam running :func:`lrfast.adam_step`, or
    :func:`lrfast.adamw_step` with ``decoupled_weight_decay=True``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                                      capturable=capturable, differentiable=differentiable,
                                      fused=fused, decoupled_weight_decay=decoupled_weight_decay))

    def _kernel(self, group) -> Kernel:
        return KERNELS["adamw" if group["decoupled_weight_decay"] else "adam"]


class AdamW(Adam):
    """torch.optim.AdamW running :func:`lrfast.adamw_step`."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # as torch's AdamW: always decoupled
            group["decoupled_weight_decay"] = True


class RMSprop(_Optimizer):
    """torch.optim.RMSprop running :func:`lrfast.rmsprop_step`."""

    kernel = KERNELS["rmsprop"]

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable))


class Adagrad(_Optimizer):
    """torch.optim.Adagrad running :func:`lrfast.adagrad_step`. As torch does,
    the state of every parameter is made by the constructor."""

    kernel = KERNELS["adagrad"]

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, fused=fused))
        for group in self.param_groups:
            names = self.kernel.uses(self.kernel.hparams(group, _plain))
            for p in group["params"]:
                self._init_state(p, group, self.kernel, names)


class Adadelta(_Optimizer):
    """torch.optim.Adadelta running :func:`lrfast.adadelta_step`."""

    kernel = KERNELS["adadelta"]

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      foreach=foreach, capturable=capturable,
                                      maximize=maximize, differentiable=differentiable))
