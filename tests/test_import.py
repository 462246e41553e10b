"""``import lrfast`` from a source checkout that shadows the installed package;
lrfast's import graph (no circle, the spec at the bottom); what a host step
imports."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- the import graph ---------------------------------------------------------------------------

PACKAGE = Path(lrfast.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of lrfast -> the lrfast modules it imports, at module level
    or in a function, relative imports resolved. ``from package import name``
    imports package.name where that is a module (a .py file, or a .pyi stub
    for the compiled _core), else the package itself."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(files) | {_module_name(path) for path in PACKAGE.rglob("*.pyi")}
    graph = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module
                if node.level:  # from . import x, from ..y import x
                    parent = package[:len(package) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                imported |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                             for alias in node.names}
        graph[name] = {m for m in imported if m == "lrfast" or m.startswith("lrfast.")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports, first module repeated at the end, or None."""
    done, path = set(), []

    def visit(module):
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done and (cycle := visit(target)):
                return cycle
        done.add(path.pop())
        return None

    return next(filter(None, (visit(m) for m in sorted(graph) if m not in done)), None)


def reachable(graph: dict[str, set[str]], module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_walk_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert {"lrfast.cuda", "lrfast.cuda.devicearrays", "lrfast._core"} <= graph["lrfast._backend"]
    assert "lrfast.precision" in graph["lrfast.cuda.devicearrays"]  # from .. import precision
    assert "lrfast.precision" in graph["lrfast.cuda.lowp_launch"]  # from ..precision import BLOCK
    assert "lrfast" in graph["lrfast.cuda.bench"]  # import lrfast
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_lrfast_imports_without_a_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("bottom", ["lrfast.precision", "lrfast._hparams", "lrfast._lowp",
                                    "lrfast._device"])
def test_the_bottom_modules_reach_no_cuda_module(bottom):
    """The spec and the modules under the back ends know nothing of devices."""
    below = reachable(import_graph(), bottom)
    cuda = {m for m in below if m.startswith("lrfast.cuda")}
    assert not cuda, f"{bottom} imports {sorted(below)}"


HOST_STEP = """
import sys
import numpy as np
import lrfast
p, g = np.ones(5000, np.float32), np.ones(5000, np.float32)
m, v = lrfast.zeros_state(p, "q8"), lrfast.zeros_state(p, "q4", signed=False)
lrfast.adam_step(p, g, m, v, step=1)
lrfast.clip_grad_norm(g, 1.0)
print(sorted(n for n in sys.modules
             if n.split(".")[0] in ("numba", "torch") or n.startswith("lrfast.cuda")))
"""


def test_a_host_step_imports_neither_numba_nor_torch_nor_the_cuda_back_end(tmp_path):
    done = subprocess.run([sys.executable, "-c", HOST_STEP], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
