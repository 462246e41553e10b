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

Lion, ScheduleFreeSGD, ScheduleFreeAdamW and Prodigy are drop-ins for
``lion_pytorch.Lion``, ``schedulefree.SGDScheduleFree`` /
``AdamWScheduleFree`` (``train()``/``eval()``; ``step()`` in eval mode
raises ValueError) and ``prodigyopt.Prodigy`` (``param_groups[i]["d"]``),
with their arguments, group keys and state keys, so that state dicts load
both ways.

A step updates each param group with one call of its lrfast step function
over all the group's parameters that have a gradient (``grad is None``:
skipped, as in torch), of any of the dtypes float32, float64, bfloat16 and
float16 together (a bfloat16 model is a one-line change too). CPU tensors go to the
C++ kernels as NumPy views of their memory, without copies (bfloat16 ones as
``ml_dtypes.bfloat16`` views); CUDA tensors go to lrfast's Numba CUDA path
(``pip install lrfast[cuda]``). The numerics are torch's single-tensor
formulas (see :mod:`lrfast.reference`), in float32 for 16-bit parameters.

:class:`CPUOffload` runs any of these classes on the host for a model on the
GPU whose optimizer state does not fit there: host masters (float32, or
bfloat16 with stochastic rounding) and states, gradients streamed down as
backward produces them, the step bucket by bucket while updated params stream
back (see its docstring).

Low precision: every class takes, keyword-only after torch's arguments (and
per param group, like torch's options):

