"""The sync shell of a consumer group's Reader (`Reader(..., group_id=...)` delegates to
it): `GroupCore` decides, this shell carries the calls out.

Threads: one background thread per Reader ("raftmq-group") starts every call the core asks
for without blocking (gRPC futures; answers are fed back to the core from gRPC's callback
threads) and wakes up for the core's timers, so heartbeats keep the session while the
application is slow. The application's thread only takes buffered messages and waits for
the core's state to change. All of it under one lock.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import grpc
import structlog
from raftmq.client import group_protocol
from raftmq.client.brokers import BrokerPool
from raftmq.client.conn import now_ms, transport_error
from raftmq.client.deadlines import Deadline
from raftmq.client.group_core import (
    CLOSE_TIMEOUT_MS,
    COMMIT_TIMEOUT_MS,
    CommitError,
    GroupCall,
    GroupConfig,
    GroupCore,
)
from raftmq.client.reader_core import READ_LAG_TIMEOUT_MS, ReaderStats
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

_log = structlog.get_logger("raftmq.client")

# The background thread's join after close(): the core's own deadline plus this.
JOIN_MARGIN_S = 5.0
# A waiting application looks at the core at least this often.
WAIT_S_MAX = 1.0


# The membership events an operator must hear of (a library prints nothing else: joins,
# assignments and revocations are routine, and counted in stats().group).
WARNING_EVENTS = frozenset(
    {
        "group.partitions_lost",
        "group.join_stalled",
        "group.poll_timed_out",
        "group.failed",
        "group.leave_timed_out",
    }
)


def log_events(core: GroupCore) -> None:
    """The core's notable membership events as structlog warnings (both shells)."""
    while core.events:
        name, data = core.events.popleft()
        if name in WARNING_EVENTS:
            _log.warning(name, **data)


def timed_out(core: GroupCore, what: str, deadline: Deadline) -> TimeoutError:
    return TimeoutError(f"{what} within {deadline.timeout_ms} ms ({core.describe_wait()})")


