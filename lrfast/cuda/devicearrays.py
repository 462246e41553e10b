"""Device arrays of the dtypes ``__cuda_array_interface__`` cannot name, and
the host-side helpers :mod:`lrfast.precision` uses for device params and
q8 and q4 states.

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
from . import is_torch_tensor, layout

__all__ = ["BFloat16Array", "describe", "dtype_and_shape", "full", "to_host"]


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
        return {**self.storage.__cuda_array_interface__, layout.DTYPE_KEY: "bfloat16"}

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
    view = np.asarray(layout.HostView(interface))
    return view.shape, layout.dtype_of(interface), view.flags.c_contiguous, view.flags.writeable


def to_host(x) -> np.ndarray:
    """A NumPy copy of device array `x`."""
    if is_torch_tensor(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    interface = layout._interface(x)
    if layout.launch.SIMULATED:  # simulated device memory is host memory
        return np.asarray(layout.HostView(interface)).copy()
    from numba import cuda

    return cuda.from_cuda_array_interface(interface, owner=x).copy_to_host()


def dtype_and_shape(param) -> tuple[np.dtype, tuple]:
    """The NumPy dtype (ml_dtypes' bfloat16 for bfloat16) and shape of device
    array `param`."""
    if is_torch_tensor(param):
        name = str(param.dtype).removeprefix("torch.")
        dtype = precision.bfloat16() if name == "bfloat16" else np.dtype(name)
        return dtype, tuple(param.shape)
    shape, dtype, _, _ = describe(param, "param")
    return dtype, shape


def full(param, shape: tuple, value: int, dtype: np.dtype):
    """A new device array of `shape` and `dtype`, every element `value`, on
    `param`'s device: a torch tensor for a torch param, else a Numba device
    array (a :class:`BFloat16Array` for bfloat16)."""
    if is_torch_tensor(param):
        import torch

        return torch.full(shape, value, dtype=getattr(torch, dtype.name), device=param.device)
    bfloat16 = dtype == precision.bfloat16()
    values = np.full(shape, value, dtype=np.uint16 if bfloat16 else dtype)
    if layout.launch.SIMULATED:
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
