"""``lrfast bench``: how close each fused step comes to the memory bandwidth.

For every optimizer and layout it times the fused step and, on the same
arrays, the bandwidth probe (``_core.stream``: the same bytes read and written
through the same blocks and threads, with no arithmetic), the NumPy reference
and, when torch is installed, torch.optim's fused (or foreach) step, or for
Lion, schedule-free SGD/AdamW and Prodigy their reference package's step. All
ratios come from the one run. Traffic per element: the gradient is read, the
parameter and each state are read and written (Adam: 7 arrays, 28 bytes in
float32, 14 in bfloat16), each array counted at its own dtype's size (a q8
state: 1 byte of code and 4 bytes of absmax per 256 elements; q4: half a byte
and 4 bytes per 128).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import statistics
import time

import numpy as np

from . import (_core, bench_table, cli_args, clip, precision, reference, run_record, steps,
               steps_adafactor, steps_adaptive, steps_lr_free)
from .bench_configs import (CONFIGS, PRODIGY_D, adafactor_state_dtype, factored_layout,
                            layouts, rival)
from .reference_lr_free import prodigy_d_update
from .progress import Progress
from .workloads import transformer_like_shapes

TORCH_FUSED = {"SGD", "Adam", "AdamW", "Adagrad"}  # the rest run with foreach=True

# Other libraries' low-bit optimizers, timed beside lrfast's q8 and q4 states
# when they import: state dtype -> row name prefix -> module holding their
# Adam<bits>bit and AdamW<bits>bit.
LOW_BIT = {"q8": {"bnb": "bitsandbytes.optim", "ao": "torchao.optim"},
           "q4": {"ao": "torchao.optim"}}
# A multiple of every low-bit block size (torchao's: 256 in 8 bits, 128 in 4;
# lrfast's and bitsandbytes' 256): the default sizes of the low-bit runs.
LOW_BIT_MULTIPLE = 256
DEFAULT_SIZES = "1e3,1e5,1e6,5e7"


def timeit(fns: dict, budget: float = 0.3, before=None, report=None) -> dict:
    """Median seconds per call of each function, sampled in turn.

    The functions compared in one row take their samples interleaved (one of
    each per round), so a change in what else the machine is doing affects all
    of them alike. A sample times enough calls to last about a millisecond,
    after one untimed call when a call is short (under 5 ms): each function is
    then timed with its own arrays warm in the caches, as back-to-back steps
    would find them, rather than after another function's traffic. With
    `before` (the --torch-busy mode), it runs untimed before every sample
    instead, and each sample is one call, timed as it comes. `report`, when
    given, is told how far it got.
    """
    report = report or (lambda what: None)
    report("first calls")
    calls, once = {}, {}
    for name, fn in fns.items():  # one call each to size the samples (and warm up)
        start = time.perf_counter()
        fn()
        once[name] = max(time.perf_counter() - start, 1e-7)
        calls[name] = 1 if before else max(1, int(1e-3 / once[name]))
    # A function ten times slower than the fastest (the NumPy reference) takes
    # three samples; the others as many rounds as the budget allows.
    fastest = min(once.values())
    slow = {k for k in fns if once[k] > 10 * fastest}
    per_round = sum(once[k] * calls[k] for k in fns if k not in slow)
    rounds = max(3, min(200, int(budget / per_round)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        report(f"sample round {r + 1} of {rounds}")
        for name, fn in fns.items():
            if name in slow and r >= 3:
                continue
            if before:
                before()
            elif once[name] < 5e-3:
                fn()
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a --dtype or --state-dtype name (bfloat16 from ml_dtypes)."""
    return precision.bfloat16() if name == "bfloat16" else np.dtype(name)


