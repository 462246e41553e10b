"""Multi-tensor launches: one kernel over a table of pieces of many tensors.

Numba cannot turn a raw address into an array inside a kernel (that needs an
LLVM intrinsic, which the simulator cannot run), and a tuple of a thousand
arrays would overflow the kernel's parameter space and compile once per list
length. So a list is handed to a kernel as

- ``mem``: one 1-D array of the list's dtype that starts at the lowest
  address among the list's arrays and spans to the highest end. It is a
  view made from a pointer, owns nothing, and the kernels only touch the
  elements that belong to the tensors; the memory in between is never read;
- ``table``: an int64 array with one row per *piece*, ``[length, offset of
  the piece in the call's first array, in its second, ..., vector]``
  (``WIDTH`` columns, 0 for the slots a call does not use), offsets counted
  in elements from the start of ``mem``; ``vector`` is 1 where every array
  of the piece is aligned for :mod:`.access`'s vector loads. A tensor is cut
  into pieces of at most ``CHUNK`` elements, so a large tensor spreads over
  many blocks and a small one is a single piece.

A kernel walks the pieces with a grid-stride loop (block b takes pieces b,
b + gridDim, ...) and the elements of a piece a tile of ``TILE = ILP *
THREADS`` elements at a time, ILP elements per thread (:mod:`.access`), so
any grid size is correct. The grid is what the device holds at once: its
multiprocessors times the blocks of THREADS threads one of them runs
together. A list therefore costs one launch per dtype in it, whatever its
length.

The simulator runs every CUDA thread as a Python thread, so it gets a tiny
geometry (8 threads, 2 elements each, pieces of 16 elements, 2 blocks):
small test tensors then still split into several pieces of whole and
partial tiles, and the grid-stride loops wrap. Calls with q8 or q4 states
cut pieces at multiples of a q8 block (``Q8_CHUNK``, 256 elements in the
simulator; q4 blocks are 128), so that one CUDA block owns each q8 or q4
block and each byte of q4 codes.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

# numba-cuda 0.30.4, its last release, registers an overload of np.row_stack,
# which NumPy 2.5 removed, as it compiles its first kernel: under NumPy 2.5
# every launch raised AttributeError (NVIDIA/numba-cuda#907, not to be fixed
# there). row_stack was an alias of vstack; the alias is all it needs. Set
# before any lrfast kernel compiles, as every launch goes through this module.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402
from numba.cuda.core.errors import NumbaPerformanceWarning  # noqa: E402

SIMULATED = bool(cuda.config.ENABLE_CUDASIM)

THREADS = 8 if SIMULATED else 256   # threads per block (a power of two: norms reduce by halves)
CHUNK = 16 if SIMULATED else 16384  # elements per piece
Q8_CHUNK = 256 if SIMULATED else CHUNK  # elements per piece with q8/q4 states: whole blocks
ILP = 2 if SIMULATED else 4         # elements per thread at a time (see .access)
TILE = ILP * THREADS
# Pieces but a tensor's last are whole tiles, which start aligned where the tensor is.
assert Q8_CHUNK % 256 == 0 and THREADS & (THREADS - 1) == 0 and CHUNK % TILE == 0

# The table's columns: a piece's length, its offset in each array of the call
# (params, grads and up to three states), whether they are all aligned.
LENGTH, VECTOR, WIDTH = 0, 6, 7

counters = {"launches": 0, "tables": 0}


def elementwise(vector, strided):
    """A kernel ``kernel(mem, table, k)`` that runs the device functions
    ``vector(mem, piece, i, n, k)`` and ``strided(mem, piece, i, n, k)`` of
    :func:`.access.tiles` over every piece of the table (``piece``: its row
    as a tuple, ``n`` its length): ``vector`` on the whole tiles of a piece
    whose VECTOR column is set, ``strided`` on the rest; ``k`` is the tuple
    of per-step scalars."""

    @cuda.jit
    def kernel(mem, table, k):
        t = cuda.threadIdx.x
        for c in range(cuda.blockIdx.x, table.shape[0], cuda.gridDim.x):
            # A tuple in registers: read once per piece, not after each store
            # to mem (which the compiler cannot prove does not alias table).
            row = table[c]
            piece = (row[0], row[1], row[2], row[3], row[4], row[5], row[6])
            n = piece[LENGTH]
            whole = n - n % TILE if piece[VECTOR] else 0
            for i in range(ILP * t, whole, TILE):
                vector(mem, piece, i, n, k)
            for i in range(whole + t, n, TILE):
                strided(mem, piece, i, n, k)

    return kernel


@functools.cache
def max_blocks() -> int:
    """The grid-size cap for this device: the blocks of THREADS threads that
    all its multiprocessors hold at once (fewer where a kernel's registers
    or shared memory leave room for fewer: those wait for a free slot, and
    the grid-stride loops give them the same share of pieces)."""
    if SIMULATED:
        return 2
    device = cuda.get_current_device()
    return device.MULTIPROCESSOR_COUNT * (device.MAX_THREADS_PER_MULTIPROCESSOR // THREADS)


@cuda.jit(device=True)
def block_sums(sums, t):
    """``sums[k, 0]`` becomes the sum of ``sums[k, :THREADS]`` for every k,
    thread `t` of the block adding halves in a fixed tree (the same bits for
    any grid); barriers before and after."""
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width:
            for k in range(sums.shape[0]):
                sums[k, t] += sums[k, t + width]
        cuda.syncthreads()
        width //= 2


def launch(kernel, n_pieces: int, stream, *args) -> None:
    """Launches `kernel` over a table of `n_pieces` pieces on `stream`."""
    counters["launches"] += 1
    with warnings.catch_warnings():
        # Numba hints at low occupancy below 128 blocks; a short list is a
        # small grid by design (one block per piece), so the hint does not apply.
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        configured = kernel[min(n_pieces, max_blocks()), THREADS, stream]
    configured(*args)


def stream_of(interface: dict):
    """The stream to launch on, from an array's interface (CAI v3): the
    producer's stream, so that work queued on it before the call (the backward
    pass) comes first, without synchronising the host."""
    handle = interface.get("stream")
    if handle is None:
        return cuda.default_stream()
    if handle == 1:
        return cuda.legacy_default_stream()
    if handle == 2:
        return cuda.per_thread_default_stream()
    return cuda.external_stream(handle)
