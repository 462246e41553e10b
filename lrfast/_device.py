"""Which arrays are torch tensors and which live on a CUDA device, told
without importing torch or numba: the router (:mod:`lrfast._backend`) asks at
every call, before it knows whether the CUDA back end is needed at all."""

from __future__ import annotations


def is_torch_tensor(obj) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def is_device_array(obj) -> bool:
    """Whether `obj` is a CUDA device array. A torch CUDA tensor counts even
    when it requires grad, where torch refuses ``__cuda_array_interface__``
    (with a RuntimeError, which ``hasattr`` does not catch)."""
    if is_torch_tensor(obj):
        return obj.device.type == "cuda"
    return hasattr(obj, "__cuda_array_interface__")