``state_dtype``
    ``None`` (the parameter's dtype, as torch), ``"float32"``, ``"bfloat16"``,
    ``"q8"`` or ``"q4"``: the dtype of the states a parameter gets at its
    first step; but schedule-free's ``"z"`` (the weights) and Prodigy's
    ``"p0"`` keep the parameter's dtype (``"z"`` float32 too, where
    ``"float32"`` for a 16-bit parameter).
    Float states keep torch's keys. A q8 state (parameters of 4096 elements
    or more; smaller ones get float32, see :func:`lrfast.zeros_state`) is
    kept as three entries of ``state[p]``, e.g. for ``exp_avg``:
    ``"exp_avg_codes"`` (uint8, the parameter's shape), ``"exp_avg_absmax"``
    (float32, one per block of 256 elements) and ``"exp_avg_signed"`` (a
    bool: which dynamic map the codes index; momentum buffers, first moments
    and grad averages are signed). A q4 state has the same three, its codes
    flat (two a byte, torchao's layout; one absmax per block of 128), and
    ``"exp_avg_shape"`` (the state's shape). The steps read them through
    :class:`lrfast.Q8State` / :class:`lrfast.Q4State` objects over the
    tensors' memory. A torchao ``AdamW4bit``/``Adam4bit`` state dict loads
    into ``AdamW``/``Adam`` with ``state_dtype="q4"``, a bitsandbytes
    ``AdamW8bit``/``Adam8bit`` one with ``state_dtype="q8"`` (see
    ``load_state_dict``); :func:`to_float_state_dict` turns a state dict with
    low-bit states into one that ``torch.optim`` loads.
``stochastic_rounding``, ``seed``
    Round 16-bit parameter writes stochastically. The update after ``k``
    others passes ``seed=lrfast.precision.mix_seed(seed, k, i, j)`` to the
    call over group ``i``'s params from its ``j``-th with a gradient, ``k``
    being ``state[p]["step"]`` (SGD, which keeps no step, keeps one too when
    ``stochastic_rounding`` is on): every param of every group draws its own
    bits at every update, no (seed, update) pair draws another's, and a run
    resumed from a checkpoint draws the same bits as one that went straight
    through.

``torch.save(optimizer.state_dict())`` and ``load_state_dict`` round-trip all
of it bit for bit: torch.optim casts every floating-point state to its
parameter's dtype on loading, lrfast's classes keep the dtypes the state dict
holds (float32 states of a bfloat16 model, q8 codes and absmax). A state dict
with q8 states does not load into ``torch.optim`` classes; its
:func:`to_float_state_dict` does.

``foreach`` and ``fused`` are accepted and ignored (there is one
implementation); ``capturable=True``, ``differentiable=True`` (at construction
or set in a param group later), sparse gradients, non-contiguous parameters
and dtypes other than float32/float64/bfloat16/float16 raise an error. A step
checks every group (options, hyperparameters, parameters, states) before it
writes anything.

Layouts the kernels cannot read in place are taken as torch.optim takes them:
a gradient that is not contiguous (transposed, expanded) or has its negative
bit set is read from a contiguous copy made for that step (the parameter
itself is always updated in place), and a state tensor that is not contiguous,
as ``load_state_dict`` may bring from a torch state dict, is replaced in the
state dict by a contiguous copy once, before the first step that uses it.

Sharded parameters, FSDP2's (``torch.distributed.fsdp.fully_shard``) and any
other DTensors: a step updates each rank's local shards (``to_local()``) in
place, and their states are DTensors of the parameter's mesh and placements,
so ``torch.distributed.checkpoint.state_dict``'s ``get_optimizer_state_dict``
and ``set_optimizer_state_dict`` save and load them (and a state loaded
through them is stepped in place). What spans a whole parameter is reduced
over the ranks: Prodigy's sums (so ``d`` is the same on every rank, that of
one process), the norms of :func:`lrfast.global_norm` and
:func:`lrfast.clip_grad_norm` (as ``torch.nn.utils.clip_grad_norm_`` takes
them), and, for stochastic rounding, each shard draws its own bits. Prodigy's
``s`` and ``p0`` have the parameter's shape there (1-D elsewhere: a flattened
shard of unevenly split rows is no shard of a 1-D DTensor), so
``slice_p != 1`` is refused, as are q8 and q4 states (``state_dtype``), whose
blocks would straddle the shards: ValueErrors at the first step, before
anything is written. ``get/set_optimizer_state_dict`` step a fresh optimizer
at ``lr=0`` to make its states: call a schedule-free optimizer's ``train()``
first. Sharded steps run on the CPU (gloo); CUDA DTensors take the same
path, untested.

Threads: one optimizer's ``step``, ``state_dict``, ``load_state_dict`` (and
schedule-free's ``train``/``eval``) hold its lock, so calls from several
threads run one after the other: two threads stepping n times each make 2n
steps. ``state_dict()`` returns the state tensors themselves, as torch's
does: to save while another thread steps, hold the lock over both, ``with
optimizer.lock: torch.save(optimizer.state_dict(), path)``.

As torch.optim's in-place updates do, a step moves the autograd version
counter of every tensor it writes (parameters, states and step counts), so a
``backward()`` through a graph that saved the old values raises instead of
running with the new ones. It costs no pass over the data.

Why a step costs little Python: the NumPy views of a group's parameters and
states, and its step counters, are made once and reused while the group has
the same parameters with gradients, the same storages and shapes (checked
every step) and the same state; ``load_state_dict`` starts afresh. On the
CPU the C++ core checks and collects those views once, too (``_core.prepare``):
a step then hands it only the gradients' data pointers, which torch gives
their parameters' dtype, shape and device (their contiguity is checked).
Replace state tensors only through ``load_state_dict``. The ``"step"``
tensors of the parameters updated by one call are views into one tensor, so
a single add advances them all (torch's foreach and fused paths spend ~3 µs
per parameter there on a CPU).
"""

from __future__ import annotations

import functools
import importlib
import math
import operator
import threading
from itertools import chain, groupby, repeat
from typing import Callable

import torch

from . import (_backend, _core, _dtensor, _hparams, _interop, _lowp, _offload, _prodigy,
               _schedulefree)
from .steps_adafactor import adafactor_step
from ._interop import to_float_state_dict
from ._kernel import Kernel, Piece, Slot, Update
from .optim import KERNELS, exclusive
from .precision import (Q4_BLOCK, SIGNED_STATES, Q4State, Q8State, bfloat16, create_q4_map,
                        holds_param, low_bit_shapes, quantize_low_bit)

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Lion", "ScheduleFreeSGD",
           "ScheduleFreeAdamW", "Prodigy", "NAdam", "RAdam", "Adamax", "Adafactor",
           "CPUOffload", "to_float_state_dict"]

# the step functions' state arguments -> torch.optim's state keys
_STATE_KEYS = {
    "momentum_buffers": "momentum_buffer", "exp_avgs": "exp_avg", "exp_avg_sqs": "exp_avg_sq",
    "max_exp_avg_sqs": "max_exp_avg_sq", "square_avgs": "square_avg", "grad_avgs": "grad_avg",
    "state_sums": "sum", "acc_deltas": "acc_delta", "zs": "z", "ss": "s", "p0s": "p0",
    "exp_infs": "exp_inf",
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
    group["state_dtype"] = _lowp.check_state_dtype(group["state_dtype"])
    _lowp.check_stochastic_rounding(group["stochastic_rounding"])
    _hparams.random_seed(group["seed"])


def _host_view(t: torch.Tensor):
    """A NumPy array sharing the memory of the CPU tensor ``t`` (detached:
    it may require grad); for bfloat16, which NumPy lacks, an
    ``ml_dtypes.bfloat16`` array over its bits. Of a DTensor, its local shard's."""
    t = _dtensor.local(t).detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(bfloat16())
    return t.numpy()


def _with_grads(params: list) -> tuple[list, list]:
    """The params that have a gradient, and their gradients (one read of
    each ``.grad``: they cost ~0.1 us apiece)."""
    grads = [p.grad for p in params]
    if not any(map(operator.is_, grads, repeat(None))):
        return params, grads
    return [p for p, g in zip(params, grads) if g is not None], [g for g in grads if g is not None]


def _contiguous(grads: list) -> list:
    """The gradients, with a contiguous copy of each one that is not
    (transposed, expanded) or has its negative bit set: the kernels read
    plain C-contiguous memory."""
    if all(map(torch.Tensor.is_contiguous, grads)) and not any(map(torch.Tensor.is_neg, grads)):
        return grads
    for g in grads:  # a sparse gradient is never contiguous
        if g.layout != torch.strided:
            raise RuntimeError("lrfast.torch optimizers do not support sparse gradients")
    return [g.resolve_neg().contiguous() for g in grads]


def _host_views(tensors) -> list:
    try:  # the fast path
        return list(map(torch.Tensor.numpy, tensors))
    except (RuntimeError, TypeError):  # requires grad, or bfloat16
        return list(map(_host_view, tensors))


def _device_views(tensors) -> list:
    """The params for the CUDA path, which reads ``__cuda_array_interface__``
    (of a detached view where a tensor requires grad); of a DTensor, its local shard."""
    return list(map(_dtensor.local, tensors))


def _device_grad_views(grads) -> list:
    return [g.resolve_neg() for g in grads]  # the same tensor unless negative-bit


def _device_state(t: torch.Tensor):
    """A Numba device array over the memory of a CUDA state tensor, made once
    per plan. The CUDA path must read a torch tensor's layout at every call
    (it can move under the same object), but trusts a numba array by
    identity: for states, which only load_state_dict replaces (and which
    starts a new plan), that saves reading thousands of layouts per step.
    The array keeps its tensor alive. bfloat16 has no
    ``__cuda_array_interface__``: such a state goes as the tensor itself. Of
    a DTensor, its local shard's."""
    t = _dtensor.local(t)
    if t.dtype == torch.bfloat16:
        return t
    from numba import cuda as numba_cuda

    return numba_cuda.as_cuda_array(t.detach(), sync=False)


# -- states: torch's keys for float states; three entries for a q8 one, four for a q4 one


def _is_low_bit(state, key: str) -> bool:
    return f"{key}_codes" in state


def _has_state(state, key: str) -> bool:
    return key in state or _is_low_bit(state, key)


def _state_tensors(state, key: str) -> list[torch.Tensor]:
    """The tensors holding one state of a parameter (the ones a step writes)."""
    if _is_low_bit(state, key):
        return [state[f"{key}_codes"], state[f"{key}_absmax"]]
    return [state[key]]


def _state_view(state, key: str, view):
    """What a step function takes for one state: ``view(tensor)``, or a
    Q8State or Q4State over the views of its codes and absmax."""
    if f"{key}_shape" in state:
        return Q4State(view(state[f"{key}_codes"]), view(state[f"{key}_absmax"]),
                       state[f"{key}_shape"], state[f"{key}_signed"])
    if _is_low_bit(state, key):
        return Q8State(view(state[f"{key}_codes"]), view(state[f"{key}_absmax"]),
                       state[f"{key}_signed"])
    return view(state[key])


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _float_dtype(p: torch.Tensor, state_dtype) -> torch.dtype:
    """The dtype of a float state of ``p`` under ``state_dtype``."""
    return {None: p.dtype, "bfloat16": torch.bfloat16}.get(state_dtype, torch.float32)


def _new_state(p: torch.Tensor, name: str, state_dtype, slot: Slot, hparams, start) -> dict:
    """The entries of a new state of ``p``, in the shape ``slot`` gives it:
    ``start`` everywhere, or a copy of (a slice of) ``p`` if the slot says so."""
    key = _STATE_KEYS[name]
    shape = _state_shape(p, slot, hparams)
    state_dtype = slot.state_dtype(state_dtype, _dtype_name(p.dtype))
    values = None
    if slot.copies_param:
        values = p.detach()
        if values.shape != shape:  # sliced: every slice_p-th element of the flattened param
            values = values.flatten()[::int(hparams["slice_p"])]
    kind = _lowp.low_bit(state_dtype, math.prod(shape))
    if kind is not None:
        signed = name in SIGNED_STATES
        codes_shape, absmax_shape = low_bit_shapes(kind, shape)
        if values is None:
            code, absmax = _lowp.low_bit_constant(kind, start, signed)
            codes = torch.full(codes_shape, code, dtype=torch.uint8, device=p.device)
            absmaxes = torch.full(absmax_shape, absmax, dtype=torch.float32, device=p.device)
        else:
            codes, absmaxes = (torch.from_numpy(a).to(p.device) for a in quantize_low_bit(
                kind, values.float().cpu().numpy(), signed))
        entries = {f"{key}_codes": codes.reshape(codes_shape), f"{key}_absmax": absmaxes,
                   f"{key}_signed": signed}
        if kind == "q4":
            entries[f"{key}_shape"] = tuple(shape)
        return entries
    dtype = _float_dtype(p, state_dtype)
    if values is not None:
        return {key: values.to(dtype=dtype, copy=True).reshape(shape)}
    if _dtensor.is_dtensor(p):  # a DTensor of the param's mesh and placements
        return {key: torch.full_like(p, start, dtype=dtype)}
    return {key: torch.full(shape, start, dtype=dtype, device=p.device)}


def _to_param_precision(p: torch.Tensor, state: dict, key: str, dtype: torch.dtype) -> None:
    """Converts ``p``'s state ``key``, which holds weights (schedule-free's
    z), to ``dtype`` if it cannot hold ``p``'s values: a q8 or q4 state, or
    bfloat16 for a float32 parameter, as lrfast kept it (in the
    ``state_dtype``) before it kept the parameter's precision."""
    if _is_low_bit(state, key):
        values = torch.from_numpy(_state_view(state, key, lambda t: _host_view(t.cpu()))
                                  .dequantize())
        for part in ("codes", "absmax", "signed", "shape"):
            state.pop(f"{key}_{part}", None)
    elif isinstance(state.get(key), torch.Tensor) and not holds_param(
            _dtype_name(state[key].dtype), _dtype_name(p.dtype)):
        values = state[key]
    else:
        return
    state[key] = values.to(device=p.device, dtype=dtype).reshape(p.shape)


def _state_shape(p: torch.Tensor, slot: Slot, hparams) -> tuple[int, ...]:
    """The shape of a state of ``p`` in ``slot``. A DTensor's states all have
    its shape, sharded as it is: Prodigy's s and p0 too (1-D elsewhere), as
    the flattened shards of a param whose rows do not split evenly over the
    ranks are not the shards of any 1-D DTensor (slice_p=1 only, see
    _check_sharded)."""
    return tuple(p.shape) if _dtensor.is_dtensor(p) else slot.shape(tuple(p.shape), hparams)


def _from_torchao(state: dict) -> dict:
    """A parameter's state with torchao's 4-bit states (OptimState4bit, in
    lrfast's q4 layout already: codes two a byte, element 2i high) as lrfast's
    q4 entries; other entries as they are."""
    out = {}
    for key, value in state.items():
        if not (isinstance(value, torch.Tensor) and all(
                hasattr(value, a) for a in ("codes", "scale", "qmap", "signed", "block_size"))):
            out[key] = value
            continue
        signed = bool(value.signed)
        if value.block_size != Q4_BLOCK or value.codes.dtype != torch.uint8:
            raise ValueError(f"state {key!r}: a torchao state of block size {value.block_size} "
                             f"and codes of {value.codes.dtype} is not a 4-bit state of "
                             f"{Q4_BLOCK}-element blocks (AdamW4bit's)")
        if not torch.equal(value.qmap.cpu(), torch.from_numpy(create_q4_map(signed))):
            raise ValueError(f"state {key!r}: torchao's map differs from lrfast's q4 map "
                             f"(signed={signed})")
        out.update({f"{key}_codes": value.codes.detach().clone(),
                    f"{key}_absmax": value.scale.detach().float().clone(),
                    f"{key}_signed": signed, f"{key}_shape": tuple(value.shape)})
    return out


def _check_state(p: torch.Tensor, state, name: str, where: str, shape,
                 param_dtype: bool) -> None:
    """A clear error, before any write, for a state (e.g. from a state dict)
    that does not fit its parameter (``name``: the step function's name of
    the state; ``shape``: the state's; ``param_dtype``: the state must have
    the parameter's dtype)."""
    key = _STATE_KEYS[name]
    if _is_low_bit(state, key):
        q4 = f"{key}_shape" in state
        kind = "q4" if q4 else "q8"
        entries = [f"{key}_codes", f"{key}_absmax", f"{key}_signed"] + [f"{key}_shape"] * q4
        missing = [entry for entry in entries if entry not in state]
        if missing:
            raise ValueError(f"{where}: {kind} state {key!r} lacks {missing}; it is kept as "
                             f"{entries}")
        stored = state.get(f"{key}_shape")
        if q4 and not (isinstance(stored, (tuple, list)) and tuple(stored) == tuple(shape)):
            raise ValueError(f"{where}: q4 state {key!r} has {key}_shape {stored!r}; its "
                             f"parameter needs {tuple(shape)}")
        signed = state[f"{key}_signed"]
        if not isinstance(signed, bool):
            raise ValueError(f"{where}: {kind} state {key!r} needs a bool {key}_signed, got "
                             f"a {type(signed).__name__}")
        if not signed and name in SIGNED_STATES:
            raise ValueError(f"{where}: {kind} state {key!r} has {key}_signed=False, but "
                             f"{key} can be negative: it needs the signed map")
        codes_shape, absmax_shape = low_bit_shapes(kind, shape)
        want = {f"{key}_codes": (torch.uint8, codes_shape),
                f"{key}_absmax": (torch.float32, absmax_shape)}
    else:
        want = {key: (p.dtype if param_dtype else None, shape)}
    for entry, (dtype, shape) in want.items():
        t = state[entry]
        if not isinstance(t, torch.Tensor) or t.device != p.device or t.shape != shape:
            got = (f"shape {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor)
                   else f"a {type(t).__name__}")
            raise ValueError(f"{where}: state {entry!r} must be a tensor of shape "
                             f"{tuple(shape)} on {p.device}, got {got}")
        why = _dtensor.mismatch(p, t)
        if why:
            raise ValueError(f"{where}: state {entry!r} {why}")
        allowed = (dtype,) if dtype else (torch.float32, p.dtype, torch.bfloat16)
        if t.dtype not in allowed:
            raise TypeError(f"{where}: state {entry!r} has dtype {t.dtype}; it must be "
                            + (f"{dtype}" if dtype else "float32, bfloat16 or the parameter's "
                               f"dtype {p.dtype}"))


def _check_sharded(p, state, group, kernel: Kernel, names, where: str) -> None:
    """What a DTensor param (FSDP2's) cannot have, refused before its states are made."""
    low_bit = [_STATE_KEYS[name] for name in names if _is_low_bit(state, _STATE_KEYS[name])]
    if group["state_dtype"] in ("q8", "q4") or low_bit:
        what = (f"state_dtype={group['state_dtype']!r}" if not low_bit
                else f"its low-bit state {low_bit[0]!r}")
        raise ValueError(f"{where} is a DTensor (sharded, e.g. by FSDP2's fully_shard): "
                         f"{what} is not supported for DTensor parameters, whose local shards "
                         "do not split into whole blocks of a q8 or q4 state; use "
                         "state_dtype=None, 'float32' or 'bfloat16'")
    sliced = [name for name in names if kernel.slot(name).sliced]
    if sliced and _hparams.slice_step(group["slice_p"]) != 1:
        raise ValueError(f"{where} is a DTensor (sharded, e.g. by FSDP2's fully_shard): "
                         f"slice_p={group['slice_p']!r} is not supported for DTensor "
                         "parameters, whose shards do not hold every slice_p-th element of "
                         "the flattened parameter; use slice_p=1")


def _check_param(p: torch.Tensor, where: str) -> None:
    _dtensor.check_param(p, where)
    p = _dtensor.local(p)  # what the kernels step
    if p.layout != torch.strided:
        raise TypeError(f"{where} is a {p.layout} tensor; lrfast updates dense tensors")
    if p.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"{where} has dtype {p.dtype}; lrfast updates float32, float64, "
                        "bfloat16 and float16 tensors")
    if p.is_neg():
        raise ValueError(f"{where} is a negative-bit view; lrfast updates plain tensors in place")
    if not p.is_contiguous():
        raise ValueError(f"{where} is not contiguous (strides {p.stride()}); lrfast updates "
                         "contiguous tensors")
    if p.device.type == "cuda":
        try:
            _backend.cuda_backend()  # imports numba-cuda
        except ImportError as exc:
            raise ImportError(f"{where} is on {p.device}: {exc}") from exc
    elif p.device.type != "cpu":
        raise TypeError(f"{where} is on {p.device}; lrfast runs on CPU and CUDA tensors")


