"""Prodigy's reduction pass on the device: ``s`` updated in place and the two
float64 sums ``(dot, s_abs)`` of :func:`lrfast.prodigy_reduce`.

Tables: :func:`.lowp_layout.build` with ``slice_p``, for every dtype (one
kernel serves float32, float64, 16-bit params and any kind of ``s`` and
``p0``): a row is a piece of a tensor's slice ``[::slice_p]``, the index of
``s`` and ``p0``; the param and grad of slice element ``i`` lie ``i *
slice_p`` past the piece's offset in their columns.

Per element, as lrfast.reference_lr_free (the loads and stores of
:mod:`.lowp_launch`)::

    g = grad * grad_scale (+ weight_decay * param, coupled decay)   arithmetic dtype
    dot term = float64(g) * (float64(p0) - float64(param))
    s = s * beta3 + s_rate * g                                      arithmetic dtype
    |s| term = |s| in float64, before s is rounded or quantized

Deterministic sums, as the norms of :mod:`.norms`: one block computes each
piece's two partials whatever the grid size (each thread adds its strided
elements in order, then the block combines the threads' sums by halves in a
fixed tree), and the host adds the pieces' partials in table order with
NumPy's pairwise sum, whose association depends only on their count. So the
sums are bitwise the same for any launch configuration; they differ from the
reference's (NumPy's dot and sum) in the order of summation only. Copying
the partials back is a host synchronisation: the caller needs the sums to
compute the new ``d``. With a q8 or q4 ``s`` a block walks its piece one q8
block at a time and re-quantizes it, as the step kernels do.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32, float64

from ..precision import BLOCK
from . import launch, lowp
from .lowp_launch import (_loader, _no_quantize, _quantizer, _storer, _tables, load_maps,
                          peak_span, reduce_peaks, row_of)
from .lowp_layout import LENGTH, LOW_BIT_KINDS

THREADS = launch.THREADS


def run(hp: dict, groups, stream) -> tuple[float, float]:
    """The reduction over `groups` (of lowp_layout.build with slice_p) on
    `stream`: updates ``s`` and returns ``(dot, s_abs)``."""
    if not groups:
        return 0.0, 0.0
    coupled = hp["weight_decay"] != 0 and hp["decouple"] == 0
    d, d0 = hp["d"], hp["d0"]
    s_rate = (d / d0) * (d if hp["safeguard_warmup"] else hp["dlr"])
    scalars = (hp["grad_scale"], hp["weight_decay"], hp["beta3"], s_rate)
    slice_p = np.int64(hp["slice_p"])
    for g in groups:
        if g.partials is None:
            g.partials = cuda.device_array((2, g.n_pieces), np.float64)
            g.partials_host = cuda.pinned_array((2, g.n_pieces), np.float64)
        kernel = _kernel(coupled, g.kinds, g.arithmetic.name)
        launch.launch(kernel, g.n_pieces, stream, *g.views, g.table,
                      tuple(g.arithmetic.type(s) for s in scalars), slice_p, _tables(),
                      g.partials)
        g.partials.copy_to_host(g.partials_host, stream=stream)
    stream.synchronize()
    partials = np.concatenate([g.partials_host for g in groups], axis=1)
    return float(partials[0].sum()), float(partials[1].sum())


@functools.cache
def _kernel(coupled_weight_decay: bool, kinds: tuple, arithmetic: str):
    arith = float64 if arithmetic == "float64" else float32
    load_p, load_g = _loader(kinds[0], 0, arith), _loader(kinds[1], 1, arith)
    load_s, load_p0 = _loader(kinds[2], 2, arith), _loader(kinds[3], 3, float64)
    store_s = _storer(kinds[2], 2)
    low_s = kinds[2] in LOW_BIT_KINDS
    quantize_s = _quantizer(0, kinds[2]) if low_s else _no_quantize
    reads_low_bit = low_s or kinds[3] in LOW_BIT_KINDS
    span = peak_span(kinds[2:3])
    spans = BLOCK // span  # s's extremes per walk

    @cuda.jit(device=True)
    def update(v, maps, row, i, slice_p, k):
        """Updates s at slice element i; returns the new s and the dot term."""
        gs, wd, beta3, s_rate = k
        p = load_p(v, maps, row, i * slice_p)
        d = load_g(v, maps, row, i * slice_p) * gs
        if coupled_weight_decay:
            d = d + wd * p
        dot = float64(d) * (load_p0(v, maps, row, i) - float64(p))
        s = load_s(v, maps, row, i) * beta3 + s_rate * d
        store_s(v, row, i, s, 0)
        return s, dot

    @cuda.jit
    def kernel(codes, words, halves, singles, doubles, table, k, slice_p, tables, partials):
        v = (codes, words, halves, singles, doubles)
        t = cuda.threadIdx.x
        maps = cuda.shared.array((5, BLOCK), float32)
        values = cuda.shared.array((1, BLOCK), float32)  # a walk's new s
        peaks = cuda.shared.array((spans, 1, THREADS), float32)  # s's, per thread, then reduced
        peak = cuda.local.array(spans, float32)  # this thread's
        sums = cuda.shared.array((2, THREADS), float64)
        if reads_low_bit:
            load_maps(maps, tables, t)
        for c in range(cuda.blockIdx.x, table.shape[0], cuda.gridDim.x):
            row = row_of(table, c)
            n = row[LENGTH]
            dot = float64(0.0)
            s_abs = float64(0.0)
            # By q8 blocks (a multiple of THREADS): each thread still takes
            # its elements t, t + THREADS, ... of the piece, in order.
            for first in range(0, n, BLOCK):
                m = min(BLOCK, n - first)
                for h in range(spans):
                    peak[h] = float32(0)
                for j in range(t, m, THREADS):
                    s, term = update(v, maps, row, first + j, slice_p, k)
                    dot += term
                    s_abs += abs(float64(s))
                    if low_s:
                        values[0, j] = float32(s)
                        h = j // span if spans > 1 else 0  # q8: a constant index, a register
                        peak[h] = lowp.extreme(peak[h], float32(s))
                if low_s:
                    for h in range(spans):
                        peaks[h, 0, t] = peak[h]
                    reduce_peaks(peaks, t)
                    quantize_s(v, maps, row, first, m, values, peaks, t)
                    cuda.syncthreads()  # values and peaks are reused by the next walk
            sums[0, t] = dot
            sums[1, t] = s_abs
            launch.block_sums(sums, t)
            if t == 0:
                partials[0, c] = sums[0, 0]
                partials[1, c] = sums[1, 0]
            cuda.syncthreads()  # sums is reused by the next piece

    return kernel
