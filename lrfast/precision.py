"""Low-precision numbers: the exact rules for bfloat16, float16 and 8-bit states.

This module is the specification the kernels follow bit for bit; the steps of
:mod:`lrfast.reference` use it to load and store low-precision arrays.

**16-bit floats.** NumPy's bfloat16 is ``ml_dtypes.bfloat16``, imported only
when a bfloat16 array is asked for. Stores round to nearest even
(:func:`round_nearest`), or stochastically (:func:`round_stochastic`) with
random bits from the counter-based hash :func:`random_bits`: 16-bit params,
and the 16-bit states that hold weights (schedule-free's z, ``WEIGHT_STATES``).

**q8 states.** Block-wise dynamic quantization (Dettmers et al., "8-bit
Optimizers via Block-wise Quantization"): a tensor, in C order, is cut into
blocks of ``BLOCK = 256`` elements (the last may be shorter); each block keeps
a float32 scale (the field keeps bitsandbytes' name, ``absmax``) and each element
the uint8 index of the nearest value of bitsandbytes' dynamic map
(:func:`create_dynamic_map`) to ``x / absmax``.

The one difference from bitsandbytes' and torchao's quantizers: the scale is
``|extreme| / |the map's end on the extreme's side|``, not ``max |x|``. The
signed map ends at -0.99296874 and 1.0, so with ``max |x|`` a block whose
extreme is negative loses 0.7 % of it at every re-quantization, and a moving
average fed a negative constant settles far too small; with this scale the
extreme is stored exactly (or, for 0.7 % of float32 values, one ulp off the
first time and exactly from then on), whatever its sign. Blocks whose extreme
is positive, and every block of the unsigned map, get bitsandbytes' codes.
A non-finite value reaches only its own element: the scale comes from the
block's finite values, and a NaN or an inf takes a code of its own (see
:func:`quantize_blockwise`).

**q4 states.** torchao's 4-bit optimizer-state layout (Li et al., "Memory
Efficient Optimizers with 4-bit States"; torchao's ``OptimState4bit``): blocks
of ``Q4_BLOCK = 128``, two codes a byte (element 2i in the high nibble), the
maps of :func:`create_q4_map`, the nearest code with torchao's tie rule (up
when the residual is at least half the gap), and the scale rule above.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLOCK", "Q8_MIN_SIZE", "Q8State", "create_dynamic_map", "quantize_blockwise",
    "dequantize_blockwise", "Q4_BLOCK", "Q4State", "create_q4_map", "quantize_blockwise_q4",
    "dequantize_blockwise_q4", "zeros_state", "bfloat16", "is_16bit", "round_nearest",
    "random_bits", "round_stochastic", "mix_seed",
]

BLOCK = 256
"""Elements per q8 block, counted in C order."""

Q8_MIN_SIZE = 4096
"""``zeros_state(param, "q8")`` (and ``"q4"``) quantizes params of at least this many elements."""


# bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8),
# as float32 bit patterns. The algorithm: for i = 0..6, the fraction_items =
# 2**i + 1 (signed) or 2**(i + 1) + 1 (unsigned) points b = torch.linspace(0.1,
# 1, fraction_items) (float32), their midpoints (b[:-1] + b[1:]) / 2 (float32)
# scaled by 10**(i - 6) (float32 product); with signed=True their negatives
# too; then 0 and 1.0; sorted. The signed map has no -1: its ends are
# -0.99296874 and 1.0. Both tables equal bitsandbytes 0.50's maps bit for bit
# (tests/test_precision_reference.py rebuilds them with torch and compares).
_SIGNED_MAP_BITS = (
    0xBF7E3333, 0xBF7A999A, 0xBF770000, 0xBF736666, 0xBF6FCCCD, 0xBF6C3333, 0xBF68999A, 0xBF650000,
    0xBF616666, 0xBF5DCCCD, 0xBF5A3333, 0xBF56999A, 0xBF530000, 0xBF4F6666, 0xBF4BCCCD, 0xBF483333,
    0xBF44999A, 0xBF410000, 0xBF3D6666, 0xBF39CCCD, 0xBF363334, 0xBF32999A, 0xBF2F0000, 0xBF2B6666,
    0xBF27CCCD, 0xBF243334, 0xBF20999A, 0xBF1D0000, 0xBF196666, 0xBF15CCCD, 0xBF123334, 0xBF0E999A,
    0xBF0B0000, 0xBF076666, 0xBF03CCCC, 0xBF003333, 0xBEF93332, 0xBEF20000, 0xBEEACCCC, 0xBEE3999A,
    0xBEDC6666, 0xBED53333, 0xBECE0000, 0xBEC6CCCC, 0xBEBF999A, 0xBEB86666, 0xBEB13333, 0xBEAA0000,
    0xBEA2CCCC, 0xBE9B999A, 0xBE946666, 0xBE8D3334, 0xBE860000, 0xBE7D9999, 0xBE6F3333, 0xBE60CCCD,
    0xBE526666, 0xBE440000, 0xBE35999A, 0xBE273333, 0xBE18CCCD, 0xBE0A6666, 0xBDF80000, 0xBDDB3334,
    0xBDC9EB85, 0xBDC428F7, 0xBDBE6667, 0xBDB8A3D7, 0xBDB2E148, 0xBDAD1EB8, 0xBDA75C2A, 0xBDA1999A,
    0xBD9BD70A, 0xBD96147B, 0xBD9051EB, 0xBD8A8F5D, 0xBD84CCCD, 0xBD7E147B, 0xBD728F5D, 0xBD670A3D,
    0xBD5B851F, 0xBD500000, 0xBD447AE1, 0xBD38F5C3, 0xBD2D70A3, 0xBD21EB85, 0xBD166667, 0xBD0AE148,
    0xBCFEB852, 0xBCE7AE15, 0xBCD0A3D7, 0xBCB9999A, 0xBCA28F5D, 0xBC8B851F, 0xBC68F5C3, 0xBC3AE148,
    0xBC1F3B64, 0xBC160418, 0xBC0CCCCD, 0xBC039581, 0xBBF4BC6A, 0xBBE24DD3, 0xBBCFDF3B, 0xBBBD70A4,
    0xBBAB020D, 0xBB989374, 0xBB8624DD, 0xBB676C8A, 0xBB428F5C, 0xBB1DB22D, 0xBAF1A9FC, 0xBAA7EF9D,
    0xBA7765FF, 0xBA59E83E, 0xBA3C6A80, 0xBA1EECC1, 0xBA016F01, 0xB9C7E283, 0xB98CE705, 0xB923D70B,
    0xB8BA1F4B, 0xB88AEFB3, 0xB8378034, 0xB7B24206, 0xB70205FF, 0xB65A1A94, 0xB513A3B7, 0x00000000,
    0x3513A3B7, 0x365A1A94, 0x370205FF, 0x37B24206, 0x38378034, 0x388AEFB3, 0x38BA1F4B, 0x3923D70B,
    0x398CE705, 0x39C7E283, 0x3A016F01, 0x3A1EECC1, 0x3A3C6A80, 0x3A59E83E, 0x3A7765FF, 0x3AA7EF9D,
    0x3AF1A9FC, 0x3B1DB22D, 0x3B428F5C, 0x3B676C8A, 0x3B8624DD, 0x3B989374, 0x3BAB020D, 0x3BBD70A4,
    0x3BCFDF3B, 0x3BE24DD3, 0x3BF4BC6A, 0x3C039581, 0x3C0CCCCD, 0x3C160418, 0x3C1F3B64, 0x3C3AE148,
    0x3C68F5C3, 0x3C8B851F, 0x3CA28F5D, 0x3CB9999A, 0x3CD0A3D7, 0x3CE7AE15, 0x3CFEB852, 0x3D0AE148,
    0x3D166667, 0x3D21EB85, 0x3D2D70A3, 0x3D38F5C3, 0x3D447AE1, 0x3D500000, 0x3D5B851F, 0x3D670A3D,
    0x3D728F5D, 0x3D7E147B, 0x3D84CCCD, 0x3D8A8F5D, 0x3D9051EB, 0x3D96147B, 0x3D9BD70A, 0x3DA1999A,
    0x3DA75C2A, 0x3DAD1EB8, 0x3DB2E148, 0x3DB8A3D7, 0x3DBE6667, 0x3DC428F7, 0x3DC9EB85, 0x3DDB3334,
    0x3DF80000, 0x3E0A6666, 0x3E18CCCD, 0x3E273333, 0x3E35999A, 0x3E440000, 0x3E526666, 0x3E60CCCD,
    0x3E6F3333, 0x3E7D9999, 0x3E860000, 0x3E8D3334, 0x3E946666, 0x3E9B999A, 0x3EA2CCCC, 0x3EAA0000,
    0x3EB13333, 0x3EB86666, 0x3EBF999A, 0x3EC6CCCC, 0x3ECE0000, 0x3ED53333, 0x3EDC6666, 0x3EE3999A,
    0x3EEACCCC, 0x3EF20000, 0x3EF93332, 0x3F003333, 0x3F03CCCC, 0x3F076666, 0x3F0B0000, 0x3F0E999A,
    0x3F123334, 0x3F15CCCD, 0x3F196666, 0x3F1D0000, 0x3F20999A, 0x3F243334, 0x3F27CCCD, 0x3F2B6666,
    0x3F2F0000, 0x3F32999A, 0x3F363334, 0x3F39CCCD, 0x3F3D6666, 0x3F410000, 0x3F44999A, 0x3F483333,
    0x3F4BCCCD, 0x3F4F6666, 0x3F530000, 0x3F56999A, 0x3F5A3333, 0x3F5DCCCD, 0x3F616666, 0x3F650000,
    0x3F68999A, 0x3F6C3333, 0x3F6FCCCD, 0x3F736666, 0x3F770000, 0x3F7A999A, 0x3F7E3333, 0x3F800000,
)
_UNSIGNED_MAP_BITS = (
    0x00000000, 0x34AE7BAA, 0x35500998, 0x360E9B38, 0x3692CCF6, 0x36DE4C51, 0x3714E5D5, 0x3783126E,
    0x37E171A0, 0x381FE868, 0x384F1800, 0x387E479A, 0x3896BB99, 0x38AE5364, 0x38C5EB31, 0x3906594B,
    0x394154CA, 0x397C5049, 0x399BA5E4, 0x39B923A2, 0x39D6A163, 0x39F41F22, 0x3A08CE71, 0x3A178D50,
    0x3A264C30, 0x3A350B10, 0x3A43C9EF, 0x3A5288D0, 0x3A6147AF, 0x3A70068E, 0x3A7EC56E, 0x3A958106,
    0x3ABA5E35, 0x3ADF3B64, 0x3B020C4A, 0x3B147AE1, 0x3B26E978, 0x3B395810, 0x3B4BC6A7, 0x3B5E3540,
    0x3B70A3D7, 0x3B818937, 0x3B8AC082, 0x3B93F7CF, 0x3B9D2F1A, 0x3BA66666, 0x3BAF9DB2, 0x3BB8D4FD,
    0x3BC20C4A, 0x3BCB4395, 0x3BD47AE1, 0x3BDDB22E, 0x3BE6E978, 0x3BF020C5, 0x3BF9580F, 0x3C0147AE,
    0x3C05E354, 0x3C0A7EF9, 0x3C0F1AA0, 0x3C13B645, 0x3C1851EB, 0x3C1CED92, 0x3C218937, 0x3C2F5C2A,
    0x3C466667, 0x3C5D70A3, 0x3C747AE2, 0x3C85C28F, 0x3C9147AF, 0x3C9CCCCD, 0x3CA851EB, 0x3CB3D70B,
    0x3CBF5C29, 0x3CCAE147, 0x3CD66667, 0x3CE1EB87, 0x3CED70A3, 0x3CF8F5C3, 0x3D023D70, 0x3D080000,
    0x3D0DC28F, 0x3D13851F, 0x3D1947AF, 0x3D1F0A3D, 0x3D24CCCD, 0x3D2A8F5C, 0x3D3051EB, 0x3D36147B,
    0x3D3BD70A, 0x3D41999A, 0x3D475C28, 0x3D4D1EB8, 0x3D52E147, 0x3D58A3D7, 0x3D5E6667, 0x3D6428F7,
    0x3D69EB87, 0x3D6FAE15, 0x3D7570A3, 0x3D7B3333, 0x3D807AE2, 0x3D835C2A, 0x3D863D71, 0x3D891EB8,
    0x3D8C0000, 0x3D8EE148, 0x3D91C290, 0x3D94A3D7, 0x3D97851F, 0x3D9A6667, 0x3D9D47AF, 0x3DA028F6,
    0x3DA30A3E, 0x3DA5EB85, 0x3DA8CCCD, 0x3DABAE15, 0x3DAE8F5C, 0x3DB170A4, 0x3DB451EB, 0x3DB73333,
    0x3DBA147B, 0x3DBCF5C3, 0x3DBFD70B, 0x3DC2B852, 0x3DC5999A, 0x3DC87AE2, 0x3DCB5C29, 0x3DD40000,
    0x3DE26666, 0x3DF0CCCD, 0x3DFF3333, 0x3E06CCCC, 0x3E0E0000, 0x3E153334, 0x3E1C6666, 0x3E23999A,
    0x3E2ACCCC, 0x3E320000, 0x3E393334, 0x3E406666, 0x3E47999A, 0x3E4ECCCC, 0x3E560000, 0x3E5D3334,
    0x3E646666, 0x3E6B999A, 0x3E72CCCC, 0x3E7A0000, 0x3E809999, 0x3E843333, 0x3E87CCCD, 0x3E8B6666,
    0x3E8F0000, 0x3E92999A, 0x3E963333, 0x3E99CCCC, 0x3E9D6666, 0x3EA10000, 0x3EA4999A, 0x3EA83333,
    0x3EABCCCC, 0x3EAF6666, 0x3EB30000, 0x3EB6999A, 0x3EBA3333, 0x3EBDCCCC, 0x3EC16666, 0x3EC50000,
    0x3EC8999A, 0x3ECC3333, 0x3ECFCCCC, 0x3ED36666, 0x3ED70000, 0x3EDA999A, 0x3EDE3333, 0x3EE1CCCC,
    0x3EE56666, 0x3EE90000, 0x3EEC999A, 0x3EF03333, 0x3EF3CCCC, 0x3EF76666, 0x3EFB0000, 0x3EFE9999,
    0x3F01199A, 0x3F02E666, 0x3F04B333, 0x3F068000, 0x3F084CCC, 0x3F0A199A, 0x3F0BE666, 0x3F0DB334,
    0x3F0F8000, 0x3F114CCD, 0x3F13199A, 0x3F14E666, 0x3F16B334, 0x3F188000, 0x3F1A4CCD, 0x3F1C199A,
    0x3F1DE666, 0x3F1FB334, 0x3F218000, 0x3F234CCD, 0x3F25199A, 0x3F26E666, 0x3F28B334, 0x3F2A8000,
    0x3F2C4CCD, 0x3F2E199A, 0x3F2FE666, 0x3F31B334, 0x3F338000, 0x3F354CCD, 0x3F37199A, 0x3F38E666,
    0x3F3AB334, 0x3F3C8000, 0x3F3E4CCD, 0x3F40199A, 0x3F41E666, 0x3F43B334, 0x3F458000, 0x3F474CCC,
    0x3F49199A, 0x3F4AE666, 0x3F4CB334, 0x3F4E8000, 0x3F504CCC, 0x3F52199A, 0x3F53E666, 0x3F55B334,
    0x3F578000, 0x3F594CCC, 0x3F5B199A, 0x3F5CE666, 0x3F5EB334, 0x3F608000, 0x3F624CCC, 0x3F64199A,
    0x3F65E666, 0x3F67B334, 0x3F698000, 0x3F6B4CCC, 0x3F6D199A, 0x3F6EE666, 0x3F70B334, 0x3F728000,
    0x3F744CCC, 0x3F76199A, 0x3F77E666, 0x3F79B334, 0x3F7B8000, 0x3F7D4CCC, 0x3F7F199A, 0x3F800000,
)


def _table(bits):
    table = np.array(bits, dtype=np.uint32).view(np.float32)
    table.flags.writeable = False
    return table


_MAPS = {True: _table(_SIGNED_MAP_BITS), False: _table(_UNSIGNED_MAP_BITS)}

# The decision boundaries: the midpoint of each pair of neighbouring map values,
# computed exactly in float64 and rounded (to nearest even) to float32.
_MIDPOINTS = {}
for _signed, _map in _MAPS.items():
    _MIDPOINTS[_signed] = ((_map[:-1].astype(np.float64) + _map[1:]) / 2).astype(np.float32)
    _MIDPOINTS[_signed].flags.writeable = False
del _signed, _map


# torchao's 4-bit maps as float32 bits (torchao.optim.subclass_4bit): signed,
# create_dynamic_map(True, 3, 4): +-10**(i - 2) * the midpoints of linspace(0.1,
# 1, 2**i + 1) for i = 0..2, then 0 and 1.0, sorted (-0.8875 .. 1); unsigned,
# linspace(0, 1, 17)[1:] = k / 16 for k = 1..16 (no zero).
_Q4_SIGNED_MAP_BITS = (
    0xBF633333, 0xBF29999A, 0xBEE00000, 0xBE599999, 0xBD9EB852, 0xBD051EB9, 0xBBB43958, 0x00000000,
    0x3BB43958, 0x3D051EB9, 0x3D9EB852, 0x3E599999, 0x3EE00000, 0x3F29999A, 0x3F633333, 0x3F800000,
)
_Q4_UNSIGNED_MAP_BITS = (
    0x3D800000, 0x3E000000, 0x3E400000, 0x3E800000, 0x3EA00000, 0x3EC00000, 0x3EE00000, 0x3F000000,
    0x3F100000, 0x3F200000, 0x3F300000, 0x3F400000, 0x3F500000, 0x3F600000, 0x3F700000, 0x3F800000,
)

# torchao's rounding, as thresholds: t[k] is the least float32 n >= map[k] with
# float32(n - map[k]) >= float32(float32(map[k + 1] - map[k]) * 0.5), the
# comparison torchao's quantize_4bit_with_qmap makes, so the code of n is the
# number of thresholds <= n. tests/test_precision_reference.py re-derives them.
_Q4_SIGNED_THRESHOLD_BITS = (
    0xBF466666, 0xBF0CCCCD, 0xBEA66666, 0xBE147AE1, 0xBD6147AE, 0xBC9BA5E4, 0xBB343958, 0x3B343958,
    0x3C9BA5E4, 0x3D6147AF, 0x3E147AE1, 0x3EA66667, 0x3F0CCCCD, 0x3F466667, 0x3F71999A,
)
_Q4_UNSIGNED_THRESHOLD_BITS = (
    0x3DC00000, 0x3E200000, 0x3E600000, 0x3E900000, 0x3EB00000, 0x3ED00000, 0x3EF00000, 0x3F080000,
    0x3F180000, 0x3F280000, 0x3F380000, 0x3F480000, 0x3F580000, 0x3F680000, 0x3F780000,
)
_Q4_MAPS = {True: _table(_Q4_SIGNED_MAP_BITS), False: _table(_Q4_UNSIGNED_MAP_BITS)}
_Q4_THRESHOLDS = {True: _table(_Q4_SIGNED_THRESHOLD_BITS),
                  False: _table(_Q4_UNSIGNED_THRESHOLD_BITS)}

Q4_BLOCK = 128
"""Elements per q4 block, counted in C order (torchao's block size)."""


def create_q4_map(signed=True):
    """The 16 sorted float32 values of torchao's 4-bit maps (a new array):
    ``signed=True``: -0.8875 .. 1 with 0 at code 7; ``signed=False``: k / 16
    for k = 1..16, no zero (an all-zero block has scale 0)."""
    return _Q4_MAPS[bool(signed)].copy()


def create_dynamic_map(signed=True):
    """The 256 sorted float32 values of bitsandbytes' dynamic map (a new array).

    ``signed=True``: 127 negative values, 0 (code 127), 127 positive values, and
    1.0 (code 255); ``map[k] == -map[254 - k]`` for k < 255. ``signed=False``:
    0 (code 0), 254 positive values, 1.0 (code 255).
    """
    return _MAPS[bool(signed)].copy()


# The state slots of the step functions whose values can be negative: they
# take q8's signed map, and a step refuses an unsigned q8 state there. The
# others (second moments, sums of squares) are never negative and may use the
# unsigned map, which spends all 256 codes on values >= 0.
SIGNED_STATES = frozenset({"momentum_buffers", "exp_avgs", "grad_avgs",
                           "zs", "ss", "p0s"})  # schedule-free's z, Prodigy's s and p0

# The state slots that hold the weights themselves: schedule-free's z, which
# the param follows. An update moves them by amounts far below a q8 or q4
# code, or half a bfloat16 ulp of a float32 weight, so a step refuses a z
# that cannot hold its param's values (holds_param), and a 16-bit z rounds
# stochastically like its param, with random bits of its own (WEIGHT_STREAM).
WEIGHT_STATES = frozenset({"zs"})


def holds_param(dtype, param_dtype):
    """Whether a state of ``dtype`` holds every value of a param of
    ``param_dtype`` (both dtype names, e.g. ``"bfloat16"``; ``"q8"`` and
    ``"q4"`` hold none): the param's own dtype, float64, or float32 for a
    16-bit param (float64 states are for float64 params only)."""
    return (dtype in (param_dtype, "float64")
            or (dtype == "float32" and param_dtype in ("bfloat16", "float16")))


def _blocks(n, block=BLOCK):
    return -(-n // block)


def low_bit_shapes(kind, shape):
    """``(codes shape, absmax shape)`` of a ``"q8"`` or ``"q4"`` state of a
    param of ``shape``: q8 codes have the param's shape, q4 codes are flat,
    two a byte; one absmax per block."""
    size = int(np.prod(shape))
    if kind == "q8":
        return tuple(shape), (_blocks(size),)
    return ((size + 1) // 2,), (_blocks(size, Q4_BLOCK),)


def quantize_low_bit(kind, x, signed=True):
    """``(codes, absmax)`` of ``x`` as a ``"q8"`` or ``"q4"`` state, the codes
    in :func:`low_bit_shapes`' shape."""
    if kind == "q8":
        return quantize_blockwise(x, signed)
    return quantize_blockwise_q4(x, signed)


def quantize_blockwise(x, signed=True):
    """Block-wise dynamic quantization of float32 values: ``(codes, absmax)``.

    ``x`` is read in C order and cut into blocks of 256 (the last may be
    shorter). For each block, in float32::

        e      = the block's extreme: its finite value of largest |x|, the
                 negative one where -a and a tie (0 if it has no finite value)
        absmax = |e| / 0.99296874 if signed and e < 0, else |e|   (IEEE division)
        n      = x / absmax                    (IEEE division; n = 0 where absmax == 0
                                                or x is NaN)
        code   = the number of midpoints m[k] with m[k] < n

    where ``m[k]`` (k = 0..254) is the midpoint of map values k and k + 1,
    rounded to float32 (``_MIDPOINTS``). So ``code`` is the index of the
    nearest map value, and a value exactly on a midpoint takes the lower code.
    The scale divides the extreme by the map's end on its side (0.99296874 is
    ``-map[0]``), so the extreme takes that end's code (0 or 255) and comes back
    as itself (see the module docstring); on a tie both -a and a come back
    exactly (codes 0 and 254). An all-zero block has absmax 0 and every code the
    code of 0. With ``signed=False`` a negative ``n`` takes code 0.

    Non-finite values: NaN and +-inf never reach the scale, so a block's absmax
    and its other codes are those it would have without them (and stay
    finite). Such an element's own code: +inf takes code 255 (it comes back as
    ``absmax``), -inf code 0 (``-0.99296874 * absmax``; unsigned, 0, as any
    negative ``n``), NaN the code of 0 (127 signed, 0 unsigned: it comes back
    as 0). In a block without a finite non-zero value every element takes the
    code of 0.

    Returns ``codes`` (uint8, the shape of ``x``) and ``absmax`` (float32,
    ``ceil(x.size / 256)`` values).
    """
    x = np.asarray(x, dtype=np.float32)
    n, absmax = _normalized_blocks(x.reshape(-1), BLOCK, _MAPS[True][0] if signed else None)
    codes = np.searchsorted(_MIDPOINTS[bool(signed)], n, side="left")
    return codes[:x.size].astype(np.uint8).reshape(x.shape), absmax


def _normalized_blocks(flat, block, low_end):
    """``(n, scale)`` of float32 values cut into blocks: each block's scale
    |extreme| / |the map's end on the extreme's side| (``low_end``: the map's
    first value, or None for an unsigned map, whose scale is |extreme|), the
    extreme taken over the block's finite values, and every value divided by
    it (0 where the scale is 0 and for NaN), zero-padded to whole blocks, flat."""
    nblocks = -(-flat.size // block)
    padded = np.zeros(nblocks * block, dtype=np.float32)
    padded[:flat.size] = flat
    blocks = padded.reshape(nblocks, block)
    finite = np.where(np.isfinite(blocks), blocks, np.float32(0))  # NaN and inf: no part in the scale
    absmax = np.max(np.abs(finite), axis=1, initial=np.float32(0))
    if low_end is not None:  # the extreme's side: negative where -absmax is in the block
        negative = np.any(finite == -absmax[:, None], axis=1) & (absmax > 0)
        absmax = np.where(negative, absmax / -low_end, absmax).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = blocks / absmax[:, None]
    n[absmax == 0] = 0
    n[np.isnan(n)] = 0  # a NaN (the scale is finite and not 0): the code of 0
    return n.reshape(-1), absmax


def quantize_blockwise_q4(x, signed=True):
    """Block-wise 4-bit quantization of float32 values: ``(codes, absmax)``.

    ``x`` is read in C order and cut into blocks of ``Q4_BLOCK = 128`` (the
    last may be shorter). Each block's ``absmax`` is its scale, by the rule of
    :func:`quantize_blockwise` with this map's low end (-0.8875 signed; an
    unsigned block's scale is max |x|), and each ``n = x / absmax`` (IEEE
    division, 0 where absmax is 0 or x is NaN) takes the nearest code of
    :func:`create_q4_map` by torchao's rule: the code c with map[c] <= n <
    map[c + 1], one up when float32(n - map[c]) >= float32(map[c + 1] -
    map[c]) * 0.5 (ties go up); below map[0], code 0. Where a block's extreme
    is positive (and above 1e-12, torchao's least scale) the codes are
    torchao's ``quantize_4bit_with_qmap``'s.

    Non-finite values, as in :func:`quantize_blockwise`: they never reach the
    scale (taken from the block's finite values), and +inf takes code 15 (it
    comes back as ``absmax``), -inf code 0 (``-0.8875 * absmax`` signed,
    ``absmax / 16`` unsigned), NaN the code of the map's value nearest 0 (7
    signed: 0; 0 unsigned: ``absmax / 16``, the unsigned map having no 0). In
    a block without a finite non-zero value every element takes the code of 0.

    Returns ``codes``: uint8, ``ceil(x.size / 2)`` bytes, element 2i in the
    high nibble of byte i and element 2i + 1 in its low one (0 past an odd
    end); ``absmax``: float32, ``ceil(x.size / 128)`` values.
    """
    x = np.asarray(x, dtype=np.float32)
    n, absmax = _normalized_blocks(x.reshape(-1), Q4_BLOCK, _Q4_MAPS[True][0] if signed else None)
    codes = np.searchsorted(_Q4_THRESHOLDS[bool(signed)], n[:x.size], side="right")
    return pack_nibbles(codes.astype(np.uint8)), absmax


def pack_nibbles(codes):
    """4-bit codes (uint8 < 16), two a byte: element 2i high, 2i + 1 low."""
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    return (codes[0::2] << 4 | codes[1::2]).astype(np.uint8)


def unpack_nibbles(packed, size):
    """The first ``size`` 4-bit codes of ``packed`` (pack_nibbles' layout)."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    return np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:size]


def dequantize_blockwise_q4(codes, absmax, shape, signed=True):
    """float32 values ``map[code] * absmax`` of each element's block (one
    float32 rounding), in ``shape``."""
    size = int(np.prod(shape))
    scale = np.repeat(np.asarray(absmax, dtype=np.float32), Q4_BLOCK)[:size]
    return (_Q4_MAPS[bool(signed)][unpack_nibbles(codes, size)] * scale).reshape(shape)


def dequantize_blockwise(codes, absmax, signed=True):
    """float32 values ``map[code] * absmax`` of each element's block (one
    float32 rounding), in the shape of ``codes``."""
    codes = np.asarray(codes)
    flat = codes.reshape(-1)
    scale = np.repeat(np.asarray(absmax, dtype=np.float32), BLOCK)[:flat.size]
    return (_MAPS[bool(signed)][flat] * scale).reshape(codes.shape)


# -- arrays that are not NumPy's
#
# The formats are specified on NumPy arrays, and this module imports nothing
# of lrfast's. The state classes and zeros_state also take CUDA device arrays
# (zeros_state torch tensors too), which only the layers above know how to
# read and make: lrfast._backend, loaded with lrfast, registers a handler for
# them, and the CUDA back end stays unimported until a device array comes.

_ARRAY_HANDLERS: list = []


def register_arrays(handler):
    """Lets the state classes and zeros_state take the arrays ``handler``
    knows. It has ``owns(x)`` (whether ``x`` is one of them; imports
    nothing), ``describe(x, label)`` (``(shape, dtype, c_contiguous,
    writeable)`` of a low-bit state's codes or absmax, or a TypeError/
    ValueError naming ``label``), ``to_host(x)`` (a NumPy copy) and
    ``allocators(param)``: ``(dtype name, shape, full, full_low_bit)``, where
    ``full(shape, value, dtype)`` makes a float state beside ``param`` and
    ``full_low_bit`` the codes and absmax of a low-bit one."""
    _ARRAY_HANDLERS.append(handler)


def _handler(x, label, expected):
    for handler in _ARRAY_HANDLERS:
        if handler.owns(x):
            return handler
    raise TypeError(f"{label}: expected {expected}, got {type(x).__name__}")


def _writeable_c_array(x, name, dtype):
    """Checks a low-bit state's part: a NumPy array, or an array a handler
    describes (a CUDA device array, read without touching its memory)."""
    if isinstance(x, np.ndarray):
        shape, got = x.shape, x.dtype
        contiguous, writeable = x.flags.c_contiguous, x.flags.writeable
    else:
        handler = _handler(x, name, "a NumPy array or a CUDA device array")
        shape, got, contiguous, writeable = handler.describe(x, name)
    if got != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype).name}, got {got}")
    if not contiguous:
        raise ValueError(f"{name}: the array must be C-contiguous")
    if not writeable:
        raise ValueError(f"{name}: the array must be writeable")
    return shape


def _state_arrays(codes, absmax):
    """The shapes of a low-bit state's codes and absmax, once each is checked
    and both are on one device."""
    codes_shape = _writeable_c_array(codes, "codes", np.uint8)
    absmax_shape = _writeable_c_array(absmax, "absmax", np.float32)
    if isinstance(codes, np.ndarray) != isinstance(absmax, np.ndarray):
        raise TypeError("absmax: expected an array on the device of codes "
                        "(both NumPy arrays, or both CUDA device arrays)")
    return codes_shape, absmax_shape


def _host_arrays(state):
    """A low-bit state's codes and absmax as NumPy arrays (host copies of
    device arrays)."""
    if isinstance(state.codes, np.ndarray):
        return state.codes, state.absmax
    handler = _handler(state.codes, "codes", "a NumPy array or a CUDA device array")
    return handler.to_host(state.codes), handler.to_host(state.absmax)


def _check_signed(value):
    """A low-bit state's ``signed``, which the kernels read as a C++ bool:
    a bool or ``np.bool_`` only (a 2 or 0.3 would pass as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"signed: expected a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


class _LowBitState:
    """What Q8State and Q4State share: ``signed``, checked whenever it is set."""

    __slots__ = ("codes", "absmax", "_signed")

    @property
    def signed(self):
        """Which map the codes index; ``False`` is for states that are never
        negative. A bool or ``np.bool_``, nothing else."""
        return self._signed

    @signed.setter
    def signed(self, value):
        self._signed = _check_signed(value)

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, signed={self.signed})"


class Q8State(_LowBitState):
    """An optimizer state held in 8 bits (see :func:`quantize_blockwise`).

    ``codes``: uint8, the param's shape, C-contiguous, writeable. ``absmax``:
    float32, 1-D, C-contiguous, writeable, one value per block of 256 codes
    in C order. Both NumPy arrays, or both CUDA device arrays (anything with
    ``__cuda_array_interface__``: Numba device arrays, torch CUDA tensors) for
    device params. ``signed``: which dynamic map the codes index; ``False`` is
    for states that are never negative. Steps update ``codes`` and ``absmax``
    in place. Pickles with every protocol, through this constructor.
    """

    __slots__ = ()

    def __init__(self, codes, absmax, signed=True):
        shape, absmax_shape = _state_arrays(codes, absmax)
        blocks = _blocks(int(np.prod(shape)))
        if len(absmax_shape) != 1 or absmax_shape[0] != blocks:
            raise ValueError(f"absmax: expected {blocks} values (one per block of "
                             f"{BLOCK} codes), got shape {tuple(absmax_shape)}")
        self.signed = signed
        self.codes, self.absmax = codes, absmax

    def __reduce__(self):  # slots without a __dict__: protocols 0 and 1 need this
        return Q8State, (self.codes, self.absmax, self.signed)

    @property
    def shape(self):
        return tuple(self.codes.shape)

    @property
    def nbytes(self):
        n = int(np.prod(self.shape))
        return n + 4 * _blocks(n)

    def dequantize(self):
        """The values as a new float32 NumPy array of the state's shape (from
        a host copy for a state on the device)."""
        return dequantize_blockwise(*_host_arrays(self), self.signed)

    def copy(self):
        """A Q8State over copies of the arrays."""
        return Q8State(self.codes.copy(), self.absmax.copy(), self.signed)


class Q4State(_LowBitState):
    """An optimizer state held in 4 bits (see :func:`quantize_blockwise_q4`),
    in torchao's layout.

    ``codes``: uint8, 1-D, ``ceil(size / 2)`` bytes, two codes a byte (element
    2i in the high nibble), C-contiguous, writeable. ``absmax``: float32, 1-D,
    one scale per block of 128 elements in C order. ``shape``: the param's
    shape. Both arrays NumPy arrays, or both CUDA device arrays for device
    params. ``signed``: which map the codes index; ``False`` is for states that
    are never negative. Steps update ``codes`` and ``absmax`` in place.
    Pickles with every protocol, through this constructor.
    """

    __slots__ = ("_shape",)

    def __init__(self, codes, absmax, shape, signed=True):
        if not isinstance(shape, (tuple, list)) or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
                for d in shape):
            raise TypeError(f"shape: expected a tuple of non-negative ints, got {shape!r}")
        self._shape = tuple(int(d) for d in shape)
        codes_shape, absmax_shape = _state_arrays(codes, absmax)
        (code_bytes,), (blocks,) = low_bit_shapes("q4", self._shape)
        if tuple(codes_shape) != (code_bytes,):
            raise ValueError(f"codes: expected {code_bytes} bytes (two codes a byte) in a "
                             f"1-D array for shape {self._shape}, got shape {tuple(codes_shape)}")
        if tuple(absmax_shape) != (blocks,):
            raise ValueError(f"absmax: expected {blocks} values (one per block of "
                             f"{Q4_BLOCK} elements), got shape {tuple(absmax_shape)}")
        self.signed = signed
        self.codes, self.absmax = codes, absmax

    def __reduce__(self):  # slots without a __dict__: protocols 0 and 1 need this
        return Q4State, (self.codes, self.absmax, self._shape, self.signed)

    @property
    def shape(self):
        return self._shape

    @property
    def nbytes(self):
        (code_bytes,), (blocks,) = low_bit_shapes("q4", self._shape)
        return code_bytes + 4 * blocks

    def dequantize(self):
        """The values as a new float32 NumPy array of the state's shape (from
        a host copy for a state on the device)."""
        return dequantize_blockwise_q4(*_host_arrays(self), self._shape, self.signed)

    def copy(self):
        """A Q4State over copies of the arrays."""
        return Q4State(self.codes.copy(), self.absmax.copy(), self._shape, self.signed)


