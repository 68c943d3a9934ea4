"""`raftmq bench failover --target partition-leader|follower`: SIGKILL of a broker under a
steady acks=all writer, and nothing acknowledged lost.

Starts its own cluster (`BenchCluster`: `raftmq up` defaults, 3 controllers, 3 brokers)
and a topic of `--partitions` partitions, RF 3, min.insync.replicas=2. A steady writer
(an async idempotent `Writer`, acks=all, no linger, one message per `write_messages`
call, at most `STEADY_RATE_PER_S` calls a second and `STEADY_INFLIGHT_MAX` unresolved)
writes numbered messages to partition 0 for the whole scenario. Each run (`--runs`):

1. wait until every broker is unfenced and every partition's ISR is its whole AR, then
   `--idle-ms` more of steady writing;
2. SIGKILL, by PID, partition 0's leader (`partition-leader`) or one of its ISR followers
   (`follower`);
3. the figure: kill -> the first acknowledgement of a write *sent after the kill*. For
   `partition-leader` that is when writes resume on the new leader. For `follower` it is
   the acks=all stall: the leader cannot advance its high watermark past the dead
   follower until it leaves the ISR. A write in flight at the kill may already be on the
   dead follower and be acknowledged at once, so "the first acknowledgement after the
   kill" alone would not show the stall; the writes in flight at the kill are reported
   beside it (how long they waited, how many failed);
4. restart the killed broker and wait until the ISR is full again (rejoin time).

Beside the Writer's figure, from the same run: when a poll of `Admin.cluster_status()`
(every 50 ms, `ClusterWatcher`) first saw the killed broker fenced, a new leader or the
ISR shrink; and, for `partition-leader`, when a raw acks=all produce (`Conn`, not
idempotent, one in flight per surviving broker, every `PROBE_INTERVAL_S`) was first
acknowledged: the cluster's own recovery, without the Writer's retry backoff.

At the end the steady writer stops and partition 0 is read back from its log start to its
high watermark: every acknowledged message must be there exactly once ("nothing
acknowledged lost"). A loss, a duplicate, or a message whose write failed with a "not
written" error makes the scenario an error; an acknowledged message stored once but at
another offset than the Writer reported is a warning. `false_fencings` counts fencings
the watcher saw of brokers the bench had not just killed. Every process is stopped by PID
in a `finally` (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

from raftmq.client.admin import Admin, FirstOffset, LastOffset
from raftmq.client.conn import Conn
from raftmq.client.reader import Reader
from raftmq.client.writer import RequireAll, WriteError, Writer
from raftmq.controller.session_tracker import DISCONNECT_GRACE_MS_DEFAULT
from raftmq.errors import ErrorCode, OutcomeUnknownError, RaftmqError
from raftmq.message import Message

from .. import format as fmt
from .cluster import BROKERS, BenchCluster, create_topic, wait_full_isr
from .common import CpuMeter, Result, footer_lines
from .progress import ProgressBar, progress_wanted
from .watcher import ClusterWatcher, fencing_json

TARGET_PARTITION_LEADER = "partition-leader"
TARGET_FOLLOWER = "follower"
BROKER_TARGETS = (TARGET_PARTITION_LEADER, TARGET_FOLLOWER)
BROKER_FAILOVER_RUNS_DEFAULT = 5
BROKER_FAILOVER_RUNS_MAX = 50
PARTITION = 0
STEADY_RATE_PER_S = 200
STEADY_INFLIGHT_MAX = 4
# The steady writer stops after this many writes (a bound; 50 runs at 200/s stay below).
STEADY_WRITES_MAX = 2_000_000
STEADY_WRITE_TIMEOUT_MS = 30_000
# Enough attempts that the write timeout, not the attempt count, ends a write: the Writer
# backs off 100 ms doubling to 1 s between attempts.
STEADY_MAX_ATTEMPTS = 60
# kill -> writes resume: longer than this is a failure to recover, not a measurement.
RESUME_TIMEOUT_S = 30.0
# Writes in flight at the kill get this long to resolve before the row is written.
INFLIGHT_SETTLE_TIMEOUT_S = STEADY_WRITE_TIMEOUT_MS / 1000 + 5
REJOIN_TIMEOUT_S = 90.0
READBACK_TIMEOUT_S = 120.0
POLL_S = 0.005
PROBE_INTERVAL_S = 0.01
PROBE_TIMEOUT_MS = 500
# Values: magic | uint64 sequence number. Probes carry their own magic, so the read-back
# check knows them apart (they are not idempotent and may be stored twice).
STEADY_MAGIC = b"bfw1"
PROBE_MAGIC = b"bfp1"
SEQUENCE = struct.Struct(">4sQ")
# Writer-figure minus probe-figure above this: the Writer's backoff is the visible limit.
CLIENT_BACKOFF_VISIBLE_MS = 200.0


def steady_value(sequence: int) -> bytes:
    return SEQUENCE.pack(STEADY_MAGIC, sequence)


def read_steady_value(value: bytes | None) -> int | None:
    """The sequence number of a steady writer's value, or None for any other value."""
    if value is None or len(value) != SEQUENCE.size:
        return None
    magic, sequence = SEQUENCE.unpack(value)
    return int(sequence) if magic == STEADY_MAGIC else None


