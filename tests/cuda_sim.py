"""Shared by the CUDA test files: the choice of Numba's simulator and the
stand-ins for device arrays. Import it before numba: a GPU is used when one
is visible, the simulator otherwise (an explicit NUMBA_ENABLE_CUDASIM wins)."""

import os
import shutil
import subprocess

import numpy as np


def _gpu_visible() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0" if _gpu_visible() else "1")


class SimulatedDeviceArray:
    """A host array shown as a device array, for the simulator."""

    def __init__(self, host):
        self._host = host

    @property
    def __cuda_array_interface__(self):
        ai = self._host.__array_interface__
        return {"shape": ai["shape"], "typestr": ai["typestr"], "data": ai["data"],
                "strides": ai["strides"], "version": 3}

    def copy_to_host(self):
        return self._host.copy()


def to_device(a):
    """A device copy of the host array `a` (in the simulator, a host copy
    shown as a device array)."""
    from numba import cuda

    a = np.ascontiguousarray(a)
    return SimulatedDeviceArray(a.copy()) if cuda.config.ENABLE_CUDASIM else cuda.to_device(a)


class Exported:
    """Another device array's interface with some fields replaced (a read-only
    flag, strides, a mask) for the checks."""

    def __init__(self, array, readonly=None, **fields):
        self._array, self._readonly, self._fields = array, readonly, fields

    @property
    def __cuda_array_interface__(self):
        interface = dict(self._array.__cuda_array_interface__)
        if self._readonly is not None:
            interface["data"] = (interface["data"][0], self._readonly)
        interface.update(self._fields)
        return interface
