"""GPU throughput of the fused steps, for ``lrfast bench --device cuda``.

Each row times one step (wall clock, host work included, the device
synchronised after each batch of steps) and reports its bytes per second
beside the device's measured copy bandwidth: a device-to-device copy moving
the same number of bytes as the step (half read, half written), with the same
clock. ``vs_torch`` is torch.optim's step time over lrfast's, on copies of the
same arrays in the same run: fused where torch has a fused CUDA step, foreach
otherwise. Traffic per element: the gradient is read, the parameter and each
state read and written (Adam float32: 28 bytes); Adafactor's of its three
passes on the device (:func:`adafactor_step`), its single tensors as matrices
(:func:`lrfast.bench_configs.factored_layout`).
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
from numba import cuda

import lrfast

from .._adafactor import STATES, FactorSlot
from ..bench_configs import (CONFIGS, PRODIGY_D, adafactor_state_dtype, factored_layout,
                             layouts, rival)
from ..reference_adafactor import factored

TORCH_FUSED_CUDA = {"SGD", "Adam", "AdamW"}  # the rest run with foreach=True


def run(sizes=(50_000_000,), optimizers=tuple(CONFIGS), dtype="float32",
        lists: bool = True) -> list[dict]:
    """One row per optimizer and layout: a single tensor of each of `sizes`,
    then (with `lists`) 1000 tensors of 1000 and the transformer-like list.

    Row keys: optimizer, dtype, layout, tensors, elements, time_s, gelem_s,
    gbytes_s, bandwidth_gbs (the copy's), pct_of_bandwidth, vs_reference
    (always None here), vs_torch and torch_impl (None without torch CUDA).
    """
    dtype = np.dtype(dtype)
    torch = _torch_cuda()
    rows = []
    for label, shapes in layouts(sizes, lists):
        for name in optimizers:
            # Adafactor's single tensors as matrices: it factors them
            named, tensors = (factored_layout(label, shapes) if name == "adafactor"
                              else (label, shapes))
            rows.append(_measure(name, named, tensors, dtype, torch))
    return rows


def _measure(name, label, shapes, dtype, torch) -> dict:
    step, traffic = lrfast_step(name, shapes, dtype)
    t = timeit(step, cuda.synchronize)
    bandwidth = traffic / timeit(copy_of(traffic // 2), cuda.synchronize)
    elements = sum(math.prod(s) for s in shapes)
    row = dict(optimizer=name, dtype=dtype.name, layout=label, tensors=len(shapes),
               elements=elements, time_s=t, gelem_s=elements / t / 1e9,
               gbytes_s=traffic / t / 1e9, bandwidth_gbs=bandwidth / 1e9,
               pct_of_bandwidth=100 * traffic / t / bandwidth,
               vs_reference=None, vs_torch=None, torch_impl=None)
    if torch is not None:
        torch_step, row["torch_impl"] = torch_step_of(torch, name, shapes, dtype)
        if torch_step is not None:
            row["vs_torch"] = timeit(torch_step, torch.cuda.synchronize) / t
    return row


def _host_arrays(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32).astype(dtype) for s in shapes]


def lrfast_step(name: str, shapes, dtype):
    """``(step, traffic)``: a zero-argument lrfast step of optimizer `name` on
    fresh device arrays, and the bytes it moves."""
    hp, state_names, _ = CONFIGS[name]
    if name == "prodigy":
        return prodigy_step(shapes, dtype, lr=hp["lr"])
    if name == "adafactor":
        return adafactor_step(shapes, dtype, hp)
    return step_of(f"{name}_step", hp, state_names, shapes, dtype)


def step_of(function: str, hp: dict, state_names, shapes, dtype):
    """``(step, traffic)`` of ``lrfast.<function>`` with keywords `hp` and
    zeroed states (positional, `state_names`, None for a name that is None)."""
    params = [cuda.to_device(a) for a in _host_arrays(shapes, dtype, 0)]
    grads = [cuda.to_device(a) for a in _host_arrays(shapes, dtype, 1)]
    states = [None if name is None else [cuda.to_device(np.zeros(s, dtype)) for s in shapes]
              for name in state_names]
    fn = getattr(lrfast, function)
    used = sum(name is not None for name in state_names)
    traffic = sum(math.prod(s) for s in shapes) * np.dtype(dtype).itemsize * (3 + 2 * used)
    return (lambda: fn(params, grads, *states, **hp)), traffic


def adafactor_step(shapes, dtype, hp: dict):
    """``(step, traffic)`` of ``lrfast.adafactor_step``: the row and column
    factors of each param of 2 or more dims, the full variance of the others
    (zeros, float32 for 16-bit params). Traffic: a matrix's param and grad
    read, its grad read again, then both read and the param written (6
    arrays' bytes per element); a vector's grad, param and variance read and
    the variance written, then the three read and the param written."""
    params = [cuda.to_device(a) for a in _host_arrays(shapes, dtype, 0)]
    grads = [cuda.to_device(a) for a in _host_arrays(shapes, dtype, 1)]
    state_dtype = adafactor_state_dtype(dtype)
    states = [[cuda.to_device(np.zeros(FactorSlot(part=name).shape(s, hp), state_dtype))
               if factored(s) == (name != "variances") else None for s in shapes]
              for name in STATES]
    item, state_item = np.dtype(dtype).itemsize, np.dtype(state_dtype).itemsize
    traffic = sum(math.prod(s) * (6 * item if factored(s) else 5 * item + 3 * state_item)
                  for s in shapes)
    return (lambda: lrfast.adafactor_step(params, grads, *states, **hp)), traffic


def prodigy_step(shapes, dtype, slice_p: int = 1, lr: float = 1.0):
    """``(step, traffic)`` of one whole Prodigy step: the reduction pass (it
    waits for its sums), the host update of ``d``, the update pass."""
    params = [cuda.to_device(a) for a in _host_arrays(shapes, dtype, 0)]
    grads = [cuda.to_device(a) for a in _host_arrays(shapes, dtype, 1)]
    ms, vs = ([cuda.to_device(np.zeros(s, dtype)) for s in shapes] for _ in range(2))
    sliced = [a.ravel()[::slice_p].copy() for a in _host_arrays(shapes, dtype, 2)]
    ss = [cuda.to_device(np.zeros_like(a)) for a in sliced]
    p0s = [cuda.to_device(a) for a in sliced]
    d = PRODIGY_D
    dlr = d * lr

    def step():
        dot, s_abs = lrfast.prodigy_reduce(params, grads, ss, p0s, d=d, d0=d, dlr=dlr,
                                           slice_p=slice_p)
        new = lrfast.prodigy_d_update(dot, s_abs, d=d, d0=d, d_max=d, d_numerator=0.0, dlr=dlr)
        lrfast.prodigy_update(params, grads, ms, vs, d=d, d_new=d if new is None else new.d,
                              dlr=dlr)

    # reduction: grad and param (their slices), p0 read, s read and written;
    # update: grad read, param and both moments read and written
    n = sum(math.prod(s) for s in shapes)
    m = sum(a.size for a in sliced)
    return step, np.dtype(dtype).itemsize * (5 * m + 7 * n)


def lrfast_norm(shapes, dtype):
    """A zero-argument ``lrfast.global_norm`` over fresh device gradients."""
    grads = [cuda.to_device(a) for a in _host_arrays(shapes, dtype, 1)]
    return lambda: lrfast.global_norm(grads)


def torch_params(torch, shapes, dtype) -> list:
    """CUDA parameters with gradients, the values of lrfast_step's arrays."""
    tensors = [torch.from_numpy(a).cuda().requires_grad_() for a in _host_arrays(shapes, dtype, 0)]
    for t, g in zip(tensors, _host_arrays(shapes, dtype, 1)):
        t.grad = torch.from_numpy(g).cuda()
    return tensors


def torch_step_of(torch, name: str, shapes, dtype):
    """``(step, impl)``: torch.optim's fastest CUDA step on the same values (or
    the reference package's), or ``(None, None)`` without that package."""
    made = rival(name, torch_params(torch, shapes, dtype), TORCH_FUSED_CUDA)
    return (None, None) if made is None else (made[0].step, made[1])


def copy_of(nbytes: int):
    """A zero-argument device-to-device copy of `nbytes` bytes."""
    src = cuda.device_array(max(nbytes, 1), np.uint8)
    dst = cuda.device_array_like(src)
    return lambda: dst.copy_to_device(src)


def timeit(fn, sync, budget: float = 0.3) -> float:
    """Median seconds per call of `fn` over batches lasting about a
    millisecond or more, each ended by `sync` (after one warm-up call, which
    compiles the kernels and builds the tables)."""
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(1e-3 / once))
    times = []
    for _ in range(max(3, min(50, int(budget / (once * calls))))):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None