class _Call:
    """One step-function call: the parameters of a group on one device with
    the same number of completed updates (all of them, unless some missed
    updates) and sharded alike over the ranks (``shards``, see
    :func:`lrfast._dtensor.sharding`), as views made once (of the local
    shards of DTensors; the ``flat`` states as 1-D views)."""

    def __init__(self, opt, params, group_index, index, device, completed, shards, names, flat,
                 counts_steps, scalar_states):
        # positions in the group's list of parameters with gradients; None: all
        self.index = None if len(index) == len(params) else index
        # where its random bits come from; each shard of a param draws its own
        self.stream = (group_index, index[0]) + _dtensor.shard_coordinate(shards)
        # Prodigy's sums over the whole params: this rank's, then all-reduced
        self.across = None if shards is None else functools.partial(_dtensor.all_reduce,
                                                                     where=shards)
        on_host = device.type == "cpu"
        self.views = _host_views if on_host else _device_views
        # on the host the grads go as tensors to prepared calls (see run), on CUDA as views
        self.grad_views = list if on_host else _device_grad_views
        self.via = self.run if on_host else None
        self.prepared: dict[tuple, _core.Prepared] = {}
        state_view = _host_view if on_host else _device_state

        def flat_view(t):  # Prodigy's s and p0, which a DTensor keeps in its param's shape
            return state_view(_dtensor.local(t).view(-1))

        params = [params[i] for i in index]
        states = [opt.state[p] for p in params]
        keys = [_STATE_KEYS[name] for name in names]
        # what a step writes besides the step counts, whose own in-place add moves their version
        self.written = params + [t for key in keys for s in states for t in _state_tensors(s, key)]
        self.tensors = params
        self.params = self.views(params)
        self.states = {name: [_state_view(s, key, flat_view if name in flat else state_view)
                              for s in states] for name, key in zip(names, keys)}
        self.completed = completed
        self.scalars = {key: [s[key] for s in states] for key in scalar_states} or None
        self.counter = None
        if counts_steps:
            self.counter = torch.full((len(params),), completed, dtype=_step_dtype())
            for j, state in enumerate(states):
                state["step"] = self.counter[j]  # a float32 scalar, as torch keeps it

    def piece(self, grads, stochastic_rounding, seed) -> Piece:
        """This call's arrays for a step with the group's ``grads``."""
        if self.index is not None:
            grads = [grads[i] for i in self.index]
        rounding = _lowp.rounding(stochastic_rounding, seed, self.completed, *self.stream)
        return Piece(self.params, self.grad_views(grads), self.states, self.completed + 1,
                     rounding, self.done, self.via, self.across, self.scalars)

    def run(self, kernel: str, hparams: dict, seqs: tuple, names: tuple, check_only: bool):
        """A host call of a step function (see lrfast._backend.through): its
        params and states, this call's views, are collected once
        (_core.prepare); each step then passes the grads' data pointers,
        no NumPy views. Prodigy's reduction takes the plain path."""
        if kernel == "prodigy_reduce":
            return _backend.direct(kernel, hparams, seqs, names, check_only)
        prepared = self.prepared.get((kernel, names))
        if prepared is None:  # checks the params and states
            prepared = self.prepared[kernel, names] = _core.prepare(
                kernel, (seqs[0], None) + seqs[2:], names)
        if not check_only:
            prepared(hparams, list(map(torch.Tensor.data_ptr, seqs[1])))

    def watch(self, group_params: list, positions: list[int]) -> None:
        """Lets this host call's prepared calls read the grads of
        ``group_params`` themselves (``positions``: where this call's params
        are in it): see _Optimizer._fast_step."""
        dtypes, shapes = [p.dtype for p in self.tensors], [p.shape for p in self.tensors]
        for prepared in self.prepared.values():
            prepared.watch(group_params, positions, dtypes, shapes, torch.Tensor)

    def capture(self, kernel: Kernel, hparams: dict, lr, stochastic_rounding, seed) -> list:
        """The back-end calls a step of this call would make now, each as
        (kernel name, argument names, the kernel's hparams): the step
        function checked its hyperparameters and ran nothing."""
        seen: list = []
        rounding = _lowp.rounding(stochastic_rounding, seed, self.completed, *self.stream)
        with _backend.through(lambda name, hp, seqs, names, check_only: seen.append((name, names, hp))):
            kernel(self.params, self.params, self.states, {**hparams, **rounding}, lr=lr,
                   step=self.completed + 1)
        return seen

    def done(self, advance: bool) -> None:
        # the kernel wrote through views autograd does not see: tell it, as
        # torch's in-place ops do, so backward() refuses graphs with old values
        torch.autograd.graph.increment_version(self.written)
        if advance:
            self.completed += 1
            if self.counter is not None:
                self.counter += 1


