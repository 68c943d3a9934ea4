"""The asyncio shell of a consumer group's Reader (`AsyncReader(..., group_id=...)`
delegates to it): the same `GroupCore` as the sync shell, on grpc.aio.

One background task per Reader starts every call the core asks for as its own task
(answers are fed back as they come) and sleeps until the core's next timer or a poke, so
heartbeats keep the session while the application is slow. Everything runs on the loop
that created the Reader (create it inside a coroutine or `async with`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import structlog
from raftmq.client import group_protocol
from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.conn import now_ms
from raftmq.client.deadlines import Deadline
from raftmq.client.group_core import (
    CLOSE_TIMEOUT_MS,
    COMMIT_TIMEOUT_MS,
    GroupCall,
    GroupConfig,
    GroupCore,
)
from raftmq.client.group_reader import JOIN_MARGIN_S, WAIT_S_MAX, log_events, timed_out
from raftmq.client.reader_core import READ_LAG_TIMEOUT_MS, ReaderStats
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

_log = structlog.get_logger("raftmq.client")


class AsyncGroupReader:
    """As `GroupReader`, for asyncio. One event loop only."""

    def __init__(self, brokers: Sequence[str] | str, config: GroupConfig) -> None:
        self.config = config
        self._pool = AsyncBrokerPool(brokers)
        self._core = GroupCore(
            config, self._pool.bootstrap, member_id=uuid.uuid4().hex, now_ms=now_ms()
        )
        # Set when the core's state changed (the application waits), and when the
        # background task has work.
        self._changed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._calls: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    # ------------------------------------------------------------ the application

    async def read_message(self, timeout_ms: int | None) -> Message:
        return await self._next(timeout_ms, auto_commit=True)

    async def fetch_message(self, timeout_ms: int | None) -> Message:
        return await self._next(timeout_ms, auto_commit=False)

    async def _next(self, timeout_ms: int | None, *, auto_commit: bool) -> Message:
        deadline = Deadline.after(timeout_ms, now_ms=now_ms())
        self._check_open()
        self._core.app_enter(now_ms=now_ms())
        try:
            # Bound: until a message, the deadline, or an error.
            while True:
                self._wake_if_wanted()  # a commit due, a partition to fetch again
                self._changed.clear()
                now = now_ms()
                message = self._core.next_message(now_ms=now, auto_commit=auto_commit)
                if message is not None:
                    return message
                await self._wait(deadline, now, "no message")
                self._check_open()
        finally:
            self._core.app_exit(now_ms=now_ms())
            self._wake_if_wanted()

    async def commit_messages(self, messages: Sequence[Message], timeout_ms: int | None) -> None:
        bound = COMMIT_TIMEOUT_MS if timeout_ms is None else timeout_ms
        self._check_open()
        ticket = self._core.commit(messages, now_ms=now_ms(), timeout_ms=bound)
        self._wakeup.set()
        # Bound: the ticket's own deadline settles it.
        while not ticket.done:
            if self._task.done() and self._core.error is not None:
                raise self._core.error  # the background task failed (a bug)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_S_MAX):
                    await self._changed.wait()
        if ticket.error is not None:
            raise ticket.error

    def lag(self) -> int:
        return self._core.lag

    async def read_lag(self, timeout_ms: int = READ_LAG_TIMEOUT_MS) -> int:
        deadline = Deadline(now_ms() + timeout_ms, timeout_ms)
        self._check_open()
        self._core.ask_lag()
        self._wakeup.set()
        # Bound: until the answer or the deadline.
        while True:
            self._changed.clear()
            lag = self._core.lag_answer()
            if lag is not None:
                return lag
            self._wake_if_wanted()
            await self._wait(deadline, now_ms(), "no lag")
            self._check_open()

    def stats(self) -> ReaderStats:
        return self._core.current_stats()

    @property
    def assignment(self) -> list[tuple[str, int]]:
        return self._core.assignment

    async def close(self, timeout_ms: int | None = None) -> None:
        """As `GroupReader.close`."""
        bound = CLOSE_TIMEOUT_MS if timeout_ms is None else timeout_ms
        if self._closed:
            return
        self._closed = True
        self._core.close(now_ms=now_ms(), timeout_ms=bound)
        self._wakeup.set()
        self._changed.set()
        try:
            async with asyncio.timeout(bound / 1000 + JOIN_MARGIN_S):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
        for task in list(self._calls):
            task.cancel()
        await self._pool.close()
        log_events(self._core)
        if self._core.close_error is not None:
            raise self._core.close_error

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.read_message(None)

    # ------------------------------------------------------------ waiting

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("read on a closed AsyncReader")

    def _wake_if_wanted(self) -> None:
        """Wake the background task only when the application's calls gave it work."""
        if self._core.take_poll_wanted():
            self._wakeup.set()

    async def _wait(self, deadline: Deadline | None, now: int, what: str) -> None:
        if deadline is not None and now >= deadline.at_ms:
            raise timed_out(self._core, what, deadline)
        wait_s = WAIT_S_MAX if deadline is None else min(WAIT_S_MAX, (deadline.at_ms - now) / 1000)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._changed.wait()

    # ------------------------------------------------------------ background task

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception:  # a bug: say so, and let the application's calls fail
            _log.exception("group.reader_failed", group_id=self.config.group_id)
            self._core.error = RaftmqError(
                ErrorCode.UNKNOWN_SERVER_ERROR, "the group reader's task failed"
            )
            self._changed.set()

    async def _loop(self) -> None:
        # Bound: until the core is done (closed); each pass starts the due calls, then
        # waits for an answer, a poke or the core's next timer.
        while True:
            self._wakeup.clear()
            now = now_ms()
            for call in self._core.poll(now_ms=now):
                task = asyncio.get_running_loop().create_task(self._perform(call))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
            log_events(self._core)
            self._changed.set()
            if self._core.done:
                return
            wake = self._core.next_wakeup_ms(now_ms=now_ms())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0, wake - now_ms()) / 1000):
                    await self._wakeup.wait()

    async def _perform(self, call: GroupCall) -> None:
        method, request = group_protocol.to_pb(call.request)
        try:
            response = await self._pool.call(
                call.endpoint, method, request, timeout_ms=call.timeout_ms
            )
            result = group_protocol.from_pb(call.request, response)
        except RaftmqError as e:
            self._core.on_failure(call.call_id, e, now_ms=now_ms())
        except Exception as e:  # an answer this client cannot read
            bad = RaftmqError(
                ErrorCode.UNKNOWN_SERVER_ERROR, f"{call.endpoint} {method}: bad answer: {e}"
            )
            self._core.on_failure(call.call_id, bad, now_ms=now_ms())
        else:
            self._core.on_result(call.call_id, result, now_ms=now_ms())
        self._wakeup.set()
        self._changed.set()
