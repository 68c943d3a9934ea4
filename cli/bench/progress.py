"""A progress bar for long bench runs, on stderr so that stdout keeps only the report.

Drawn only when stderr is a terminal or `--progress` asks for it (a pipe or a CI log
would otherwise fill with carriage returns). Thread-safe: produce advances it from the
Writer's completion thread.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 30
# Redraws are at most this often: drawing is cheap, but not free at 500k messages/s.
REDRAW_INTERVAL_S = 0.2


def progress_wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


def render_bar(label: str, done: int, total: int, unit: str, elapsed_s: float) -> str:
    """`label [#####.....]  45% 90,000/200,000 msgs  31,000/s  ETA 4 s` (no newline)."""
    share = min(1.0, done / total) if total > 0 else 1.0
    filled = round(share * BAR_WIDTH)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = f"ETA {(total - done) / rate:.0f} s" if rate > 0 and done < total else ""
    return (
        f"{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share * 100:3.0f}% "
        f"{done:,}/{total:,} {unit}  {rate:,.0f}/s  {eta}"
    ).rstrip()


class ProgressBar:
    """`advance(n)` as work completes, `note(line)` for a line above the bar, `close()` at
    the end (draws the final state and ends the line). Does nothing when not `enabled`."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        *,
        enabled: bool,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`stream`: default sys.stderr as it is now (tests replace it)."""
        self.label = label
        self.total = total
        self.unit = unit
        self.enabled = enabled
        self._stream = sys.stderr if stream is None else stream
        self._clock = clock
        self._lock = threading.Lock()
        self._started_s = clock()
        self._drawn_s = float("-inf")
        self._width = 0  # of the bar drawn last, to blank it out
        self.done = 0

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            now = self._clock()
            if now - self._drawn_s >= REDRAW_INTERVAL_S:
                self._draw(now)

    def note(self, line: str) -> None:
        """Print `line` on its own (above the bar when one is drawn)."""
        with self._lock:
            if not self.enabled:
                print(line, file=self._stream, flush=True)
                return
            self._stream.write("\r" + " " * self._width + "\r" + line + "\n")
            self._draw(self._clock())

    def close(self) -> None:
        with self._lock:
            if self.enabled:
                self._draw(self._clock())
                self._stream.write("\n")
                self._stream.flush()
                self.enabled = False

    def _draw(self, now: float) -> None:
        if not self.enabled:
            return
        bar = render_bar(self.label, self.done, self.total, self.unit, now - self._started_s)
        self._stream.write("\r" + bar.ljust(self._width))
        self._stream.flush()
        self._width = len(bar)
        self._drawn_s = now
