"""The ``lrfast`` command: ``lrfast bench``, ``lrfast schedule``, ``lrfast demo``.

Each sub-command lives in the module named after it, which exposes
``register(subparsers)``; a module is imported only to register its parser,
and heavy imports (torch, matplotlib, scikit-learn) stay inside its ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from ._core import cpu_isa
from .cli_args import Parser

# sub-command -> module holding register(subparsers)
_COMMANDS = {
    "bench": "lrfast.bench",
    "schedule": "lrfast.schedule_cli",
    "demo": "lrfast.demo",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command, every sub-command registered."""
    parser = Parser(
        prog="lrfast",
        description="Fused optimizer steps at memory speed, and learning-rate tools. "
                    "'lrfast COMMAND --help' describes a command.",
    )
    parser.add_argument("--version", action="version",
                        version=f"lrfast {__version__} ({cpu_isa()} kernels)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default: sys.argv[1:]) and returns its exit
    status; bad input gives one line on stderr and a non-zero status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error(f"choose a command: {', '.join(_COMMANDS)}")
    except SystemExit as exc:  # --help (0) or a bad argument (2), already reported
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C in a long benchmark or demo: no traceback
        print(f"lrfast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
