"""What ``lrfast bench`` measures, on the CPU and on the GPU: each optimizer with
typical hyperparameters, and the tensor layouts it runs over.

Both benchmark modules (:mod:`lrfast.bench` and :mod:`lrfast.cuda.bench`) read
these; this module imports neither.
"""

from __future__ import annotations

import importlib
from typing import Any

from .workloads import many_small_shapes, transformer_like_shapes

# name -> (keywords of its step function, the state arrays it uses, what it is
# compared with: a torch.optim class name, or the reference package's
# "module.Class" for the optimizers torch does not have)
CONFIGS: dict[str, tuple[dict[str, Any], tuple[str, ...], str]] = {
    "sgd": (dict(lr=0.01, momentum=0.9, step=2), ("momentum_buffers",), "SGD"),
    "adam": (dict(lr=1e-3, step=2), ("exp_avgs", "exp_avg_sqs"), "Adam"),
    "adamw": (dict(lr=1e-3, step=2), ("exp_avgs", "exp_avg_sqs"), "AdamW"),
    "rmsprop": (dict(lr=1e-2), ("square_avgs",), "RMSprop"),
    "adagrad": (dict(lr=1e-2, step=2), ("state_sums",), "Adagrad"),
    "adadelta": (dict(), ("square_avgs", "acc_deltas"), "Adadelta"),
    "lion": (dict(lr=1e-4), ("exp_avgs",), "lion_pytorch.Lion"),
    # the scalars of the 10th step at a constant rate (r = 0: ckp1 = 1/k)
    "schedulefree_sgd": (dict(lr=1.0, ckp1=0.1, step=10), ("zs",), "schedulefree.SGDScheduleFree"),
    "schedulefree_adamw": (dict(lr=0.0025, ckp1=0.1, step=10), ("zs", "exp_avg_sqs"),
                           "schedulefree.AdamWScheduleFree"),
    # a whole step: the reduction pass, the host update of d, the update pass
    "prodigy": (dict(lr=1.0), ("ss", "p0s", "exp_avgs", "exp_avg_sqs"), "prodigyopt.Prodigy"),
    # NAdam's mu_product after two steps (mu_1 * mu_2 at beta1 = 0.9); RAdam at a rectified step
    "nadam": (dict(lr=2e-3, step=2, mu_product=0.2026), ("exp_avgs", "exp_avg_sqs"), "NAdam"),
    "radam": (dict(lr=1e-3, step=10), ("exp_avgs", "exp_avg_sqs"), "RAdam"),
    "adamax": (dict(lr=2e-3, step=2), ("exp_avgs", "exp_infs"), "Adamax"),
    # a single-tensor layout runs as a matrix (factored_layout), torch's foreach beside it
    "adafactor": (dict(lr=1e-2, step=2), ("row_vars", "col_vars", "variances"), "Adafactor"),
}
# keywords of the step functions that the classes compute themselves
STEP_ONLY = ("step", "ckp1", "mu_product")
# Prodigy's first estimate of the step size (prodigyopt's d0); the benchmarks
# keep d there so that every timed step does the same work
PRODIGY_D = 1e-6


def rival(name: str, tensors: list, fused: set[str]) -> tuple[Any, str] | None:
    """``(optimizer, impl)`` that optimizer `name` is compared with, over
    `tensors` (torch tensors whose ``.grad`` is set): torch.optim's class,
    fused when its name is in `fused` and foreach otherwise; or the reference
    package's class (in train mode), impl its package name. None when that
    package is not installed."""
    hp, _, target = CONFIGS[name]
    kwargs = {k: v for k, v in hp.items() if k not in STEP_ONLY}
    if "." not in target:
        import torch

        impl = "fused" if target in fused else "foreach"
        return getattr(torch.optim, target)(tensors, **kwargs, **{impl: True}), impl
    module, cls = target.rsplit(".", 1)
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    opt = getattr(package, cls)(tensors, **kwargs)
    if hasattr(opt, "train"):  # schedule-free: step() refuses eval mode
        opt.train()
    return opt, module.replace("_", "-")


# Adafactor factors matrices: its single-tensor layouts are matrices this wide
FACTORED_WIDTH = 4000


def factored_layout(label: str, shapes: list) -> tuple[str, list]:
    """Adafactor's version of a layout: one tensor of n elements, n a multiple
    of FACTORED_WIDTH, as an (n / FACTORED_WIDTH) x FACTORED_WIDTH matrix
    (2e7: 5000x4000); other layouts as they are (a vector keeps a full variance)."""
    if len(shapes) == 1 and len(shapes[0]) == 1 and shapes[0][0] % FACTORED_WIDTH == 0:
        rows = shapes[0][0] // FACTORED_WIDTH
        return f"{rows}x{FACTORED_WIDTH}", [(rows, FACTORED_WIDTH)]
    return label, shapes


def adafactor_state_dtype(dtype: str) -> str:
    """The dtype of Adafactor's states for params of `dtype`, as its step
    takes them: the params', float32 for 16-bit ones."""
    return "float32" if dtype in ("bfloat16", "float16") else dtype


def layouts(sizes: list[int], lists: bool) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(label, shapes) per layout: one tensor of each size, then (with `lists`)
    1000 tensors of 1000 and the 146-tensor transformer-like list."""
    out: list[tuple[str, list[tuple[int, ...]]]] = [(f"1x{n}", [(n,)]) for n in sizes]
    if lists:
        out.append(("1000x1000", many_small_shapes()))
        out.append(("transformer-146", transformer_like_shapes()))
    return out
