"""`raftmq bench partitions --count N`: one topic of N partitions (RF 3) on 3 brokers.

Starts its own cluster (`BenchCluster`: `raftmq up` defaults), then:

1. creates one topic of `--count` partitions, RF 3, min.insync.replicas=2, in one
   CreateTopic call, and times it until every partition has a leader and its whole AR in
   the ISR (polling `Admin.describe_topics`), and then until every leader serves its
   partitions (`Admin.list_offsets` answered by the leaders without error: a new topic's
   ISR is its AR in the metadata at once, so the metadata alone would say little). A
   refused or failed creation is the scenario's error, with the controller's own message:
   one topic that big is what is measured, never split into smaller ones;
2. with nothing written and nobody polling, measures each broker's CPU over `--duration`
   seconds (default `IDLE_WINDOW_S`; /proc/PID/stat utime + stime, % of one core) and its
   resident memory (/proc/PID/status VmRSS), and the controllers' for comparison;
3. writes one message to every partition (one async `Writer` call, acks=all, explicit
   partitions) and reports how many were acknowledged.

Fencings (`false_fencings`: nothing is killed here, so every fencing is a false one) are
watched by polling `Admin.cluster_status()` every `WATCH_INTERVAL_S` during phases 1 and
3, not during the idle window (a poll there would be the CPU being measured); a fencing
that ends within the idle window is seen only if the broker came back as a new
incarnation. The issue's targets (created <= 30 s, idle broker CPU <= 5 %, RSS <= 500 MB,
every partition accepts a write) are printed beside the figures, never asserted. Every
process is stopped by PID in a `finally` (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from raftmq.client.admin import Admin, LastOffset
from raftmq.client.writer import RequireAll, WriteError, Writer
from raftmq.errors import ErrorCode, OutcomeUnknownError, RaftmqError
from raftmq.message import Message
from raftmq.metadata import NO_LEADER, TopicRecord

from .. import format as fmt
from .cluster import BROKERS, BenchCluster, partitions_not_full
from .common import MIB, CpuMeter, Result, footer_lines
from .process_stats import ProcessCpuMeter, busiest, pct, rss_bytes
from .progress import ProgressBar, progress_wanted
from .watcher import ClusterWatcher, fencing_json

PARTITIONS_COUNT_DEFAULT = 3_000
PARTITIONS_COUNT_MAX = 100_000
PARTITIONS_TOPIC = "bench-partitions"
# The CreateTopic call may take long for a big topic: it is given this long, and an
# unknown outcome (a timeout) is followed by polling, which shows whether it happened.
CREATE_TIMEOUT_MS = 120_000
READY_TIMEOUT_S = 300.0
READY_POLL_S = 0.25
READY_CALL_TIMEOUT_MS = 10_000
IDLE_WINDOW_S = 10.0
IDLE_WINDOW_S_MAX = 300.0
# Before the idle window: let the last ISR expansions and the metadata they cause settle.
IDLE_SETTLE_S = 2.0
WRITE_TIMEOUT_MS = 60_000
WATCH_INTERVAL_S = 0.5
TARGETS = {
    "created_s_max": 30.0,
    "idle_cpu_pct_max": 5.0,
    "rss_mib_max": 500.0,
}


def partitions_plan(args: argparse.Namespace) -> tuple[int, float]:
    """(partitions, idle window in s) from the flags; ValueError on a bad one."""
    count = PARTITIONS_COUNT_DEFAULT if args.count is None else int(args.count)
    if not 1 <= count <= PARTITIONS_COUNT_MAX:
        raise ValueError(f"--count must be in [1, {PARTITIONS_COUNT_MAX}] partitions")
    idle_s = IDLE_WINDOW_S if args.duration is None else float(args.duration)
    if not 1 <= idle_s <= IDLE_WINDOW_S_MAX:
        raise ValueError(f"--duration (the idle window) must be in [1, {IDLE_WINDOW_S_MAX:.0f}] s")
    return count, idle_s


def readiness(topic: TopicRecord) -> tuple[int, int]:
    """(partitions with a leader, partitions with a leader and a full ISR)."""
    led = sum(1 for p in topic.partitions if p.leader != NO_LEADER)
    return led, len(topic.partitions) - len(partitions_not_full(topic))


class CreateRefusedError(Exception):
    """The controller answered the CreateTopic with an error: the scenario's error."""


