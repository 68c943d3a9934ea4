"""The record of a chaos run: client operations, fault windows and replica state after heal.

The model is Jepsen's. Every client operation is recorded twice: an `invoke` when the client
is about to issue it, and a completion when the outcome is known:

- `ok`   — it happened (a send was acknowledged at `partition`/`offset`; a poll returned `reads`);
- `fail` — it definitely did not happen (a send the broker rejected before appending);
- `info` — indeterminate: it may or may not have happened (timeout, connection reset, ...).

An invoke that never gets a completion (the run ended first) is treated like `info`.

Pairing rules (what the checker relies on, enforced by `History`):
- a send completion belongs to the send invoke with the same `value` (values are unique per
  send across the whole run, so one process may have many sends in flight);
- a poll completion belongs to the one outstanding poll of the same `process` (a consumer
  polls sequentially).

Position in the history (`Op.index`) is the real-time order: record the invoke *before* the
request leaves the client and the completion *after* the response arrived, so "A completed
before B was invoked" is exactly `A_completion.index < B_invoke.index`.

Seeks. A consumer whose position moves by anything other than reading (explicit seek,
offset reset after OFFSET_OUT_OF_RANGE, group rebalance or (re)assignment, consumer restart
resuming from a committed offset) must record it with `History.seek`: an `invoke`/`ok` poll
pair with `error="seek"`, no reads, `partition` = the partition that moved (-1: every
partition of that topic) and `offset` = the new position (informational). The checker resets
its per-consumer ordering checks at a seek and nowhere else.

This module is pure data: no clocks (callers pass `time_ms`), no sockets, no processes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

OpType = Literal["invoke", "ok", "fail", "info"]
CompletionType = Literal["ok", "fail", "info"]
OpFunction = Literal["send", "poll"]
# One record as a consumer received it: (partition, offset, value).
Read = tuple[int, int, str]

OP_TYPES: tuple[str, ...] = get_args(OpType)
OP_FUNCTIONS: tuple[str, ...] = get_args(OpFunction)

# `error` of the ok poll that records a consumer seek (see the module docstring).
SEEK_ERROR = "seek"

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
    - `error` is "" or an error code name (`ErrorCode.name`), or `SEEK_ERROR` for a seek.
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedHistoryError(f"bad op object {obj!r}: {exc}") from exc


def validate_op(op: Op) -> None:
    """Check the per-op invariants of `Op`. Raises `MalformedHistoryError`."""
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
    # The one outstanding poll invoke index of each consumer process.
    polls: dict[str, int] = field(default_factory=dict)
    # Every send value ever invoked: values are unique per run.
    send_values: set[str] = field(default_factory=set)

    def count(self) -> int:
        return len(self.sends) + len(self.polls)


class History:
    """An append-only, thread-safe, bounded list of `Op`s.

    Workload threads call `invoke_send` / `invoke_poll` / `seek` and later `complete`; each call
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
            indexes = sorted([*self._pending.sends.values(), *self._pending.polls.values()])
            return tuple(self._ops[i] for i in indexes)

    def invoke_send(
        self, process: str, topic: str, value: str, *, partition: int = -1, time_ms: float
    ) -> Op:
        """Record that `process` is about to send `value` to `topic` (`partition` -1: the
        balancer picks). Call before the request leaves the client."""
        return self._invoke(process, "send", topic, time_ms, value=value, partition=partition)

    def invoke_poll(self, process: str, topic: str, *, time_ms: float) -> Op:
        """Record that consumer `process` is about to poll `topic`. At most one poll per
        process may be outstanding."""
        return self._invoke(process, "poll", topic, time_ms)

    def complete(
        self,
        invoke: Op,
        outcome: CompletionType,
        *,
        time_ms: float,
        partition: int | None = None,
        offset: int = -1,
        reads: Iterable[Read] = (),
        error: str = "",
    ) -> Op:
        """Record the outcome of `invoke` (an op returned by `invoke_*` of this history).

        - ok send: `partition` and `offset` where it was appended (partition defaults to the
          invoke's target);
        - ok poll: `reads` in the order received (may be empty);
        - fail / info: `error` names the cause (e.g. "NOT_ENOUGH_REPLICAS", "TIMEOUT").
        """
        with self._lock:
            pending = self._pending
            owner = pending.sends if invoke.f == "send" else pending.polls
            key = invoke.value if invoke.f == "send" else invoke.process
            if invoke.type != "invoke" or owner.get(key) != invoke.index:
                raise MalformedHistoryError(f"op {invoke.index} is not a pending invoke")
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
            self._check_room()
            if process in self._pending.polls:
                raise MalformedHistoryError(f"{process} seeks while a poll is outstanding")
            invoke = Op(len(self._ops), process, "invoke", "poll", time_ms, topic)
            self._ops.append(invoke)
            done = Op(
                len(self._ops),
                process,
                "ok",
                "poll",
                time_ms,
                topic,
                partition=partition,
                offset=offset,
                error=SEEK_ERROR,
            )
            self._ops.append(done)
            return invoke, done

    def append(self, op: Op) -> Op:
        """Append an already built op (replaying a saved history). `op.index` must be the next
        index, and the pairing rules hold as for the recording methods."""
        with self._lock:
            if op.index != len(self._ops):
                raise MalformedHistoryError(f"op index {op.index}, expected {len(self._ops)}")
            validate_op(op)
            pending = self._pending
            owner = pending.sends if op.f == "send" else pending.polls
            key = op.value if op.f == "send" else op.process
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
            pending = self._pending
            if f == "send":
                self._register_invoke(op, pending.sends, op.value)
            else:
                self._register_invoke(op, pending.polls, process)
            self._ops.append(op)
            return op

    def _register_invoke(self, op: Op, owner: dict[str, int], key: str) -> None:
        # Called with the lock held.
        if op.f == "send":
            if key in self._pending.send_values:
                raise MalformedHistoryError(f"op {op.index}: send value {key!r} is not unique")
            self._pending.send_values.add(key)
        elif key in owner:
            raise MalformedHistoryError(f"op {op.index}: {key} already has a poll outstanding")
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
