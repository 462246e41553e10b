"""Every code block of README.md works as pasted.

Python blocks run, each in a fresh interpreter in an empty folder; a block
skips when an optional package it needs is missing (one it imports, or one of
an lrfast extra it names, as in ``pip install "lrfast[demo]"``). The GPU block
runs on Numba's simulator where no GPU is visible. Shell blocks must parse;
their cheap commands run (``lrfast schedule``), the ``lrfast`` commands that
take minutes are checked against the command's parser, and installs, test runs
and torchrun (network, minutes) are only parsed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lrfast.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)

# Optional packages, as imported -> the top-level module to look for (found
# without importing it: importing numba here would fix its simulator setting
# for tests/test_cuda.py).
OPTIONAL = {"torch": "torch", "numba": "numba_cuda", "sklearn": "sklearn",
            "matplotlib": "matplotlib"}
EXTRAS = {"torch": ["torch"], "cuda": ["numba"], "plot": ["matplotlib"],
          "demo": ["sklearn", "matplotlib"]}

# Shell commands that are only parsed: they install, run the test suite or
# start processes on other machines.
ONLY_PARSED = {"pip", "pytest", "torchrun"}
# lrfast sub-commands that take minutes: their arguments are checked by the parser.
SLOW_COMMANDS = {"bench", "demo"}


def blocks(language: str) -> list:
    return [pytest.param(code, id=f"{language}-{i}-{code.splitlines()[0][:40]}")
            for i, (lang, code) in enumerate(BLOCKS) if lang == language]


def needs(code: str) -> list[str]:
    """The optional packages a block needs."""
    imported = set(re.findall(r"^\s*(?:import|from)\s+(\w+)", code, re.MULTILINE))
    for extras in re.findall(r"lrfast\[([\w,]+)\]", code):
        for extra in extras.split(","):
            imported.update(EXTRAS.get(extra, []))
    return sorted(imported & set(OPTIONAL))


def skip_without(packages: list[str]) -> None:
    for name in packages:
        if importlib.util.find_spec(OPTIONAL[name]) is None:
            pytest.skip(f"needs {name}")


def gpu_visible() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_has_its_blocks():
    assert len(blocks("python")) >= 6 and len(blocks("bash")) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("code", blocks("python"))
def test_python_block_runs(code, tmp_path):
    skip_without(needs(code))
    script = tmp_path / "block.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["MASTER_PORT"] = str(free_port())  # the DDP block's default port may be taken
    env.setdefault("NUMBA_ENABLE_CUDASIM", "0" if gpu_visible() else "1")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: lines joined where they end in a
    backslash, comments dropped, split at ``&&``."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            out.append(words[:end])
            words = words[end + 1:]
    return out


@pytest.mark.parametrize("code", blocks("bash"))
def test_shell_block_works(code, tmp_path):
    assert subprocess.run(["bash", "-n", "-c", code]).returncode == 0, "not valid shell"
    for words in commands(code):
        program, args = words[0], words[1:]
        if program in ONLY_PARSED:
            continue
        assert program == "lrfast", f"a README command this test does not know: {words}"
        if args[0] in SLOW_COMMANDS:
            try:
                build_parser().parse_args(args)
            except SystemExit:
                pytest.fail(f"the arguments of {words} do not parse")
            continue
        if "--plot" in args:
            skip_without(["matplotlib"])
        done = subprocess.run([sys.executable, "-m", "lrfast.cli", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
