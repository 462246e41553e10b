"""The one table of optimizer cases used by every backend test and benchmark.

Each Case names a step function, the state arrays it takes (in positional
order), a grid of hyperparameter sets covering every option that changes the
maths, and tolerances per dtype. ``states_for(hp)`` gives the states a set of
options uses (the others are passed as None). ``torch_name`` is the matching
torch.optim class (and lrfast.optim's and lrfast.torch's); its constructor
takes the same keywords. The optimizers that take the learning rate off the
user's hands have none: their classes compute the per-step scalars that their
steps take (``ckp1``, Prodigy's ``d``), so their rows drive the kernel tests
and the benchmarks, and their classes are tested against the reference
packages. Test modules whose tests need a torch class take their (case, hp)
pairs from TORCH_CASES (conftest.py reads a module's CASE_TABLE).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lrfast import _hparams, precision


def _grid(**axes):
    """Every combination of the given axes, as a tuple of keyword dicts."""
    keys = list(axes)
    return tuple(dict(zip(keys, values)) for values in itertools.product(*axes.values()))


@dataclass(frozen=True)
class Case:
    name: str                        # "adam": lrfast.adam_step, lrfast.reference.adam_step
    states: tuple[str, ...]          # positional state arguments, in order
    grid: tuple[dict, ...]           # hyperparameter sets
    states_for: Callable[[dict], tuple[str, ...]]
    torch_name: str | None           # None: no class takes the step's keywords (see above)
    takes_step: bool = True          # step= is a keyword of the function
    function: str = ""               # the step function, when not f"{name}_step"
    bench: dict = field(default_factory=dict)  # typical hyperparameters, for benchmarks
    # (rtol, atol) for float32 and float64, against the reference over 10 steps
    tol: dict = field(default_factory=lambda: {np.float32: (2e-5, 2e-6), np.float64: (1e-12, 1e-13)})
    # (hp, step) -> the keywords a step takes that the classes keep across steps (NAdam's mu_product)
    step_keywords: Callable[[dict, int], dict] | None = None

    @property
    def step_fn(self) -> str:
        return self.function or f"{self.name}_step"

    def __str__(self) -> str:
        return self.name


def _sgd_states(hp):
    return ("momentum_buffers",) if hp.get("momentum", 0) else ()


def _adam_states(hp):
    return ("exp_avgs", "exp_avg_sqs") + (("max_exp_avg_sqs",) if hp.get("amsgrad") else ())


def _rmsprop_states(hp):
    return (("square_avgs",) + (("momentum_buffers",) if hp.get("momentum", 0) else ())
            + (("grad_avgs",) if hp.get("centered") else ()))


_ADAM_GRID = _grid(lr=[1e-2], betas=[(0.9, 0.999), (0.5, 0.9)], weight_decay=[0.0, 0.1],
                   amsgrad=[False, True], maximize=[False, True]) + (
    dict(lr=3e-3, eps=1e-3, grad_scale=0.5),)

# The optimizers that take the learning rate off the user's hands (the last
# rows). Their states start at zero here (a schedule-free z starts as a copy of
# the param in the classes; any start tests the kernels).
_SCHEDULEFREE_SGD_GRID = _grid(lr=[0.05], ckp1=[0.3, 0.7, 1.0], weight_decay=[0.0, 0.01]) + (
    dict(lr=0.05, ckp1=0.2, momentum=0.5, maximize=True, grad_scale=0.5),)
_SCHEDULEFREE_ADAMW_GRID = _grid(lr=[1e-2], ckp1=[0.3, 0.7], weight_decay=[0.0, 0.1]) + (
    dict(lr=2.5e-3, ckp1=1.0, betas=(0.5, 0.9), eps=1e-3, maximize=True, grad_scale=2.0),)
_PRODIGY = dict(d=0.5, d_new=0.7, dlr=0.01)
_PRODIGY_GRID = (
    _PRODIGY, dict(_PRODIGY, weight_decay=0.1), dict(_PRODIGY, weight_decay=0.1, decouple=False),
    dict(_PRODIGY, betas=(0.0, 0.99)),
    dict(d=1e-3, d_new=2e-3, dlr=1e-3, betas=(0.0, 0.99), eps=1e-6, weight_decay=0.1,
         decouple=False, maximize=True, grad_scale=0.5))

_NADAM_GRID = (dict(lr=1e-2, weight_decay=0.1),
               dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
               dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-3, momentum_decay=1e-2, grad_scale=0.5))
# RAdam's rectification switch turns on at step 6 for beta2 = 0.999, at step 7 for 0.9:
# ten steps take both branches
_RADAM_GRID = (dict(lr=1e-2, weight_decay=0.1),
               dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
               dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-3, grad_scale=0.5))
_ADAMAX_GRID = (dict(lr=1e-2, weight_decay=0.1, maximize=True),
                dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-3, grad_scale=0.5))


@functools.lru_cache(maxsize=256)
def _mu_product(beta1, momentum_decay, step):
    previous = 1.0 if step == 1 else _mu_product(beta1, momentum_decay, step - 1)
    return _hparams.nadam_mu_product(previous, step, beta1, momentum_decay)


def _nadam_keywords(hp, step):
    """mu_product after `step` updates, as the classes keep it."""
    return {"mu_product": _mu_product(hp.get("betas", (0.9,))[0],
                                      hp.get("momentum_decay", 4e-3), step)}


CASES = (
    Case("sgd", ("momentum_buffers",),
         _grid(lr=[0.05], momentum=[0.0, 0.9], dampening=[0.0], nesterov=[False],
               weight_decay=[0.0, 0.01], maximize=[False, True])
         + _grid(lr=[0.05], momentum=[0.9], dampening=[0.0], nesterov=[True],
                 weight_decay=[0.0, 0.01], maximize=[False])
         + (dict(lr=0.05, momentum=0.8, dampening=0.3, grad_scale=0.25),),
         _sgd_states, "SGD", bench=dict(lr=0.01, momentum=0.9)),
    Case("adam", ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"), _ADAM_GRID, _adam_states, "Adam",
         bench=dict(lr=1e-3)),
    Case("adamw", ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"), _ADAM_GRID, _adam_states,
         "AdamW", bench=dict(lr=1e-3)),
    Case("rmsprop", ("square_avgs", "momentum_buffers", "grad_avgs"),
         _grid(lr=[1e-2], alpha=[0.99, 0.9], momentum=[0.0, 0.9], centered=[False, True],
               weight_decay=[0.0, 0.1])
         + (dict(lr=1e-2, maximize=True, centered=True, momentum=0.5, grad_scale=2.0),),
         _rmsprop_states, "RMSprop", takes_step=False, bench=dict(lr=1e-2)),
    Case("adagrad", ("state_sums",),
         _grid(lr=[1e-2], lr_decay=[0.0, 0.1], weight_decay=[0.0, 0.1], maximize=[False, True])
         + (dict(lr=0.1, eps=1e-3, grad_scale=3.0),),
         lambda hp: ("state_sums",), "Adagrad", bench=dict(lr=1e-2)),
    Case("adadelta", ("square_avgs", "acc_deltas"),
         _grid(lr=[1.0, 0.5], rho=[0.9, 0.5], weight_decay=[0.0, 0.1], maximize=[False, True])
         + (dict(lr=1.0, eps=1e-4, grad_scale=0.5),),
         lambda hp: ("square_avgs", "acc_deltas"), "Adadelta", takes_step=False, bench=dict()),
    Case("lion", ("exp_avgs",),
         _grid(lr=[1e-3], betas=[(0.9, 0.99), (0.5, 0.9)], weight_decay=[0.0, 0.1])
         + (dict(lr=3e-4, maximize=True, grad_scale=0.5),),
         lambda hp: ("exp_avgs",), None, takes_step=False, bench=dict(lr=1e-4)),
    Case("schedulefree_sgd", ("zs",), _SCHEDULEFREE_SGD_GRID, lambda hp: ("zs",), None,
         bench=dict(lr=1.0, ckp1=0.1)),
    Case("schedulefree_adamw", ("zs", "exp_avg_sqs"), _SCHEDULEFREE_ADAMW_GRID,
         lambda hp: ("zs", "exp_avg_sqs"), None, bench=dict(lr=2.5e-3, ckp1=0.1)),
    # Prodigy's update pass; its reduction pass has tests of its own (tests/test_lr_free_kernels.py).
    Case("prodigy", ("exp_avgs", "exp_avg_sqs"), _PRODIGY_GRID,
         lambda hp: (("exp_avgs",) if hp.get("betas", (0.9,))[0] > 0 else ()) + ("exp_avg_sqs",),
         None, takes_step=False, function="prodigy_update",
         bench=dict(d=1e-3, d_new=1e-3, dlr=1e-3)),
    # the rest of torch.optim's adaptive family
    Case("nadam", ("exp_avgs", "exp_avg_sqs"), _NADAM_GRID, lambda hp: ("exp_avgs", "exp_avg_sqs"),
         "NAdam", bench=dict(lr=2e-3), step_keywords=_nadam_keywords),
    Case("radam", ("exp_avgs", "exp_avg_sqs"), _RADAM_GRID, lambda hp: ("exp_avgs", "exp_avg_sqs"),
         "RAdam", bench=dict(lr=1e-3)),
    Case("adamax", ("exp_avgs", "exp_infs"), _ADAMAX_GRID, lambda hp: ("exp_avgs", "exp_infs"),
         "Adamax", bench=dict(lr=2e-3)),
)

CASE_BY_NAME = {case.name: case for case in CASES}
TORCH_CASES = tuple(case for case in CASES if case.torch_name is not None)

# Sizes just below, at and above multiples of the SIMD widths (4, 8, 16 lanes),
# one above the threads' block size, and a large odd one.
SIZES = (0, 1, 7, 8, 15, 16, 17, 32769, 1000003)
DTYPES = (np.float32, np.float64)


def make_problem(case: Case, hp: dict, shapes, dtype, seed=0):
    """Random params and zeroed states for the given tensor shapes.

    Returns (params, states) where states maps each state name the options use
    to a list of arrays (same shapes as params).
    """
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    states = {name: [np.zeros(s, dtype) for s in shapes] for name in case.states_for(hp)}
    return params, states


def holding_kind(name: str, param_dtype, kind):
    """`kind` (a dtype, "q8" or "q4") for state `name` of a param of
    `param_dtype`; but the param's dtype for a schedule-free z that `kind`
    cannot hold (a step refuses it: tests/test_lr_free_kernels.py)."""
    kind_name = kind if isinstance(kind, str) else np.dtype(kind).name
    if name in precision.WEIGHT_STATES and not precision.holds_param(
            kind_name, np.dtype(param_dtype).name):
        return np.dtype(param_dtype)
    return kind


def gradients(shapes, dtype, step, seed=0):
    """Fresh non-zero gradients for one step (new arrays; the draws are cached)."""
    return [g.copy() for g in _gradients(tuple(map(tuple, shapes)), np.dtype(dtype), step, seed)]


@functools.lru_cache(maxsize=64)
def _gradients(shapes, dtype, step, seed):
    rng = np.random.default_rng((seed, step))
    return [(rng.standard_normal(s) + 0.1).astype(dtype) for s in shapes]


def call_step(fn, case: Case, hp: dict, params, grads, states, step: int):
    """Calls a step function (lrfast's, the reference's or the CUDA one) with the
    case's positional states, None for states the options leave unused."""
    positional = [states.get(name) for name in case.states]
    kwargs = dict(hp)
    if case.takes_step:
        kwargs["step"] = step
    if case.step_keywords is not None:
        kwargs.update(case.step_keywords(hp, step))
    fn(params, grads, *positional, **kwargs)


