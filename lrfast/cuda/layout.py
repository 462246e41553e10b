"""From the arrays of one call to checked device tables, cached per layout.

Checks: every array's ``__cuda_array_interface__`` becomes a :class:`HostView`,
a host object whose ``__array_interface__`` carries the device pointer, and
``lrfast._core.check`` runs on those: the same dtype, shape, contiguity,
writeability, list-length and overlap checks and messages as the C++ path.
It only looks at pointers and sizes (``numpy.asarray`` of a HostView wraps
the address without reading it), so no data leaves the device.

Cache: a call's *layout* is the interface of every array (pointer, shape,
strides, dtype, read-only flag) plus the argument names. The check and the
piece tables depend on nothing else, so a layout seen before is neither
checked again nor re-uploaded: in a training loop the parameters and states
stay put, and the gradients usually do too (a framework reuses their
buffers), so steps after the first upload nothing. Reading the interfaces to
build the key is the host's whole per-step cost before the launches.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numba import cuda

from .. import _core
from . import is_torch_tensor, launch

CACHED_LAYOUTS = 32  # a loop alternates between a few: step, norm, clip


class HostView:
    """A host stand-in for a device array: ``__array_interface__`` with the
    device pointer, for checks that use addresses and sizes only."""

    def __init__(self, interface: dict):
        self.__array_interface__ = {
            "shape": tuple(interface["shape"]), "typestr": interface["typestr"],
            "data": tuple(interface["data"]), "strides": interface.get("strides"),
            "version": 3}


@dataclass
class Group:
    """The tensors of one dtype in a call: the view spanning them, the piece
    table, and scratch space for norm partials (made on first use)."""

    dtype: np.dtype
    mem: object
    table: object
    n_pieces: int
    partials: object = None
    partials_host: np.ndarray | None = None


_cache: OrderedDict = OrderedDict()  # layout key -> tuple of Groups, least recent first
_cache_lock = threading.Lock()


def prepare(arrays, names, grads_writeable: bool):
    """Checks one call's arrays and returns ``(groups, stream)``: its
    :class:`Group` per dtype and the stream to run on. Raises
    TypeError/ValueError naming the argument and index, before any launch."""
    first = f"{names[0]}[0]"
    interfaces = tuple(None if seq is None else
                       tuple(_interface(a, f"{name}[{t}]", first) for t, a in enumerate(seq))
                       for seq, name in zip(arrays, names))
    key = (names, grads_writeable) + tuple(
        None if seq is None else tuple(_fields(i) for i in seq) for seq in interfaces)
    with _cache_lock:
        groups = _cache.get(key)
        if groups is not None:
            _cache.move_to_end(key)
    if groups is None:
        proxies = tuple(None if seq is None else [HostView(i) for i in seq]
                        for seq in interfaces)
        _core.check(proxies, names, grads_writeable)
        groups = _build(interfaces, names)
        with _cache_lock:
            _cache[key] = groups
            if len(_cache) > CACHED_LAYOUTS:
                _cache.popitem(last=False)
    stream = _stream(arrays[0][0], interfaces[0][0]) if interfaces[0] else cuda.default_stream()
    return groups, stream


def _stream(first, interface: dict):
    """The stream of the call: the first array's (CAI v3), or for a torch
    tensor, which exports no stream, torch's current stream on its device."""
    if is_torch_tensor(first):
        import torch

        handle = torch.cuda.current_stream(first.device).cuda_stream
        interface = {"stream": handle or 1}  # torch's 0 is the legacy default stream
    return launch.stream_of(interface)


def _interface(obj, label: str, first: str) -> dict:
    if is_torch_tensor(obj) and obj.requires_grad:
        obj = obj.detach()  # torch refuses the interface of a tensor that requires grad
    try:
        interface = obj.__cuda_array_interface__
    except AttributeError:
        raise TypeError(f"{label} is not a CUDA device array ({type(obj).__name__}), but "
                        f"{first} is: one call takes arrays on one device") from None
    if interface.get("mask") is not None:
        raise TypeError(f"{label} is a masked device array; lrfast takes plain arrays")
    return interface


def _fields(interface: dict) -> tuple:
    strides = interface.get("strides")
    return (tuple(interface["data"]), tuple(interface["shape"]),
            None if strides is None else tuple(strides), interface["typestr"])


def _build(interfaces, names) -> tuple[Group, ...]:
    """One Group per dtype, in order of first appearance in the params."""
    by_dtype: dict[np.dtype, list[int]] = {}
    for t, interface in enumerate(interfaces[0]):
        by_dtype.setdefault(np.dtype(interface["typestr"]), []).append(t)
    groups = (_group(dtype, tensors, interfaces, names) for dtype, tensors in by_dtype.items())
    return tuple(g for g in groups if g is not None)


def _group(dtype: np.dtype, tensors: list[int], interfaces, names) -> Group | None:
    """The piece table of `tensors` (all of `dtype`); None if all are empty."""
    size = dtype.itemsize
    used = np.array([seq is not None for seq in interfaces])
    lengths = np.array([math.prod(interfaces[0][t]["shape"]) for t in tensors], dtype=np.int64)
    live = [t for t, n in zip(tensors, lengths) if n > 0]
    lengths = lengths[lengths > 0]
    if not live:
        return None
    ptrs = np.zeros((len(live), len(interfaces)), dtype=np.int64)
    for s, seq in enumerate(interfaces):
        for row, t in enumerate(live if seq is not None else ()):
            ptrs[row, s] = seq[t]["data"][0]
            if ptrs[row, s] % size:
                raise ValueError(f"{names[s]}[{t}] is not aligned to its {size}-byte elements")
    base = int(ptrs[:, used].min())
    end = int((ptrs[:, used] + lengths[:, None] * size).max())
    offsets = (ptrs - base) // size * used  # unused slots: 0, never read

    # Cut tensor r into ceil(n_r / CHUNK) pieces starting at CHUNK * j.
    counts = -(-lengths // launch.CHUNK)
    owner = np.repeat(np.arange(len(live)), counts)
    start = launch.CHUNK * (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    table = np.zeros((len(owner), launch.WIDTH), dtype=np.int64)
    table[:, launch.LENGTH] = np.minimum(lengths[owner] - start, launch.CHUNK)
    table[:, 1:1 + len(interfaces)] = offsets[owner] + start[:, None] * used
    launch.counters["tables"] += 1
    return Group(dtype, device_view(base, (end - base) // size, dtype),
                 cuda.to_device(table), len(table))


def device_view(address: int, n: int, dtype: np.dtype):
    """A 1-D device array of `n` elements of `dtype` at `address` that owns
    nothing: the caller's arrays keep the memory alive during a call."""
    interface = {"shape": (n,), "typestr": dtype.str, "data": (address, False),
                 "strides": None, "version": 3}
    if launch.SIMULATED:  # simulated device memory is host memory: wrap a NumPy view
        return cuda.devicearray.FakeCUDAArray(np.asarray(HostView(interface)))
    return cuda.from_cuda_array_interface(interface, owner=None, sync=False)