class _Plan:
    """A param group's update, prepared once and reused while it fits."""

    def __init__(self, opt, index, group, kernel, names, params):
        self.group, self.state, self.kernel, self.names = group, opt.state, kernel, names
        self.params = params
        self.distributed = _dtensor.any_dtensor(params)
        self.pointers = _pointers(params, self.distributed)
        # a param reshaped in place keeps its pointer; Prodigy's slice_p sizes its states
        self.shapes = [p.shape for p in params]
        self.slice_p = group.get("slice_p")
        self.counts_steps = opt._counts_steps(group)
        calls: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            where = f"param group {index}, parameter {i} (of those with a grad)"
            _check_param(p, where)
            completed = opt._init_state(p, group, kernel, names, where)
            calls.setdefault((p.device, completed, _dtensor.sharding(p)), []).append(i)
        flat = {name for name in names if kernel.slot(name).sliced}
        self.calls = [_Call(opt, params, index, i, device, completed, shards, names, flat,
                            self.counts_steps, kernel.scalar_states)
                      for (device, completed, shards), i in calls.items()]

    def fits(self, opt, group, kernel, names, params) -> bool:
        return (group is self.group and opt.state is self.state and kernel is self.kernel
                and names == self.names and opt._counts_steps(group) == self.counts_steps
                and len(params) == len(self.params)
                and all(map(operator.is_, params, self.params))
                and _pointers(params, self.distributed) == self.pointers
                and [p.shape for p in params] == self.shapes
                and group.get("slice_p") == self.slice_p)


