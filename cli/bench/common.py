"""What every `raftmq bench` scenario shares: percentiles and latency summaries, the CPU
meter and its "what limited it" line, the bench topic, payloads, and table rendering.

Units: MiB = 2**20 bytes. "Value" bytes count message values only; "wire" bytes count
whole encoded batches (header and per-record framing included). The JSON field
`mb_per_s` is MiB of values per second, as Kafka's perf tools count a MB.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from raftmq.client.admin import Admin
from raftmq.client.brokers import parse_brokers
from raftmq.client.writer import RequireAll, RequireNone, RequireOne
from raftmq.errors import ErrorCode, RaftmqError, TopicAlreadyExistsError
from raftmq.metadata import NO_LEADER, TopicRecord

from .. import format as fmt

Result = dict[str, Any]

MIB = 1 << 20
ACKS_BY_NAME = {"all": RequireAll, "1": RequireOne, "0": RequireNone}
DEFAULT_TIMEOUT_MS = 15_000
# Any scenario stops after this long and reports what it measured so far.
RUN_DURATION_S_MAX = 600.0
TOPIC_READY_TIMEOUT_S = 30.0
TOPIC_READY_POLL_S = 0.1
INFLIGHT_MAX = 256
# A run's values are this many distinct ones at most (more than a batch holds), of at most
# this many bytes together: 200k x 16 KiB values must not need 3 GiB.
DISTINCT_VALUES_MAX = 10_000
DISTINCT_VALUE_BYTES_MAX = 16 * MIB

# A client using this share of one core or more is the limit (GIL-bound Python).
CLIENT_CPU_SATURATED_CORES = 0.85
MACHINE_CPU_SATURATED_PCT = 90.0
# Steal time (the hypervisor running another guest while ours wanted a CPU) from this share
# of the run's CPU time on: the figures are the host's as much as ours, and the hint says so.
MACHINE_STEAL_NOTABLE_PCT = 5.0
LATENCY_QUANTILES = (50.0, 95.0, 99.0)
LATENCY_QUANTILES_FINE = (50.0, 95.0, 99.0, 99.9)
# The quantiles of the JSON line's `latency_ms`, by their key there.
HEADLINE_QUANTILES = {"p50": 50.0, "p99": 99.0, "p999": 99.9}
WAITING_GENERIC = "round trips and server-side waits"


# ---------------------------------------------------------------- percentiles


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence; q in [0, 100].

    Nearest rank (no interpolation) so that every reported figure was actually observed.
    `q` is read as the decimal it is written as: in binary floating point 99.9 / 100 *
    1000 is a hair above 999, which would make p99.9 of 1000 samples their maximum.
    """
    assert sorted_values, "percentile of no samples"
    assert 0.0 <= q <= 100.0, q
    rank = math.ceil(Fraction(str(q)) * len(sorted_values) / 100)
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


def headline_latency_ms(samples_s: Sequence[float]) -> dict[str, float] | None:
    """The JSON line's `latency_ms`: {p50, p99, p999} in ms; None without samples."""
    if not samples_s:
        return None
    ordered = sorted(samples_s)
    return {key: round(percentile(ordered, q) * 1000, 3) for key, q in HEADLINE_QUANTILES.items()}


# ---------------------------------------------------------------- CPU accounting


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


def steal_note(steal_pct: float | None) -> str | None:
    """The footer's warning when the hypervisor took a notable share of the CPUs (every
    scenario's, whatever its own "limited by" verdict), else None."""
    if steal_pct is None or steal_pct < MACHINE_STEAL_NOTABLE_PCT:
        return None
    return (
        f"note: the hypervisor took {steal_pct:.0f}% of the CPUs' time (steal): figures from "
        "this run are not comparable with a quiet machine's"
    )


def produce_waiting(acks: int) -> str:
    """What a producer waits on when no CPU is saturated, for `limit_hint`."""
    if acks == RequireAll:
        return "round trips, the leader's flush and the followers' fetches (acks=all)"
    if acks == RequireOne:
        return "round trips and the leader's append and flush (acks=1)"
    return "round trips (acks=0: the broker still answers each request)"


def _machine_cpu_ticks() -> tuple[int, int, int] | None:
    """(busy, total, steal) jiffies since boot over all CPUs, from /proc/stat; None off
    Linux. Steal (time the hypervisor ran something else while a virtual CPU wanted to run)
    counts as busy: those CPUs were not available to us."""
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
    return sum(ticks) - idle, sum(ticks), ticks[7]


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
        machine_steal_pct: float | None = None
        end = _machine_cpu_ticks()
        if self._machine is not None and end is not None and end[1] > self._machine[1]:
            total = end[1] - self._machine[1]
            machine_busy_pct = round(100.0 * (end[0] - self._machine[0]) / total, 1)
            machine_steal_pct = round(100.0 * (end[2] - self._machine[2]) / total, 1)
        client_cores = round(process_s / wall_s, 3)
        hint = limit_hint(client_cores, machine_busy_pct, cpus, waiting=waiting)
        return {
            "client_cpu_s": round(process_s, 3),
            "client_cpu_cores": client_cores,
            "machine_cpu_busy_pct": machine_busy_pct,
            "machine_cpu_steal_pct": machine_steal_pct,
            "cpus": cpus,
            "limited_by": hint,
        }


# ---------------------------------------------------------------- arguments and payloads


def brokers_of(args: argparse.Namespace) -> list[str]:
    return parse_brokers(str(args.bootstrap))


def timeout_ms_of(args: argparse.Namespace) -> int:
    timeout_ms = getattr(args, "timeout_ms", None) or DEFAULT_TIMEOUT_MS
    if timeout_ms < 1:
        raise ValueError("--timeout-ms must be positive")
    return int(timeout_ms)


