"""The GPU figures of issue 22, one phase per run, each merged into one JSON file.

    python benchmarks/gpu_figures.py PHASE --json FILE [--dry]
    python benchmarks/gpu_figures.py summary --json FILE    # the tables, as Markdown

Phases (each prints its table and adds ``FILE[PHASE]``: the rows and the machine):

- ``kernels``: lrfast's Adam, AdamW and SGD steps on one 50M float32 tensor of
  torch CUDA tensors, against torch.optim's fused step and a torch
  device-to-device copy of the same bytes (half read, half written);
- ``adapter``: ``lrfast.torch.SGD`` (momentum) and ``AdamW`` against
  ``torch.optim``'s with ``fused=True`` on 1 x 50M, 1000 x 1000 and the
  146-tensor transformer layout;
- ``lowp``: AdamW on 50M bfloat16 params with bfloat16, q8 and q4 states
  (``lrfast.torch.AdamW(state_dtype=...)``), against torch's fused AdamW on
  float32 and on bfloat16 params, and torchao's AdamW8bit and AdamW4bit if
  it imports;
- ``lr_free``: ``lrfast.torch``'s Lion, ScheduleFreeAdamW and Prodigy against
  lion-pytorch's, schedulefree's and prodigyopt's on the same tensors, where
  those import;
- ``adafactor``: ``lrfast.torch.Adafactor`` against torch.optim's foreach
  Adafactor on a 12500 x 4000 matrix (50M elements, factored) and the
  146-tensor transformer layout;
- ``cpu``: ``lrfast bench`` AdamW on 50M float32 params with float32, q8 and q4
  states at ``--threads`` (default: every CPU), against torch's fused CPU AdamW
  (and torchao's or bitsandbytes' low-bit AdamW where they import).

Every time is the median over batches of steps, the device synchronised after
each batch (lrfast.cuda.bench.timeit): the host's work counts wherever it is
longer than the device's. ``--dry`` runs every phase on a few elements of CPU
tensors, with a short timing budget, to test this script, not to measure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

import lrfast
import lrfast.torch
from lrfast import run_record
from lrfast.bench_configs import CONFIGS, FACTORED_WIDTH, STEP_ONLY, rival
from lrfast.cuda.bench import timeit
from lrfast.workloads import many_small_shapes, transformer_like_shapes

FUSED = {"SGD", "Adam", "AdamW"}
# A multiple of every low-bit block (torchao's 256 and 128), close to 50M.
LOW_BIT_SIZE = 49_999_872
# The goals: (phase, column) -> the lowest ratio a row must reach;
# in lowp, for the q8 row only.
GOALS = {("kernels", "vs_torch"): 1.0, ("kernels", "of_copy"): 0.9,
         ("adapter", "vs_torch"): 1.0, ("lowp", "vs_torch_fp32"): 1.5}


class Setup:
    """Where and how large a run is: CUDA and the issue's sizes, or (``dry``)
    torch on the CPU, lrfast's kernels on Numba's simulator, a few elements
    and a short timing budget."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.budget = 0.02 if dry else 0.3
        self.large = 256 if dry else 50_000_000  # the simulator runs kernels as Python
        self.low_bit_size = 4096 if dry else LOW_BIT_SIZE

    def sync(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()

    def time(self, fn) -> float:
        return timeit(fn, self.sync, self.budget)

    def layouts(self) -> dict[str, list[tuple[int, ...]]]:
        if self.dry:
            return {"1x4096": [(4096,)], "10x100": many_small_shapes(10, 100),
                    "transformer-small": transformer_like_shapes(2, 16, 50)}
        return {"1x50000000": [(self.large,)], "1000x1000": many_small_shapes(),
                "transformer-146": transformer_like_shapes()}

    def tensors(self, shapes, dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
        """Parameters of `shapes` with gradients set, the same values for a seed."""
        g = torch.Generator().manual_seed(seed)
        params = [torch.randn(s, generator=g).to(self.device, dtype).requires_grad_()
                  for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(self.device, dtype)
        return params

    def device_arrays(self, tensors: list[torch.Tensor]) -> list:
        """Arrays for lrfast's step functions with the values of `tensors`:
        the tensors themselves on CUDA, simulated device arrays when dry."""
        if not self.dry:
            return [t.detach() for t in tensors]
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        from cuda_sim import to_device

        return [to_device(t.detach().numpy()) for t in tensors]

    def machine(self) -> dict:
        info = run_record.machine()
        info["torch"] = torch.__version__
        if not self.dry:
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
        return info


def _elements(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


def kernels(setup: Setup) -> list[dict]:
    rows = []
    shapes = [(setup.large,)]
    for name in ("adam", "adamw", "sgd"):
        hp, state_names, _ = CONFIGS[name]
        made = setup.tensors(shapes)
        params, grads = setup.device_arrays(made), setup.device_arrays([p.grad for p in made])
        states = [setup.device_arrays([torch.zeros_like(p) for p in made]) for _ in state_names]
        step = getattr(lrfast, f"{name}_step")
        t = setup.time(lambda: step(params, grads, *states, **hp))
        traffic = _elements(shapes) * 4 * (3 + 2 * len(states))
        src = torch.empty(traffic // 2, dtype=torch.uint8, device=setup.device)
        dst = torch.empty_like(src)
        t_copy = setup.time(lambda: dst.copy_(src))
        theirs = rival(name, setup.tensors(shapes), FUSED)[0]
        t_torch = setup.time(theirs.step)
        rows.append(dict(optimizer=name, layout=f"1x{setup.large}", time_s=t,
                         gbytes_s=traffic / t / 1e9, torch_time_s=t_torch,
                         copy_gbytes_s=traffic / t_copy / 1e9, vs_torch=t_torch / t,
                         of_copy=t_copy / t))
    return rows


ADAPTER = {"sgd": (lrfast.torch.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9)),
           "adamw": (lrfast.torch.AdamW, torch.optim.AdamW, dict(lr=1e-3))}


def adapter(setup: Setup) -> list[dict]:
    rows = []
    for label, shapes in setup.layouts().items():
        for name, (ours, theirs, kw) in ADAPTER.items():
            t = setup.time(ours(setup.tensors(shapes), **kw).step)
            t_torch = setup.time(theirs(setup.tensors(shapes), **kw, fused=True).step)
            rows.append(dict(optimizer=name, layout=label, tensors=len(shapes), time_s=t,
                             torch_time_s=t_torch, vs_torch=t_torch / t))
    return rows


def lowp(setup: Setup) -> list[dict]:
    shapes = [(setup.low_bit_size,)]
    bf16 = torch.bfloat16
    runs = {"lrfast bf16 states": lambda: lrfast.torch.AdamW(setup.tensors(shapes, bf16), lr=1e-3),
            "lrfast q8 states": lambda: lrfast.torch.AdamW(setup.tensors(shapes, bf16), lr=1e-3,
                                                           state_dtype="q8"),
            "lrfast q4 states": lambda: lrfast.torch.AdamW(setup.tensors(shapes, bf16), lr=1e-3,
                                                           state_dtype="q4"),
            "torch fused, fp32 params": lambda: torch.optim.AdamW(setup.tensors(shapes), lr=1e-3,
                                                                  fused=True),
            "torch fused, bf16 params": lambda: torch.optim.AdamW(setup.tensors(shapes, bf16),
                                                                  lr=1e-3, fused=True)}
    try:
        import torchao.optim as ao
    except ImportError:
        print("torchao does not import: its rows are left out")
    else:
        runs["torchao AdamW8bit"] = lambda: ao.AdamW8bit(setup.tensors(shapes, bf16), lr=1e-3)
        runs["torchao AdamW4bit"] = lambda: ao.AdamW4bit(setup.tensors(shapes, bf16), lr=1e-3)
    times = {label: setup.time(make().step) for label, make in runs.items()}
    fp32 = times["torch fused, fp32 params"]
    bf16_time = times["torch fused, bf16 params"]
    return [dict(optimizer="adamw", impl=label, layout=f"1x{setup.low_bit_size}", time_s=t,
                 vs_torch_fp32=fp32 / t, vs_torch_bf16=bf16_time / t)
            for label, t in times.items()]


PRODIGY_FIXED_D = dict(growth_rate=1.0)
LR_FREE = {"lion": lrfast.torch.Lion, "schedulefree_adamw": lrfast.torch.ScheduleFreeAdamW,
           "prodigy": lrfast.torch.Prodigy}


def lr_free(setup: Setup) -> list[dict]:
    rows = []
    layouts = setup.layouts()
    for label in (next(iter(layouts)), list(layouts)[-1]):  # one large tensor, the transformer
        shapes = layouts[label]
        for name, cls in LR_FREE.items():
            hp = {k: v for k, v in CONFIGS[name][0].items() if k not in STEP_ONLY}
            # Prodigy's d kept at d0: every timed step does the same work, and
            # hundreds of steps on the same gradients do not overflow.
            ours = cls(setup.tensors(shapes), **hp, **PRODIGY_FIXED_D if name == "prodigy" else {})
            if hasattr(ours, "train"):
                ours.train()
            row = dict(optimizer=name, layout=label, time_s=setup.time(ours.step),
                       package=None, package_time_s=None, vs_package=None)
            made = rival(name, setup.tensors(shapes), set())
            if made is None:
                print(f"{CONFIGS[name][2]} does not import: {name} on {label} runs alone")
            else:
                row["package"], row["package_time_s"] = made[1], setup.time(made[0].step)
                row["vs_package"] = row["package_time_s"] / row["time_s"]
            rows.append(row)
    return rows


def adafactor(setup: Setup) -> list[dict]:
    rows = []
    layouts = setup.layouts()
    matrix = [(16, 16)] if setup.dry else [(setup.large // FACTORED_WIDTH, FACTORED_WIDTH)]
    for label, shapes in ((f"{matrix[0][0]}x{matrix[0][1]}", matrix),
                          (list(layouts)[-1], layouts[list(layouts)[-1]])):
        t = setup.time(lrfast.torch.Adafactor(setup.tensors(shapes), lr=1e-2).step)
        t_torch = setup.time(rival("adafactor", setup.tensors(shapes), set())[0].step)
        rows.append(dict(optimizer="adafactor", layout=label, tensors=len(shapes), time_s=t,
                         torch_time_s=t_torch, vs_torch=t_torch / t))
    return rows


def cpu(setup: Setup, threads: int) -> list[dict]:
    rows = []
    size = 4096 if setup.dry else LOW_BIT_SIZE
    with tempfile.TemporaryDirectory() as folder:
        for states in ("param", "q8", "q4"):
            path = os.path.join(folder, f"{states}.json")
            subprocess.run(["lrfast", "bench", "--sizes", str(size), "--optimizers", "adamw",
                            "--no-lists", "--no-reference", "--threads", str(threads),
                            "--state-dtype", states, "--json", path], check=True)
            with open(path) as f:
                rows += [dict(row, states=states) for row in json.load(f)["rows"]]
    return rows


def summary(figures: dict) -> str:
    """Markdown tables of every phase in `figures`, with the issue's goals marked."""
    out = []
    for phase, record in figures.items():
        rows = record["rows"]
        if not rows:
            continue
        keys = list(rows[0])
        out += [f"### {phase} ({record['machine'].get('gpu', record['machine']['cpu'])})", "",
                "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        for row in rows:
            out.append("| " + " | ".join(_cell(phase, k, row, v) for k, v in row.items()) + " |")
        out.append("")
    return "\n".join(out)


def _cell(phase: str, key: str, row: dict, value) -> str:
    goal = GOALS.get((phase, key))
    if phase == "lowp" and row["impl"] != "lrfast q8 states":
        goal = None
    if isinstance(value, float):
        text = f"{value * 1e3:.3f} ms" if key.endswith("time_s") else f"{value:.3g}"
        return text if goal is None else f"{text} {'met' if value >= goal else 'NOT met'}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=("kernels", "adapter", "lowp", "lr_free", "adafactor",
                                          "cpu", "summary"))
    parser.add_argument("--json", required=True, help="the file the phases share")
    parser.add_argument("--dry", action="store_true", help="tiny CPU runs: tests the script")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for the cpu phase")
    args = parser.parse_args()
    figures = {}
    if os.path.exists(args.json):
        with open(args.json) as f:
            figures = json.load(f)
    if args.phase == "summary":
        print(summary(figures))
        return
    setup = Setup(args.dry)
    rows = (cpu(setup, args.threads) if args.phase == "cpu" else
            globals()[args.phase](setup))
    figures[args.phase] = dict(rows=rows, machine=setup.machine())
    with open(args.json, "w") as f:
        json.dump(figures, f, indent=1)
    print(summary({args.phase: figures[args.phase]}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
