"""The one checker every chaos test ends with: a history (and replica state) in, findings out.

`check` is pure and linear-ish in the size of the history: every lookup is a dict keyed by
value or by (topic, partition, offset); the only sorts are of read offsets per partition and
of the (few) offending keys. A history of 1e6 ops checks in seconds.

Anomalies (keys of `CheckResult.anomalies` / `counts`). "Acked" = a send with an `ok`
completion; "read" = any record in any `ok` poll (consumers during the run and the final
reads after heal are treated together); a position is (topic, partition, offset).

- `lost`: an acked value never read, although some poll read its acked offset or a later
  one in that partition (the log moved past it without it).
- `unseen`: an acked value never read, and no poll reached its offset. An error only when
  `final_read_complete` (the runner's final read after heal covered every partition up to
  its high watermark); otherwise a warning, since the value may simply not have been read.
- `duplicate`: one value at more than one position (counting reads and its acked position).
  An error by default: the workload's producers are idempotent, so a retried send must be
  answered with its original offset, never appended twice. `duplicates_are_errors=False`
  reports them as a warning only (for histories of a producer that is not idempotent).
- `inconsistent_offsets`: one position holding two different values: two polls disagree, a
  poll disagrees with an ack, or two sends were acked at the same position.
- `aborted_read`: a value whose send definitely failed (`fail`) was read.
- `unexpected_read`: a value read that no send in the history ever carried.
- `non_monotonic_send`: within one producer process and one partition, a send invoked after
  another send of that process completed ok got an offset that is not higher.
- `non_monotonic_poll`: within one consumer process and one partition, a read offset is not
  higher than the previous read (within one poll or across its consecutive polls). Rule: a
  seek (see `raftmq.chaos.history`) forgets the consumer's previous position for that
  partition (or every partition of the topic), so a rewind recorded as a seek is allowed;
  fail / info polls do not move the position.
- `poll_skip`: the same consumer/partition sequence jumps over offsets that some poll read
  (the consumer missed records that exist). Jumps over offsets nobody read are `offset_gap`.
- `offset_gap`: the offsets read in a partition (all polls together) are not contiguous
  from the lowest one read; raftmq gives every record its own offset, so a hole is a bug (or
  a workload that did not read everything: consumers must start at the earliest offset).
- `replica_divergence`: replicas of one partition whose batch bytes hash differently below
  their lowest high watermark (`ReplicaLog.compared_below_offset`), or, between replicas
  with equal high watermarks, below that high watermark (one entry per partition).
- `replica_hw_mismatch`: replicas of one partition whose high watermarks differ after heal
  (a warning: followers learn the HW one fetch late).

Consumer groups (`raftmq.chaos.group_checker`, which states each rule exactly): a group
member's deliveries count as reads above (positions and values; not the per-consumer
ordering), and

- `committed_offset_regressed`: a group's committed offset of a partition went backwards
  (reads of the committed offsets, and acknowledged commits, in real-time order);
- `committed_too_far`: a member committed beyond what it was handed + 1, or the group's
  committed offset was seen beyond what its members were handed + 1;
- `partition_double_owned`: two members of one group owned a partition at the same time
  (from their own assignment observations; a member that ended ungracefully is allowed the
  coordinator's session lag);
- `group_unconsumed`: an acknowledged value no member of a group was handed; an error
  only when `groups_drained` (otherwise a warning).

Every anomaly entry is a JSON-serializable dict with `op_indexes` (the offending ops, sorted,
at most `OP_INDEXES_PER_ENTRY_MAX`) and a one-line `explanation`, plus kind-specific fields.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raftmq.chaos.group_checker import (
    GROUP_ANOMALY_KINDS,
    GROUP_FIGURES,
    ZOMBIE_GRACE_MS_DEFAULT,
    check_groups,
)
from raftmq.chaos.history import (
    FaultWindow,
    History,
    MalformedHistoryError,
    Op,
    ReplicaLog,
    validate_op,
)

# A JSON-serializable finding; see the module docstring for the common fields.
Anomaly = dict[str, Any]
# (topic, partition)
PartitionKey = tuple[str, int]
# (topic, partition, offset)
Position = tuple[str, int, int]

ANOMALY_KINDS: tuple[str, ...] = (
    "lost",
    "unseen",
    "duplicate",
    "inconsistent_offsets",
    "aborted_read",
    "unexpected_read",
    "non_monotonic_send",
    "non_monotonic_poll",
    "poll_skip",
    "offset_gap",
    "replica_divergence",
    "replica_hw_mismatch",
    *GROUP_ANOMALY_KINDS,
)
# Kinds that make a history invalid whatever the flags of `check`.
_ALWAYS_ERRORS: frozenset[str] = frozenset(ANOMALY_KINDS) - {
    "unseen",
    "duplicate",
    "replica_hw_mismatch",
    "group_unconsumed",
}

# Keys of `CheckResult.stats`, always all present. "*_pending": invoked, never completed.
STATS_KEYS: tuple[str, ...] = (
    *(f"{f}_{t}" for f in ("send", "poll") for t in ("invoke", "ok", "fail", "info", "pending")),
    "seeks",
    "values_acked",
    "values_failed",
    "values_indeterminate",
    # Indeterminate (info or never completed) sends that a poll showed did happen.
    "values_indeterminate_read",
    "values_read",
    "reads_total",
    "partitions_read",
    "faults",
    # Consumer groups, summed over the groups (`CheckResult.groups` has them per group).
    *(f"group_{figure}" for figure in GROUP_FIGURES),
)

# Entries kept per anomaly kind (counts stay exact): a broken run can have millions of
# anomalies and the report must stay readable and small.
ANOMALIES_PER_KIND_MAX_DEFAULT = 1000
# Op indexes (and offsets, values) kept in one entry.
OP_INDEXES_PER_ENTRY_MAX = 20


@dataclass(frozen=True, slots=True)
class RecoveryStats:
    """Liveness of one fault kind, from `FaultWindow.recovered_*` (ms since fault start).

    Medians and maxima are over the faults that recovered (None if none did)."""

    kind: str
    count: int
    # Until a produce succeeded again.
    median_ms: float | None
    max_ms: float | None
    unrecovered: int
    # Until every affected partition had a leader again.
    leader_median_ms: float | None
    leader_max_ms: float | None
    leader_unrecovered: int
    # Faults the nemesis never healed (`end_ms` None).
    unhealed: int

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "median_ms": self.median_ms,
            "max_ms": self.max_ms,
            "unrecovered": self.unrecovered,
            "leader_median_ms": self.leader_median_ms,
            "leader_max_ms": self.leader_max_ms,
            "leader_unrecovered": self.leader_unrecovered,
            "unhealed": self.unhealed,
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What `check` found. `counts` has every kind of `ANOMALY_KINDS` (0 included) and is
    exact; `anomalies[kind]` keeps at most `anomalies_per_kind_max` entries."""

    valid: bool
    anomalies: dict[str, list[Anomaly]]
    counts: dict[str, int]
    # Every key of `STATS_KEYS`: ops by f and type ("send_ok", "poll_info", "send_pending" =
    # invoked, never completed), seeks, distinct values acked / failed / indeterminate / read,
    # records read, partitions read, faults.
    stats: dict[str, int]
    recovery: dict[str, RecoveryStats]
    # The anomaly kinds that count against `valid` under the flags of this check.
    error_kinds: tuple[str, ...]
    # Findings that do not make the history invalid but a person should read.
    warnings: tuple[str, ...]
    # Per consumer group: its figures (`raftmq.chaos.group_checker.GROUP_FIGURES`).
    groups: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def errors(self) -> dict[str, int]:
        """Counts of the error kinds that occurred."""
        return {k: self.counts[k] for k in self.error_kinds if self.counts[k]}

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "error_kinds": list(self.error_kinds),
            "counts": dict(self.counts),
            "anomalies": {k: list(v) for k, v in self.anomalies.items()},
            "stats": dict(self.stats),
            "recovery": {k: v.to_json_dict() for k, v in self.recovery.items()},
            "warnings": list(self.warnings),
            "groups": {g: dict(figures) for g, figures in self.groups.items()},
        }


