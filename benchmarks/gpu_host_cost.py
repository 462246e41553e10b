"""Where the host time of a step on 1000 CUDA tensors of 1000 goes: wall time
per step with the device synchronised only at the end (so the host is what
is timed), for lrfast on numba device arrays, lrfast.torch and torch's fused
AdamW, then a profile of lrfast.torch's step. Needs a GPU and torch with CUDA.

Run: python benchmarks/gpu_host_cost.py
"""

import cProfile
import pstats
import time

import torch
from numba import cuda

import lrfast.torch
from lrfast.cuda import bench
from lrfast.workloads import many_small_shapes

SHAPES = many_small_shapes()
STEPS = 200


def per_step(step, sync) -> float:
    step()
    sync()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    sync()
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    numba_step, _ = bench.lrfast_step("adamw", SHAPES, "float32")
    adapter = lrfast.torch.AdamW(bench.torch_params(torch, SHAPES, "float32"), lr=1e-3)
    fused = torch.optim.AdamW(bench.torch_params(torch, SHAPES, "float32"), lr=1e-3, fused=True)
    for name, step, sync in (("lrfast, numba arrays", numba_step, cuda.synchronize),
                             ("lrfast.torch.AdamW", adapter.step, torch.cuda.synchronize),
                             ("torch AdamW fused", fused.step, torch.cuda.synchronize)):
        print(f"{name:24s} {per_step(step, sync) * 1e6:9.1f} us per step")
    profile = cProfile.Profile()
    profile.runcall(lambda: [adapter.step() for _ in range(50)])
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
