"""Gradient norms and the in-place clip kernels on the device.

A norm is deterministic: each piece of the table (a fixed cut of the tensors,
see :mod:`.launch`) gets one partial, computed by one block whatever the grid
size: every thread sums its strided elements in order, in float64, and the
block combines the threads' sums by halves in a fixed tree. The host then
reduces the partials of all pieces, in table order, with NumPy's pairwise sum,
whose association depends only on their count. Copying the partials back is
the one host synchronisation of the CUDA back end: the norm is returned as a
Python float. For p = inf a NaN wins every comparison, so it propagates.

16-bit gradients widen exactly to float64 (bfloat16 from its uint16 words).
Scaling and clamping them follow lrfast.reference's NumPy arithmetic in the
grad's dtype: the factor or bounds rounded to it, the product of two 16-bit
values exact in float32, rounded once to nearest even.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64

from . import access, launch, lowp

GRADS = 1  # the table column of a call on gradients only
LENGTH, THREADS, ILP, TILE = launch.LENGTH, launch.THREADS, launch.ILP, launch.TILE
L1, L2, LINF, LP = range(4)


def kind_of(p: float) -> int:
    if math.isinf(p):
        return LINF
    return {1.0: L1, 2.0: L2}.get(p, LP)


@functools.cache
def _norm_kernel(kind: int, bfloat16: bool = False):
    """``kernel(mem, table, p, partials)``: partials[c] = sum (or max) over
    piece c of |x|^p, in float64 (`bfloat16`: mem holds bfloat16 words)."""

    @cuda.jit(device=True)
    def widen(x):
        if bfloat16:
            return float64(lowp.bf16_to_f32(x))
        return float64(x)

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
            # Element t, t + THREADS, ... in that order, as one element per
            # thread would, but ILP of them loaded before they are added.
            for i in range(t, n, TILE):
                values = cuda.local.array(ILP, float64)
                for j in range(ILP):
                    if i + j * THREADS < n:
                        values[j] = widen(mem[start + i + j * THREADS])
                for j in range(ILP):
                    if i + j * THREADS < n:
                        a = combine(a, term(values[j], p))
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
    for g in groups:
        kernel = _norm_kernel(kind, g.dtype.name == "bfloat16")
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


# The in-place operations as bodies of .access.tiles on the gradient alone
# (the table's first column), the state slots unused.

@cuda.jit(device=True)
def _scale(x, unused, s0, s1, s2, k):
    return x * k[0], s0, s1, s2


@cuda.jit(device=True)
def _clamp(x, unused, s0, s1, s2, k):
    lo, hi = k
    return (lo if x < lo else (hi if x > hi else x)), s0, s1, s2  # NaN passes, as in torch.clamp


@cuda.jit(device=True)
def _scale_bf16(x, unused, s0, s1, s2, k):
    return lowp.f32_to_bf16(lowp.bf16_to_f32(x) * k[0]), s0, s1, s2


@cuda.jit(device=True)
def _clamp_bf16(x, unused, s0, s1, s2, k):
    lo, hi = k  # float32 values of bfloat16 bounds
    v = lowp.bf16_to_f32(x)
    if v < lo:
        return lowp.f32_to_bf16(lo), s0, s1, s2
    if v > hi:
        return lowp.f32_to_bf16(hi), s0, s1, s2
    return x, s0, s1, s2


_BODIES = {("scale", False): _scale, ("clamp", False): _clamp,
           ("scale", True): _scale_bf16, ("clamp", True): _clamp_bf16}
_NONE = (False, False, False)


@functools.cache
def _in_place_kernel(operation: str, dtype: np.dtype):
    bfloat16 = dtype.name == "bfloat16"
    tiles = access.tiles(_BODIES[operation, bfloat16], _NONE, _NONE, False,
                         np.dtype(np.uint16) if bfloat16 else dtype)
    return launch.elementwise(*tiles)


def in_place(operation: str, dtype: np.dtype, scalars) -> tuple:
    """``(kernel, scalars)`` to scale (``"scale"``) or clamp (``"clamp"``)
    gradients of `dtype` in place: the scalars rounded to the dtype, as
    lrfast.reference's ``g.dtype.type(coef)``; for bfloat16 then widened to
    float32, which its kernels compute in."""
    typed = tuple(dtype.type(s) for s in scalars)
    if dtype.name == "bfloat16":
        typed = tuple(np.float32(s) for s in typed)
    return _in_place_kernel(operation, dtype), typed
