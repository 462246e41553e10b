"""``import lrfast`` from a source checkout that shadows the installed package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import lrfast

# Import as a non-editable install sees it: only Python's own finders (an
# editable install adds one that would supply _core to any lrfast folder).
PLAIN_IMPORT = """
import importlib.machinery as m, sys
sys.meta_path[:] = [f for f in sys.meta_path if f in (m.BuiltinImporter, m.FrozenImporter, m.PathFinder)]
import lrfast
"""


def source_copy(tmp_path: Path) -> Path:
    """The lrfast source folder copied without its compiled _core."""
    shutil.copytree(Path(lrfast.__file__).parent, tmp_path / "lrfast",
                    ignore=shutil.ignore_patterns("_core*.so", "_core*.pyd", "__pycache__"))
    return tmp_path


def import_from(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PLAIN_IMPORT], cwd=folder,
                          capture_output=True, text=True, timeout=120)


def test_a_shadowing_checkout_says_what_happened_and_what_to_do(tmp_path):
    done = import_from(source_copy(tmp_path))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: lrfast's compiled core (_core) is missing from ")
    assert str(tmp_path / "lrfast") in last
    assert "hides any installed lrfast" in last and "pip install" in last
    assert "circular import" not in done.stderr


def test_a_core_that_fails_to_load_keeps_its_own_error(tmp_path):
    folder = source_copy(tmp_path)
    (folder / "lrfast" / "_core.py").write_text("raise ImportError('undefined symbol: foo')\n")
    done = import_from(folder)
    assert done.stderr.strip().splitlines()[-1] == "ImportError: undefined symbol: foo"
