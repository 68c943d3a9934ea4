"""The consumer-group checks of the chaos checker: a history's group ops in, anomalies and
group figures out. Pure; `raftmq.chaos.checker.check` calls it and merges its findings.

Time. Group members are processes of their own that stamp their ops with the shared run
clock, so these checks order events by `time_ms`, never by `Op.index` (see
`raftmq.chaos.history`): "X completed before Y was invoked" is
`X_completion.time_ms < Y_invoke.time_ms`.

Anomalies (every one makes the run invalid; `group_unconsumed` only once the groups
drained, see below):

- `committed_offset_regressed`: a (group, partition)'s committed offset went backwards.
  Its observations are the `ok` reads of the committed offsets (`offsets` ops; -1 when
  nothing is committed) and the `ok` commits (their offset is committed when they are
  acknowledged). Rule: for observations X and Y of one (group, partition), X completed
  before Y was invoked and Y's offset is lower than X's. A commit acknowledged below an
  offset seen committed before counts too: the workload only commits offsets it was handed
  from the committed position on, so a lower acknowledged commit did move the offset back.
- `committed_too_far`: an offset committed beyond what was consumed. (a) A commit (any
  outcome: it was sent, or may have been) by member incarnation M of offset o for
  partition P, where o > (the highest offset of P delivered to M before the commit was
  invoked) + 1; (b) a read of the committed offsets showing o for P, where o > (the highest
  offset of P delivered to any member of the group before the read completed) + 1. Members
  record a delivery before anything can commit it (a `read_message` commits the previous
  message on the next call, a `commit_messages` follows the delivery).
- `partition_double_owned`: two member incarnations of one group owned one partition at the
  same time. Ownership comes from the members' `assign` observations (each taken between its
  invoke and its `ok`, microseconds apart). The exact rule:
    * A *run* of member M for partition P is a maximal sequence of M's consecutive
      observations that all contain P, where none after the first says partitions left M
      since the one before (`error` ""): a drop in between (released or lost) may have
      been P's, so the run ends there and a new one begins.
    * A run surely covers [the `ok` time of its first observation, the invoke time of its
      last] (M owned P at both instants and, within the run, throughout). A run of one
      observation covers no interval and is not compared.
    * A run *ends* by the first event after its last observation: the next observation
      (it shows P gone, or a drop: `ASSIGN_RELEASED` or `ASSIGN_LOST`), M's crash, M's
      close, or the end of the history.
    * Two runs of different incarnations, A starting no later than B, overlap when B's
      start is before A's end. That is an anomaly when A ended by a release or a close:
      the coordinator gives a partition away only once its owner stopped listing it (or
      left). When A ended ungracefully (lost, crashed, or still open at the end), the
      coordinator may have expired A's session before A noticed: it expires a session
      `session_timeout_ms` after the last heartbeat it *received*, the member gives up its
      partitions `session_timeout_ms` after the last answer it *got*, and an answer
      arrives at most one heartbeat call's bound later (the client's
      `COORDINATOR_TIMEOUT_MS`). So the overlap is excused (counted as a zombie overlap in
      the figures) when B started no earlier than `zombie_grace_ms` before A's end, and an
      anomaly otherwise. A crashed member never releases anything: its runs end at its last
      observation before the crash, and its partitions legitimately move only once the
      coordinator expired its session (or at once to a static member restarted with its
      instance id, which takes its place) — both after the crash, so no overlap.
- `group_unconsumed`: an acknowledged value of the group's topic that no member of the
  group was ever handed (at-least-once per group). An error only when `groups_drained`
  (after the heal every group committed up to each partition's high watermark); otherwise
  the values are reported as a warning (the run is then unverified, which the runner says).
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raftmq.chaos.history import (
    ASSIGN_LOST,
    ASSIGN_RELEASED,
    GROUP_FUNCTIONS,
    MEMBER_CLOSE,
    MEMBER_CRASH,
    MEMBER_START,
    MalformedHistoryError,
    Op,
)
from raftmq.client.group_core import COORDINATOR_TIMEOUT_MS

Anomaly = dict[str, Any]

GROUP_ANOMALY_KINDS: tuple[str, ...] = (
    "committed_offset_regressed",
    "committed_too_far",
    "partition_double_owned",
    "group_unconsumed",
)
# Per group figures (`GroupCheck.per_group`), also summed into the checker's stats with a
# "group_" prefix.
GROUP_FIGURES: tuple[str, ...] = (
    "members_started",
    "members_crashed",
    "members_closed",
    "deliveries",
    "redeliveries",
    "values_consumed",
    "commits_ok",
    "commits_fail",
    "commits_info",
    "commits_pending",
    "offset_reads_ok",
    "offset_reads_failed",
    "assignment_changes",
    "assignments_lost",
    "zombie_overlaps",
)
# One heartbeat call's bound at the client, plus a second for a loaded machine's timers.
ZOMBIE_GRACE_MS_DEFAULT = float(COORDINATOR_TIMEOUT_MS + 1_000)
# Op indexes kept in one entry.
_OP_INDEXES_MAX = 20
# How a run of ownership ended (see the module docstring).
_GRACEFUL_ENDS = frozenset({ASSIGN_RELEASED, MEMBER_CLOSE})


@dataclass(frozen=True, slots=True)
class GroupCheck:
    """What `check_groups` found: exact counts per kind, at most `anomalies_max` entries
    each, figures per group, and warnings."""

    anomalies: dict[str, list[Anomaly]]
    counts: dict[str, int]
    per_group: dict[str, dict[str, int]]
    warnings: tuple[str, ...]

    @property
    def totals(self) -> dict[str, int]:
        """Every figure of `GROUP_FIGURES` summed over the groups."""
        return {k: sum(g[k] for g in self.per_group.values()) for k in GROUP_FIGURES}


@dataclass(slots=True)
class _Observation:
    invoke_ms: float
    done_ms: float
    partitions: frozenset[int]
    dropped: str
    epoch: int
    member_id: str
    index: int


@dataclass(slots=True)
class _Run:
    """One run of ownership of a partition by a member incarnation."""

    process: str
    start_ms: float
    end_ms: float
    # released | lost | crash | close | end (see the module docstring)
    ended_by: str
    # The end of the run in time (the event that ended it), for explanations.
    ended_ms: float
    first_index: int
    last_index: int
    epochs: tuple[int, int]


@dataclass(slots=True)
class _Member:
    group: str
    observations: list[_Observation] = field(default_factory=list)
    crash_ms: float | None = None
    close_ms: float | None = None
    # partition -> ascending (time_ms, offset, op index) of deliveries.
    delivered: dict[int, list[tuple[float, int, int]]] = field(default_factory=dict)
    # partition -> running maximum offset delivered, aligned with `delivered`.
    delivered_max: dict[int, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Observed:
    """A committed offset seen: by a read, or by an acknowledged commit."""

    invoke_ms: float
    done_ms: float
    offset: int
    source: str  # "read" | "commit"
    process: str
    index: int


class _GroupScan:
    def __init__(self, anomalies_max: int, zombie_grace_ms: float) -> None:
        self.anomalies_max = anomalies_max
        self.zombie_grace_ms = zombie_grace_ms
        self.anomalies: dict[str, list[Anomaly]] = {k: [] for k in GROUP_ANOMALY_KINDS}
        self.counts: Counter[str] = Counter({k: 0 for k in GROUP_ANOMALY_KINDS})
        self.figures: dict[str, Counter[str]] = {}
        self.members: dict[str, _Member] = {}
        self.topic_of: dict[str, str] = {}
        # (group, partition) -> committed offsets observed.
        self.observed: dict[tuple[str, int], list[_Observed]] = defaultdict(list)
        # (group, partition) -> (time_ms, offset) of every delivery, in arrival order.
        self.group_deliveries: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
        # (group, partition, offset) -> times delivered.
        self.positions: dict[str, Counter[tuple[int, int]]] = defaultdict(Counter)
        self.values: dict[str, set[str]] = defaultdict(set)
        # Committed-offset reads, checked against deliveries once all are known.
        self.reads: list[tuple[str, int, _Observed]] = []

    def add(self, kind: str, entry: Anomaly) -> None:
        self.counts[kind] += 1
        if len(self.anomalies[kind]) < self.anomalies_max:
            self.anomalies[kind].append(entry)

    def figure(self, group: str) -> Counter[str]:
        found = self.figures.get(group)
        if found is None:
            found = self.figures[group] = Counter({k: 0 for k in GROUP_FIGURES})
        return found

    # -- one pass over the ops ----------------------------------------------------------------

    def scan(self, ops: Sequence[Op]) -> None:
        pending: dict[tuple[str, str], Op] = {}
        for op in ops:
            if not op.group:
                continue
            if op.f not in GROUP_FUNCTIONS and op.f != "poll":
                raise MalformedHistoryError(f"op {op.index}: {op.f} in group {op.group}")
            self.topic_of.setdefault(op.group, op.topic)
            key = (op.f, op.process)
            if op.type == "invoke":
                if key in pending:
                    raise MalformedHistoryError(
                        f"op {op.index}: {op.process} already has a {op.f} outstanding"
                    )
                pending[key] = op
                if op.f == "commit":
                    self._check_commit_delivered(op, self._member(op))
                continue
            invoke = pending.pop(key, None)
            if invoke is None:
                raise MalformedHistoryError(f"op {op.index}: completion without an invoke")
            self._on_completion(invoke, op)
        for (f, _process), invoke in pending.items():
            if f == "commit":
                self.figure(invoke.group)["commits_pending"] += 1

    def _member(self, op: Op) -> _Member:
        member = self.members.get(op.process)
        if member is None:
            member = self.members[op.process] = _Member(op.group)
        elif member.group != op.group:
            raise MalformedHistoryError(
                f"op {op.index}: {op.process} is in {member.group}, not {op.group}"
            )
        return member

    def _on_completion(self, invoke: Op, op: Op) -> None:
        group = op.group
        figures = self.figure(group)
        if op.f == "offsets":
            if op.type != "ok":
                figures["offset_reads_failed"] += 1
                return
            figures["offset_reads_ok"] += 1
            for partition, offset in op.offsets:
                observed = _Observed(
                    invoke.time_ms, op.time_ms, offset, "read", op.process, op.index
                )
                self.observed[(group, partition)].append(observed)
                self.reads.append((group, partition, observed))
            return
        member = self._member(op)
        if op.f == "poll":
            if op.type == "ok":
                self._on_deliveries(op, member, figures)
            return
        if op.f == "commit":
            figures[f"commits_{op.type}"] += 1
            if op.type == "ok":
                self.observed[(group, op.partition)].append(
                    _Observed(invoke.time_ms, op.time_ms, op.offset, "commit", op.process, op.index)
                )
            return
        if op.f == "assign":
            previous = member.observations[-1] if member.observations else None
            partitions = frozenset(op.partitions)
            # A change from the previous view (a member's first, empty view is none).
            before = frozenset() if previous is None else previous.partitions
            if partitions != before:
                figures["assignment_changes"] += 1
            if op.error == ASSIGN_LOST:
                figures["assignments_lost"] += 1
            member.observations.append(
                _Observation(
                    invoke.time_ms, op.time_ms, partitions, op.error, op.epoch, op.value, op.index
                )
            )
            return
        assert op.f == "member", op.f
        if op.value == MEMBER_START:
            figures["members_started"] += 1
        elif op.value == MEMBER_CRASH:
            figures["members_crashed"] += 1
            member.crash_ms = op.time_ms
        elif op.value == MEMBER_CLOSE:
            # Closing started at the invoke: nothing is fetched or handed out after it.
            member.close_ms = invoke.time_ms
            if op.type == "ok":
                figures["members_closed"] += 1

    def _on_deliveries(self, op: Op, member: _Member, figures: Counter[str]) -> None:
        positions = self.positions[op.group]
        values = self.values[op.group]
        figures["deliveries"] += len(op.reads)
        for partition, offset, value in op.reads:
            times = member.delivered.setdefault(partition, [])
            maxima = member.delivered_max.setdefault(partition, [])
            times.append((op.time_ms, offset, op.index))
            maxima.append(max(offset, maxima[-1]) if maxima else offset)
            self.group_deliveries[(op.group, partition)].append((op.time_ms, offset))
            positions[(partition, offset)] += 1
            values.add(value)

    # -- committed too far ------------------------------------------------------------------

    def _check_commit_delivered(self, invoke: Op, member: _Member) -> None:
        """(a), at the commit's invoke: a member's own ops arrive in its order, so what it
        was handed so far is exactly what it was handed before it invoked the commit."""
        maxima = member.delivered_max.get(invoke.partition)
        highest = maxima[-1] if maxima else -1
        if invoke.offset <= highest + 1:
            return
        times = member.delivered.get(invoke.partition)
        last_index = times[-1][2] if times else None
        self.add(
            "committed_too_far",
            {
                "group": invoke.group,
                "process": invoke.process,
                "partition": invoke.partition,
                "offset": invoke.offset,
                "delivered_max_offset": highest,
                "commit_invoke_index": invoke.index,
                "op_indexes": sorted(i for i in (invoke.index, last_index) if i is not None),
                "explanation": (
                    f"{invoke.process} of {invoke.group} committed {invoke.topic}/"
                    f"{invoke.partition} offset {invoke.offset} (op {invoke.index}) but had "
                    f"been handed offsets up to {highest} of it"
                ),
            },
        )

    def check_reads_not_too_far(self) -> None:
        """(b): every committed offset read is at most one past what the group had been
        handed of that partition when the read completed."""
        prefix: dict[tuple[str, int], tuple[list[float], list[int]]] = {}
        for key, deliveries in self.group_deliveries.items():
            ordered = sorted(deliveries)
            running: list[int] = []
            for _, offset in ordered:
                running.append(max(offset, running[-1]) if running else offset)
            prefix[key] = ([t for t, _ in ordered], running)
        for group, partition, observed in self.reads:
            if observed.offset <= 0:
                continue
            times, running = prefix.get((group, partition), ([], []))
            count = bisect.bisect_right(times, observed.done_ms)
            highest = running[count - 1] if count else -1
            if observed.offset <= highest + 1:
                continue
            self.add(
                "committed_too_far",
                {
                    "group": group,
                    "process": observed.process,
                    "partition": partition,
                    "offset": observed.offset,
                    "delivered_max_offset": highest,
                    "read_index": observed.index,
                    "op_indexes": [observed.index],
                    "explanation": (
                        f"op {observed.index} read {group}'s committed offset {observed.offset} "
                        f"of {self.topic_of[group]}/{partition}, but its members had been "
                        f"handed offsets up to {highest} of it"
                    ),
                },
            )

    # -- regressions ------------------------------------------------------------------------

    def check_regressions(self) -> None:
        for (group, partition), observations in sorted(self.observed.items()):
            by_done = sorted(observations, key=lambda o: o.done_ms)
            done_times = [o.done_ms for o in by_done]
            # Running maximum by completion time: the highest offset seen so far, and by whom.
            best: list[_Observed] = []
            for o in by_done:
                best.append(o if not best or o.offset > best[-1].offset else best[-1])
            for later in observations:
                count = bisect.bisect_left(done_times, later.invoke_ms)
                if not count:
                    continue
                earlier = best[count - 1]
                if later.offset >= earlier.offset:
                    continue
                self.add(
                    "committed_offset_regressed",
                    {
                        "group": group,
                        "partition": partition,
                        "earlier_offset": earlier.offset,
                        "earlier_source": earlier.source,
                        "earlier_index": earlier.index,
                        "offset": later.offset,
                        "source": later.source,
                        "index": later.index,
                        "op_indexes": sorted({earlier.index, later.index}),
                        "explanation": (
                            f"{group}'s committed offset of {self.topic_of[group]}/{partition} "
                            f"was {earlier.offset} ({_seen(earlier)}) and then "
                            f"{later.offset} ({_seen(later)}, invoked after)"
                        ),
                    },
                )

    # -- ownership --------------------------------------------------------------------------

    def runs(self) -> dict[tuple[str, int], list[_Run]]:
        """Every member's runs of ownership, by (group, partition)."""
        out: dict[tuple[str, int], list[_Run]] = defaultdict(list)
        for process, member in self.members.items():
            observations = member.observations
            open_runs: dict[int, int] = {}  # partition -> index of the run's first observation
            for position, observation in enumerate(observations):
                for partition in list(open_runs):
                    if partition not in observation.partitions or observation.dropped:
                        start = open_runs.pop(partition)
                        ended_by = observation.dropped or ASSIGN_LOST
                        run = _run_of(
                            process, observations[start:position], ended_by, observation.done_ms
                        )
                        if run is not None:
                            out[(member.group, partition)].append(run)
                for partition in observation.partitions:
                    open_runs.setdefault(partition, position)
            if member.crash_ms is not None:
                ended_by, ended_ms = MEMBER_CRASH, member.crash_ms
            elif member.close_ms is not None:
                ended_by, ended_ms = MEMBER_CLOSE, member.close_ms
            else:
                ended_by, ended_ms = "end", observations[-1].done_ms if observations else 0.0
            for partition, start in open_runs.items():
                run = _run_of(process, observations[start:], ended_by, ended_ms)
                if run is not None:
                    out[(member.group, partition)].append(run)
        return out

    def check_ownership(self) -> None:
        for (group, partition), runs in sorted(self.runs().items()):
            runs.sort(key=lambda r: r.start_ms)
            active: list[_Run] = []
            for run in runs:
                active = [a for a in active if a.end_ms > run.start_ms]
                for earlier in active:
                    if earlier.process == run.process:
                        continue
                    if earlier.ended_by not in _GRACEFUL_ENDS and (
                        run.start_ms >= earlier.end_ms - self.zombie_grace_ms
                    ):
                        self.figure(group)["zombie_overlaps"] += 1
                        continue
                    self._double_owned(group, partition, earlier, run)
                active.append(run)

    def _double_owned(self, group: str, partition: int, a: _Run, b: _Run) -> None:
        overlap_ms = round(min(a.end_ms, b.end_ms) - b.start_ms, 3)
        self.add(
            "partition_double_owned",
            {
                "group": group,
                "partition": partition,
                "first_process": a.process,
                "first_owned_ms": [a.start_ms, a.end_ms],
                "first_epochs": list(a.epochs),
                "first_ended_by": a.ended_by,
                "second_process": b.process,
                "second_owned_ms": [b.start_ms, b.end_ms],
                "second_epochs": list(b.epochs),
                "overlap_ms": overlap_ms,
                "op_indexes": sorted({a.first_index, a.last_index, b.first_index, b.last_index})[
                    :_OP_INDEXES_MAX
                ],
                "explanation": (
                    f"{a.process} owned {self.topic_of[group]}/{partition} from "
                    f"{a.start_ms:.0f} to {a.end_ms:.0f} ms (epochs {a.epochs[0]}-{a.epochs[1]}, "
                    f"ended by {a.ended_by} at {a.ended_ms:.0f} ms) and {b.process} of the same "
                    f"group owned it from {b.start_ms:.0f} ms: {overlap_ms:.0f} ms together"
                ),
            },
        )

    # -- at least once ----------------------------------------------------------------------

    def check_consumed(self, acked: Iterable[Op]) -> None:
        acked_ops = list(acked)
        for group in sorted(self.figures):
            topic = self.topic_of[group]
            values = self.values[group]
            consumed = 0
            for done in acked_ops:
                if done.topic != topic:
                    continue
                if done.value in values:
                    consumed += 1
                    continue
                self.add(
                    "group_unconsumed",
                    {
                        "group": group,
                        "value": done.value,
                        "partition": done.partition,
                        "offset": done.offset,
                        "send_ok_index": done.index,
                        "op_indexes": [done.index],
                        "explanation": (
                            f"{done.value!r} acked at {topic}/{done.partition}@{done.offset} "
                            f"(op {done.index}) was never handed to a member of {group}"
                        ),
                    },
                )
            figures = self.figure(group)
            figures["values_consumed"] = consumed
            figures["redeliveries"] = sum(n - 1 for n in self.positions[group].values() if n > 1)


