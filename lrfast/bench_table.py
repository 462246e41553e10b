"""The result table of ``lrfast bench`` and the legend printed above it.

One list, COLUMNS, gives each column's title, width and meaning: the header
and the legend are both made from it, so no column goes unexplained.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any, NamedTuple


class Column(NamedTuple):
    title: str
    width: int  # negative: left-aligned; columns are one space apart
    cell: Callable[[dict[str, Any]], str]  # the text of a result row's cell
    meaning: str


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.1f} us"


def _number(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


COLUMNS = [
    Column("optimizer", -18, lambda r: r["optimizer"],
           "the step timed; clip+adamw is global_norm, then adamw_step with the clip "
           "coefficient as grad_scale (torch: clip_grad_norm_, then its AdamW); prodigy is "
           "a whole step: the reduction pass, the host update of d, the update pass; with "
           "--state-dtype q8, bnb-adamw8 and ao-adamw8 (bnb-adam8, ao-adam8) are "
           "bitsandbytes' and torchao's AdamW8bit (Adam8bit), with q4 ao-adamw4 "
           "torchao's AdamW4bit, on copies of the same arrays, where installed"),
    Column("dtype", -7, lambda r: r["dtype"],
           "of the parameters, gradients and states (x/its float32: another library's "
           "low-bit optimizer that kept float32 states, as torchao does for sizes that are "
           "not a multiple of its blocks)"),
    Column("layout", -15, lambda r: r["layout"],
           "1xN: one tensor of N elements; 1000x1000: 1000 tensors of 1000; "
           "transformer-146: the 146 tensors of a small GPT-style model (10.8M elements); "
           "all the tensors of a layout go to one call"),
    Column("time", 10, lambda r: _time(r["time_s"]), "median time of one step"),
    Column("Gelem/s", 7, lambda r: f"{r['gelem_s']:.2f}",
           "parameters updated per second, in billions"),
    Column("GB/s", 6, lambda r: f"{r['gbytes_s']:.1f}",
           "bytes the step moves per second: the gradient read, the parameter and each "
           "state read and written (Adam in float32: 28 bytes per parameter; Prodigy "
           "48: its reduction reads the gradient, the parameter and p0 too; Adafactor "
           "20 for a matrix: gradient and parameter read twice, the parameter written)"),
    Column("probe GB/s", 10, lambda r: _number(r["bandwidth_gbs"], ".1f"), ""),  # see PROBES
    Column("% of probe", 10, lambda r: _number(r["pct_of_bandwidth"], ".0f"),
           "the probe's time over the step's, in percent: how close the step comes to "
           "the memory bound. The step and the probe are timed in separate samples "
           "(interleaved on the CPU) on a machine whose speed moves from moment to moment; where "
           "both run at memory speed (the largest sizes) that noise puts the ratio a few "
           "points either side of 100, so above 100 is noise, not a step faster than "
           "memory. Small sizes are dominated by the cost of the call. Prodigy's and "
           "Adafactor's probes read what their two passes read"),
    Column("state B/param", 13, lambda r: _number(r.get("state_bytes_per_param"), ".4g"),
           "bytes of optimizer state per parameter (Adam in float32: 8; Adafactor keeps "
           "a row and a column factor per matrix: 5000x4000 holds 9000 floats, "
           "0.0018 bytes per parameter)"),
    Column("vs numpy", 8, lambda r: _number(r["vs_reference"], ".1f", "x"),
           "the NumPy reference's time over lrfast's (12.0x: lrfast 12 times faster)"),
    Column("vs torch", 8, lambda r: _number(r["vs_torch"], ".2f", "x"),
           "torch.optim's time over lrfast's, on copies of the same arrays "
           "(above 1.00x: lrfast faster); for lion, schedulefree_* and prodigy, which "
           "torch.optim lacks, their reference package's time on torch tensors"),
    Column("torch impl", -13, lambda r: r["torch_impl"] or "-",
           "what ran on the torch side: fused (torch's fused kernel, one pass "
           "over each tensor: SGD, Adam, AdamW and Adagrad on the CPU, the first three "
           "on CUDA), foreach (one operation at a time over the whole list, a pass per "
           "operation: the other torch.optim classes), lion-pytorch, schedulefree, "
           "prodigyopt (the package's own step), - (not measured: torch or the package "
           "not installed)"),
]

# The "probe GB/s" column on each device: what the bound is measured with.
PROBES = {
    "cpu": "the probe's speed: the memory bound measured on the same arrays, the same "
           "bytes read and written through the same blocks and threads as the step, "
           "with no arithmetic",
    "cuda": "the probe's speed: the device's bandwidth, measured by a device-to-device "
            "copy moving as many bytes as the step",
}


def _cell(text: str, width: int) -> str:
    return f"{text:<{-width}}" if width < 0 else f"{text:>{width}}"


def header() -> str:
    """The titles of the columns, then a rule under them."""
    titles = " ".join(_cell(c.title, c.width) for c in COLUMNS).rstrip()
    return titles + "\n" + "-" * len(titles)


def row(result: dict[str, Any]) -> str:
    """One result row (a dict made by lrfast.bench or lrfast.cuda.bench) as a line."""
    return " ".join(_cell(c.cell(result), c.width) for c in COLUMNS).rstrip()


def format_table(rows: list[dict[str, Any]]) -> str:
    return "\n".join([header(), *map(row, rows)])


def legend(device: str = "cpu", width: int = 92) -> str:
    """What the rows and each column mean, wrapped to `width` characters."""
    indent = max(len(c.title) for c in COLUMNS) + 4
    lines = [textwrap.fill("Each row times one step of an optimizer over a layout; times are "
                           "medians, and every ratio compares times taken side by side in "
                           "this run.", width)]
    for c in COLUMNS:
        meaning = PROBES[device] if c.title == "probe GB/s" else c.meaning
        lines.append(textwrap.fill(meaning, width, initial_indent=f"  {c.title:<{indent - 2}}",
                                   subsequent_indent=" " * indent))
    return "\n".join(lines)
