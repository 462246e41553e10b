"""Routes a call to the C++ kernels or, for device arrays, the Numba CUDA path.

Both back ends expose the same functions as ``lrfast._core``: one per kernel
in optimizers.def taking ``(arrays, names, hparams)``, and ``global_norm``,
``clip_grad_norm``, ``clip_grad_value``. The array checks, and the refusal of
host and device arrays mixed in one call, happen inside the back end.

Inside :func:`checks_only` a step function validates everything it would
validate (hyperparameters, then the arrays, through the back end's
``check``) and returns without running: the optimizer classes check every
param group's call that way before the first one writes.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from . import _core, cuda


def tensors(name: str, value):
    """One array, or a list/tuple of arrays, as a sequence (None stays None)."""
    if value is None or isinstance(value, (list, tuple)):
        return value
    if isinstance(value, np.ndarray):
        return (value,)
    if hasattr(value, "__next__"):
        raise TypeError(f"{name} must be an array or a list/tuple of arrays, not an iterator")
    return (value,)


def for_arrays(first_list):
    """The back end for a call whose first argument is `first_list`."""
    if first_list and type(first_list[0]) is not np.ndarray and cuda.is_device_array(first_list[0]):
        return cuda.backend()  # numba-cuda is imported only now
    return _core


_checking = contextvars.ContextVar("lrfast_checks_only", default=False)
_prepared = contextvars.ContextVar("lrfast_prepared", default=None)


@contextlib.contextmanager
def checks_only():
    """Within it, :func:`run` checks its call and runs nothing (a reduction returns zeros)."""
    token = _checking.set(True)
    try:
        yield
    finally:
        _checking.reset(token)


@contextlib.contextmanager
def through(call):
    """Within it (``call`` not None), :func:`run` hands each call to
    ``call(kernel, hparams, seqs, names, check_only)`` instead of a back end:
    lrfast.torch's prepared calls, which collected their params and states
    once and take only the gradients."""
    token = _prepared.set(call)
    try:
        yield
    finally:
        _prepared.reset(token)


def run(kernel: str, hparams: dict, arrays: dict, required: tuple[str, ...]):
    """Calls `kernel` on `arrays` (argument name -> one array, a sequence, or
    None for a state the options leave unused); `required` names the arguments
    that must be given. Returns what the kernel returns (None for an update,
    the sums of a reduction)."""
    seqs = []
    for name, value in arrays.items():
        if value is None and name in required:
            raise ValueError(f"{name} is required with these options")
        seqs.append(tensors(name, value))
    prepared = _prepared.get() or direct
    return prepared(kernel, hparams, tuple(seqs), tuple(arrays), _checking.get())


def direct(kernel: str, hparams: dict, seqs: tuple, names: tuple, check_only: bool):
    """Runs `kernel` on the back end of `seqs`' arrays (with `check_only`,
    runs its checks only)."""
    backend = for_arrays(seqs[0])
    if not check_only:
        return getattr(backend, kernel)(seqs, names, hparams)
    # Prodigy's reduction takes states of the slice param.ravel()[::slice_p]
    slice_p = int(hparams["slice_p"]) if kernel == "prodigy_reduce" else 0
    if backend is _core:
        _core.check(seqs, names, False, True, slice_p)
    else:
        backend.check(seqs, names, slice_p)
    return (0.0, 0.0) if kernel == "prodigy_reduce" else None