def _run_of(
    process: str,
    observations: Sequence[_Observation],
    ended_by: str,
    ended_ms: float | None = None,
) -> _Run | None:
    """The run of these consecutive observations (None: it covers no interval); it ended
    by `ended_by` at `ended_ms` (default: the observation after the last, its time)."""
    if len(observations) < 2:
        return None  # one observation covers no interval (module docstring)
    first, last = observations[0], observations[-1]
    if last.invoke_ms <= first.done_ms:
        return None
    return _Run(
        process,
        first.done_ms,
        last.invoke_ms,
        ended_by,
        last.done_ms if ended_ms is None else ended_ms,
        first.index,
        last.index,
        (first.epoch, last.epoch),
    )


def _seen(observed: _Observed) -> str:
    verb = "read by" if observed.source == "read" else "committed by"
    return f"{verb} {observed.process}, op {observed.index}"


def check_groups(
    ops: Sequence[Op],
    *,
    acked: Iterable[Op],
    groups_drained: bool,
    anomalies_max: int,
    zombie_grace_ms: float = ZOMBIE_GRACE_MS_DEFAULT,
) -> GroupCheck:
    """The group checks of the module docstring over `ops` (the whole history); `acked`:
    the `ok` completions of the sends. Raises `MalformedHistoryError` on group ops that
    break the pairing rules."""
    assert zombie_grace_ms >= 0
    scan = _GroupScan(anomalies_max, zombie_grace_ms)
    scan.scan(ops)
    scan.check_reads_not_too_far()
    scan.check_regressions()
    scan.check_ownership()
    scan.check_consumed(acked)
    warnings: list[str] = []
    if not groups_drained and scan.counts["group_unconsumed"]:
        warnings.append(
            f"groups did not drain: {scan.counts['group_unconsumed']} acknowledged values no "
            "member of some group was handed are not counted as errors"
        )
    zombies = sum(f["zombie_overlaps"] for f in scan.figures.values())
    if zombies:
        warnings.append(
            f"{zombies} overlaps of partition ownership within {zombie_grace_ms:.0f} ms of an "
            "ungraceful end (a member fenced, evicted or crashed before it noticed): allowed"
        )
    return GroupCheck(
        anomalies=scan.anomalies,
        counts=dict(scan.counts),
        per_group={g: dict(scan.figures[g]) for g in sorted(scan.figures)},
        warnings=tuple(warnings),
    )
