"""How far lrfast's float32 steps land from torch.optim's, in the last bits.

For each of torch.optim's six CPU optimizers, with the hyperparameters of
``lrfast bench`` (lrfast/bench_configs.py), five float32 tensors shaped like a
small transformer's (an embedding, a QKV and an MLP weight, a bias, a LayerNorm
weight; weights N(0, 0.02), the bias 0, the LayerNorm weight 1) take STEPS steps
with fresh gradients (N(0, 1e-3) times a per-tensor scale): through
``lrfast.torch``, through torch.optim's single-tensor step (``foreach=False``)
and through its fused step where torch has one on the CPU (SGD, Adam, AdamW,
Adagrad). The params are then compared element by element: the fraction that
differ, the fraction that differ by more than one unit in the last place (ulp),
and the largest difference in ulps, of the element (large where a param passed
near zero, whose ulps are tiny) and of its tensor's largest |param| (the error
against the tensor's scale).

    python benchmarks/numerics.py --json benchmarks/results/numerics.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import lrfast.torch
from lrfast import run_record
from lrfast.bench import TORCH_FUSED
from lrfast.bench_configs import CONFIGS, STEP_ONLY

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta")
# (shape, initial params, gradient scale)
TENSORS = [((5000, 256), "normal", 1.0), ((768, 256), "normal", 3.0), ((768,), "zeros", 10.0),
           ((1024, 256), "normal", 1.0), ((256,), "ones", 0.3)]
STEPS = 5


def start(seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """The initial params, and the gradients of every step."""
    rng = np.random.default_rng(seed)
    init = {"normal": lambda s: 0.02 * rng.standard_normal(s), "zeros": np.zeros, "ones": np.ones}
    params = [init[kind](shape).astype(np.float32) for shape, kind, _ in TENSORS]
    grads = [[(1e-3 * scale * rng.standard_normal(shape)).astype(np.float32)
              for shape, _, scale in TENSORS] for _ in range(STEPS)]
    return params, grads


def train(cls, params, grads, **options) -> list[np.ndarray]:
    """The params after `cls`'s steps over `grads`."""
    tensors = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    opt = cls(tensors, **options)
    for step_grads in grads:
        for t, g in zip(tensors, step_grads):
            t.grad = torch.from_numpy(g)
        opt.step()
    return [t.detach().numpy() for t in tensors]


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in float32 ulps: the distance between their bit patterns, taken
    in an order where every float32 follows the one below it."""
    def ordered(x):
        bits = x.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return np.abs(ordered(a) - ordered(b))


def compare(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    distance = np.concatenate([ulps(x, y).ravel() for x, y in zip(a, b)])
    of_scale = max(float(np.max(np.abs(x.astype(np.float64) - y))
                         / np.spacing(max(np.abs(x).max(), np.abs(y).max())))
                   for x, y in zip(a, b))
    return dict(fraction_differing=float(np.mean(distance > 0)),
                fraction_over_1_ulp=float(np.mean(distance > 1)), max_ulp=int(distance.max()),
                max_ulp_of_tensor_max=of_scale)


def measure(name: str) -> dict:
    hp, _, torch_name = CONFIGS[name]
    options = {k: v for k, v in hp.items() if k not in STEP_ONLY}
    params, grads = start()
    theirs = getattr(torch.optim, torch_name)
    ours = train(getattr(lrfast.torch, torch_name), params, grads, **options)
    single = train(theirs, params, grads, foreach=False, **options)
    row = dict(optimizer=torch_name, hyperparameters=options, elements=sum(p.size for p in ours),
               steps=STEPS, lrfast_vs_single=compare(ours, single))
    if torch_name in TORCH_FUSED:
        fused = train(theirs, params, grads, fused=True, **options)
        row.update(lrfast_vs_fused=compare(ours, fused), fused_vs_single=compare(fused, single))
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    info = {**run_record.machine(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    rows = [measure(name) for name in OPTIMIZERS]
    for row in rows:
        cells = [f"{key} {row[key]['fraction_differing']:7.2%} "
                 f"(max {row[key]['max_ulp_of_tensor_max']:g} ulp of the tensor's largest)"
                 for key in ("lrfast_vs_single", "lrfast_vs_fused", "fused_vs_single") if key in row]
        print(f"{row['optimizer']:<9}", "  ".join(cells))
    if args.json:
        run_record.write(args.json, info, args, rows=rows)


if __name__ == "__main__":
    main()