class Problem:
    """Params, grads and zeroed states of one optimizer over one layout; the
    states have `state_dtype` (default: the params' dtype; "q8", "q4": 8- and
    4-bit states from lrfast.zeros_state, float32 for tensors under 4096
    elements), but for schedule-free's z, which keeps the params' dtype where
    `state_dtype` cannot hold their values."""

    def __init__(self, name: str, shapes, dtype, state_dtype=None):
        self.name, self.shapes, self.dtype = name, shapes, numpy_dtype(str(dtype))
        self.low_bit = state_dtype if state_dtype in LOW_BIT else None
        self.state_dtype = (self.dtype if state_dtype is None or self.low_bit
                            else numpy_dtype(str(state_dtype)))
        self.hp, self.state_names, self.torch_name = CONFIGS[name]
        rng = np.random.default_rng(0)
        self.params = [rng.standard_normal(s, dtype=np.float32).astype(self.dtype) for s in shapes]
        self.grads = [rng.standard_normal(s, dtype=np.float32).astype(self.dtype) for s in shapes]
        if self.low_bit:
            signed = precision.SIGNED_STATES
            self.states = [[precision.zeros_state(p, self.low_bit, signed=state in signed)
                            for p in self.params] for state in self.state_names]
        else:
            self.states = [[np.zeros(s, self.state_dtype) for s in shapes] for _ in self.state_names]
        for k, state in enumerate(self.state_names):  # schedule-free's z: as the classes make it
            if state in precision.WEIGHT_STATES and not precision.holds_param(
                    self.low_bit or self.state_dtype.name, self.dtype.name):
                self.states[k] = [np.zeros(s, self.dtype) for s in shapes]
        if "p0s" in self.state_names:  # Prodigy's starting point: the params, in their dtype
            self.states[self.state_names.index("p0s")] = [p.copy() for p in self.params]
        self.elements = sum(math.prod(s) for s in shapes)
        # grad read, param read and written, each state read and written (a q8
        # or q4 state: its codes and its absmax)
        self.bytes = (3 * self.dtype.itemsize * self.elements
                      + 2 * sum(x.nbytes for states in self.states for x in states))
        if name == "prodigy":  # p0 is only read; the reduction reads grad and param again
            self.bytes += self.dtype.itemsize * self.elements

    @property
    def label(self) -> str:
        """The dtype column: the params' dtype, and the states' where it differs."""
        if self.low_bit:
            return f"{self.dtype.name}/{self.low_bit}"
        if self.state_dtype == self.dtype:
            return self.dtype.name
        return f"{self.dtype.name}/{self.state_dtype.name}"

    def step(self, impl, grad_scale=1.0):
        """One step with `impl`: "lrfast" (the fused steps) or "numpy" (the references)."""
        if self.name == "prodigy":
            return self._prodigy_step(impl, grad_scale)
        _function(impl, f"{self.name}_step")(self.params, self.grads, *self.states,
                                             grad_scale=grad_scale, **self.hp)

    def _prodigy_step(self, impl, grad_scale):
        ss, p0s, ms, vs = self.states
        d = PRODIGY_D
        dlr = d * self.hp["lr"]
        dot, s_abs = _function(impl, "prodigy_reduce")(
            self.params, self.grads, ss, p0s, d=d, d0=d, dlr=dlr, grad_scale=grad_scale)
        new = prodigy_d_update(dot, s_abs, d=d, d0=d, d_max=d, d_numerator=0.0, dlr=dlr)
        _function(impl, "prodigy_update")(self.params, self.grads, ms, vs, d=d,
                                          d_new=d if new is None else new.d, dlr=dlr,
                                          grad_scale=grad_scale)

    def stream(self):
        if self.name == "prodigy":
            # its two passes' reads: (param, grad, p0, s), then (param, grad, m,
            # v); its writes but s's (the probe streams three states at most)
            ss, p0s, ms, vs = self.states
            _core.stream((self.params, self.grads, ss, p0s), ("params", "grads", "ss", "p0s"),
                         False)
            _core.stream((self.params, self.grads, ms, vs),
                         ("params", "grads", "exp_avgs", "exp_avg_sqs"))
            return
        names = ("params", "grads") + self.state_names
        _core.stream(tuple([self.params, self.grads] + self.states), names)

    def torch_optimizer(self, cls=None):
        """``(optimizer, impl)`` on copies of the same arrays: torch.optim's
        fastest CPU step ("fused" or "foreach"), or the reference package's
        for the optimizers torch does not have (None without that package),
        or `cls`, a class taking torch.optim's arguments (impl None)."""
        import torch

        def tensor(a):  # a copy; torch cannot take NumPy's bfloat16 itself
            if a.dtype.name == "bfloat16":
                return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
            return torch.from_numpy(a.copy())

        tensors = [tensor(p).requires_grad_() for p in self.params]
        for t, g in zip(tensors, self.grads):
            t.grad = tensor(g)
        if cls is not None:
            return cls(tensors, **{k: v for k, v in self.hp.items() if k != "step"}), None
        return rival(self.name, tensors, TORCH_FUSED)

    def low_bit_rivals(self) -> list[tuple[str, type]]:
        """(row name, class) of the other libraries' 8-bit (q8) or 4-bit (q4)
        version of this Adam or AdamW, for each that imports; [] otherwise."""
        if self.torch_name not in ("Adam", "AdamW") or not self.low_bit:
            return []
        bits = self.low_bit[1]
        out = []
        for prefix, module in LOW_BIT[self.low_bit].items():
            try:
                cls = getattr(importlib.import_module(module), f"{self.torch_name}{bits}bit")
            except ImportError:
                continue
            out.append((f"{prefix}-{self.name}{bits}", cls))
        return out


