"""Two processes (gloo, loopback) training a tiny float64 MLP under FSDP2
(``fully_shard``) with each lrfast.torch optimizer beside its reference;
run by tests/test_fsdp2.py as ``python fsdp2_worker.py OUT_JSON``.

The MLP's rows split unevenly over the two ranks (5 and 1 rows: 3 + 2 and
1 + 0, an empty shard), the shapes where a flattened shard is not a shard of
the flattened param. Each rank trains on its half of every batch; FSDP2
averages the gradients, so a single process on whole batches takes the same
steps. The reference runs under FSDP2 too (torch.optim, lion-pytorch,
schedulefree), except Prodigy's: prodigyopt flattens its params, which
DTensor refuses for uneven shards, so prodigyopt runs in one process on the
unsharded model (as lrfast does where a package is missing).

Each rank writes what it measured (largest differences, errors' messages) to
OUT_JSON.rank{r}; the test reads them.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import math
import os
import socket
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import lrfast
import lrfast.torch

BATCH = 8
STEPS = 3


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 1)).double()


def sharded_model() -> torch.nn.Module:
    model = make_model()
    fully_shard(model)
    return model


def batch(step: int, rank: int | None = None):
    """Step ``step``'s batch: the whole of it (rank None), or a rank's half."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 6, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    if rank is None:
        return x, y
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    return x[half], y[half]


def backward(model, step: int, rank: int | None) -> None:
    x, y = batch(step, rank)
    torch.nn.functional.mse_loss(model(x), y).backward()


def train(model, opt, steps, rank, clip=None, first=0) -> None:
    for step in range(first, first + steps):
        opt.zero_grad()
        backward(model, step, rank)
        if clip is not None:
            clip(list(model.parameters()))
        opt.step()


def full(t) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def params_difference(a, b) -> float:
    """The largest difference between two models' (whole) parameters."""
    return max((full(p) - full(q)).abs().max().item()
               for p, q in zip(a.parameters(), b.parameters()))


def grads_difference(a, b) -> float:
    return max((full(p.grad) - full(q.grad)).abs().max().item()
               for p, q in zip(a.parameters(), b.parameters()))


def torch_clip(params):
    torch.nn.utils.clip_grad_norm_(params, 0.05)


# name -> (lrfast.torch's arguments, the reference: a torch.optim class or the
# package's (module, class), a clip before each step)
CASES = {
    "SGD": (dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), torch.optim.SGD,
            None),
    "Adam": (dict(lr=0.01, amsgrad=True, weight_decay=0.01), torch.optim.Adam, None),
    # torch's clipping of the DTensor grads, then lrfast's step
    "AdamW": (dict(lr=0.01, weight_decay=0.1), torch.optim.AdamW, torch_clip),
    "RMSprop": (dict(lr=0.01, momentum=0.5, centered=True), torch.optim.RMSprop, None),
    "Adagrad": (dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
                torch.optim.Adagrad, None),
    "Adadelta": (dict(lr=1.0, weight_decay=0.01), torch.optim.Adadelta, None),
    "Lion": (dict(lr=1e-3, weight_decay=0.1), ("lion_pytorch", "Lion"), None),
    "ScheduleFreeSGD": (dict(lr=0.1, warmup_steps=2), ("schedulefree", "SGDScheduleFree"),
                        None),
    "ScheduleFreeAdamW": (dict(lr=0.01, warmup_steps=2, weight_decay=0.01),
                          ("schedulefree", "AdamWScheduleFree"), None),
    "Prodigy": (dict(lr=1.0, weight_decay=0.01), ("prodigyopt", "Prodigy"), None),
}
UNSHARDED = {"Prodigy"}  # references that cannot run under FSDP2 (see above)


def reference(name: str):
    """(the reference class, whether it runs on the unsharded model); a
    missing package's is lrfast's own class in one process."""
    ref = CASES[name][1]
    if not isinstance(ref, tuple):
        return ref, False
    module, cls = ref
    if importlib.util.find_spec(module) is None:
        return getattr(lrfast.torch, name), True
    return getattr(importlib.import_module(module), cls), name in UNSHARDED


