"""The kernels' q8 quantizer against the spec at the values where it can go
wrong: every midpoint of both maps and the floats next to it, and the edges of
the kernels' lookup cells (cpp/include/lrfast/q8_tables.hpp: a cell is the
exponent and top 7 mantissa bits of |n|, from 2^-23 up), both signs, on every
ISA variant.

A step's q8 state is quantized exactly as the spec says, so the values are fed
through steps whose new state is the value itself: SGD's momentum buffer on
its first step is the gradient (signed map); Adam's second moment with beta2 =
0 is the gradient squared (unsigned map), exact for gradients of at most 12
significant bits. Each block of 256 holds a 1.0, so that absmax is 1 and the
normalised value is the value.
"""

import numpy as np
import pytest

import lrfast
from isa_run import saved_arrays
from lrfast import precision, steps

F32 = np.float32


def _with_ones(values):
    """values laid out in blocks of 256 that each start with a 1.0."""
    values = np.asarray(values, dtype=F32)
    per_block = precision.BLOCK - 1
    blocks = -(-values.size // per_block)
    out = np.ones((blocks, precision.BLOCK), dtype=F32)
    padded = np.zeros(blocks * per_block, dtype=F32)
    padded[:values.size] = values
    out[:, 1:] = padded.reshape(blocks, per_block)
    return out.reshape(-1)


def _neighbours(x):
    x = np.asarray(x, dtype=F32)
    return np.concatenate([x, np.nextafter(x, F32(np.inf)), np.nextafter(x, F32(-np.inf))])


def signed_values():
    """Every midpoint of the signed map, and the cell edges, with their
    neighbours, both signs, within (-1, 1] (a -1 would tie with the block's
    1.0 and make its extreme negative)."""
    mids = precision._MIDPOINTS[True]
    edges = ((np.arange(0, 2945, dtype=np.uint32) << 16) + (104 << 23)).view(F32)
    x = _neighbours(np.concatenate([mids, edges, [0.0, 1.0, 2.0**-23, 2.0**-30]]))
    x = np.concatenate([x, -x])
    return _with_ones(x[(np.abs(x) <= 1) & (x != -1)])


def unsigned_values():
    """Gradients of 12 significant bits, each exponent from 2^-13 to 2^-1,
    whose squares are exact, plus those nearest (in 12 bits) to the square
    roots of the unsigned map's midpoints."""
    grid = np.concatenate([np.arange(2048, 4096) * 2.0**(-12 - e) for e in range(1, 14)])
    roots = np.sqrt(precision._MIDPOINTS[False].astype(np.float64))
    exponent = np.floor(np.log2(roots))
    near = np.round(roots * 2.0**(11 - exponent)) * 2.0**(exponent - 11)
    return _with_ones(np.concatenate([grid, near]).astype(F32))


def quantize_by_steps(signed_x, unsigned_g):
    """The codes of the kernels' q8 states after the steps described above."""
    b = precision.zeros_state(signed_x, "q8", signed=True)
    steps.sgd_step([np.zeros_like(signed_x)], [signed_x], [b], lr=0.0, momentum=0.9, step=1)
    v = precision.zeros_state(unsigned_g, "q8", signed=False)
    steps.adam_step([np.zeros_like(unsigned_g)], [unsigned_g], [np.zeros_like(unsigned_g)], [v],
                    lr=0.0, betas=(0.9, 0.0), step=1)
    return b.codes, v.codes


def check(codes_signed, codes_unsigned, where):
    x, g = signed_values(), unsigned_values()
    assert np.array_equal(g * g, (g.astype(np.float64) ** 2).astype(F32))  # squares are exact
    for got, (want, absmax), what in (
            (codes_signed, precision.quantize_blockwise(x, True), "signed"),
            (codes_unsigned, precision.quantize_blockwise(g * g, False), "unsigned")):
        assert np.all(absmax == 1)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"{where}, {what}: {bad.size} codes differ, first at {bad[:5]}"


def test_midpoints_and_cell_edges_get_the_spec_codes():
    check(*quantize_by_steps(signed_values(), unsigned_values()), lrfast.cpu_isa())


WORKLOAD = """
import sys
import numpy as np
import test_q8_quantizer as t
np.savez(sys.argv[1], *t.quantize_by_steps(t.signed_values(), t.unsigned_values()))
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_isa_gets_the_spec_codes(isa, tmp_path):
    check(*saved_arrays(WORKLOAD, isa, tmp_path), f"LRFAST_CPU_ISA={isa}")
