"""Adafactor's call on the device: its checks, and its tables of pieces,
rows and columns, cached per layout (:mod:`.adafactor_kernels` runs them).

Checks: the C++ path's own, ``lrfast._core.adafactor(..., check_only=True)``
on host views of the interfaces (bfloat16 ones viewed as ml_dtypes'
bfloat16), which read no device memory: the same errors and messages, raised
before any launch.

Tables, per *group* (the tensors of one param and grad dtype: one launch of
each pass). A param of 2 or more dims is a batch of matrices of ``rows x
cols`` (its last two dims); each matrix is cut into pieces of whole rows,
``rows_per_piece(cols)`` of them, so that one CUDA block owns a row's sum
(and a piece's share of each column's sum) whatever the grid size. A param
of 0 or 1 dims is cut into pieces of ``CHUNK`` elements. Every cut depends
on the shapes only. A piece's row of the table (int64) holds, in the columns
that :mod:`.lowp_launch`'s loaders read (``PARAM + slot``), the offsets of
its first element in each array's view: ``row_var`` at its first row,
``col_var`` at its matrix's first column, ``variance`` at its first element.

Scratch space (float64, on the device, per group, reused by each call of the
layout): per piece its sum of p**2 and of u**2; per tensor the update's
scale; per row of a matrix its sum of g**2, then its ``1 / sqrt(R_i / rmean)``;
per piece and column its share of the column's sum of g**2; per column of a
matrix ``1 / sqrt(C_j)``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numba import cuda

from .. import _core
from ..reference_adafactor import adafactor_eps1
from . import launch, layout
from .interfaces import HostView, dtype_of
from .lowp_layout import (BF16, DOUBLES, F16, F32, F64, SINGLES, WORDS, _VIEW_DTYPES, span,
                          spanning_views)

# A piece's row. N: its rows (a matrix's piece) or elements; COLS: its
# matrix's columns, 0 for a full-variance piece; ROWS_AT: its first row in
# the row scratch; PARTS_AT: its column sums in the column-sum scratch;
# COLS_AT: its matrix's first column in the column scratch.
N, TENSOR, PARAM, GRAD, ROW_VAR, COL_VAR, VARIANCE, COLS, ROWS_AT, PARTS_AT, COLS_AT = range(11)
WIDTH = 11
# A matrix's row: ROW_VAR to COLS_AT as a piece's (ROWS_AT and PARTS_AT at
# its first piece), PIECES its piece count, ROWS its rows.
PIECES, ROWS = N, TENSOR

# Rows a piece holds at most: each thread keeps a sum per row in shared memory.
MAX_ROWS = 4 if launch.SIMULATED else 16
CACHED_LAYOUTS = 32

_VIEW_OF_KIND = {F32: SINGLES, F64: DOUBLES, F16: WORDS, BF16: WORDS}
_KIND_OF_NAME = {"float32": F32, "float64": F64, "float16": F16, "bfloat16": BF16}


def rows_per_piece(cols: int) -> int:
    """The rows of a matrix of `cols` columns in one piece: about CHUNK elements."""
    return max(1, min(MAX_ROWS, launch.CHUNK // cols))


@dataclass
class Group:
    """The tensors of one (param, grad) dtype pair: views, tables, scratch."""

    kinds: tuple            # param kind, grad kind, state kind (lowp_layout's)
    arithmetic: np.dtype    # float64 for float64 params, float32 otherwise
    eps1_default: float     # the param dtype's machine epsilon (torch's eps1 = None)
    views: tuple            # CODES, WORDS, HALVES, SINGLES, DOUBLES
    pieces: object          # (n_pieces, WIDTH)
    factored: object        # the indices of the pieces of matrices
    matrices: object        # (n_matrices, WIDTH)
    tensors: object         # (n_tensors, 3): first piece, piece count, size
    n_pieces: int
    n_factored: int
    n_matrices: int
    n_tensors: int
    scratch: dict           # name -> float64 device array


_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()


def prepare(arrays, names, hparams: dict):
    """Checks a call over (params, grads, row_vars, col_vars, variances) as
    the C++ path does and returns ``(groups, stream)``."""
    first = f"{names[0]}[0]"
    interfaces = tuple(
        None if seq is None else
        tuple(None if a is None else layout._interface(a, f"{name}[{t}]", first)
              for t, a in enumerate(seq))
        for seq, name in zip(arrays, names))
    key = (names,) + tuple(None if seq is None else
                           tuple(None if i is None else layout._fields(i) for i in seq)
                           for seq in interfaces)
    with _lock:
        groups = _cache.get(key)
        if groups is not None:
            _cache.move_to_end(key)
    if groups is None:
        proxies = tuple(None if seq is None else [None if i is None else _host_view(i)
                                                  for i in seq] for seq in interfaces)
        _core.adafactor(proxies, names, hparams, True)
        groups = _build(interfaces, names)
        with _lock:
            _cache[key] = groups
            if len(_cache) > CACHED_LAYOUTS:
                _cache.popitem(last=False)
    return groups, layout._stream(arrays[0])


def _host_view(interface: dict) -> np.ndarray:
    """A host array at the device address (never read), of the interface's dtype."""
    view = np.asarray(HostView(interface))
    dtype = dtype_of(interface)
    return view.view(dtype) if dtype != view.dtype else view


