"""The low-bit state objects and zeros_state: ``signed`` is a bool whenever
it is set, Q8State and Q4State pickle and copy with every protocol, and
zeros_state takes the CPU torch tensors the step functions take."""

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
    # a shallow copy shares the arrays; the others own theirs
    assert np.shares_memory(got.codes, state.codes) == (how == "copy")
    assert np.shares_memory(got.absmax, state.absmax) == (how == "copy")
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


# -- zeros_state of a CPU torch tensor -------------------------------------------------------

def _numpy(t):
    """A NumPy copy of CPU tensor `t` (bfloat16 as ml_dtypes.bfloat16)."""
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(lrfast.precision.bfloat16()).copy()
    return t.numpy().copy()


TORCH_DTYPES = ["float32", "float64", "bfloat16", "float16"]


@pytest.mark.parametrize("param_dtype", TORCH_DTYPES)
@pytest.mark.parametrize("n", [100, N])
def test_zeros_state_of_a_cpu_torch_param(param_dtype, n):
    torch = pytest.importorskip("torch")
    param = torch.ones((n,), dtype=getattr(torch, param_dtype), requires_grad=True)
    reference = np.ones(n, _numpy(param.detach()).dtype)
    for dtype in (None, "float32", "bfloat16", param_dtype, "q8", "q4"):
        for signed in (True, False):
            state = zeros_state(param, dtype, signed=signed)
            want = zeros_state(reference, dtype, signed=signed)
            if isinstance(want, np.ndarray):  # float states: tensors beside the param
                assert isinstance(state, torch.Tensor) and state.device == param.device
                assert not state.requires_grad and state.is_contiguous()
                np.testing.assert_array_equal(_numpy(state), want)
                assert _numpy(state).dtype == want.dtype
                continue
            # low-bit states on the host hold NumPy arrays, as the C++ path reads them
            assert type(state) is type(want) and state.signed is signed
            assert state.shape == want.shape == (n,)
            assert type(state.codes) is np.ndarray and type(state.absmax) is np.ndarray
            np.testing.assert_array_equal(state.codes, want.codes)
            np.testing.assert_array_equal(state.absmax, want.absmax)


@pytest.mark.parametrize("param_dtype", TORCH_DTYPES)
@pytest.mark.parametrize("states", [(None, "float32"), ("bfloat16", "q8"), ("q4", "q8")])
def test_zeros_state_of_torch_params_runs_in_a_step_as_numpy_states_do(param_dtype, states):
    torch = pytest.importorskip("torch")
    first, second = states
    grad_dtype = "float32" if param_dtype == "float16" else param_dtype
    p = torch.linspace(-1, 1, N, dtype=getattr(torch, param_dtype))
    g = torch.linspace(0.5, -0.25, N, dtype=getattr(torch, grad_dtype))
    q, h = _numpy(p), _numpy(g)
    torch_states = zeros_state(p, first), zeros_state(p, second, signed=False)
    numpy_states = zeros_state(q, first), zeros_state(q, second, signed=False)
    for step in (1, 2):
        lrfast.adamw_step(p, g, *torch_states, lr=0.1, step=step)
        lrfast.adamw_step(q, h, *numpy_states, lr=0.1, step=step)
    np.testing.assert_array_equal(_numpy(p), q)
    for got, want in zip(torch_states, numpy_states):
        np.testing.assert_array_equal(_values(got), _values(want))


def _values(state):
    if isinstance(state, (Q8State, Q4State)):
        return state.dequantize()
    return state if isinstance(state, np.ndarray) else _numpy(state)


def test_zeros_state_refuses_torch_tensors_it_cannot_use():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^param: dtype int32 is not supported"):
        zeros_state(torch.ones(N, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"^param: a torch tensor on meta; lrfast runs on CPU"):
        zeros_state(torch.ones(N, device="meta"))
    with pytest.raises(ValueError, match="float64 states need a float64 param"):
        zeros_state(torch.ones(N), "float64")
    with pytest.raises(TypeError, match="^codes: expected a NumPy array or a CUDA device array, "
                                        "got a torch tensor on cpu"):
        Q8State(torch.zeros(N, dtype=torch.uint8), np.zeros(20, np.float32))
