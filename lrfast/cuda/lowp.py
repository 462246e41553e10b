"""Low-precision numbers on the device: the rules of :mod:`lrfast.precision`
as Numba CUDA device functions, bit for bit.

- bfloat16 is stored as uint16: widening is a 16-bit shift of the bits into
  a float32; narrowing rounds to nearest even on the float32 bits (ml_dtypes'
  rule, NaN to the canonical quiet NaN of its sign).
- float16 widens and narrows with the hardware conversions (``cvt.rn``, the
  IEEE rounding NumPy uses); its stochastic rounding works on the bits.
- Stochastic rounding draws ``R(i)`` from :func:`lrfast.precision.random_bits`:
  lowbias32 on 32-bit words. Numba types ``uint32 * uint32`` as 64 bits, so
  each step masks to 32 bits (LLVM narrows the masked product of two
  zero-extended words back to one 32-bit multiply).
- q8: a code is the number of the map's 255 float32 midpoints below ``x /
  absmax`` (ties to the lower code), found by a branch-free binary search in
  the tables of :data:`TABLES` (taken from lrfast.precision, not copied).
- q4: a code is the number of the map's 15 float32 thresholds at or below
  ``x / absmax`` (torchao's rounding: up when the residual is at least half
  the gap), by the same search over 15 values.
- Both take a block's scale from its extreme (:func:`block_scale`), the
  finite value of largest magnitude (:func:`extreme`): a NaN or an inf never
  reaches the scale; +inf takes the top code, -inf the bottom one, NaN the
  code of 0.

Float bits: the simulator runs kernels as Python, where NumPy's scalar
``view`` reinterprets; on a GPU libdevice's ``__float_as_int`` and
``__int_as_float`` do (the simulator has no libdevice).
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64, uint16, uint32, uint64

from .. import precision
from . import launch

M32 = 0xFFFFFFFF

# The q8 and q4 tables as one (5, 256) float32 array, rows: the q8 signed
# map, its 255 midpoints (padded), the q8 unsigned map, its midpoints, and
# the four q4 tables of 16 values side by side in row Q4 (at Q4_SIGNED_MAP:
# the signed map, Q4_SIGNED_THRESHOLDS its 15 thresholds, then the same for
# the unsigned map). A kernel copies them to shared memory: a binary search
# reads addresses that differ per thread.
SIGNED_MAP, SIGNED_MIDPOINTS, UNSIGNED_MAP, UNSIGNED_MIDPOINTS, Q4 = range(5)
Q4_SIGNED_MAP, Q4_SIGNED_THRESHOLDS, Q4_UNSIGNED_MAP, Q4_UNSIGNED_THRESHOLDS = 0, 16, 32, 48
TABLES = np.zeros((5, precision.BLOCK), dtype=np.float32)
for _row, _signed in ((0, True), (2, False)):
    TABLES[_row] = precision._MAPS[_signed]
    TABLES[_row + 1, :-1] = precision._MIDPOINTS[_signed]
for _at, _signed in ((Q4_SIGNED_MAP, True), (Q4_UNSIGNED_MAP, False)):
    TABLES[Q4, _at:_at + 16] = precision._Q4_MAPS[_signed]
    TABLES[Q4, _at + 16:_at + 31] = precision._Q4_THRESHOLDS[_signed]
del _row, _at, _signed


if launch.SIMULATED:
    @cuda.jit(device=True)
    def float_bits(x):
        return uint64(np.float32(x).view(np.uint32))

    @cuda.jit(device=True)
    def bits_float(u):
        return np.uint32(u).view(np.float32)
else:
    from numba.cuda import libdevice
    from numba import int32

    @cuda.jit(device=True)
    def float_bits(x):
        return uint64(uint32(libdevice.float_as_int(float32(x))))

    @cuda.jit(device=True)
    def bits_float(u):
        return libdevice.int_as_float(int32(uint32(u)))


# -- 16-bit floats --------------------------------------------------------------

@cuda.jit(device=True)
def bf16_to_f32(h):
    return bits_float(uint64(h) << 16)


@cuda.jit(device=True)
def f32_to_bf16(x):
    """float32 ``x`` rounded to nearest even, as bfloat16 bits (uint16)."""
    u = float_bits(x)
    if x != x:
        return uint16((u >> 16) & 0x8000 | 0x7FC0)
    return uint16(((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF)


@cuda.jit(device=True)
def f16_to_f32(h):
    return float32(h)


@cuda.jit(device=True)
def sr_bf16(x, r):
    """float32 ``x`` rounded stochastically to bfloat16 bits with the random
    word ``r``: up one ulp when ``(r >> 16) < (u & 0xFFFF)``."""
    u = float_bits(x)
    if x != x:
        return uint16((u >> 16) | 0x0040)
    return uint16(((u >> 16) + ((r >> 16) < (u & 0xFFFF))) & 0xFFFF)


@cuda.jit(device=True)
def sr_f16(x, r):
    """float32 ``x`` rounded stochastically to float16 bits with the random
    word ``r`` (see precision.round_stochastic)."""
    u = float_bits(x)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if x != x:  # a quiet NaN of x's sign; the payload is not part of the spec
        return uint16(sign | 0x7E00)
    if a >= 0x47800000:  # |x| >= 2**16: inf
        return uint16(sign | 0x7C00)
    if a >= 0x38800000:  # 2**-14 <= |x|: a normal float16, ulp = 2**(e - 10)
        t = (((a >> 23) - 112) << 10) | ((a >> 13) & 0x3FF)  # float16 exponent: e - 127 + 15
        return uint16(sign | (t + ((r >> 19) < (a & 0x1FFF))))
    # A float16 subnormal (ulp 2**-24): q ulps truncated, `frac` the rest, in
    # float64, where both are exact; up when r < frac * 2**32.
    scaled = float64(abs(x)) * 16777216.0
    q = uint64(scaled)
    frac = scaled - float64(q)
    return uint16(sign | (q + (float64(r) < frac * 4294967296.0)))


# -- random bits ------------------------------------------------------------------

@cuda.jit(device=True)
def lowbias32(x):
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


@cuda.jit(device=True)
def random_word(key, position):
    """``R(position)`` of random_bits for the call's ``key`` (the ``sr_key``
    of lrfast._hparams.rounding)."""
    pos = uint64(position)
    word_key = lowbias32(key ^ (pos >> 32))
    return lowbias32((word_key + (pos & M32) * 0x9E3779B9) & M32)


# -- q8 ----------------------------------------------------------------------------

@cuda.jit(device=True)
def q8_code(x, absmax, midpoints):
    """The code of float32 ``x`` in a block of ``absmax``: the number of the
    255 ``midpoints`` below ``x / absmax`` (taken as 0 when absmax is 0 or x
    is NaN)."""
    n = x / absmax if absmax != 0 and x == x else float32(0.0)
    code = 0
    step = 128
    while step > 0:  # the midpoints are sorted: at most 255 below n
        if midpoints[code + step - 1] < n:
            code += step
        step //= 2
    return uint16(code)


@cuda.jit(device=True)
def q4_code(x, absmax, tables, thresholds):
    """The code of float32 ``x`` in a q4 block of ``absmax``: the number of
    the 15 thresholds at ``tables[thresholds:]`` that are <= ``x / absmax``
    (taken as 0 when absmax is 0 or x is NaN)."""
    n = x / absmax if absmax != 0 and x == x else float32(0.0)
    code = 0
    step = 8
    while step > 0:  # the thresholds are sorted: at most 15 at or below n
        if tables[thresholds + code + step - 1] <= n:
            code += step
        step //= 2
    return uint16(code)


# The signed maps' ends below, as magnitudes: a block whose extreme is
# negative is scaled by |extreme| / that end (lrfast.precision._normalized_blocks);
# 0 stands for an unsigned map, whose scale is |extreme|.
Q8_SIGNED_END = np.float32(-precision._MAPS[True][0])
Q4_SIGNED_END = np.float32(-precision._Q4_MAPS[True][0])

INF = np.float32(np.inf)


@cuda.jit(device=True)
def extreme(a, b):
    """Of the running extreme `a` (finite: it starts at 0) and a value `b`,
    the one of larger magnitude (the negative one on a tie); a NaN or an inf
    `b` is skipped, so no non-finite value reaches a block's scale."""
    return b if abs(b) < INF and (abs(b) > abs(a) or (abs(b) == abs(a) and b < a)) else a


@cuda.jit(device=True)
def block_scale(e, signed_end):
    """A q8 or q4 block's scale (its ``absmax``) from its extreme `e`, with
    `signed_end` the map's low end as a magnitude (0: an unsigned map)."""
    return abs(e) / signed_end if signed_end != 0 and e < 0 else abs(e)
