"""Device arrays of the dtypes ``__cuda_array_interface__`` cannot name, and
the host-side helpers through which :mod:`lrfast._backend` lets
:mod:`lrfast.precision` take device params and q8 and q4 states (the spec
imports nothing of the back end's).

bfloat16 has no typestr in the interface (NumPy has no bfloat16; torch
refuses to export one). lrfast reads a bfloat16 device array as its storage,
16-bit words (typestr ``<u2``), plus the tag ``"lrfast_dtype": "bfloat16"``
in the interface dict:

- a torch CUDA tensor of dtype ``torch.bfloat16`` is read from ``data_ptr()``,
  its shape and strides (:func:`lrfast.cuda.layout._interface` builds the
  tagged dict);
- any other uint16 device array (Numba, CuPy) holding bfloat16 bits is
  wrapped in :class:`BFloat16Array`, whose interface carries the tag.
  ``zeros_state`` makes these for bfloat16 states of non-torch device params.
"""

from __future__ import annotations

import numpy as np

from .. import precision
from .._device import is_torch_tensor
from . import launch, layout
from .interfaces import DTYPE_KEY, HostView, dtype_of

__all__ = ["BFloat16Array", "describe", "full", "to_host"]


class BFloat16Array:
    """A bfloat16 view of a uint16 device array (``storage``, which keeps
    the memory alive): the same interface, tagged as bfloat16."""

    def __init__(self, storage):
        interface = storage.__cuda_array_interface__
        if interface["typestr"] != "<u2":
            raise TypeError(f"storage: expected a uint16 device array, got typestr "
                            f"{interface['typestr']!r}")
        self.storage = storage

    @property
    def __cuda_array_interface__(self):
        return {**self.storage.__cuda_array_interface__, DTYPE_KEY: "bfloat16"}

    @property
    def shape(self):
        return tuple(self.storage.__cuda_array_interface__["shape"])

    @property
    def dtype(self):
        return precision.bfloat16()

    def copy_to_host(self):
        """A NumPy array of ``ml_dtypes.bfloat16``."""
        return to_host(self.storage).view(precision.bfloat16())

    def __repr__(self):
        return f"BFloat16Array(shape={self.shape})"


def describe(x, label: str):
    """``(shape, dtype, c_contiguous, writeable)`` of device array `x`, from
    its interface (``label`` names it in errors); reads no device memory."""
    interface = layout._interface(x, label)
    view = np.asarray(HostView(interface))
    return view.shape, dtype_of(interface), view.flags.c_contiguous, view.flags.writeable


def to_host(x) -> np.ndarray:
    """A NumPy copy of device array `x`."""
    if is_torch_tensor(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    interface = layout._interface(x)
    if launch.SIMULATED:  # simulated device memory is host memory
        return np.asarray(HostView(interface)).copy()
    from numba import cuda

    return cuda.from_cuda_array_interface(interface, owner=x).copy_to_host()


def full(shape: tuple, value: int, dtype: np.dtype):
    """A new Numba device array (a :class:`BFloat16Array` for bfloat16) of
    `shape` and `dtype`, every element `value`, on the current device."""
    bfloat16 = dtype == precision.bfloat16()
    values = np.full(shape, value, dtype=np.uint16 if bfloat16 else dtype)
    if launch.SIMULATED:
        array = SimulatedArray(values)
    else:
        from numba import cuda

        array = cuda.to_device(values)
    return BFloat16Array(array) if bfloat16 else array


class SimulatedArray:
    """A device array in the simulator, where device memory is host memory
    (the simulator's own arrays export no ``__cuda_array_interface__``)."""

    def __init__(self, values: np.ndarray):
        self._values = values
        self.shape = values.shape

    @property
    def __cuda_array_interface__(self):
        ai = self._values.__array_interface__
        return {"shape": ai["shape"], "typestr": ai["typestr"], "data": ai["data"],
                "strides": None, "version": 3}

    def copy_to_host(self):
        return self._values.copy()
