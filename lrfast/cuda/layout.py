"""From the arrays of one call to checked device tables, cached per layout.

Checks: every array's ``__cuda_array_interface__`` becomes a :class:`HostView`,
a host object whose ``__array_interface__`` carries the device pointer, and
``lrfast._core.check`` runs on those: the same dtype, shape, contiguity,
writeability, list-length and overlap checks and messages as the C++ path.
It only looks at pointers and sizes (``numpy.asarray`` of a HostView wraps
the address without reading it), so no data leaves the device.

Layout cache: a call's *layout* is the interface of every array (pointer,
shape, strides, dtype, read-only flag) plus the argument names. The check and
the piece tables depend on nothing else, so a layout seen before is neither
checked again nor re-uploaded: in a training loop the parameters and states
stay put, and the gradients usually do too (a framework reuses their
buffers), so steps after the first upload nothing.

Fast path: reading an interface builds a dict in Python, microseconds per
array: most of a thousand-tensor step. So for each call *signature* (the
argument names, whether the grads are written, the lengths of the sequences)
:class:`_Seen` keeps the last call's groups and *prints*: what the check and
the tables see of each array, its type and interface fields, or for a torch
tensor the attributes torch computes its interface from (``data_ptr()``,
shape, dtype, contiguity, device type), which cost a fraction of the
interface. The next call of that signature reuses those groups, reading no
interface and checking nothing, if every array has the print of the array it
takes the place of:

- an array of :data:`FIXED_TYPES` (numba's DeviceNDArray), whose interface
  cannot change while it lives, that is the same object as last time is not
  even printed again. Identity is tracked by weak reference, so the cache
  keeps no memory alive, and the death of a remembered array is noted, so
  that a new object at a reused ``id`` is printed, not taken for the old one;
- every other array is printed at every call, whether the same object or
  not: a torch tensor can move under the same identity (``.data =``,
  ``set_``, ``resize_``, in-place view ops), and an unknown type may too
  (its print is its interface, read again).

Anything else (an element replaced by an array of another layout, a moved
tensor, an array that raises) goes down the full path: the interfaces, the
layout cache, the check, which raises as before.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numba import cuda

from .. import _core, precision
from .._device import is_torch_tensor
from . import access, launch, lowp_layout
from .interfaces import DTYPE_KEY, HostView, LowBitInterface, device_view, dtype_of

CACHED_LAYOUTS = 32  # a loop alternates between a few: step, norm, clip

# Array types whose interface cannot change while the object lives (and that
# can be weakly referenced). Numba's DeviceNDArray sets its pointer, shape,
# strides and dtype in __init__ only; its methods return new arrays. Not its
# Mapped/ManagedNDArray, which are NumPy arrays too, whose shape can be
# assigned; nor CuPy's ndarray, whose shape can be assigned too.
FIXED_TYPES: set[type] = set()
if not launch.SIMULATED:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    FIXED_TYPES.add(DeviceNDArray)


@dataclass
class Group:
    """The tensors of one dtype in a call: the view spanning them (of
    storage(dtype)), the piece table, and scratch space for norm partials
    (made on first use)."""

    dtype: np.dtype
    mem: object
    table: object
    n_pieces: int
    partials: object = None
    partials_host: np.ndarray | None = None


_cache: OrderedDict = OrderedDict()  # layout key -> tuple of Groups, least recent first
_seen: OrderedDict = OrderedDict()   # call signature -> _Seen, least recent first
_cache_lock = threading.Lock()


def prepare(arrays, names, grads_writeable: bool, slice_p: int | None = None):
    """Checks one call's arrays and returns ``(groups, stream)``: its
    :class:`Group` per dtype and the stream to run on. Raises
    TypeError/ValueError naming the argument and index, before any launch.
    With `slice_p` (Prodigy's reduction, whose states hold a slice of each
    param) the groups are always :mod:`.lowp_layout`'s."""
    signature = (names, grads_writeable, slice_p) + tuple(None if seq is None else len(seq)
                                                          for seq in arrays)
    with _cache_lock:  # holds() updates what it remembers: one thread at a time
        seen = _seen.get(signature)
        groups = seen.groups if seen is not None and seen.holds(arrays) else None
        if groups is not None:
            _seen.move_to_end(signature)
    if groups is None:
        groups = _prepare_in_full(arrays, names, grads_writeable, slice_p, signature)
    return groups, _stream(arrays[0])