def bfloat16():
    """``ml_dtypes.bfloat16``, imported on first use."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("bfloat16 arrays need ml_dtypes: pip install ml_dtypes") from None
    return np.dtype(ml_dtypes.bfloat16)


def is_16bit(dtype):
    """Whether ``dtype`` is bfloat16 or float16."""
    return np.dtype(dtype) == np.float16 or np.dtype(dtype).name == "bfloat16"


def zeros_state(param, dtype=None, *, signed=True):
    """A zero optimizer state for ``param``: a NumPy array; a CPU torch
    tensor (float states are then torch tensors beside it, low-bit ones hold
    NumPy arrays, which is what the step functions take next to torch
    params); or a CUDA device array (the state is on the device too: torch
    tensors for a torch param, else Numba device arrays, bfloat16 ones as
    :class:`lrfast.cuda.devicearrays.BFloat16Array`).

    ``dtype``: ``None`` (the param's dtype), ``"float32"``, ``"bfloat16"``,
    ``"float16"`` (float16 params only), ``"float64"`` (float64 params only) or
    ``"q8"``: a :class:`Q8State` (all codes the code of 0, absmax 0) when the
    param has at least ``Q8_MIN_SIZE`` = 4096 elements, float32 zeros
    otherwise; ``"q4"``: a :class:`Q4State` likewise (codes those of 0: 7
    signed, 0 unsigned). ``signed=False`` makes low-bit states for values that
    are never negative (second moments, Adagrad sums, Adadelta accumulators).
    """
    if isinstance(param, np.ndarray):
        param_dtype, shape, full, full_low_bit = param.dtype.name, param.shape, np.full, np.full
    else:
        handler = _handler(param, "param", "a NumPy array, a CUDA device array or a torch tensor")
        param_dtype, shape, full, full_low_bit = handler.allocators(param)
    if param_dtype not in ("float32", "float64", "bfloat16", "float16"):
        raise TypeError(f"param: dtype {param_dtype} is not supported "
                        "(float32, float64, bfloat16 or float16)")
    signed = _check_signed(signed)
    choices = "None, 'float32', 'bfloat16', 'float16', 'float64', 'q8' or 'q4'"
    if dtype is None:
        dtype = param_dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype: expected {choices}, got {dtype!r}")
    size = int(np.prod(shape))
    if dtype == "q8":
        if size < Q8_MIN_SIZE:
            return full(shape, 0, np.dtype(np.float32))
        codes = full_low_bit(shape, 127 if signed else 0, np.dtype(np.uint8))
        return Q8State(codes, full_low_bit((_blocks(size),), 0, np.dtype(np.float32)), signed)
    if dtype == "q4":
        if size < Q8_MIN_SIZE:
            return full(shape, 0, np.dtype(np.float32))
        codes_shape, absmax_shape = low_bit_shapes("q4", shape)
        codes = full_low_bit(codes_shape, 0x77 if signed else 0, np.dtype(np.uint8))
        absmax = full_low_bit(absmax_shape, 0, np.dtype(np.float32))
        return Q4State(codes, absmax, shape, signed)
    if dtype == "float32":
        return full(shape, 0, np.dtype(np.float32))
    if dtype == "bfloat16":
        return full(shape, 0, bfloat16())
    if dtype in ("float16", "float64"):
        if param_dtype != dtype:
            raise ValueError(f"dtype: {dtype} states need a {dtype} param, not {param_dtype} "
                             "(states are float32, the param's dtype, bfloat16, q8 or q4)")
        return full(shape, 0, np.dtype(dtype))
    raise ValueError(f"dtype: expected {choices}, got {dtype!r}")


def round_nearest(x, dtype):
    """``x`` rounded to ``dtype`` to nearest, ties to even (IEEE's default).

    A float64 value goes to a 16-bit dtype through float32 (two roundings, as
    ``cvtpd_ps`` then ``cvtps_ph``/``cvtneps_pbh`` do). Overflow gives inf; NaN
    stays NaN.
    """
    dtype = np.dtype(dtype)
    x = np.asarray(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if is_16bit(dtype):
            x = x.astype(np.float32, copy=False)
        return x.astype(dtype, copy=False)


_M32 = 0xFFFFFFFF
_M64 = 2**64 - 1
_KEY_INIT = 0x243F6A88
_WEYL = 0x9E3779B9
WEIGHT_STREAM = 2**63
"""Where the random bits of a state that holds weights start (:func:`random_bits`)."""


def _lowbias32(x):
    """Chris Wellons' lowbias32 on uint32 arrays (all arithmetic mod 2**32)::

        x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16
    """
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _word(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{name}: expected 0 <= {name} < 2**64, got {value}")
    return int(value)


def _splitmix64(x: int) -> int:
    """SplitMix64's output function of ``x`` plus its increment (Steele, Lea
    and Flood 2014): a bijection of 64-bit ints."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def mix_seed(seed: int, *counters: int) -> int:
    """A call's ``seed`` for stochastic rounding, hashed from a run's seed and
    counters (the update's number, the call's param group, ...): ``x =
    S(seed)``, then ``x = S(x ^ c)`` for each counter ``c``, with ``S``
    SplitMix64's bijection, all mod 2**64.

    A caller that steps with several calls, or with a step function that
    takes no ``step``, passes ``seed=mix_seed(run_seed, update, ...)``, as
    lrfast's optimizer classes do. Adding the counters (``run_seed + update``)
    would not do: seed s at update k + 1 would draw seed s + 1's bits at
    update k. Distinct counters give distinct seeds for one run seed."""
    x = _splitmix64(_word(seed, "seed"))
    for c in counters:
        x = _splitmix64(x ^ _word(c, "counter"))
    return x


def call_key(seed: int, step: int) -> np.uint32:
    """The part of :func:`random_bits`' key that depends on the call alone,
    ``H(H(H(H(0x243F6A88 ^ lo(seed)) ^ hi(seed)) ^ lo(step)) ^ hi(step))``:
    computed once per call on the host and handed to the kernels."""
    key = np.array([_KEY_INIT], dtype=np.uint32)
    for word in (seed & _M32, seed >> 32, step & _M32, step >> 32):
        key = _lowbias32(key ^ np.uint32(word))
    return key[0]


def random_bits(seed, step, start, count):
    """The 32-bit random numbers ``R(i)`` of stochastic rounding, for the
    positions ``i = start .. start + count - 1`` (uint32 array).

    ``i`` is an element's position in the call: the params of the list laid
    end to end, each in C order, counted from 0. ``seed`` and ``step`` are
    integers in [0, 2**64) (a step function without a step uses 0). With
    ``lo(v)``/``hi(v)`` the low/high 32 bits, all arithmetic mod 2**32 and
    ``H`` = :func:`_lowbias32`::

        key(h) = H(H(H(H(H(0x243F6A88 ^ lo(seed)) ^ hi(seed)) ^ lo(step)) ^ hi(step)) ^ h)
        R(i)   = H(key(hi(i)) + lo(i) * 0x9E3779B9)

    ``key`` changes only every 2**32 positions, so a kernel computes it once
    per run of positions; per element it costs one multiply-add and one ``H``.

    A 16-bit state that holds weights (schedule-free's z, see
    ``WEIGHT_STATES``), rounded stochastically in the same call, draws
    ``R(WEIGHT_STREAM + i)`` for its element at position ``i``: positions
    no param reaches (they are below 2**63, so ``hi(i) < 2**31``), so its
    bits are independent of every param's. As ``hi(2**63 + i) = hi(i) ^
    0x80000000``, that is the rule above with the call's key XORed with
    ``0x80000000`` (the kernels' ``sr_key ^ 0x80000000``).
    """
    key = call_key(_word(seed, "seed"), _word(step, "step"))
    positions = np.arange(start, start + count, dtype=np.uint64)
    keys = _lowbias32(key ^ (positions >> np.uint64(32)).astype(np.uint32))
    lo = (positions & np.uint64(_M32)).astype(np.uint32)
    return _lowbias32(keys + lo * np.uint32(_WEYL))


def round_stochastic(x, dtype, bits):
    """float32 ``x`` rounded stochastically to bfloat16 or float16 with the
    random numbers ``bits`` (uint32, one per element, from :func:`random_bits`).

    Let ``a`` be ``x`` truncated toward zero to ``dtype`` (its bit pattern with
    the low bits dropped) and ``b`` the next value away from zero (inf after the
    largest finite value); the result is ``b`` if::

        R < 2**32 * (|x| - |a|) / ulp(a)

    and ``a`` otherwise, so it is ``b`` with probability ``(|x| - |a|) /
    ulp(a)``: unbiased. ``x == a`` (zeros, infs, exact values) never moves;
    NaN stays NaN (bfloat16: the high half of its bits with the quiet bit set).
    In bit form, with ``u`` the float32 bits of ``x``:

    * bfloat16: ``(u >> 16) + ((R >> 16) < (u & 0xFFFF))``; equivalently the
      classic ``(u + (0xFFFF - (R >> 16))) >> 16``.
    * float16, ``2**-14 <= |x| < 2**16``: the float16 truncation of ``x`` plus
      one ulp when ``(R >> 19) < (u & 0x1FFF)``. Below ``2**-14`` (float16
      subnormals, ``ulp = 2**-24``): ``R < (|x| - |a|) * 2**56``, compared
      exactly (in float64). ``|x| >= 2**16`` gives inf.
    """
    x = np.asarray(x, dtype=np.float32)
    bits = np.asarray(bits, dtype=np.uint32).reshape(x.shape)
    if np.dtype(dtype) == np.float16:
        return _round_stochastic_float16(x, bits)
    u = x.view(np.uint32)
    high = (u >> np.uint32(16)).astype(np.uint16)
    up = (bits >> np.uint32(16)) < (u & np.uint32(0xFFFF))
    out = np.where(np.isnan(x), high | np.uint16(0x0040), high + up.astype(np.uint16))
    return out.astype(np.uint16).view(bfloat16())


def _round_stochastic_float16(x, bits):
    ax = np.abs(x.astype(np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        nearest = x.astype(np.float16)
        toward_zero = np.where(np.abs(nearest.astype(np.float64)) > ax,
                               np.nextafter(nearest, np.float16(0)), nearest)
        exponent = np.frexp(toward_zero.astype(np.float64))[1] - 1
        exponent = np.where(toward_zero == 0, -14, np.maximum(exponent, -14))
        threshold = (ax - np.abs(toward_zero.astype(np.float64))) * 2.0**(42 - exponent)
        up = bits.astype(np.float64) < threshold
        away = np.nextafter(toward_zero, np.copysign(np.float16(np.inf), toward_zero))
    out = np.where(up, away, toward_zero)
    return np.where(ax >= 2.0**16, np.copysign(np.float16(np.inf), x), out).astype(np.float16)