def _build(interfaces, names) -> tuple[Group, ...]:
    by_kinds: dict[tuple, list[int]] = {}
    for t, p in enumerate(interfaces[0]):
        if math.prod(p["shape"]):  # a param without elements is left as it is
            kinds = (_KIND_OF_NAME[dtype_of(p).name], _KIND_OF_NAME[dtype_of(interfaces[1][t]).name])
            by_kinds.setdefault(kinds, []).append(t)
    return tuple(_group(kinds, tensors, interfaces, names) for kinds, tensors in by_kinds.items())


def _group(kinds, tensors, interfaces, names) -> Group:
    state_kind = F64 if kinds[0] == F64 else F32
    kinds = kinds + (state_kind,)
    # Each array's view and address; each view spans its arrays.
    located = {(t, slot): span(_VIEW_OF_KIND[kinds[min(slot, 2)]], seq[t], f"{names[slot]}[{t}]")
               for t in tensors for slot, seq in enumerate(interfaces)
               if seq is not None and seq[t] is not None}
    base, views = spanning_views(located.values())
    offset = {key: (ptr - base[view]) // np.dtype(_VIEW_DTYPES[view]).itemsize
              for key, (view, ptr, _) in located.items()}

    pieces: list[list[int]] = []
    matrices: list[list[int]] = []
    tensor_rows: list[list[int]] = []
    n_rows = n_parts = n_cols = 0
    for r, t in enumerate(tensors):
        shape = tuple(interfaces[0][t]["shape"])
        size = math.prod(shape)
        first = len(pieces)
        if len(shape) >= 2:
            rows, cols = shape[-2], shape[-1]
            step = rows_per_piece(cols)
            for b in range(size // (rows * cols)):
                matrices.append([-(-rows // step), rows, 0, 0, offset[t, 2] + b * rows,
                                 offset[t, 3] + b * cols, 0, cols, n_rows, n_parts, n_cols])
                for lo in range(0, rows, step):
                    at = (b * rows + lo) * cols
                    pieces.append([min(step, rows - lo), r, offset[t, 0] + at, offset[t, 1] + at,
                                   offset[t, 2] + b * rows + lo, offset[t, 3] + b * cols, 0,
                                   cols, n_rows + lo, n_parts, n_cols])
                    n_parts += cols
                n_rows += rows
                n_cols += cols
        else:
            for lo in range(0, size, launch.CHUNK):
                pieces.append([min(launch.CHUNK, size - lo), r, offset[t, 0] + lo,
                               offset[t, 1] + lo, 0, 0, offset[t, 4] + lo, 0, 0, 0, 0])
        tensor_rows.append([first, len(pieces) - first, size])
    table = np.array(pieces, dtype=np.int64).reshape(-1, WIDTH)
    factored = np.flatnonzero(table[:, COLS]).astype(np.int64)
    launch.counters["tables"] += 1
    scratch = {name: cuda.device_array(max(n, 1), np.float64) for name, n in (
        ("p_sq", len(pieces)), ("u_sq", len(pieces)), ("scale", len(tensors)),
        ("row_sums", n_rows), ("row_rsqrt", n_rows), ("col_sums", n_parts),
        ("col_rsqrt", n_cols))}
    param_dtype = dtype_of(interfaces[0][tensors[0]])
    return Group(kinds, np.dtype(np.float64 if kinds[0] == F64 else np.float32),
                 adafactor_eps1(None, param_dtype), views, cuda.to_device(table),
                 cuda.to_device(factored if len(factored) else np.zeros(1, np.int64)),
                 cuda.to_device(np.array(matrices, dtype=np.int64).reshape(-1, WIDTH)
                                if matrices else np.zeros((1, WIDTH), np.int64)),
                 cuda.to_device(np.array(tensor_rows, dtype=np.int64)),
                 len(pieces), len(factored), len(matrices), len(tensors), scratch)