def check(
    history: History | Sequence[Op],
    *,
    replicas: Sequence[ReplicaLog] = (),
    faults: Sequence[FaultWindow] = (),
    final_read_complete: bool = True,
    duplicates_are_errors: bool = True,
    groups_drained: bool = True,
    zombie_grace_ms: float = ZOMBIE_GRACE_MS_DEFAULT,
    anomalies_per_kind_max: int = ANOMALIES_PER_KIND_MAX_DEFAULT,
) -> CheckResult:
    """Check a finished run. Pure: reads its arguments, returns findings.

    `history` is a `History` (a snapshot is taken) or its ops in index order.
    `final_read_complete`: the runner read every partition to its high watermark after heal
    (then unread acked values are errors). `duplicates_are_errors` (the default): a value
    at two positions makes the history invalid (the producers were idempotent).
    `groups_drained`: every consumer group committed up to the high watermarks after heal
    (then an acked value a group was never handed is an error); `zombie_grace_ms`: see
    `raftmq.chaos.group_checker`. Raises `MalformedHistoryError` when the history breaks the
    pairing rules of `raftmq.chaos.history` (a workload bug, not a system anomaly).
    """
    assert anomalies_per_kind_max >= 0
    ops = history.ops() if isinstance(history, History) else history
    state = _Scan(anomalies_per_kind_max)
    state.scan(ops)
    state.resolve_values()
    state.resolve_offsets()
    state.collect_details(ops)
    state.check_replicas(replicas)
    groups = check_groups(
        ops,
        acked=(done for done in state.send_done.values() if done.type == "ok"),
        groups_drained=groups_drained,
        anomalies_max=anomalies_per_kind_max,
        zombie_grace_ms=zombie_grace_ms,
    )
    for kind in GROUP_ANOMALY_KINDS:
        state.counts[kind] = groups.counts[kind]
        state.anomalies[kind] = groups.anomalies[kind]
    for figure, total in groups.totals.items():
        state.stats[f"group_{figure}"] = total

    error_kinds = set(_ALWAYS_ERRORS)
    if final_read_complete:
        error_kinds.add("unseen")
    if duplicates_are_errors:
        error_kinds.add("duplicate")
    if groups_drained:
        error_kinds.add("group_unconsumed")
    ordered_error_kinds = tuple(k for k in ANOMALY_KINDS if k in error_kinds)
    recovery = recovery_stats(faults)
    state.stats["faults"] = len(faults)
    stats = {key: state.stats[key] for key in STATS_KEYS}
    return CheckResult(
        valid=not any(state.counts[k] for k in ordered_error_kinds),
        anomalies={k: state.anomalies[k] for k in ANOMALY_KINDS},
        counts={k: state.counts[k] for k in ANOMALY_KINDS},
        stats=stats,
        recovery=recovery,
        error_kinds=ordered_error_kinds,
        warnings=(
            *_warnings(state, recovery, faults, final_read_complete, duplicates_are_errors),
            *groups.warnings,
        ),
        groups=groups.per_group,
    )


