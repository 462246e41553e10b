"""Static types of what lrfast's functions take, for annotations and type checkers.

At run time the functions check every array themselves (dtype, shape,
contiguity, writeability) and raise TypeError/ValueError naming the argument;
these types say only which kinds of objects can be passed:

- :data:`Array`: a NumPy array of any dtype (float32, float64, and the 16-bit
  and 8-bit forms checked at run time; ml_dtypes' bfloat16 is not a NumPy
  floating type, so the dtype is not part of the static type), an object
  exposing ``__array_interface__``, one exposing ``__cuda_array_interface__``
  (Numba device arrays, CuPy arrays, torch tensors, which declare it for CPU
  tensors too), or a memoryview (other buffer-protocol objects work as well but
  have no common static type before Python 3.12).
- :data:`Tensors`: one array or a sequence of arrays (a list or a tuple: one
  native call for the whole list).
- :data:`States`: as :data:`Tensors`, where an item may also be a
  :class:`lrfast.Q8State` (an 8-bit optimizer state).
- :data:`Real`, :data:`Bool`, :data:`Int`: the scalar keywords, which take
  Python and NumPy scalars alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeAlias, Union

import numpy as np
from numpy.typing import NDArray

from .precision import Q8State

__all__ = ["Array", "Tensors", "State", "States", "Real", "Bool", "Int", "HasArrayInterface", "HasCudaArrayInterface"]


class HasArrayInterface(Protocol):
    """An object that describes its host memory by NumPy's array interface."""

    @property
    def __array_interface__(self) -> Mapping[str, Any]: ...


class HasCudaArrayInterface(Protocol):
    """An object that describes its device memory by the CUDA array interface."""

    @property
    def __cuda_array_interface__(self) -> Mapping[str, Any]: ...


# memoryview is generic for type checkers but not subscriptable at run time before 3.12.
Array: TypeAlias = Union[NDArray[Any], HasArrayInterface, HasCudaArrayInterface, "memoryview[Any]"]
Tensors: TypeAlias = Union[Array, Sequence[Array]]
State: TypeAlias = Union[Array, Q8State]
States: TypeAlias = Union[State, Sequence[State]]

# `float` also admits int for type checkers; NumPy scalars are not float subclasses
# (np.float32, np.int64), so they are named.
Real: TypeAlias = Union[float, np.floating[Any], np.integer[Any]]
Bool: TypeAlias = Union[bool, np.bool_]
Int: TypeAlias = Union[int, np.integer[Any]]
