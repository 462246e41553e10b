"""The low-bit state objects: ``signed`` is a bool whenever it is set, and
Q8State and Q4State pickle and copy with every protocol."""

import copy
import pickle
import re

import numpy as np
import pytest

import lrfast
from lrfast import Q4State, Q8State, zeros_state
from lrfast.precision import quantize_low_bit

N = 5000  # from 4096 elements on, zeros_state makes low-bit states
KINDS = {"q8": Q8State, "q4": Q4State}


def low_bit_state(kind, signed, shape=(N,)):
    """A state of `kind` holding values, not zeros."""
    values = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    codes, absmax = quantize_low_bit(kind, values if signed else values * values, signed)
    if kind == "q8":
        return Q8State(codes, absmax, signed)
    return Q4State(codes, absmax, shape, signed)


def construct(kind, state, signed):
    """A new state of `kind` over `state`'s arrays, with `signed`."""
    if kind == "q8":
        return Q8State(state.codes, state.absmax, signed)
    return Q4State(state.codes, state.absmax, state.shape, signed)


# -- signed ----------------------------------------------------------------------------------

NOT_BOOLS = ["yes", 2, 0, 1.0, np.float64(0.3), np.int64(1), None, [True]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
def test_signed_refuses_anything_but_a_bool_when_set(kind, value):
    state = low_bit_state(kind, signed=False)
    message = f"signed: expected a bool, got {value!r} ({type(value).__name__})"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        state.signed = value
    assert state.signed is False  # nothing written
    # a step still sees the unsigned state it was, and refuses it where values can be negative
    p = np.ones(N, np.float32)
    with pytest.raises(ValueError, match="exp_avgs.*unsigned"):
        lrfast.adam_step(p, p.copy(), state, zeros_state(p, kind, signed=False), step=1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
def test_signed_refuses_anything_but_a_bool_at_construction(kind, value):
    state = low_bit_state(kind, signed=True)
    message = f"^{re.escape(f'signed: expected a bool, got {value!r} ({type(value).__name__})')}$"
    with pytest.raises(TypeError, match=message):
        construct(kind, state, value)
    with pytest.raises(TypeError, match=message):
        zeros_state(np.ones(N, np.float32), kind, signed=value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [True, False, np.True_, np.False_], ids=repr)
def test_signed_takes_bools_and_keeps_a_python_bool(kind, value):
    state = low_bit_state(kind, signed=True)
    state.signed = value
    assert state.signed is bool(value)
    assert construct(kind, state, value).signed is bool(value)


# -- pickling and copies ---------------------------------------------------------------------

def _pickled(protocol):
    return lambda state: pickle.loads(pickle.dumps(state, protocol))


ROUND_TRIPS = {f"pickle-{p}": _pickled(p) for p in range(pickle.HIGHEST_PROTOCOL + 1)}
ROUND_TRIPS |= {"copy": copy.copy, "deepcopy": copy.deepcopy}


@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("kind,shape", [("q8", (50, 101)), ("q4", (5001,)), ("q4", (40, 129))])
@pytest.mark.parametrize("signed", [True, False])
def test_states_pickle_and_copy(how, kind, shape, signed):
    state = low_bit_state(kind, signed, shape)
    got = ROUND_TRIPS[how](state)
    assert type(got) is KINDS[kind] and got.signed is signed and got.shape == shape
    np.testing.assert_array_equal(got.codes, state.codes)
    np.testing.assert_array_equal(got.absmax, state.absmax)
    np.testing.assert_array_equal(got.dequantize(), state.dequantize())
    shared = np.shares_memory(got.codes, state.codes) and np.shares_memory(got.absmax, state.absmax)
    assert shared == (how == "copy")  # a shallow copy shares the arrays; the rest own theirs
    # a working state: a step updates it as it updates (a copy of) the original
    twin = state.copy()
    np.testing.assert_array_equal(_adam_param(got, signed), _adam_param(twin, signed))
    np.testing.assert_array_equal(got.codes, twin.codes)
    np.testing.assert_array_equal(got.absmax, twin.absmax)


def _adam_param(state, signed):
    """The param after one Adam step with `state` as its first moment if
    `signed`, else as its second."""
    p = np.ones(state.shape, np.float32)
    other = zeros_state(p, "float32")
    lrfast.adam_step(p, np.full(state.shape, 0.5, np.float32),
                     *((state, other) if signed else (other, state)), lr=0.1, step=1)
    return p
