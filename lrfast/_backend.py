"""Routes a call to the C++ kernels or, for device arrays, the Numba CUDA path.

Both back ends expose the same functions as ``lrfast._core``: one per kernel
in optimizers.def taking ``(arrays, names, hparams)``, and ``global_norm``,
``clip_grad_norm``, ``clip_grad_value``. The array checks, and the refusal of
host and device arrays mixed in one call, happen inside the back end.
"""

from __future__ import annotations

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
    return getattr(for_arrays(seqs[0]), kernel)(tuple(seqs), tuple(arrays), hparams)
