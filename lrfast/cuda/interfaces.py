"""What lrfast reads of a device array, shared by :mod:`.layout` (plain
calls), :mod:`.lowp_layout` (16-bit and low-bit calls) and
:mod:`.devicearrays`: the ``__cuda_array_interface__`` dict, tagged for
bfloat16, a low-bit state's :class:`LowBitInterface`, and the host and device
views made from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import cuda

from .. import precision
from . import launch

# The interface key that says an array of 16-bit words holds bfloat16 (see
# lrfast.cuda.devicearrays): the one element type the interface cannot name.
DTYPE_KEY = "lrfast_dtype"


class HostView:
    """A host stand-in for a device array: ``__array_interface__`` with the
    device pointer, for checks that use addresses and sizes only."""

    def __init__(self, interface: dict):
        self.__array_interface__ = {
            "shape": tuple(interface["shape"]), "typestr": interface["typestr"],
            "data": tuple(interface["data"]), "strides": interface.get("strides"),
            "version": 3}


@dataclass(frozen=True)
class LowBitInterface:
    """What a call reads of a Q8State (``bits`` 8) or Q4State (``bits`` 4):
    its parts' interfaces, its map, and the shape of the param it was made
    for (a Q4State's attribute; a Q8State's codes have it)."""

    codes: dict
    absmax: dict
    signed: bool
    bits: int
    shape: tuple


def dtype_of(interface: dict) -> np.dtype:
    """The element type of an interface: its typestr's, or bfloat16 if tagged."""
    if interface.get(DTYPE_KEY) == "bfloat16":
        return precision.bfloat16()
    return np.dtype(interface["typestr"])


def device_view(address: int, n: int, dtype: np.dtype):
    """A 1-D device array of `n` elements of `dtype` at `address` that owns
    nothing: the caller's arrays keep the memory alive during a call."""
    interface = {"shape": (n,), "typestr": dtype.str, "data": (address, False),
                 "strides": None, "version": 3}
    if launch.SIMULATED:  # simulated device memory is host memory: wrap a NumPy view
        return cuda.devicearray.FakeCUDAArray(np.asarray(HostView(interface)))
    return cuda.from_cuda_array_interface(interface, owner=None, sync=False)
