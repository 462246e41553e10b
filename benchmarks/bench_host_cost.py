"""The host cost of lrfast.torch: a step of each optimizer through the torch
adapter against the same step function called directly and against torch's
own step (fused where torch has one, else foreach), on two layouts:

* 1000 params of 1000 float32 elements (the adapter's per-parameter cost:
  (adapter - step function) / 1000);
* a 64-256-256-10 MLP (6 params), float32 and bfloat16: the small-model case,
  where a step is nearly all host work.

From its second step on, a class whose step is one call per param group
(all but schedule-free and Prodigy) takes lrfast.torch's fast path.

    python benchmarks/bench_host_cost.py [--threads N] [--optimizers adamw,sgd,...]

One thread by default for lrfast and torch, best of 9 rounds; the step
function and torch are timed on copies of the same params and grads.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_percore import best_seconds  # this folder is first on the path of a script

import lrfast
import lrfast.torch as lt

# name -> (lrfast.torch class, kwargs, torch.optim class or None, state names of the step function)
OPTIMIZERS = {
    "sgd": (lt.SGD, dict(lr=1e-2, momentum=0.9), torch.optim.SGD, ("momentum_buffers",)),
    "adam": (lt.Adam, dict(lr=1e-3), torch.optim.Adam, ("exp_avgs", "exp_avg_sqs")),
    "adamw": (lt.AdamW, dict(lr=1e-3), torch.optim.AdamW, ("exp_avgs", "exp_avg_sqs")),
    "rmsprop": (lt.RMSprop, dict(lr=1e-3), torch.optim.RMSprop, ("square_avgs",)),
    "adagrad": (lt.Adagrad, dict(lr=1e-2), torch.optim.Adagrad, ("state_sums",)),
    "adadelta": (lt.Adadelta, dict(lr=1.0), torch.optim.Adadelta, ("square_avgs", "acc_deltas")),
    "lion": (lt.Lion, dict(lr=1e-4), None, ("exp_avgs",)),
    # classes that run more than one call a step, or keep scalars across steps: the slow path
    "schedulefree_adamw": (lt.ScheduleFreeAdamW, dict(lr=2.5e-3), None, ()),
    "prodigy": (lt.Prodigy, dict(lr=1.0, growth_rate=1.02), None, ()),  # the same grads at every step
}
STEP_FUNCTIONS = {"sgd": "sgd_step", "adam": "adam_step", "adamw": "adamw_step",
                  "rmsprop": "rmsprop_step", "adagrad": "adagrad_step",
                  "adadelta": "adadelta_step", "lion": "lion_step"}
FUSED = ("sgd", "adam", "adamw", "adagrad")  # torch 2.13's fused CPU steps


def best_ms(fn) -> float:
    return best_seconds(fn, rounds=9, reps=20) * 1e3


def model_params(layout: str, dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    if layout == "1000x1000":
        shapes = [(1000,)] * 1000
    else:  # the MLP 64-256-256-10: weights and biases
        shapes = [(256, 64), (256,), (256, 256), (256,), (10, 256), (10,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
    return params


def clones(params):
    out = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for q, p in zip(out, params):
        q.grad = p.grad.clone()
    return out


def step_function(name: str, params, kw):
    """The step function over NumPy views of the params (float32 only)."""
    _, _, _, states = OPTIMIZERS[name]
    ps = [p.detach().numpy() for p in params]
    gs = [p.grad.numpy() for p in params]
    st = [[np.zeros_like(p) for p in ps] for _ in states]
    fn = getattr(lrfast, STEP_FUNCTIONS[name])
    hp = dict(kw)
    if name not in ("rmsprop", "adadelta", "lion"):
        hp["step"] = 3
    return lambda: fn(ps, gs, *st, **hp)


def row(name: str, layout: str, dtype) -> dict:
    cls, kw, torch_cls, _ = OPTIMIZERS[name]
    params = model_params(layout, dtype)
    ours = cls(params, **kw)
    if hasattr(ours, "train"):  # schedule-free steps in train mode
        ours.train()
    out = {"optimizer": name, "layout": layout, "dtype": str(dtype).removeprefix("torch."),
           "lrfast.torch ms": best_ms(ours.step)}
    if dtype == torch.float32 and name in STEP_FUNCTIONS:
        out["step function ms"] = best_ms(step_function(name, clones(params), kw))
    if torch_cls is not None:
        how = {"fused": True} if name in FUSED else {"foreach": True}
        theirs = torch_cls(clones(params), **kw, **how)
        out[f"torch ({next(iter(how))}) ms"] = best_ms(theirs.step)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lrfast.set_num_threads(args.threads)
    print(f"lrfast {lrfast.__version__} ({lrfast.cpu_isa()}), torch {torch.__version__}, "
          f"{args.threads} thread(s); ms per step, best of 9 x 20")
    for layout, dtypes in (("1000x1000", (torch.float32,)),
                           ("mlp", (torch.float32, torch.bfloat16))):
        for dtype in dtypes:
            for name in args.optimizers.split(","):
                r = row(name, layout, dtype)
                cells = [f"{k} {v:.3f}" for k, v in r.items() if k.endswith("ms")]
                extra = ""
                if "step function ms" in r and layout == "1000x1000":
                    host = (r["lrfast.torch ms"] - r["step function ms"]) * 1e3 / 1000
                    extra = f", host {host:.2f} us/param"
                torch_ms = [v for k, v in r.items() if k.startswith("torch")]
                if torch_ms:
                    extra += f", {torch_ms[0] / r['lrfast.torch ms']:.2f}x torch"
                print(f"{layout:9s} {r['dtype']:8s} {name:8s} " + ", ".join(cells) + extra)


if __name__ == "__main__":
    main()
