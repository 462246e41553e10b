"""The Numba CUDA back end: the same step, norm and clip functions on device arrays.

``lrfast.adam_step(params, ...)`` runs here when the first params array has
``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, torch CUDA
tensors); nothing changes in the call. numba-cuda (``pip install lrfast[cuda]``)
is imported only then, by :func:`backend`.

How a call runs (details in the modules named):

- :mod:`.layout` reads every array's interface, checks the call with the same
  code and messages as the C++ path (``lrfast._core.check`` on host views
  that carry the device pointers and never read them), and turns the list into
  a small device table of pieces, cached per list layout. Reading the
  interfaces costs microseconds per array, so a call like the last one with
  the same argument names and list lengths skips all of that when each array
  still shows what was checked: a numba DeviceNDArray that is the same object
  as last time is trusted by identity (its interface cannot change; the cache
  holds weak references and notes deaths, so a reused ``id`` is not trusted);
  a torch tensor is compared by ``data_ptr()``, shape, dtype, contiguity and
  device type, which ``.data =``, ``set_``, ``resize_`` or an in-place view
  op change; any other array by its interface, read again. A replaced
  element, a moved tensor or a changed interface sends the call through the
  full read and check again, with the same errors;
- :mod:`.launch` runs one kernel per dtype over the whole table, so a list of
  a thousand tensors costs one launch per dtype, not a thousand;
- :mod:`.optimizers`, :mod:`.optimizers_lr_free`, :mod:`.optimizers_adaptive` and :mod:`.norms` hold the
  per-element arithmetic, the same as cpp/kernels/*.cpp in the same order;
  :mod:`.prodigy_reduction` Prodigy's reduction pass, whose float64 sums are
  bitwise the same for any launch configuration; :mod:`.adafactor_layout` and
  :mod:`.adafactor_kernels` Adafactor's step (its row and column sums, factors
  and scales on the device, deterministic too);
- :mod:`.ops` is the object :func:`backend` returns, shaped like ``lrfast._core``.

Synchronisation: a step only queues kernels on the stream of its first array
(the producer's stream from the interface; torch's current stream for torch
tensors) and returns. The host waits for the device in three places only: the
norm of ``global_norm``/``clip_grad_norm`` and the sums of
``prodigy_reduce``, which it returns as Python floats, and the first call on
a new layout, whose table upload is a blocking copy. Each kernel compiles on its first use (about a second per combination
of options and dtype). Arrays must live on the current CUDA device.
"""

from __future__ import annotations

from .._device import is_device_array

__all__ = ["backend", "is_device_array", "launch_count", "tables_built"]


def backend():
    """The CUDA back end: a module with the functions of ``lrfast._core``
    (``sgd``, ``adam``, ``rmsprop``, ``adagrad``, ``adadelta``, ``lion``,
    ``schedulefree_sgd``, ``schedulefree_adamw``, ``schedulefree_lerp``,
    ``prodigy``, ``prodigy_reduce``, ``nadam``, ``radam``, ``adamax``,
    ``adafactor``, ``global_norm``, ``clip_grad_norm``,
    ``clip_grad_value``). Imports numba-cuda on first use."""
    try:
        from . import ops
    except ImportError as e:
        raise ImportError("device arrays need numba-cuda: pip install 'lrfast[cuda]'") from e
    return ops


def launch_count() -> int:
    """Kernels launched by this process so far (tests diff it around a call)."""
    from . import launch

    return launch.counters["launches"]


def tables_built() -> int:
    """Piece tables built and uploaded so far; a step on a list already seen
    reuses its table, so this stays put across the steps of a training loop."""
    from . import launch

    return launch.counters["tables"]
