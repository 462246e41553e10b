"""Gradient norms and the in-place clip kernels on the device.

A norm is deterministic: each piece of the table (a fixed cut of the tensors,
see :mod:`.launch`) gets one partial, computed by one block whatever the grid
size: every thread sums its strided elements in order, in float64, and the
block combines the threads' sums by halves in a fixed tree. The host then
reduces the partials of all pieces, in table order, with NumPy's pairwise sum,
whose association depends only on their count. Copying the partials back is
the one host synchronisation of the CUDA back end: the norm is returned as a
Python float. For p = inf a NaN wins every comparison, so it propagates.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64

from . import launch

GRADS = 1  # the table column of a call on gradients only
LENGTH, THREADS = launch.LENGTH, launch.THREADS
L1, L2, LINF, LP = range(4)


def kind_of(p: float) -> int:
    if math.isinf(p):
        return LINF
    return {1.0: L1, 2.0: L2}.get(p, LP)


@functools.cache
def _norm_kernel(kind: int):
    """``kernel(mem, table, p, partials)``: partials[c] = sum (or max) over
    piece c of |x|^p, in float64."""

    @cuda.jit(device=True)
    def term(v, p):
        if kind == L2:
            return v * v
        if kind == LP:
            return math.pow(abs(v), p)
        return abs(v)

    @cuda.jit(device=True)
    def combine(a, b):
        if kind == LINF:
            return b if b > a or b != b else a  # a NaN stays
        return a + b

    @cuda.jit
    def kernel(mem, table, p, partials):
        acc = cuda.shared.array(THREADS, float64)
        t = cuda.threadIdx.x
        for c in range(cuda.blockIdx.x, table.shape[0], cuda.gridDim.x):
            n, start = table[c, LENGTH], table[c, GRADS]
            a = float64(0.0)
            for i in range(t, n, THREADS):
                a = combine(a, term(float64(mem[start + i]), p))
            acc[t] = a
            cuda.syncthreads()
            width = THREADS // 2
            while width > 0:
                if t < width:
                    acc[t] = combine(acc[t], acc[t + width])
                cuda.syncthreads()
                width //= 2
            if t == 0:
                partials[c] = acc[0]
            cuda.syncthreads()  # acc is reused by the next piece

    return kernel


def total_norm(groups, stream, p: float) -> float:
    """The p-norm of all elements of all groups (0.0 when there are none)."""
    if not groups:
        return 0.0
    kind = kind_of(p)
    kernel = _norm_kernel(kind)
    for g in groups:
        if g.partials is None:
            g.partials = cuda.device_array(g.n_pieces, np.float64)
            g.partials_host = cuda.pinned_array(g.n_pieces, np.float64)
        launch.launch(kernel, g.n_pieces, stream, g.mem, g.table, p, g.partials)
        g.partials.copy_to_host(g.partials_host, stream=stream)
    stream.synchronize()
    partials = np.concatenate([g.partials_host for g in groups])
    if kind == LINF:
        return float(partials.max())
    total = float(partials.sum())
    if kind == L2:
        return math.sqrt(total)
    return total if kind == L1 else math.pow(total, 1.0 / p)


@cuda.jit(device=True)
def _scale(x, piece, i, k):
    j = piece[GRADS] + i
    x[j] = x[j] * k[0]


@cuda.jit(device=True)
def _clamp(x, piece, i, k):
    lo, hi = k
    j = piece[GRADS] + i
    v = x[j]
    x[j] = lo if v < lo else (hi if v > hi else v)  # NaN passes, as in torch.clamp


scale_kernel = launch.elementwise(_scale)
clamp_kernel = launch.elementwise(_clamp)