class AdafactorProblem(Problem):
    """Adafactor's: the factors of each param of 2 or more dims, the full
    variance of the others. Traffic per element: a factored param's grad and
    param read, then read again and the param written (20 bytes in float32;
    24 where some element of U is capped at 1 / eps1, which these random
    grads never are: a third pass reads the grad); a vector's grad, param and
    variance read and the variance written, then grad, param and variance
    read and the param written (32; 22 for 16-bit params, whose states are
    float32). The probe reads and writes what the step does: the arrays read,
    then read and the param (and a vector's variance) written back."""

    def __init__(self, name: str, shapes, dtype, state_dtype=None):
        self.name, self.shapes, self.dtype = name, shapes, numpy_dtype(str(dtype))
        self.low_bit = None
        self.state_dtype = numpy_dtype(adafactor_state_dtype(self.dtype.name))
        if state_dtype not in (None, self.state_dtype.name):
            raise ValueError(f"Adafactor's states for {self.dtype.name} params are "
                             f"{self.state_dtype.name}")
        self.hp, self.state_names, self.torch_name = CONFIGS[name]
        rng = np.random.default_rng(0)
        self.params = [rng.standard_normal(s, dtype=np.float32).astype(self.dtype) for s in shapes]
        self.grads = [rng.standard_normal(s, dtype=np.float32).astype(self.dtype) for s in shapes]
        factored = [len(s) >= 2 for s in shapes]
        sd = self.state_dtype
        self.states = [
            [np.zeros(s[:-1] + (1,), sd) if f else None for s, f in zip(shapes, factored)],
            [np.zeros(s[:-2] + (1,) + s[-1:], sd) if f else None for s, f in zip(shapes, factored)],
            [None if f else np.zeros(s, sd) for s, f in zip(shapes, factored)]]
        self.elements = sum(math.prod(s) for s in shapes)
        item, state_item = self.dtype.itemsize, sd.itemsize
        self.bytes = sum(math.prod(s) * (5 * item if f else 5 * item + 3 * state_item)
                         for s, f in zip(shapes, factored))
        self._factored = [(p, g) for p, g, f in zip(self.params, self.grads, factored) if f]
        self._full = [(p, g, v) for p, g, v, f in zip(self.params, self.grads, self.states[2],
                                                      factored) if not f]

    def step(self, impl, grad_scale=1.0):
        fn = reference.adafactor_step if impl == "numpy" else steps_adafactor.adafactor_step
        fn(self.params, self.grads, *self.states, grad_scale=grad_scale, **self.hp)

    def stream(self):
        if self._factored:
            ps, gs = map(list, zip(*self._factored))
            _core.stream((ps, gs), ("params", "grads"), False)
            _core.stream((ps, gs), ("params", "grads"))
        if self._full:
            ps, gs, vs = map(list, zip(*self._full))
            _core.stream((ps, gs, vs), ("params", "grads", "variances"), False)
            _core.stream((ps, gs, vs), ("params", "grads", "variances"))


