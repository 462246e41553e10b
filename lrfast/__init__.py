"""lrfast: fused optimizer steps at memory speed, and learning-rate tools."""

import importlib.util as _importlib_util
import os as _os

try:
    from . import _core
except ImportError:
    # Python puts the current folder first on its path, so from a source
    # checkout's root this folder shadows the installed lrfast, and it has no
    # compiled _core. (A _core that is there but fails to load raises its own error.)
    if _importlib_util.find_spec(f"{__name__}._core") is not None:
        raise
    raise ImportError(
        f"lrfast's compiled core (_core) is missing from {_os.path.dirname(__file__)}: a source "
        "checkout without a build, which hides any installed lrfast when Python runs from its "
        "root; run Python from another folder, or build in place: pip install scikit-build-core "
        "pybind11 && pip install --no-build-isolation -e ."
    ) from None

from . import optim, reference, schedules
from ._core import cpu_isa, get_num_threads, set_num_threads
from .clip import clip_coefficient, clip_grad_norm, clip_grad_value, global_norm
from .finder import LRFinderResult, find_lr
from .precision import Q4State, Q8State, zeros_state
from .reference_lr_free import ScheduleFreeScalars, prodigy_d_update, prodigy_dlr
from .steps import adadelta_step, adagrad_step, adam_step, adamw_step, rmsprop_step, sgd_step
from .steps_adafactor import adafactor_step
from .steps_lr_free import (
    lion_step, prodigy_reduce, prodigy_update, schedulefree_adamw_step, schedulefree_sgd_step,
    schedulefree_to_eval, schedulefree_to_train,
)
from .steps_adaptive import adamax_step, nadam_step, radam_step

__version__ = "0.1.0"

__all__ = [
    "sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step", "adadelta_step",
    "lion_step", "schedulefree_sgd_step", "schedulefree_adamw_step", "schedulefree_to_eval",
    "schedulefree_to_train", "prodigy_reduce", "prodigy_update",
    "adafactor_step",
    "ScheduleFreeScalars", "prodigy_dlr", "prodigy_d_update",
    "nadam_step", "radam_step", "adamax_step",
    "global_norm", "clip_grad_norm", "clip_grad_value", "clip_coefficient",
    "cpu_isa", "set_num_threads", "get_num_threads", "find_lr", "LRFinderResult",
    "Q8State", "Q4State", "zeros_state",
]
