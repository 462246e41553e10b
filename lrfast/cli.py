"""The ``lrfast`` command: ``lrfast bench``, ``lrfast schedule``, ``lrfast demo``.

Each sub-command lives in the module named after it, which exposes
``register(subparsers)``; a module is imported only to register its parser,
and heavy imports (torch, matplotlib, scikit-learn) stay inside its ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> module holding register(subparsers)
_COMMANDS = {
    "bench": "lrfast.bench",
    "schedule": "lrfast.schedule_cli",
    "demo": "lrfast.demo",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lrfast",
        description="Fused optimizer steps at memory speed, and learning-rate tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS.values():
        importlib.import_module(module).register(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        # The main job on its built-in default: the bandwidth report.
        args = parser.parse_args(["bench", *(argv or [])])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