def recovery_stats(faults: Iterable[FaultWindow]) -> dict[str, RecoveryStats]:
    """Per fault kind (sorted by kind): how long until produce / leadership recovered."""
    by_kind: dict[str, list[FaultWindow]] = defaultdict(list)
    for fault in faults:
        by_kind[fault.kind].append(fault)
    out: dict[str, RecoveryStats] = {}
    for kind in sorted(by_kind):
        windows = by_kind[kind]
        produce_ms = [w.recovered_produce_ms for w in windows if w.recovered_produce_ms is not None]
        leader_ms = [w.recovered_leader_ms for w in windows if w.recovered_leader_ms is not None]
        out[kind] = RecoveryStats(
            kind=kind,
            count=len(windows),
            median_ms=float(statistics.median(produce_ms)) if produce_ms else None,
            max_ms=float(max(produce_ms)) if produce_ms else None,
            unrecovered=len(windows) - len(produce_ms),
            leader_median_ms=float(statistics.median(leader_ms)) if leader_ms else None,
            leader_max_ms=float(max(leader_ms)) if leader_ms else None,
            leader_unrecovered=len(windows) - len(leader_ms),
            unhealed=sum(1 for w in windows if w.end_ms is None),
        )
    return out


def _warnings(
    state: _Scan,
    recovery: dict[str, RecoveryStats],
    faults: Sequence[FaultWindow],
    final_read_complete: bool,
    duplicates_are_errors: bool,
) -> list[str]:
    out: list[str] = []
    if not final_read_complete and state.counts["unseen"]:
        out.append(
            f"final read incomplete: {state.counts['unseen']} acknowledged values never read "
            "are not counted as errors (their durability is unverified)"
        )
    if not duplicates_are_errors and state.counts["duplicate"]:
        out.append(
            f"{state.counts['duplicate']} duplicated values (allowed: "
            "duplicates_are_errors=False, the producer was not idempotent)"
        )
    if state.counts["replica_hw_mismatch"]:
        out.append(
            f"{state.counts['replica_hw_mismatch']} partitions whose replicas disagree on the "
            "high watermark after heal (their logs were compared below the lowest one)"
        )
    for kind, stats in recovery.items():
        if stats.unrecovered:
            out.append(
                f"{stats.unrecovered} of {stats.count} {kind} faults: produce never recovered"
            )
        if stats.leader_unrecovered:
            out.append(
                f"{stats.leader_unrecovered} of {stats.count} {kind} faults: "
                "a partition never had a leader again"
            )
    unhealed = [f for f in faults if f.end_ms is None]
    if unhealed:
        starts = ", ".join(f"{f.kind}@{f.start_ms:.0f}ms" for f in unhealed[:5])
        out.append(f"{len(unhealed)} faults never healed ({starts})")
    pending = state.stats["send_pending"] + state.stats["poll_pending"]
    if pending:
        out.append(f"{pending} operations never completed (treated as indeterminate)")
    return out


