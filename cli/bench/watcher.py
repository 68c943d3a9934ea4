"""Watching the cluster while a scenario runs: broker fencings (which of them the bench
caused by killing that broker, which not), ISR shrinks and leader changes.

`FencingTracker` and `PartitionTracker` are pure: they take observations (a time and
what `Admin.cluster_status()` returned) in order and return the events between two
observations. `ClusterWatcher` is the thread that polls and feeds them.

What polling can and cannot see: a broker fenced and unfenced again between two polls
is missed unless it came back as a new incarnation (a restart), which counts as a fencing
of the old one. Event times are the time of the poll that saw them (resolution: the poll
interval plus one DescribeCluster round trip).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from raftmq.client.admin import Admin, ClusterStatus
from raftmq.errors import RaftmqError
from raftmq.metadata import BrokerRegistration, TopicRecord

WATCH_INTERVAL_S = 0.05
WATCH_CALL_TIMEOUT_MS = 1_000
# A watcher keeps at most this many events of each kind (later ones are only counted).
EVENTS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Fencing:
    """Broker `broker_id` (incarnation `incarnation_id`) was seen fenced at `at_s`
    (perf_counter). `expected`: the bench had killed that broker and not yet seen it back."""

    at_s: float
    broker_id: int
    incarnation_id: str
    expected: bool


class FencingTracker:
    """Broker state transitions to fenced, from consecutive observations.

    A fencing is an unfenced incarnation seen fenced, or replaced by another incarnation
    (its successor's registration fenced it). `expect(broker_id)` before the bench kills a
    broker: its fencings are then expected until it is seen unfenced as a new incarnation.
    """

    def __init__(self) -> None:
        # broker id -> (incarnation id, fenced) as last observed.
        self._last: dict[int, tuple[str, bool]] = {}
        # broker id -> (the incarnation the bench killed or None if never observed, seen
        # down since). Removed once that broker is seen in service again.
        self._expected: dict[int, tuple[str | None, bool]] = {}
        self.fencings: list[Fencing] = []
        self.count = 0
        self.false_count = 0

    def expect(self, broker_id: int) -> None:
        """The bench is about to kill `broker_id`: its fencing is no false one."""
        last = self._last.get(broker_id)
        self._expected[broker_id] = (None if last is None else last[0], False)

    def observe(self, at_s: float, brokers: Iterable[BrokerRegistration]) -> list[Fencing]:
        """The fencings since the previous observation (also appended to `fencings`)."""
        events: list[Fencing] = []
        for b in brokers:
            previous = self._last.get(b.broker_id)
            self._last[b.broker_id] = (b.incarnation_id, b.fenced)
            expected = b.broker_id in self._expected
            if previous is not None and not previous[1]:
                incarnation = previous[0]
                if b.fenced or b.incarnation_id != incarnation:
                    events.append(Fencing(at_s, b.broker_id, incarnation, expected))
            if expected:
                self._settle_expected(b)
        for event in events:
            self.count += 1
            self.false_count += not event.expected
            if len(self.fencings) < EVENTS_MAX:
                self.fencings.append(event)
        return events

    def _settle_expected(self, b: BrokerRegistration) -> None:
        """End the expectation once the killed broker is back in service: seen down (fenced,
        or another incarnation), then unfenced as an incarnation other than the killed one."""
        killed, down_seen = self._expected[b.broker_id]
        replaced = killed is not None and b.incarnation_id != killed
        down_seen = down_seen or b.fenced or replaced
        if down_seen and not b.fenced and (replaced or killed is None):
            del self._expected[b.broker_id]
        else:
            self._expected[b.broker_id] = (killed, down_seen)

    def first_fenced_after(self, broker_id: int, after_s: float) -> float | None:
        """When `broker_id` was first seen fenced at or after `after_s`, or None."""
        times = [f.at_s for f in self.fencings if f.broker_id == broker_id and f.at_s >= after_s]
        return min(times, default=None)


@dataclass(frozen=True, slots=True)
class IsrShrink:
    at_s: float
    topic: str
    partition: int
    leader: int
    isr_before: tuple[int, ...]
    isr_after: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LeaderChange:
    at_s: float
    topic: str
    partition: int
    leader_before: int
    leader_after: int


@dataclass
class PartitionTracker:
    """ISR shrinks (a member left the ISR) and leader changes of the watched topics (all
    topics when `topics` is empty), from consecutive observations."""

    topics: frozenset[str] = frozenset()
    shrinks: list[IsrShrink] = field(default_factory=list)
    leader_changes: list[LeaderChange] = field(default_factory=list)
    shrink_count: int = 0
    # (topic, partition) -> (leader, isr) as last observed.
    _last: dict[tuple[str, int], tuple[int, tuple[int, ...]]] = field(default_factory=dict)

    def observe(self, at_s: float, topics: Iterable[TopicRecord]) -> list[IsrShrink]:
        """The shrinks since the previous observation (also appended to `shrinks`)."""
        shrinks: list[IsrShrink] = []
        for topic in topics:
            if self.topics and topic.name not in self.topics:
                continue
            for index, p in enumerate(topic.partitions):
                key = (topic.name, index)
                previous = self._last.get(key)
                self._last[key] = (p.leader, p.isr)
                if previous is None:
                    continue
                leader, isr = previous
                if not set(isr) <= set(p.isr):
                    shrinks.append(IsrShrink(at_s, topic.name, index, p.leader, isr, p.isr))
                if p.leader != leader and len(self.leader_changes) < EVENTS_MAX:
                    self.leader_changes.append(
                        LeaderChange(at_s, topic.name, index, leader, p.leader)
                    )
        self.shrink_count += len(shrinks)
        self.shrinks.extend(shrinks[: max(0, EVENTS_MAX - len(self.shrinks))])
        return shrinks

    def first_shrink_after(
        self, topic: str, partition: int, after_s: float, *, without: int | None = None
    ) -> float | None:
        """When an ISR shrink of that partition (one that removed `without`, if given) was
        first seen at or after `after_s`, or None."""
        times = [
            s.at_s
            for s in self.shrinks
            if (s.topic, s.partition) == (topic, partition)
            and s.at_s >= after_s
            and (without is None or (without in s.isr_before and without not in s.isr_after))
        ]
        return min(times, default=None)

    def first_leader_change_after(self, topic: str, partition: int, after_s: float) -> float | None:
        """When a new leader (not none) of that partition was first seen after `after_s`."""
        times = [
            c.at_s
            for c in self.leader_changes
            if (c.topic, c.partition) == (topic, partition)
            and c.at_s >= after_s
            and c.leader_after >= 0
        ]
        return min(times, default=None)


class ClusterWatcher:
    """A daemon thread polling `Admin.cluster_status()` every `interval_s` and feeding the
    trackers (the partition tracker with `topics`, all when empty, unless not
    `track_partitions`). Start with `start()`, end with `stop()` (joins); `pause()` and
    `resume()` stop polling for a while (a measurement the polls would disturb). The
    trackers are read and `expect()`ed under `lock`. Bounded by `duration_s_max` and the
    stop event."""

    def __init__(
        self,
        brokers: Sequence[str],
        *,
        topics: Iterable[str] = (),
        track_partitions: bool = True,
        interval_s: float = WATCH_INTERVAL_S,
        duration_s_max: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.fencing = FencingTracker()
        self.partitions = PartitionTracker(frozenset(topics))
        self._track_partitions = track_partitions
        self.lock = threading.Lock()
        self.polls = 0
        self.poll_errors = 0
        self.last_error: str | None = None
        self._brokers = list(brokers)
        self._interval_s = interval_s
        self._duration_s_max = duration_s_max
        self._clock = clock
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)

    def start(self) -> ClusterWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread.is_alive():
            self._thread.join(timeout=WATCH_CALL_TIMEOUT_MS / 1000 * 3 + 1)

    def pause(self) -> None:
        """No poll starts until `resume()` (one in progress finishes)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def expect_fencing(self, broker_id: int) -> None:
        with self.lock:
            self.fencing.expect(broker_id)

    def observe(self, status: ClusterStatus, at_s: float) -> None:
        with self.lock:
            self.fencing.observe(at_s, status.brokers)
            if self._track_partitions:
                self.partitions.observe(at_s, status.topics)

    def _run(self) -> None:
        deadline = time.monotonic() + self._duration_s_max
        with Admin(self._brokers, timeout_ms=WATCH_CALL_TIMEOUT_MS) as admin:
            # Bound: the stop event and duration_s_max.
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._running.wait(timeout=1.0)
                if self._stop.is_set():
                    return
                if not self._running.is_set():
                    continue
                try:
                    status = admin.cluster_status()
                except RaftmqError as e:
                    self.poll_errors += 1
                    self.last_error = str(e)
                else:
                    self.polls += 1
                    self.observe(status, self._clock())
                self._stop.wait(self._interval_s)


def fencing_json(fencing: Fencing, origin_s: float) -> dict[str, object]:
    return {
        "at_ms": round((fencing.at_s - origin_s) * 1000, 1),
        "broker": fencing.broker_id,
        "expected": fencing.expected,
    }


def shrink_json(shrink: IsrShrink, origin_s: float) -> dict[str, object]:
    return {
        "at_ms": round((shrink.at_s - origin_s) * 1000, 1),
        "partition": f"{shrink.topic}-{shrink.partition}",
        "leader": shrink.leader,
        "isr_before": list(shrink.isr_before),
        "isr_after": list(shrink.isr_after),
    }
