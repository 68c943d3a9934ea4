"""`ClusterWatch`: the console's one poller. It keeps the latest `Snapshot` of the
cluster for every page and live stream, so that ten open tabs cost the cluster one
DescribeCluster a second, not ten.

It polls only while someone looks: a live stream is open, or a page was served within
`idle_after_ms`. A console nobody has opened (e.g. the one `raftmq up` starts) costs the
cluster nothing. A poll that fails keeps the last good sample and says why (`error`), so
a page shows the cluster as last seen with an error box, never a crash.

Runs on the console's event loop; every method is called from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

import structlog

from .cluster_view import (
    RATES_FROM_HIGH_WATERMARKS,
    RATES_FROM_METRICS,
    Rates,
    Sample,
    Snapshot,
)
from .prometheus import KIND_BROKER
from .rates import RateWindow

POLL_INTERVAL_MS = 1_000
IDLE_AFTER_MS = 60_000
# One poll (DescribeCluster, offsets, metrics) gives up after this long.
POLL_TIMEOUT_MS = 8_000
# Topics whose per-topic rate is tracked (the topic list's "msgs/s"); beyond it, none.
TOPIC_RATES_MAX = 1_000

_log = structlog.get_logger("raftmq.console")

Poll = Callable[[], Awaitable[Sample]]


class ClusterWatch:
    def __init__(
        self,
        poll: Poll,
        *,
        interval_ms: int = POLL_INTERVAL_MS,
        idle_after_ms: int = IDLE_AFTER_MS,
        poll_timeout_ms: int = POLL_TIMEOUT_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._poll = poll
        self.interval_ms = interval_ms
        self.idle_after_ms = idle_after_ms
        self.poll_timeout_ms = poll_timeout_ms
        self._clock = clock
        self._snapshot = Snapshot(0, None, Rates(RATES_FROM_HIGH_WATERMARKS))
        # clock() of the last finished poll (good or not); None before the first.
        self._polled_s: float | None = None
        self._wanted_s = -float("inf")
        self._watchers = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # One poll at a time: a page that asks for a fresh poll (after creating a topic)
        # while the loop polls waits for it instead of doubling the load.
        self._poll_lock = asyncio.Lock()
        self._hw = RateWindow(counter_resets=False)
        self._topic_hw: dict[str, RateWindow] = {}
        self._counters = {
            name: RateWindow(counter_resets=True)
            for name in ("messages_in", "messages_out", "bytes_in", "bytes_out")
        }

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        assert self._task is None
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-watch")

    async def close(self) -> None:
        # The flag ends the loop even if a cancellation were lost in a wait that finished
        # at the same moment (Python 3.11's asyncio.wait_for can swallow one).
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------ readers

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def current(self) -> Snapshot:
        """The snapshot for a page: the latest if it is fresh (younger than two poll
        intervals), else the one the poll started now makes, waiting at most the poll's
        timeout."""
        self._wanted_s = self._clock()
        fresh_s = 2 * self.interval_ms / 1000
        if self._polled_s is not None and self._clock() - self._polled_s < fresh_s:
            return self._snapshot
        version = self._snapshot.version
        self._wake.set()
        return await self.wait_newer(version, self.poll_timeout_ms / 1000 + 1)

    async def wait_newer(self, version: int, timeout_s: float) -> Snapshot:
        """The first snapshot after `version`, or the current one after `timeout_s`."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait_for(lambda: self._snapshot.version > version)
            return self._snapshot

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Keeps the poll going while a live stream is open."""
        self._watchers += 1
        self._wake.set()
        try:
            yield
        finally:
            self._watchers -= 1
            self._wanted_s = self._clock()

    def _active(self) -> bool:
        return self._watchers > 0 or self._clock() - self._wanted_s < self.idle_after_ms / 1000

    # ------------------------------------------------------------ the poll

    async def _run(self) -> None:
        # Bound: one poll (bounded by poll_timeout_ms) per interval while active; asleep
        # on `_wake` otherwise. Ends at close (the flag, or the cancellation).
        while not self._closed:
            if not self._active():
                self._wake.clear()
                await self._wake.wait()
                continue
            started_s = self._clock()
            await self.poll_once()
            self._wake.clear()
            wait_s = self.interval_ms / 1000 - (self._clock() - started_s)
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()

    async def poll_once(self) -> None:
        """One poll; the new snapshot is published to every waiter."""
        async with self._poll_lock:
            error = ""
            sample: Sample | None = None
            try:
                async with asyncio.timeout(self.poll_timeout_ms / 1000):
                    sample = await self._poll()
            except TimeoutError:
                error = f"the cluster did not answer within {self.poll_timeout_ms / 1000:g} s"
            except Exception as e:  # any failure is shown on the pages, never fatal here
                error = str(e) or type(e).__name__
            if error and error != self._snapshot.error:
                _log.warning("console.poll_failed", error=error)
            now_ms = int(self._clock() * 1000)
            previous = self._snapshot
            rates = self._rates(now_ms, sample) if sample is not None else previous.rates
            snapshot = Snapshot(
                previous.version + 1,
                sample if sample is not None else previous.sample,
                rates,
                error,
            )
            self._polled_s = self._clock()
            async with self._changed:
                self._snapshot = snapshot
                self._changed.notify_all()

    def _rates(self, now_ms: int, sample: Sample) -> Rates:
        high_watermarks = {
            f"{topic}\x00{index}": float(o.high_watermark)
            for (topic, index), o in sample.offsets.items()
        }
        self._hw.add(now_ms, high_watermarks)
        by_topic: dict[str, dict[str, float]] = {}
        for (topic, index), o in sample.offsets.items():
            by_topic.setdefault(topic, {})[str(index)] = float(o.high_watermark)
        for gone in set(self._topic_hw) - set(by_topic):
            del self._topic_hw[gone]
        topic_rates: dict[str, float | None] = {}
        for topic, totals in by_topic.items():
            window = self._topic_hw.get(topic)
            if window is None:
                if len(self._topic_hw) >= TOPIC_RATES_MAX:
                    continue
                window = self._topic_hw[topic] = RateWindow(counter_resets=False)
            window.add(now_ms, totals)
            topic_rates[topic] = window.per_second()
        brokers = [m for m in sample.metrics if m.kind == KIND_BROKER and not m.error]
        if not brokers:
            return Rates(
                RATES_FROM_HIGH_WATERMARKS,
                messages_in_per_s=self._hw.per_second(),
                topic_in_per_s=topic_rates,
            )
        figures: dict[str, float | None] = {}
        for name, window in self._counters.items():
            totals = {}
            for m in brokers:
                value = getattr(m, f"{name}_total")
                if value is not None:
                    totals[m.url] = float(value)
            window.add(now_ms, totals)
            figures[name] = window.per_second()
        return Rates(
            RATES_FROM_METRICS,
            messages_in_per_s=figures["messages_in"],
            messages_out_per_s=figures["messages_out"],
            bytes_in_per_s=figures["bytes_in"],
            bytes_out_per_s=figures["bytes_out"],
            topic_in_per_s=topic_rates,
        )
