"""Data-parallel training with the optimizer state sharded (ZeRO) and each
shard updated by lrfast's fused kernels.

DistributedDataParallel averages the gradients over the processes;
``ZeroRedundancyOptimizer(optimizer_class=lrfast.torch.Adam)`` gives each
process the Adam state of its own share of the parameters only, which it
updates with lrfast, then broadcasts the updated parameters to the others.
Nothing else changes in a torch training script.

On one machine, two processes talking over the loopback interface::

    python examples/distributed_zero.py [--steps 20] [--world-size 2]

trains the model that way, then once more in a single process on the full
batches, and prints the largest difference between the two sets of
parameters (float64: ~1e-16; it exits with status 1 above 1e-10).

Across machines the same script runs under torchrun, which starts the
processes and sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; the script
then only trains (one process per machine here; use --nproc-per-node for
more)::

    # on the first machine (10.0.0.1), then on the second with --node-rank=1
    torchrun --nnodes=2 --nproc-per-node=1 --node-rank=0 \\
        --master-addr=10.0.0.1 --master-port=29500 examples/distributed_zero.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import lrfast.torch

BATCH = 64
LR = 1e-2
TOLERANCE = 1e-10  # float64 parameters; the all-reduce sums in another order


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 1),
    ).double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(BATCH, 16, generator=g, dtype=torch.float64)
    return x, torch.sin(x.sum(1, keepdim=True))


def train_step(model, optimizer, x, y) -> float:
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_distributed(rank: int, world_size: int, steps: int) -> torch.nn.Module:
    """This process's part: its slice of every batch, its shard of the state."""
    model = DistributedDataParallel(make_model())
    optimizer = ZeroRedundancyOptimizer(model.parameters(),
                                        optimizer_class=lrfast.torch.Adam, lr=LR)
    local = optimizer.optim  # this rank's lrfast.torch.Adam
    owned = sum(p.numel() for group in local.param_groups for p in group["params"])
    total = sum(p.numel() for p in model.parameters())
    print(f"rank {rank}: {type(local).__module__}.{type(local).__name__} updates {owned} "
          f"of the {total} parameters", flush=True)
    shard = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    for step in range(steps):
        x, y = batch(step)
        loss = train_step(model, optimizer, x[shard], y[shard])
        if rank == 0 and (step + 1) % 10 == 0:
            print(f"step {step + 1}: loss on rank 0's slice {loss:.4f}", flush=True)
    return model.module


def train_single(steps: int) -> torch.nn.Module:
    model = make_model()
    optimizer = lrfast.torch.Adam(model.parameters(), lr=LR)
    for step in range(steps):
        train_step(model, optimizer, *batch(step))
    return model


def _worker(rank: int, world_size: int, steps: int, out: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = train_distributed(rank, world_size, steps)
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args()

    if "RANK" in os.environ:  # started by torchrun: one process of the job
        dist.init_process_group("gloo")
        try:
            train_distributed(dist.get_rank(), dist.get_world_size(), args.steps)
        finally:
            dist.destroy_process_group()
        return 0

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on the loopback
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model.pt")
        mp.spawn(_worker, args=(args.world_size, args.steps, out), nprocs=args.world_size)
        distributed = torch.load(out)
    single = train_single(args.steps).state_dict()
    difference = max((distributed[k] - single[k]).abs().max().item() for k in single)
    print(f"max |distributed - single process| over the parameters: {difference:.3g}")
    return 0 if difference <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
