"""The record of a chaos run: client operations, fault windows and replica state after heal.

The model is Jepsen's. Every client operation is recorded twice: an `invoke` when the client
is about to issue it, and a completion when the outcome is known:

- `ok`   — it happened (a send was acknowledged at `partition`/`offset`; a poll returned `reads`);
- `fail` — it definitely did not happen (a send the broker rejected before appending);
- `info` — indeterminate: it may or may not have happened (timeout, connection reset, ...).

An invoke that never gets a completion (the run ended first, or its process was crashed) is
treated like `info`.

Functions (`Op.f`):
- `send`, `poll`: producers and consumers (below);
- consumer groups (`Op.group` names the group; see "Consumer groups" below): `poll` of a
  group member (its deliveries), `commit` (one partition's offset, by a member), `offsets`
  (a read of the group's committed offsets), `assign` (what a member owned, as it saw it),
  `member` (a member incarnation's life: start, crash, close).

Pairing rules (what the checker relies on, enforced by `History`):
- a send completion belongs to the send invoke with the same `value` (values are unique per
  send across the whole run, so one process may have many sends in flight);
- a completion of any other function belongs to the one outstanding op of the same function
  and `process` (a consumer polls sequentially, a member commits sequentially, ...);
- `seek`, `assign` and the `member` events "start" and "crash" are recorded as an invoke and
  its `ok` completion at once (`History.seek`, `History.observe_assignment`,
  `History.member_event`); "close" is an ordinary invoke, then `ok` (closed: committed and
  left) or `info`.

Position in the history (`Op.index`) is the real-time order: record the invoke *before* the
request leaves the client and the completion *after* the response arrived, so "A completed
before B was invoked" is exactly `A_completion.index < B_invoke.index`. One exception,
group members: they run as processes of their own (so that a crash is a real SIGKILL) and
stamp each op with the run clock themselves (`time_ms`, CLOCK_MONOTONIC, which every
process of the machine shares); the runner appends their ops as it receives them, so for
group ops `time_ms`, not `index`, is the real-time order ("A completed before B was
invoked" is `A_completion.time_ms < B_invoke.time_ms`), and the group checks use it.
Within one process both orders agree.

Seeks. A consumer whose position moves by anything other than reading (explicit seek,
offset reset after OFFSET_OUT_OF_RANGE, group rebalance or (re)assignment, consumer restart
resuming from a committed offset) must record it with `History.seek`: an `invoke`/`ok` poll
pair with `error="seek"`, no reads, `partition` = the partition that moved (-1: every
partition of that topic) and `offset` = the new position (informational). The checker resets
its per-consumer ordering checks at a seek and nowhere else. Group members never seek: their
position moves at every change of assignment, and their reads are not ordering-checked
(rebalances legitimately rewind and skip across assignments); the group checks apply.

Consumer groups. Every group op carries `group`; a member incarnation is one `process`
("g0-m1.2": group g0, slot 1, its third start), never reused after it crashed or closed.
- `poll` (group): an `ok` completion's `reads` are what `read_message` / `fetch_message`
  handed out, recorded before anything commits them.
- `commit`: invoke with `partition` and `offset` (the next offset to read, Kafka's
  convention), completed `ok` (committed), `fail` (the client said it was not committed) or
  `info` (unknown: a timeout, a member fenced while its commit was in flight).
- `offsets`: a read of the group's committed offsets at its coordinator; an `ok` completion
  carries `offsets`, (partition, committed offset) per partition of the topic, -1 where
  nothing is committed.
- `assign`: the member read its own assignment between the invoke and the `ok` (a few
  microseconds apart): `partitions` it owned (revoking ones included: not released yet),
  its member `epoch`, its coordinator member id in `value`, and in `error` how partitions
  may have left it since its previous `assign`: `ASSIGN_RELEASED` (it released revoked
  ones), `ASSIGN_LOST` (it dropped some without releasing them: fenced, evicted, its
  session over), or "" (none left). A member records one at least every
  `ASSIGN_SAMPLE_MS_MAX` while it runs, and at once when anything changed.
- `member`: `value` is "start" (the process was spawned, with `partitions` empty), "crash"
  (SIGKILLed by the runner: it delivers, commits and heartbeats nothing after this; it did
  not leave the group) or "close" (it was asked to stop: `Reader.close()` commits and
  leaves).

This module is pure data: no clocks (callers pass `time_ms`), no sockets, no processes.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

OpType = Literal["invoke", "ok", "fail", "info"]
CompletionType = Literal["ok", "fail", "info"]
OpFunction = Literal["send", "poll", "commit", "offsets", "assign", "member"]
# One record as a consumer received it: (partition, offset, value).
Read = tuple[int, int, str]

OP_TYPES: tuple[str, ...] = get_args(OpType)
OP_FUNCTIONS: tuple[str, ...] = get_args(OpFunction)

# `error` of the ok poll that records a consumer seek (see the module docstring).
SEEK_ERROR = "seek"
# Functions of consumer groups only: their ops must name a group.
GROUP_FUNCTIONS: frozenset[str] = frozenset({"commit", "offsets", "assign", "member"})
# `error` of an `assign` op: how partitions may have left the member since its previous one.
ASSIGN_RELEASED = "released"
ASSIGN_LOST = "lost"
ASSIGN_DROPS: tuple[str, ...] = ("", ASSIGN_RELEASED, ASSIGN_LOST)
# A running member reads its assignment at least this often.
ASSIGN_SAMPLE_MS_MAX = 50
# `value` of a `member` op.
MEMBER_START = "start"
MEMBER_CRASH = "crash"
MEMBER_CLOSE = "close"
MEMBER_EVENTS: tuple[str, ...] = (MEMBER_START, MEMBER_CRASH, MEMBER_CLOSE)

# Default bound on a history. One op is ~200 bytes in memory; 4e6 ops is under 1 GB and far
# more than a chaos test records (a few thousand ops per second for a few minutes).
OPS_MAX_DEFAULT = 4_000_000


class HistoryError(Exception):
    """Base class of the errors raised by this module."""


class HistoryFullError(HistoryError):
    """Raised by `History.invoke_*` / `seek` when the history reached its `ops_max` bound.

    A workload thread receiving it should stop issuing operations: the run is still checkable,
    and every operation already invoked can still record its completion (room for them is
    reserved, see `History`)."""


class MalformedHistoryError(HistoryError, ValueError):
    """The history breaks a structural rule (a completion without its invoke, a duplicate
    send value, an ok send without an offset, ...). This is a bug in the workload or the
    runner, not an anomaly of the system under test."""


@dataclass(frozen=True, slots=True)
class Op:
    """One event of the history. Fields that do not apply keep their defaults.

    Invariants (checked by `History` when recording, and by `validate_op`):
    - `index` is the op's position in its history (0, 1, 2, ...);
    - send: `value` is non-empty and unique per send across the run; on `ok`, `partition >= 0`
      and `offset >= 0` give where the broker appended it; on invoke, `partition` is the
      target partition or -1 when the client's balancer chooses;
    - poll: only an `ok` poll has `reads`, in the order the consumer received them;
    - `error` is "" or an error code name (`ErrorCode.name`), or `SEEK_ERROR` for a seek, or
      one of `ASSIGN_DROPS` for an `assign`;
    - group functions (`GROUP_FUNCTIONS`) name their `group`; a group poll never seeks;
    - commit: `partition >= 0` and `offset >= 0` on the invoke, copied by its completion;
    - only an `ok` offsets op has `offsets`, only an `ok` assign has `partitions` (distinct);
    - member: `value` is one of `MEMBER_EVENTS`.
    """

    index: int
    process: str
    type: OpType
    f: OpFunction
    # Monotonic milliseconds since the start of the run (the runner's clock, not wall time).
    time_ms: float
    topic: str
    value: str = ""
    partition: int = -1
    offset: int = -1
    reads: tuple[Read, ...] = ()
    error: str = ""
    # Consumer groups (see the module docstring): the group of a group op; the committed
    # offsets an `offsets` op read, (partition, offset) each; the partitions and member
    # epoch an `assign` op saw.
    group: str = ""
    offsets: tuple[tuple[int, int], ...] = ()
    partitions: tuple[int, ...] = ()
    epoch: int = -1

    @property
    def is_seek(self) -> bool:
        return self.f == "poll" and self.type == "ok" and self.error == SEEK_ERROR

    def to_json_dict(self) -> dict[str, Any]:
        """A compact JSON object: fields equal to their default are left out."""
        out: dict[str, Any] = {
            "index": self.index,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "time_ms": self.time_ms,
            "topic": self.topic,
        }
        if self.value:
            out["value"] = self.value
        if self.partition != -1:
            out["partition"] = self.partition
        if self.offset != -1:
            out["offset"] = self.offset
        if self.reads:
            out["reads"] = [list(r) for r in self.reads]
        if self.error:
            out["error"] = self.error
        if self.group:
            out["group"] = self.group
        if self.offsets:
            out["offsets"] = [list(o) for o in self.offsets]
        if self.partitions:
            out["partitions"] = list(self.partitions)
        if self.epoch != -1:
            out["epoch"] = self.epoch
        return out

    @staticmethod
    def from_json_dict(obj: dict[str, Any]) -> Op:
        """Inverse of `to_json_dict`. Raises `MalformedHistoryError` on a bad shape."""
        op_type = obj.get("type")
        f = obj.get("f")
        if op_type not in OP_TYPES or f not in OP_FUNCTIONS:
            raise MalformedHistoryError(f"bad type/f {op_type!r}/{f!r} in {obj!r}")
        try:
            return Op(
                index=int(obj["index"]),
                process=str(obj["process"]),
                type=op_type,
                f=f,
                time_ms=float(obj["time_ms"]),
                topic=str(obj["topic"]),
                value=str(obj.get("value", "")),
                partition=int(obj.get("partition", -1)),
                offset=int(obj.get("offset", -1)),
                reads=tuple((int(p), int(o), str(v)) for p, o, v in obj.get("reads", ())),
                error=str(obj.get("error", "")),
                group=str(obj.get("group", "")),
                offsets=tuple((int(p), int(o)) for p, o in obj.get("offsets", ())),
                partitions=tuple(int(p) for p in obj.get("partitions", ())),
                epoch=int(obj.get("epoch", -1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedHistoryError(f"bad op object {obj!r}: {exc}") from exc


def validate_op(op: Op) -> None:
    """Check the per-op invariants of `Op`. Raises `MalformedHistoryError`."""
    if op.f in GROUP_FUNCTIONS or op.group:
        _validate_group_op(op)
    if op.f == "send":
        if not op.value:
            raise MalformedHistoryError(f"op {op.index}: a send needs a value")
        if op.reads:
            raise MalformedHistoryError(f"op {op.index}: a send has no reads")
        if op.type == "ok" and (op.partition < 0 or op.offset < 0):
            raise MalformedHistoryError(
                f"op {op.index}: an ok send needs partition >= 0 and offset >= 0"
            )
    elif op.reads and op.type != "ok":
        raise MalformedHistoryError(f"op {op.index}: only an ok poll has reads")
    elif op.reads and op.error == SEEK_ERROR:
        raise MalformedHistoryError(f"op {op.index}: a seek has no reads")
    for partition, offset, _value in op.reads:
        if partition < 0 or offset < 0:
            raise MalformedHistoryError(f"op {op.index}: read at bad position {partition}/{offset}")
    if op.offsets and (op.f != "offsets" or op.type != "ok"):
        raise MalformedHistoryError(f"op {op.index}: only an ok offsets op has offsets")
    if op.partitions and (op.f != "assign" or op.type != "ok"):
        raise MalformedHistoryError(f"op {op.index}: only an ok assign has partitions")


def _validate_group_op(op: Op) -> None:
    where = f"op {op.index} ({op.f})"
    if not op.group:
        raise MalformedHistoryError(f"{where}: a group op names its group")
    if op.f == "send":
        raise MalformedHistoryError(f"{where}: a send belongs to no group")
    if op.f == "poll" and op.error == SEEK_ERROR:
        raise MalformedHistoryError(f"{where}: a group member never seeks")
    if op.f == "commit" and (op.partition < 0 or op.offset < 0):
        raise MalformedHistoryError(f"{where}: a commit needs partition >= 0 and offset >= 0")
    if op.f == "assign":
        if op.error not in ASSIGN_DROPS:
            raise MalformedHistoryError(f"{where}: error {op.error!r} is not one of {ASSIGN_DROPS}")
        if len(set(op.partitions)) != len(op.partitions) or any(p < 0 for p in op.partitions):
            raise MalformedHistoryError(f"{where}: bad partitions {op.partitions}")
    if op.f == "member" and op.value not in MEMBER_EVENTS:
        raise MalformedHistoryError(f"{where}: value {op.value!r} is not one of {MEMBER_EVENTS}")
    for partition, offset in op.offsets:
        if partition < 0 or offset < -1:
            raise MalformedHistoryError(f"{where}: bad committed offset {partition}@{offset}")


@dataclass(slots=True)
class FaultWindow:
    """One fault injected by the nemesis.

    `end_ms` is when it was healed (None: never healed before the run ended). The runner
    fills the recovery durations after the fact, both in ms *since `start_ms`* (None: did not
    recover before the run ended):
    - `recovered_produce_ms`: until a produce to an affected partition succeeded again;
    - `recovered_leader_ms`: until every affected partition had a leader again.
    """

    kind: str
    start_ms: float
    end_ms: float | None = None
    # Node names the fault applied to ("broker-1", "controller-0", ...).
    targets: tuple[str, ...] = ()
    recovered_produce_ms: float | None = None
    recovered_leader_ms: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "targets": list(self.targets),
            "recovered_produce_ms": self.recovered_produce_ms,
            "recovered_leader_ms": self.recovered_leader_ms,
        }

    @staticmethod
    def from_json_dict(obj: dict[str, Any]) -> FaultWindow:
        return FaultWindow(
            kind=str(obj["kind"]),
            start_ms=float(obj["start_ms"]),
            end_ms=None if obj.get("end_ms") is None else float(obj["end_ms"]),
            targets=tuple(str(t) for t in obj.get("targets", ())),
            recovered_produce_ms=_optional_float(obj.get("recovered_produce_ms")),
            recovered_leader_ms=_optional_float(obj.get("recovered_leader_ms")),
        )


@dataclass(frozen=True, slots=True)
class ReplicaLog:
    """The state of one replica of one partition, read from its broker after heal."""

    node: str
    topic: str
    partition: int
    # Invariant: high_watermark <= log_end_offset.
    high_watermark: int
    # Hex SHA-256 of the stored bytes of the batches whose base offset is below
    # `compared_below_offset`, in offset order.
    batches_sha256: str
    log_end_offset: int
    # The lowest high watermark among the replicas of this partition, so that every replica
    # is compared with every other even when their high watermarks differ.
    # Invariant: compared_below_offset <= high_watermark.
    compared_below_offset: int
    # The same hash below this replica's own high watermark: replicas with equal high
    # watermarks are compared over all of it, however far behind another replica is.
    batches_sha256_below_hw: str

    def __post_init__(self) -> None:
        assert self.compared_below_offset <= self.high_watermark <= self.log_end_offset, self

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "topic": self.topic,
            "partition": self.partition,
            "high_watermark": self.high_watermark,
            "log_end_offset": self.log_end_offset,
            "compared_below_offset": self.compared_below_offset,
            "batches_sha256": self.batches_sha256,
            "batches_sha256_below_hw": self.batches_sha256_below_hw,
        }


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(slots=True)
class _Pending:
    # Invoke op index of each send still in flight, by value.
    sends: dict[str, int] = field(default_factory=dict)
    # The one outstanding invoke index of every other function, by (f, process).
    others: dict[tuple[str, str], int] = field(default_factory=dict)
    # Every send value ever invoked: values are unique per run.
    send_values: set[str] = field(default_factory=set)

    def count(self) -> int:
        return len(self.sends) + len(self.others)

    def owner(self, op: Op) -> tuple[dict[Any, int], Any]:
        """The table an invoke of `op`'s kind is pending in, and its key there."""
        if op.f == "send":
            return self.sends, op.value
        return self.others, (op.f, op.process)


