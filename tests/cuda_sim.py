"""Shared by the CUDA test files: the choice of Numba's simulator, the
stand-ins for device arrays, and the comparison of device results with the
reference's. Import it before numba: a GPU is used when one is visible, the
simulator otherwise (an explicit NUMBA_ENABLE_CUDASIM wins)."""

import math
import os
import shutil
import subprocess

import numpy as np
import pytest


def _gpu_visible() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0" if _gpu_visible() else "1")


def numba_cuda():
    """``numba.cuda``, or a skip of the calling test module without numba-cuda
    or without a device (a GPU or, when numba came first, no simulator)."""
    cuda = pytest.importorskip("numba.cuda")
    if not cuda.is_available():
        pytest.skip("no CUDA device, and numba was imported before the simulator could be chosen",
                    allow_module_level=True)
    return cuda


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


def device(a):
    """A device copy of host array, Q8State or Q4State `a` (bfloat16 as a
    BFloat16Array)."""
    from lrfast.cuda.devicearrays import BFloat16Array
    from lrfast.precision import Q4State, Q8State

    if isinstance(a, Q8State):
        return Q8State(to_device(a.codes), to_device(a.absmax), a.signed)
    if isinstance(a, Q4State):
        return Q4State(to_device(a.codes), to_device(a.absmax), a.shape, a.signed)
    if a.dtype.name == "bfloat16":
        return BFloat16Array(to_device(a.view(np.uint16)))
    return to_device(a)


def host(d):
    """A host copy of a device array, Q8State or Q4State made by `device`."""
    from lrfast.precision import Q4State, Q8State

    if isinstance(d, Q8State):
        return Q8State(host(d.codes), host(d.absmax), d.signed)
    if isinstance(d, Q4State):
        return Q4State(host(d.codes), host(d.absmax), d.shape, d.signed)
    return d.copy_to_host()


def assert_same(got, want, what):
    """A device result `got` against the reference's `want` (arrays,
    Q8States or Q4States): bitwise in the simulator, which computes in NumPy
    scalars and fuses nothing; on a GPU, where NVVM may contract multiply-adds,
    16-bit values within one ulp, q8/q4 codes within one code, float32 and
    float64 close."""
    from numba import cuda
    from lrfast.precision import Q4State, Q8State, unpack_nibbles

    simulated = cuda.config.ENABLE_CUDASIM
    if isinstance(want, (Q8State, Q4State)):
        assert type(got) is type(want) and got.signed == want.signed, what
        assert got.shape == want.shape, what
        if simulated:
            np.testing.assert_array_equal(got.codes, want.codes, err_msg=f"{what} codes")
            np.testing.assert_array_equal(got.absmax.view(np.uint32),
                                          want.absmax.view(np.uint32), err_msg=f"{what} absmax")
        else:
            codes = [c if isinstance(want, Q8State) else unpack_nibbles(c, math.prod(want.shape))
                     for c in (got.codes, want.codes)]
            diff = np.abs(codes[0].astype(int) - codes[1].astype(int))
            assert diff.max(initial=0) <= 1, what
            np.testing.assert_allclose(got.absmax, want.absmax, rtol=1e-5, err_msg=what)
        return
    assert got.dtype == want.dtype and got.shape == want.shape, what
    bits = {2: np.int16, 4: np.int32, 8: np.int64}[want.dtype.itemsize]
    if simulated:
        np.testing.assert_array_equal(got.view(bits), want.view(bits), err_msg=what)
    elif want.dtype.itemsize == 2:
        diff = np.abs(got.view(bits).astype(int) - want.view(bits).astype(int))
        assert diff.max(initial=0) <= 1, what
    else:
        rtol = 1e-5 if want.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=what)