# Answers that leave the creation's outcome open: the request (with its request id) may
# still be applied, and the polling that follows shows whether it was.
_OUTCOME_OPEN = frozenset(
    {
        ErrorCode.REQUEST_TIMED_OUT,
        ErrorCode.UNKNOWN_SERVER_ERROR,
        ErrorCode.CONTROLLER_UNAVAILABLE,
        ErrorCode.BROKER_NOT_AVAILABLE,
        ErrorCode.NOT_CONTROLLER,
    }
)


def _create(admin: Admin, count: int) -> tuple[float, str | None]:
    """CreateTopic; (seconds the call took, None or why its outcome is open). Raises
    CreateRefusedError with the controller's message when it refused."""
    started_s = time.perf_counter()
    try:
        admin.create_topic(
            PARTITIONS_TOPIC,
            partitions=count,
            replication_factor=BROKERS,
            configs={"min.insync.replicas": "2"},
        )
    except RaftmqError as e:
        if isinstance(e, OutcomeUnknownError) or e.code in _OUTCOME_OPEN:
            return time.perf_counter() - started_s, f"{e.code.name}: {e.message}"
        raise CreateRefusedError(
            f"the controller cannot create one topic of {count} partitions (RF {BROKERS}): "
            f"{e.code.name}: {e.message}"
        ) from e
    return time.perf_counter() - started_s, None


