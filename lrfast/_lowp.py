"""The low-precision options of the optimizer classes, shared by
:mod:`lrfast.optim` and :mod:`lrfast.torch`: ``state_dtype``,
``stochastic_rounding`` and ``seed``, which states may be negative, and the
rounding keywords of a step. The numbers themselves are :mod:`lrfast.precision`'s.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType
from typing import Any

import numpy as np

from .precision import Q8_MIN_SIZE, mix_seed, quantize_low_bit, unpack_nibbles

STATE_DTYPES = (None, "float32", "bfloat16", "q8", "q4")
_CHOICES = "None (the param's dtype), 'float32', 'bfloat16', 'q8' or 'q4'"



def check_state_dtype(value: Any) -> str | None:
    """``state_dtype`` as one of STATE_DTYPES' names; a NumPy, ml_dtypes or
    torch dtype (``np.float32``, ``ml_dtypes.bfloat16``, ``torch.bfloat16``)
    stands for its name."""
    if value is None or isinstance(value, str) and value in STATE_DTYPES:
        return value
    if isinstance(value, str):
        raise ValueError(f"state_dtype must be {_CHOICES}, got {value!r}")
    if type(value).__module__ == "torch" and str(value).startswith("torch."):
        name = str(value)[len("torch."):]  # a torch.dtype, named without importing torch
    else:
        try:
            name = np.dtype(value).name
        except TypeError:
            raise TypeError(f"state_dtype must be {_CHOICES} or a dtype, got a "
                            f"{type(value).__name__}") from None
    if name not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be {_CHOICES}, got the dtype {name}")
    return name


def check_stochastic_rounding(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"stochastic_rounding must be a bool, got a {type(value).__name__}")
    return bool(value)


def warn_nothing_to_round(stochastic_rounding: bool, params) -> None:
    """Says that stochastic rounding, asked for, has nothing to round; the
    warning names the first caller outside lrfast and torch."""
    if stochastic_rounding and params and not any(p.dtype.itemsize == 2 for p in params):
        dtypes = ", ".join(sorted({str(p.dtype) for p in params}))
        torch_file = getattr(sys.modules.get("torch"), "__file__", None)
        libraries = (_HERE,) + ((os.path.dirname(torch_file),) if torch_file else ())
        level = 2  # the caller
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(libraries):
            level, frame = level + 1, frame.f_back
        warnings.warn(f"stochastic_rounding=True rounds bfloat16 and float16 params; these are "
                      f"{dtypes}, so it changes nothing", stacklevel=level)


_HERE = os.path.dirname(os.path.abspath(__file__))


def low_bit(state_dtype: str | None, size: int) -> str | None:
    """``"q8"`` or ``"q4"`` where a state of a param of ``size`` elements is a
    Q8State or Q4State, else None: tensors under 4096 elements keep float32
    states, as :func:`lrfast.zeros_state` makes them (tiny tensors lose most
    from few bits and save least)."""
    return state_dtype if state_dtype in ("q8", "q4") and size >= Q8_MIN_SIZE else None


def low_bit_constant(kind: str, value: float, signed: bool) -> tuple[int, float]:
    """(code byte, absmax) of every element (q8) or byte (q4: two equal codes)
    and block of a low-bit state holding ``value`` everywhere, e.g. Adagrad's
    ``initial_accumulator_value``."""
    codes, absmax = quantize_low_bit(kind, np.array([value], np.float32), signed)
    if kind == "q8":
        return int(codes[0]), float(absmax[0])
    code = int(unpack_nibbles(codes, 1)[0])
    return code << 4 | code, float(absmax[0])


def rounding(stochastic_rounding: bool, seed: int, completed: int, group: int,
             first: int = 0, *shard: int) -> dict[str, Any]:
    """The rounding keywords of the step function call for the update that
    follows ``completed`` ones, over the params of param group ``group``
    from its ``first`` (in lrfast.torch, of those with a gradient). The
    random bits hash (seed, step, the position in the call): the seed is
    :func:`lrfast.precision.mix_seed` of all three, so that every call of
    every update draws its own bits (positions restart at 0 in each call,
    and some steps pass no step). ``shard``: which shard of its params the
    call updates (lrfast.torch's DTensors: this rank's coordinates along the
    mesh dimensions they are sharded along), so that each shard draws its own
    bits. Round to nearest even, the step functions' default, needs no
    keywords."""
    if not stochastic_rounding:
        return {}
    return {"stochastic_rounding": True, "seed": mix_seed(seed, completed, group, first, *shard)}