def assert_close(case: Case, dtype, got, want):
    """Compares (params, states) pairs from two implementations within the
    case's tolerance for `dtype`."""
    rtol, atol = case.tol[dtype]
    (p_got, s_got), (p_want, s_want) = got, want
    for i, (a, b) in enumerate(zip(p_got, p_want, strict=True)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"params[{i}]")
    assert s_got.keys() == s_want.keys()
    for name in s_got:
        for i, (a, b) in enumerate(zip(s_got[name], s_want[name], strict=True)):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name}[{i}]")


# Adafactor (tests/test_adafactor.py, the bench): a row of its own, outside
# CASES, whose tests make every state of its param's shape. Its states are a
# param's row and column factors (2 or more dims) or a full variance (0 or 1
# dims), None where unused; the torch class takes the step's keywords but step.
_ADAFACTOR_GRID = (
    dict(), dict(lr=0.05, weight_decay=0.1), dict(beta2_decay=-0.5, d=2.0, eps=(1e-3, 1e-3)),
    dict(maximize=True, grad_scale=0.5), dict(lr=0.2, eps=(1e-30, 0.1)))
ADAFACTOR = Case("adafactor", ("row_vars", "col_vars", "variances"), _ADAFACTOR_GRID,
                 lambda hp: ("row_vars", "col_vars", "variances"), "Adafactor",
                 bench=dict(lr=1e-2))


def adafactor_states(shapes, dtype):
    """Zeroed row_vars, col_vars and variances for params of `shapes`."""
    return {"row_vars": [np.zeros(s[:-1] + (1,), dtype) if len(s) >= 2 else None
                         for s in shapes],
            "col_vars": [np.zeros(s[:-2] + (1,) + s[-1:], dtype) if len(s) >= 2 else None
                         for s in shapes],
            "variances": [np.zeros(s, dtype) if len(s) < 2 else None for s in shapes]}