def _pointers(params, distributed: bool) -> list[int]:
    # a DTensor's own data_ptr() is 0: its memory is its local shard's
    return list(map(torch.Tensor.data_ptr, map(_dtensor.local, params) if distributed else params))


def _check_grads(params: list, grads: list, group_index: int) -> None:
    """Refuses a grad of another dtype or shape than its param's, which
    torch's ``.grad`` setter refuses but ``.grad.data = ...`` and
    ``.grad.resize_()`` do not (the kernels read a param's numel of it)."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if g.dtype != p.dtype or g.shape != p.shape:
            raise ValueError(f"param group {group_index}, parameter {i} (of those with a grad): "
                             f"its grad has dtype {g.dtype} and shape {tuple(g.shape)}, its "
                             f"param {p.dtype} and {tuple(p.shape)}")


def _local_grads(params: list, grads: list, group_index: int) -> list:
    """The local shards of the params' DTensor gradients, each checked to be
    laid out over the ranks as its param is."""
    for i, (p, g) in enumerate(zip(params, grads)):
        why = _dtensor.mismatch(p, g)
        if why:
            raise ValueError(f"param group {group_index}, parameter {i} (of those with a "
                             f"grad): its grad {why}")
    return list(map(_dtensor.local, grads))


def _hooked(step: Callable) -> Callable:
    """``step`` with torch.optim's wrapper (the step hooks, and the
    profiler's record of the step), whose record costs ~10 us a step when no
    profiler listens: then, and without hooks, ``step`` runs on its own.
    Marked ``hooked``, so torch.optim does not wrap it again."""
    wrapped = torch.optim.Optimizer.profile_hook_step(step)
    module = importlib.import_module("torch.optim.optimizer")  # torch.optim hides its name
    hooks = [getattr(module, f"_global_optimizer_{when}_hooks", None) for when in ("pre", "post")]
    if None in hooks:  # another torch: its wrapper as it is
        return wrapped

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if (torch._C._autograd._profiler_enabled() or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or hooks[0] or hooks[1]):
            return wrapped(self, *args, **kwargs)
        out = step(self, *args, **kwargs)
        self._optimizer_step_code()  # what torch.compile looks for
        return out

    wrapper.hooked = True  # type: ignore[attr-defined]
    return wrapper


class _Optimizer(torch.optim.Optimizer):
    """Base class: torch's Optimizer whose step runs lrfast's step functions."""

    kernel: Kernel
    _keeps_step = True  # torch keeps state["step"] (SGD does not)

    def __init__(self, params, defaults, state_dtype, stochastic_rounding, seed):
        defaults.update(state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=seed)
        _check_supported(defaults)
        self._kernel(defaults).check_group(defaults, _plain(defaults["lr"]), _plain)
        self._lock = threading.RLock()
        super().__init__(params, defaults)
        self._plans: dict[int, _Plan] = {}
        self._fast: list | None = None  # see _fast_step

    def _kernel(self, group) -> Kernel:
        return self.kernel

    def __setstate__(self, state):  # also the end of load_state_dict
        super().__setstate__(state)
        if not hasattr(self, "_lock"):  # unpickled: torch pickles no lock
            self._lock = threading.RLock()
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._plans = {}
        self._fast = None

    @exclusive
    def add_param_group(self, param_group) -> None:
        """torch.optim's, the group checked at once (its options and
        hyperparameters, as the constructor checks them), and sharing what it
        must with the other groups (Prodigy's estimate)."""
        if self.param_groups:
            param_group = self._kernel({**self.defaults, **param_group}).joining(
                dict(param_group), self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_supported(group)
            self._kernel(group).check_group(group, _plain(group["lr"]), _plain)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        _lowp.warn_nothing_to_round(group["stochastic_rounding"], group["params"])

    @property
    def lock(self) -> threading.RLock:
        """The lock that ``step``, ``state_dict`` and ``load_state_dict`` hold."""
        return self._lock

    @exclusive
    def state_dict(self):
        """torch.optim's (the state tensors themselves, not copies)."""
        return super().state_dict()

    @exclusive
    def load_state_dict(self, state_dict) -> None:
        """torch.optim's, but each state tensor keeps the dtype it has in
        ``state_dict``: torch casts every floating-point one to its
        parameter's dtype (float32 states of a bfloat16 model, and q8 codes,
        would not survive). torchao's 4-bit states (``AdamW4bit``,
        ``Adam4bit``: tensor subclasses with ``codes``, ``scale``, ``qmap``)
        become lrfast q4 entries holding the same codes and scales, so they
        dequantize to torchao's values exactly; the next step re-quantizes
        them by lrfast's rule. A schedule-free ``"z"`` that cannot hold its
        parameter's values (q8 or bfloat16 for a float32 parameter, as lrfast
        kept it in the ``state_dtype`` before) becomes the dtype a new one
        would have. bitsandbytes' ``Adam8bit``/``AdamW8bit`` state dicts
        (``state1``/``state2`` with ``absmax1``/``2`` and ``qmap1``/``2``)
        load into ``Adam``/``AdamW`` the same way, as q8 ``exp_avg`` and
        ``exp_avg_sq`` holding its codes and absmax (float32 states where it
        kept 32-bit ones), with ``decoupled_weight_decay=True``, as
        bitsandbytes' Adam decays; other classes refuse them."""
        if _interop.is_bitsandbytes(state_dict):
            if not isinstance(self, Adam):
                raise ValueError(f"a bitsandbytes state dict loads into lrfast.torch.Adam or "
                                 f"AdamW (from Adam8bit/AdamW8bit), not {type(self).__name__}")
            state_dict = _interop.from_bitsandbytes(state_dict)
        state_dict = dict(state_dict, state={
            k: _from_torchao(v) if isinstance(v, dict) else v
            for k, v in state_dict["state"].items()})
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        scalar_keys = {key for group in self.param_groups
                       for key in self._kernel(group).scalar_states}
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            state = self.state[p]
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if key in scalar_keys and isinstance(value, torch.Tensor):
                    state[key] = value.clone()  # "step"'s kind: its dtype, on the host
                elif (key != "step" and isinstance(value, torch.Tensor)
                        and value.dtype != state[key].dtype):
                    state[key] = value.to(device=p.device)
        for group in self.param_groups:
            for name, slot in self._kernel(group).slots.items():
                for p in group["params"] if slot.weights else ():
                    dtype = _float_dtype(p, slot.state_dtype(group["state_dtype"],
                                                             _dtype_name(p.dtype)))
                    _to_param_precision(p, self.state[p], _STATE_KEYS[name], dtype)

    def _counts_steps(self, group) -> bool:
        """Whether the group's states keep torch's ``"step"``: all but SGD's,
        and SGD's too under stochastic rounding, whose seed moves with it."""
        return self._keeps_step or bool(group["stochastic_rounding"])

    def _init_state(self, p, group, kernel, names, where) -> int:
        """Creates ``p``'s missing state as torch.optim would (in the group's
        state_dtype) and checks the state it has; returns the number of
        updates ``p`` has had."""
        state = self.state[p]
        if _dtensor.is_dtensor(p):
            _check_sharded(p, state, group, kernel, names, where)
        if "step" in state or self._keeps_step:
            completed = int(state.get("step", 0))
        else:  # SGD counts nothing; only its first step differs (buffer = gradient)
            completed = int(all(_has_state(state, _STATE_KEYS[name]) for name in names))
        if self._counts_steps(group):
            state.setdefault("step", torch.tensor(float(completed), dtype=_step_dtype()))
        for key, start in kernel.scalar_states.items():  # on the host, as torch keeps them
            value = state.setdefault(key, torch.tensor(start, dtype=_step_dtype()))
            if not (isinstance(value, torch.Tensor) and value.dim() == 0
                    and value.device.type == "cpu" and value.is_floating_point()):
                raise ValueError(f"{where}: state {key!r} must be a 0-d floating-point tensor "
                                 f"on the CPU, as torch keeps it, got {value!r}")
        hparams = kernel.hparams(group, _plain)
        for name in names:
            key, slot = _STATE_KEYS[name], kernel.slot(name)
            shape = _state_shape(p, slot, hparams)
            if not _has_state(state, key):
                state.update(_new_state(p, name, group["state_dtype"], slot, hparams,
                                        slot.start_value(group, _plain)))
            for entry in (key, f"{key}_codes", f"{key}_absmax"):
                t = state.get(entry)
                if entry == "p0" and isinstance(t, torch.Tensor) and t.dim() == 0:
                    # prodigyopt's p0 of a param that was all zeros: a 0-d zero
                    state[entry] = t = t.expand(shape)
                if isinstance(t, torch.Tensor) and (not t.is_contiguous() or t.is_neg()):
                    # e.g. loaded from a torch state dict: written in place from now on
                    state[entry] = t.resolve_neg().contiguous()
            _check_state(p, state, name, where, shape, slot.param_dtype)
        return completed

    @_hooked
    def step(self, closure=None):
        """Performs one update (one fused call per param group); returns the
        closure's loss, if a closure was given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self._lock:
            self._step()
        return loss

    def _step(self, grad_scale: float = 1.0, grad_norm: float | None = None) -> None:
        # grad_scale, grad_norm: a clip coefficient fused into the kernels and
        # the norm it came from (lrfast.torch.CPUOffload's max_grad_norm)
        if grad_scale == 1.0 and grad_norm is None and self._fast_step():
            return
        self._fast = None
        self._slow_step(grad_scale, grad_norm)
        self._fast = self._fast_path()

    def _fast_path(self) -> list | None:
        """What :meth:`_fast_step` reads of each param group, after a step of
        them all; None where a group takes more than one call, runs on CUDA or
        on DTensors, or has a kernel that does more than one call a step (the
        schedule-free ones, Prodigy)."""
        entries = []
        for index, group in enumerate(self.param_groups):
            plan, kernel = self._plans.get(index), self._kernel(group)
            if (plan is None or plan.group is not group or plan.distributed
                    or len(plan.calls) != 1 or plan.calls[0].via is None
                    or type(kernel).run is not Kernel.run or type(kernel)._apply is not Kernel._apply):
                return None
            ids = set(map(id, plan.params))
            plan.calls[0].watch(group["params"],
                                [i for i, p in enumerate(group["params"]) if id(p) in ids])
            entries.append((group, kernel, plan.names, plan.counts_steps, plan.calls[0]))
        return entries

    def _fast_step(self) -> bool:
        """A step of host params when nothing but their grads and the values
        of the hyperparameters changed since the last one: the hyperparameters
        checked and each call's back-end form computed by its step function
        (capture), then every group's grads read and checked in C++ (take),
        then the runs. False, with nothing written, where anything else
        changed (or anything is wrong): the slow path then steps, or says what."""
        if self._fast is None or len(self.param_groups) != len(self._fast):
            return False
        runs = []
        try:
            for group, (known, kernel, names, counts_steps, call) in zip(self.param_groups,
                                                                        self._fast):
                if (group is not known or self._kernel(group) is not kernel
                        or self._counts_steps(group) != counts_steps):
                    return False
                _check_supported(group)
                kernel.check_start_values(group, _plain)
                hparams = kernel.hparams(group, _plain)
                if kernel.uses(hparams) != names:
                    return False
                seen = call.capture(kernel, hparams, _plain(group["lr"]),
                                    bool(group["stochastic_rounding"]), int(group["seed"]))
                prepared = call.prepared.get(seen[0][:2]) if len(seen) == 1 else None
                if prepared is None or not prepared.take(group["params"]):
                    return False
                runs.append((prepared, seen[0][2], call))
        except (TypeError, ValueError):
            return False
        for prepared, hparams, call in runs:
            prepared.run_taken(hparams)
            call.done(True)
        return True

    def _slow_step(self, grad_scale: float, grad_norm: float | None) -> None:
        # Every group is checked before the first write, so an error leaves
        # them all as they were (as a step function does for its list).
        todo = []
        for group in self.param_groups:
            params, grads = _with_grads(group["params"])
            kernel = self._kernel(group)
            if params:
                # what the constructor refuses, refused when set later too
                _check_supported(group)
                kernel.check_start_values(group, _plain)
            todo.append((kernel, params, grads, Update(group, kernel.hparams(group, _plain),
                                                       _plain(group["lr"]), bool(params))))
        # one batch per kernel (Adam's groups may mix adam and adamw); the first
        # group's own call checks its hyperparameters before it writes
        batches = [(kernel, [item[3] for item in batch])
                   for kernel, batch in groupby(todo, key=operator.itemgetter(0))]
        for n, (kernel, updates) in enumerate(batches):
            kernel.check(self.param_groups, updates, first_checks_itself=n == 0)
        for index, (kernel, params, grads, update) in enumerate(todo):
            if not params:
                continue
            group = update.group
            names = kernel.uses(update.hparams)
            plan = self._plans.get(index)
            if plan is None or not plan.fits(self, group, kernel, names, params):
                plan = self._plans[index] = _Plan(self, index, group, kernel, names, params)
            _check_grads(params, grads, index)
            grads = _contiguous(_local_grads(params, grads, index) if plan.distributed else grads)
            rounding = (bool(group["stochastic_rounding"]), int(group["seed"]))
            update.pieces = [call.piece(grads, *rounding) for call in plan.calls]
        for n, (kernel, updates) in enumerate(batches):
            kernel.preflight(self.param_groups, updates, grad_scale, first_checks_itself=n == 0)
        for kernel, updates in batches:
            kernel.run(self.param_groups, updates, grad_scale, grad_norm)


class SGD(_Optimizer):
    """torch.optim.SGD running :func:`lrfast.sgd_step`."""

    kernel = KERNELS["sgd"]
    _keeps_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused),
                         state_dtype, stochastic_rounding, seed)


class Adam(_Optimizer):
    """torch.optim.Adam running :func:`lrfast.adam_step`, or
    :func:`lrfast.adamw_step` with ``decoupled_weight_decay=True``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                                      capturable=capturable, differentiable=differentiable,
                                      fused=fused, decoupled_weight_decay=decoupled_weight_decay),
                         state_dtype, stochastic_rounding, seed)

    def _kernel(self, group) -> Kernel:
        return KERNELS["adamw" if group["decoupled_weight_decay"] else "adam"]


