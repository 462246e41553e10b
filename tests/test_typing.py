"""mypy on the package, on typical calls of its API (tests/typing_usage.py),
and stubtest of _core.pyi against the compiled module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent
USAGE = "tests/typing_usage.py"


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})


@pytest.mark.slow
def test_mypy_passes_on_the_package_and_sees_the_public_signatures(tmp_path):
    # [tool.mypy] in pyproject.toml (found from ROOT) names the package.
    done = run(["mypy", "--cache-dir", str(tmp_path), "--show-error-codes",
                "lrfast", USAGE], cwd=ROOT)
    assert "error: " in done.stdout, done.stdout + done.stderr  # it ran, and found the marked lines

    found: dict[int, set[str]] = {}
    revealed: dict[int, str] = {}
    for line in done.stdout.splitlines():
        assert not line.startswith("lrfast"), f"mypy on the package: {line}"
        if (hit := re.match(rf"{re.escape(USAGE)}:(\d+): error: .*\[([\w-]+)\]$", line)):
            found.setdefault(int(hit[1]), set()).add(hit[2])
        elif (hit := re.match(rf"{re.escape(USAGE)}:(\d+): note: Revealed type is (.*)$", line)):
            revealed[int(hit[1])] = hit[2]

    expected: dict[int, set[str]] = {}
    for number, text in enumerate((ROOT / USAGE).read_text().splitlines(), 1):
        if (mark := re.search(r"# E: ([\w-]+)$", text)):
            expected[number] = {mark[1]}
        elif (mark := re.search(r"# R: (.+)$", text)):
            assert mark[1] in revealed.get(number, ""), (text, revealed.get(number))
    assert found == expected


@pytest.mark.slow
def test_the_core_stub_matches_the_compiled_module(tmp_path):
    # Run outside the checkout (the runtime module is the installed one) with
    # the checkout's stub first on mypy's path.
    done = run(["mypy.stubtest", "lrfast._core", "--mypy-config-file", str(ROOT / "pyproject.toml")],
               cwd=tmp_path, MYPYPATH=str(ROOT))
    assert done.returncode == 0, done.stdout + done.stderr