def _function(impl: str, name: str):
    if impl == "numpy":
        return getattr(reference, name)
    return (getattr(steps, name, None) or getattr(steps_adaptive, name, None)
            or getattr(steps_lr_free, name))


def measure(name, label, shapes, dtype, with_reference, with_torch, busy, report=None,
            state_dtype=None) -> list[dict]:
    """The row of lrfast's step; with q8 or q4 states, then a row for each other
    library's 8- or 4-bit Adam or AdamW that imports (its time in the lrfast
    columns, against the same probe and torch)."""
    if report:
        report("making the arrays")
    problem = (AdafactorProblem if name == "adafactor" else Problem)(name, shapes, dtype,
                                                                     state_dtype)
    fns = {"lrfast": lambda: problem.step("lrfast"), "probe": problem.stream}
    if with_reference:
        fns["numpy"] = lambda: problem.step("numpy")
    torch_impl = None
    made = problem.torch_optimizer() if with_torch else None
    if made is not None:
        opt, torch_impl = made
        fns["torch"] = opt.step
    t = timeit(fns, budget=0.5, before=busy, report=report)
    rows = [_row(name, label, problem, t, problem.bytes, torch_impl)]
    # The other libraries take samples of their own, interleaved with the probe
    # and torch's: their threads would otherwise still be busy when lrfast's start.
    for row_name, cls in problem.low_bit_rivals() if with_torch else []:
        their_opt = problem.torch_optimizer(cls)[0]
        theirs = {"lrfast": their_opt.step, "probe": problem.stream, "torch": fns["torch"]}
        row = _row(row_name, label, problem, timeit(theirs, budget=0.5, before=busy,
                                                    report=report), problem.bytes, torch_impl)
        if not _has_low_bit_states(their_opt):  # torchao: sizes not a multiple of its blocks
            row["dtype"] = f"{problem.dtype.name}/its float32"
        rows.append(row)
    return rows


def _has_low_bit_states(opt) -> bool:
    """Whether a torch optimizer keeps its params' states in 8 or 4 bits: as uint8
    tensors (bitsandbytes) or tensor subclasses (torchao), rather than in plain
    float tensors, which both libraries fall back to for some params."""
    import torch

    return any(isinstance(v, torch.Tensor) and v.numel() == p.numel()
               and (v.dtype == torch.uint8 or type(v) is not torch.Tensor)
               for p, state in opt.state.items() for v in state.values())


def clip_row(dtype, with_torch, report=None, state_dtype=None):
    """Global-norm clipping fused into AdamW, on the transformer-like list, against
    torch's clip_grad_norm_ followed by its fused AdamW."""
    problem = Problem("adamw", transformer_like_shapes(), dtype, state_dtype)

    def fused():
        norm = clip.global_norm(problem.grads)
        problem.step("lrfast", grad_scale=clip.clip_coefficient(norm, 1.0))

    fns = {"lrfast": fused}
    torch_impl = None
    if with_torch:
        import torch

        made = problem.torch_optimizer()
        assert made is not None  # AdamW's is torch.optim's
        opt, torch_impl = made
        params = opt.param_groups[0]["params"]

        def torch_clip_step():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        fns["torch"] = torch_clip_step
    t = timeit(fns, budget=0.5, report=report)
    read_twice = problem.bytes + problem.elements * problem.dtype.itemsize  # norm, then step
    return [_row("clip+adamw", "transformer-146", problem, t, read_twice, torch_impl)]


