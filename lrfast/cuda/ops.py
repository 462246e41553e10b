"""The CUDA back end, shaped like ``lrfast._core``: what ``lrfast.cuda.backend()``
returns and what lrfast's step and clip functions call for device arrays.

Every function checks all arrays first (:mod:`.layout`), so bad input raises
before any kernel runs and a list is updated all or nothing. Kernels run on
the stream of the first array (see :func:`.launch.stream_of`), one launch per
dtype in the call; nothing waits for the device except the norms, whose value
the host needs, and the first call on a new layout (its table upload).
"""

from __future__ import annotations

import math

from .._hparams import clip_coefficient
from . import adafactor_kernels, adafactor_layout, launch, layout, lowp_launch, norms, prodigy_reduction
from .lowp_layout import LowpGroup
from .optimizers import OPTIMIZERS as SIX
from .optimizers_adaptive import OPTIMIZERS as ADAPTIVE
from .optimizers_lr_free import OPTIMIZERS as LR_FREE

__all__ = ["sgd", "adam", "rmsprop", "adagrad", "adadelta", "lion", "schedulefree_sgd",
           "schedulefree_adamw", "schedulefree_lerp", "prodigy", "prodigy_reduce",
           "nadam", "radam", "adamax", "adafactor", "global_norm", "clip_grad_norm", "clip_grad_value"]

OPTIMIZERS = {**SIX, **LR_FREE, **ADAPTIVE}


def _apply(optimizer, hparams: dict, groups, stream) -> None:
    """Runs `optimizer`'s float32/float64 kernel on every group, the scalars cast to its dtype."""
    scalars = optimizer.scalars(hparams)
    for g in groups:
        launch.launch(optimizer.kernel(hparams, g.dtype), g.n_pieces, stream, g.mem, g.table,
                      tuple(g.dtype.type(s) for s in scalars))


def _apply_in_place(operation: str, groups, stream, *scalars: float) -> None:
    """Scales or clamps the gradients of every group, any float dtype."""
    for g in groups:
        kernel, typed = norms.in_place(operation, g.dtype, scalars)
        launch.launch(kernel, g.n_pieces, stream, g.mem, g.table, typed)


def _step(name: str, public: str = ""):
    """The back-end function of kernel `name`; `public` names the step
    function(s) that call it (default ``lrfast.<name>_step``)."""
    optimizer = OPTIMIZERS[name]

    def step(arrays: tuple, names: tuple, hparams: dict) -> None:
        groups, stream = layout.prepare(arrays, names, grads_writeable=False)
        if groups and type(groups[0]) is LowpGroup:  # 16-bit arrays or q8 states
            lowp_launch.run(optimizer, hparams, groups, stream)
        else:
            _apply(optimizer, hparams, groups, stream)

    step.__name__ = step.__qualname__ = name
    step.__doc__ = (f"One fused {name} step over (params, grads, states...) on the device; "
                    f"see {public or f'lrfast.{name}_step'}.")
    return step


sgd = _step("sgd")
adam = _step("adam")
rmsprop = _step("rmsprop")
adagrad = _step("adagrad")
adadelta = _step("adadelta")
lion = _step("lion")
schedulefree_sgd = _step("schedulefree_sgd")
schedulefree_adamw = _step("schedulefree_adamw")
schedulefree_lerp = _step("schedulefree_lerp",
                          "lrfast.schedulefree_to_eval and lrfast.schedulefree_to_train")
prodigy = _step("prodigy", "lrfast.prodigy_update")
nadam = _step("nadam")
radam = _step("radam")
adamax = _step("adamax")


def check(arrays: tuple, names: tuple, slice_p: int) -> None:
    """The checks of a step's call (``slice_p`` >= 1: Prodigy's reduction), without a launch."""
    layout.prepare(arrays, names, grads_writeable=False, slice_p=slice_p or None)


def prodigy_reduce(arrays: tuple, names: tuple, hparams: dict) -> tuple[float, float]:
    """Prodigy's reduction pass over (params, grads, ss, p0s) on the device:
    updates s and returns (dot, s_abs); see lrfast.prodigy_reduce."""
    groups, stream = layout.prepare(arrays, names, grads_writeable=False,
                                    slice_p=int(hparams["slice_p"]))
    return prodigy_reduction.run(hparams, groups, stream)


def adafactor(arrays: tuple, names: tuple, hparams: dict, check_only: bool = False) -> None:
    """Adafactor's step over (params, grads, row_vars, col_vars, variances) on
    the device, checked as the C++ path checks it (with `check_only`, checked
    only); see lrfast.adafactor_step."""
    groups, stream = adafactor_layout.prepare(arrays, names, hparams)
    if not check_only:
        adafactor_kernels.run(hparams, groups, stream)


def global_norm(grads, norm_type: float) -> float:
    """The norm of all gradients as one vector; see lrfast.global_norm."""
    groups, stream = layout.prepare((grads,), ("grads",), grads_writeable=False)
    return norms.total_norm(groups, stream, norm_type)


def clip_grad_norm(grads, max_norm: float, norm_type: float, error_if_nonfinite: bool) -> float:
    """Scales the gradients in place when their norm exceeds max_norm and
    returns the norm; see lrfast.clip_grad_norm."""
    groups, stream = layout.prepare((grads,), ("grads",), grads_writeable=True)
    total = norms.total_norm(groups, stream, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type:f} of the gradients is "
                           "non-finite, so it cannot be clipped; pass error_if_nonfinite=False "
                           "to scale them anyway")
    coef = clip_coefficient(total, max_norm)
    if coef != 1.0:  # x * 1 == x: skip the write
        _apply_in_place("scale", groups, stream, coef)
    return total


def clip_grad_value(grads, clip_value: float) -> None:
    """Clamps every gradient element to [-clip_value, clip_value] in place."""
    groups, stream = layout.prepare((grads,), ("grads",), grads_writeable=True)
    _apply_in_place("clamp", groups, stream, -clip_value, clip_value)