def check_broker_failover(args: argparse.Namespace) -> tuple[int, int]:
    """(runs, idle ms) from the flags; ValueError on a bad one."""
    runs = BROKER_FAILOVER_RUNS_DEFAULT if args.runs is None else int(args.runs)
    if not 1 <= runs <= BROKER_FAILOVER_RUNS_MAX:
        raise ValueError(f"--runs must be in [1, {BROKER_FAILOVER_RUNS_MAX}]")
    idle_ms = 1_000 if args.idle_ms is None else int(args.idle_ms)
    if not 0 <= idle_ms <= 60_000:
        raise ValueError("--idle-ms must be in [0, 60000]")
    if not 1 <= args.partitions <= 1_000:
        raise ValueError("--partitions must be in [1, 1000]")
    return runs, idle_ms


# ---------------------------------------------------------------- the steady writer


@dataclass
class Write:
    """One steady write. `done_s` (perf_counter) is set once its outcome is known:
    ok (acknowledged, with its offset), unknown (OutcomeUnknownError: maybe written) or
    failed (any other error: not written)."""

    sequence: int
    sent_s: float
    done_s: float | None = None
    outcome: str = "pending"
    offset: int | None = None


class SteadyWriter:
    """The steady writer's thread and its record of every write. `writes` is appended by
    the thread and completed by the Writer's completion thread, both under `lock`."""

    def __init__(self, brokers: list[str], topic: str, *, duration_s_max: float) -> None:
        self.writer = Writer(
            brokers,
            topic=topic,
            required_acks=RequireAll,
            linger_ms=0,
            max_attempts=STEADY_MAX_ATTEMPTS,
            write_timeout_ms=STEADY_WRITE_TIMEOUT_MS,
            async_=True,
        )
        self.lock = threading.Lock()
        self.writes: list[Write] = []
        self.errors: Counter[str] = Counter()
        self._room = threading.Semaphore(STEADY_INFLIGHT_MAX)
        self._stop = threading.Event()
        self._duration_s_max = duration_s_max
        self._thread = threading.Thread(target=self._run, name="bench-steady-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sending, wait for every write's outcome (bounded by the write timeout),
        close the Writer."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.writer.flush(timeout_s=STEADY_WRITE_TIMEOUT_MS / 1000 + 5)
        self.writer.close()

    def mark(self) -> int:
        """The number of writes so far: those at and after it are sent later."""
        with self.lock:
            return len(self.writes)

    def _run(self) -> None:
        interval_s = 1 / STEADY_RATE_PER_S
        deadline = time.monotonic() + self._duration_s_max
        next_s = time.perf_counter()
        # Bound: the stop event, duration_s_max and STEADY_WRITES_MAX writes.
        for sequence in range(STEADY_WRITES_MAX):
            while not self._room.acquire(timeout=0.1):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    return
            wait_s = next_s - time.perf_counter()
            if wait_s > 0:
                self._stop.wait(wait_s)
            if self._stop.is_set() or time.monotonic() >= deadline:
                self._room.release()
                return
            write = Write(sequence, time.perf_counter())
            # No burst to catch up after a stall: the next call is an interval after this.
            next_s = max(next_s, write.sent_s) + interval_s
            with self.lock:
                self.writes.append(write)
            future = self.writer.write_messages(
                Message(steady_value(sequence), partition=PARTITION)
            )
            future.add_done_callback(self._completion(write))

    def _completion(self, write: Write) -> Callable[[Future[list[Message]]], None]:
        def done(f: Future[list[Message]]) -> None:
            done_s = time.perf_counter()
            error = f.exception()
            with self.lock:
                write.done_s = done_s
                if error is None:
                    write.outcome = "ok"
                    write.offset = f.result()[0].offset
                else:
                    cause = error.errors[0][1] if isinstance(error, WriteError) else error
                    unknown = isinstance(cause, OutcomeUnknownError)
                    write.outcome = "unknown" if unknown else "failed"
                    self.errors[type(cause).__name__] += 1
            self._room.release()

        return done

    def first_ack(self, *, sent_from: int = 0, after_s: float = float("-inf")) -> float | None:
        """The earliest acknowledgement (perf_counter) after `after_s` of the writes from
        index `sent_from` on, or None."""
        with self.lock:
            times = [
                w.done_s
                for w in self.writes[sent_from:]
                if w.outcome == "ok" and w.done_s is not None and w.done_s > after_s
            ]
        return min(times, default=None)

    def in_flight_at(self, at_s: float, before: int) -> list[Write]:
        """Writes sent before index `before` that had no outcome yet at `at_s` (copies)."""
        with self.lock:
            return [
                Write(w.sequence, w.sent_s, w.done_s, w.outcome, w.offset)
                for w in self.writes[:before]
                if w.done_s is None or w.done_s > at_s
            ]

    def resolved(self, before: int) -> bool:
        """Every write sent before index `before` has an outcome."""
        with self.lock:
            return all(w.done_s is not None for w in self.writes[:before])

    def outcomes(self) -> tuple[dict[int, int], set[int], set[int]]:
        """(acknowledged sequence -> offset, maybe-written sequences, not-written ones)."""
        acked: dict[int, int] = {}
        unknown: set[int] = set()
        failed: set[int] = set()
        with self.lock:
            for w in self.writes:
                if w.outcome == "ok" and w.offset is not None:
                    acked[w.sequence] = w.offset
                elif w.outcome == "failed":
                    failed.add(w.sequence)
                else:  # unknown, or still pending after the bounded flush
                    unknown.add(w.sequence)
        return acked, unknown, failed


# ---------------------------------------------------------------- raw probes


class LeaderProbes:
    """One thread per surviving broker sending a raw acks=all produce of one probe message
    to partition 0 (`Conn.write_messages`: not idempotent, not retried) every
    PROBE_INTERVAL_S, one in flight each, until one is acknowledged: the cluster's own
    recovery time, without the Writer's retry and metadata backoff. Channels are connected
    by `connect()` before the kill, so no TCP connect is in the figure."""

    def __init__(self, endpoints: Iterable[str], topic: str) -> None:
        self._conns = [Conn(e, topic=topic, partition=PARTITION) for e in endpoints]
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.first_ok_s: float | None = None
        self.attempts = 0
        self._threads = [
            threading.Thread(target=self._probe, args=(c,), name="bench-probe", daemon=True)
            for c in self._conns
        ]

    def connect(self) -> None:
        for conn in self._conns:
            # A broker that does not answer is probed all the same.
            with contextlib.suppress(RaftmqError):
                conn.metadata([], timeout_ms=2_000)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._done.set()
        for t in self._threads:
            t.join(timeout=PROBE_TIMEOUT_MS / 1000 + 2)
        for conn in self._conns:
            conn.close()

    def _probe(self, conn: Conn) -> None:
        deadline = time.monotonic() + RESUME_TIMEOUT_S
        # Bound: RESUME_TIMEOUT_S; each attempt PROBE_TIMEOUT_MS.
        while not self._done.is_set() and time.monotonic() < deadline:
            with self._lock:
                self.attempts += 1
                number = self.attempts
            try:
                conn.write_messages(
                    Message(SEQUENCE.pack(PROBE_MAGIC, number)), timeout_ms=PROBE_TIMEOUT_MS
                )
            except RaftmqError:
                self._done.wait(PROBE_INTERVAL_S)
                continue
            answered_s = time.perf_counter()
            with self._lock:
                if self.first_ok_s is None or answered_s < self.first_ok_s:
                    self.first_ok_s = answered_s
            self._done.set()


# ---------------------------------------------------------------- the read-back check


def check_readback(
    acked: Mapping[int, int],
    unknown: set[int],
    failed: set[int],
    stored: Mapping[int, list[int]],
) -> Result:
    """Compare what the Writer was told with what partition 0 holds. `acked`: sequence ->
    acknowledged offset; `unknown` / `failed`: sequences whose write ended with
    OutcomeUnknownError / another error; `stored`: sequence -> offsets it was read at."""
    lost = sorted(s for s in acked if not stored.get(s))
    duplicated = sorted(s for s, offsets in stored.items() if len(offsets) > 1)
    misplaced = sorted(
        s for s, offset in acked.items() if stored.get(s) and offset not in stored[s]
    )
    failed_present = sorted(s for s in failed if stored.get(s))
    written = set(acked) | unknown | failed
    unexpected = sorted(s for s in stored if s not in written)
    return {
        "acknowledged": len(acked),
        "maybe_written": len(unknown),
        "maybe_written_stored": sum(1 for s in unknown if stored.get(s)),
        "not_written": len(failed),
        "stored": sum(len(offsets) for offsets in stored.values()),
        "lost": len(lost),
        "duplicates": sum(len(stored[s]) - 1 for s in duplicated),
        "misplaced": len(misplaced),
        "not_written_but_stored": len(failed_present),
        "unexpected": len(unexpected),
        "examples": {
            "lost": lost[:10],
            "duplicated": duplicated[:10],
            "misplaced": misplaced[:10],
            "not_written_but_stored": failed_present[:10],
        },
    }


def readback_error(check: Result) -> str | None:
    problems = [
        f"{check[key]} {what}"
        for key, what in (
            ("lost", "acknowledged message(s) lost"),
            ("duplicates", "duplicate(s)"),
            ("not_written_but_stored", "message(s) stored after a 'not written' error"),
            ("unexpected", "message(s) nobody wrote"),
        )
        if check[key]
    ]
    return "read-back: " + ", ".join(problems) if problems else None


def readback_warning(check: Result) -> str | None:
    """Acknowledged messages stored once, but not at the offset the Writer reported: no
    loss (the figure's promise), yet a wrong answer to the application; shown, not fatal."""
    if not check["misplaced"]:
        return None
    return (
        f"{check['misplaced']} acknowledged message(s) stored once but not at the offset the "
        f"Writer reported for them (e.g. sequences {check['examples']['misplaced'][:4]})"
    )


def _read_back(brokers: list[str], topic: str) -> tuple[dict[int, list[int]], str | None]:
    """Partition 0 from its log start to its high watermark: steady sequence -> offsets
    it is stored at, and an error if the read stopped short."""
    with Admin(brokers) as admin:
        start = admin.list_offsets(topic, FirstOffset, partitions=[PARTITION])[PARTITION]
        end = admin.list_offsets(topic, LastOffset, partitions=[PARTITION])[PARTITION]
    stored: dict[int, list[int]] = {}
    position = start
    deadline = time.monotonic() + READBACK_TIMEOUT_S
    with Reader(brokers, topic, PARTITION, start_offset=start, max_bytes=4 << 20) as reader:
        # Bound: end - start messages and READBACK_TIMEOUT_S.
        while position < end:
            if time.monotonic() >= deadline:
                return stored, f"read-back stopped at offset {position} of {end} (timeout)"
            try:
                message = reader.read_message(timeout_ms=5_000)
            except (TimeoutError, RaftmqError) as e:
                return stored, f"read-back stopped at offset {position} of {end}: {e}"
            position = message.offset + 1
            sequence = read_steady_value(message.value)
            if sequence is not None:
                stored.setdefault(sequence, []).append(message.offset)
    return stored, None


# ---------------------------------------------------------------- one run


@dataclass
class _Context:
    cluster: BenchCluster
    admin: Admin
    watcher: ClusterWatcher
    steady: SteadyWriter
    topic: str
    target: str
    idle_s: float
    killed: list[int] = field(default_factory=list)


def _ms(later_s: float | None, earlier_s: float) -> float | None:
    return None if later_s is None else round((later_s - earlier_s) * 1000, 1)


def _pick_victim(ctx: _Context, number: int) -> tuple[int, int]:
    """(broker to kill, partition 0's leader) for run `number`."""
    [record] = ctx.admin.describe_topics(ctx.topic)
    state = record.partitions[PARTITION]
    if ctx.target == TARGET_PARTITION_LEADER:
        return state.leader, state.leader
    followers = [b for b in state.isr if b != state.leader]
    if not followers:
        raise RaftmqError(
            ErrorCode.NOT_ENOUGH_REPLICAS, f"{ctx.topic}-{PARTITION} has no follower in its ISR"
        )
    return followers[(number - 1) % len(followers)], state.leader


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    # Bound: timeout_s.
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_S)
    return condition()


