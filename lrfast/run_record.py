"""The JSON that ``lrfast bench --json``, ``lrfast demo --json`` and the scripts in
benchmarks/ write: the machine a run took place on, the options it was given, and
its results, so that every figure made from the file can say where it came from.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from typing import Any

import numpy as np

from . import _core

# Packages whose versions a result records where installed: those the
# benchmarks compare against.
LIBRARIES = ("torch", "bitsandbytes", "torchao", "lion-pytorch", "schedulefree", "prodigyopt")


def machine() -> dict[str, Any]:
    """The CPU (model, CPU count, the ISA lrfast's kernels run with, their thread
    count), the Python, NumPy and compared libraries' versions, the UTC date, and
    the load average over the last minute (other work that slowed the run)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return dict(cpu=model, cores=os.cpu_count(), isa=_core.cpu_isa(),
                threads=_core.get_num_threads(), numpy=np.__version__,
                python=platform.python_version(), libraries=versions,
                load=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def options(args: Any) -> dict[str, Any]:
    """The parsed command-line options of a run (an argparse Namespace), as data."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def write(path: str, info: dict[str, Any], args: Any, **results: Any) -> None:
    """Writes ``{"machine": info, "options": ..., **results}`` to `path`."""
    with open(path, "w") as f:
        json.dump({"machine": info, "options": options(args), **results}, f, indent=1)
