"""examples/distributed_zero.py: two processes (gloo, loopback) training with
DDP and ZeroRedundancyOptimizer(optimizer_class=lrfast.torch.Adam) end with
the parameters of a single-process run (float64, within 1e-10)."""

import re
from pathlib import Path

import pytest
from launch import run_script

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_zero.py"
TIMEOUT = 240  # seconds; the gloo collectives themselves time out after 60

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="torch.distributed with gloo is not available"),
]


def test_zero_with_lrfast_matches_a_single_process():
    returncode, out = run_script([str(EXAMPLE), "--steps", "8"], TIMEOUT)
    assert returncode == 0, out
    owned = [int(n) for n in re.findall(r"rank \d: lrfast\.torch\.Adam updates (\d+) of", out)]
    total = int(re.search(r"of the (\d+) parameters", out).group(1))
    assert len(owned) == 2 and all(0 < n < total for n in owned) and sum(owned) == total, out
    difference = float(re.search(r"over the parameters: (\S+)", out).group(1))
    assert difference <= 1e-10, out
