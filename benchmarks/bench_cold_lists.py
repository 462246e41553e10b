"""AdamW on 1000 tensors of 1000 float32 elements against one tensor of 1M,
with the caches cold (another step's traffic ran in between) and warm, and
torch's fused AdamW on the same list (issue 18, item 4).

Cold: before every timed step, 128 MiB of scratch (4x a 32 MiB L3) is read
and written, so the step finds none of its arrays in any cache. Warm: each
sample follows an untimed step on the same arrays. The rows of one table are
sampled interleaved (lrfast.bench.timeit), medians.

Run: python benchmarks/bench_cold_lists.py [--threads 1,2] [--budget 2]
       [--optimizer adamw] [--no-torch]
(a script, not a pytest-benchmark suite: pytest collects it and finds no tests).
"""

from __future__ import annotations

import argparse

import numpy as np

import lrfast
from lrfast.bench import Problem, timeit, torch_available
from lrfast.workloads import many_small_shapes

SCRATCH_BYTES = 128 << 20


def measure(optimizer: str, threads: int, budget: float, with_torch: bool) -> None:
    lrfast.set_num_threads(threads)
    scratch = np.ones(SCRATCH_BYTES // 4, np.float32)

    def evict():  # reads and writes every line of the scratch (no streaming stores)
        np.add(scratch, 1.0, out=scratch)

    layouts = {"1000x1000": many_small_shapes(), "1x1M": [(1_000_000,)]}
    problems = {name: Problem(optimizer, shapes, "float32") for name, shapes in layouts.items()}
    fns = {f"lrfast {name}": (lambda p=p: p.step("lrfast")) for name, p in problems.items()}
    if with_torch:
        import torch

        torch.set_num_threads(threads)
        opt, impl = problems["1000x1000"].torch_optimizer()
        fns[f"torch {impl} 1000x1000"] = opt.step
    for fn in fns.values():  # torch makes its states on its first step
        fn()

    times = {"cold": timeit(fns, budget, before=evict), "warm": timeit(fns, budget)}
    print(f"\n{optimizer}, float32, {threads} thread(s), ISA {lrfast.cpu_isa()}; medians in ms")
    print(f"{'':28s} {'cold':>8s} {'warm':>8s}")
    for name in fns:
        print(f"{name:28s} {times['cold'][name] * 1e3:8.3f} {times['warm'][name] * 1e3:8.3f}")
    for state, t in times.items():
        line = f"{state}: list / one tensor {t['lrfast 1000x1000'] / t['lrfast 1x1M']:.2f}"
        if with_torch:
            torch_name = next(k for k in fns if k.startswith("torch"))
            line += f", torch / list {t[torch_name] / t['lrfast 1000x1000']:.1f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--threads", default=f"{lrfast.get_num_threads()},1",
                        help="comma-separated thread counts (default: the default count, then 1)")
    parser.add_argument("--budget", type=float, default=2.0,
                        help="seconds of timed calls per table and state (default 2)")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    with_torch = not args.no_torch and torch_available()
    for threads in dict.fromkeys(int(t) for t in args.threads.split(",")):
        measure(args.optimizer, threads, args.budget, with_torch)


if __name__ == "__main__":
    main()