def train_mode(opt) -> None:
    if hasattr(opt, "train"):  # schedule-free: params hold y while training
        opt.train()


def eval_mode(opt) -> None:
    if hasattr(opt, "eval"):
        opt.eval()


def compare(name, rank) -> dict:
    """lrfast under FSDP2 against the reference, then a checkpoint (DCP)
    saved from it and loaded into a fresh optimizer on a copy of the model."""
    kwargs, _, clip = CASES[name]
    cls = getattr(lrfast.torch, name)
    ref_cls, unsharded = reference(name)
    model, ref_model = sharded_model(), make_model() if unsharded else sharded_model()
    opt, ref = cls(model.parameters(), **kwargs), ref_cls(ref_model.parameters(), **kwargs)
    for o in (opt, ref):
        train_mode(o)
    train(model, opt, STEPS, rank, clip)
    train(ref_model, ref, STEPS, None if unsharded else rank, clip)
    out = {"train": params_difference(model, ref_model)}
    if name == "Prodigy":
        d, ref_d = opt.param_groups[0]["d"], ref.param_groups[0]["d"]
        out["d"] = abs(d - ref_d) / ref_d
        out["d_moved"] = d / opt.param_groups[0]["d0"]
    for o in (opt, ref):
        eval_mode(o)
    out["eval"] = params_difference(model, ref_model)
    for o in (opt, ref):
        train_mode(o)
    out["resumed"] = resumed(model, opt, cls, kwargs, rank)
    return out


def copy_of(model) -> torch.nn.Module:
    twin = sharded_model()
    with torch.no_grad():
        for p, q in zip(twin.parameters(), model.parameters()):
            p.to_local().copy_(q.to_local())
    return twin


def resumed(model, opt, cls, kwargs, rank) -> float:
    """Saves the optimizer through DCP, loads it into a fresh one on a copy
    of the model, steps both: the largest difference between the params."""
    twin = copy_of(model)
    fresh = cls(twin.parameters(), **kwargs)
    train_mode(fresh)  # get_optimizer_state_dict steps a fresh optimizer at lr 0
    path = broadcast_path(rank)
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path)
    loaded = {"optim": get_optimizer_state_dict(twin, fresh)}
    dcp.load(loaded, checkpoint_id=path)
    set_optimizer_state_dict(twin, fresh, loaded["optim"])
    train(model, opt, 2, rank, first=STEPS)
    train(twin, fresh, 2, rank, first=STEPS)
    return params_difference(model, twin)


def broadcast_path(rank) -> str:
    """A fresh folder, the same on both ranks."""
    path = [tempfile.mkdtemp(dir=os.environ["FSDP2_TMP"]) if rank == 0 else None]
    dist.broadcast_object_list(path, src=0)
    return path[0]


def other_state_dicts(rank) -> dict:
    """get/set_optimizer_state_dict with full_state_dict=True (whole tensors
    on every rank) for AdamW; torch.optim.AdamW's state dict into
    lrfast.torch.AdamW; the whole states of Prodigy, whose s and p0 keep
    their param's shape under FSDP2."""
    out = {}
    options = StateDictOptions(full_state_dict=True)
    for cls in (lrfast.torch.AdamW, torch.optim.AdamW):
        model = sharded_model()
        opt = cls(model.parameters(), lr=0.01)
        train(model, opt, 2, rank)
        # a copy, as a file would give: the state dict holds the live "step" tensors
        whole = copy.deepcopy(get_optimizer_state_dict(model, opt, options=options))
        twin = copy_of(model)
        fresh = lrfast.torch.AdamW(twin.parameters(), lr=0.01)
        set_optimizer_state_dict(twin, fresh, whole, options=options)
        train(model, opt, 2, rank, first=2)
        train(twin, fresh, 2, rank, first=2)
        out[f"{cls.__module__}.AdamW"] = params_difference(model, twin)
    model = sharded_model()
    opt = lrfast.torch.Prodigy(model.parameters())
    train(model, opt, 1, rank)
    whole = get_optimizer_state_dict(model, opt, options=options)["state"]
    out["prodigy_shapes"] = {name: {key: list(t.shape) for key, t in state.items()
                                    if key != "step"} for name, state in whole.items()}
    return out