def _row(optimizer, layout, problem, t, traffic, torch_impl) -> dict:
    """A result row from the median times `t`: "lrfast", and "probe", "numpy",
    "torch" where they were measured. `traffic` is the bytes lrfast moves."""
    step, probe = t["lrfast"], t.get("probe")
    return dict(optimizer=optimizer, dtype=problem.label, layout=layout,
                tensors=len(problem.shapes), elements=problem.elements, time_s=step,
                bytes_per_element=traffic / problem.elements,
                gelem_s=problem.elements / step / 1e9, gbytes_s=traffic / step / 1e9,
                bandwidth_gbs=None if probe is None else problem.bytes / probe / 1e9,
                pct_of_bandwidth=None if probe is None else 100 * probe / step,
                vs_reference=t["numpy"] / step if "numpy" in t else None,
                vs_torch=t["torch"] / step if "torch" in t else None, torch_impl=torch_impl,
                state_bytes_per_param=sum(x.nbytes for states in problem.states
                                          for x in states if x is not None) / problem.elements)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_busy():
    """Work for torch's OpenMP pool just before each timed step, as in a training
    loop (its threads may still be spinning when the step starts)."""
    import torch

    a = torch.randn(512, 512)

    def busy():
        torch.mm(a, a)

    return busy


def _optimizers(text: str) -> list[str]:
    """The --optimizers type: comma-separated names from CONFIGS."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown optimizers {unknown}; choose from {', '.join(CONFIGS)}")
    if not names:
        raise argparse.ArgumentTypeError(f"name at least one of {', '.join(CONFIGS)}")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time the fused steps against memory bandwidth, NumPy and torch",
        description=__doc__.split("\n\n")[0])
    low_bit_sizes = ",".join(map(str, default_sizes("q8")))
    p.add_argument("--sizes", type=cli_args.sizes,
                   help=f"single-tensor sizes in elements, comma-separated (default: "
                        f"{DEFAULT_SIZES}; with --state-dtype q8 or q4 each rounded to the "
                        f"nearest multiple of {LOW_BIT_MULTIPLE}, {low_bit_sizes}, as torchao "
                        f"keeps float32 states for a tensor whose size is not a multiple of "
                        f"its blocks)")
    p.add_argument("--optimizers", type=_optimizers, default=",".join(CONFIGS),
                   help="comma-separated subset of: %(default)s")
    p.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"),
                   default="float32", help="of the params and grads (default: %(default)s)")
    p.add_argument("--state-dtype", choices=("param", "float32", "bfloat16", "q8", "q4"),
                   default="param",
                   help="of the optimizer states (default: the params' dtype; q8, q4: 8- "
                        "and 4-bit block-wise states); torch keeps its states in the params' "
                        "dtype whatever this says")
    p.add_argument("--threads", type=cli_args.positive_int, metavar="N",
                   help="threads for the kernels, >= 1 (default: all CPUs)")
    p.add_argument("--no-lists", action="store_true",
                   help="skip the 1000x1000 list and the 146-tensor transformer list")
    p.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    p.add_argument("--torch-busy", action="store_true",
                   help="run a torch matmul before every timed step (two thread pools)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", metavar="PATH", type=cli_args.output_file,
                   help="also write the results as JSON")
    p.set_defaults(func=run)


def default_sizes(state_dtype: str) -> list[int]:
    """The --sizes default for --state-dtype `state_dtype`: DEFAULT_SIZES, each
    rounded to the nearest multiple of LOW_BIT_MULTIPLE for the low-bit states,
    so that every library's 8- or 4-bit optimizer keeps low-bit states."""
    sizes = cli_args.sizes(DEFAULT_SIZES)
    if state_dtype not in LOW_BIT:
        return sizes
    return [LOW_BIT_MULTIPLE * max(1, round(n / LOW_BIT_MULTIPLE)) for n in sizes]


def plan(sizes: list[int], names: list[str], lists: bool) -> list[tuple[str, list, str]]:
    """(layout label, shapes, optimizer) of every row but the clip row."""
    return [(*(factored_layout(label, shapes) if name == "adafactor" else (label, shapes)), name)
            for label, shapes in layouts(sizes, lists) for name in names
            # the list layouts show per-tensor overhead; Adam is enough
            if len(shapes) == 1 or name in ("adam", "adamw")]


