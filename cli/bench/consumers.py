"""`raftmq bench consumers --count N`: N idle long-polling consumer fetches against one
broker while a one-in-flight acks=all writer produces to a partition that broker leads.

Starts its own cluster (`BenchCluster`: `raftmq up` defaults, 3 controllers, 3 brokers):
the scenario sets out to overload one broker, which is not something to do to a cluster
someone else is using. Two topics, RF 3, min.insync.replicas=2: `bench-consumers-produce`
(1 partition; its leader is "the broker") and `bench-consumers-idle` (`IDLE_PARTITIONS`
partitions, nobody writes them). Then:

1. `--count` consumer fetches of the idle partitions the broker leads, at their end, with
   `min_bytes` that never fills and `max_wait_ms` `LONG_POLL_WAIT_MS`: each returns empty
   after its wait and is issued again at once (after an error: a backoff of 100 ms doubling
   to 1 s). They run as asyncio tasks on raw `BrokerService.Fetch` stubs over
   `CHANNELS_MAX` grpc.aio channels, each its own TCP connection (a local subchannel
   pool), in a thread of their own;
2. once every fetch has been issued and `LONG_POLL_SETTLE_S` has passed, a sync idempotent
   `Writer` (acks=all, no linger, one message per `write_messages` call, one in flight)
   writes to the produce topic for `--duration` seconds (or `--messages` calls);
3. all the while `ClusterWatcher` polls `Admin.cluster_status()` every 50 ms (through the
   other brokers first) for ISR shrinks of both topics' partitions and for fencings
   (nothing is killed: every fencing is a false one).

Figures: produce p50/p99/p999, ISR shrinks, fencings; beside them how the long-polls fared
(completed, refused by code, how long a completed one waited), each node's CPU over
the produce window, and how much of that window each node's main thread (a broker's event
loop) was ready to run but waited for a CPU. Every process is stopped by PID in a
`finally` (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from raftmq import wire
from raftmq.client import protocol
from raftmq.client.admin import Admin, LastOffset
from raftmq.client.writer import RequireAll, WriteError, Writer
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.v1 import broker_pb2_grpc

from .. import format as fmt
from .cluster import BROKERS, BenchCluster, create_topic, wait_full_isr
from .common import (
    LATENCY_QUANTILES_FINE,
    RUN_DURATION_S_MAX,
    CpuMeter,
    Result,
    footer_lines,
    headline_latency_ms,
    latency_summary_ms,
    latency_table,
    timeout_ms_of,
)
from .process_stats import ProcessCpuMeter, pct
from .progress import ProgressBar, progress_wanted
from .watcher import ClusterWatcher, fencing_json, shrink_json

CONSUMERS_COUNT_DEFAULT = 1_000
CONSUMERS_COUNT_MAX = 10_000
CONSUMERS_DURATION_S_DEFAULT = 20.0
CONSUMERS_MESSAGES_MAX = 1_000_000
PRODUCE_TOPIC = "bench-consumers-produce"
IDLE_TOPIC = "bench-consumers-idle"
# Twice the brokers: with leaders spread evenly, the broker leads some of them.
IDLE_PARTITIONS = 2 * BROKERS
CHANNELS_MAX = 8
LONG_POLL_WAIT_MS = 5_000
# Never filled: nobody writes the idle topic.
LONG_POLL_MIN_BYTES = 1 << 20
LONG_POLL_MAX_BYTES = 1 << 20
# The gRPC deadline of a long poll: its wait plus this margin.
LONG_POLL_DEADLINE_MARGIN_MS = 2_000
LONG_POLL_BACKOFF_S = 0.1
LONG_POLL_BACKOFF_S_MAX = 1.0
# After every long poll has been issued, this long before the produce window opens.
LONG_POLL_SETTLE_S = 1.0
LONG_POLL_START_TIMEOUT_S = 30.0
WARMUP_MESSAGES = 20
SETUP_TIMEOUT_S = 60.0
# A pause after a failed write call, so that a fast failure does not spin.
WRITE_ERROR_PAUSE_S = 0.05
_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *wire.GRPC_OPTIONS,
    # Each channel its own connection: channels with equal arguments share one otherwise.
    ("grpc.use_local_subchannel_pool", 1),
]


def consumers_plan(args: argparse.Namespace) -> tuple[int, float, int | None]:
    """(long polls, produce window in s, produce calls or None) from the flags."""
    count = CONSUMERS_COUNT_DEFAULT if args.count is None else int(args.count)
    if not 1 <= count <= CONSUMERS_COUNT_MAX:
        raise ValueError(f"--count must be in [1, {CONSUMERS_COUNT_MAX}] long-polling fetches")
    duration_s = CONSUMERS_DURATION_S_DEFAULT if args.duration is None else float(args.duration)
    if not 0 < duration_s <= RUN_DURATION_S_MAX:
        raise ValueError(f"--duration must be in (0, {RUN_DURATION_S_MAX:.0f}] s")
    messages = None if args.messages is None else int(args.messages)
    if messages is not None and not 1 <= messages <= CONSUMERS_MESSAGES_MAX:
        raise ValueError(f"--messages must be in [1, {CONSUMERS_MESSAGES_MAX}]")
    return count, duration_s, messages


def channel_count(count: int) -> int:
    """A handful of channels: one per 128 long polls, at least 1, at most CHANNELS_MAX."""
    return max(1, min(CHANNELS_MAX, -(-count // 128)))


# ---------------------------------------------------------------- the long polls


@dataclass
class LongPollStats:
    """Counted on the pollers' event loop thread; read by the main thread (ints and a
    Counter: a momentarily stale read is fine for progress, exact after the join)."""

    issued: int = 0
    started_tasks: int = 0
    in_flight: int = 0
    completed: int = 0
    waits_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> Result:
        """The counts so far (at the end of the produce window: the shutdown's cancelled
        calls are not the long polls' errors)."""
        waits = sorted(self.waits_s)
        return {
            "issued": self.issued,
            "completed": self.completed,
            "in_flight": self.in_flight,
            "errors": dict(self.errors),
            "completed_wait_ms_median": (
                round(statistics.median(waits) * 1000, 1) if waits else None
            ),
        }


class LongPollers:
    """`count` asyncio tasks re-issuing a long-poll Fetch, on a loop in its own thread.
    `start()` then `stop()` (cancels every call, closes the channels, joins)."""

    def __init__(self, endpoint: str, partitions: list[tuple[str, int, int]], count: int) -> None:
        assert partitions and count >= 1
        self.endpoint = endpoint
        self.count = count
        self.channels = channel_count(count)
        self.stats = LongPollStats()
        self._partitions = partitions
        self._loop = asyncio.new_event_loop()
        # Created here, used on the loop's thread only (asyncio.Event binds to a loop on
        # first use), set from the main thread through call_soon_threadsafe.
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="bench-long-polls", daemon=True)
        self._deadline_s = time.monotonic() + RUN_DURATION_S_MAX

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Idempotent; bounded by the join timeout."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=LONG_POLL_DEADLINE_MARGIN_MS / 1000 + 10)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        channels = [
            grpc.aio.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS)
            for _ in range(self.channels)
        ]
        stubs: list[Any] = [broker_pb2_grpc.BrokerServiceStub(c) for c in channels]
        tasks = [
            asyncio.create_task(
                self._poll(stubs[i % len(stubs)], self._partitions[i % len(self._partitions)])
            )
            for i in range(self.count)
        ]
        try:
            stop_wait = asyncio.create_task(self._stop.wait())
            remaining_s = max(0.0, self._deadline_s - time.monotonic())
            await asyncio.wait([stop_wait], timeout=remaining_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close(None)

    async def _poll(self, stub: Any, partition: tuple[str, int, int]) -> None:
        topic, index, offset = partition
        request = protocol.fetch_request(
            [(topic, index, offset, -1)],
            max_wait_ms=LONG_POLL_WAIT_MS,
            min_bytes=LONG_POLL_MIN_BYTES,
            max_bytes=LONG_POLL_MAX_BYTES,
            partition_max_bytes=LONG_POLL_MAX_BYTES,
        )
        timeout_s = (LONG_POLL_WAIT_MS + LONG_POLL_DEADLINE_MARGIN_MS) / 1000
        stats = self.stats
        stats.started_tasks += 1
        backoff_s = LONG_POLL_BACKOFF_S
        # Bound: the stop event (and the run's deadline); each call its gRPC deadline.
        while not self._stop.is_set() and time.monotonic() < self._deadline_s:
            started_s = time.perf_counter()
            stats.issued += 1
            stats.in_flight += 1
            try:
                response = await stub.Fetch(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as e:
                stats.errors[e.code().name] += 1
            else:
                errors = [r.error for r in protocol.fetch_results(response) if r.error]
                if not errors:
                    stats.completed += 1
                    stats.waits_s.append(time.perf_counter() - started_s)
                    backoff_s = LONG_POLL_BACKOFF_S
                    continue
                stats.errors[errors[0].code.name] += 1
            finally:
                stats.in_flight -= 1
            # After an error: back off before the next call.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=backoff_s)
            backoff_s = min(LONG_POLL_BACKOFF_S_MAX, backoff_s * 2)


# ---------------------------------------------------------------- the writer


@dataclass
class _Produced:
    latencies_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    first_failure: str | None = None


def _produce(
    writer: Writer, duration_s: float, messages: int | None, on_ack: Callable[[], None]
) -> _Produced:
    """One message per sync call, back to back, for `duration_s` (or `messages` calls)."""
    produced = _Produced()
    deadline = time.monotonic() + duration_s
    calls = messages if messages is not None else CONSUMERS_MESSAGES_MAX
    # Bound: `calls` calls and `duration_s` (each call its write timeout).
    for i in range(calls):
        if messages is None and time.monotonic() >= deadline:
            break
        sent_s = time.perf_counter()
        try:
            writer.write_messages(Message(b"consumers %d" % i, partition=0))
        except WriteError as e:
            cause = e.errors[0][1] if e.errors else e
            produced.failures[type(cause).__name__] += 1
            produced.first_failure = produced.first_failure or str(cause)
            time.sleep(WRITE_ERROR_PAUSE_S)
            continue
        produced.latencies_s.append(time.perf_counter() - sent_s)
        on_ack()
    return produced


# ---------------------------------------------------------------- the scenario


def _setup(admin: Admin) -> tuple[int, list[tuple[str, int, int]]]:
    """Both topics created and in sync: (the broker leading the produce partition, the
    idle partitions it leads with their end offsets)."""
    create_topic(admin, PRODUCE_TOPIC, 1)
    create_topic(admin, IDLE_TOPIC, IDLE_PARTITIONS)
    produce = wait_full_isr(admin, PRODUCE_TOPIC, timeout_s=SETUP_TIMEOUT_S)
    idle = wait_full_isr(admin, IDLE_TOPIC, timeout_s=SETUP_TIMEOUT_S)
    leader = produce.partitions[0].leader
    led = [i for i, p in enumerate(idle.partitions) if p.leader == leader]
    if not led:
        raise RaftmqError(
            ErrorCode.LEADER_NOT_AVAILABLE,
            f"broker {leader} leads {PRODUCE_TOPIC}-0 but none of the {IDLE_PARTITIONS} "
            f"partitions of {IDLE_TOPIC} (leaders: {[p.leader for p in idle.partitions]})",
        )
    ends = admin.list_offsets(IDLE_TOPIC, LastOffset, partitions=led)
    return leader, [(IDLE_TOPIC, i, ends[i]) for i in led]


def run(args: argparse.Namespace) -> Result:
    count, duration_s, messages = consumers_plan(args)
    total = messages if messages is not None else round(duration_s)
    bar = ProgressBar(
        "consumers", total, "msgs" if messages is not None else "s", enabled=progress_wanted(args)
    )
    meter = CpuMeter()
    started_s = time.perf_counter()
    cluster = BenchCluster("consumers", keep_data=bool(args.keep_data))
    watcher: ClusterWatcher | None = None
    pollers: LongPollers | None = None
    produced = _Produced()
    polls: Result | None = None
    node_cpu: dict[str, float | None] = {}
    node_runqueue: dict[str, float | None] = {}
    result: Result = {
        "scenario": "consumers",
        "count": count,
        "data_dir": str(cluster.data_dir) if args.keep_data else None,
        "error": None,
    }
    produce_s = 0.0
    leader = -1
    try:
        with cluster, cluster.admin() as admin:
            leader, idle_partitions = _setup(admin)
            others = [cluster.endpoint(b) for b in range(1, BROKERS + 1) if b != leader]
            watcher = ClusterWatcher(
                [*others, cluster.endpoint(leader)],
                topics=[PRODUCE_TOPIC, IDLE_TOPIC],
                duration_s_max=RUN_DURATION_S_MAX,
            ).start()
            try:
                with Writer(
                    cluster.bootstrap,
                    topic=PRODUCE_TOPIC,
                    required_acks=RequireAll,
                    linger_ms=0,
                    write_timeout_ms=timeout_ms_of(args),
                ) as writer:
                    for _ in range(WARMUP_MESSAGES):
                        writer.write_messages(Message(b"warm-up", partition=0))
                    pollers = LongPollers(cluster.endpoint(leader), idle_partitions, count)
                    pollers.start()
                    _wait_issued(pollers)
                    time.sleep(LONG_POLL_SETTLE_S)
                    cpu_meter = ProcessCpuMeter(cluster.pids())
                    window_started_s = time.perf_counter()
                    ticker = _Ticker(bar, messages is None)
                    try:
                        on_ack = bar.advance if messages is not None else _nothing
                        produced = _produce(writer, duration_s, messages, on_ack)
                    finally:
                        ticker.stop()
                    produce_s = time.perf_counter() - window_started_s
                    usage = cpu_meter.usage()
                    node_cpu, node_runqueue = usage.cores, usage.runqueue
                    polls = pollers.stats.snapshot()
            finally:
                # Before the cluster stops: its end is no long poll's error.
                if pollers is not None:
                    pollers.stop()
                watcher.stop()
    except (TimeoutError, RaftmqError) as e:
        result["error"] = f"{type(e).__name__}: {e}\n{cluster.tail_logs(5)}"
    finally:
        if pollers is not None:
            pollers.stop()
        if watcher is not None:
            watcher.stop()
        bar.close()
    return _result(
        result,
        meter=meter,
        watcher=watcher,
        pollers=pollers,
        polls=polls,
        produced=produced,
        node_cpu=node_cpu,
        node_runqueue=node_runqueue,
        leader=leader,
        produce_s=produce_s,
        started_s=started_s,
    )


class _Ticker:
    """Advances a seconds progress bar once a second while the writer runs."""

    def __init__(self, bar: ProgressBar, enabled: bool) -> None:
        self._bar = bar
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-ticker", daemon=True)
        if enabled:
            self._thread.start()

    def _run(self) -> None:
        # Bound: the stop event, and the bar's total.
        for _ in range(self._bar.total):
            if self._stop.wait(1.0):
                return
            self._bar.advance()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


def _nothing() -> None:
    pass


def _wait_issued(pollers: LongPollers) -> None:
    """Until every long poll was issued once (or the start timeout)."""
    deadline = time.monotonic() + LONG_POLL_START_TIMEOUT_S
    # Bound: LONG_POLL_START_TIMEOUT_S.
    while pollers.stats.started_tasks < pollers.count and time.monotonic() < deadline:
        time.sleep(0.05)


def _result(
    result: Result,
    *,
    meter: CpuMeter,
    watcher: ClusterWatcher | None,
    pollers: LongPollers | None,
    polls: Result | None,
    produced: _Produced,
    node_cpu: dict[str, float | None],
    node_runqueue: dict[str, float | None],
    leader: int,
    produce_s: float,
    started_s: float,
) -> Result:
    cpu = meter.stop()
    if polls is None:  # the run ended before the produce window did
        polls = (pollers.stats if pollers is not None else LongPollStats()).snapshot()
    acked = len(produced.latencies_s)
    fencings = watcher.fencing if watcher is not None else None
    partitions = watcher.partitions if watcher is not None else None
    result.update(
        {
            "broker": leader,
            "channels": pollers.channels if pollers is not None else 0,
            "long_poll_wait_ms": LONG_POLL_WAIT_MS,
            "long_poll_min_bytes": LONG_POLL_MIN_BYTES,
            "long_polls": polls,
            "produce_s": round(produce_s, 3),
            "messages": acked,
            "msgs_per_s": round(acked / produce_s, 1) if produce_s > 0 else 0.0,
            "write_failures": dict(produced.failures),
            "latency_ms": headline_latency_ms(produced.latencies_s),
            "produce_latency": latency_summary_ms(produced.latencies_s, LATENCY_QUANTILES_FINE),
            "isr_shrinks": partitions.shrink_count if partitions is not None else None,
            "isr_shrink_events": (
                [shrink_json(s, started_s) for s in partitions.shrinks[:20]]
                if partitions is not None
                else []
            ),
            "false_fencings": fencings.false_count if fencings is not None else None,
            "false_fencing_events": (
                [fencing_json(f, started_s) for f in fencings.fencings[:20]]
                if fencings is not None
                else []
            ),
            "node_cpu_pct": {
                n: None if c is None else round(c * 100, 1) for n, c in node_cpu.items()
            },
            "node_runqueue_wait_pct": {
                n: None if w is None else round(w * 100, 2) for n, w in node_runqueue.items()
            },
            "elapsed_s": round(time.perf_counter() - started_s, 1),
        }
    )
    if result["error"] is None:
        if produced.failures:
            result["error"] = (
                f"{sum(produced.failures.values())} write call(s) failed "
                f"({dict(produced.failures)}); first: {produced.first_failure}"
            )
        elif acked == 0:
            result["error"] = "no write was acknowledged"
    cpu["limited_by"] = limited_by(result, node_cpu, node_runqueue)
    result["cpu"] = cpu
    return result


# The broker under the long polls using this share of a core or more is CPU-bound.
BROKER_CPU_SATURATED_CORES = 0.85
# A node whose event loop waited this share of the window or more for a CPU was slowed by
# the machine's other processes, not by its own work.
RUNQUEUE_CONTENDED = 0.02


def limited_by(
    result: Result, node_cpu: dict[str, float | None], node_runqueue: dict[str, float | None]
) -> str:
    """The broker under the long polls: CPU-bound; its cluster contending for the cores
    (a node's event loop waiting in the run queue); or waiting (what it refused, what
    failed), from the run's own counts."""
    name = f"broker-{result['broker']}"
    cores = node_cpu.get(name)
    polls = result["long_polls"]
    usage = f"{name} (the long polls' broker, leader of the produce partition) used {pct(cores)}"
    facts: list[str] = []
    if polls["errors"]:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(polls["errors"].items()))
        facts.append(
            f"long polls failed {sum(polls['errors'].values())} time(s) ({codes}; "
            "RESOURCE_EXHAUSTED: the broker's cap on concurrent calls, DEADLINE_EXCEEDED: "
            "not answered in time)"
        )
    if result["write_failures"]:
        facts.append(f"write calls failed: {result['write_failures']}")
    if result["isr_shrinks"]:
        facts.append(f"{result['isr_shrinks']} ISR shrink(s) seen")
    contended = sorted(
        ((w, n) for n, w in node_runqueue.items() if w is not None and w >= RUNQUEUE_CONTENDED),
        reverse=True,
    )
    if cores is not None and cores >= BROKER_CPU_SATURATED_CORES:
        verdict = f"{name}'s CPU: {usage} of a core"
    elif contended:
        waits = ", ".join(f"{n} {w * 100:.1f} %" for w, n in contended)
        verdict = (
            f"CPU contention: event loops waited for a CPU ({waits} of the window) while "
            f"{usage} of a core; the long polls expire in step (each waits "
            f"{LONG_POLL_WAIT_MS} ms and is issued again at once), so their answers come in "
            "bursts that take the cores from the writes' round trips"
        )
    elif facts:
        verdict = f"waiting, not CPU: {usage} of a core"
    else:
        verdict = (
            f"no CPU saturated ({usage} of a core): bound by acks=all round trips, one "
            "write in flight"
        )
    return "; ".join([verdict, *facts])


def render(result: Result) -> str:
    polls = result.get("long_polls") or {}
    lines = [
        f"bench consumers: own cluster ({BROKERS} brokers, RF 3, min.insync.replicas=2), "
        f"{result['count']} long-polling fetches (min_bytes {result.get('long_poll_min_bytes')}, "
        f"max_wait {result.get('long_poll_wait_ms')} ms, over {result.get('channels')} "
        f"channels) at broker {result.get('broker')}, while a one-in-flight acks=all Writer "
        f"produces to {PRODUCE_TOPIC}-0 (led by that broker) for "
        f"{result.get('produce_s', 0):.1f} s",
        latency_table(
            "PRODUCE", result.get("produce_latency", {"count": 0}), LATENCY_QUANTILES_FINE
        ),
        fmt.table(
            ["LONG POLLS", "ISSUED", "COMPLETED", "IN FLIGHT", "MEDIAN WAIT MS", "ERRORS"],
            [
                [
                    result["count"],
                    polls.get("issued", 0),
                    polls.get("completed", 0),
                    polls.get("in_flight", 0),
                    "-"
                    if polls.get("completed_wait_ms_median") is None
                    else f"{polls['completed_wait_ms_median']:.0f}",
                    ", ".join(f"{k} {v}" for k, v in sorted(polls.get("errors", {}).items()))
                    or "none",
                ]
            ],
        ),
        f"ISR shrinks: {result.get('isr_shrinks')}; false fencings: "
        f"{result.get('false_fencings')}; write failures: {result.get('write_failures') or 'none'}",
    ]
    node_cpu = result.get("node_cpu_pct") or {}
    if node_cpu:
        lines.append(
            "CPU over the produce window (% of a core): "
            + ", ".join(
                f"{n} {'-' if v is None else f'{v:.0f}'}" for n, v in sorted(node_cpu.items())
            )
        )
    runqueue = result.get("node_runqueue_wait_pct") or {}
    if any(v is not None for v in runqueue.values()):
        lines.append(
            "waiting for a CPU over the produce window (% of the time; main thread, a broker's "
            "event loop): "
            + ", ".join(
                f"{n} {'-' if v is None else f'{v:.1f}'}" for n, v in sorted(runqueue.items())
            )
        )
    lines += footer_lines(result)
    return "\n".join(lines)
