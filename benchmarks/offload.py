"""lrfast.torch.CPUOffload on a GPT-2-style model (synthetic tokens): the time
of one training step (forward, backward, optimizer step) and of the optimizer
step alone, median over the timed steps.

On a GPU (the model in ``--dtype``, bfloat16 by default there):
(a) torch.optim.AdamW(fused=True) on the GPU, (b) torchao's
CPUOffloadOptimizer where torchao is installed, (c) CPUOffload with float32
masters and states, float32 masters and q8 states, and bfloat16 masters
(stochastic rounding) and q8 states (a bfloat16 model only). On the CPU the
model runs on the CPU (float32) and the script compares CPUOffload with the
plain lrfast.torch.AdamW: the pipeline's overhead, with the params as their
own masters and with copies (bfloat16 params, float32 masters).

    python benchmarks/offload.py --layers 83 --dim 64          # ~1000 tensors, CPU
    python benchmarks/offload.py --layers 18 --dim 2048 --json out.json   # ~1.0 B, GPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import lrfast
import lrfast.torch
from bench_percore import best_seconds


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """GPT-2's layout: token and position embeddings, pre-norm blocks, a head."""

    def __init__(self, vocab: int, seq: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def build(args, device, dtype):
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(args.vocab, args.seq, args.dim, args.layers, args.heads).to(dtype)
    tokens = torch.randint(args.vocab, (args.batch, args.seq + 1), device=device)
    return model, tokens


def loss(model, tokens):
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


def time_steps(model, tokens, opt, steps: int, sync, micro_batches: int = 1) -> dict:
    """Median seconds of a training step (``micro_batches`` forward and
    backward passes, then the optimizer's step) and of its optimizer step,
    after one untimed step, which makes the states. CPUOffload copies the
    gradients in the last backward only (``accumulate``)."""
    totals, optimizer = [], []
    for i in range(steps + 1):
        sync()
        start = time.perf_counter()
        for micro in range(micro_batches):
            last = micro == micro_batches - 1
            with (opt.accumulate(not last) if isinstance(opt, lrfast.torch.CPUOffload)
                  else contextlib.nullcontext()):
                (loss(model, tokens) / micro_batches).backward()
        sync()
        mid = time.perf_counter()
        opt.step()
        opt.zero_grad()
        sync()
        end = time.perf_counter()
        if i:
            totals.append(end - start)
            optimizer.append(end - mid)
    return {"step_s": statistics.median(totals), "optimizer_s": statistics.median(optimizer)}


def offload_variants(dtype):
    variants = {"lrfast CPUOffload float32": dict(),
                "lrfast CPUOffload float32 + q8": dict(state_dtype="q8")}
    if dtype == torch.bfloat16:
        variants["lrfast CPUOffload bf16 + q8"] = dict(master_dtype="bfloat16", state_dtype="q8")
    return variants


def run_gpu(args) -> dict:
    device, dtype = torch.device("cuda"), getattr(torch, args.dtype or "bfloat16")
    results = {}
    makers = {"torch fused AdamW (GPU)": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True)}
    try:
        from torchao.optim import CPUOffloadOptimizer

        makers["torchao CPUOffloadOptimizer"] = lambda ps: CPUOffloadOptimizer(
            ps, torch.optim.AdamW, lr=1e-4)
    except ImportError:
        results["torchao CPUOffloadOptimizer"] = "torchao is not installed"
    for name, kw in offload_variants(dtype).items():
        makers[name] = lambda ps, kw=kw: lrfast.torch.CPUOffload(ps, lr=1e-4, **kw)
    for name, make in makers.items():
        model, tokens = build(args, device, dtype)
        opt = make(list(model.parameters()))
        torch.cuda.reset_peak_memory_stats()
        results[name] = time_steps(model, tokens, opt, args.steps, torch.cuda.synchronize,
                                   args.micro_batches)
        results[name]["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if isinstance(opt, lrfast.torch.CPUOffload):
            results[name]["host_bytes"] = opt.host_bytes()
        del model, opt
        gc.collect()  # the host memory of the previous optimizer, pinned blocks included
        torch.cuda.empty_cache()
    base = results["torch fused AdamW (GPU)"]["step_s"]
    for name, value in results.items():
        if isinstance(value, dict):
            value["vs_gpu_adamw"] = value["step_s"] / base
    return results


def run_cpu(args) -> dict:
    """The optimizer step alone, best of ``--rounds`` rounds of 5 steps with
    the same gradients (every step of the copying pipeline copies them all
    again); the overhead is the median over the rounds of the ratio of the
    two steps timed back to back, so that a load that comes and goes weighs
    on both alike; then one training step (median of
    ``--steps``). The plain optimizer and CPUOffload on a float32 model (its
    params are their own masters) and on a bfloat16 one (float32 masters:
    gradients copied and cast, params cast back)."""
    makers = {"plain lrfast.torch.AdamW": lambda ps: lrfast.torch.AdamW(ps, lr=1e-4),
              "CPUOffload": lambda ps: lrfast.torch.CPUOffload(ps, lr=1e-4)}
    setups = {}
    for dtype in (torch.float32, torch.bfloat16):
        for name, make in makers.items():
            model, tokens = build(args, "cpu", dtype)
            opt = make(list(model.parameters()))
            loss(model, tokens).backward()
            opt.step()  # makes the states
            setups[f"{name}, {dtype}"] = (model, tokens, opt)
    best = dict.fromkeys(setups, math.inf)
    ratios: dict = {dtype: [] for dtype in (torch.float32, torch.bfloat16)}
    for _ in range(args.rounds):
        for dtype, pair in ratios.items():  # the two of a pair back to back
            seconds = {}
            for name in makers:
                key = f"{name}, {dtype}"
                seconds[name] = best_seconds(setups[key][2].step, rounds=1, reps=5)
                best[key] = min(best[key], seconds[name])
            pair.append(seconds["CPUOffload"] / seconds["plain lrfast.torch.AdamW"])
    results: dict = {}
    for key, (model, tokens, opt) in setups.items():
        results[key] = {"optimizer_best_s": best[key]}
        if args.steps:
            results[key].update(time_steps(model, tokens, opt, args.steps, lambda: None,
                                           args.micro_batches))
    for dtype, pair in ratios.items():  # the median of the rounds' ratios
        results[f"overhead_vs_plain_step, {dtype}"] = statistics.median(pair) - 1
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=83)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (median)")
    parser.add_argument("--micro-batches", type=int, default=1,
                        help="forward and backward passes per optimizer step (accumulation)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="CPU: rounds of 5 optimizer steps (best)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="the model's dtype (default: bfloat16 on a GPU, else float32)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    model, _ = build(args, "meta", torch.float32)
    gpu = torch.cuda.is_available() and not args.cpu
    results = {
        "model": {"tensors": len(list(model.parameters())),
                  "params": sum(p.numel() for p in model.parameters()), **vars(args)},
        "machine": {"threads": lrfast.get_num_threads(), "isa": lrfast.cpu_isa(),
                    "gpu": torch.cuda.get_device_name() if gpu else None},
        "results": run_gpu(args) if gpu else run_cpu(args),
    }
    del model
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
