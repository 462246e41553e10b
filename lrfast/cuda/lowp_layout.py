"""Checks and piece tables of calls with bfloat16/float16 arrays or q8/q4 states.

A call is *low precision* when any of its arrays is 16-bit, a Q8State or a
Q4State; other calls keep the C++ path's check (``lrfast._core.check``) and
the one-dtype tables of :mod:`.layout`. The rules (DESIGN.md, "Precision"): a
param is float32, float64, bfloat16 or float16; its grad has its dtype, or
float32 for a 16-bit param; a state is float32, bfloat16, the param's dtype,
a Q8State (codes uint8 of the param's shape, absmax float32 of one value
per 256 codes) or a Q4State (made for the param's shape; codes uint8 of
``ceil(size / 2)`` bytes, absmax float32 of one value per 128 elements),
signed in the slots whose values can be negative; a state that holds weights
(schedule-free's z) holds its param's values (``precision.holds_param``).
:func:`check` applies them and the C++ path's generic checks (list lengths,
shapes, contiguity, writeability, overlap) with the same messages, on host
views of the interfaces: no device memory is read.

Tables: the tensors of a step are grouped by their *kinds* (the dtype of each
slot, q8 or q4 and its map included); each group is one launch of
:mod:`.lowp_launch`. Arrays of different element sizes cannot share one typed
view, so a group has one view per storage type (uint8 codes, 16-bit words,
float32, float64), each spanning that type's arrays, and its table gives
every slot's offset in its own view. A row is ``[length, position, param,
grad, state0, state1, state2, absmax0, absmax1, absmax2]``: ``position`` is
the piece's first element in the call's params laid end to end (stochastic
rounding keys on it), ``absmaxN`` the index of the piece's first q8 or q4
block in the float32 view; a q4 state's column holds the byte of the piece's
first code. Pieces start at multiples of ``Q8_CHUNK`` (a multiple of 256, so
of q4's 128 too, and even) in groups with q8 or q4 states, so a block never
straddles two pieces and a piece's first code is a byte's high nibble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import cuda

from .. import precision
from . import launch
from .interfaces import DTYPE_KEY, HostView, LowBitInterface, device_view, dtype_of

LENGTH, POSITION, PARAM, GRAD, STATE, ABSMAX = 0, 1, 2, 3, 4, 7
WIDTH = 10

# Slot kinds, compile-time constants of the kernels.
NONE, F32, F64, F16, BF16, Q8_SIGNED, Q8_UNSIGNED, Q4_SIGNED, Q4_UNSIGNED = range(9)
Q8_KINDS = (Q8_SIGNED, Q8_UNSIGNED)
Q4_KINDS = (Q4_SIGNED, Q4_UNSIGNED)
LOW_BIT_KINDS = Q8_KINDS + Q4_KINDS

# The views of a group, in the kernel's argument order.
CODES, WORDS, HALVES, SINGLES, DOUBLES = range(5)
_VIEW_DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)

_FLOAT_NAMES = ("float32", "float64", "bfloat16", "float16")
_KIND_OF_NAME = {"float32": F32, "float64": F64, "float16": F16, "bfloat16": BF16}


def involved(interfaces) -> bool:
    """Whether a call's interfaces hold a 16-bit float or a q8 or q4 state."""
    for seq in interfaces:
        for i in seq or ():
            if type(i) is LowBitInterface or i["typestr"] == "<f2" or DTYPE_KEY in i:
                return True
    return False


def _host_view(interface: dict) -> np.ndarray:
    return np.asarray(HostView(interface))


