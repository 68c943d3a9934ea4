"""Per-second rates from totals sampled over time, pure (the caller passes the clock).

A total is kept per source (a broker's counter, a partition's high watermark), so that a
source that restarts or disappears does not make the sum jump: a counter that went down
restarted at 0 (Prometheus' `rate` rule), a high watermark that went down (a truncation)
adds nothing, and a source seen for the first time adds nothing until its second sample.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

RATE_WINDOW_MS = 10_000
# Samples kept: the window at the console's fastest poll (1 s), with room.
RATE_SAMPLES_MAX = 64
# A rate needs samples spanning at least this long.
RATE_SPAN_MS_MIN = 900


@dataclass(frozen=True, slots=True)
class _Step:
    at_ms: int
    increase: float  # since the previous sample, over every source


class RateWindow:
    """Rate of the sum of per-source totals over the last `window_ms`. Not thread-safe:
    one owner (the console's poll task)."""

    def __init__(self, *, counter_resets: bool, window_ms: int = RATE_WINDOW_MS) -> None:
        """`counter_resets`: a total that goes down restarted from 0 (counters); False: it
        adds nothing (high watermarks)."""
        assert window_ms > 0
        self.counter_resets = counter_resets
        self.window_ms = window_ms
        self._last: dict[str, float] = {}
        self._last_ms: int | None = None
        # Invariant: at_ms increasing; at most RATE_SAMPLES_MAX.
        self._steps: deque[_Step] = deque(maxlen=RATE_SAMPLES_MAX)

    def add(self, at_ms: int, totals: Mapping[str, float]) -> None:
        if self._last_ms is not None and at_ms <= self._last_ms:
            return  # a clock that did not move: nothing to learn
        increase = 0.0
        for source, total in totals.items():
            before = self._last.get(source)
            if before is None:
                continue
            if total >= before:
                increase += total - before
            elif self.counter_resets:
                increase += total
        if self._last_ms is not None:
            self._steps.append(_Step(at_ms, increase))
        self._last = dict(totals)
        self._last_ms = at_ms
        while self._steps and at_ms - self._steps[0].at_ms > self.window_ms:
            self._steps.popleft()

    def per_second(self) -> float | None:
        """The rate over the window, or None before two samples span RATE_SPAN_MS_MIN."""
        if self._last_ms is None or not self._steps:
            return None
        # The increases of the steps after the first one happened between the first
        # step's sample and the last sample.
        first = self._steps[0]
        span_ms = self._last_ms - first.at_ms
        if span_ms < RATE_SPAN_MS_MIN:
            return None
        increase = sum(s.increase for s in list(self._steps)[1:])
        return increase * 1000 / span_ms