def check_workload(args: argparse.Namespace) -> None:
    """The flags produce, consume and latency share."""
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


def make_values(count: int, size: int, *, seed: int = 0) -> list[bytes]:
    """`count` independent random values of `size` bytes, deterministic for a seed.

    Random and unrelated to each other, so that no compression or deduplication could
    flatter a figure: a run with --compression measures the codec's cost, not a ratio
    (`raftmq bench codec` shows ratios on JSON-like values).
    """
    assert count >= 0, count
    assert size >= 0, size
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(count)]


def distinct_values(messages: int, size: int) -> int:
    """How many distinct values a run cycles through: enough that no batch repeats one,
    few enough to stay within DISTINCT_VALUE_BYTES_MAX."""
    return max(1, min(messages, DISTINCT_VALUES_MAX, DISTINCT_VALUE_BYTES_MAX // max(1, size)))


def chunk_sizes(messages: int, per_chunk: int) -> list[int]:
    """Message counts of the chunks that carry `messages`: full ones, then the rest."""
    assert messages >= 0 and per_chunk >= 1
    full, rest = divmod(messages, per_chunk)
    return [per_chunk] * full + ([rest] if rest else [])


# ---------------------------------------------------------------- the bench topic


def ensure_topic(args: argparse.Namespace) -> tuple[TopicRecord, bool]:
    """Create the topic unless it exists (min.insync.replicas = min(2, RF)), then wait
    until every partition has a leader and enough in-sync replicas. Returns (the topic,
    created?)."""
    rf = args.replication_factor
    with Admin(brokers_of(args), timeout_ms=timeout_ms_of(args)) as admin:
        try:
            admin.create_topic(
                args.topic,
                partitions=args.partitions,
                replication_factor=rf,
                configs={"min.insync.replicas": str(min(2, rf))},
            )
            created = True
        except TopicAlreadyExistsError:
            created = False
        return _wait_topic_ready(admin, args.topic), created


def _not_ready(topic: TopicRecord) -> list[int]:
    """Partitions without a leader or with fewer in-sync replicas than acks=all needs."""
    min_isr = topic.config.min_insync_replicas
    return [
        i
        for i, p in enumerate(topic.partitions)
        if p.leader == NO_LEADER or len(p.isr) < min(min_isr, len(p.ar))
    ]


def _wait_topic_ready(admin: Admin, name: str) -> TopicRecord:
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    waiting_for = "its metadata"
    # Bound: TOPIC_READY_TIMEOUT_S.
    while time.monotonic() < deadline:
        try:
            [topic] = admin.describe_topics(name)
        except RaftmqError as e:
            waiting_for = str(e)
        else:
            not_ready = _not_ready(topic)
            if not not_ready:
                return topic
            waiting_for = (
                f"a leader and {topic.config.min_insync_replicas} in-sync replicas on "
                f"partitions {not_ready}"
            )
        time.sleep(TOPIC_READY_POLL_S)
    raise RaftmqError(
        ErrorCode.LEADER_NOT_AVAILABLE,
        f"topic {name!r} not ready after {TOPIC_READY_TIMEOUT_S:.0f} s: {waiting_for}",
    )


# ---------------------------------------------------------------- rendering


def _ms(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "-" if value is None else f"{value:.2f}"


def latency_table(title: str, summary: dict[str, Any], quantiles: Sequence[float]) -> str:
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


def throughput_table(result: Result, first: dict[str, Any]) -> str:
    """MESSAGES, the columns in `first`, then SECONDS, MSGS/S, MIB/S and, when measured,
    WIRE MIB/S."""
    wire = "wire_mib_per_s" in result
    headers = ["MESSAGES", *first, "SECONDS", "MSGS/S", "MIB/S", *(["WIRE MIB/S"] if wire else [])]
    row = [
        result["messages"],
        *first.values(),
        f"{result['elapsed_s']:.2f}",
        f"{result['msgs_per_s']:,.0f}",
        f"{result['mb_per_s']:.2f}",
        *([f"{result['wire_mib_per_s']:.2f}"] if wire else []),
    ]
    return fmt.table(headers, [row])


def footer_lines(result: Result) -> list[str]:
    """The CPU line, the "limited by" line and the error, if any, under every table."""
    cpu = result["cpu"]
    machine = cpu["machine_cpu_busy_pct"]
    steal = cpu.get("machine_cpu_steal_pct")
    lines = [
        f"client CPU: {cpu['client_cpu_cores']:.2f} cores (process CPU s per wall s); machine: "
        + ("n/a" if machine is None else f"{machine:.0f}% busy over {cpu['cpus']} cores")
        + ("" if steal is None else f", {steal:.0f}% of the time stolen by the hypervisor"),
        f"limited by: {cpu['limited_by']}",
    ]
    note = steal_note(steal)
    if note is not None:
        lines.append(note)
    if result.get("error"):
        lines.append(f"error: {result['error']}")
    return lines


def rates(
    messages: int, value_bytes: int, elapsed_s: float, *, wire_bytes: int | None = None
) -> Result:
    """The throughput fields of a result (elapsed_s > 0); wire bytes when measured."""
    fields: Result = {
        "elapsed_s": round(elapsed_s, 3),
        "msgs_per_s": round(messages / elapsed_s, 1),
        "mb_per_s": round(value_bytes / MIB / elapsed_s, 3),
    }
    if wire_bytes is not None:
        fields["wire_mib_per_s"] = round(wire_bytes / MIB / elapsed_s, 3)
    return fields
