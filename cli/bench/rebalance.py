"""`raftmq bench rebalance`: how long a consumer group takes to own every partition again
when one member leaves or joins.

Starts its own cluster (`BenchCluster`: `raftmq up` defaults, 3 controllers, 3 brokers),
creates one topic of `--count` partitions (default 60; RF 3, min.insync.replicas=2) and a
group of `--members` members (default 10): each a thread of this process with a group
`Reader` (uniform assignor, the coordinator's session and heartbeat defaults) calling
`read_message` in a loop, while a `Writer` produces a light steady stream
(`PRODUCE_RATE_PER_S` messages/s over all partitions). Then, `--runs` times each
(default 5), alternately:

- leave: the newest member `close()`s (commits, leaves the group);
- join: a new member is constructed (it finds the coordinator and joins).

The figure of a run: from just before the `close()` call or the `Reader(...)`
construction to the first moment the live members' own assignments (each member's
`Reader.assignment`, revoked-but-unreleased partitions included, sampled every
`SAMPLE_INTERVAL_MS` from the members themselves, not from the coordinator) put every
partition with exactly one member and are balanced (sizes differ by at most one: the
uniform assignor's target), i.e. the group is consuming everything again. Between runs the
group must be in that state and stay in it for `SETTLE_S`.

The issue's target is a median of at most 1 s; it is printed, never asserted. Every
process is stopped by PID in a `finally` (also on Ctrl-C); the member threads are closed.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from raftmq.client.reader import Reader
from raftmq.client.writer import RequireAll, Writer
from raftmq.errors import RaftmqError
from raftmq.message import Message

from .. import format as fmt
from .cluster import BenchCluster, create_topic, wait_full_isr
from .common import CpuMeter, Result, footer_lines
from .progress import ProgressBar, progress_wanted

TOPIC = "bench-rebalance"
GROUP = "bench-rebalance"
PARTITIONS_DEFAULT = 60
PARTITIONS_MAX = 1_000
MEMBERS_DEFAULT = 10
MEMBERS_MAX = 100
RUNS_DEFAULT = 5
RUNS_MAX = 100
TARGET_MEDIAN_MS = 1_000.0
PRODUCE_RATE_PER_S = 100
SAMPLE_INTERVAL_MS = 5
# Before the first run (the group's first assignment, the offsets topic's creation) and
# for each run's recovery: a figure beyond this is a failure, not a measurement.
FORM_TIMEOUT_S = 90.0
RECOVERY_TIMEOUT_S = 30.0
SETTLE_S = 1.0
READ_TIMEOUT_MS = 200
CLOSE_TIMEOUT_MS = 10_000
SETUP_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 15.0
REBALANCE_WAITING = (
    "heartbeats: a member learns of a change on its next heartbeat (every 250 ms, the "
    "coordinator's interval), and a moved partition needs its old owner's revoke, commit "
    "and release, then its new owner's next heartbeat"
)


class BenchMember:
    """One group member: a group `Reader` and the thread reading from it. The Reader is
    created (and starts joining) in the constructor."""

    def __init__(self, bootstrap: Sequence[str], number: int) -> None:
        self.number = number
        self.reader = Reader(
            list(bootstrap),
            group_id=GROUP,
            topic=TOPIC,
            auto_offset_reset="latest",
            client_id=f"bench-rebalance-{number}",
        )
        self.messages = 0
        self.errors = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"member-{number}", daemon=True)
        self._thread.start()

    def assignment(self) -> list[tuple[str, int]]:
        return self.reader.assignment

    def _run(self) -> None:
        # Bound: until close(); each read is bounded by READ_TIMEOUT_MS.
        while not self._stopping.is_set():
            try:
                self.reader.read_message(timeout_ms=READ_TIMEOUT_MS)
                self.messages += 1
            except TimeoutError:
                continue
            except RuntimeError:
                return  # closed under us
            except RaftmqError:
                self.errors += 1
                self._stopping.wait(0.05)

    def close(self) -> None:
        """Commit, leave the group, stop the thread (bounded)."""
        self._stopping.set()
        try:
            self.reader.close(timeout_ms=CLOSE_TIMEOUT_MS)
        except RaftmqError:
            self.errors += 1
        self._thread.join(timeout=CLOSE_TIMEOUT_MS / 1000 + 5)


def ownership(views: Sequence[Sequence[tuple[str, int]]], partitions: int) -> str | None:
    """None when these members' assignments put each of `partitions` partitions of the
    topic with exactly one member and are balanced (sizes differ by at most one); else why
    not. Pure."""
    owners: Counter[int] = Counter()
    sizes = []
    for view in views:
        mine = [p for t, p in view if t == TOPIC]
        owners.update(mine)
        sizes.append(len(mine))
    unowned = partitions - len(owners)
    twice = sum(1 for n in owners.values() if n > 1)
    if unowned or twice:
        return f"{unowned} partitions unowned, {twice} owned twice"
    if sizes and max(sizes) - min(sizes) > 1:
        return f"unbalanced: {min(sizes)}..{max(sizes)} partitions per member"
    return None


class _Producer:
    """A light steady stream into the topic, one message every 1/PRODUCE_RATE_PER_S s."""

    def __init__(self, bootstrap: Sequence[str]) -> None:
        self.writer = Writer(list(bootstrap), topic=TOPIC, required_acks=RequireAll, linger_ms=0)
        self.sent = 0
        self.errors = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval_s = 1.0 / PRODUCE_RATE_PER_S
        # Bound: until stop(); each write is bounded by the Writer's write timeout.
        while not self._stopping.wait(interval_s):
            try:
                self.writer.write_messages(Message(f"m{self.sent}"))
                self.sent += 1
            except RaftmqError:
                self.errors += 1

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=35.0)
        self.writer.close()


def wait_owned(
    members: Sequence[BenchMember], partitions: int, *, since_s: float, timeout_s: float
) -> tuple[float | None, str]:
    """Sample the members' assignments every SAMPLE_INTERVAL_MS until `ownership` holds:
    (seconds from `since_s` (perf_counter) to the first sample that held, or None on
    timeout; the last reason it did not)."""
    deadline_s = time.perf_counter() + timeout_s
    reason = "not sampled"
    # Bound: the deadline.
    while time.perf_counter() < deadline_s:
        sampled_s = time.perf_counter()
        found = ownership([m.assignment() for m in members], partitions)
        if found is None:
            return sampled_s - since_s, ""
        reason = found
        time.sleep(SAMPLE_INTERVAL_MS / 1000)
    return None, reason


def _settle(members: Sequence[BenchMember], partitions: int, timeout_s: float) -> str | None:
    """Until the group is owned and balanced for SETTLE_S in a row; None, or why not."""
    deadline_s = time.perf_counter() + timeout_s
    stable_since: float | None = None
    reason = "not sampled"
    # Bound: the deadline.
    while time.perf_counter() < deadline_s:
        now_s = time.perf_counter()
        found = ownership([m.assignment() for m in members], partitions)
        if found is None:
            stable_since = now_s if stable_since is None else stable_since
            if now_s - stable_since >= SETTLE_S:
                return None
        else:
            stable_since, reason = None, found
        time.sleep(SAMPLE_INTERVAL_MS * 4 / 1000)
    return f"the group did not settle within {timeout_s:.0f} s ({reason})"


def _moved(before: dict[int, int], members: Sequence[BenchMember]) -> int:
    """Partitions whose owner (member number) differs from `before`."""
    after = {p: m.number for m in members for t, p in m.assignment() if t == TOPIC}
    return sum(1 for p, owner in after.items() if before.get(p) != owner)


def _owners(members: Sequence[BenchMember]) -> dict[int, int]:
    return {p: m.number for m in members for t, p in m.assignment() if t == TOPIC}


def _one_run(
    number: int, change: str, members: list[BenchMember], bootstrap: Sequence[str], parts: int
) -> Result:
    """One leave or join and its recovery; its table row. `members` is updated."""
    before = _owners(members)
    closer: threading.Thread | None = None
    if change == "leave":
        leaving = members.pop()  # the newest
        started_s = time.perf_counter()
        closer = threading.Thread(target=leaving.close, name="leaving", daemon=True)
        closer.start()
    else:
        next_number = max((m.number for m in members), default=0) + 1
        started_s = time.perf_counter()
        members.append(BenchMember(bootstrap, next_number))
    took_s, reason = wait_owned(members, parts, since_s=started_s, timeout_s=RECOVERY_TIMEOUT_S)
    if closer is not None:
        closer.join(timeout=CLOSE_TIMEOUT_MS / 1000 + 5)
    row: Result = {
        "run": number,
        "change": change,
        "members": len(members),
        "recovery_ms": None if took_s is None else round(took_s * 1000, 1),
        "moved": _moved(before, members),
        "error": None,
    }
    if took_s is None:
        row["error"] = f"not owned again within {RECOVERY_TIMEOUT_S:.0f} s ({reason})"
    return row


def _summary(figures: Sequence[float]) -> Result | None:
    if not figures:
        return None
    return {"median": round(statistics.median(figures), 1), "max": max(figures)}


def _check(args: argparse.Namespace) -> tuple[int, int, int]:
    """(partitions, members, runs of each change) from the flags."""
    partitions = PARTITIONS_DEFAULT if args.count is None else int(args.count)
    if not 1 <= partitions <= PARTITIONS_MAX:
        raise ValueError(f"--count must be in [1, {PARTITIONS_MAX}] partitions")
    members = MEMBERS_DEFAULT if getattr(args, "members", None) is None else int(args.members)
    if not 2 <= members <= MEMBERS_MAX:
        raise ValueError(f"--members must be in [2, {MEMBERS_MAX}]")
    runs = RUNS_DEFAULT if args.runs is None else int(args.runs)
    if not 1 <= runs <= RUNS_MAX:
        raise ValueError(f"--runs must be in [1, {RUNS_MAX}] (each of leave and join)")
    return partitions, members, runs


def run(args: argparse.Namespace) -> Result:
    partitions, member_count, runs = _check(args)
    rows: list[Result] = []
    error: str | None = None
    members: list[BenchMember] = []
    # Every member ever started (those that left included), for the message count.
    everyone: list[BenchMember] = []
    producer: _Producer | None = None
    formed_ms: float | None = None
    bar = ProgressBar("rebalance", 2 * runs, "runs", enabled=progress_wanted(args))
    meter: CpuMeter | None = None
    cluster = BenchCluster("rebalance", keep_data=bool(getattr(args, "keep_data", False)))
    try:
        with cluster:
            try:
                with cluster.admin() as admin:
                    create_topic(admin, TOPIC, partitions)
                    wait_full_isr(admin, TOPIC, timeout_s=SETUP_TIMEOUT_S)
                producer = _Producer(cluster.bootstrap)
                formed_from_s = time.perf_counter()
                members.extend(BenchMember(cluster.bootstrap, n + 1) for n in range(member_count))
                everyone.extend(members)
                took_s, reason = wait_owned(
                    members, partitions, since_s=formed_from_s, timeout_s=FORM_TIMEOUT_S
                )
                if took_s is None:
                    raise TimeoutError(
                        f"the group did not form within {FORM_TIMEOUT_S:.0f} s: {reason}"
                    )
                formed_ms = round(took_s * 1000, 1)
                meter = CpuMeter()
                for number in range(1, 2 * runs + 1):
                    unsettled = _settle(members, partitions, RECOVERY_TIMEOUT_S)
                    if unsettled is not None:
                        raise TimeoutError(unsettled)
                    change = "leave" if number % 2 else "join"
                    row = _one_run(number, change, members, cluster.bootstrap, partitions)
                    everyone.extend(m for m in members if m not in everyone)
                    rows.append(row)
                    bar.note(_run_line(row))
                    bar.advance()
                    if row["error"]:
                        break
            finally:
                # While the cluster still runs: each close commits and leaves at once.
                for member in members:
                    member.close()
                if producer is not None:
                    producer.stop()
    except (TimeoutError, RaftmqError) as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        bar.close()
    cpu = (meter or CpuMeter()).stop(waiting=REBALANCE_WAITING)
    failed = [r for r in rows if r["error"]]
    if error is None and failed:
        error = f"run {failed[0]['run']} failed: {failed[0]['error']}"
    by_change: dict[str, Any] = {}
    for change in ("leave", "join"):
        figures = [
            r["recovery_ms"] for r in rows if r["change"] == change and r["recovery_ms"] is not None
        ]
        by_change[change] = {"runs": len(figures), "recovery_ms": _summary(figures)}
    every = [r["recovery_ms"] for r in rows if r["recovery_ms"] is not None]
    recovery_ms = _summary(every)
    return {
        "scenario": "rebalance",
        "partitions": partitions,
        "members": member_count,
        "runs_requested": runs,
        "sampled": f"the members' own assignments, every {SAMPLE_INTERVAL_MS} ms",
        "formed_ms": formed_ms,
        "recovery_ms": recovery_ms,
        "leave": by_change["leave"],
        "join": by_change["join"],
        "target_median_ms": TARGET_MEDIAN_MS,
        "target_met": None if recovery_ms is None else recovery_ms["median"] <= TARGET_MEDIAN_MS,
        "runs": rows,
        "produced": 0 if producer is None else producer.sent,
        "consumed": sum(m.messages for m in everyone),
        "data_dir": str(cluster.data_dir) if cluster.keep_data else None,
        "cpu": cpu,
        "error": error,
    }


def _run_line(row: Result) -> str:
    figure = "-" if row["recovery_ms"] is None else f"{row['recovery_ms']:.1f} ms"
    return (
        f"run {row['run']}: one member {'left' if row['change'] == 'leave' else 'joined'}, "
        f"{row['members']} members now, {row['moved']} partitions moved: owned again in {figure}"
    )


def _ms(summary: Result | None, key: str) -> str:
    return "-" if summary is None else f"{summary[key]:.1f}"


def render(result: Result) -> str:
    lines = [
        f"bench rebalance: own cluster, one group of {result['members']} members on "
        f"{result['partitions']} partitions; a member leaves (close) or joins, until every "
        f"partition is owned by exactly one member and the group is balanced "
        f"({result['sampled']})",
        fmt.table(
            ["RUN", "CHANGE", "MEMBERS", "MOVED", "RECOVERY MS"],
            [
                [
                    r["run"],
                    r["change"],
                    r["members"],
                    r["moved"],
                    "-" if r["recovery_ms"] is None else f"{r['recovery_ms']:.1f}",
                ]
                for r in result["runs"]
            ],
        ),
    ]
    for change in ("leave", "join"):
        part = result[change]
        summary = part["recovery_ms"]
        lines.append(
            f"{change}: {part['runs']} runs, median {_ms(summary, 'median')} ms, "
            f"max {_ms(summary, 'max')} ms"
        )
    overall = result["recovery_ms"]
    if overall is not None:
        verdict = "met" if result["target_met"] else "NOT met"
        lines.append(
            f"all runs: median {overall['median']:.1f} ms, max {overall['max']:.1f} ms; "
            f"target (issue 11) median <= {result['target_median_ms']:.0f} ms: {verdict}"
        )
    lines += footer_lines(result)
    return "\n".join(lines)