def check(interfaces, names: tuple, grads_writeable: bool, slice_p: int | None = None) -> None:
    """Raises TypeError/ValueError naming the argument and index for anything
    a low-precision call cannot take; reads no device memory. With `slice_p`
    (Prodigy's reduction) a state is 1-D, of ``ceil(param.size / slice_p)``
    elements."""
    grads_alone = names == ("grads",)
    n = len(interfaces[0])
    for seq, name in zip(interfaces[1:], names[1:]):
        if seq is not None and len(seq) != n:
            raise ValueError(f"len({name}) = {len(seq)} does not match len({names[0]}) = {n}")
    spans = []  # (first byte, end, label, written)

    def generic(view, label, written):
        if not view.flags.c_contiguous:
            raise ValueError(f"{label} is not C-contiguous")
        if written and not view.flags.writeable:
            raise ValueError(f"{label} is read-only")
        if view.size:
            lo = view.__array_interface__["data"][0]
            spans.append((lo, lo + view.nbytes, label, written))

    for t in range(n):
        param: tuple | None = None  # (dtype, shape, label) of params[t]
        for s, (seq, name) in enumerate(zip(interfaces, names)):
            if seq is None:
                continue
            label, x = f"{name}[{t}]", seq[t]
            is_grad = grads_alone or s == 1
            written = not is_grad or grads_writeable
            if type(x) is LowBitInterface:
                if param is None or is_grad:
                    raise TypeError(f"{label} is a q{x.bits} state; {name} must be arrays")
                if name in precision.WEIGHT_STATES:
                    raise _narrow_weights(label, f"is a q{x.bits} state", param)
                _check_low_bit(x, name, label, _state_of(param, slice_p), generic)
                continue
            view, dtype = _host_view(x), dtype_of(x)
            if dtype.name not in _FLOAT_NAMES or not dtype.isnative:
                raise TypeError(f"{label} has dtype {dtype}; expected float32, float64, "
                                "bfloat16 or float16")
            if param is None and not grads_alone:
                param = (dtype, view.shape, label)
            elif param is not None:  # (never set when grads come alone)
                p_dtype, p_shape, p_label = param
                widened = p_dtype.itemsize == 2 and dtype == np.float32
                if is_grad and not (dtype == p_dtype or widened):
                    raise TypeError(f"{label} has dtype {dtype} but {p_label} has {p_dtype} "
                                    "(a grad has its param's dtype, or float32 for a 16-bit param)")
                if (name in precision.WEIGHT_STATES
                        and not precision.holds_param(dtype.name, p_dtype.name)):
                    raise _narrow_weights(label, f"has dtype {dtype}", param)
                if not is_grad and dtype not in (p_dtype, np.float32, precision.bfloat16()):
                    raise TypeError(f"{label} has dtype {dtype} but {p_label} has {p_dtype} "
                                    "(a state is float32, bfloat16, the param's dtype or q8)")
                _, shape, owner = param if is_grad else _state_of(param, slice_p)
                if view.shape != shape:
                    raise ValueError(f"{label} has shape {view.shape} but {owner} has shape "
                                     f"{shape}")
            generic(view, label, written)
    _check_overlap(spans)


def _narrow_weights(label: str, what: str, param: tuple) -> ValueError:
    """The C++ path's error for a weight state `label` (schedule-free's z),
    which `what`, that cannot hold the values of `param`."""
    p_dtype, _, p_label = param
    also = " or float32" if p_dtype.itemsize == 2 else ""
    return ValueError(f"{label} {what}, which cannot hold the values of {p_label} ({p_dtype}): "
                      f"z holds the weights, so it must be {p_dtype}{also}")


