"""How the NumPy references read and write their arrays: one tensor at a
time, arithmetic in float32 (float64 for float64 params), each store rounded
to nearest even or re-quantized (a q8 state), 16-bit params (and 16-bit
states that hold weights) rounded stochastically when asked. Shared by
:mod:`lrfast.reference` and :mod:`lrfast.reference_lr_free`.
"""

from __future__ import annotations

import numpy as np

from .precision import (Q4State, Q8State, quantize_blockwise, quantize_blockwise_q4, random_bits,
                        round_nearest, round_stochastic)


def listify(x):
    if x is None or isinstance(x, (list, tuple)):
        return x
    return [x]


def each(params, grads, *states):
    """Yields (param, grad, *states) per tensor; a missing state list gives None."""
    params, grads = listify(params), listify(grads)
    states = [listify(s) if s is not None else [None] * len(params) for s in states]
    return zip(params, grads, *states)


def arithmetic_dtype(p):
    return np.dtype(np.float64 if p.dtype == np.float64 else np.float32)


def load(x, dtype):
    """``x`` (an array, a Q8State, a Q4State or None) in the arithmetic
    ``dtype``; an array already of that dtype is returned itself, not copied."""
    if x is None:
        return None
    if isinstance(x, (Q8State, Q4State)):
        return x.dequantize().astype(dtype, copy=False)
    return x.astype(dtype, copy=False)


def store(x, value):
    """Writes ``value`` into ``x``: rounded to nearest even, or re-quantized."""
    if x is None:
        return
    if isinstance(x, Q8State):
        x.codes[...], x.absmax[...] = quantize_blockwise(value, x.signed)
    elif isinstance(x, Q4State):
        x.codes[...], x.absmax[...] = quantize_blockwise_q4(value, x.signed)
    else:
        x[...] = round_nearest(value, x.dtype)


class ParamStore:
    """Stores the new params of one call, counting their elements' positions;
    from ``first=WEIGHT_STREAM``, the new values of a state that holds
    weights (schedule-free's z), which round as the params do, with random
    bits of their own (see :func:`lrfast.precision.random_bits`)."""

    def __init__(self, stochastic_rounding, seed, step, first=0):
        self.stochastic_rounding, self.seed, self.step = stochastic_rounding, seed, step or 0
        self.position = first

    def __call__(self, p, value):
        if self.stochastic_rounding and p.dtype.itemsize == 2:
            bits = random_bits(self.seed, self.step, self.position, p.size)
            p[...] = round_stochastic(value, p.dtype, bits)
        else:
            store(p, value)
        self.position += p.size


def check_signed(states, name):
    for i, s in enumerate(listify(states) or []):
        if isinstance(s, (Q8State, Q4State)) and not s.signed:
            kind = "q8" if isinstance(s, Q8State) else "q4"
            raise ValueError(f"{name}[{i}]: an unsigned {kind} state cannot hold values that can "
                             f"be negative; make it with zeros_state(param, '{kind}', signed=True)")