def _one_run(ctx: _Context, number: int) -> Result:
    """Kill, measure, restart, rejoin: the run's row."""
    wait_full_isr(ctx.admin, ctx.topic, timeout_s=REJOIN_TIMEOUT_S)
    time.sleep(ctx.idle_s)  # steady writes continue meanwhile
    victim, leader_before = _pick_victim(ctx, number)
    probes = None
    if ctx.target == TARGET_PARTITION_LEADER:
        probes = LeaderProbes(
            [ctx.cluster.endpoint(b) for b in range(1, BROKERS + 1) if b != victim], ctx.topic
        )
        probes.connect()
    ctx.watcher.expect_fencing(victim)
    mark = ctx.steady.mark()
    ctx.killed.append(victim)
    killed_s = ctx.cluster.kill_broker(victim)
    if probes is not None:
        probes.start()
    try:
        _wait(lambda: ctx.steady.first_ack(sent_from=mark) is not None, RESUME_TIMEOUT_S)
    finally:
        if probes is not None:
            probes.stop()
    resumed_s = ctx.steady.first_ack(sent_from=mark)
    first_any_s = ctx.steady.first_ack(after_s=killed_s)
    _wait(lambda: ctx.steady.resolved(mark), INFLIGHT_SETTLE_TIMEOUT_S)
    in_flight = ctx.steady.in_flight_at(killed_s, mark)
    try:
        [record] = ctx.admin.describe_topics(ctx.topic)
        leader_after = record.partitions[PARTITION].leader
    except RaftmqError:
        leader_after = -1
    restarted_s = time.perf_counter()
    ctx.cluster.restart_broker(victim)
    wait_full_isr(ctx.admin, ctx.topic, timeout_s=REJOIN_TIMEOUT_S)
    rejoin_ms = _ms(time.perf_counter(), restarted_s)
    with ctx.watcher.lock:
        fenced_s = ctx.watcher.fencing.first_fenced_after(victim, killed_s)
        leader_seen_s = ctx.watcher.partitions.first_leader_change_after(
            ctx.topic, PARTITION, killed_s
        )
        shrink_s = ctx.watcher.partitions.first_shrink_after(
            ctx.topic, PARTITION, killed_s, without=victim
        )
    waits = [_ms(w.done_s, killed_s) for w in in_flight if w.outcome == "ok"]
    acked_waits = [w for w in waits if w is not None]
    row: Result = {
        "run": number,
        "killed": victim,
        "leader_before": leader_before,
        "leader_after": leader_after,
        "recovery_ms": _ms(resumed_s, killed_s),
        "first_ack_any_ms": _ms(first_any_s, killed_s),
        "probe_ms": None if probes is None else _ms(probes.first_ok_s, killed_s),
        "fenced_seen_ms": _ms(fenced_s, killed_s),
        "new_leader_seen_ms": _ms(leader_seen_s, killed_s),
        "isr_shrink_seen_ms": _ms(shrink_s, killed_s),
        "in_flight_at_kill": len(in_flight),
        "in_flight_wait_ms_max": max(acked_waits, default=None),
        "in_flight_not_acked": sum(1 for w in in_flight if w.outcome != "ok"),
        "rejoin_ms": rejoin_ms,
        "error": None,
    }
    if resumed_s is None:
        row["error"] = f"no write acknowledged within {RESUME_TIMEOUT_S:.0f} s of the kill"
    return row


