"""lrfast.torch.CPUOffload on a real GPU: the `offload` phase of
benchmarks/gpu_check.sh.

1. Results: a small model on the GPU (float32 and bfloat16 params, two
   groups, several buckets, gradient accumulation with ``accumulate()``,
   clipping) stepped by CPUOffload equals, bit for bit, the plain
   lrfast.torch optimizer stepping float32 CPU copies of the params with the
   GPU's gradients (masters and states; the GPU params are the masters cast);
   q8 states too; a checkpoint loads into the plain optimizer; no optimizer
   state is left on the GPU. Written to ``OUT/offload_check.json``.
2. Speed: benchmarks/offload.py at about 1.0 B parameters (GPT-2 layout,
   16 layers of width 2048, bfloat16), one micro-batch of 4 x 1024 tokens per
   step (``OUT/offload_bench.json``) and eight (``offload_bench_accumulate8.json``).

    python benchmarks/offload_gpu_check.py [OUT] [--no-bench] [-- offload.py options]

Exits 1 if a check fails.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from pathlib import Path

import torch

import lrfast
import lrfast.torch

SHAPES = [(64, 33), (4100,), (7,), (1000, 20)]  # the first two in group 0
STEPS, MICRO, MAX_NORM, LR = 4, 2, 0.5, 1e-2
BENCH = ["--layers", "16", "--dim", "2048", "--heads", "16", "--vocab", "50257", "--seq", "1024",
         "--batch", "4", "--steps", "5", "--dtype", "bfloat16"]


def groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": LR / 2}]


def backward(params, step, micro):
    loss = sum(((p.float() * (1 + 0.1 * (k + step + micro))).sin() * (k + 1)).sum()
               for k, p in enumerate(params))
    loss.backward()


def check(dtype, state_dtype, device="cuda") -> dict:
    """CPUOffload on the GPU against the plain AdamW on float32 CPU copies
    (``device="cpu"`` runs the same check on the CPU pipeline)."""
    torch.manual_seed(0)
    params = [torch.randn(s, device=device).to(dtype).requires_grad_() for s in SHAPES]
    twins = [p.detach().float().cpu().clone().requires_grad_() for p in params]
    opt = lrfast.torch.CPUOffload(groups(params), lr=LR, state_dtype=state_dtype,
                                  max_grad_norm=MAX_NORM, bucket_size=5000)
    plain = lrfast.torch.AdamW(groups(twins), lr=LR, state_dtype=state_dtype)
    failures = []
    for step in range(STEPS):
        for micro in range(MICRO):
            with opt.accumulate() if micro < MICRO - 1 else contextlib.nullcontext():
                backward(params, step, micro)
        for p, q in zip(params, twins):
            q.grad = p.grad.float().cpu().clone()
        lrfast.clip_grad_norm([q.grad for q in twins], MAX_NORM)
        opt.step()
        plain.step()
        opt.zero_grad()
        for j, (p, q) in enumerate(zip(params, twins)):
            master = opt._entries[p].master
            if not torch.equal(master, q.detach()):
                failures.append(f"step {step}: master {j} differs by "
                                f"{(master - q.detach()).abs().max().item()}")
            if not torch.equal(p.detach().cpu(), q.detach().to(dtype)):
                failures.append(f"step {step}: GPU param {j} is not its master cast")
            for key, value in plain.state[q].items():
                mine = opt.state[p][key]
                if isinstance(value, torch.Tensor) and not torch.equal(mine, value):
                    failures.append(f"step {step}: state {key} of param {j} differs")
    gpu_bytes = torch.cuda.memory_allocated() if device == "cuda" else None
    model_bytes = sum(2 * p.numel() * p.element_size() for p in params)  # params and grads
    restored = lrfast.torch.AdamW(groups([q.detach().clone() for q in twins]), lr=LR,
                                  state_dtype=state_dtype)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    return {"dtype": str(dtype), "state_dtype": state_dtype, "failures": failures,
            "gpu_bytes_after": gpu_bytes, "params_and_grads_bytes": model_bytes,
            "host_bytes": opt.host_bytes(), "buckets": len(opt._buckets),
            "ok": not failures}


def main(argv: list[str]) -> int:
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    flags = [a for a in argv if a.startswith("--")]
    out = Path(next((a for a in argv if not a.startswith("--")), os.environ.get("OUT", "gpu-check")))
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "threads": lrfast.get_num_threads(), "isa": lrfast.cpu_isa(),
               "checks": [check(dtype, state_dtype) for dtype, state_dtype in (
                   (torch.float32, None), (torch.bfloat16, None), (torch.float32, "q8"))]}
    (out / "offload_check.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))
    ok = all(c["ok"] for c in results["checks"])
    if "--no-bench" not in flags:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import offload

        offload.main(BENCH + rest + ["--json", str(out / "offload_bench.json")])
        # the host step amortised over 8 micro-batches, as in a fine-tune with accumulation
        offload.main(BENCH + ["--micro-batches", "8", "--steps", "3"] + rest
                     + ["--json", str(out / "offload_bench_accumulate8.json")])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