class GroupReader:
    """A member of `config.group_id`. Thread-safe; the application's calls may come from
    any one thread at a time."""

    def __init__(self, brokers: Sequence[str] | str, config: GroupConfig) -> None:
        self.config = config
        self._pool = BrokerPool(brokers)
        self._core = GroupCore(
            config, self._pool.bootstrap, member_id=uuid.uuid4().hex, now_ms=now_ms()
        )
        self._lock = threading.Lock()
        # Notified when the core's state changed (answers, timers): the application waits.
        self._changed = threading.Condition(self._lock)
        # Notified when the background thread has work; `_dirty` keeps it from missing one.
        self._wakeup = threading.Condition(self._lock)
        self._dirty = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="raftmq-group", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the application

    def read_message(self, timeout_ms: int | None) -> Message:
        """The next message; the previous one read_message returned is processed now (and
        committed before this one is returned, with commit_interval_ms=0)."""
        return self._next(timeout_ms, auto_commit=True)

    def fetch_message(self, timeout_ms: int | None) -> Message:
        """The next message, committed only by commit_messages."""
        return self._next(timeout_ms, auto_commit=False)

    def _next(self, timeout_ms: int | None, *, auto_commit: bool) -> Message:
        deadline = Deadline.after(timeout_ms, now_ms=now_ms())
        with self._lock:
            self._check_open()
            self._core.app_enter(now_ms=now_ms())
            try:
                # Bound: until a message, the deadline, or an error.
                while True:
                    self._poke_if_wanted()  # a commit due, a partition to fetch again
                    now = now_ms()
                    message = self._core.next_message(now_ms=now, auto_commit=auto_commit)
                    if message is not None:
                        return message
                    self._wait(deadline, now, "no message")
                    self._check_open()
            finally:
                self._core.app_exit(now_ms=now_ms())
                self._poke_if_wanted()

    def commit_messages(self, messages: Sequence[Message], timeout_ms: int | None) -> None:
        """Commit the highest offset per partition of `messages`; raises CommitError for
        what was not committed (committed offsets do not move for those)."""
        bound = COMMIT_TIMEOUT_MS if timeout_ms is None else timeout_ms
        with self._lock:
            self._check_open()
            ticket = self._core.commit(messages, now_ms=now_ms(), timeout_ms=bound)
            self._poke()
            # Bound: the ticket's own deadline settles it.
            while not ticket.done:
                if not self._thread.is_alive() and self._core.error is not None:
                    raise self._core.error  # the background thread failed (a bug)
                self._changed.wait(WAIT_S_MAX)
        if ticket.error is not None:
            raise ticket.error

    def lag(self) -> int:
        with self._lock:
            return self._core.lag

    def read_lag(self, timeout_ms: int = READ_LAG_TIMEOUT_MS) -> int:
        deadline = Deadline(now_ms() + timeout_ms, timeout_ms)
        with self._lock:
            self._check_open()
            self._core.ask_lag()
            self._poke()
            # Bound: until the answer or the deadline.
            while True:
                lag = self._core.lag_answer()
                if lag is not None:
                    return lag
                self._poke_if_wanted()
                self._wait(deadline, now_ms(), "no lag")
                self._check_open()

    def stats(self) -> ReaderStats:
        with self._lock:
            return self._core.current_stats()

    @property
    def assignment(self) -> list[tuple[str, int]]:
        with self._lock:
            return self._core.assignment

    def close(self, timeout_ms: int | None = None) -> None:
        """Commit what was processed, leave the group, stop; bounded by `timeout_ms`
        (default 10 s) whatever the coordinator does. Raises CommitError (after
        everything is closed) for processed offsets that could not be committed."""
        bound = CLOSE_TIMEOUT_MS if timeout_ms is None else timeout_ms
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._core.close(now_ms=now_ms(), timeout_ms=bound)
            self._poke()
            self._changed.notify_all()
        on_thread = threading.current_thread() is self._thread
        if not on_thread:
            self._thread.join(timeout=bound / 1000 + JOIN_MARGIN_S)
        self._pool.close()
        with self._lock:
            log_events(self._core)
            error = self._core.close_error
        if error is not None:
            raise error

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.read_message(None)

    # ------------------------------------------------------------ waiting

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("read on a closed Reader")

    def _wait(self, deadline: Deadline | None, now: int, what: str) -> None:
        """Under the lock: wait for the core to change, or raise TimeoutError past the
        deadline."""
        if deadline is not None and now >= deadline.at_ms:
            raise timed_out(self._core, what, deadline)
        wait_s = WAIT_S_MAX if deadline is None else min(WAIT_S_MAX, (deadline.at_ms - now) / 1000)
        self._changed.wait(wait_s)

    def _poke(self) -> None:
        """Under the lock: the background thread has work."""
        self._dirty = True
        self._wakeup.notify()

    def _poke_if_wanted(self) -> None:
        """Under the lock: wake the background thread only when the application's calls
        gave it work (not once per message)."""
        if self._core.take_poll_wanted():
            self._poke()

    # ------------------------------------------------------------ background thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug: say so, and let the application's calls fail
            _log.exception("group.reader_failed", group_id=self.config.group_id)
            with self._lock:
                self._core.error = RaftmqError(
                    ErrorCode.UNKNOWN_SERVER_ERROR, "the group reader's thread failed"
                )
                self._changed.notify_all()

    def _loop(self) -> None:
        # Bound: until the core is done (closed); each pass starts the due calls, then
        # waits for an answer, a poke or the core's next timer.
        while True:
            with self._lock:
                self._dirty = False
                now = now_ms()
                calls = self._core.poll(now_ms=now)
                done = self._core.done
                log_events(self._core)
                self._changed.notify_all()
            for call in calls:
                self._start(call)
            if done:
                return
            with self._lock:
                now = now_ms()
                wake = self._core.next_wakeup_ms(now_ms=now)
                if not self._dirty and wake > now:
                    self._wakeup.wait(timeout=(wake - now) / 1000)

    def _start(self, call: GroupCall) -> None:
        """Start one call without blocking (outside the lock: a future that is already
        done runs its callback at once, on this thread)."""
        method, request = group_protocol.to_pb(call.request)
        try:
            future = self._pool.conn(call.endpoint).call_future(
                method, request, timeout_ms=call.timeout_ms
            )
        except RaftmqError as e:  # the pool was closed under us
            self._feed(call, None, e)
            return

        def done(f: Future[Any]) -> None:
            try:
                response = f.result()
            except grpc.RpcError as e:
                self._feed(call, None, transport_error(call.endpoint, method, e))
                return
            except Exception as e:  # cancelled by a closing channel, ...
                failure = RaftmqError(
                    ErrorCode.BROKER_NOT_AVAILABLE, f"{call.endpoint} {method}: {e!r}"
                )
                self._feed(call, None, failure)
                return
            try:
                result = group_protocol.from_pb(call.request, response)
            except Exception as e:  # an answer this client cannot read
                bad = RaftmqError(
                    ErrorCode.UNKNOWN_SERVER_ERROR, f"{call.endpoint} {method}: bad answer: {e}"
                )
                self._feed(call, None, bad)
                return
            self._feed(call, result, None)

        future.add_done_callback(done)

    def _feed(
        self, call: GroupCall, result: group_protocol.Result | None, error: RaftmqError | None
    ) -> None:
        with self._lock:
            if error is not None:
                self._core.on_failure(call.call_id, error, now_ms=now_ms())
            else:
                assert result is not None
                self._core.on_result(call.call_id, result, now_ms=now_ms())
            self._poke()
            self._changed.notify_all()


__all__ = ["CommitError", "GroupReader"]