def run(args) -> int:
    names = args.optimizers
    sizes = default_sizes(args.state_dtype) if args.sizes is None else args.sizes
    if not plan(sizes, names, not args.no_lists) and (args.no_lists or "adamw" not in names):
        return cli_args.error("lrfast bench", "nothing to measure: give --sizes, or drop "
                              "--no-lists and include adam or adamw", code=2)
    sixteen_bit = args.dtype in ("bfloat16", "float16") or args.state_dtype == "bfloat16"
    if args.device == "cuda" and (sixteen_bit or args.state_dtype != "param"):
        return cli_args.error("lrfast bench", "--device cuda runs float32 and float64 only, "
                              "with states of the params' dtype", code=2)
    if sixteen_bit:
        try:
            precision.bfloat16()
        except ImportError as e:
            return cli_args.error("lrfast bench", str(e))
    if args.device == "cuda":
        try:
            from numba import cuda
        except ImportError:
            return cli_args.error("lrfast bench",
                                  "--device cuda needs numba-cuda: pip install 'lrfast[cuda]'")
        if not cuda.is_available():
            return cli_args.error("lrfast bench", "--device cuda found no usable CUDA GPU and driver")
        from .cuda import bench as cuda_bench

        rows = cuda_bench.run(sizes, names, args.dtype, lists=not args.no_lists)
        print(bench_table.legend("cuda"), bench_table.format_table(rows), sep="\n\n")
        gpu = cuda.get_current_device().name  # bytes in older numba-cuda
        return _dump(args, rows, {**run_record.machine(), "device": "cuda",
                                  "gpu": gpu.decode() if isinstance(gpu, bytes) else gpu})
    if args.threads:
        _core.set_num_threads(args.threads)
    with_torch = not args.no_torch and torch_available()
    busy = torch_busy() if args.torch_busy and with_torch else None
    info = run_record.machine()
    print(f"lrfast bench: {info['cpu']}, {info['cores']} CPUs, ISA {info['isa']}, "
          f"{info['threads']} threads, {args.dtype}"
          f"{'' if args.state_dtype == 'param' else f' with {args.state_dtype} states'}; torch: "
          f"{'yes' if with_torch else 'not installed' if not args.no_torch else 'off'}"
          f"{', busy before each step' if busy else ''}\n", flush=True)
    print(bench_table.legend("cpu"), bench_table.header(), sep="\n\n", flush=True)
    try:
        rows = _measure_rows(args, sizes, with_torch, busy)
    except MemoryError:
        return cli_args.error("lrfast bench", "not enough memory for the arrays of a row; "
                              "try smaller --sizes")
    return _dump(args, rows, info)


def _measure_rows(args, sizes: list[int], with_torch: bool, busy) -> list[dict]:
    """Measures and prints the rows one by one; on a terminal, stderr shows
    which row is running and how far it got."""
    state_dtype = None if args.state_dtype == "param" else args.state_dtype
    # The NumPy reference computes in the arrays' own dtypes: float32 and float64 only.
    with_reference = (not args.no_reference and args.dtype in ("float32", "float64")
                      and state_dtype in (None, args.dtype))
    jobs = [(f"{name} {label}", functools.partial(measure, name, label, shapes, args.dtype,
                                                   with_reference, with_torch, busy,
                                                   state_dtype=state_dtype))
            for label, shapes, name in plan(sizes, args.optimizers, not args.no_lists)]
    if not args.no_lists and "adamw" in args.optimizers:
        jobs.append(("clip+adamw transformer-146", functools.partial(
            clip_row, args.dtype, with_torch, state_dtype=state_dtype)))
    progress = Progress()
    rows = []
    try:
        for i, (what, job) in enumerate(jobs, 1):
            new = job(report=lambda stage: progress.show(f"row {i} of {len(jobs)}: {what}, {stage}"))
            progress.clear()
            for r in new:
                print(bench_table.row(r), flush=True)
            rows += new
    finally:
        progress.clear()
    return rows


def _dump(args, rows, info) -> int:
    if args.json:
        try:
            run_record.write(args.json, info, args, rows=rows)
        except OSError as exc:
            return cli_args.error("lrfast bench", f"cannot write {args.json}: {exc.strerror}")
    return 0
