"""`raftmq bench`: throughput, latency and controller-failover figures from a live cluster.

Modes (`run_bench` dispatches on `args.mode`):

- **produce**: creates the topic if missing (min.insync.replicas = min(2, RF)), pre-encodes
  batches of `--batch-size` random messages, and sends them with `--inflight` threads, each
  with one request in flight, round-robin over the partitions. Reports msgs/s, MiB/s and
  the per-request latency distribution.
- **consume**: reads the topic from its log start offsets up to the high watermarks seen at
  the start, one thread per partition leader, each issuing one multi-partition fetch at a
  time, and decodes every record (as a real consumer would). Reports msgs/s and MiB/s.
- **latency**: one message per request, one request at a time, to partition 0; reports the
  produce latency distribution and the produce-to-consume latency seen by a consumer thread
  of the same process (the send time is carried in the value).
- **failover**: starts its own 3-controller quorum (no brokers) in a temporary directory;
  for each run, SIGKILLs the Raft leader and times kill -> the first committed metadata
  write (a RegisterBroker of a fresh incarnation) answered by a survivor; then restarts the
  killed controller and waits until it follows again. Reports every run and the median.

Every figure comes from one CPython client process, which is often the bottleneck itself
(one thread holds the GIL at a time). Each mode therefore also reports the client's CPU
seconds per wall second and, on Linux, the machine's CPU busy share over the run
(/proc/stat), and says which of the two, if either, was saturated.

Units: MiB = 2**20 bytes. "Value" bytes count message values only; "wire" bytes count
whole encoded batches (header and per-record framing included).

Bounds: every loop stops at a count and at a deadline (`RUN_DURATION_S_MAX`, per-request
`--timeout-ms`, idle timeouts); the failover mode stops every process it started, by PID,
in a `finally` (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from raftmq import wire
from raftmq.client.cluster_client import ClusterClient
from raftmq.client.connection import ACKS_ALL
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.local_cluster import LocalCluster
from raftmq.message import Message
from raftmq.metadata import NO_LEADER
from raftmq.record_batch import HEADER_SIZE, decode_batch, encode_batch, iter_batches
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc

from . import format as fmt

ACKS_BY_NAME = {"all": ACKS_ALL, "1": 1, "0": 0}
MIB = 1 << 20
DEFAULT_TIMEOUT_MS = 15_000

# --- produce
# The topic default max.message.bytes is 1_048_588 (Kafka's): a batch must stay under it,
# so --batch-size is lowered for big messages (16 KiB x 1000 would be refused).
BATCH_BYTES_MAX = 1_000_000
# An upper bound per record in a Kafka v2 batch with a null key, no headers and one
# timestamp: length, offset delta and value length varints (<= 3 bytes each below 1 MiB
# values and 1M records) + attributes, timestamp delta, key length, header count (1 each).
RECORD_OVERHEAD_BYTES = 16
# Batches are pre-encoded once and reused round-robin: 200k x 16 KiB must not need 3 GiB.
BATCH_POOL_BYTES_MAX = 64 * MIB
BATCH_POOL_COUNT_MAX = 64
INFLIGHT_MAX = 64
# Any mode stops after this long and reports what it measured so far.
RUN_DURATION_S_MAX = 600.0
TOPIC_READY_TIMEOUT_S = 30.0

# --- consume
FETCH_WAIT_MS = 500
FETCH_BYTES_MAX = 16 * MIB
PARTITION_FETCH_BYTES_MAX = 4 * MIB
RETRY_BACKOFF_S = 0.1

# --- latency
# One request per message: 5000 takes ~10-30 s on a loaded 2-core machine.
# One request per message: a bound keeps a latency run to a minute or two.
LATENCY_MESSAGES_MAX = 100_000
MESSAGES_DEFAULT_BY_MODE = {"produce": 200_000, "consume": 200_000, "latency": 5_000}
LATENCY_WARMUP_MESSAGES = 50
# Value layout: int64 perf_counter_ns at send | 1 byte kind | padding.
VALUE_STAMP = struct.Struct(">qB")
KIND_WARMUP = 0
KIND_MEASURED = 1
# After the last send, the consumer gets this long to see the remaining messages.
LATENCY_DRAIN_TIMEOUT_S = 10.0

# --- failover
FAILOVER_RUNS_DEFAULT = 7
FAILOVER_RUNS_MAX = 100
FAILOVER_IDLE_MS_DEFAULT = 1_000
# kill -> committed write: a figure above this is a failure to elect, not a measurement.
FAILOVER_WRITE_TIMEOUT_S = 30.0
# Probes go out every 10 ms to each survivor: the resolution of the measurement. A probe
# forwarded to the dead leader hangs until the survivor notices (LEADER_CHANGED), so the
# number outstanding per survivor is bounded to keep the survivor's gRPC workers free.
FAILOVER_PROBE_INTERVAL_S = 0.01
FAILOVER_PROBE_RPC_TIMEOUT_S = 1.0
FAILOVER_PROBES_PER_ENDPOINT_MAX = 16
QUORUM_READY_TIMEOUT_S = 60.0
DESCRIBE_TIMEOUT_S = 1.0
# The fake broker the failover writes register. It never heartbeats, and a new
# registration starts fenced, so it leads nothing and causes no further writes.
BENCH_BROKER_ID = 9_000
# Reconnect fast to a restarted controller (gRPC's default backoff starts at 1 s).
_PROBE_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *wire.GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]

# A client using this share of one core or more is the limit (GIL-bound Python).
CLIENT_CPU_SATURATED_CORES = 0.85
MACHINE_CPU_SATURATED_PCT = 90.0
LATENCY_QUANTILES = (50.0, 95.0, 99.0)
LATENCY_QUANTILES_FINE = (50.0, 95.0, 99.0, 99.9)

Result = dict[str, Any]


# ---------------------------------------------------------------- pure helpers


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence; q in [0, 100].

    Nearest rank (no interpolation) so that every reported figure was actually observed.
    """
    assert sorted_values, "percentile of no samples"
    assert 0.0 <= q <= 100.0, q
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def quantile_key(q: float) -> str:
    """50 -> 'p50_ms', 99.9 -> 'p999_ms'."""
    return "p" + f"{q:g}".replace(".", "") + "_ms"


