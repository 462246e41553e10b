"""Quality of AdamW's low-precision variants across learning rates: the digits MLP in torch.

A torch MLP 64-256-256-10 (the shape of ``tests/test_optim_lowp.py``'s quality
test) on scikit-learn's digits, trained by AdamW (weight decay 1e-2, betas
(0.9, 0.999), eps 1e-8, batch 64) with

* float32 params: ``torch.optim.AdamW`` (float32 states, the reference),
  ``lrfast.torch.AdamW(state_dtype=...)`` for the other state dtypes;
* bfloat16 params (the model in ``torch.bfloat16``): ``lrfast.torch.AdamW(
  state_dtype=..., stochastic_rounding=True)`` (``bf16+SR``; ``bf16+RN`` rounds to
  nearest), float32 states meaning ``state_dtype="float32"``;
* beside them ``bitsandbytes.optim.AdamW8bit`` on the CPU (its defaults: 8-bit
  states for tensors of 4096 elements or more, blocks of 256; on bfloat16
  params it rounds the update to nearest).

Per seed every run has the same data split (``load_digits(seed=0)``), the same
initial weights (``MLP(seed=seed)`` of ``lrfast.examples.digits_mlp``) and the
same minibatch order. Reported: validation loss (mean over seeds and range) and
accuracy after ``--epochs`` epochs; ``--json`` writes every run's.

    python benchmarks/quality_digits.py --lrs 1e-3,3e-3,9e-3 --seeds 5 --epochs 20

``--states`` lists the state columns (``float32``, ``q8``, ``bnb8``; ``q4`` is
one more entry of ``STATE_DTYPES`` once lrfast has it). ``--diagnose`` instead
trains float32 params with a NumPy copy of q8 AdamW whose quantizer can be
swapped (see :data:`QUANTIZERS`), to find what makes q8 differ from
bitsandbytes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import lrfast
import lrfast.torch
from lrfast import precision, run_record
from lrfast.examples.digits_mlp import MLP, load_digits

SIZES = (64, 256, 256, 10)
BATCH = 64
WEIGHT_DECAY = 1e-2
# bf16+SR: stochastic rounding of the param writes; bf16+RN: round to nearest
PARAM_DTYPES = {"float32": torch.float32, "bf16+SR": torch.bfloat16, "bf16+RN": torch.bfloat16}
# state column -> lrfast.torch's state_dtype (q4: pending lrfast support)
STATE_DTYPES = {"float32": "float32", "q8": "q8", "q4": "q4"}


def make_model(seed: int, dtype: torch.dtype) -> torch.nn.Sequential:
    """The MLP with MLP(seed=seed)'s He-initialised weights (W is (fan_in, fan_out)
    there, (fan_out, fan_in) in torch.nn.Linear) and zero biases."""
    arrays = MLP(SIZES, seed=seed).params
    layers: list[torch.nn.Module] = []
    for k, (w, b) in enumerate(zip(arrays[0::2], arrays[1::2])):
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        layers += [linear] if k == len(arrays) // 2 - 1 else [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).to(dtype)


def make_optimizer(state: str, param_dtype: str, params, lr: float, seed: int):
    if state == "bnb8":
        import bitsandbytes
        return bitsandbytes.optim.AdamW8bit(params, lr=lr, weight_decay=WEIGHT_DECAY)
    if state.startswith("proto-"):
        return ProtoQ8AdamW(params, lr=lr, quantizer=state.removeprefix("proto-"))
    if state == "float32" and param_dtype == "float32":
        return torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    return lrfast.torch.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY,
                              state_dtype=STATE_DTYPES[state],
                              stochastic_rounding=param_dtype == "bf16+SR", seed=seed)


def train(lr: float, seed: int, epochs: int, param_dtype: str, state: str):
    """(validation loss, validation accuracy, optimizer) after ``epochs`` epochs."""
    data = load_digits(seed=0)
    dtype = PARAM_DTYPES[param_dtype]
    x_train, y_train = torch.from_numpy(data.x_train).to(dtype), torch.from_numpy(data.y_train)
    model = make_model(seed, dtype)
    opt = make_optimizer(state, param_dtype, list(model.parameters()), lr, seed)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(y_train)))
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            opt.zero_grad(set_to_none=True)
            logits = model(x_train[batch]).float()
            torch.nn.functional.cross_entropy(logits, y_train[batch]).backward()
            opt.step()
    with torch.no_grad():  # evaluated in float32 (bfloat16 weights widen exactly)
        logits = model.float()(torch.from_numpy(data.x_val))
        y_val = torch.from_numpy(data.y_val)
        loss = torch.nn.functional.cross_entropy(logits, y_val).item()
        acc = (logits.argmax(1) == y_val).float().mean().item()
    return loss, acc, opt


# -- the diagnosis: a NumPy copy of lrfast's q8 AdamW with a swappable quantizer

def _nearest_max_abs(x, signed):
    """lrfast before issue 18 item 2: nearest code, scale max|x| (bitsandbytes' scale)."""
    x = np.asarray(x, np.float32).reshape(-1)
    nb = -(-x.size // precision.BLOCK)
    blocks = np.zeros(nb * precision.BLOCK, np.float32)
    blocks[:x.size] = x
    blocks = blocks.reshape(nb, precision.BLOCK)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(absmax[:, None] > 0, blocks / absmax[:, None], 0).astype(np.float32)
    midpoints = precision._MIDPOINTS[bool(signed)]
    codes = np.searchsorted(midpoints, n.reshape(-1), side="left")[:x.size]
    return codes.astype(np.uint8), absmax


def _bitsandbytes_cpu(x, signed):
    """bitsandbytes' CPU quantize_blockwise (the kernel AdamW8bit runs on the CPU)."""
    import bitsandbytes  # noqa: F401  (registers the torch ops)
    code = torch.from_numpy(precision.create_dynamic_map(signed))
    codes, absmax = torch.ops.bitsandbytes.quantize_blockwise(
        torch.from_numpy(np.ascontiguousarray(x, np.float32).reshape(-1)), code, precision.BLOCK)
    return codes.numpy(), absmax.numpy()


def _lrfast_floor(x, signed):
    """The proposed fix: lrfast's quantizer, except that a positive value of the
    unsigned map never takes the code of 0 (it takes code 1, the map's smallest
    positive value): a second moment that is not 0 never comes back as 0."""
    codes, absmax = precision.quantize_blockwise(x, signed)
    if not signed:
        flat = np.asarray(x, np.float32).reshape(-1)
        codes = np.where((codes == 0) & (flat > 0), np.uint8(1), codes).astype(np.uint8)
    return codes, absmax


QUANTIZERS = {
    "lrfast": precision.quantize_blockwise,  # as the kernels (should match state "q8")
    "item2-reverted": _nearest_max_abs,
    "bnb-cpu": _bitsandbytes_cpu,  # (should match state "bnb8")
    "lrfast-floor": _lrfast_floor,
}


class ProtoQ8AdamW(torch.optim.Optimizer):
    """lrfast.reference's AdamW for float32 params with q8 states (tensors of
    4096 elements or more) stored through ``QUANTIZERS[quantizer]``. Counts the
    elements whose second moment came back as 0 while their first moment did not
    (``zero_v_updates``: their update is m / eps)."""

    def __init__(self, params, lr, quantizer):
        super().__init__(params, dict(lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=WEIGHT_DECAY))
        self.quantize = QUANTIZERS[quantizer]
        self.zero_v_updates = 0
        self.max_update = 0.0

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["q8"] = p.numel() >= precision.Q8_MIN_SIZE
                    zeros = np.zeros(p.numel(), np.float32)
                    state["m"], state["v"] = (self.quantize(zeros, signed) if state["q8"] else
                                              zeros.copy() for signed in (True, False))
                state["step"] += 1
                t = state["step"]
                P = p.detach().numpy().reshape(-1)  # a view: updated in place
                g = p.grad.numpy().reshape(-1)
                M, V = state["m"], state["v"]
                if state["q8"]:
                    M = precision.dequantize_blockwise(*M, signed=True)
                    V = precision.dequantize_blockwise(*V, signed=False)
                P *= np.float32(1 - lr * group["weight_decay"])
                M = M + np.float32(1 - b1) * (g - M)
                V = V * np.float32(b2) + np.float32(1 - b2) * g * g
                denom = np.sqrt(V) / np.float32(np.sqrt(1 - b2**t)) + np.float32(eps)
                update = np.float32(lr / (1 - b1**t)) * (M / denom)
                P -= update
                self.zero_v_updates += int(np.count_nonzero((V == 0) & (M != 0)))
                self.max_update = max(self.max_update, float(np.abs(update).max()))
                if state["q8"]:
                    M, V = self.quantize(M, True), self.quantize(V, False)
                state["m"], state["v"] = M, V


# -- the table

def summarize(results: list[tuple[float, float]]) -> str:
    losses = np.array([r[0] for r in results])
    accs = np.array([r[1] for r in results])
    return (f"{losses.mean():.3f} ({losses.min():.3f}–{losses.max():.3f}), "
            f"{100 * accs.mean():.1f}%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", default="1e-3,3e-3,9e-3")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--params", default="float32,bf16+SR",
                        help=f"rows, of: {', '.join(PARAM_DTYPES)}")
    parser.add_argument("--states", default="float32,q8,q4,bnb8",
                        help="columns: float32, q8, q4, bnb8 (bitsandbytes' AdamW8bit); "
                             "a state lrfast lacks is shown as 'not yet'")
    parser.add_argument("--diagnose", action="store_true",
                        help="float32 params, q8 AdamW in NumPy with each of QUANTIZERS")
    parser.add_argument("--json", metavar="PATH",
                        help="also write every run's validation loss and accuracy as JSON")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    lrfast.set_num_threads(1)
    info = run_record.machine()
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = range(args.seeds)
    if args.diagnose:
        print("| lr | quantizer | val loss (range), accuracy | m≠0 with v=0 (per run) | max update |")
        print("|---|---|---|---|---|")
        for lr in lrs:
            for name in QUANTIZERS:
                runs = [train(lr, s, args.epochs, "float32", "proto-" + name) for s in seeds]
                zeros = np.mean([r[2].zero_v_updates for r in runs])
                biggest = max(r[2].max_update for r in runs)
                print(f"| {lr:g} | {name} | {summarize(runs)} | {zeros:.0f} | {biggest:.3g} |",
                      flush=True)
        return
    param_dtypes = args.params.split(",")
    states = args.states.split(",")
    print("| lr | params | " + " | ".join(states) + " |")
    print("|---|---|" + "---|" * len(states))
    start = time.perf_counter()
    results = []
    for lr in lrs:
        for param_dtype in param_dtypes:
            cells = []
            for state in states:
                if state != "bnb8" and STATE_DTYPES[state] not in lrfast.torch._lowp.STATE_DTYPES:
                    cells.append("not yet")
                    continue
                runs = [train(lr, s, args.epochs, param_dtype, state)[:2] for s in seeds]
                cells.append(summarize(runs))
                results.append(dict(lr=lr, params=param_dtype, states=state,
                                    val_losses=[r[0] for r in runs],
                                    val_accuracies=[r[1] for r in runs]))
            print(f"| {lr:g} | {param_dtype} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.json:
        run_record.write(args.json, info, args, runs=results)


if __name__ == "__main__":
    main()
