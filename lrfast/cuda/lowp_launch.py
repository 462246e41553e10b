"""The low-precision step kernel: the optimizer bodies of :mod:`.optimizers`
between loads that widen and stores that round or quantize.

One kernel per group of :mod:`.lowp_layout` (tensors of one kind
combination), compiled per (optimizer options, kinds, arithmetic dtype,
stochastic rounding): every slot's load and store is chosen here, in Python,
so the kernel has no dtype branches. Per element, as lrfast.reference:

1. load: widen 16-bit values, dequantize q8 and q4 (``map[code] * absmax``,
   one float32 rounding), convert to the arithmetic dtype (float32 for 16-bit
   and float32 params, float64 for float64 params);
2. the body, in reference order (:meth:`.optimizers.Optimizer.plan`);
3. store the param (round to nearest even, or stochastically for a 16-bit
   param with ``R(position)`` of the call's key) and the float/16-bit states
   (round to nearest even; a 16-bit state that holds weights, schedule-free's
   z, like the param, with the key of its own stream, ``key ^ 0x80000000``);
   the q8/q4 states' new values go to shared memory.

With q8 or q4 states a CUDA block walks its piece one q8 block (256
elements) at a time: its threads update the block's elements, reduce each
quantized slot's new extremes (the finite value of largest magnitude: a NaN
or an inf never reaches a scale): one per q4 block (two per walk) when the kernel has a q4
slot, else one, of which a q8 slot takes the extreme of all. Then they
quantize the values from shared memory with the scales these give and write
the codes and the scales (``absmax``). A q4 byte holds two elements' codes,
so one thread writes each byte: thread t takes the element pairs starting at
2t, 2t + 2 * THREADS, ... So the param update uses the new moments before
quantization, and each block is read and written once.

Without q8 or q4 states to store, a thread takes ILP elements at a time,
``t, t + THREADS, ...``, and loads all of them before the arithmetic, as
:mod:`.access` does (scalar accesses: the slots' element sizes differ). The
walks over q8 blocks keep their loop: on a GPU, where THREADS is a q8 block,
one element per thread.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32, float64
from numba.types import float16

from ..precision import BLOCK, Q4_BLOCK
from . import launch, lowp
from .lowp_layout import (ABSMAX, BF16, CODES, DOUBLES, F16, F32, F64, HALVES, LENGTH,
                          LOW_BIT_KINDS, NONE, PARAM, POSITION, Q4_KINDS, Q4_SIGNED,
                          Q8_SIGNED, Q8_UNSIGNED, SINGLES, WORDS)

THREADS, ILP, TILE = launch.THREADS, launch.ILP, launch.TILE


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
        kernel = _kernel(optimizer.body, flags, states, stores, optimizer.weights, g.kinds,
                         g.arithmetic.name, sr)
        launch.launch(kernel, g.n_pieces, stream, *g.views, g.table,
                      tuple(g.arithmetic.type(s) for s in scalars), key, _tables())


@functools.cache
def _tables():
    return cuda.to_device(lowp.TABLES)


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
    elif kind in Q4_KINDS:  # element i: byte i // 2 of the piece, high nibble if i is even
        at = lowp.Q4_SIGNED_MAP if kind == Q4_SIGNED else lowp.Q4_UNSIGNED_MAP

        def load(v, maps, row, i):
            scale = v[SINGLES][row[absmax] + i // Q4_BLOCK]
            code = (v[CODES][row[column] + i // 2] >> (4 - 4 * (i & 1))) & 15
            return arithmetic(maps[lowp.Q4, at + code] * scale)
    else:
        map_row = lowp.SIGNED_MAP if kind == Q8_SIGNED else lowp.UNSIGNED_MAP

        def load(v, maps, row, i):
            scale = v[SINGLES][row[absmax] + i // BLOCK]
            return arithmetic(maps[map_row, v[CODES][row[column] + i]] * scale)
    return cuda.jit(device=True)(load)


# A state that holds weights draws R(2**63 + i): the call's key with its top
# bit flipped (lrfast.precision.random_bits).
WEIGHT_STREAM_KEY = np.uint64(0x80000000)


def _storer(kind: int, slot: int, stochastic: bool = False, stream=np.uint64(0)):
    """``store(v, row, i, x, key)``: rounds `x` to nearest even into slot
    `slot`, or stochastically with the call's `key` XOR `stream` (16-bit
    params, and weight states with WEIGHT_STREAM_KEY). A q8 or q4 slot stores
    nothing here (see _quantizer)."""
    column = PARAM + slot
    if kind == F32:
        def store(v, row, i, x, key):
            v[SINGLES][row[column] + i] = float32(x)
    elif kind == F64:
        def store(v, row, i, x, key):
            v[DOUBLES][row[column] + i] = x
    elif kind == F16 and stochastic:
        def store(v, row, i, x, key):
            r = lowp.random_word(key ^ stream, row[POSITION] + i)
            v[WORDS][row[column] + i] = lowp.sr_f16(float32(x), r)
    elif kind == F16:
        def store(v, row, i, x, key):
            v[HALVES][row[column] + i] = float16(x)
    elif kind == BF16 and stochastic:
        def store(v, row, i, x, key):
            r = lowp.random_word(key ^ stream, row[POSITION] + i)
            v[WORDS][row[column] + i] = lowp.sr_bf16(float32(x), r)
    elif kind == BF16:  # float64 goes through float32: two roundings, as the spec says
        def store(v, row, i, x, key):
            v[WORDS][row[column] + i] = lowp.f32_to_bf16(float32(x))
    else:
        def store(v, row, i, x, key):
            pass
    return cuda.jit(device=True)(store)


def _quantizer(slot: int, kind: int):
    """``quantize(v, maps, row, first, m, values, peaks, t)``: thread `t`'s
    share of re-quantizing the ``m`` elements from ``first`` (one walk) of
    state `slot`, of `kind` (q8 or q4), from their new values in shared
    memory and their extremes ``peaks[h, slot, 0]`` (h: the walk's q4
    blocks, or one extreme for the whole walk), and of writing the scales."""
    column, absmax_column = PARAM + 2 + slot, ABSMAX + slot
    if kind in (Q8_SIGNED, Q8_UNSIGNED):
        midpoints = lowp.SIGNED_MIDPOINTS if kind == Q8_SIGNED else lowp.UNSIGNED_MIDPOINTS
        end = lowp.Q8_SIGNED_END if kind == Q8_SIGNED else np.float32(0)

        @cuda.jit(device=True)
        def quantize(v, maps, row, first, m, values, peaks, t):
            e = peaks[0, slot, 0]
            for h in range(1, peaks.shape[0]):  # a kernel with q4 slots: both halves
                e = lowp.extreme(e, peaks[h, slot, 0])
            absmax = lowp.block_scale(e, end)
            for j in range(t, m, THREADS):
                v[CODES][row[column] + first + j] = lowp.q8_code(values[slot, j], absmax,
                                                                 maps[midpoints])
            if t == 0:
                v[SINGLES][row[absmax_column] + first // BLOCK] = absmax
    else:
        at = lowp.Q4_SIGNED_THRESHOLDS if kind == Q4_SIGNED else lowp.Q4_UNSIGNED_THRESHOLDS
        end = lowp.Q4_SIGNED_END if kind == Q4_SIGNED else np.float32(0)

        @cuda.jit(device=True)
        def quantize(v, maps, row, first, m, values, peaks, t):
            # Elements j and j + 1 (j even) share a byte and a q4 block; past
            # an odd end the low nibble is 0. `first` is even. A kernel with
            # a q4 slot keeps one extreme per q4 block: peaks[h] for block h.
            for j in range(2 * t, m, 2 * THREADS):
                absmax = lowp.block_scale(peaks[j // Q4_BLOCK, slot, 0], end)
                high = lowp.q4_code(values[slot, j], absmax, maps[lowp.Q4], at)
                low = (lowp.q4_code(values[slot, j + 1], absmax, maps[lowp.Q4], at)
                       if j + 1 < m else 0)
                v[CODES][row[column] + (first + j) // 2] = (high << 4) | low
            for h in range(t, -(-m // Q4_BLOCK), THREADS):
                v[SINGLES][row[absmax_column] + first // Q4_BLOCK + h] = lowp.block_scale(
                    peaks[h, slot, 0], end)

    return quantize


@cuda.jit(device=True)
def _no_quantize(v, maps, row, first, m, values, peaks, t):
    pass


def peak_span(kinds) -> int:
    """The elements one extreme covers in a kernel whose quantized slots are
    of `kinds`: a q4 block if any is q4, else a whole walk (a q8 block)."""
    return Q4_BLOCK if any(k in Q4_KINDS for k in kinds) else BLOCK


# -- block-wide pieces, shared with Prodigy's reduction kernel --------------------------

@cuda.jit(device=True)
def load_maps(maps, tables, t):
    """Thread `t`'s share of copying the q8 and q4 tables to shared memory,
    then a barrier."""
    rows = maps.shape[0]
    for j in range(t, rows * BLOCK, THREADS):
        maps[j // BLOCK, j % BLOCK] = tables[j // BLOCK, j % BLOCK]
    cuda.syncthreads()


@cuda.jit(device=True)
def row_of(table, c):
    """Row `c` of a table, as a tuple in registers: read once per piece, not
    after each store (which the compiler cannot prove does not alias table)."""
    r = table[c]
    return (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])


@cuda.jit(device=True)
def reduce_peaks(peaks, t):
    """After the threads wrote ``peaks[h, s, t]``: ``peaks[h, s, 0]`` becomes
    the extreme (lowp.extreme) of span h of slot s over the block, by halves,
    barriers included."""
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width:
            for h in range(peaks.shape[0]):
                for s in range(peaks.shape[1]):
                    peaks[h, s, t] = lowp.extreme(peaks[h, s, t], peaks[h, s, t + width])
        cuda.syncthreads()
        width //= 2


# -- the kernel ------------------------------------------------------------------------

@functools.cache
def _kernel(body_of, flags: tuple, states: tuple, stores: tuple, weights: tuple, kinds: tuple,
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
    store0, store1, store2 = (_storer(kind, 2 + s, stochastic and weight, WEIGHT_STREAM_KEY)
                              for s, (kind, weight) in enumerate(zip(store_kinds, weights)))
    low0, low1, low2 = (kind in LOW_BIT_KINDS for kind in store_kinds)
    quantize0, quantize1, quantize2 = (
        _quantizer(s, kind) if kind in LOW_BIT_KINDS else _no_quantize
        for s, kind in enumerate(store_kinds))
    quantizes = low0 or low1 or low2  # q8/q4 blocks to re-quantize
    reads_low_bit = any(kind in LOW_BIT_KINDS for kind in state_kinds)  # the maps to load
    span = peak_span(store_kinds)
    spans = BLOCK // span  # extremes per walk and slot

    @cuda.jit(device=True)
    def update(v, maps, row, i, k, key):
        """Updates element i of the piece; returns the new states in float32
        (what a q8 or q4 slot quantizes)."""
        p, s0, s1, s2 = body(load_p(v, maps, row, i), load_g(v, maps, row, i),
                             load0(v, maps, row, i), load1(v, maps, row, i),
                             load2(v, maps, row, i), k)
        store_p(v, row, i, p, key)
        store0(v, row, i, s0, key)
        store1(v, row, i, s1, key)
        store2(v, row, i, s2, key)
        return float32(s0), float32(s1), float32(s2)

    @cuda.jit(device=True)
    def update_tile(v, maps, row, i, n, k, key):
        """Updates elements i, i + THREADS, ... below n of the piece (ILP of
        them), all loads first (see .access); without q8 or q4 slots to store."""
        ps, gs = cuda.local.array(ILP, arith), cuda.local.array(ILP, arith)
        s0, s1 = cuda.local.array(ILP, arith), cuda.local.array(ILP, arith)
        s2 = cuda.local.array(ILP, arith)
        for j in range(ILP):
            e = i + j * THREADS
            if e < n:
                ps[j], gs[j] = load_p(v, maps, row, e), load_g(v, maps, row, e)
                s0[j], s1[j] = load0(v, maps, row, e), load1(v, maps, row, e)
                s2[j] = load2(v, maps, row, e)
        for j in range(ILP):
            e = i + j * THREADS
            if e < n:
                p, a, b, d = body(ps[j], gs[j], s0[j], s1[j], s2[j], k)
                store_p(v, row, e, p, key)
                store0(v, row, e, a, key)
                store1(v, row, e, b, key)
                store2(v, row, e, d, key)

    @cuda.jit
    def kernel(codes, words, halves, singles, doubles, table, k, key, tables):
        v = (codes, words, halves, singles, doubles)
        t = cuda.threadIdx.x
        maps = cuda.shared.array((5, BLOCK), float32)
        values = cuda.shared.array((3, BLOCK), float32)  # a walk's new states
        peaks = cuda.shared.array((spans, 3, THREADS), float32)  # per thread, then reduced
        peak = cuda.local.array((spans, 3), float32)  # this thread's
        if reads_low_bit:
            load_maps(maps, tables, t)
        for c in range(cuda.blockIdx.x, table.shape[0], cuda.gridDim.x):
            row = row_of(table, c)
            n = row[LENGTH]
            if not quantizes:
                for i in range(t, n, TILE):
                    update_tile(v, maps, row, i, n, k, key)
                continue
            for first in range(0, n, BLOCK):  # pieces start on q8 blocks
                m = min(BLOCK, n - first)
                for h in range(spans):
                    peak[h, 0] = peak[h, 1] = peak[h, 2] = float32(0)
                for j in range(t, m, THREADS):
                    a, b, d = update(v, maps, row, first + j, k, key)
                    h = j // span if spans > 1 else 0  # q8 alone: a constant index, registers
                    if low0:
                        values[0, j] = a
                        peak[h, 0] = lowp.extreme(peak[h, 0], a)
                    if low1:
                        values[1, j] = b
                        peak[h, 1] = lowp.extreme(peak[h, 1], b)
                    if low2:
                        values[2, j] = d
                        peak[h, 2] = lowp.extreme(peak[h, 2], d)
                for h in range(spans):
                    peaks[h, 0, t] = peak[h, 0]
                    peaks[h, 1, t] = peak[h, 1]
                    peaks[h, 2, t] = peak[h, 2]
                reduce_peaks(peaks, t)
                quantize0(v, maps, row, first, m, values, peaks, t)
                quantize1(v, maps, row, first, m, values, peaks, t)
                quantize2(v, maps, row, first, m, values, peaks, t)
                cuda.syncthreads()  # values and peaks are reused by the next walk

    return kernel