def _wait_ready(admin: Admin, count: int, started_s: float, bar: ProgressBar) -> Result:
    """Poll until the metadata shows every partition with a leader and a full ISR, then
    until every leader serves its partitions (ListOffsets answered without error: the
    broker has applied the metadata and opened the log): the readiness figures, seconds
    from `started_s`."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    figures: Result = {"all_led_s": None, "metadata_ready_s": None, "ready_s": None}
    last: tuple[int, int] = (0, 0)
    last_error: str | None = None
    # Bound: READY_TIMEOUT_S.
    while time.monotonic() < deadline and figures["metadata_ready_s"] is None:
        try:
            [topic] = admin.describe_topics(PARTITIONS_TOPIC)
        except RaftmqError as e:
            last_error = str(e)
        else:
            led, full = readiness(topic)
            elapsed_s = round(time.perf_counter() - started_s, 3)
            if led == count and figures["all_led_s"] is None:
                figures["all_led_s"] = elapsed_s
            bar.advance(full - last[1])
            last = (led, full)
            if full == count:
                figures["metadata_ready_s"] = elapsed_s
                break
        time.sleep(READY_POLL_S)
    if figures["metadata_ready_s"] is None:
        figures["error"] = (
            f"after {READY_TIMEOUT_S:.0f} s, {last[0]} of {count} partitions had a leader and "
            f"{last[1]} a full ISR" + (f" (last error: {last_error})" if last_error else "")
        )
        return figures
    # Bound: READY_TIMEOUT_S.
    while time.monotonic() < deadline:
        try:
            admin.list_offsets(PARTITIONS_TOPIC, LastOffset)
        except RaftmqError as e:
            last_error = str(e)
        else:
            figures["ready_s"] = round(time.perf_counter() - started_s, 3)
            figures["error"] = None
            return figures
        time.sleep(READY_POLL_S)
    figures["error"] = (
        f"after {READY_TIMEOUT_S:.0f} s, not every leader served its partitions "
        f"(ListOffsets: {last_error})"
    )
    return figures


def _write_each(brokers: list[str], count: int) -> Result:
    """One message to every partition, in one Writer call: how many were acknowledged."""
    started_s = time.perf_counter()
    failures: dict[str, int] = {}
    acknowledged = count
    with Writer(
        brokers,
        topic=PARTITIONS_TOPIC,
        required_acks=RequireAll,
        write_timeout_ms=WRITE_TIMEOUT_MS,
        async_=True,
    ) as writer:
        future = writer.write_messages(
            *(Message(f"partition {p}".encode(), partition=p) for p in range(count))
        )
        try:
            future.result(timeout=WRITE_TIMEOUT_MS / 1000 + 30)
        except WriteError as e:
            acknowledged = count - len(e.errors)
            for _, error in e.errors:
                failures[type(error).__name__] = failures.get(type(error).__name__, 0) + 1
        except TimeoutError:
            acknowledged = 0
            failures["no outcome"] = count
    return {
        "acknowledged": acknowledged,
        "failed": count - acknowledged,
        "failures": failures,
        "write_s": round(time.perf_counter() - started_s, 3),
    }


def _idle(cluster: BenchCluster, window_s: float) -> Result:
    """CPU of every node over `window_s`, then RSS."""
    pids = cluster.pids()
    meter = ProcessCpuMeter(pids)
    time.sleep(window_s)
    cores = meter.stop()
    rss = {name: (rss_bytes(pid) if pid is not None else None) for name, pid in pids.items()}
    return {
        "window_s": window_s,
        "cpu_pct": {n: None if c is None else round(c * 100, 2) for n, c in cores.items()},
        "rss_mib": {n: None if b is None else round(b / MIB, 1) for n, b in rss.items()},
    }


def run(args: argparse.Namespace) -> Result:
    count, idle_s = partitions_plan(args)
    bar = ProgressBar("partitions", count, "in sync", enabled=progress_wanted(args))
    meter = CpuMeter()
    cluster = BenchCluster("partitions", keep_data=bool(args.keep_data))
    watcher: ClusterWatcher | None = None
    result: Result = {
        "scenario": "partitions",
        "partitions": count,
        "brokers": BROKERS,
        "replication_factor": BROKERS,
        "targets": TARGETS,
        "create_call_s": None,
        "create_outcome_unknown": None,
        "created_s": None,
        "all_led_s": None,
        "metadata_ready_s": None,
        "creation_cpu_cores": None,
        "idle": None,
        "write": None,
        "false_fencings": None,
        "data_dir": str(cluster.data_dir) if args.keep_data else None,
        "error": None,
    }
    started_s = time.perf_counter()
    try:
        with cluster, cluster.admin(timeout_ms=CREATE_TIMEOUT_MS) as admin:
            watcher = ClusterWatcher(
                cluster.bootstrap,
                track_partitions=False,  # fencings only
                interval_s=WATCH_INTERVAL_S,
                duration_s_max=READY_TIMEOUT_S + idle_s + WRITE_TIMEOUT_MS / 1000 + 120,
            ).start()
            creation_meter = ProcessCpuMeter(cluster.pids())
            create_started_s = time.perf_counter()
            call_s, unknown = _create(admin, count)
            result["create_call_s"] = round(call_s, 3)
            result["create_outcome_unknown"] = unknown
            with cluster.admin(timeout_ms=READY_CALL_TIMEOUT_MS) as poller:
                ready = _wait_ready(poller, count, create_started_s, bar)
            result["creation_cpu_cores"] = creation_meter.stop()
            result["created_s"] = ready["ready_s"]
            result["all_led_s"] = ready["all_led_s"]
            result["metadata_ready_s"] = ready["metadata_ready_s"]
            bar.close()
            if ready["error"] is not None:
                result["error"] = ready["error"] + (f"; CreateTopic: {unknown}" if unknown else "")
            else:
                watcher.pause()
                time.sleep(IDLE_SETTLE_S)
                result["idle"] = _idle(cluster, idle_s)
                watcher.resume()
                result["write"] = write = _write_each(cluster.bootstrap, count)
                if write["failed"]:
                    result["error"] = (
                        f"{write['failed']} of {count} partitions did not acknowledge a "
                        f"write: {write['failures']}"
                    )
    except CreateRefusedError as e:
        result["error"] = str(e)
    except (TimeoutError, RaftmqError) as e:
        result["error"] = f"{type(e).__name__}: {e}\n{cluster.tail_logs(5)}"
    finally:
        bar.close()
        if watcher is not None:
            watcher.stop()
    return _finish(result, meter, watcher, started_s)


def _finish(
    result: Result, meter: CpuMeter, watcher: ClusterWatcher | None, started_s: float
) -> Result:
    cpu = meter.stop()
    if watcher is not None:
        watcher.stop()
        result["false_fencings"] = watcher.fencing.false_count
        result["false_fencing_events"] = [
            fencing_json(f, started_s) for f in watcher.fencing.fencings[:20]
        ]
    cpu["limited_by"] = limited_by(result)
    result["cpu"] = cpu
    result["elapsed_s"] = round(time.perf_counter() - started_s, 1)
    return result


def limited_by(result: Result) -> str:
    """Which process was busiest while the topic was created, and the idle figures."""
    parts: list[str] = []
    creation: dict[str, float | None] | None = result.get("creation_cpu_cores")
    if creation:
        top = busiest(creation)
        if top is not None:
            others = ", ".join(f"{n} {pct(c)}" for n, c in sorted(creation.items()) if n != top[0])
            parts.append(
                f"creation: {top[0]} was the busiest process ({pct(top[1])} of a core over "
                f"the {result['created_s'] or '?'} s; {others})"
            )
    idle: dict[str, Any] | None = result.get("idle")
    if idle:
        brokers = {n: v for n, v in idle["cpu_pct"].items() if n.startswith("broker")}
        known = [(v, n) for n, v in brokers.items() if v is not None]
        if known:
            cpu_pct, name = max(known)
            parts.append(
                f"idle: the busiest broker, {name}, used {cpu_pct:.1f} % of a core with no "
                "client traffic (its own replication, heartbeats and timers over "
                f"{result['partitions']} partitions)"
            )
    return "; ".join(parts) or "see the error"


def render(result: Result) -> str:
    targets = result["targets"]
    lines = [
        f"bench partitions: own cluster ({result['brokers']} brokers), one topic of "
        f"{result['partitions']} partitions, RF {result['replication_factor']}, "
        "min.insync.replicas=2",
    ]
    created = result["created_s"]
    figure_rows: list[list[Any]] = [
        [
            "created: every partition led, fully in sync, served by its leader",
            _seconds(created),
            f"<= {targets['created_s_max']:.0f} s",
        ],
        ["  CreateTopic call answered", _seconds(result["create_call_s"]), ""],
        ["  metadata: every partition led", _seconds(result["all_led_s"]), ""],
        ["  metadata: every ISR full", _seconds(result["metadata_ready_s"]), ""],
    ]
    write = result["write"]
    if write is not None:
        figure_rows.append(
            [
                "partitions that acknowledged a write",
                f"{write['acknowledged']} of {result['partitions']} ({write['write_s']:.1f} s)",
                "all",
            ]
        )
    figure_rows.append(["false fencings", _or_dash(result["false_fencings"]), "0"])
    lines.append(fmt.table(["FIGURE", "VALUE", "TARGET"], figure_rows))
    idle = result["idle"]
    if idle is not None:
        lines.append(
            fmt.table(
                ["PROCESS", f"IDLE CPU ({idle['window_s']:.0f} s)", "RSS MIB"],
                [
                    [name, _or_dash(idle["cpu_pct"][name], "%"), _or_dash(idle["rss_mib"][name])]
                    for name in sorted(idle["cpu_pct"])
                ],
            )
        )
        lines.append(
            f"targets per broker: idle CPU <= {targets['idle_cpu_pct_max']:.0f} % of a core, "
            f"RSS <= {targets['rss_mib_max']:.0f} MB"
        )
    if result["create_outcome_unknown"]:
        lines.append(f"CreateTopic answered with: {result['create_outcome_unknown']}")
    lines += footer_lines(result)
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _or_dash(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.1f} {unit}".strip() if isinstance(value, float) else f"{value}{unit}"
