"""The Raft leader's planner: the one thread that turns commands into log entries.

Only the leader plans, and only here, so that plans never race each other. The thread
drains a bounded queue of commands (gRPC handlers wait for their answer with a timeout;
the leader's own duties do not wait), plans a batch of them one after the other against a
scratch copy of the committed metadata (so two creates of one topic in a batch conflict as
they should), proposes ONE entry with `expected_version` = the committed version, waits
(bounded) until this node applied it, and answers. If the entry was skipped because
another entry got in first (a former leader's, or an unconditional one), it plans the
batch again, a bounded number of times.

Answers:
- the command's result, once its entry applied;
- CONTROLLER_UNAVAILABLE "outcome unknown" when the commit could not be confirmed in
  time or leadership changed meanwhile (a retry with the same request id is safe);
- CONTROLLER_UNAVAILABLE "not applied" when its entry was skipped REPLANS_MAX times in a
  row (definitely not applied);
- NOT_CONTROLLER when this node does not lead (the caller follows the leader hint).

A plan too large for one entry (a broker fence touching thousands of partitions) is applied
in parts: a leading part of its records, then the command is planned again against the
result. `MetadataState.plan` orders records so that every prefix is a valid state.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from raftmq.controller.metadata_commands import Command, CommandResult
from raftmq.controller.metadata_entry import (
    ENTRY_BYTES_MAX,
    EntryOutcome,
    MetadataEntry,
    MetadataItem,
    encode_entry,
    plain_item_bytes,
)
from raftmq.controller.metadata_records import Record
from raftmq.controller.metadata_state import MetadataState
from raftmq.errors import ErrorCode

# Commands waiting for the planner; beyond this, callers are told to retry.
QUEUE_COMMANDS_MAX = 1_000
# Commands planned into one entry (also bounded by ENTRY_BYTES_MAX).
BATCH_COMMANDS_MAX = 128
# Consecutive skipped entries before the commands of a batch are answered "not applied".
REPLANS_MAX = 5
# Leading parts one command may be applied in (each up to ENTRY_BYTES_MAX of records).
PARTS_MAX = 256
# How often an idle planner looks at its stop flag.
IDLE_POLL_S = 0.2
# How often the planner, waiting for its entry, checks that this node still leads.
LEADERSHIP_CHECK_S = 0.1

# The result a caller gets when the commit could not be confirmed.
OUTCOME_UNKNOWN = CommandResult(
    ErrorCode.CONTROLLER_UNAVAILABLE,
    "the controller quorum did not confirm the command in time (leader change or "
    "timeout); its outcome is unknown: retry with the same request id",
)


class MetadataLog(Protocol):
    """What the planner needs from the replicated log (the quorum shell, or a fake)."""

    def is_leader(self) -> bool: ...

    def committed_state(self) -> MetadataState:
        """A scratch copy of this node's applied state (see MetadataState.scratch_copy)."""
        ...

    def propose(self, blob: bytes, on_applied: Callable[[EntryOutcome | None], None]) -> None:
        """Append an encoded entry. `on_applied` is called once, from any thread, with the
        outcome when this node applied it, with EntryOutcome(applied=False) when it
        certainly never will, or with None when that became unknown (leadership lost)."""
        ...