class History:
    """An append-only, thread-safe, bounded list of `Op`s.

    Workload threads call `invoke_send` / `invoke_poll` / `invoke_commit` / ... / `seek` and
    later `complete`; each call
    takes a lock, validates the pairing rules (module docstring) and assigns the next index.

    Bound: at most `ops_max` ops. An invoke is refused with `HistoryFullError` once the ops
    recorded plus one completion per pending invoke would exceed the bound, so a completion
    always fits and every invoked operation can still be completed.
    """

    def __init__(self, *, ops_max: int = OPS_MAX_DEFAULT) -> None:
        assert ops_max > 0
        self.ops_max = ops_max
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._pending = _Pending()

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def ops(self) -> tuple[Op, ...]:
        """A snapshot of the ops recorded so far, in index order."""
        with self._lock:
            return tuple(self._ops)

    def pending(self) -> tuple[Op, ...]:
        """The invokes that have no completion yet, in index order."""
        with self._lock:
            indexes = sorted([*self._pending.sends.values(), *self._pending.others.values()])
            return tuple(self._ops[i] for i in indexes)

    def invoke_send(
        self, process: str, topic: str, value: str, *, partition: int = -1, time_ms: float
    ) -> Op:
        """Record that `process` is about to send `value` to `topic` (`partition` -1: the
        balancer picks). Call before the request leaves the client."""
        return self._invoke(process, "send", topic, time_ms, value=value, partition=partition)

    def invoke_poll(self, process: str, topic: str, *, time_ms: float, group: str = "") -> Op:
        """Record that consumer `process` (a member of `group`, if given) is about to poll
        `topic`. At most one poll per process may be outstanding."""
        return self._invoke(process, "poll", topic, time_ms, group=group)

    def invoke_commit(
        self, process: str, topic: str, *, group: str, partition: int, offset: int, time_ms: float
    ) -> Op:
        """Record that member `process` of `group` is about to commit `offset` (the next
        offset to read) for `partition`. One commit per process at a time."""
        return self._invoke(
            process, "commit", topic, time_ms, group=group, partition=partition, offset=offset
        )

    def invoke_offsets(self, process: str, topic: str, *, group: str, time_ms: float) -> Op:
        """Record that `process` is about to read `group`'s committed offsets of `topic`."""
        return self._invoke(process, "offsets", topic, time_ms, group=group)

    def invoke_close(self, process: str, topic: str, *, group: str, time_ms: float) -> Op:
        """Record that member `process` of `group` is asked to close (commit and leave)."""
        return self._invoke(process, "member", topic, time_ms, group=group, value=MEMBER_CLOSE)

    def complete(
        self,
        invoke: Op,
        outcome: CompletionType,
        *,
        time_ms: float,
        partition: int | None = None,
        offset: int | None = None,
        reads: Iterable[Read] = (),
        error: str = "",
        offsets: Iterable[tuple[int, int]] = (),
    ) -> Op:
        """Record the outcome of `invoke` (an op returned by `invoke_*` of this history).

        - ok send: `partition` and `offset` where it was appended (partition defaults to the
          invoke's target);
        - ok poll: `reads` in the order received (may be empty);
        - commit: partition and offset are the invoke's;
        - ok offsets: `offsets`, (partition, committed offset or -1) each;
        - fail / info: `error` names the cause (e.g. "NOT_ENOUGH_REPLICAS", "TIMEOUT").
        """
        with self._lock:
            owner, key = self._pending.owner(invoke)
            if invoke.type != "invoke" or owner.get(key) != invoke.index:
                raise MalformedHistoryError(f"op {invoke.index} is not a pending invoke")
            if offset is None:
                offset = invoke.offset if invoke.f == "commit" else -1
            op = Op(
                index=len(self._ops),
                process=invoke.process,
                type=outcome,
                f=invoke.f,
                time_ms=time_ms,
                topic=invoke.topic,
                value=invoke.value,
                partition=invoke.partition if partition is None else partition,
                offset=offset,
                reads=tuple(reads),
                error=error,
                group=invoke.group,
                offsets=tuple(offsets),
            )
            validate_op(op)
            del owner[key]
            self._ops.append(op)
            return op

    def seek(
        self, process: str, topic: str, *, partition: int, offset: int, time_ms: float
    ) -> tuple[Op, Op]:
        """Record that consumer `process` moved its position in `topic`/`partition` (-1: all
        partitions of the topic) to `offset` by other means than reading. See the module
        docstring for when the workload must call this."""
        with self._lock:
            if ("poll", process) in self._pending.others:
                raise MalformedHistoryError(f"{process} seeks while a poll is outstanding")
            done = Op(
                -1,
                process,
                "ok",
                "poll",
                time_ms,
                topic,
                partition=partition,
                offset=offset,
                error=SEEK_ERROR,
            )
            return self._append_pair(done, time_ms)

    def observe_assignment(
        self,
        process: str,
        topic: str,
        *,
        group: str,
        member_id: str,
        epoch: int,
        partitions: Iterable[int],
        dropped: str,
        invoke_ms: float,
        done_ms: float,
    ) -> tuple[Op, Op]:
        """Record that member `process` of `group` read its own assignment between
        `invoke_ms` and `done_ms`: it owned `partitions` at member `epoch` (coordinator
        member id `member_id`); `dropped` is one of `ASSIGN_DROPS` (module docstring)."""
        done = Op(
            -1,
            process,
            "ok",
            "assign",
            done_ms,
            topic,
            value=member_id,
            error=dropped,
            group=group,
            partitions=tuple(sorted(partitions)),
            epoch=epoch,
        )
        with self._lock:
            if ("assign", process) in self._pending.others:
                raise MalformedHistoryError(f"{process} has an assign outstanding")
            return self._append_pair(done, invoke_ms)

    def member_event(
        self, process: str, topic: str, *, group: str, event: str, time_ms: float
    ) -> tuple[Op, Op]:
        """Record that member incarnation `process` of `group` was started ("start") or
        SIGKILLed ("crash") at `time_ms`."""
        if event not in (MEMBER_START, MEMBER_CRASH):
            raise MalformedHistoryError(f"member event {event!r}: start or crash (close pairs)")
        done = Op(-1, process, "ok", "member", time_ms, topic, value=event, group=group)
        with self._lock:
            if ("member", process) in self._pending.others:
                raise MalformedHistoryError(f"{process} has a close outstanding")
            return self._append_pair(done, time_ms)

    def _append_pair(self, done: Op, invoke_ms: float) -> tuple[Op, Op]:
        # Called with the lock held: `done` (index -1) and its invoke, appended together.
        self._check_room()
        invoke = Op(
            len(self._ops),
            done.process,
            "invoke",
            done.f,
            invoke_ms,
            done.topic,
            value=done.value if done.f == "member" else "",
            group=done.group,
        )
        done = dataclasses.replace(done, index=invoke.index + 1)
        validate_op(invoke)
        validate_op(done)
        self._ops.append(invoke)
        self._ops.append(done)
        return invoke, done

    def append(self, op: Op) -> Op:
        """Append an already built op (replaying a saved history). `op.index` must be the next
        index, and the pairing rules hold as for the recording methods."""
        with self._lock:
            if op.index != len(self._ops):
                raise MalformedHistoryError(f"op index {op.index}, expected {len(self._ops)}")
            validate_op(op)
            owner, key = self._pending.owner(op)
            if op.type == "invoke":
                self._check_room()
                self._register_invoke(op, owner, key)
            else:
                if owner.get(key) is None:
                    raise MalformedHistoryError(f"op {op.index}: completion without an invoke")
                del owner[key]
            self._ops.append(op)
            return op

    def to_jsonl(self, path: Path) -> None:
        """Write the history, one JSON object per line (see `Op.to_json_dict`)."""
        write_jsonl(self.ops(), path)

    @classmethod
    def from_jsonl(cls, path: Path, *, ops_max: int = OPS_MAX_DEFAULT) -> History:
        """Read a history written by `to_jsonl`. Raises `MalformedHistoryError` naming the
        line of a bad record."""
        history = cls(ops_max=ops_max)
        with path.open(encoding="utf-8") as file:
            for line_number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    history.append(Op.from_json_dict(json.loads(line)))
                except (json.JSONDecodeError, MalformedHistoryError) as exc:
                    raise MalformedHistoryError(f"{path}:{line_number}: {exc}") from exc
        return history

    def _invoke(self, process: str, f: OpFunction, topic: str, time_ms: float, **kwargs: Any) -> Op:
        with self._lock:
            self._check_room()
            op = Op(len(self._ops), process, "invoke", f, time_ms, topic, **kwargs)
            validate_op(op)
            owner, key = self._pending.owner(op)
            self._register_invoke(op, owner, key)
            self._ops.append(op)
            return op

    def _register_invoke(self, op: Op, owner: dict[Any, int], key: Any) -> None:
        # Called with the lock held.
        if op.f == "send":
            if key in self._pending.send_values:
                raise MalformedHistoryError(f"op {op.index}: send value {key!r} is not unique")
            self._pending.send_values.add(key)
        elif key in owner:
            raise MalformedHistoryError(
                f"op {op.index}: {op.process} already has a {op.f} outstanding"
            )
        owner[key] = op.index

    def _check_room(self) -> None:
        # Called with the lock held. Keep room for one completion per pending invoke plus the
        # two ops of this invoke (or seek) and its completion.
        if len(self._ops) + self._pending.count() + 2 > self.ops_max:
            raise HistoryFullError(f"history reached ops_max={self.ops_max}")


def write_jsonl(ops: Sequence[Op], path: Path) -> None:
    """Write `ops` as JSON lines (one `Op.to_json_dict` per line)."""
    with path.open("w", encoding="utf-8") as file:
        for op in ops:
            file.write(json.dumps(op.to_json_dict(), separators=(",", ":")))
            file.write("\n")