# ---------------------------------------------------------------- the scenario


def _median_max(values: Iterable[float | None]) -> dict[str, float] | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"median": round(statistics.median(known), 1), "max": max(known)}


def limited_by(target: str, rows: list[Result]) -> str:
    """What the runs' own timings say limited the figure."""
    recovery = _median_max(r["recovery_ms"] for r in rows)
    if recovery is None:
        return "no run recovered: see the error"
    fenced = _median_max(r["fenced_seen_ms"] for r in rows)
    facts = [f"writes resumed at a median {recovery['median']:.0f} ms"]
    if fenced is not None:
        facts.insert(0, f"killed broker seen fenced at {fenced['median']:.0f} ms")
    if target == TARGET_PARTITION_LEADER:
        leader = _median_max(r["new_leader_seen_ms"] for r in rows)
        probe = _median_max(r["probe_ms"] for r in rows)
        if leader is not None:
            facts.insert(-1, f"new leader seen at {leader['median']:.0f} ms")
        if probe is not None:
            facts.insert(-1, f"first raw produce acknowledged at {probe['median']:.0f} ms")
        line = "kill -> " + " -> ".join(facts)
        backoff = ""
        if probe is not None and recovery["median"] - probe["median"] > CLIENT_BACKOFF_VISIBLE_MS:
            backoff = (
                f"the Writer's retry and metadata backoff: the cluster took raw writes "
                f"{recovery['median'] - probe['median']:.0f} ms before the Writer's first "
                "acknowledgement"
            )
        if fenced is not None and fenced["median"] >= 0.6 * recovery["median"]:
            return (
                f"failure detection: {line}; the new leader is elected only once the "
                "controller fences the dead broker (a broken session stream: a "
                f"{DISCONNECT_GRACE_MS_DEFAULT} ms grace "
                "for a reconnect, then a Raft commit; a paused one: its session timeout)"
                + (f"; then {backoff}" if backoff else "")
            )
        if backoff:
            return f"{backoff}: {line}"
        return line
    shrink = _median_max(r["isr_shrink_seen_ms"] for r in rows)
    if shrink is not None:
        facts.insert(-1, f"ISR shrink seen at {shrink['median']:.0f} ms")
    line = "kill -> " + " -> ".join(facts)
    if shrink is not None and shrink["median"] >= 0.6 * recovery["median"]:
        return (
            f"the ISR shrink: {line}; acks=all waits for the dead follower until it leaves "
            "the ISR (its fencing: a broken session stream's "
            f"{DISCONNECT_GRACE_MS_DEFAULT} ms grace, or the session timeout of a paused "
            "one; else replica.lag.time.max.ms)"
        )
    return line


