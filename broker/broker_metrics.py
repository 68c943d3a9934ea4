"""A broker's Prometheus metrics (see `raftmq.metrics` for the conventions).

Counters and histograms are updated where things happen (request adapters, the handler's
appends and reads); gauges are refreshed from the broker's state once a second on its
event loop (`refresh`), so that a scrape — on the HTTP server's thread — only reads values.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from raftmq.broker.loop_monitor import LOOP_LAG_BUCKETS_S, LOOP_LAG_INTERVAL_S, CpuWaitMeter
from raftmq.broker.partition_log import PartitionLog
from raftmq.broker.partition_replica import ROLE_LEADER, PartitionReplica
from raftmq.heap import gc_pause_histogram, observe_gc_pauses
from raftmq.metrics import DURATION_BUCKETS_S

# A client counts as connected for this long after its last call.
CLIENT_SEEN_MS = 60_000
CLIENTS_TRACKED_MAX = 10_000
API_CHILDREN_CACHED_MAX = 1_024
TOPIC_CHILDREN_CACHED_MAX = 10_000

_Children = TypeVar("_Children")


class _LabelCache(Generic[_Children]):
    """A metric's labelled children per label value, made once by `make`: `labels()`
    takes a lock and checks its arguments on every call, and the request paths would pay
    for it on every request. Invariant: at most `cap` values are kept; past the cap,
    `make` runs on every lookup (the metrics stay right, only slower)."""

    def __init__(self, make: Callable[[str], _Children], cap: int) -> None:
        assert cap >= 0
        self._make = make
        self._cap = cap
        self._cached: dict[str, _Children] = {}

    def __getitem__(self, value: str) -> _Children:
        children = self._cached.get(value)
        if children is None:
            children = self._make(value)
            if len(self._cached) < self._cap:
                self._cached[value] = children
        return children


class BrokerMetrics:
    def __init__(self, *, broker_id: int, data_dir: Path, request_limit: int) -> None:
        self.registry = CollectorRegistry()
        self.data_dir = data_dir
        r = self.registry
        self.gc_pause = gc_pause_histogram("broker", r)
        self.loop_lag = Histogram(
            "raftmq_broker_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {LOOP_LAG_INTERVAL_S * 1000:.0f} ms "
            "(its other callbacks, or its thread waiting for a CPU)",
            buckets=LOOP_LAG_BUCKETS_S,
            registry=r,
        )
        self.loop_cpu_wait = Counter(
            "raftmq_broker_event_loop_cpu_wait_seconds",
            "Time the event loop's thread was ready to run but waited for a CPU (Linux "
            "schedstats; 0 elsewhere)",
            registry=r,
        )
        # Created by the first refresh, on the loop's thread (whose wait it reads).
        self._loop_cpu_wait_meter: CpuWaitMeter | None = None
        self.requests = Counter(
            "raftmq_broker_requests", "Requests handled, by API", ["api"], registry=r
        )
        self.request_errors = Counter(
            "raftmq_broker_request_errors",
            "Errors answered, by API and error code (per partition for produce/fetch)",
            ["api", "error"],
            registry=r,
        )
        self.request_duration = Histogram(
            "raftmq_broker_request_duration_seconds",
            "Time from a request's arrival to its answer (long polls included)",
            ["api"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        # Counted on the loop (no lock: only the loop writes it), read by a scrape.
        # Invariant: request_started() calls minus request_done() calls, >= 0.
        self.requests_in_flight = 0
        self.requests_in_flight_gauge = Gauge(
            "raftmq_broker_requests_in_flight", "Requests being handled or waiting", registry=r
        )
        self.requests_in_flight_gauge.set_function(lambda: self.requests_in_flight)
        self.request_limit = Gauge(
            "raftmq_broker_request_limit",
            "Requests the broker holds at most at once (in_flight / limit = saturation)",
            registry=r,
        )
        self.request_limit.set(request_limit)
        self.delayed = Gauge(
            "raftmq_broker_delayed_operations",
            "Waiting acks=all produces and long-polling fetches",
            ["purgatory"],
            registry=r,
        )
        self.bytes_in = Counter(
            "raftmq_broker_topic_bytes_in", "Bytes appended by producers", ["topic"], registry=r
        )
        self.messages_in = Counter(
            "raftmq_broker_topic_messages_in",
            "Records appended by producers",
            ["topic"],
            registry=r,
        )
        self.bytes_out = Counter(
            "raftmq_broker_topic_bytes_out", "Bytes served to consumers", ["topic"], registry=r
        )
        self.messages_out = Counter(
            "raftmq_broker_topic_messages_out", "Records served to consumers", ["topic"], registry=r
        )
        self.partitions = Gauge("raftmq_broker_partitions", "Partition replicas hosted", registry=r)
        self.leaders = Gauge("raftmq_broker_leader_partitions", "Partitions led", registry=r)
        self.under_replicated = Gauge(
            "raftmq_broker_under_replicated_partitions",
            "Led partitions whose ISR is smaller than their AR",
            registry=r,
        )
        self.under_min_isr = Gauge(
            "raftmq_broker_under_min_isr_partitions",
            "Led partitions whose ISR is smaller than min.insync.replicas",
            registry=r,
        )
        self.isr_shrinks = Counter(
            "raftmq_broker_isr_shrinks", "ISR shrinks this broker proposed", registry=r
        )
        self.isr_expands = Counter(
            "raftmq_broker_isr_expands", "ISR expansions this broker proposed", registry=r
        )
        self._shrinks_seen = self._expands_seen = 0
        self.log_size = Gauge(
            "raftmq_broker_log_size_bytes", "Bytes of every hosted partition log", registry=r
        )
        self.disk_free = Gauge(
            "raftmq_broker_disk_free_bytes", "Free bytes on the data dir's file system", registry=r
        )
        self.replica_sessions = Gauge(
            "raftmq_broker_replica_sessions", "Followers' fetch sessions open here", registry=r
        )
        self.clients = Gauge(
            "raftmq_broker_client_connections",
            f"Client addresses that called in the last {CLIENT_SEEN_MS // 1000} s",
            registry=r,
        )
        self.group_lag = Gauge(
            "raftmq_group_lag",
            "A consumer group's lag: high watermark minus committed offset (groups this "
            "broker coordinates, partitions it hosts)",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.group_members = Gauge(
            "raftmq_group_members",
            "Members of the groups this broker coordinates",
            ["group"],
            registry=r,
        )
        self.broker_info = Gauge(
            "raftmq_broker_info", "Constant 1, with the broker id", ["broker_id"], registry=r
        )
        self.broker_info.labels(str(broker_id)).set(1)
        self._clients: dict[str, float] = {}
        # API names are the services' methods and Kafka's API keys; topics come and go.
        self._per_api = _LabelCache(
            lambda api: (self.requests.labels(api), self.request_duration.labels(api)),
            API_CHILDREN_CACHED_MAX,
        )
        self._per_topic_in = _LabelCache(
            lambda topic: (self.bytes_in.labels(topic), self.messages_in.labels(topic)),
            TOPIC_CHILDREN_CACHED_MAX,
        )
        self._per_topic_out = _LabelCache(
            lambda topic: (self.bytes_out.labels(topic), self.messages_out.labels(topic)),
            TOPIC_CHILDREN_CACHED_MAX,
        )
        self._lag_labels: set[tuple[str, str, str]] = set()
        self._member_labels: set[str] = set()

    def request_started(self) -> None:
        self.requests_in_flight += 1

    def request_done(self, api: str, duration_s: float) -> None:
        """One request of `api` answered `duration_s` after it arrived."""
        self.requests_in_flight -= 1
        assert self.requests_in_flight >= 0
        count, duration = self._per_api[api]
        count.inc()
        duration.observe(duration_s)

    def produced(self, topic: str, size_bytes: int, records: int) -> None:
        """A batch of `records` records, `size_bytes` bytes, appended to `topic`."""
        size, count = self._per_topic_in[topic]
        size.inc(size_bytes)
        count.inc(records)

    def fetched(self, topic: str, size_bytes: int, records: int) -> None:
        """`records` records, `size_bytes` bytes, of `topic` served to a consumer."""
        size, count = self._per_topic_out[topic]
        size.inc(size_bytes)
        count.inc(records)

    def seen_client(self, peer: str) -> None:
        """A call from `peer` (ip:port of the client's connection; the port is dropped)."""
        address = peer.rsplit(":", 1)[0] if peer.count(":") == 1 else peer
        if len(self._clients) >= CLIENTS_TRACKED_MAX and address not in self._clients:
            return
        self._clients[address] = time.monotonic()

    def refresh(
        self,
        *,
        replicas: Sequence[PartitionReplica[PartitionLog]],
        purgatories: dict[str, int],
        sessions: int,
        shrinks: int,
        expands: int,
        groups: Callable[[], list[tuple[str, int, dict[tuple[str, int], int]]]],
    ) -> None:
        """On the loop, once a second: every gauge from the broker's state."""
        observe_gc_pauses(self.gc_pause)
        if self._loop_cpu_wait_meter is None:
            self._loop_cpu_wait_meter = CpuWaitMeter()
        self.loop_cpu_wait.inc(self._loop_cpu_wait_meter.delta_s())
        led = under_replicated = under_min = size = 0
        high_watermarks: dict[tuple[str, int], int] = {}
        for replica in replicas:
            log = replica.log
            size += log.size_bytes
            high_watermarks[(replica.topic, replica.index)] = log.high_watermark
            if replica.role == ROLE_LEADER:
                led += 1
                isr = len(replica.isr)
                under_replicated += isr < len(replica.ar)
                under_min += isr < replica.config.min_insync_replicas
        self.partitions.set(len(replicas))
        self.leaders.set(led)
        self.under_replicated.set(under_replicated)
        self.under_min_isr.set(under_min)
        self.log_size.set(size)
        with contextlib.suppress(OSError):
            self.disk_free.set(shutil.disk_usage(self.data_dir).free)
        for name, waiting in purgatories.items():
            self.delayed.labels(name).set(waiting)
        self.replica_sessions.set(sessions)
        self.isr_shrinks.inc(shrinks - self._shrinks_seen)
        self.isr_expands.inc(expands - self._expands_seen)
        self._shrinks_seen, self._expands_seen = shrinks, expands
        now = time.monotonic()
        self._clients = {a: t for a, t in self._clients.items() if now - t < CLIENT_SEEN_MS / 1000}
        self.clients.set(len(self._clients))
        lag_labels: set[tuple[str, str, str]] = set()
        member_labels: set[str] = set()
        for group, members, committed in groups():
            self.group_members.labels(group).set(members)
            member_labels.add(group)
            for (topic, index), offset in committed.items():
                hw = high_watermarks.get((topic, index))
                if hw is None:
                    continue
                labels = (group, topic, str(index))
                self.group_lag.labels(*labels).set(max(0, hw - offset))
                lag_labels.add(labels)
        for labels in self._lag_labels - lag_labels:
            self.group_lag.remove(*labels)
        for group in self._member_labels - member_labels:
            self.group_members.remove(group)
        self._lag_labels, self._member_labels = lag_labels, member_labels
