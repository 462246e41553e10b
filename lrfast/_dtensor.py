"""DTensors (``torch.distributed.tensor``), the parameters of FSDP2
(``torch.distributed.fsdp.fully_shard``), for :mod:`lrfast.torch` and the
norm and clip functions.

A DTensor is stepped through its local shard (``to_local()``), which the
kernels read and write in place like any tensor. What spans a whole tensor,
a norm or Prodigy's sums, is the local shards' value combined over the ranks
holding the other shards: all-reduced over each mesh dimension the tensor is
sharded along (``Shard`` placements). A ``Replicate`` dimension holds copies,
counted once, as ``torch.nn.utils.clip_grad_norm_`` counts them.

Importing ``torch.distributed.tensor`` takes over a second, so nothing here
imports it: a DTensor exists only once something else has.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Sequence


def _dtensor_type():
    """DTensor, or () (which no object is an instance of) before its module is imported."""
    module = sys.modules.get("torch.distributed.tensor")
    return module.DTensor if module is not None else ()


def is_dtensor(t) -> bool:
    return isinstance(t, _dtensor_type())


def any_dtensor(tensors: Any) -> bool:  # a sequence of the step functions' tensors
    cls = _dtensor_type()
    return cls != () and any(isinstance(t, cls) for t in tensors)


def local(t):
    """The local shard of a DTensor, the tensor it wraps, read directly:
    ``to_local()`` returns it too, without autograd, but as a new view for a
    Parameter (~10 µs a parameter at every step). Any other tensor as it is."""
    return t._local_tensor if is_dtensor(t) else t


def sharding(t):
    """Where the rest of tensor ``t`` lives: ``(mesh, the mesh dimensions it
    is sharded along)`` for a DTensor with a ``Shard`` placement, None for a
    whole tensor (a plain one, or a DTensor replicated on every rank)."""
    if not is_dtensor(t):
        return None
    dims = tuple(i for i, placement in enumerate(t.placements) if placement.is_shard())
    return (t.device_mesh, dims) if dims else None


def shard_coordinate(where) -> tuple[int, ...]:
    """This rank's position along the sharded mesh dimensions of ``where``
    (a :func:`sharding`): which shard it holds; () for a whole tensor."""
    if where is None:
        return ()
    mesh, dims = where
    coordinate = mesh.get_coordinate()
    return tuple(coordinate[d] for d in dims)


def mismatch(param, t) -> str | None:
    """Why ``t`` (a gradient or a state of ``param``) is not laid out over the
    ranks as ``param`` is, or None when it is (then their local shards match)."""
    if is_dtensor(param) != is_dtensor(t):
        return ("is a DTensor but its parameter is not" if is_dtensor(t) else
                "is not a DTensor but its parameter is one (sharded, e.g. by FSDP2's "
                "fully_shard): it needs the parameter's mesh and placements")
    if is_dtensor(t) and (t.device_mesh != param.device_mesh
                          or tuple(t.placements) != tuple(param.placements)):
        return (f"is a DTensor of placements {tuple(t.placements)} on {t.device_mesh}; its "
                f"parameter has {tuple(param.placements)} on {param.device_mesh}")
    return None


def check_param(p, where: str) -> None:
    """A parameter's placements must say where each element is: no ``Partial``."""
    if is_dtensor(p) and any(placement.is_partial() for placement in p.placements):
        raise ValueError(f"{where} is a DTensor with a Partial placement {tuple(p.placements)} "
                         "(its values are pending a reduction); lrfast steps sharded or "
                         "replicated parameters")


def all_reduce(values: Sequence[float], where, op: str = "sum") -> list[float]:
    """``values`` (floats, this rank's parts) summed (``op="sum"``) or maxed
    over the ranks holding the shards of ``where`` (a :func:`sharding`), in
    float64; unchanged for a whole tensor (None)."""
    if where is None:
        return list(values)
    import torch
    import torch.distributed as dist

    mesh, dims = where
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    buffer = torch.tensor(list(values), dtype=torch.float64, device=mesh.device_type)
    for dim in dims:
        dist.all_reduce(buffer, op=reduce_op, group=mesh.get_group(dim))
    return buffer.tolist()


def global_norm(grads: Sequence, p: float, local_norm: Callable[[list, float], float]) -> float:
    """The ``p``-norm of ``grads`` (DTensors, maybe with plain tensors) taken
    as one vector across the ranks: ``local_norm(tensors, p)`` over the local
    shards of the grads laid out alike, combined over the ranks holding the
    other shards (a sum of ``norm ** p``; the max for ``p = inf``), then over
    the layouts. Every rank returns the same norm."""
    parts: dict = {}
    for g in grads:
        if is_dtensor(g) and any(placement.is_partial() for placement in g.placements):
            raise ValueError(f"a gradient is a DTensor with a Partial placement "
                             f"{tuple(g.placements)} (pending a reduction); redistribute it "
                             "before taking its norm")
        parts.setdefault(sharding(g), []).append(local(g))
    total = 0.0
    for where, shards in parts.items():
        norm = local_norm(shards, p)
        if p == math.inf:
            # MAX all-reduces need not pass a NaN on: it travels as a flag
            largest, nan = all_reduce([norm, math.isnan(norm)], where, "max")
            total = math.nan if nan or math.isnan(total) else max(total, largest)
        else:
            total += all_reduce([norm ** p], where)[0]
    return total if p == math.inf else total ** (1.0 / p)