def run(args: argparse.Namespace) -> Result:
    runs, idle_ms = check_broker_failover(args)
    target = str(args.target)
    assert target in BROKER_TARGETS, target
    rows: list[Result] = []
    error: str | None = None
    check: Result | None = None
    warning: str | None = None
    watcher: ClusterWatcher | None = None
    bar = ProgressBar(f"failover {target}", runs, "runs", enabled=progress_wanted(args))
    meter = CpuMeter()
    started_s = time.perf_counter()
    cluster = BenchCluster("failover", keep_data=bool(args.keep_data))
    try:
        with cluster, cluster.admin() as admin:
            create_topic(admin, args.topic, args.partitions)
            wait_full_isr(admin, args.topic, timeout_s=REJOIN_TIMEOUT_S)
            duration_s_max = runs * (REJOIN_TIMEOUT_S * 2 + RESUME_TIMEOUT_S) + 60
            watcher = ClusterWatcher(
                cluster.bootstrap, topics=[args.topic], duration_s_max=duration_s_max
            ).start()
            steady = SteadyWriter(cluster.bootstrap, args.topic, duration_s_max=duration_s_max)
            steady.start()
            ctx = _Context(cluster, admin, watcher, steady, args.topic, target, idle_ms / 1000)
            try:
                for number in range(1, runs + 1):
                    row = _one_run(ctx, number)
                    rows.append(row)
                    bar.note(_run_line(target, row))
                    bar.advance()
            finally:
                steady.stop()
                watcher.stop()
            stored, read_error = _read_back(cluster.bootstrap, args.topic)
            check = check_readback(*steady.outcomes(), stored)
            check["writer_errors"] = dict(steady.errors)
            error = read_error or readback_error(check)
            warning = readback_warning(check)
    except (TimeoutError, RaftmqError) as e:
        error = f"{type(e).__name__}: {e}\n{cluster.tail_logs(5)}"
    finally:
        if watcher is not None:
            watcher.stop()
        bar.close()
    failed = [r for r in rows if r["error"]]
    if error is None and failed:
        error = f"{len(failed)} run(s) failed: {failed[0]['error']}"
    cpu = meter.stop()
    cpu["limited_by"] = limited_by(target, rows)
    false = [f for f in watcher.fencing.fencings if not f.expected] if watcher else []
    return {
        "scenario": "failover",
        "target": target,
        "brokers": BROKERS,
        "topic": args.topic,
        "partitions": args.partitions,
        "replication_factor": BROKERS,
        "min_insync_replicas": 2,
        "runs_requested": runs,
        "idle_ms": idle_ms,
        "steady_rate_per_s": STEADY_RATE_PER_S,
        "steady_inflight_max": STEADY_INFLIGHT_MAX,
        "recovery_ms": _median_max(r["recovery_ms"] for r in rows),
        "probe_recovery_ms": _median_max(r["probe_ms"] for r in rows),
        "in_flight_wait_ms": _median_max(r["in_flight_wait_ms_max"] for r in rows),
        "false_fencings": watcher.fencing.false_count if watcher else None,
        "fencings": watcher.fencing.count if watcher else None,
        "false_fencing_events": [fencing_json(f, started_s) for f in false[:20]],
        "watch_polls": watcher.polls if watcher else 0,
        "watch_poll_errors": watcher.poll_errors if watcher else 0,
        "lost": None if check is None else check["lost"],
        "duplicates": None if check is None else check["duplicates"],
        "readback": check,
        "warning": warning,
        "runs": rows,
        "data_dir": str(cluster.data_dir) if args.keep_data else None,
        "elapsed_s": round(time.perf_counter() - started_s, 1),
        "cpu": cpu,
        "error": error,
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _run_line(target: str, row: Result) -> str:
    what = "leader" if target == TARGET_PARTITION_LEADER else "follower"
    figure = "-" if row["recovery_ms"] is None else f"{row['recovery_ms']:.0f} ms"
    return (
        f"run {row['run']}: killed {what} broker {row['killed']} (leader {row['leader_before']} "
        f"-> {row['leader_after']}): writes resumed after {figure}"
    )


def render(result: Result) -> str:
    target = result["target"]
    leader = target == TARGET_PARTITION_LEADER
    what = "partition 0's leader" if leader else "an ISR follower of partition 0"
    lines = [
        f"bench failover --target {target}: own cluster ({result['brokers']} brokers, "
        f"{result['partitions']} partitions RF {result['replication_factor']}, "
        f"min.insync.replicas={result['min_insync_replicas']}), SIGKILL of {what} under a "
        f"steady idempotent acks=all writer ({result['steady_rate_per_s']}/s at most, "
        f"{result['steady_inflight_max']} in flight) -> first acknowledged write sent after "
        f"the kill; {result['idle_ms']} ms idle before each kill",
    ]
    headers = ["RUN", "KILLED", "LEADER", "RECOVERY MS", "FENCED SEEN MS"]
    headers += ["NEW LEADER SEEN MS", "RAW PRODUCE MS"] if leader else ["ISR SHRINK SEEN MS"]
    headers += ["IN FLIGHT", "THEIR WAIT MS", "REJOIN MS"]
    table_rows = []
    for r in result["runs"]:
        cells = [
            r["run"],
            r["killed"],
            f"{r['leader_before']}->{r['leader_after']}",
            _cell(r["recovery_ms"]),
            _cell(r["fenced_seen_ms"]),
        ]
        if leader:
            cells += [_cell(r["new_leader_seen_ms"]), _cell(r["probe_ms"])]
        else:
            cells += [_cell(r["isr_shrink_seen_ms"])]
        cells += [
            f"{r['in_flight_at_kill']} ({r['in_flight_not_acked']} not acked)",
            _cell(r["in_flight_wait_ms_max"]),
            _cell(r["rejoin_ms"]),
        ]
        table_rows.append(cells)
    lines.append(fmt.table(headers, table_rows))
    recovery = result["recovery_ms"]
    if recovery is not None:
        lines.append(
            f"recovery over {sum(1 for r in result['runs'] if r['recovery_ms'] is not None)} "
            f"run(s): median {recovery['median']:.0f} ms, max {recovery['max']:.0f} ms"
        )
    check = result["readback"]
    if check is not None:
        lines.append(
            f"read-back of partition 0: {check['acknowledged']} acknowledged, {check['lost']} "
            f"lost, {check['duplicates']} duplicate(s), {check['misplaced']} misplaced; "
            f"{check['maybe_written']} maybe written ({check['maybe_written_stored']} stored), "
            f"{check['not_written']} not written ({check['not_written_but_stored']} stored)"
        )
    lines.append(
        f"false fencings: {result['false_fencings']} (fencings seen: {result['fencings']}, "
        f"{result['watch_polls']} polls of the cluster status)"
    )
    if result["warning"]:
        lines.append(f"warning: {result['warning']}")
    lines += footer_lines(result)
    return "\n".join(lines)
