"""Routes a call to the C++ kernels or, for device arrays, the Numba CUDA path.

Both back ends expose the same functions as ``lrfast._core``: one per kernel
in optimizers.def taking ``(arrays, names, hparams)``, and ``global_norm``,
``clip_grad_norm``, ``clip_grad_value``. The array checks, and the refusal of
host and device arrays mixed in one call, happen inside the back end.

The CUDA back end (and numba-cuda) is imported at the first device array and
kept. This module also tells :mod:`lrfast.precision`, which imports no back
end, how to read and make the arrays that are not NumPy's (:class:`OtherArrays`).

Inside :func:`checks_only` a step function validates everything it would
validate (hyperparameters, then the arrays, through the back end's
``check``) and returns without running: the optimizer classes check every
param group's call that way before the first one writes.
"""

from __future__ import annotations

import contextvars
import functools

import numpy as np

from . import _core, precision
from ._device import is_device_array, is_torch_tensor


def tensors(name: str, value):
    """One array, or a list/tuple of arrays, as a sequence (None stays None)."""
    if value is None or isinstance(value, (list, tuple)):
        return value
    if isinstance(value, np.ndarray):
        return (value,)
    if hasattr(value, "__next__"):
        raise TypeError(f"{name} must be an array or a list/tuple of arrays, not an iterator")
    return (value,)


@functools.cache
def cuda_backend():
    """:func:`lrfast.cuda.backend`, imported once (an ImportError is not kept)."""
    from . import cuda

    return cuda.backend()


def for_arrays(first_list):
    """The back end for a call whose first argument is `first_list`."""
    if first_list and type(first_list[0]) is not np.ndarray and is_device_array(first_list[0]):
        return cuda_backend()
    return _core


_checking = contextvars.ContextVar("lrfast_checks_only", default=False)
_prepared = contextvars.ContextVar("lrfast_prepared", default=None)


class _Setting:
    """A context variable set to a value within a ``with`` block (a class,
    not a generator: it runs in every step of lrfast.torch)."""

    def __init__(self, var: contextvars.ContextVar, value):
        self.var, self.value = var, value

    def __enter__(self) -> None:
        self.token = self.var.set(self.value)

    def __exit__(self, *exc) -> None:
        self.var.reset(self.token)


def checks_only() -> _Setting:
    """Within it, :func:`run` checks its call and runs nothing (a reduction returns zeros)."""
    return _Setting(_checking, True)


def through(call) -> _Setting:
    """Within it (``call`` not None), :func:`run` hands each call to
    ``call(kernel, hparams, seqs, names, check_only)`` instead of a back end:
    lrfast.torch's prepared calls, which collected their params and states
    once and take only the gradients."""
    return _Setting(_prepared, call)


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
    if kernel == "adafactor":  # states not of the params' shapes: its own checks
        return backend.adafactor(seqs, names, hparams, check_only)
    if not check_only:
        return getattr(backend, kernel)(seqs, names, hparams)
    # Prodigy's reduction takes states of the slice param.ravel()[::slice_p]
    slice_p = int(hparams["slice_p"]) if kernel == "prodigy_reduce" else 0
    if backend is _core:
        _core.check(seqs, names, False, True, slice_p)
    else:
        backend.check(seqs, names, slice_p)
    return (0.0, 0.0) if kernel == "prodigy_reduce" else None


def _device_arrays():
    """:mod:`lrfast.cuda.devicearrays`, once the CUDA back end imports (with
    its message when numba-cuda is missing)."""
    cuda_backend()
    from .cuda import devicearrays

    return devicearrays


class OtherArrays:
    """The arrays that are not NumPy's, as :func:`lrfast.precision.register_arrays`
    asks: CUDA device arrays, which the CUDA back end reads and makes, and torch
    tensors, whose states torch makes."""

    def owns(self, x) -> bool:
        return is_device_array(x) or is_torch_tensor(x)

    def describe(self, x, label: str):
        if not is_device_array(x):
            raise TypeError(f"{label}: expected a NumPy array or a CUDA device array, got a "
                            f"torch tensor on {x.device} (a low-bit state on the host holds "
                            "NumPy arrays, as zeros_state makes it)")
        return _device_arrays().describe(x, label)

    def to_host(self, x) -> np.ndarray:
        return _device_arrays().to_host(x)

    def allocators(self, param):
        if is_torch_tensor(param):
            return _torch_allocators(param)
        arrays = _device_arrays()
        shape, dtype, _, _ = arrays.describe(param, "param")
        return dtype.name, shape, arrays.full, arrays.full


def _torch_allocators(param):
    """A torch param's states are tensors on its device, except the parts of
    a low-bit state on the host: NumPy arrays, which the C++ path reads."""
    import torch

    if param.device.type not in ("cpu", "cuda"):
        raise TypeError(f"param: a torch tensor on {param.device}; lrfast runs on CPU and "
                        "CUDA tensors")

    def full(shape, value, dtype):
        return torch.full(shape, value, dtype=getattr(torch, dtype.name), device=param.device)

    low_bit = full if param.device.type == "cuda" else np.full
    return str(param.dtype).removeprefix("torch."), tuple(param.shape), full, low_bit


precision.register_arrays(OtherArrays())
