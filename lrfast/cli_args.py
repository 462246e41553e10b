"""What the ``lrfast`` sub-commands share about their arguments: a parser whose
errors are one line, argument types that check a value before any work starts,
and the one-line error report for what goes wrong later.

Every bad input ends the command with one line on stderr,
``lrfast <command>: error: <what>``, and a non-zero exit status: 2 for a bad
argument (as argparse), 1 for a failure while running.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

# An error message longer than this (one quoting a huge expression) is cut in
# the middle: the line stays readable.
MAX_MESSAGE = 300


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports a bad argument in one line, without the
    usage block, and points to ``--help`` (sub-command parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def error(prog: str, message: str, code: int = 1) -> int:
    """Prints ``prog: error: message`` on stderr as one line; returns `code`."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return code


def one_line(message: str) -> str:
    """`message` with its whitespace runs made single spaces, cut in the middle
    when longer than MAX_MESSAGE characters."""
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE:
        half = MAX_MESSAGE // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text


def int_in(minimum: int, maximum: int | None = None, shown: str | None = None) -> Callable[[str], int]:
    """An argument type: a whole number from `minimum` to `maximum` (written as
    `shown` in messages when given, e.g. "2**63")."""
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {shown or maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


positive_int = int_in(1)


def sizes(text: str) -> list[int]:
    """An argument type: comma-separated element counts such as ``1e3,5e7``
    (whole numbers >= 1 and at most 1e12); empty items are skipped."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value == int(value) and 1 <= value <= 1e12):
            raise argparse.ArgumentTypeError(
                f"each size must be a whole number of elements from 1 to 1e12, got {item.strip()!r}")
        out.append(int(value))
    return out


def output_file(text: str) -> str:
    """An argument type: a file path whose folder exists and is writable, so
    that a result computed for a minute is not lost at the end."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name")
    _check_folder(path.parent, text)
    return text


def _check_folder(folder: Path, text: str) -> None:
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {str(folder)!r} for {text!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"folder {str(folder)!r} is not writable")
