"""What ``lrfast bench`` measures, on the CPU and on the GPU: each optimizer with
typical hyperparameters, and the tensor layouts it runs over.

Both benchmark modules (:mod:`lrfast.bench` and :mod:`lrfast.cuda.bench`) read
these; this module imports neither.
"""

from __future__ import annotations

from typing import Any

from .workloads import many_small_shapes, transformer_like_shapes

# name -> (hyperparameters, state arrays it uses, torch.optim class name)
CONFIGS: dict[str, tuple[dict[str, Any], tuple[str, ...], str]] = {
    "sgd": (dict(lr=0.01, momentum=0.9, step=2), ("momentum_buffers",), "SGD"),
    "adam": (dict(lr=1e-3, step=2), ("exp_avgs", "exp_avg_sqs"), "Adam"),
    "adamw": (dict(lr=1e-3, step=2), ("exp_avgs", "exp_avg_sqs"), "AdamW"),
    "rmsprop": (dict(lr=1e-2), ("square_avgs",), "RMSprop"),
    "adagrad": (dict(lr=1e-2, step=2), ("state_sums",), "Adagrad"),
    "adadelta": (dict(), ("square_avgs", "acc_deltas"), "Adadelta"),
}


def layouts(sizes: list[int], lists: bool) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(label, shapes) per layout: one tensor of each size, then (with `lists`)
    1000 tensors of 1000 and the 146-tensor transformer-like list."""
    out: list[tuple[str, list[tuple[int, ...]]]] = [(f"1x{n}", [(n,)]) for n in sizes]
    if lists:
        out.append(("1000x1000", many_small_shapes()))
        out.append(("transformer-146", transformer_like_shapes()))
    return out
