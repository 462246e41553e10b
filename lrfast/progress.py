"""A one-line progress report rewritten in place, for commands whose steps take
seconds with nothing else on screen (the large rows of ``lrfast bench``).

It writes only when its stream (stderr) is a terminal: logs, pipes and files
get nothing extra. No dependency: tqdm is only in the demo extra.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


class Progress:
    """``show(text)`` replaces the line; ``clear()`` blanks it before other output."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.1):
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self.interval = interval  # seconds between two updates of the line
        self._shown = 0  # characters on the line now
        self._last = -float("inf")

    def show(self, text: str, force: bool = False) -> None:
        """Puts `text` on the line (cut to the terminal's width); at most one
        update per `interval` unless `force`."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        text = text[: shutil.get_terminal_size().columns - 1]
        # Spaces cover what is left of a longer previous text.
        self.stream.write("\r" + text + " " * (self._shown - len(text)))
        self.stream.flush()
        self._shown = len(text)

    def clear(self) -> None:
        """Blanks the line; the next ``show`` then appears at once."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
        self._last = -float("inf")
