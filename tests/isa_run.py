"""Runs a workload under one ISA variant (LRFAST_CPU_ISA is read at import, so
in a subprocess) and returns the arrays it saved; shared by the tests that
compare every ISA's bits."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lrfast

TESTS = Path(__file__).parent


def saved_arrays(workload, isa, tmp_path, timeout=240):
    """Runs `workload` (Python source; it saves with np.savez to sys.argv[1])
    with LRFAST_CPU_ISA=isa from the tests folder, and returns its arrays in
    order; skips when this CPU has no x86 variants."""
    if isa != "baseline" and lrfast.cpu_isa() == "baseline":
        pytest.skip("no x86 variants on this machine")
    path = tmp_path / "out.npz"
    out = subprocess.run([sys.executable, "-c", workload, str(path)], cwd=TESTS,
                         env=dict(os.environ, LRFAST_CPU_ISA=isa), capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]
