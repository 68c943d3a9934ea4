"""Delayed operations (Kafka's purgatory): a request that must wait — an acks=all produce
until the high watermark passes its batches, a fetch until `min_bytes` are there — is an
object registered on the partitions it waits for, not a parked thread.

Hooks complete them: whoever appends, advances a high watermark or changes a partition's
role calls `check_and_complete(key)`, which re-checks only the operations watching that
partition. An operation that is still waiting at its deadline expires (`on_expire`).

Single-threaded: every method runs on the broker's event loop (the hooks fire there too).
Timers come from a `Scheduler` (the loop's `call_later` in the broker, a manual one in
unit tests).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Protocol

import structlog

_log = structlog.get_logger("raftmq.broker")


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle: ...


class DelayedOperation:
    """One waiting request. Subclasses implement `try_complete` (check; if done, call
    `force_complete()` and return True), `on_complete` (send the answer) and, optionally,
    `on_expire` (the deadline passed; `on_complete` follows).

    Invariant: `on_complete` runs exactly once, after which `completed` is True; the
    operation is then dropped from every watch list it is on (lazily, see Purgatory)."""

    def __init__(self, delay_ms: int) -> None:
        assert delay_ms >= 0
        self.delay_ms = delay_ms
        self.completed = False
        self._timer: TimerHandle | None = None
        self._purgatory: Purgatory | None = None

    def try_complete(self) -> bool:
        raise NotImplementedError

    def on_complete(self) -> None:
        raise NotImplementedError

    def on_expire(self) -> None:
        pass

    def force_complete(self) -> bool:
        """Complete now, whatever the state. True if this call completed it."""
        if self.completed:
            return False
        self.completed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._purgatory is not None:
            self._purgatory._on_completed()
        self.on_complete()
        return True

    def expire(self) -> None:
        """The deadline passed (or there is no room to wait): answer with what there is."""
        self._timer = None
        if self.completed:
            return
        if self._purgatory is not None:
            self._purgatory.expired_total += 1
        self.on_expire()
        self.force_complete()


class Purgatory:
    """Watch lists of delayed operations, keyed by partition.

    Bound: at most `operations_max` operations wait at once; one beyond that expires at
    once (a fetch answers with what it has, a produce with a timeout), never queued without
    limit. Completed operations leave a watch list when that list is next checked, and all
    lists are swept every `purge_interval` registrations, so the list of a partition nobody
    touches cannot fill up with completed entries."""

    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        *,
        operations_max: int = 100_000,
        purge_interval: int = 1_000,
    ) -> None:
        assert operations_max > 0 and purge_interval > 0
        self.name = name
        self.scheduler = scheduler
        self.operations_max = operations_max
        self.purge_interval = purge_interval
        self._watchers: dict[Hashable, list[DelayedOperation]] = {}
        # Registered and not yet completed. Invariant: 0 <= _waiting <= operations_max.
        self._waiting = 0
        self._registered_since_purge = 0
        self.expired_total = 0
        self.completed_total = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    def _on_completed(self) -> None:
        self._waiting -= 1
        self.completed_total += 1
        assert self._waiting >= 0

    def try_complete_else_watch(
        self, operation: DelayedOperation, keys: Iterable[Hashable]
    ) -> bool:
        """Complete `operation` now if it can be, else watch it on `keys` until a hook or
        its deadline completes it. True if it completed here."""
        assert operation._purgatory is None, "an operation is watched by one purgatory"
        if operation.try_complete():
            return True
        if operation.delay_ms == 0:
            operation.expire()
            return True
        if self._waiting >= self.operations_max:
            _log.warning("purgatory.full", purgatory=self.name, waiting=self._waiting)
            operation.expire()
            return True
        operation._purgatory = self
        self._waiting += 1
        for key in keys:
            self._watchers.setdefault(key, []).append(operation)
        operation._timer = self.scheduler.call_later(operation.delay_ms / 1000, operation.expire)
        self._registered_since_purge += 1
        if self._registered_since_purge >= self.purge_interval:
            self.purge()
        return False

    def check_and_complete(self, key: Hashable) -> int:
        """Re-check the operations watching `key`; returns how many completed here."""
        watchers = self._watchers.get(key)
        if not watchers:
            return 0
        completed = 0
        # Bound: one pass over the list as it is now. A completion may register new
        # operations on this key (appended to the same list); they were checked when they
        # were registered and stay.
        for operation in watchers[:]:
            if not operation.completed and operation.try_complete():
                completed += 1
        remaining = [op for op in watchers if not op.completed]
        if remaining:
            self._watchers[key] = remaining
        else:
            self._watchers.pop(key, None)
        return completed

    def complete_all(self, keys: Iterable[Hashable]) -> None:
        """Re-check, then force, every operation watching `keys` (the partition is gone
        from this broker: what waits on it must answer now)."""
        for key in keys:
            for operation in self._watchers.pop(key, []):
                if not operation.completed and not operation.try_complete():
                    operation.force_complete()

    def purge(self) -> None:
        """Drop completed operations from every watch list."""
        self._registered_since_purge = 0
        for key in list(self._watchers):
            remaining = [op for op in self._watchers[key] if not op.completed]
            if remaining:
                self._watchers[key] = remaining
            else:
                del self._watchers[key]

    def watched_keys(self) -> int:
        return len(self._watchers)