class AdamW(Adam):
    """torch.optim.AdamW running :func:`lrfast.adamw_step`."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, seed=seed)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # as torch's AdamW: always decoupled
            group["decoupled_weight_decay"] = True


class RMSprop(_Optimizer):
    """torch.optim.RMSprop running :func:`lrfast.rmsprop_step`."""

    kernel = KERNELS["rmsprop"]

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable),
                         state_dtype, stochastic_rounding, seed)


class Adagrad(_Optimizer):
    """torch.optim.Adagrad running :func:`lrfast.adagrad_step`. As torch does,
    the state of every parameter is made by the constructor."""

    kernel = KERNELS["adagrad"]

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, fused=fused),
                         state_dtype, stochastic_rounding, seed)
        for i, group in enumerate(self.param_groups):
            names = self.kernel.uses(self.kernel.hparams(group, _plain))
            for j, p in enumerate(group["params"]):
                self._init_state(p, group, self.kernel, names, f"param group {i}, parameter {j}")


class Adadelta(_Optimizer):
    """torch.optim.Adadelta running :func:`lrfast.adadelta_step`."""

    kernel = KERNELS["adadelta"]

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False, state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      foreach=foreach, capturable=capturable,
                                      maximize=maximize, differentiable=differentiable),
                         state_dtype, stochastic_rounding, seed)


class Lion(_Optimizer):
    """lion_pytorch.Lion running :func:`lrfast.lion_step`. With
    ``decoupled_weight_decay`` the decay is ``weight_decay / init_lr`` per
    unit of rate, ``init_lr`` being the constructor's ``lr`` (lion-pytorch's
    ``_init_lr``), kept in every group. ``use_triton`` is accepted and ignored,
    as ``foreach``/``fused`` are elsewhere: there is one implementation."""

    kernel = KERNELS["lion"]
    _keeps_step = False  # lion-pytorch keeps only exp_avg

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, use_triton=False,
                 decoupled_weight_decay=False, *, maximize=False,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        _hparams.positive("lr", _plain(lr))  # lion-pytorch's assert; a step takes 0
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      init_lr=_plain(lr), maximize=maximize),
                         state_dtype, stochastic_rounding, seed)


class _ScheduleFree(_Optimizer):
    """The train/eval switch of schedulefree's optimizers (see
    :mod:`lrfast._schedulefree`): ``train()`` before training, ``eval()``
    before evaluating or saving; ``step()`` in eval mode raises ValueError."""

    kernel: _schedulefree.ScheduleFreeKernel
    _keeps_step = False  # schedulefree counts steps per group, in "k"

    @exclusive
    def train(self) -> None:
        """Params to y, where the gradients are taken."""
        self._switch(True)

    @exclusive
    def eval(self) -> None:
        """Params to x, the average, to evaluate and to save."""
        self._switch(False)

    def _switch(self, to_train: bool) -> None:
        moved = []

        def pairs(index, group):
            # .get: a state made here, empty, would tell torch.distributed.checkpoint's
            # get/set_optimizer_state_dict that this optimizer has stepped
            params = [p for p in group["params"] if _has_state(self.state.get(p, {}), "z")]
            moved.extend(params)
            batches = []
            for device in dict.fromkeys(p.device for p in params):
                on = [p for p in params if p.device == device]
                host = device.type == "cpu"
                views = _host_views(on) if host else _device_views(on)
                zs = [_state_view(self.state[p], "z", _host_view if host else _device_state)
                      for p in on]
                batches.append((views, zs))
            return batches

        _schedulefree.switch(self.kernel, self.param_groups, to_train, pairs, _plain)
        if moved:
            torch.autograd.graph.increment_version(moved)


class ScheduleFreeSGD(_ScheduleFree):
    """schedulefree.SGDScheduleFree running :func:`lrfast.schedulefree_sgd_step`:
    state ``"z"``, in the parameter's dtype (float32 where
    ``state_dtype="float32"`` for a 16-bit parameter): it holds the weights,
    which a q8, q4 or 16-bit state of a float32 parameter cannot (a state
    dict with one, as earlier versions wrote, loads converted); group keys
    ``k``, ``lr_max``, ``weight_sum``, ``scheduled_lr``, ``train_mode``
    (False at the start: call ``train()``)."""

    kernel = _schedulefree.SGD

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2, foreach=None, *, maximize=False,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, momentum=momentum, r=r, warmup_steps=warmup_steps,
                                      weight_lr_power=weight_lr_power,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize, **_schedulefree.START),
                         state_dtype, stochastic_rounding, seed)


class ScheduleFreeAdamW(_ScheduleFree):
    """schedulefree.AdamWScheduleFree running
    :func:`lrfast.schedulefree_adamw_step`: states ``"z"`` (stored as
    :class:`ScheduleFreeSGD`'s) and ``"exp_avg_sq"`` (of the
    ``state_dtype``); group keys as :class:`ScheduleFreeSGD`'s."""

    kernel = _schedulefree.ADAMW

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0, foreach=None, *, maximize=False,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, r=r,
                                      warmup_steps=warmup_steps,
                                      weight_lr_power=weight_lr_power,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize, **_schedulefree.START),
                         state_dtype, stochastic_rounding, seed)


