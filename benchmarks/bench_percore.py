"""Per-core cost of a step for each state dtype: 1 thread, data in cache.

    python benchmarks/bench_percore.py [N] [optimizer ...]

N elements (default 65536: in L2), optimizers adamw (default), sgd, adagrad,
lion. Prints ns per element per core, best of 15 rounds of 100 steps, for
float32, bfloat16, q8 and q4 states of float32 params: beside the wall time of
`lrfast bench` it tells compute-bound from memory-bound.
"""

import sys
import time

import numpy as np

import lrfast

STATE_DTYPES = ("float32", "bfloat16", "q8", "q4")


def best_seconds(fn, rounds=15, reps=100):
    """The best time of one ``fn()``, over ``rounds`` rounds of ``reps`` calls (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def best_ns_per_element(fn, n, rounds=15, reps=100):
    return best_seconds(fn, rounds, reps) * 1e9 / n


def step_of(optimizer, p, g, state_dtype):
    def zeros(signed=True):
        return lrfast.zeros_state(p, state_dtype, signed=signed)

    if optimizer == "adamw":
        m, v = zeros(), zeros(False)
        return lambda: lrfast.adamw_step(p, g, m, v, lr=1e-3, step=5)
    if optimizer == "sgd":
        b = zeros()
        return lambda: lrfast.sgd_step(p, g, b, lr=1e-3, momentum=0.9)
    if optimizer == "adagrad":
        s = zeros(False)
        return lambda: lrfast.adagrad_step(p, g, s, lr=1e-3, step=5)
    if optimizer == "lion":
        m = zeros()
        return lambda: lrfast.lion_step(p, g, m, lr=1e-4)
    raise SystemExit(f"unknown optimizer {optimizer!r}")


def main(argv):
    n = int(argv[0]) if argv else 65536
    lrfast.set_num_threads(1)
    rng = np.random.default_rng(0)
    for optimizer in argv[1:] or ["adamw"]:
        for state_dtype in STATE_DTYPES:
            p = rng.standard_normal(n).astype(np.float32)
            g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
            ns = best_ns_per_element(step_of(optimizer, p, g, state_dtype), n)
            print(f"{optimizer:8s} {state_dtype:9s} {lrfast.cpu_isa():8s} {ns:.3f} ns/element/core")


if __name__ == "__main__":
    main(sys.argv[1:])
