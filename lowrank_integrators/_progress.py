"""A dependency-free text progress bar on standard error."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Progress over a known number of units, redrawn at most ten times a second.

    Parameters
    ----------
    total : int
        Number of units.
    label : str
        Text in front of the bar.
    stream : file, optional
        Where to draw (standard error by default).
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.postfix = ""
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._last_count = 0
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty and isatty())

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count = min(self.count + n, self.total)
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        # A terminal is redrawn in place; a log file (CI) gets a line every tenth of the way.
        if self._tty:
            due = now - self._last_draw >= 0.1
        else:
            due = 10 * self.count // self.total > 10 * self._last_count // self.total
        if due or self.count == self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self._last_count = self.count
        frac = self.count / self.total
        width = 30
        filled = round(width * frac)
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * filled + "-" * (width - filled)
        lead = "\r" if self._tty else ""
        text = (
            f"{lead}{self.label} [{bar}] {self.count}/{self.total} "
            f"{elapsed:6.1f}s elapsed, {eta:6.1f}s left {self.postfix}"
        )
        self.stream.write(text if self._tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._last_count != self.count or self.count == 0:
            self._draw(time.perf_counter())
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
