"""Shared by the tests of the optimizer classes with low-precision states:
bitwise comparison of states (arrays of any float dtype, Q8State or Q4State)."""

import numpy as np

from lrfast.precision import Q4State, Q8State, quantize_blockwise, quantize_blockwise_q4


def bits(a):
    """The bits of `a` as unsigned integers of its width: NaNs compare equal."""
    return np.ascontiguousarray(a).view({1: np.uint8, 2: np.uint16, 4: np.uint32,
                                         8: np.uint64}[a.dtype.itemsize])


def assert_same_state(got, want, what):
    assert type(got) is type(want), what
    if isinstance(want, (Q8State, Q4State)):
        assert got.signed == want.signed, what
        np.testing.assert_array_equal(got.codes, want.codes, err_msg=f"{what}: codes")
        np.testing.assert_array_equal(bits(got.absmax), bits(want.absmax), err_msg=what)
    else:
        assert got.dtype == want.dtype and got.shape == want.shape, what
        np.testing.assert_array_equal(bits(got), bits(want), err_msg=what)


def fill_state(state, value):
    """Sets every element of a state (an array or a Q8State) to `value`, as
    Adagrad's sums start at initial_accumulator_value."""
    if isinstance(state, (Q8State, Q4State)):
        quantize = quantize_blockwise if isinstance(state, Q8State) else quantize_blockwise_q4
        state.codes[...], state.absmax[...] = quantize(
            np.full(state.shape, value, np.float32), signed=state.signed)
    else:
        state[...] = value
