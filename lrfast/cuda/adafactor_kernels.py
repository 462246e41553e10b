"""Adafactor's step on the device: the maths of :mod:`lrfast.reference_adafactor`
(its spec) in four passes over the tables of :mod:`.adafactor_layout`, five
launches per group, no host synchronisation:

1. ``reduce`` (one block per piece): sum(p**2) per piece; a matrix's piece
   also each of its rows' sum of g**2 and its share of each column's; a
   vector's piece updates its variance V and sums u**2;
2. ``factors`` (one block per matrix): the column sums added over the
   matrix's pieces, ``C = lerp(C, colsum / rows, w)`` and ``b_j = 1 /
   sqrt(C_j)``; ``R = lerp(R, rowsum / cols, w)``, its mean ``rmean`` (clamped
   at eps1) and ``a_i = 1 / sqrt(R_i / rmean)``, all rounded to the
   arithmetic dtype as the reference rounds them;
3. ``norm`` (one block per piece of a matrix): sum(u**2), ``u = g * min(a_i
   b_j, 1 / eps1)``. It reads g again (the CPU folds it into pass 1 where
   no u reaches the cap, from per-column sums of g**2 / R_i: a second sweep
   of each row; whether that pays on a GPU, whose L2 would serve the sweep,
   waits for one to measure it);
   ``scale`` (one block per tensor): ``-max(eps2, RMS(p)) * rho / max(1,
   RMS(u) / d)``;
4. ``update`` (one block per piece): ``p = p * decay + scale * u``.

Every sum runs in float64 and in an order fixed by the shapes and THREADS:
a block adds its threads' strided elements in order and combines the threads
by halves in a fixed tree; a row's sum adds its threads' partials in thread
order; a column's sum and a tensor's add their pieces' in piece order. Which
block does what is irrelevant, so the bits are the same for any grid size.
They differ from the CPU's and the reference's sums in the order of
summation only (a scale's last bits, an update's last bit).

16-bit params and grads are widened to float32, the arithmetic dtype (the
states are float32), and the param is rounded back to nearest even, with the
loads and stores of :mod:`.lowp_launch`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float32, float64

from . import launch
from .adafactor_layout import (COL_VAR, COLS, COLS_AT, GRAD, MAX_ROWS, N, PARAM, PARTS_AT,
                               PIECES, ROW_VAR, ROWS, ROWS_AT, TENSOR, VARIANCE)
from .lowp_launch import _loader, _storer
from .optimizers import root

THREADS = launch.THREADS


def run(hp: dict, groups, stream) -> None:
    """One Adafactor step over `groups` (of adafactor_layout.prepare) on `stream`."""
    decaying = hp["weight_decay"] != 0
    totals = tuple(np.float64(hp[name]) for name in ("eps2", "rho", "d"))
    for g in groups:
        t = g.arithmetic.type
        eps1 = g.eps1_default if hp["eps1"] < 0 else hp["eps1"]
        w = t(hp["beta2_weight"])
        k = (t(hp["grad_scale"]), w, t(1) - w, t(eps1), t(eps1 * eps1),
             t(math.inf if eps1 == 0 else 1.0 / eps1), t(1.0 - hp["lr"] * hp["weight_decay"]))
        kernels = _kernels(g.kinds, g.arithmetic.name, bool(abs(w) < 0.5), decaying)
        s = g.scratch
        launch.launch(kernels.reduce, g.n_pieces, stream, *g.views, g.pieces, k, s["p_sq"],
                      s["u_sq"], s["row_sums"], s["col_sums"])
        if g.n_matrices:
            launch.launch(kernels.factors, g.n_matrices, stream, *g.views, g.matrices, k,
                          s["row_sums"], s["col_sums"], s["row_rsqrt"], s["col_rsqrt"])
            launch.launch(kernels.norm, g.n_factored, stream, *g.views, g.pieces, g.factored, k,
                          s["row_rsqrt"], s["col_rsqrt"], s["u_sq"])
        launch.launch(_scale, g.n_tensors, stream, g.tensors, totals, s["p_sq"], s["u_sq"],
                      s["scale"])
        launch.launch(kernels.update, g.n_pieces, stream, *g.views, g.pieces, k, s["scale"],
                      s["row_rsqrt"], s["col_rsqrt"])


@cuda.jit(device=True)
def _row(table, c):
    """Row `c` of a table as a tuple in registers, read once per piece."""
    r = table[c]
    return (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])


@cuda.jit
def _scale(tensors, totals, p_sq, u_sq, scale):
    """Per tensor: its pieces' sums added, then the update's scale (in double,
    Python's max: a NaN second argument loses)."""
    eps2, rho, d = totals
    t = cuda.threadIdx.x
    sums = cuda.shared.array((2, THREADS), float64)
    for c in range(cuda.blockIdx.x, tensors.shape[0], cuda.gridDim.x):
        first, count, size = tensors[c, 0], tensors[c, 1], tensors[c, 2]
        a = float64(0.0)
        b = float64(0.0)
        for q in range(t, count, THREADS):
            a += p_sq[first + q]
            b += u_sq[first + q]
        sums[0, t] = a
        sums[1, t] = b
        launch.block_sums(sums, t)
        if t == 0:
            root_n = math.sqrt(float64(size))
            rms = math.sqrt(sums[0, 0]) / root_n
            alpha = (rms if rms > eps2 else eps2) * rho
            ratio = math.sqrt(sums[1, 0]) / (root_n * d)
            scale[c] = -alpha / (ratio if ratio > 1.0 else float64(1.0))
        cuda.syncthreads()  # sums is reused by the next tensor


class _Kernels:
    """The four kernels of one group kind (the scale kernel is shared)."""

    def __init__(self, reduce, factors, norm, update):
        self.reduce, self.factors, self.norm, self.update = reduce, factors, norm, update


@functools.cache
def _kernels(kinds: tuple, arithmetic: str, near: bool, decaying: bool) -> _Kernels:
    """Kernels for params of kind ``kinds[0]``, grads ``kinds[1]``, states
    ``kinds[2]``; `near`: torch's lerp form for a weight below 0.5;
    `decaying`: weight decay multiplies the param."""
    arith = float64 if arithmetic == "float64" else float32
    load_p, load_g = _loader(kinds[0], 0, arith), _loader(kinds[1], 1, arith)
    load_r, load_c, load_v = (_loader(kinds[2], slot, arith) for slot in (2, 3, 4))
    store_p = _storer(kinds[0], 0)
    store_r, store_c, store_v = (_storer(kinds[2], slot) for slot in (2, 3, 4))
    assert (PARAM, GRAD, ROW_VAR, COL_VAR, VARIANCE) == (2, 3, 4, 5, 6)  # the loaders' columns

    @cuda.jit(device=True)
    def lerp(a, b, w, w_rest):
        """torch's lerp, in the arithmetic dtype."""
        if near:
            return a + w * (b - a)
        return b - (b - a) * w_rest

    @cuda.jit(device=True)
    def full_u(d, v, eps1_sq, one):
        """A vector's u: g / sqrt(max(V, eps1**2)) as torch computes it (a NaN V stays)."""
        return d * (one / root(eps1_sq if v < eps1_sq else v))

    @cuda.jit(device=True)
    def factored_u(d, a, b, cap):
        """A matrix's u: g * min(a_i b_j, 1 / eps1) (a NaN weight gives the cap)."""
        w = a * b
        return d * (w if w < cap else cap)

    @cuda.jit
    def reduce(codes, words, halves, singles, doubles, pieces, k, p_sq, u_sq, row_sums,
               col_sums):
        v = (codes, words, halves, singles, doubles)
        gs, w, w_rest, eps1, eps1_sq, cap, decay = k
        one = arith(1)
        t = cuda.threadIdx.x
        rows = cuda.shared.array((MAX_ROWS, THREADS), float64)  # per row, each thread's share
        sums = cuda.shared.array((2, THREADS), float64)
        for c in range(cuda.blockIdx.x, pieces.shape[0], cuda.gridDim.x):
            row = _row(pieces, c)
            n, cols = row[N], row[COLS]
            ps = float64(0.0)
            us = float64(0.0)
            if cols == 0:
                for i in range(t, n, THREADS):
                    x = float64(load_p(v, 0, row, i))
                    d = load_g(v, 0, row, i) * gs
                    vn = lerp(load_v(v, 0, row, i), d * d, w, w_rest)
                    store_v(v, row, i, vn, 0)
                    u = float64(full_u(d, vn, eps1_sq, one))
                    ps += x * x
                    us += u * u
            else:
                # Thread t walks columns t, t + THREADS, ... down the piece's
                # rows: a column's sum in a register, a row's in shared memory.
                for r in range(n):
                    rows[r, t] = 0.0
                for j in range(t, cols, THREADS):
                    col = float64(0.0)
                    for r in range(n):
                        x = float64(load_p(v, 0, row, r * cols + j))
                        d = float64(load_g(v, 0, row, r * cols + j) * gs)
                        ps += x * x
                        col += d * d
                        rows[r, t] += d * d
                    col_sums[row[PARTS_AT] + j] = col
                cuda.syncthreads()
                for r in range(t, n, THREADS):
                    total = float64(0.0)
                    for q in range(THREADS):
                        total += rows[r, q]
                    row_sums[row[ROWS_AT] + r] = total
            sums[0, t] = ps
            sums[1, t] = us
            launch.block_sums(sums, t)
            if t == 0:
                p_sq[c] = sums[0, 0]
                if cols == 0:
                    u_sq[c] = sums[1, 0]
            cuda.syncthreads()  # rows and sums are reused by the next piece

    @cuda.jit
    def factors(codes, words, halves, singles, doubles, matrices, k, row_sums, col_sums,
                row_rsqrt, col_rsqrt):
        v = (codes, words, halves, singles, doubles)
        gs, w, w_rest, eps1, eps1_sq, cap, decay = k
        one = arith(1)
        t = cuda.threadIdx.x
        sums = cuda.shared.array((1, THREADS), float64)
        for m in range(cuda.blockIdx.x, matrices.shape[0], cuda.gridDim.x):
            row = _row(matrices, m)
            n, cols = row[ROWS], row[COLS]
            for j in range(t, cols, THREADS):
                total = float64(0.0)
                for q in range(row[PIECES]):  # the pieces' shares, in piece order
                    total += col_sums[row[PARTS_AT] + q * cols + j]
                c = lerp(load_c(v, 0, row, j), arith(total / float64(n)), w, w_rest)
                store_c(v, row, j, c, 0)
                col_rsqrt[row[COLS_AT] + j] = one / root(c / one)
            mean = float64(0.0)
            for i in range(t, n, THREADS):
                r = lerp(load_r(v, 0, row, i), arith(row_sums[row[ROWS_AT] + i] / float64(cols)),
                         w, w_rest)
                store_r(v, row, i, r, 0)
                row_rsqrt[row[ROWS_AT] + i] = r  # R_i until rmean is known
                mean += float64(r)
            sums[0, t] = mean
            launch.block_sums(sums, t)
            rmean = arith(sums[0, 0] / float64(n))
            rmean = eps1 if rmean < eps1 else rmean  # torch's clamp_(min=eps1): a NaN stays
            for i in range(t, n, THREADS):
                row_rsqrt[row[ROWS_AT] + i] = one / root(arith(row_rsqrt[row[ROWS_AT] + i]) / rmean)
            cuda.syncthreads()  # sums is reused by the next matrix

    @cuda.jit
    def norm(codes, words, halves, singles, doubles, pieces, factored, k, row_rsqrt, col_rsqrt,
             u_sq):
        v = (codes, words, halves, singles, doubles)
        gs, w, w_rest, eps1, eps1_sq, cap, decay = k
        t = cuda.threadIdx.x
        sums = cuda.shared.array((1, THREADS), float64)
        for f in range(cuda.blockIdx.x, factored.shape[0], cuda.gridDim.x):
            c = factored[f]
            row = _row(pieces, c)
            n, cols = row[N], row[COLS]
            us = float64(0.0)
            for j in range(t, cols, THREADS):
                b = arith(col_rsqrt[row[COLS_AT] + j])
                for r in range(n):
                    a = arith(row_rsqrt[row[ROWS_AT] + r])
                    u = float64(factored_u(load_g(v, 0, row, r * cols + j) * gs, a, b, cap))
                    us += u * u
            sums[0, t] = us
            launch.block_sums(sums, t)
            if t == 0:
                u_sq[c] = sums[0, 0]
            cuda.syncthreads()

    @cuda.jit
    def update(codes, words, halves, singles, doubles, pieces, k, scale, row_rsqrt, col_rsqrt):
        v = (codes, words, halves, singles, doubles)
        gs, w, w_rest, eps1, eps1_sq, cap, decay = k
        one = arith(1)
        t = cuda.threadIdx.x
        for c in range(cuda.blockIdx.x, pieces.shape[0], cuda.gridDim.x):
            row = _row(pieces, c)
            n, cols = row[N], row[COLS]
            s = arith(scale[row[TENSOR]])
            if cols == 0:
                for i in range(t, n, THREADS):
                    u = full_u(load_g(v, 0, row, i) * gs, load_v(v, 0, row, i), eps1_sq, one)
                    x = load_p(v, 0, row, i)
                    if decaying:
                        x = x * decay
                    store_p(v, row, i, x + s * u, 0)
            else:
                for j in range(t, cols, THREADS):
                    b = arith(col_rsqrt[row[COLS_AT] + j])
                    for r in range(n):
                        i = r * cols + j
                        u = factored_u(load_g(v, 0, row, i) * gs,
                                       arith(row_rsqrt[row[ROWS_AT] + r]), b, cap)
                        x = load_p(v, 0, row, i)
                        if decaying:
                            x = x * decay
                        store_p(v, row, i, x + s * u, 0)

    return _Kernels(reduce, factors, norm, update)