def latency_summary_ms(
    samples_s: Sequence[float], quantiles: Sequence[float] = LATENCY_QUANTILES
) -> dict[str, float]:
    """count, mean, the given percentiles and max of latencies given in seconds, in ms."""
    if not samples_s:
        return {"count": 0}
    ordered = sorted(samples_s)
    summary: dict[str, float] = {
        "count": len(ordered),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }
    for q in quantiles:
        summary[quantile_key(q)] = round(percentile(ordered, q) * 1000, 3)
    summary["max_ms"] = round(ordered[-1] * 1000, 3)
    return summary


def make_values(count: int, size: int, *, seed: int = 0) -> list[bytes]:
    """`count` values of `size` bytes: overlapping windows into one random buffer.

    Random so that no compression or deduplication could flatter a figure; windows so that
    a batch of values costs one buffer of size + count bytes (plus the copies).
    Deterministic for a seed.
    """
    assert count >= 0, count
    assert size >= 0, size
    buffer = random.Random(seed).randbytes(size + count)
    return [buffer[i : i + size] for i in range(count)]


def records_per_batch(
    batch_size: int, message_bytes: int, *, batch_bytes_max: int = BATCH_BYTES_MAX
) -> int:
    """Messages per batch: `batch_size`, lowered so that the encoded batch fits in
    `batch_bytes_max`; at least 1 (a single oversized message is the broker's to refuse)."""
    assert batch_size >= 1, batch_size
    assert message_bytes >= 0, message_bytes
    fit = (batch_bytes_max - HEADER_SIZE) // (message_bytes + RECORD_OVERHEAD_BYTES)
    return max(1, min(batch_size, fit))


def batch_sizes(messages: int, per_batch: int) -> list[int]:
    """Record counts of the batches that carry `messages`: full ones, then the rest."""
    assert messages >= 0 and per_batch >= 1
    full, rest = divmod(messages, per_batch)
    return [per_batch] * full + ([rest] if rest else [])


def count_new_records(
    records: bytes, position: int, end: int | None = None
) -> tuple[int, int, int]:
    """Decode a fetch response's batches; count the records in [position, end).

    Returns (records, value bytes, next position). A fetch may start inside a batch, so the
    records before `position` are skipped; those at or past `end` are not counted. Decodes
    every counted record, as a consumer would.
    """
    count = 0
    value_bytes = 0
    for header, batch in iter_batches(records):
        if header.next_offset <= position:
            continue
        if end is not None and header.base_offset >= end:
            position = max(position, end)
            break
        decoded = decode_batch(batch)
        first = max(position, header.base_offset) - header.base_offset
        last = len(decoded) if end is None else min(len(decoded), end - header.base_offset)
        fresh = decoded[first:last]
        count += len(fresh)
        value_bytes += sum(len(r.value) for r in fresh if r.value is not None)
        position = header.next_offset
    return count, value_bytes, position