def _prepare_in_full(arrays, names, grads_writeable: bool, slice_p, signature):
    """The groups of a call not on the fast path: reads every interface,
    checks the layout unless it is cached, and remembers the arrays."""
    first = f"{names[0]}[0]"
    interfaces: tuple = tuple(None if seq is None else
                              tuple(_read(a, f"{name}[{t}]", first) for t, a in enumerate(seq))
                              for seq, name in zip(arrays, names))
    key = (names, grads_writeable, slice_p) + tuple(
        None if seq is None else tuple(_fields(i) for i in seq) for seq in interfaces)
    with _cache_lock:
        groups = _cache.get(key)
        if groups is not None:
            _cache.move_to_end(key)
    if groups is None:
        lowp = lowp_layout.involved(interfaces)  # 16-bit floats or q8 states
        if lowp:
            lowp_layout.check(interfaces, names, grads_writeable, slice_p)
        else:
            proxies = tuple(None if seq is None else [HostView(i) for i in seq]
                            for seq in interfaces)
            _core.check(proxies, names, grads_writeable, slice_p=slice_p or 0)
        if slice_p is not None or (lowp and names != ("grads",)):
            groups = lowp_layout.build(interfaces, names, slice_p)
        else:
            groups = _build(interfaces, names)
        with _cache_lock:
            _cache[key] = groups
            if len(_cache) > CACHED_LAYOUTS:
                _cache.popitem(last=False)
    prints = [None if seq is None else
              [_print_of(a, i) for a, i in zip(seq, seq_interfaces)]
              for seq, seq_interfaces in zip(arrays, interfaces)]
    seen = _Seen(arrays, prints, groups)
    with _cache_lock:
        _seen[signature] = seen
        if len(_seen) > CACHED_LAYOUTS:
            _seen.popitem(last=False)
    return groups


class _Seen:
    """The arrays of the last call of one signature, with their prints and the
    groups their layout was checked into."""

    def __init__(self, arrays, prints: list, groups: tuple):
        self.groups = groups
        self.prints = prints
        # Per sequence: the print function of its arrays' type (_print where
        # types mix); the places of the arrays whose print can change under
        # the same identity (not of FIXED_TYPES), and their prints.
        # Lists of None or a value, None exactly where `arrays` has no sequence.
        self.printers: list = [None if seq is None else _common_printer(seq) for seq in arrays]
        self.watch: list = [None if seq is None else
                            [t for t, a in enumerate(seq) if type(a) not in FIXED_TYPES]
                            for seq in arrays]
        self.watched = [None if w is None else [ps[t] for t in w]
                        for w, ps in zip(self.watch, prints)]
        # The identities of the sequences with arrays of FIXED_TYPES, by weak
        # reference (the cache keeps no memory alive). A reference's callback
        # runs as its array is freed, before any other object can take its
        # id, and marks the array's sequence dead.
        self.dead: set[int] = set()
        self.ids: list = [None] * len(arrays)
        self.refs: list = [None] * len(arrays)
        for s, (seq, watch) in enumerate(zip(arrays, self.watch)):
            if seq is not None and len(watch) < len(seq):
                self._remember(s, seq)

    def _remember(self, s: int, seq) -> None:
        """Holds weak references to the arrays of `seq`, sequence `s`."""
        dead = self.dead
        died = lambda ref: dead.add(s)  # noqa: E731 (not a method: no cycle through self)
        self.refs[s] = [weakref.ref(a, died) for a in seq]  # frees the old references
        self.ids[s] = list(map(id, seq))
        dead.discard(s)

    def holds(self, arrays) -> bool:
        """Whether `arrays`, of this signature, have the layout checked into
        ``self.groups``; if so, remembers them."""
        try:
            renew = {s for s, ids in enumerate(self.ids)
                     if ids is not None and list(map(id, arrays[s])) != ids}
            # Read after the ids: an array freed before an array of this call
            # could take its id marked its sequence before that array existed.
            renew |= self.dead
            for s, seq in enumerate(arrays):
                printer, watch = self.printers[s], self.watch[s]
                if s in renew or (watch and len(watch) == len(seq)):
                    if list(map(printer, seq)) != self.prints[s]:
                        return False
                elif watch and [printer(seq[t]) for t in watch] != self.watched[s]:
                    return False
        except Exception:  # an array that raises: the full path says what is wrong
            return False
        for s in renew:
            self._remember(s, arrays[s])
        return True


def _print_of(array, interface) -> tuple:
    """`array`'s print (see _print), from its interface unless it is a torch
    tensor or a Q8State or Q4State, whose prints cost less."""
    printer = _printer(type(array))
    if printer is _interface_print:
        return (type(array),) + _fields(interface)
    return printer(array)


def _print(array) -> tuple:
    """What the check and the tables see of `array`: arrays of equal prints
    have equal interfaces (pointer, shape, strides, dtype, read-only flag)."""
    return _printer(type(array))(array)


def _common_printer(seq):
    """The print function of the arrays of `seq`, or _print where types mix."""
    printers = {_printer(type(a)) for a in seq}
    return printers.pop() if len(printers) == 1 else _print


_printers: dict = {}  # array type -> its print function