class Prodigy(_Optimizer):
    """prodigyopt.Prodigy running :func:`lrfast.prodigy_reduce` and
    :func:`lrfast.prodigy_update` (see :mod:`lrfast._prodigy`): states
    ``"s"``, ``"p0"`` (1-D, every ``slice_p``-th element; ``p0`` in the
    parameter's dtype), ``"exp_avg"`` (when ``betas[0] > 0``),
    ``"exp_avg_sq"`` and ``"step"``; every group holds the estimate as
    prodigyopt does: ``d``, ``d_max``, ``d_numerator``, ``k``, and from the
    first step that moves it ``d_denom`` and ``d_hat``. ``fsdp_in_use=True``
    (FSDP1's flat parameters) is refused; under FSDP2 (DTensor parameters)
    the sums are all-reduced across the ranks without it, and ``s`` and
    ``p0`` keep their parameter's shape and placements (``slice_p=1`` only;
    see the module's docstring)."""

    kernel = KERNELS["prodigy"]

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8,
                 weight_decay=0, decouple=True, use_bias_correction=False,
                 safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=float("inf"),
                 fsdp_in_use=False, slice_p=1, *, maximize=False,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        _hparams.positive("lr", _plain(lr))
        if fsdp_in_use:
            raise ValueError("lrfast.torch.Prodigy does not support fsdp_in_use=True (FSDP1's "
                             "flat parameters); under FSDP2 (fully_shard), whose parameters "
                             "are DTensors, it sums over every shard without it")
        super().__init__(params, dict(lr=lr, betas=betas, beta3=beta3, eps=eps,
                                      weight_decay=weight_decay, d0=d0, d_coef=d_coef,
                                      growth_rate=growth_rate,
                                      use_bias_correction=use_bias_correction,
                                      decouple=decouple, safeguard_warmup=safeguard_warmup,
                                      fsdp_in_use=fsdp_in_use, slice_p=slice_p,
                                      maximize=maximize, **_prodigy.start(d0)),
                         state_dtype, stochastic_rounding, seed)


