"""benchmarks/gpu_check.sh's plumbing, on Numba's simulator: its dry run of the
kernels phase and the summary writes figures.json and summary.md."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("numba.cuda")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_writes_the_figures_and_their_summary(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "kernels",
                          "summary"], env={**os.environ, "OUT": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "== kernels: exit 0" in run.stdout and "== summary: exit 0" in run.stdout
    rows = json.loads((tmp_path / "figures.json").read_text())["kernels"]["rows"]
    assert [row["optimizer"] for row in rows] == ["adam", "adamw", "sgd"]
    assert all(row["time_s"] > 0 and row["vs_torch"] > 0 for row in rows)
    assert "| adamw | 1x256 |" in (tmp_path / "summary.md").read_text()