def consume_ends(starts: dict[int, int], ends: dict[int, int], target: int) -> dict[int, int]:
    """End offsets per partition so that exactly min(target, available) messages lie in
    [starts[p], result[p]), spread as evenly as each partition's data allows."""
    available = {p: max(0, ends[p] - starts[p]) for p in starts}
    remaining = min(target, sum(available.values()))
    result = dict(starts)
    # Smallest first: a partition short of its share leaves the rest to the bigger ones.
    order = sorted(available, key=lambda p: (available[p], p))
    for i, p in enumerate(order):
        share = min(available[p], -(-remaining // (len(order) - i)))
        result[p] = starts[p] + share
        remaining -= share
    assert remaining == 0
    return result


def stamped_value(sent_ns: int, kind: int, padding: bytes) -> bytes:
    """A latency-mode value: the send time (perf_counter_ns), its kind, then padding."""
    return VALUE_STAMP.pack(sent_ns, kind) + padding


def read_stamp(value: bytes | None) -> tuple[int, int] | None:
    """(sent_ns, kind) of a latency-mode value, or None for any other value."""
    if value is None or len(value) < VALUE_STAMP.size:
        return None
    sent_ns, kind = VALUE_STAMP.unpack_from(value)
    return int(sent_ns), int(kind)


WAITING_GENERIC = "round trips and server-side waits"


def limit_hint(
    client_cpu_cores: float,
    machine_busy_pct: float | None,
    cpus: int,
    *,
    waiting: str = WAITING_GENERIC,
) -> str:
    """A one-line guess at what limited a figure, from CPU use alone; `waiting` names what
    the run waits on when no CPU was saturated."""
    if client_cpu_cores >= CLIENT_CPU_SATURATED_CORES:
        return (
            f"client CPU: the bench process used {client_cpu_cores:.2f} cores (Python runs one "
            "thread at a time), so this figure is at least partly the client's limit"
        )
    if machine_busy_pct is not None and machine_busy_pct >= MACHINE_CPU_SATURATED_PCT:
        return (
            f"machine CPU: {machine_busy_pct:.0f}% of {cpus} cores busy while the client used "
            f"only {client_cpu_cores:.2f}: the servers (and anything else running) were "
            "CPU-bound"
        )
    machine = "n/a" if machine_busy_pct is None else f"{machine_busy_pct:.0f}% busy"
    return (
        f"no CPU saturated (client {client_cpu_cores:.2f} cores, machine {machine}): "
        f"bound by waiting on {waiting}"
    )


def _produce_waiting(acks: int) -> str:
    if acks == ACKS_ALL:
        return "round trips, the leader's flush and the followers' fetches (acks=all)"
    if acks == 1:
        return "round trips and the leader's append and flush (acks=1)"
    return "round trips (acks=0: the broker still answers each request)"


FAILOVER_WAITING = (
    "the Raft election: survivors wait an election timeout (raftMinTimeout..raftMaxTimeout, "
    "0.2-0.4 s in controller/quorum.py) after the leader's last heartbeat, then a vote "
    "round and the new leader's first commit"
)


# ---------------------------------------------------------------- CPU accounting


def _machine_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies since boot over all CPUs, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    ticks = [int(x) for x in first[1:9]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


class CpuMeter:
    """Client CPU seconds per wall second, and the machine's busy share, over an interval."""

    def __init__(self) -> None:
        self._wall_s = time.perf_counter()
        self._process_s = time.process_time()
        self._machine = _machine_cpu_ticks()

    def stop(self, *, waiting: str = WAITING_GENERIC) -> Result:
        """CPU figures since construction; `waiting`: see `limit_hint`."""
        wall_s = max(time.perf_counter() - self._wall_s, 1e-9)
        process_s = time.process_time() - self._process_s
        cpus = os.cpu_count() or 1
        machine_busy_pct: float | None = None
        end = _machine_cpu_ticks()
        if self._machine is not None and end is not None and end[1] > self._machine[1]:
            busy = end[0] - self._machine[0]
            machine_busy_pct = round(100.0 * busy / (end[1] - self._machine[1]), 1)
        client_cores = round(process_s / wall_s, 3)
        return {
            "client_cpu_s": round(process_s, 3),
            "client_cpu_cores": client_cores,
            "machine_cpu_busy_pct": machine_busy_pct,
            "cpus": cpus,
            "limited_by": limit_hint(client_cores, machine_busy_pct, cpus, waiting=waiting),
        }


# ---------------------------------------------------------------- arguments


def _bootstrap(args: argparse.Namespace) -> list[str]:
    endpoints = [e.strip() for e in str(args.bootstrap).split(",") if e.strip()]
    if not endpoints:
        raise ValueError("--bootstrap needs at least one HOST:PORT")
    for e in endpoints:
        wire.parse_host_port(e)
    return endpoints


def _timeout_ms(args: argparse.Namespace) -> int:
    timeout_ms = getattr(args, "timeout_ms", None) or DEFAULT_TIMEOUT_MS
    if timeout_ms < 1:
        raise ValueError("--timeout-ms must be positive")
    return int(timeout_ms)


def _check_common(args: argparse.Namespace) -> None:
    if args.messages < 1:
        raise ValueError("--messages must be at least 1")
    if args.message_bytes < 0:
        raise ValueError("--message-bytes must not be negative")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if not 1 <= args.inflight <= INFLIGHT_MAX:
        raise ValueError(f"--inflight must be in [1, {INFLIGHT_MAX}]")
    if args.partitions < 1:
        raise ValueError("--partitions must be at least 1")
    if args.replication_factor < 1:
        raise ValueError("--replication-factor must be at least 1")


# ---------------------------------------------------------------- topic


def _admin_pool(args: argparse.Namespace) -> EndpointPool:
    controllers = getattr(args, "controllers", None)
    if controllers:
        endpoints = [e.strip() for e in controllers.split(",") if e.strip()]
        return EndpointPool(endpoints, service="controller")
    return EndpointPool(_bootstrap(args), service="broker")


def ensure_topic(args: argparse.Namespace, client: ClusterClient) -> tuple[int, int, bool]:
    """Create the topic unless it exists, then wait until every partition has a leader and
    enough in-sync replicas. Returns (partitions, replication factor, created)."""
    rf = args.replication_factor
    request = pb.CreateTopicRequest(
        name=args.topic,
        partitions=args.partitions,
        replication_factor=rf,
        configs={"min.insync.replicas": str(min(2, rf))},
        request_id=uuid.uuid4().hex,
    )
    pool = _admin_pool(args)
    try:
        response = call_with_failover(pool, "CreateTopic", request, timeout_ms=_timeout_ms(args))
    finally:
        pool.close()
    error = wire.error_from_pb(response.error)
    if error is not None and error.code != ErrorCode.TOPIC_ALREADY_EXISTS:
        raise error
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    waiting_for = "its metadata"
    while time.monotonic() < deadline:
        try:
            topic = client.refresh_metadata().topics.get(args.topic)
        except RaftmqError as e:
            waiting_for = str(e)
            topic = None
        if topic is not None:
            min_isr = topic.config.min_insync_replicas
            not_ready = [
                i
                for i, p in enumerate(topic.partitions)
                if p.leader == NO_LEADER or len(p.isr) < min(min_isr, len(p.ar))
            ]
            if not not_ready:
                return len(topic.partitions), topic.replication_factor, error is None
            waiting_for = f"a leader and {min_isr} in-sync replicas on partitions {not_ready}"
        time.sleep(RETRY_BACKOFF_S)
    raise RaftmqError(
        ErrorCode.LEADER_NOT_AVAILABLE,
        f"topic {args.topic!r} not ready after {TOPIC_READY_TIMEOUT_S:.0f} s: {waiting_for}",
    )


def _warm_connections(client: ClusterClient, topic: str, partitions: int) -> None:
    """Open a channel to every partition leader, so that no figure includes a TCP connect."""
    endpoints = {client.leader_endpoint(topic, p) for p in range(partitions)}
    for endpoint in sorted(endpoints):
        client.connection(endpoint).metadata([topic], timeout_ms=5_000)


# ---------------------------------------------------------------- produce


@dataclass
class _ProduceWorker:
    """What one produce thread did. Written by that thread only; read after join()."""

    latencies_s: list[float] = field(default_factory=list)
    messages: int = 0
    value_bytes: int = 0
    wire_bytes: int = 0
    error: str | None = None


def _batch_pool(per_batch: int, message_bytes: int, batch_count: int) -> list[bytes]:
    batch_bytes = HEADER_SIZE + per_batch * (message_bytes + RECORD_OVERHEAD_BYTES)
    count = max(1, min(batch_count, BATCH_POOL_COUNT_MAX, BATCH_POOL_BYTES_MAX // batch_bytes))
    now_ms = int(time.time() * 1000)
    return [
        encode_batch(
            [Message(v, timestamp_ms=now_ms) for v in make_values(per_batch, message_bytes, seed=i)]
        )
        for i in range(count)
    ]


def bench_produce(args: argparse.Namespace) -> Result:
    _check_common(args)
    acks = ACKS_BY_NAME[args.acks]
    timeout_ms = _timeout_ms(args)
    per_batch = records_per_batch(args.batch_size, args.message_bytes)
    sizes = batch_sizes(args.messages, per_batch)
    with ClusterClient(_bootstrap(args), request_timeout_ms=timeout_ms) as client:
        partitions, rf, created = ensure_topic(args, client)
        pool = _batch_pool(per_batch, args.message_bytes, len(sizes))
        tail: bytes | None = None
        if sizes[-1] != per_batch:
            values = make_values(sizes[-1], args.message_bytes, seed=len(pool))
            tail = encode_batch([Message(v) for v in values])
        _warm_connections(client, args.topic, partitions)

        # next() on itertools.count is one C call under the GIL: an atomic ticket dispenser.
        tickets = itertools.count()
        stop = threading.Event()
        deadline = time.monotonic() + RUN_DURATION_S_MAX

        def work(result: _ProduceWorker) -> None:
            while not stop.is_set():
                index = next(tickets)
                if index >= len(sizes):
                    return
                if time.monotonic() >= deadline:
                    result.error = f"stopped after {RUN_DURATION_S_MAX:.0f} s"
                    stop.set()
                    return
                batch = (
                    tail
                    if tail is not None and index == len(sizes) - 1
                    else pool[index % len(pool)]
                )
                started = time.perf_counter()
                try:
                    client.produce(
                        args.topic, index % partitions, batch, acks=acks, timeout_ms=timeout_ms
                    )
                except RaftmqError as e:
                    result.error = f"{e.code.name}: {e.message}"
                    stop.set()
                    return
                result.latencies_s.append(time.perf_counter() - started)
                result.messages += sizes[index]
                result.value_bytes += sizes[index] * args.message_bytes
                result.wire_bytes += len(batch)

        workers = [_ProduceWorker() for _ in range(args.inflight)]
        threads = [
            threading.Thread(target=work, args=(w,), name=f"bench-produce-{i}", daemon=True)
            for i, w in enumerate(workers)
        ]
        meter = CpuMeter()
        started = time.perf_counter()
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            # On Ctrl-C: workers finish their current request (bounded by --timeout-ms).
            stop.set()
        elapsed_s = max(time.perf_counter() - started, 1e-9)
        cpu = meter.stop(waiting=_produce_waiting(acks))
    messages = sum(w.messages for w in workers)
    latencies = [s for w in workers for s in w.latencies_s]
    errors = [w.error for w in workers if w.error]
    return {
        "mode": "produce",
        "topic": args.topic,
        "topic_created": created,
        "partitions": partitions,
        "replication_factor": rf,
        "acks": args.acks,
        "message_bytes": args.message_bytes,
        "messages_requested": args.messages,
        "messages": messages,
        "batch_messages": per_batch,
        "requests": len(latencies),
        "inflight": args.inflight,
        "elapsed_s": round(elapsed_s, 3),
        "msgs_per_s": round(messages / elapsed_s, 1),
        "mib_per_s": round(sum(w.value_bytes for w in workers) / MIB / elapsed_s, 3),
        "wire_mib_per_s": round(sum(w.wire_bytes for w in workers) / MIB / elapsed_s, 3),
        "request_latency": latency_summary_ms(latencies),
        "cpu": cpu,
        "error": errors[0] if errors else None,
    }


# ---------------------------------------------------------------- consume


class _Progress:
    """Messages consumed so far by all threads; sets `done` at the target."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.messages = 0
        self.value_bytes = 0
        self.wire_bytes = 0
        self.done = threading.Event()
        self.errors: list[str] = []

    def add(self, messages: int, value_bytes: int, wire_bytes: int) -> None:
        with self.lock:
            self.messages += messages
            self.value_bytes += value_bytes
            self.wire_bytes += wire_bytes
            if self.messages >= self.target:
                self.done.set()

    def fail(self, error: str) -> None:
        with self.lock:
            self.errors.append(error)
        self.done.set()


@dataclass
class _ConsumeJob:
    """What the consumer threads share. Each partition's position is written by the one
    thread that owns the partition."""

    client: ClusterClient
    topic: str
    positions: dict[int, int]
    ends: dict[int, int]
    progress: _Progress
    idle_timeout_s: float
    deadline: float

    def run(self, partitions: list[int]) -> None:
        """One consumer thread: fetch `partitions` (owned by this thread alone) from their
        leaders, one multi-partition request per leader at a time, until each reaches its
        end offset or `progress` is done."""
        positions, ends, progress = self.positions, self.ends, self.progress
        last_progress = time.monotonic()
        while not progress.done.is_set():
            pending = [p for p in partitions if positions[p] < ends[p]]
            if not pending:
                return
            now = time.monotonic()
            if now >= self.deadline:
                progress.fail(f"stopped after {RUN_DURATION_S_MAX:.0f} s")
                return
            if now - last_progress >= self.idle_timeout_s:
                where = ", ".join(f"{self.topic}-{p}@{positions[p]}/{ends[p]}" for p in pending)
                progress.fail(f"no new data for {self.idle_timeout_s:.0f} s at {where}")
                return
            try:
                retry, failure, moved = self._fetch_round(pending)
            except RaftmqError as e:
                retry, failure, moved = e.retriable, None if e.retriable else str(e), False
            if failure is not None:
                progress.fail(failure)
                return
            if moved:
                last_progress = time.monotonic()
            if retry:
                time.sleep(RETRY_BACKOFF_S)
                with contextlib.suppress(RaftmqError):  # the next round reports it
                    self.client.refresh_metadata()

    def _fetch_round(self, pending: list[int]) -> tuple[bool, str | None, bool]:
        """One fetch per current leader of `pending`: (retry?, fatal error, progressed?)."""
        by_leader: dict[str, list[int]] = {}
        for p in pending:
            by_leader.setdefault(self.client.leader_endpoint(self.topic, p), []).append(p)
        retry = False
        moved = False
        for endpoint, group in sorted(by_leader.items()):
            fetched = self.client.connection(endpoint).fetch(
                [(self.topic, p, self.positions[p]) for p in group],
                max_wait_ms=FETCH_WAIT_MS,
                max_bytes=FETCH_BYTES_MAX,
                partition_max_bytes=PARTITION_FETCH_BYTES_MAX,
            )
            for r in fetched:
                if r.error is not None:
                    if not r.error.retriable:
                        return False, f"{self.topic}-{r.partition}: {r.error}", moved
                    retry = True
                    continue
                count, value_bytes, self.positions[r.partition] = count_new_records(
                    r.records, self.positions[r.partition], self.ends[r.partition]
                )
                if count:
                    moved = True
                    self.progress.add(count, value_bytes, len(r.records))
        return retry, None, moved


def bench_consume(args: argparse.Namespace) -> Result:
    _check_common(args)
    timeout_ms = _timeout_ms(args)
    with ClusterClient(_bootstrap(args), request_timeout_ms=timeout_ms) as client:
        partitions = client.partition_count(args.topic)
        starts = {p: client.list_offset(args.topic, p, -2) for p in range(partitions)}
        ends = {p: client.list_offset(args.topic, p, -1) for p in range(partitions)}
        available = sum(ends[p] - starts[p] for p in range(partitions))
        if available <= 0:
            raise RaftmqError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"topic {args.topic!r} holds no messages: run `raftmq bench produce` first",
            )
        target = min(args.messages, available)
        ends = consume_ends(starts, ends, target)
        _warm_connections(client, args.topic, partitions)
        owners: dict[str, list[int]] = {}
        for p in range(partitions):
            owners.setdefault(client.leader_endpoint(args.topic, p), []).append(p)
        positions = dict(starts)
        progress = _Progress(target)
        deadline = time.monotonic() + RUN_DURATION_S_MAX
        job = _ConsumeJob(
            client, args.topic, positions, ends, progress, timeout_ms / 1000, deadline
        )
        threads = [
            threading.Thread(
                target=job.run,
                args=(owned,),
                name=f"bench-consume-{i}",
                daemon=True,
            )
            for i, owned in enumerate(owners.values())
        ]
        meter = CpuMeter()
        started = time.perf_counter()
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            progress.done.set()
        elapsed_s = max(time.perf_counter() - started, 1e-9)
        cpu = meter.stop(waiting="fetch round trips (one fetch in flight per leader)")
    return {
        "mode": "consume",
        "topic": args.topic,
        "partitions": partitions,
        "messages_available": available,
        "messages_requested": args.messages,
        "messages": progress.messages,
        "fetch_threads": len(threads),
        "elapsed_s": round(elapsed_s, 3),
        "msgs_per_s": round(progress.messages / elapsed_s, 1),
        "mib_per_s": round(progress.value_bytes / MIB / elapsed_s, 3),
        "wire_mib_per_s": round(progress.wire_bytes / MIB / elapsed_s, 3),
        "cpu": cpu,
        "error": progress.errors[0] if progress.errors else None,
    }


# ---------------------------------------------------------------- latency


@dataclass
class _LatencyConsumer:
    """The consumer thread of the latency mode. `samples_s` and `errors` are appended by
    this thread only and read by the main thread after join()."""

    client: ClusterClient
    topic: str
    start_offset: int
    expected: int
    stop: threading.Event = field(default_factory=threading.Event)
    samples_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        """Long-poll partition 0 from `start_offset`; record the produce-to-consume latency
        of every measured message (received = when the fetch returned, before decoding)."""
        position = self.start_offset
        while len(self.samples_s) < self.expected and not self.stop.is_set():
            try:
                result = self.client.fetch(
                    self.topic, 0, position, max_wait_ms=FETCH_WAIT_MS, max_bytes=MIB
                )
            except RaftmqError as e:
                self.errors.append(f"consumer: {e}")
                return
            received_ns = time.perf_counter_ns()
            if result.error is not None:
                self.errors.append(f"consumer: {result.error}")
                return
            for header, batch in iter_batches(result.records):
                if header.next_offset <= position:
                    continue
                for record in decode_batch(batch):
                    stamp = read_stamp(record.value)
                    if (
                        record.offset >= position
                        and stamp is not None
                        and stamp[1] == KIND_MEASURED
                    ):
                        self.samples_s.append((received_ns - stamp[0]) / 1e9)
                position = header.next_offset


def bench_latency(args: argparse.Namespace) -> Result:
    _check_common(args)
    acks = ACKS_BY_NAME[args.acks]
    timeout_ms = _timeout_ms(args)
    count = min(args.messages, LATENCY_MESSAGES_MAX)
    padding = make_values(1, max(0, args.message_bytes - VALUE_STAMP.size))[0]

    def one_batch(kind: int) -> bytes:
        value = stamped_value(time.perf_counter_ns(), kind, padding)
        return encode_batch([Message(value)])

    with ClusterClient(_bootstrap(args), request_timeout_ms=timeout_ms) as client:
        partitions, rf, created = ensure_topic(args, client)
        _warm_connections(client, args.topic, partitions)
        for _ in range(LATENCY_WARMUP_MESSAGES):
            client.produce(args.topic, 0, one_batch(KIND_WARMUP), acks=acks, timeout_ms=timeout_ms)
        start_offset = client.list_offset(args.topic, 0, -1)
        produce_s: list[float] = []
        errors: list[str] = []
        consumer = _LatencyConsumer(client, args.topic, start_offset, count)
        thread = threading.Thread(target=consumer.run, name="bench-latency-consumer", daemon=True)
        deadline = time.monotonic() + RUN_DURATION_S_MAX
        meter = CpuMeter()
        started = time.perf_counter()
        thread.start()
        try:
            for _ in range(count):
                if time.monotonic() >= deadline:
                    errors.append(f"stopped after {RUN_DURATION_S_MAX:.0f} s")
                    break
                batch = one_batch(KIND_MEASURED)
                sent = time.perf_counter()
                try:
                    client.produce(args.topic, 0, batch, acks=acks, timeout_ms=timeout_ms)
                except RaftmqError as e:
                    errors.append(f"producer: {e}")
                    break
                produce_s.append(time.perf_counter() - sent)
            thread.join(timeout=LATENCY_DRAIN_TIMEOUT_S)
        finally:
            consumer.stop.set()
        elapsed_s = max(time.perf_counter() - started, 1e-9)
        cpu = meter.stop(waiting=_produce_waiting(acks) + ", the consumer's long poll")
        thread.join(timeout=FETCH_WAIT_MS / 1000 + 1)
    e2e_s = consumer.samples_s
    errors += consumer.errors
    if not errors and len(e2e_s) < len(produce_s):
        errors.append(
            f"consumer saw {len(e2e_s)} of {len(produce_s)} messages within "
            f"{LATENCY_DRAIN_TIMEOUT_S:.0f} s of the last send"
        )
    return {
        "mode": "latency",
        "topic": args.topic,
        "topic_created": created,
        "partition": 0,
        "replication_factor": rf,
        "acks": args.acks,
        "message_bytes": max(args.message_bytes, VALUE_STAMP.size),
        "messages_requested": args.messages,
        "messages": len(produce_s),
        "messages_max": LATENCY_MESSAGES_MAX,
        "elapsed_s": round(elapsed_s, 3),
        "produce_latency": latency_summary_ms(produce_s, LATENCY_QUANTILES_FINE),
        "end_to_end_latency": latency_summary_ms(e2e_s, LATENCY_QUANTILES_FINE),
        "cpu": cpu,
        "error": errors[0] if errors else None,
    }


# ---------------------------------------------------------------- failover


def _describe_at(endpoint: str) -> pb.DescribeClusterResponse | None:
    """DescribeCluster from one controller over a fresh channel (no reconnect backoff to
    inherit from a channel that saw the process die), or None."""
    with grpc.insecure_channel(endpoint, options=wire.GRPC_OPTIONS) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        try:
            response: pb.DescribeClusterResponse = stub.DescribeCluster(
                pb.DescribeClusterRequest(), timeout=DESCRIBE_TIMEOUT_S
            )
        except grpc.RpcError:
            return None
        return response


def _quorum_stable(endpoints: dict[int, str]) -> tuple[int, int] | None:
    """(leader id, term) when every controller answers, all agree on the leader and term,
    the leader sees every voter, and each follower has applied the leader's commit index."""
    views = {node: _describe_at(endpoint) for node, endpoint in endpoints.items()}
    answered = {node: v for node, v in views.items() if v is not None}
    if len(answered) != len(endpoints):
        return None
    leaders = {(v.controller.leader_id, v.controller.term) for v in answered.values()}
    if len(leaders) != 1:
        return None
    [(leader_id, term)] = leaders
    leader_view = answered.get(leader_id)
    if leader_view is None:
        return None
    if any(voter.state == "unreachable" for voter in leader_view.controller.voters):
        return None
    commit_index = leader_view.controller.commit_index
    if any(v.controller.last_applied < commit_index for v in answered.values()):
        return None
    return leader_id, term


def _wait_quorum_stable(endpoints: dict[int, str], timeout_s: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stable = _quorum_stable(endpoints)
        if stable is not None:
            return stable
        time.sleep(0.05)
    raise TimeoutError(f"the controller quorum was not stable within {timeout_s:.0f} s")


def _register_request() -> pb.RegisterBrokerRequest:
    """A committed metadata write: a new incarnation of the bench's fake broker."""
    return pb.RegisterBrokerRequest(
        broker_id=BENCH_BROKER_ID,
        endpoint=cpb.Endpoint(host="127.0.0.1", port=1),
        rack="bench",
        incarnation_id=uuid.uuid4().hex,
        request_id=uuid.uuid4().hex,
    )


def _probe_until_committed(
    stubs: Sequence[Any], request: pb.RegisterBrokerRequest, timeout_s: float
) -> tuple[float | None, int, str]:
    """Send `request` to every stub every FAILOVER_PROBE_INTERVAL_S (at most
    FAILOVER_PROBES_PER_ENDPOINT_MAX outstanding each) until one answers without error.

    Returns (perf_counter of the first successful answer or None, attempts, last error).
    The request is idempotent (one request id), so any success means it was committed.
    Callbacks run on gRPC threads; the shared state is guarded by `lock`."""
    lock = threading.Lock()
    committed = threading.Event()
    first_ok_s: list[float] = []
    last_error = [""]

    def on_done(future: Any) -> None:
        answered_s = time.perf_counter()
        try:
            response = future.result()
        except (grpc.RpcError, grpc.FutureCancelledError) as e:
            status = wire.rpc_status(e)
            with lock:
                last_error[0] = status.name if status is not None else type(e).__name__
            return
        error = wire.error_from_pb(response.error)
        with lock:
            if error is None:
                first_ok_s.append(answered_s)
                committed.set()
            else:
                last_error[0] = error.code.name

    pending: list[list[Any]] = [[] for _ in stubs]
    attempts = 0
    deadline = time.monotonic() + timeout_s
    try:
        while not committed.is_set() and time.monotonic() < deadline:
            for i, stub in enumerate(stubs):
                pending[i] = [f for f in pending[i] if not f.done()]
                if len(pending[i]) >= FAILOVER_PROBES_PER_ENDPOINT_MAX:
                    continue
                future = stub.RegisterBroker.future(request, timeout=FAILOVER_PROBE_RPC_TIMEOUT_S)
                future.add_done_callback(on_done)
                pending[i].append(future)
                attempts += 1
            committed.wait(FAILOVER_PROBE_INTERVAL_S)
    finally:
        for futures in pending:
            for f in futures:
                f.cancel()
    with lock:
        return (min(first_ok_s) if first_ok_s else None), attempts, last_error[0]


def _failover_run(cluster: LocalCluster, run: int, idle_s: float) -> Result:
    endpoints = {
        node: cluster.layout.controller_endpoints[node - 1] for node in sorted(cluster.controllers)
    }
    leader_id, term = _wait_quorum_stable(endpoints, QUORUM_READY_TIMEOUT_S)
    # Warm-up: one committed write through the ordinary client path.
    pool = EndpointPool(list(endpoints.values()), service="controller")
    try:
        response = call_with_failover(pool, "RegisterBroker", _register_request())
        wire.raise_for(response.error)
    finally:
        pool.close()
    survivors = [e for node, e in endpoints.items() if node != leader_id]
    channels = [grpc.insecure_channel(e, options=_PROBE_CHANNEL_OPTIONS) for e in survivors]
    try:
        for channel in channels:  # connected before the kill: no TCP connect in the figure
            grpc.channel_ready_future(channel).result(timeout=5)
        stubs = [controller_pb2_grpc.ControllerServiceStub(c) for c in channels]
        request = _register_request()
        # Idle on purpose: dependencies.md measured slower failovers after idling (the
        # follower<->follower link is only exercised by the election).
        time.sleep(idle_s)
        killed_s = time.perf_counter()
        cluster.controllers[leader_id].kill()
        committed_s, attempts, last_error = _probe_until_committed(
            stubs, request, FAILOVER_WRITE_TIMEOUT_S
        )
    finally:
        for channel in channels:
            channel.close()
    survivor_endpoints = {n: e for n, e in endpoints.items() if n != leader_id}
    new_view = next(
        (v for v in map(_describe_at, survivor_endpoints.values()) if v is not None), None
    )
    restarted_s = time.perf_counter()
    cluster.controllers[leader_id].start()
    new_leader, new_term = _wait_quorum_stable(endpoints, QUORUM_READY_TIMEOUT_S)
    rejoin_ms = round((time.perf_counter() - restarted_s) * 1000, 1)
    row: Result = {
        "run": run,
        "killed_leader": leader_id,
        "term_before": term,
        "new_leader": new_view.controller.leader_id if new_view is not None else new_leader,
        "term_after": new_view.controller.term if new_view is not None else new_term,
        "failover_ms": None,
        "probes": attempts,
        "rejoin_ms": rejoin_ms,
        "error": None,
    }
    if committed_s is None:
        row["error"] = (
            f"no committed write within {FAILOVER_WRITE_TIMEOUT_S:.0f} s (last: {last_error})"
        )
    else:
        row["failover_ms"] = round((committed_s - killed_s) * 1000, 1)
    return row


def bench_failover(args: argparse.Namespace, progress: Callable[[Result], None]) -> Result:
    runs = int(getattr(args, "runs", None) or FAILOVER_RUNS_DEFAULT)
    if not 1 <= runs <= FAILOVER_RUNS_MAX:
        raise ValueError(f"--runs must be in [1, {FAILOVER_RUNS_MAX}]")
    idle_ms = getattr(args, "idle_ms", None)
    idle_ms = FAILOVER_IDLE_MS_DEFAULT if idle_ms is None else int(idle_ms)
    if not 0 <= idle_ms <= 60_000:
        raise ValueError("--idle-ms must be in [0, 60000]")
    keep = bool(getattr(args, "keep_data", False))
    data_dir = Path(tempfile.mkdtemp(prefix="raftmq-bench-failover-"))
    cluster = LocalCluster(data_dir, controllers=3, brokers=0)
    rows: list[Result] = []
    error: str | None = None
    meter = CpuMeter()
    try:
        cluster.start()
        for run in range(1, runs + 1):
            row = _failover_run(cluster, run, idle_ms / 1000)
            rows.append(row)
            progress(row)
    except (TimeoutError, RaftmqError) as e:
        error = f"{type(e).__name__}: {e}\n{cluster.tail_logs(5)}"
    finally:
        # By PID, also on Ctrl-C: the quorum is ours alone.
        cluster.kill_all()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    cpu = meter.stop(waiting=FAILOVER_WAITING)
    figures = [r["failover_ms"] for r in rows if r["failover_ms"] is not None]
    failed = [r for r in rows if r["error"]]
    if error is None and failed:
        error = f"{len(failed)} run(s) failed: {failed[0]['error']}"
    summary: Result = {"count": len(figures)}
    if figures:
        summary.update(
            median_ms=round(statistics.median(figures), 1),
            min_ms=min(figures),
            max_ms=max(figures),
        )
    return {
        "mode": "failover",
        "controllers": 3,
        "runs_requested": runs,
        "idle_ms": idle_ms,
        "probe_interval_ms": FAILOVER_PROBE_INTERVAL_S * 1000,
        "runs": rows,
        "failover": summary,
        "data_dir": str(data_dir) if keep else None,
        "cpu": cpu,
        "error": error,
    }


# ---------------------------------------------------------------- output


def _ms(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "-" if value is None else f"{value:.2f}"


def _latency_table(title: str, summary: dict[str, Any], quantiles: Sequence[float]) -> str:
    keys = [quantile_key(q) for q in quantiles]
    headers = [title, "COUNT", *(k.removesuffix("_ms").upper() for k in keys), "MAX", "MEAN"]
    row = [
        "ms",
        summary.get("count", 0),
        *(_ms(summary, k) for k in keys),
        _ms(summary, "max_ms"),
        _ms(summary, "mean_ms"),
    ]
    return fmt.table(headers, [row])


def _cpu_lines(cpu: Result) -> list[str]:
    machine = cpu["machine_cpu_busy_pct"]
    return [
        f"client CPU: {cpu['client_cpu_cores']:.2f} cores (process CPU s per wall s); machine: "
        + ("n/a" if machine is None else f"{machine:.0f}% busy over {cpu['cpus']} cores"),
        f"limited by: {cpu['limited_by']}",
    ]


def render(result: Result) -> str:
    """The human-readable report of one bench result."""
    mode = result["mode"]
    lines: list[str] = []
    if mode == "produce":
        lines.append(
            f"bench produce: topic {result['topic']} ({result['partitions']} partitions, "
            f"RF {result['replication_factor']}), acks={result['acks']}, "
            f"{result['message_bytes']} B messages, {result['batch_messages']} per batch, "
            f"{result['inflight']} in flight"
        )
        lines.append(
            fmt.table(
                ["MESSAGES", "REQUESTS", "SECONDS", "MSGS/S", "MIB/S", "WIRE MIB/S"],
                [
                    [
                        result["messages"],
                        result["requests"],
                        f"{result['elapsed_s']:.2f}",
                        f"{result['msgs_per_s']:,.0f}",
                        f"{result['mib_per_s']:.2f}",
                        f"{result['wire_mib_per_s']:.2f}",
                    ]
                ],
            )
        )
        lines.append(
            _latency_table("REQUEST LATENCY", result["request_latency"], LATENCY_QUANTILES)
        )
    elif mode == "consume":
        lines.append(
            f"bench consume: topic {result['topic']} ({result['partitions']} partitions, "
            f"{result['messages_available']} messages available), "
            f"{result['fetch_threads']} fetch thread(s)"
        )
        lines.append(
            fmt.table(
                ["MESSAGES", "SECONDS", "MSGS/S", "MIB/S", "WIRE MIB/S"],
                [
                    [
                        result["messages"],
                        f"{result['elapsed_s']:.2f}",
                        f"{result['msgs_per_s']:,.0f}",
                        f"{result['mib_per_s']:.2f}",
                        f"{result['wire_mib_per_s']:.2f}",
                    ]
                ],
            )
        )
    elif mode == "latency":
        capped = (
            f" (capped at {result['messages_max']})"
            if result["messages_requested"] > result["messages_max"]
            else ""
        )
        lines.append(
            f"bench latency: topic {result['topic']}-0 (RF {result['replication_factor']}), "
            f"acks={result['acks']}, {result['message_bytes']} B, one message per request, "
            f"{result['messages']} messages{capped}"
        )
        lines.append(_latency_table("PRODUCE", result["produce_latency"], LATENCY_QUANTILES_FINE))
        lines.append(
            _latency_table("PRODUCE->CONSUME", result["end_to_end_latency"], LATENCY_QUANTILES_FINE)
        )
    elif mode == "failover":
        lines.append(
            f"bench failover: own 3-controller quorum, SIGKILL of the Raft leader -> first "
            f"committed write, after {result['idle_ms']} ms idle, probes every "
            f"{result['probe_interval_ms']:.0f} ms"
        )
        lines.append(
            fmt.table(
                ["RUN", "KILLED", "TERM", "NEW LEADER", "TERM", "FAILOVER MS", "REJOIN MS"],
                [
                    [
                        r["run"],
                        r["killed_leader"],
                        r["term_before"],
                        r["new_leader"],
                        r["term_after"],
                        "-" if r["failover_ms"] is None else f"{r['failover_ms']:.1f}",
                        f"{r['rejoin_ms']:.0f}",
                    ]
                    for r in result["runs"]
                ],
            )
        )
        summary = result["failover"]
        if summary["count"]:
            lines.append(
                f"failover over {summary['count']} runs: median {summary['median_ms']:.1f} ms, "
                f"min {summary['min_ms']:.1f} ms, max {summary['max_ms']:.1f} ms"
            )
    else:
        raise AssertionError(mode)
    lines.extend(_cpu_lines(result["cpu"]))
    if result.get("error"):
        lines.append(f"error: {result['error']}")
    return "\n".join(lines)


def _print_failover_run(row: Result) -> None:
    figure = "-" if row["failover_ms"] is None else f"{row['failover_ms']:.1f} ms"
    print(
        f"run {row['run']}: killed controller {row['killed_leader']} (term {row['term_before']}), "
        f"new leader {row['new_leader']} (term {row['term_after']}): {figure}",
        file=sys.stderr,
        flush=True,
    )


def run_bench(args: argparse.Namespace) -> int:
    """Entry point of `raftmq bench MODE`: prints a table (or one JSON object with --json);
    exits 1 when the run hit an error (the figures measured until then are still printed)."""
    mode = args.mode
    if getattr(args, "messages", None) is None:
        args.messages = MESSAGES_DEFAULT_BY_MODE.get(mode, 0)
    if mode == "produce":
        result = bench_produce(args)
    elif mode == "consume":
        result = bench_consume(args)
    elif mode == "latency":
        result = bench_latency(args)
    elif mode == "failover":
        result = bench_failover(args, _print_failover_run)
    else:
        raise ValueError(f"unknown bench mode {mode!r}")
    print(json.dumps(result) if args.json else render(result), flush=True)
    return 1 if result.get("error") else 0