class NAdam(_Optimizer):
    """torch.optim.NAdam running :func:`lrfast.nadam_step`: states
    ``"exp_avg"``, ``"exp_avg_sq"``, ``"step"`` and ``"mu_product"`` (a 0-d
    tensor on the host, multiplied by each step's momentum with torch's own
    operation, as torch.optim.NAdam keeps it)."""

    kernel = KERNELS["nadam"]

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      foreach=foreach, maximize=maximize, capturable=capturable,
                                      differentiable=differentiable),
                         state_dtype, stochastic_rounding, seed)


class RAdam(_Optimizer):
    """torch.optim.RAdam running :func:`lrfast.radam_step`: states
    ``"exp_avg"``, ``"exp_avg_sq"`` and ``"step"``."""

    kernel = KERNELS["radam"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False,
                 capturable=False, differentiable=False, state_dtype: str | None = None,
                 stochastic_rounding: bool = False, seed: int = 0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      foreach=foreach, maximize=maximize, capturable=capturable,
                                      differentiable=differentiable),
                         state_dtype, stochastic_rounding, seed)


class Adamax(_Optimizer):
    """torch.optim.Adamax running :func:`lrfast.adamax_step`: states
    ``"exp_avg"``, ``"exp_inf"`` and ``"step"``."""

    kernel = KERNELS["adamax"]

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 foreach=None, *, maximize=False, differentiable=False, capturable=False,
                 state_dtype: str | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, capturable=capturable),
                         state_dtype, stochastic_rounding, seed)
class Adafactor(torch.optim.Optimizer):
    """torch.optim.Adafactor (torch 2.13) running :func:`lrfast.adafactor_step`:
    one fused call per param group (per step count, should its params' differ),
    torch's arguments and state keys: ``"step"``, ``"row_var"`` and
    ``"col_var"`` for params of 2 or more dims (shapes ``(..., n, 1)`` and
    ``(..., 1, m)``), ``"variance"`` for those of 0 or 1, in the gradient's
    dtype (float32 for bfloat16 and float16 params, whose factors torch
    keeps in 16 bits), so state dicts load both ways. ``foreach`` is accepted
    and ignored. CPU params, or CUDA ones (the CUDA path; states on the
    param's device); every group is checked before the first is written. It
    stands apart from the other classes (their states have their params'
    shapes): no ``state_dtype``, stochastic rounding or DTensors."""

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, foreach=None, maximize=False):
        _hparams.adafactor(lr=_plain(lr), step=1, beta2_decay=beta2_decay, eps=eps, d=d,
                           weight_decay=weight_decay, maximize=maximize, grad_scale=1.0)
        self._lock = threading.RLock()
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize))

    def __setstate__(self, state):
        super().__setstate__(state)
        if not hasattr(self, "_lock"):  # unpickled: torch pickles no lock
            self._lock = threading.RLock()

    @property
    def lock(self) -> threading.RLock:
        """The lock that ``step``, ``state_dict`` and ``load_state_dict`` hold."""
        return self._lock

    @exclusive
    def state_dict(self):
        """torch.optim's (the state tensors themselves, not copies)."""
        return super().state_dict()

    @exclusive
    def load_state_dict(self, state_dict) -> None:
        """torch.optim's."""
        super().load_state_dict(state_dict)

    def step(self, closure=None):
        """Performs one update; returns the closure's loss, if a closure was given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self._lock:
            self._step()
        return loss

    def _state(self, p, g):
        """``p``'s state, made at its first step (float32 for a 16-bit ``p``,
        whose factors torch would keep in 16 bits); one loaded in another
        dtype is converted."""
        state = self.state[p]
        if torch.is_complex(p):
            raise RuntimeError("Adafactor does not support complex parameters")
        dtype = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        if not state:
            state["step"] = torch.tensor(0.0, dtype=_step_dtype())
            if g.dim() > 1:
                state["row_var"] = g.new_zeros(g.shape[:-1] + (1,), dtype=dtype)
                state["col_var"] = g.new_zeros(g.shape[:-2] + (1,) + g.shape[-1:], dtype=dtype)
            else:
                state["variance"] = torch.zeros_like(g, dtype=dtype)
        for key in ("row_var", "col_var", "variance"):
            if key in state and state[key].dtype != dtype:
                state[key] = state[key].to(dtype)
        return state

    def _step(self) -> None:
        calls = []
        for group in self.param_groups:
            params, grads = _with_grads(group["params"])
            grads = _contiguous(grads)
            hparams = {key: _plain(group[key]) for key in
                       ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize")}
            by_count: dict[int, list] = {}
            for p, g in zip(params, grads):
                state = self._state(p, g)
                by_count.setdefault(int(state["step"]), []).append((p, g, state))
            for count, items in by_count.items():
                states = [state for _, _, state in items]
                arrays = ([p for p, _, _ in items], [g for _, g, _ in items],
                          *([state.get(key) for state in states]
                            for key in ("row_var", "col_var", "variance")))
                calls.append((arrays, dict(hparams, step=count + 1), states))
        with _backend.checks_only():
            for arrays, hparams, _ in calls:
                adafactor_step(*arrays, **hparams)
        for arrays, hparams, states in calls:
            adafactor_step(*arrays, **hparams)
            for state in states:
                state["step"] += 1
            written = [t for t in chain(arrays[0], *arrays[2:]) if t is not None]
            torch.autograd.graph.increment_version(written)


class CPUOffload(_offload.Offload):
    __doc__ = _offload.Offload.__doc__

    def __init__(self, params, optimizer: type = AdamW, *, master_dtype: str = "float32",
                 state_dtype: str | None = None, max_grad_norm: float | None = None,
                 bucket_size: int = 2**25, **optimizer_kwargs):
        super().__init__(params, optimizer, master_dtype=master_dtype, state_dtype=state_dtype,
                         max_grad_norm=max_grad_norm, bucket_size=bucket_size,
                         **optimizer_kwargs)