def _capped(items: Iterable[int]) -> list[int]:
    return sorted(set(items))[:OP_INDEXES_PER_ENTRY_MAX]


class _Scan:
    """The passes of `check` and the indexes they share. Not thread-safe, single use."""

    def __init__(self, anomalies_per_kind_max: int) -> None:
        self.anomalies_per_kind_max = anomalies_per_kind_max
        self.anomalies: dict[str, list[Anomaly]] = {k: [] for k in ANOMALY_KINDS}
        self.counts: Counter[str] = Counter({k: 0 for k in ANOMALY_KINDS})
        self.stats: Counter[str] = Counter()
        # Sends, by their unique value.
        self.send_invoke: dict[str, Op] = {}
        self.send_done: dict[str, Op] = {}
        # The first value acked at each position.
        self.acked_at: dict[Position, str] = {}
        # Further values acked at a position already in `acked_at` (bounded per position).
        self.extra_acks: dict[Position, list[str]] = {}
        # The first value read at each position, and the op that read it.
        self.read_at: dict[Position, tuple[str, int]] = {}
        # The first position each value was read at, and the op that read it.
        self.value_read_at: dict[str, tuple[Position, int]] = {}
        # The highest offset read per partition, and the op that read it.
        self.max_read: dict[PartitionKey, tuple[int, int]] = {}
        # Found in the scan, detailed later (they need every observation of the key/value).
        self.conflict_positions: set[Position] = set()
        self.duplicate_values: set[str] = set()
        # (process, topic, partition, from_offset, from_op, to_offset, to_op): consumer jumps
        # whose skipped offsets are only known once every poll has been seen.
        self.jumps: list[tuple[str, str, int, int, int, int, int]] = []
        # Sorted distinct read offsets per partition (built by `resolve_offsets`).
        self.read_offsets: dict[PartitionKey, list[int]] = {}

    def add(self, kind: str, entry: Anomaly) -> None:
        self.counts[kind] += 1
        if len(self.anomalies[kind]) < self.anomalies_per_kind_max:
            self.anomalies[kind].append(entry)

    # -- pass 1: one scan over the ops ------------------------------------------------------

    def scan(self, ops: Sequence[Op]) -> None:
        """Pair completions with invokes, index reads and acks, and check the per-process
        orderings (they need real-time order, i.e. history order)."""
        poll_pending: dict[str, Op] = {}
        # Per (process, topic, partition): completion indexes of its ok sends, and the running
        # maximum (offset, ok op index, value) of their offsets, both in completion order.
        send_order: dict[tuple[str, str, int], tuple[list[int], list[tuple[int, int, str]]]] = {}
        # Per (consumer process, topic): partition -> (last offset read, op index).
        cursors: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
        stats = self.stats
        # Counted by tuple and named once at the end: formatting a key per op is slow.
        op_kinds: Counter[tuple[str, str]] = Counter()
        previous_index = -1
        for op in ops:
            if op.index <= previous_index:
                raise MalformedHistoryError(f"op index {op.index} after {previous_index}")
            previous_index = op.index
            validate_op(op)
            # Group polls are counted by the group checks, apart from the consumers' polls.
            op_kinds[(op.f if not op.group else f"group {op.f}", op.type)] += 1
            if op.f == "send":
                if op.type == "invoke":
                    if op.value in self.send_invoke:
                        raise MalformedHistoryError(
                            f"op {op.index}: send value {op.value!r} is not unique"
                        )
                    self.send_invoke[op.value] = op
                    continue
                invoke = self.send_invoke.get(op.value)
                if invoke is None or op.value in self.send_done:
                    raise MalformedHistoryError(f"op {op.index}: completion without an invoke")
                self.send_done[op.value] = op
                if op.type == "ok":
                    self._on_ack(op, invoke, send_order)
                continue
            if op.f != "poll":
                continue  # the other group functions: `raftmq.chaos.group_checker`
            # A poll.
            if op.type == "invoke":
                if op.process in poll_pending:
                    raise MalformedHistoryError(
                        f"op {op.index}: {op.process} already has a poll outstanding"
                    )
                poll_pending[op.process] = op
                continue
            if poll_pending.pop(op.process, None) is None:
                raise MalformedHistoryError(f"op {op.index}: completion without an invoke")
            if op.type != "ok":
                continue
            if op.group:
                # A group member's deliveries: positions and values as any read, but no
                # per-consumer ordering (rebalances rewind and skip across assignments).
                self._on_reads(op, None)
                continue
            cursor = cursors.setdefault((op.process, op.topic), {})
            if op.is_seek:
                stats["seeks"] += 1
                if op.partition < 0:
                    cursor.clear()
                else:
                    cursor.pop(op.partition, None)
                continue
            self._on_reads(op, cursor)
        for f in ("send", "poll"):
            for op_type in ("invoke", "ok", "fail", "info"):
                stats[f"{f}_{op_type}"] = op_kinds[(f, op_type)]
        stats["send_pending"] = stats["send_invoke"] - len(self.send_done)
        stats["poll_pending"] = sum(1 for op in poll_pending.values() if not op.group)

    def _on_ack(
        self,
        op: Op,
        invoke: Op,
        send_order: dict[tuple[str, str, int], tuple[list[int], list[tuple[int, int, str]]]],
    ) -> None:
        position = (op.topic, op.partition, op.offset)
        other = self.acked_at.setdefault(position, op.value)
        if other != op.value:
            self.conflict_positions.add(position)
            extra = self.extra_acks.setdefault(position, [])
            if len(extra) < OP_INDEXES_PER_ENTRY_MAX:
                extra.append(op.value)
        done_indexes, running_max = send_order.setdefault(
            (op.process, op.topic, op.partition), ([], [])
        )
        # Sends of this process that completed ok before this one was invoked must all have
        # lower offsets; completions are appended in index order, so bisect finds them.
        before = bisect.bisect_left(done_indexes, invoke.index)
        if before:
            max_offset, max_ok_index, max_value = running_max[before - 1]
            if op.offset <= max_offset:
                self.add(
                    "non_monotonic_send",
                    {
                        "process": op.process,
                        "topic": op.topic,
                        "partition": op.partition,
                        "earlier_value": max_value,
                        "earlier_offset": max_offset,
                        "earlier_ok_index": max_ok_index,
                        "value": op.value,
                        "offset": op.offset,
                        "invoke_index": invoke.index,
                        "ok_index": op.index,
                        "op_indexes": _capped((max_ok_index, invoke.index, op.index)),
                        "explanation": (
                            f"{op.process} sent {op.value!r} (op {invoke.index}) after "
                            f"{max_value!r} was acked at offset {max_offset} (op {max_ok_index}),"
                            f" yet it was acked at offset {op.offset} of "
                            f"{op.topic}/{op.partition}"
                        ),
                    },
                )
        best = (op.offset, op.index, op.value)
        if running_max and running_max[-1][0] >= op.offset:
            best = running_max[-1]
        done_indexes.append(op.index)
        running_max.append(best)

    def _on_reads(self, op: Op, cursor: dict[int, tuple[int, int]] | None) -> None:
        """Index the reads of an ok poll; `cursor` (the consumer's last read per partition)
        None for a group member's: no ordering checks, not counted in `reads_total`."""
        # The hot loop of the checker: keep it to dict lookups.
        topic, index, process = op.topic, op.index, op.process
        read_at, value_read_at, max_read = self.read_at, self.value_read_at, self.max_read
        if cursor is not None:
            self.stats["reads_total"] += len(op.reads)
        for partition, offset, value in op.reads:
            position = (topic, partition, offset)
            seen = read_at.get(position)
            if seen is None:
                read_at[position] = (value, index)
            elif seen[0] != value:
                self.conflict_positions.add(position)
            first = value_read_at.get(value)
            if first is None:
                value_read_at[value] = (position, index)
            elif first[0] != position:
                self.duplicate_values.add(value)
            highest = max_read.get((topic, partition))
            if highest is None or offset > highest[0]:
                max_read[(topic, partition)] = (offset, index)
            if cursor is None:
                continue
            last = cursor.get(partition)
            cursor[partition] = (offset, index)
            if last is None:
                continue
            last_offset, last_index = last
            if offset <= last_offset:
                self.add(
                    "non_monotonic_poll",
                    {
                        "process": process,
                        "topic": topic,
                        "partition": partition,
                        "previous_offset": last_offset,
                        "previous_op_index": last_index,
                        "offset": offset,
                        "op_index": index,
                        "op_indexes": _capped((last_index, index)),
                        "explanation": (
                            f"{process} read offset {offset} of {topic}/{partition} (op {index})"
                            f" after offset {last_offset} (op {last_index}) without a seek"
                        ),
                    },
                )
            elif offset > last_offset + 1:
                self.jumps.append(
                    (process, topic, partition, last_offset, last_index, offset, index)
                )

    # -- pass 2: per value and per partition ------------------------------------------------

    def resolve_values(self) -> None:
        """Lost / unseen / aborted / unexpected reads, and positions conflicting with acks."""
        stats = self.stats
        for value, done in self.send_done.items():
            if done.type == "ok":
                stats["values_acked"] += 1
                self._resolve_acked(value, done)
            elif done.type == "fail":
                stats["values_failed"] += 1
                read = self.value_read_at.get(value)
                if read is not None:
                    self._aborted_read(value, done, read)
        stats["values_indeterminate"] = len(self.send_invoke) - (
            stats["values_acked"] + stats["values_failed"]
        )
        stats["values_indeterminate_read"] = sum(
            1
            for value in self.send_invoke
            if value in self.value_read_at
            and (value not in self.send_done or self.send_done[value].type == "info")
        )
        stats["values_read"] = len(self.value_read_at)
        stats["partitions_read"] = len(self.max_read)
        for value, ((topic, partition, offset), index) in self.value_read_at.items():
            if value not in self.send_invoke:
                self.add(
                    "unexpected_read",
                    {
                        "value": value,
                        "topic": topic,
                        "partition": partition,
                        "offset": offset,
                        "read_op_index": index,
                        "op_indexes": [index],
                        "explanation": (
                            f"op {index} read {value!r} at {topic}/{partition}@{offset} but no "
                            "send in the history carried that value"
                        ),
                    },
                )

    def _resolve_acked(self, value: str, done: Op) -> None:
        position = (done.topic, done.partition, done.offset)
        read = self.read_at.get(position)
        if read is not None and read[0] != value:
            self.conflict_positions.add(position)
        first = self.value_read_at.get(value)
        if first is not None:
            if first[0] != position:
                # Read somewhere other than where it was acked: two positions.
                self.duplicate_values.add(value)
            if read is not None or first[0] == position:
                return
            # Read elsewhere (an earlier attempt of a retried send), but the acknowledged
            # position itself was never read: that acknowledged write may be gone.
        invoke_index = self.send_invoke[value].index
        where = f"{done.topic}/{done.partition}@{done.offset}"
        highest = self.max_read.get((done.topic, done.partition))
        entry: Anomaly = {
            "value": value,
            "topic": done.topic,
            "partition": done.partition,
            "offset": done.offset,
            "send_invoke_index": invoke_index,
            "send_ok_index": done.index,
            "max_read_offset": -1 if highest is None else highest[0],
        }
        if highest is not None and highest[0] >= done.offset:
            entry["read_beyond_op_index"] = highest[1]
            entry["op_indexes"] = _capped((invoke_index, done.index, highest[1]))
            entry["explanation"] = (
                f"{value!r} acked at {where} (op {done.index}) was never read, but op "
                f"{highest[1]} read up to offset {highest[0]} of that partition"
            )
            self.add("lost", entry)
        else:
            entry["op_indexes"] = _capped((invoke_index, done.index))
            entry["explanation"] = (
                f"{value!r} acked at {where} (op {done.index}) was never read; reads of that "
                f"partition reached offset {entry['max_read_offset']}"
            )
            self.add("unseen", entry)

    def _aborted_read(self, value: str, done: Op, read: tuple[Position, int]) -> None:
        (topic, partition, offset), read_index = read
        invoke_index = self.send_invoke[value].index
        self.add(
            "aborted_read",
            {
                "value": value,
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "send_invoke_index": invoke_index,
                "send_fail_index": done.index,
                "send_error": done.error,
                "read_op_index": read_index,
                "op_indexes": _capped((invoke_index, done.index, read_index)),
                "explanation": (
                    f"{value!r} failed to send ({done.error or 'fail'}, op {done.index}) yet op "
                    f"{read_index} read it at {topic}/{partition}@{offset}"
                ),
            },
        )

    def resolve_offsets(self) -> None:
        """Offset gaps per partition, and which consumer jumps skipped records someone read."""
        by_partition: dict[PartitionKey, list[int]] = defaultdict(list)
        for topic, partition, offset in self.read_at:
            by_partition[(topic, partition)].append(offset)
        for key in sorted(by_partition):
            offsets = by_partition[key]
            offsets.sort()
            self.read_offsets[key] = offsets
            self._offset_gaps(key, offsets)
        for process, topic, partition, from_offset, from_index, to_offset, to_index in self.jumps:
            offsets = self.read_offsets[(topic, partition)]
            low = bisect.bisect_right(offsets, from_offset)
            high = bisect.bisect_left(offsets, to_offset)
            if low == high:
                continue  # Nobody read the skipped offsets: an `offset_gap`, not a skip.
            skipped = offsets[low : min(high, low + OP_INDEXES_PER_ENTRY_MAX)]
            self.add(
                "poll_skip",
                {
                    "process": process,
                    "topic": topic,
                    "partition": partition,
                    "from_offset": from_offset,
                    "from_op_index": from_index,
                    "to_offset": to_offset,
                    "to_op_index": to_index,
                    "skipped_offsets": skipped,
                    "skipped_count": high - low,
                    "op_indexes": _capped((from_index, to_index)),
                    "explanation": (
                        f"{process} read {topic}/{partition} offset {to_offset} (op {to_index}) "
                        f"right after {from_offset} (op {from_index}), skipping {high - low} "
                        f"offsets other polls read (first {skipped[0]})"
                    ),
                },
            )

    def _offset_gaps(self, key: PartitionKey, offsets: list[int]) -> None:
        topic, partition = key
        for below, above in itertools.pairwise(offsets):
            if above == below + 1:
                continue
            below_index = self.read_at[(topic, partition, below)][1]
            above_index = self.read_at[(topic, partition, above)][1]
            self.add(
                "offset_gap",
                {
                    "topic": topic,
                    "partition": partition,
                    "missing_from_offset": below + 1,
                    "missing_to_offset": above - 1,
                    "missing_count": above - below - 1,
                    "below_op_index": below_index,
                    "above_op_index": above_index,
                    "op_indexes": _capped((below_index, above_index)),
                    "explanation": (
                        f"no poll read offsets {below + 1}..{above - 1} of {topic}/{partition}, "
                        f"though offsets {below} (op {below_index}) and {above} "
                        f"(op {above_index}) were read"
                    ),
                },
            )

    # -- pass 3: details of positions and values seen more than once ------------------------

    def collect_details(self, ops: Sequence[Op]) -> None:
        """Inconsistent positions and duplicates need every observation of the position or
        value; rescan the reads, recording only the (bounded) reported ones."""
        self.counts["inconsistent_offsets"] = len(self.conflict_positions)
        self.counts["duplicate"] = len(self.duplicate_values)
        if not self.conflict_positions and not self.duplicate_values:
            return
        cap = self.anomalies_per_kind_max
        positions = sorted(self.conflict_positions)[:cap]
        values = sorted(self.duplicate_values, key=self._first_seen_index)[:cap]
        # position -> value -> read op indexes, and value -> position -> read op indexes.
        by_position: dict[Position, dict[str, list[int]]] = {p: {} for p in positions}
        by_value: dict[str, dict[Position, list[int]]] = {v: {} for v in values}
        for op in ops:
            if op.f != "poll" or op.type != "ok":
                continue
            for partition, offset, value in op.reads:
                position = (op.topic, partition, offset)
                values_here = by_position.get(position)
                if values_here is not None:
                    _append_capped(values_here.setdefault(value, []), op.index)
                positions_of = by_value.get(value)
                if positions_of is not None:
                    _append_capped(positions_of.setdefault(position, []), op.index)
        for position in positions:
            self.anomalies["inconsistent_offsets"].append(
                self._inconsistent(position, by_position[position])
            )
        for value in values:
            self.anomalies["duplicate"].append(self._duplicate(value, by_value[value]))

    def _first_seen_index(self, value: str) -> int:
        first_read_index = self.value_read_at[value][1]
        done = self.send_done.get(value)
        if done is not None and done.type == "ok":
            return min(done.index, first_read_index)
        return first_read_index

    def _inconsistent(self, position: Position, reads: dict[str, list[int]]) -> Anomaly:
        topic, partition, offset = position
        first_acked = self.acked_at.get(position)
        acked = [] if first_acked is None else [first_acked, *self.extra_acks.get(position, ())]
        ack_index = {value: self.send_done[value].index for value in acked}
        observed: list[dict[str, Any]] = []
        op_indexes: list[int] = []
        described: list[str] = []
        for value in [*acked, *(v for v in reads if v not in ack_index)]:
            read_indexes = reads.get(value, [])
            ok_index = ack_index.get(value)
            observed.append(
                {"value": value, "acked_op_index": ok_index, "read_op_indexes": read_indexes}
            )
            op_indexes.extend(read_indexes)
            sources = [f"read by op {i}" for i in read_indexes[:1]]
            if ok_index is not None:
                op_indexes.append(ok_index)
                sources.insert(0, f"acked by op {ok_index}")
            described.append(f"{value!r} ({', '.join(sources)})")
        return {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "values": observed,
            "op_indexes": _capped(op_indexes),
            "explanation": (
                f"{topic}/{partition}@{offset} holds {len(observed)} different values: "
                + "; ".join(described[:4])
            ),
        }

    def _duplicate(self, value: str, reads: dict[Position, list[int]]) -> Anomaly:
        done = self.send_done.get(value)
        acked_position = None
        if done is not None and done.type == "ok":
            acked_position = (done.topic, done.partition, done.offset)
        all_positions = set(reads)
        if acked_position is not None:
            all_positions.add(acked_position)
        positions: list[dict[str, Any]] = []
        op_indexes: list[int] = []
        described: list[str] = []
        for position in sorted(all_positions)[:OP_INDEXES_PER_ENTRY_MAX]:
            topic, partition, offset = position
            read_indexes = reads.get(position, [])
            is_acked = position == acked_position
            positions.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "acked": is_acked,
                    "read_op_indexes": read_indexes,
                }
            )
            op_indexes.extend(read_indexes)
            source = f"read by op {read_indexes[0]}" if read_indexes else "never read"
            if is_acked and done is not None:
                op_indexes.append(done.index)
                source = f"acked by op {done.index}, {source}"
            described.append(f"{topic}/{partition}@{offset} ({source})")
        return {
            "value": value,
            "positions": positions,
            "position_count": len(all_positions),
            "op_indexes": _capped(op_indexes),
            "explanation": f"{value!r} appears at {len(all_positions)} positions: "
            + "; ".join(described[:4]),
        }

    # -- replicas ---------------------------------------------------------------------------

    def check_replicas(self, replicas: Sequence[ReplicaLog]) -> None:
        """Replicas of a partition must hold identical bytes below their lowest high
        watermark, and replicas with equal high watermarks below that one; after heal their
        high watermarks should be equal too (a warning otherwise)."""
        by_partition: dict[PartitionKey, list[ReplicaLog]] = defaultdict(list)
        for replica in replicas:
            by_partition[(replica.topic, replica.partition)].append(replica)
        for (topic, partition), group in sorted(by_partition.items()):
            group.sort(key=lambda r: r.node)
            hws = {r.node: r.high_watermark for r in group}
            if len(set(hws.values())) > 1:
                self.add(
                    "replica_hw_mismatch",
                    {
                        "topic": topic,
                        "partition": partition,
                        "high_watermarks": hws,
                        "op_indexes": [],
                        "explanation": f"replicas of {topic}/{partition} disagree on the high "
                        "watermark after heal: "
                        + ", ".join(f"{node}={hw}" for node, hw in hws.items()),
                    },
                )
            # Every replica against every other below the lowest HW, and replicas with
            # equal HWs over all of it.
            comparisons = [
                (replica.compared_below_offset, replica.node, replica.batches_sha256)
                for replica in group
            ] + [
                (replica.high_watermark, replica.node, replica.batches_sha256_below_hw)
                for replica in group
            ]
            by_bound: dict[int, dict[str, str]] = defaultdict(dict)
            for bound, node, sha in comparisons:
                by_bound[bound][node] = sha
            diverged = {
                bound: hashes
                for bound, hashes in sorted(by_bound.items())
                if len(set(hashes.values())) > 1
            }
            if not diverged:
                continue
            bound, hashes = next(iter(diverged.items()))
            self.add(
                "replica_divergence",
                {
                    "topic": topic,
                    "partition": partition,
                    "compared_below_offset": bound,
                    "sha256_by_node": hashes,
                    "diverged_below": sorted(diverged),
                    "op_indexes": [],
                    "explanation": f"replicas of {topic}/{partition} hold different bytes "
                    f"below offset {bound}: "
                    + ", ".join(f"{node}={sha[:12]}" for node, sha in hashes.items()),
                },
            )


def _append_capped(items: list[int], index: int) -> None:
    # Reads of one poll arrive together: skip repeats of the same op.
    if len(items) < OP_INDEXES_PER_ENTRY_MAX and (not items or items[-1] != index):
        items.append(index)