def norms(rank) -> dict:
    """lrfast.global_norm and clip_grad_norm of the DTensor grads against the
    unsharded model's norm and torch.nn.utils.clip_grad_norm_."""
    model, twin, whole = sharded_model(), sharded_model(), make_model()
    for m, r in ((model, rank), (twin, rank), (whole, None)):
        backward(m, 0, r)
    grads = [p.grad for p in model.parameters()]
    whole_grads = [p.grad for p in whole.parameters()]
    out = {}
    for p in (2.0, 1.0, math.inf, 3.0):
        want = lrfast.global_norm(whole_grads, p)
        out[f"norm_{p}"] = abs(lrfast.global_norm(grads, p) - want) / want
    norm = lrfast.clip_grad_norm(grads, 0.01)
    torch_norm = torch.nn.utils.clip_grad_norm_(list(twin.parameters()), 0.01)
    out["clip_norm"] = abs(norm - full(torch_norm).item()) / norm
    out["clipped"] = grads_difference(model, twin)
    out["clipped_norm"] = lrfast.global_norm(grads)
    lrfast.clip_grad_value(grads, 1e-3)
    torch.nn.utils.clip_grad_value_(list(twin.parameters()), 1e-3)
    out["clamped"] = grads_difference(model, twin)
    # a NaN on one rank's shard only: every rank's norm is NaN, and refused alike
    local = grads[0].to_local()
    if rank == 1:
        local[0, 0] = math.nan
    out["nan_inf_norm"] = str(lrfast.global_norm(grads, math.inf))
    out["nan_2_norm"] = str(lrfast.global_norm(grads))
    out["nan_refused"] = message_of(lambda: lrfast.clip_grad_norm(grads, 1.0,
                                                                  error_if_nonfinite=True))
    prodigy = lrfast.torch.Prodigy(model.parameters())
    out["prodigy_nan"] = message_of(prodigy.step)
    return out


def message_of(call) -> str:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test reads the type and message
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def refusals(rank) -> dict:
    out = {}
    for state_dtype in ("q8", "q4"):
        model = sharded_model()
        opt = lrfast.torch.AdamW(model.parameters(), state_dtype=state_dtype)
        backward(model, 0, rank)
        before = [p.to_local().clone() for p in model.parameters()]
        out[state_dtype] = message_of(opt.step)
        out[f"{state_dtype}_unchanged"] = all(torch.equal(p.to_local(), b)
                                              for p, b in zip(model.parameters(), before))
    model = sharded_model()
    opt = lrfast.torch.Prodigy(model.parameters(), slice_p=2)
    backward(model, 0, rank)
    out["slice_p"] = message_of(opt.step)
    return out


def stochastic_rounding(rank) -> dict:
    """bfloat16 rows that are equal and get equal gradients, two rows a
    rank: with stochastic rounding each shard draws its own bits, so rows 0
    and 2 (at the same place in their shards) round apart, as rows 0 and 1 do."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 4, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(layer.weight[:1].expand(4, 256))
    fully_shard(layer)
    opt = lrfast.torch.SGD(layer.parameters(), lr=1e-3, stochastic_rounding=True, seed=1)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    layer(x).float().sum().backward()
    opt.step()
    w = layer.weight.full_tensor()
    return {"rows_0_1_differ": not torch.equal(w[0], w[1]),
            "rows_0_2_differ": not torch.equal(w[0], w[2])}


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on two cores
    lrfast.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for name in CASES:
            results[name] = compare(name, rank)
        results["state_dicts"] = other_state_dicts(rank)
        results["norms"] = norms(rank)
        results["refusals"] = refusals(rank)
        results["stochastic_rounding"] = stochastic_rounding(rank)
    except Exception:  # noqa: BLE001 - reported, then the process fails
        results["error"] = traceback.format_exc()
        raise
    finally:
        with open(f"{out}.rank{rank}", "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on the loopback
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FSDP2_TMP"] = tmp
        mp.spawn(worker, args=(port, sys.argv[1]), nprocs=2)


if __name__ == "__main__":
    main()
