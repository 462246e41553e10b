"""lrfast: fused optimizer steps at memory speed, and learning-rate tools."""

from . import optim, reference, schedules
from ._core import cpu_isa, get_num_threads, set_num_threads
from .clip import clip_coefficient, clip_grad_norm, clip_grad_value, global_norm
from .finder import LRFinderResult, find_lr
from .steps import adadelta_step, adagrad_step, adam_step, adamw_step, rmsprop_step, sgd_step

__version__ = "0.1.0"

__all__ = [
    "sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step", "adadelta_step",
    "global_norm", "clip_grad_norm", "clip_grad_value", "clip_coefficient",
    "cpu_isa", "set_num_threads", "get_num_threads", "find_lr", "LRFinderResult",
]