def _printer(kind: type):
    printer = _printers.get(kind)
    if printer is None:
        torch = sys.modules.get("torch")  # a torch tensor means torch is imported
        exact_torch = torch is not None and kind in (torch.Tensor, torch.nn.Parameter)
        printer = _torch_print if exact_torch else _interface_print
        if kind in (precision.Q8State, precision.Q4State):
            printer = _low_bit_print
        _printers[kind] = printer
    return printer


def _torch_print(t) -> tuple:
    # torch.Tensor.__cuda_array_interface__ is a function of these (and of
    # requires_grad, which _interface detaches away); it has strides only for
    # a tensor that is not contiguous, which the check refuses. A subclass
    # may override the interface: it gets _interface_print.
    return (type(t), t.data_ptr(), t.shape, t.dtype, t.is_contiguous(), t.is_cuda)


def _low_bit_print(state) -> tuple:
    # Its parts can be reassigned: printed, each by its own printer. A
    # Q4State's shape is part of what the check sees (a Q8State's is its codes').
    shape = state.shape if type(state) is precision.Q4State else None
    return (type(state), state.signed, shape, _print(state.codes), _print(state.absmax))


def _interface_print(array) -> tuple:
    return (type(array),) + _fields(_interface(array))


def _stream(params):
    """The stream of the call: the first array's (CAI v3), or for a torch
    tensor, which exports no stream, torch's current stream on its device."""
    if not params:
        return cuda.default_stream()
    first = params[0]
    if is_torch_tensor(first):
        import torch

        handle = torch.cuda.current_stream(first.device).cuda_stream
        return launch.stream_of({"stream": handle or 1})  # torch's 0 is the legacy default stream
    return launch.stream_of(_interface(first))


def _read(obj, label: str, first: str):
    """`obj`'s interface, or a LowBitInterface for a Q8State or Q4State."""
    if type(obj) in (precision.Q8State, precision.Q4State):
        codes = _interface(obj.codes, f"{label}.codes", first)
        absmax = _interface(obj.absmax, f"{label}.absmax", first)
        if type(obj) is precision.Q8State:
            return LowBitInterface(codes, absmax, obj.signed, 8, tuple(codes["shape"]))
        return LowBitInterface(codes, absmax, obj.signed, 4, obj.shape)
    return _interface(obj, label, first)


def _interface(obj, label: str = "", first: str = "") -> dict:
    """`obj`'s interface; `label` and `first` name it and the call's first
    array in the messages. A torch bfloat16 tensor, which exports none, gets
    one built from its fields, tagged with DTYPE_KEY."""
    if is_torch_tensor(obj):
        if obj.requires_grad:
            obj = obj.detach()  # torch refuses the interface of a tensor that requires grad
        if obj.dtype is sys.modules["torch"].bfloat16 and obj.device.type == "cuda":
            return {"shape": tuple(obj.shape), "typestr": "<u2", "data": (obj.data_ptr(), False),
                    "strides": None if obj.is_contiguous() else
                    tuple(2 * s for s in obj.stride()), "version": 3, DTYPE_KEY: "bfloat16"}
    try:
        interface = obj.__cuda_array_interface__
    except AttributeError:
        raise TypeError(f"{label} is not a CUDA device array ({type(obj).__name__}), but "
                        f"{first} is: one call takes arrays on one device") from None
    if interface.get("mask") is not None:
        raise TypeError(f"{label} is a masked device array; lrfast takes plain arrays")
    return interface


def _fields(interface) -> tuple:
    if type(interface) is LowBitInterface:
        return (interface.bits, interface.signed, interface.shape, _fields(interface.codes),
                _fields(interface.absmax))
    strides = interface.get("strides")
    return (tuple(interface["data"]), tuple(interface["shape"]),
            None if strides is None else tuple(strides), interface["typestr"],
            interface.get(DTYPE_KEY))


def storage(dtype: np.dtype) -> np.dtype:
    """The dtype a kernel indexes for `dtype`: uint16 words for bfloat16."""
    return np.dtype(np.uint16) if dtype.name == "bfloat16" else dtype


def _build(interfaces, names) -> tuple[Group, ...]:
    """One Group per dtype, in order of first appearance in the params."""
    by_dtype: dict[np.dtype, list[int]] = {}
    for t, interface in enumerate(interfaces[0]):
        by_dtype.setdefault(dtype_of(interface), []).append(t)
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
    # Every piece of a tensor starts a whole number of tiles in: aligned if the tensor is.
    aligned = (ptrs[:, used] % access.vector_alignment(size) == 0).all(axis=1)
    table[:, launch.VECTOR] = aligned[owner]
    launch.counters["tables"] += 1
    return Group(dtype, device_view(base, (end - base) // size, storage(dtype)),
                 cuda.to_device(table), len(table))
