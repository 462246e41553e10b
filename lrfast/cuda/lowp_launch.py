"""The low-precision step kernel: the optimizer bodies of :mod:`.optimizers`
between loads that widen and stores that round or quantize.

One kernel per group of :mod:`.lowp_layout` (tensors of one kind
combination), compiled per (optimizer options, kinds, arithmetic dtype,
stochastic rounding): every slot's load and store is chosen here, in Python,
so the kernel has no dtype branches. Per element, as lrfast.reference:

1. load: widen 16-bit values, dequantize q8 (``map[code] * absmax``, one
   float32 rounding), convert to the arithmetic dtype (float32 for 16-bit
   and float32 params, float64 for float64 params);
2. the body, in reference order (:meth:`.optimizers.Optimizer.plan`);
3. store the param (round to nearest even, or stochastically for a 16-bit
   param with ``R(position)`` of the call's key) and the float/16-bit states
   (round to nearest even); the q8 states' new values go to shared memory.

With q8 states a CUDA block walks its piece one q8 block (256 elements) at a
time: its threads update the block's elements, reduce each q8 slot's new
extreme (the value of largest magnitude; a NaN wins, as in np.max), then
quantize the values from shared memory with the scale it gives and write
the codes and the scale (``absmax``). So the param update uses the
new moments before quantization, and each block is read and written once.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32, float64
from numba.types import float16

from ..precision import BLOCK
from . import launch, lowp
from .lowp_layout import (ABSMAX, BF16, CODES, DOUBLES, F16, F32, F64, HALVES, LENGTH, NONE,
                          PARAM, POSITION, Q8_KINDS, Q8_SIGNED, SINGLES, WORDS)

THREADS = launch.THREADS


def run(optimizer, hp: dict, groups, stream) -> None:
    """One step of `optimizer` over the low-precision `groups` on `stream`.
    ``hp["stochastic_rounding"]`` (0/1, absent: 0) and ``hp["sr_key"]`` (the
    call's key, from lrfast._hparams.rounding) drive the stochastic rounding."""
    flags, scalars = optimizer.plan(hp, exact=True)
    states, stores = optimizer.states(hp), optimizer.stores(hp)
    stochastic = bool(hp.get("stochastic_rounding", 0))
    key = np.uint64(int(hp.get("sr_key", 0)) if stochastic else 0)
    for g in groups:
        sr = stochastic and g.kinds[0] in (F16, BF16)
        kernel = _kernel(optimizer.body, flags, states, stores, g.kinds, g.arithmetic.name, sr)
        launch.launch(kernel, g.n_pieces, stream, *g.views, g.table,
                      tuple(g.arithmetic.type(s) for s in scalars), key, _q8_tables())


@functools.cache
def _q8_tables():
    return cuda.to_device(lowp.Q8_TABLES)


# -- loads and stores, one device function per (kind, slot) -------------------------

def _loader(kind: int, slot: int, arithmetic):
    """``load(v, maps, row, i)``: element ``i`` of the piece ``row`` in slot
    `slot` (0 params, 1 grads, 2.. states), in the arithmetic type."""
    column, absmax = PARAM + slot, ABSMAX + slot - 2
    if kind == NONE:
        def load(v, maps, row, i):
            return arithmetic(0)
    elif kind == F32:
        def load(v, maps, row, i):
            return arithmetic(v[SINGLES][row[column] + i])
    elif kind == F64:
        def load(v, maps, row, i):
            return v[DOUBLES][row[column] + i]
    elif kind == F16:
        def load(v, maps, row, i):
            return arithmetic(lowp.f16_to_f32(v[HALVES][row[column] + i]))
    elif kind == BF16:
        def load(v, maps, row, i):
            return arithmetic(lowp.bf16_to_f32(v[WORDS][row[column] + i]))
    else:
        map_row = lowp.SIGNED_MAP if kind == Q8_SIGNED else lowp.UNSIGNED_MAP

        def load(v, maps, row, i):
            scale = v[SINGLES][row[absmax] + i // BLOCK]
            return arithmetic(maps[map_row, v[CODES][row[column] + i]] * scale)
    return cuda.jit(device=True)(load)


def _storer(kind: int, slot: int, stochastic: bool = False):
    """``store(v, row, i, x, key)``: rounds `x` to nearest even into slot
    `slot`, or stochastically with the call's `key` (16-bit params). A q8
    slot stores nothing here (see _quantizer)."""
    column = PARAM + slot
    if kind == F32:
        def store(v, row, i, x, key):
            v[SINGLES][row[column] + i] = float32(x)
    elif kind == F64:
        def store(v, row, i, x, key):
            v[DOUBLES][row[column] + i] = x
    elif kind == F16 and stochastic:
        def store(v, row, i, x, key):
            r = lowp.random_word(key, row[POSITION] + i)
            v[WORDS][row[column] + i] = lowp.sr_f16(float32(x), r)
    elif kind == F16:
        def store(v, row, i, x, key):
            v[HALVES][row[column] + i] = float16(x)
    elif kind == BF16 and stochastic:
        def store(v, row, i, x, key):
            r = lowp.random_word(key, row[POSITION] + i)
            v[WORDS][row[column] + i] = lowp.sr_bf16(float32(x), r)
    elif kind == BF16:  # float64 goes through float32: two roundings, as the spec says
        def store(v, row, i, x, key):
            v[WORDS][row[column] + i] = lowp.f32_to_bf16(float32(x))
    else:
        def store(v, row, i, x, key):
            pass
    return cuda.jit(device=True)(store)


def _quantizer(slot: int, signed: bool):
    """``quantize(v, maps, row, first, m, values, extreme, t)``: thread `t`'s
    share of writing q8 block ``first`` (``m`` elements) of state `slot`
    from the new values in shared memory and the block's extreme, and the
    block's scale (absmax)."""
    column, absmax_column = PARAM + 2 + slot, ABSMAX + slot
    midpoints = lowp.SIGNED_MIDPOINTS if signed else lowp.UNSIGNED_MIDPOINTS

    @cuda.jit(device=True)
    def quantize(v, maps, row, first, m, values, extreme, t):
        absmax = lowp.q8_scale(extreme, signed)
        for j in range(t, m, THREADS):
            v[CODES][row[column] + first + j] = lowp.q8_code(values[slot, j], absmax,
                                                             maps[midpoints])
        if t == 0:
            v[SINGLES][row[absmax_column] + first // BLOCK] = absmax

    return quantize


@cuda.jit(device=True)
def _no_quantize(v, maps, row, first, m, values, extreme, t):
    pass


# -- block-wide pieces, shared with Prodigy's reduction kernel --------------------------

@cuda.jit(device=True)
def load_maps(maps, q8_tables, t):
    """Thread `t`'s share of copying the q8 tables to shared memory, then a barrier."""
    for j in range(t, 4 * BLOCK, THREADS):
        maps[j // BLOCK, j % BLOCK] = q8_tables[j // BLOCK, j % BLOCK]
    cuda.syncthreads()


@cuda.jit(device=True)
def row_of(table, c):
    """Row `c` of a table, as a tuple in registers: read once per piece, not
    after each store (which the compiler cannot prove does not alias table)."""
    r = table[c]
    return (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])


@cuda.jit(device=True)
def reduce_peaks(peaks, t):
    """After the threads wrote ``peaks[s, t]``: ``peaks[s, 0]`` becomes the
    block's extreme of slot s (lowp.extreme), by halves, barriers included."""
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width:
            for s in range(3):
                peaks[s, t] = lowp.extreme(peaks[s, t], peaks[s, t + width])
        cuda.syncthreads()
        width //= 2


# -- the kernel ------------------------------------------------------------------------

@functools.cache
def _kernel(body_of, flags: tuple, states: tuple, stores: tuple, kinds: tuple,
            arithmetic: str, stochastic: bool):
    arith = float64 if arithmetic == "float64" else float32
    body = body_of(*flags)
    # A state slot the options leave unused is neither read nor written; a
    # read-only one (not in `stores`) is read only.
    state_kinds = [kind if used else NONE for kind, used in zip(kinds[2:], states)]
    store_kinds = [kind if stored else NONE for kind, stored in zip(state_kinds, stores)]
    load_p, load_g = _loader(kinds[0], 0, arith), _loader(kinds[1], 1, arith)
    load0, load1, load2 = (_loader(kind, 2 + s, arith) for s, kind in enumerate(state_kinds))
    store_p = _storer(kinds[0], 0, stochastic)
    store0, store1, store2 = (_storer(kind, 2 + s) for s, kind in enumerate(store_kinds))
    q8_0, q8_1, q8_2 = (kind in Q8_KINDS for kind in store_kinds)
    quantize0, quantize1, quantize2 = (
        _quantizer(s, kind == Q8_SIGNED) if kind in Q8_KINDS else _no_quantize
        for s, kind in enumerate(store_kinds))
    has_q8 = q8_0 or q8_1 or q8_2  # q8 blocks to re-quantize
    reads_q8 = any(kind in Q8_KINDS for kind in state_kinds)  # the maps to load

    @cuda.jit(device=True)
    def update(v, maps, row, i, k, key):
        """Updates element i of the piece; returns the new states in float32
        (what a q8 slot quantizes)."""
        p, s0, s1, s2 = body(load_p(v, maps, row, i), load_g(v, maps, row, i),
                             load0(v, maps, row, i), load1(v, maps, row, i),
                             load2(v, maps, row, i), k)
        store_p(v, row, i, p, key)
        store0(v, row, i, s0, key)
        store1(v, row, i, s1, key)
        store2(v, row, i, s2, key)
        return float32(s0), float32(s1), float32(s2)

    @cuda.jit
    def kernel(codes, words, halves, singles, doubles, table, k, key, q8_tables):
        v = (codes, words, halves, singles, doubles)
        t = cuda.threadIdx.x
        maps = cuda.shared.array((4, BLOCK), float32)
        values = cuda.shared.array((3, BLOCK), float32)  # a q8 block's new states
        peaks = cuda.shared.array((3, THREADS), float32)  # per thread, then reduced
        if reads_q8:
            load_maps(maps, q8_tables, t)
        for c in range(cuda.blockIdx.x, table.shape[0], cuda.gridDim.x):
            row = row_of(table, c)
            n = row[LENGTH]
            if not has_q8:
                for i in range(t, n, THREADS):
                    update(v, maps, row, i, k, key)
                continue
            for first in range(0, n, BLOCK):  # pieces start on q8 blocks
                m = min(BLOCK, n - first)
                peak0 = peak1 = peak2 = float32(0)
                for j in range(t, m, THREADS):
                    a, b, d = update(v, maps, row, first + j, k, key)
                    if q8_0:
                        values[0, j] = a
                        peak0 = lowp.extreme(peak0, a)
                    if q8_1:
                        values[1, j] = b
                        peak1 = lowp.extreme(peak1, b)
                    if q8_2:
                        values[2, j] = d
                        peak2 = lowp.extreme(peak2, d)
                peaks[0, t] = peak0
                peaks[1, t] = peak1
                peaks[2, t] = peak2
                reduce_peaks(peaks, t)
                quantize0(v, maps, row, first, m, values, peaks[0, 0], t)
                quantize1(v, maps, row, first, m, values, peaks[1, 0], t)
                quantize2(v, maps, row, first, m, values, peaks[2, 0], t)
                cuda.syncthreads()  # values and peaks are reused by the next block

    return kernel