def _state_of(param: tuple, slice_p: int | None) -> tuple:
    """``(dtype, shape, label)`` of what a state of `param` mirrors: the param,
    or with `slice_p` its flattened slice ``[::slice_p]``."""
    if slice_p is None:
        return param
    dtype, shape, label = param
    return dtype, (-(-math.prod(shape) // slice_p),), f"the slice {label}.ravel()[::{slice_p}]"


def _check_low_bit(x, name: str, label: str, param: tuple, generic) -> None:
    """Checks a q8 or q4 state `x` of slot `name` against what it mirrors,
    `param` (see _state_of), with the C++ path's messages where it has them."""
    p_dtype, p_shape, p_label = param
    kind = f"q{x.bits}"
    if not x.signed and name in precision.SIGNED_STATES:
        raise ValueError(f"{label}: an unsigned {kind} state cannot hold values that can be "
                         f"negative; make it with zeros_state(param, '{kind}', signed=True)")
    size = math.prod(p_shape)
    if x.bits == 8:
        codes_shape, block = p_shape, precision.BLOCK
    else:  # flat codes, two a byte: the shape it was made for is an attribute
        if x.shape != p_shape:
            raise ValueError(f"{label} has shape {x.shape} but {p_label} has shape {p_shape}")
        codes_shape, block = ((size + 1) // 2,), precision.Q4_BLOCK
    for part, interface, dtype, shape in (("codes", x.codes, np.uint8, codes_shape),
                                          ("absmax", x.absmax, np.float32, (-(-size // block),))):
        view, got = _host_view(interface), dtype_of(interface)
        if got != dtype:
            raise TypeError(f"{label}.{part} has dtype {got}; expected {np.dtype(dtype)}")
        if view.shape != shape:
            raise ValueError(f"{label}.{part} has shape {view.shape} but {p_label} needs "
                             f"{shape}")
        generic(view, f"{label}.{part}", True)


def _check_overlap(spans) -> None:
    """The C++ path's rule: no written array may overlap another array."""
    spans.sort(key=lambda s: s[0])
    furthest: tuple | None = None
    furthest_written: tuple | None = None
    for span in spans:
        lo, hi, label, written = span
        other = furthest if written else furthest_written
        if other is not None and lo < other[1]:
            raise ValueError(f"{other[2]} and {label} overlap in memory "
                             "(the same array passed twice?)")
        if furthest is None or hi > furthest[1]:
            furthest = span
        if written and (furthest_written is None or hi > furthest_written[1]):
            furthest_written = span


# -- tables ---------------------------------------------------------------------------

@dataclass
class LowpGroup:
    """The tensors of one kind combination in a low-precision step."""

    kinds: tuple           # the kind of params, grads and the three states
    arithmetic: np.dtype   # float64 for float64 params, float32 otherwise
    views: tuple           # CODES, WORDS, HALVES, SINGLES, DOUBLES
    table: object
    n_pieces: int
    partials: object = None  # Prodigy's reduction: scratch space for its sums (made on first use)
    partials_host: np.ndarray | None = None


def _kind(interface) -> int:
    if interface is None:
        return NONE
    if type(interface) is LowBitInterface:
        if interface.bits == 8:
            return Q8_SIGNED if interface.signed else Q8_UNSIGNED
        return Q4_SIGNED if interface.signed else Q4_UNSIGNED
    return _KIND_OF_NAME[dtype_of(interface).name]


# The views holding a slot's arrays, by kind: a q8 or q4 state's codes, then absmax.
_VIEWS_OF_KIND = {NONE: (), F32: (SINGLES,), F64: (DOUBLES,), F16: (WORDS,), BF16: (WORDS,),
                  **{kind: (CODES, SINGLES) for kind in LOW_BIT_KINDS}}


def _arrays(interface) -> tuple:
    if type(interface) is LowBitInterface:
        return (interface.codes, interface.absmax)
    return (interface,)


def build(interfaces, names, slice_p: int | None = None) -> tuple[LowpGroup, ...]:
    """The groups of a checked low-precision step, in order of first
    appearance. With `slice_p` (Prodigy's reduction) a table row is a piece
    of the states' elements, of a tensor's slice ``[::slice_p]``: its params
    and grads columns hold the offset of the piece's first element in the
    param, whose next elements a kernel finds `slice_p` apart (its position
    column is unused: the reduction rounds nothing stochastically)."""
    n_slots = len(interfaces)
    sizes = [math.prod(i["shape"]) for i in interfaces[0]]
    positions = np.cumsum([0] + sizes[:-1])
    by_kinds: dict[tuple, list[int]] = {}
    for t, size in enumerate(sizes):
        kinds = tuple(_kind(seq[t] if seq is not None else None) for seq in interfaces)
        kinds += (NONE,) * (5 - n_slots)
        if size:
            by_kinds.setdefault(kinds, []).append(t)
    if slice_p is not None:
        sizes = [-(-size // slice_p) for size in sizes]
    return tuple(_group(kinds, tensors, interfaces, names, sizes, positions, slice_p or 1)
                 for kinds, tensors in by_kinds.items())


def span(view: int, interface: dict, label: str) -> tuple[int, int, int]:
    """``(view, start, stop)``: the addresses of an array read through `view`,
    checked for the view's alignment."""
    ptr = interface["data"][0]
    itemsize = np.dtype(_VIEW_DTYPES[view]).itemsize
    if ptr % itemsize:
        raise ValueError(f"{label} is not aligned to its {itemsize}-byte elements")
    return view, ptr, ptr + math.prod(interface["shape"]) * itemsize


def spanning_views(spans) -> tuple[list, tuple]:
    """From ``(view, start, stop)`` spans: each view's lowest address (None
    where no array uses it; float16's halves those of its words), and device
    views from there over all its arrays (a dummy where unused)."""
    base: list = [None] * len(_VIEW_DTYPES)
    end: list = [None] * len(_VIEW_DTYPES)
    for view, start, stop in spans:
        base[view] = start if base[view] is None else min(base[view], start)
        end[view] = stop if end[view] is None else max(end[view], stop)
    if base[WORDS] is not None:
        base[HALVES], end[HALVES] = base[WORDS], end[WORDS]
    views = tuple(_dummy(dtype) if base[v] is None else
                  device_view(base[v], (end[v] - base[v]) // np.dtype(dtype).itemsize,
                              np.dtype(dtype))
                  for v, dtype in enumerate(_VIEW_DTYPES))
    return base, views


def _group(kinds, tensors, interfaces, names, sizes, positions, slice_p) -> LowpGroup:
    # Where each slot's arrays lie, per view: [view][slot] -> addresses by tensor.
    address = np.zeros((len(_VIEW_DTYPES), 5, len(tensors)), dtype=np.int64)
    spans = []
    for s, kind in enumerate(kinds):
        for r, t in enumerate(tensors if kind != NONE else ()):
            for view, interface in zip(_VIEWS_OF_KIND[kind], _arrays(interfaces[s][t])):
                spans.append(span(view, interface, f"{names[s]}[{t}]"))
                address[view, s, r] = spans[-1][1]
    base, views = spanning_views(spans)

    chunk = launch.Q8_CHUNK if any(k in LOW_BIT_KINDS for k in kinds) else launch.CHUNK
    lengths = np.array([sizes[t] for t in tensors], dtype=np.int64)
    counts = -(-lengths // chunk)
    owner = np.repeat(np.arange(len(tensors)), counts)
    start = chunk * (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    table = np.zeros((len(owner), WIDTH), dtype=np.int64)
    table[:, LENGTH] = np.minimum(lengths[owner] - start, chunk)
    table[:, POSITION] = positions[tensors][owner] + start
    for s, kind in enumerate(kinds):
        # A slot's array in its own column; a q8 or q4 state's absmax in an
        # ABSMAX column, where a piece starts at its first block. Where the
        # piece starts in the array: `start` elements in, times `stride` for
        # the params and grads (the slice's elements), halved for q4 codes
        # (two a byte; `start` is even), and start // block in absmax.
        stride = slice_p if s < 2 else 1
        block = precision.Q4_BLOCK if kind in Q4_KINDS else precision.BLOCK
        for column, view in zip((PARAM + s, ABSMAX + s - 2), _VIEWS_OF_KIND[kind]):
            itemsize = np.dtype(_VIEW_DTYPES[view]).itemsize
            first = (address[view, s][owner] - base[view]) // itemsize
            if column >= ABSMAX:
                table[:, column] = first + start // block
            elif kind in Q4_KINDS:
                table[:, column] = first + start // 2
            else:
                table[:, column] = first + stride * start
    launch.counters["tables"] += 1
    arithmetic = np.dtype(np.float64 if kinds[0] == F64 else np.float32)
    return LowpGroup(kinds, arithmetic, views, cuda.to_device(table), len(table))


_dummies: dict = {}


def _dummy(dtype):
    """A one-element device array standing for a view a group does not use."""
    if dtype not in _dummies:
        _dummies[dtype] = cuda.device_array(1, dtype)
    return _dummies[dtype]