class _Reply:
    """A one-shot answer a gRPC thread waits for."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result = OUTCOME_UNKNOWN

    def set(self, result: CommandResult) -> None:
        if not self._done.is_set():
            self._result = result
            self._done.set()

    def wait(self, timeout_s: float) -> CommandResult | None:
        return self._result if self._done.wait(timeout_s) else None


@dataclass(slots=True)
class _Request:
    command: Command
    reply: _Reply | None  # None: a leader duty, nobody waits
    parts_applied: int = 0


@dataclass(slots=True)
class _Batch:
    """One planned entry and what becomes of each request."""

    items: list[MetadataItem] = field(default_factory=list)
    planned: list[_Request] = field(default_factory=list)  # items[i] belongs to planned[i]
    # For the next entry (partial_for first, if set); every other request was answered.
    rest: list[_Request] = field(default_factory=list)
    partial_for: _Request | None = None  # items is a leading part of this request's plan


class Planner:
    def __init__(
        self,
        log: MetadataLog,
        *,
        apply_timeout_ms: int,
        entry_bytes_max: int = ENTRY_BYTES_MAX,
        queue_commands_max: int = QUEUE_COMMANDS_MAX,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        assert apply_timeout_ms > 0 and entry_bytes_max > 0
        self._log = log
        self._apply_timeout_s = apply_timeout_ms / 1000
        self._entry_bytes_max = entry_bytes_max
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=queue_commands_max)
        self.log = logger or structlog.get_logger("raftmq.controller")

    # ------------------------------------------------------------ callers

    def submit(self, command: Command, *, timeout_ms: int) -> CommandResult:
        """Plan, commit and answer `command`; blocks up to `timeout_ms`. Called from gRPC
        threads, never from the planner or pysyncobj's tick thread."""
        if not self._log.is_leader():
            return CommandResult(ErrorCode.NOT_CONTROLLER, "this controller is not the leader")
        reply = _Reply()
        try:
            self._queue.put_nowait(_Request(command, reply))
        except queue.Full:
            return CommandResult(
                ErrorCode.CONTROLLER_UNAVAILABLE,
                f"the controller leader is busy ({self._queue.maxsize} commands queued); retry",
            )
        result = reply.wait(timeout_ms / 1000)
        return OUTCOME_UNKNOWN if result is None else result

    def enqueue(self, command: Command) -> bool:
        """For the leader's own duties: plan and commit `command` without waiting. False
        when the queue is full (the duty comes round again)."""
        try:
            self._queue.put_nowait(_Request(command, None))
        except queue.Full:
            self.log.warning("command.dropped", command=type(command).__name__)
            return False
        return True

    def queued(self) -> int:
        """Commands waiting for the planner (approximate, for tests and status)."""
        return self._queue.qsize()

    # ------------------------------------------------------------ the planner thread

    def run(self, stopping: threading.Event) -> None:
        """The planner thread's loop; returns once `stopping` is set."""
        while not stopping.is_set():
            try:
                first = self._queue.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < BATCH_COMMANDS_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self.run_batch(batch, stopping)

    def run_batch(self, pending: list[_Request], stopping: threading.Event) -> None:
        """Plan, propose and answer `pending` (in order), entry after entry. Bounded: every
        round answers a request, applies a part of one, or counts a skipped entry."""
        skipped_in_a_row = 0
        while pending:
            if stopping.is_set() or not self._log.is_leader():
                for request in pending:
                    self._answer(
                        request,
                        CommandResult(
                            ErrorCode.NOT_CONTROLLER, "this controller is no longer the leader"
                        ),
                    )
                return
            state = self._log.committed_state()
            expected_version = state.version
            batch = self._plan(state, pending)
            if not batch.items:
                pending = batch.rest
                continue
            blob = encode_entry(MetadataEntry(expected_version, tuple(batch.items)))
            assert len(blob) <= self._entry_bytes_max, len(blob)
            outcome = self._propose_and_wait(blob)
            if outcome is None:
                for request in batch.planned:
                    self._answer(request, OUTCOME_UNKNOWN)
                if batch.partial_for is not None:
                    self._answer(batch.partial_for, OUTCOME_UNKNOWN)
                    batch.rest.remove(batch.partial_for)
                pending = batch.rest
                continue
            if not outcome.applied:
                # Plan the same requests again, against the state that got in first.
                pending = batch.planned + batch.rest
                skipped_in_a_row += 1
                self.log.info(
                    "entry.skipped", expected_version=expected_version, skips=skipped_in_a_row
                )
                if skipped_in_a_row >= REPLANS_MAX:
                    not_applied = CommandResult(
                        ErrorCode.CONTROLLER_UNAVAILABLE,
                        f"not applied: the metadata changed under {skipped_in_a_row} plans "
                        "in a row; retry",
                    )
                    for request in pending:
                        self._answer(request, not_applied)
                    return
                continue
            skipped_in_a_row = 0
            if batch.partial_for is not None:
                batch.partial_for.parts_applied += 1
            # A leading part (partial_for) is the entry's only item and answers nobody.
            answered = outcome.results[: len(batch.planned)]
            for request, result in zip(batch.planned, answered, strict=True):
                self._answer(request, result)
            pending = batch.rest

    def _plan(self, state: MetadataState, pending: list[_Request]) -> _Batch:
        """Plan requests into one entry until it is full. Requests answered without an
        entry (a transient refusal, a plan that cannot fit) are answered here."""
        batch = _Batch()
        # The scratch state's version moves as items are applied to it; the entry's stays.
        expected_version = state.version
        entry_bytes = len(encode_entry(MetadataEntry(expected_version, ())))
        for i, request in enumerate(pending):
            records, result = state.plan(request.command)
            if not records and result.error == ErrorCode.CONTROLLER_UNAVAILABLE:
                # "Not yet" (e.g. no cluster id committed): nothing to commit or remember.
                self._answer(request, result)
                continue
            item = MetadataItem(request.command.request_id, tuple(records), result)
            item_bytes = plain_item_bytes(item)
            if entry_bytes + item_bytes <= self._entry_bytes_max or self._fits(
                expected_version, [*batch.items, item]
            ):
                state.apply_item(item)
                batch.items.append(item)
                batch.planned.append(request)
                entry_bytes += item_bytes
                continue
            if batch.items:  # this entry is full; the rest goes into the next one
                batch.rest = pending[i:]
                return batch
            part = self._leading_part(expected_version, records)
            if part is None or request.parts_applied >= PARTS_MAX:
                self._answer(
                    request,
                    CommandResult(
                        ErrorCode.INVALID_REQUEST,
                        f"the change is too large for the metadata log ({len(records)} "
                        f"records; one record or {PARTS_MAX} entries of "
                        f"{self._entry_bytes_max} bytes at most)",
                    ),
                )
                continue
            batch.items.append(MetadataItem("", part, CommandResult()))
            batch.partial_for = request
            batch.rest = pending[i:]
            return batch
        return batch

    def _fits(self, version: int, items: list[MetadataItem]) -> bool:
        entry = MetadataEntry(version, tuple(items))
        return len(encode_entry(entry)) <= self._entry_bytes_max

    def _leading_part(self, version: int, records: list[Record]) -> tuple[Record, ...] | None:
        """The longest prefix of `records` that fits one entry; None if not even one."""
        low, high = 0, len(records) - 1  # invariant: records[:low] fits; all of them do not
        while low < high:
            middle = (low + high + 1) // 2
            part = MetadataItem("", tuple(records[:middle]), CommandResult())
            if self._fits(version, [part]):
                low = middle
            else:
                high = middle - 1
        return tuple(records[:low]) if low > 0 else None

    def _propose_and_wait(self, blob: bytes) -> EntryOutcome | None:
        done = threading.Event()
        outcomes: list[EntryOutcome | None] = []

        def on_applied(outcome: EntryOutcome | None) -> None:
            if not done.is_set():
                outcomes.append(outcome)
                done.set()

        self._log.propose(blob, on_applied)
        # A leader that loses its role mid-wait hears nothing more about the entry: give
        # up then rather than at the timeout, so callers move on to the new leader sooner.
        deadline_s = time.monotonic() + self._apply_timeout_s
        while not done.wait(min(LEADERSHIP_CHECK_S, max(0.0, deadline_s - time.monotonic()))):
            if time.monotonic() >= deadline_s or not self._log.is_leader():
                self.log.info("entry.unconfirmed", entry_bytes=len(blob))
                return None
        return outcomes[0]

    def _answer(self, request: _Request, result: CommandResult) -> None:
        if request.reply is not None:
            request.reply.set(result)
        elif not result.ok:
            # A leader duty: nobody waits, so say here why it did not happen.
            self.log.info(
                "command.rejected",
                command=type(request.command).__name__,
                error=result.error.name,
                reason=result.message,
            )
