"""`AsyncRequestStream`: requests pipelined on one long-lived stream call per broker
(grpc.aio): the AsyncWriter's produce requests on `ProduceStream`, as `ProduceStream` does
for the sync Writer, and the AsyncReaders' fetches on `FetchStream`.

A grpc.aio unary call per request sets up a whole call on both sides and a task on the
client; on an open stream a request is one message each way, answered with its
correlation id. One event loop, so no locks: `send` queues the request (never blocks) and
grpc's own task writes the queue out; one reader task hands each answer to its request's
`on_answer`, exactly once, with the response or with the failure that ended the stream
(BROKER_NOT_AVAILABLE, like a failed unary call). A request without an answer by its
deadline fails the whole stream (the AsyncWriter's `expire`; a fetch's own timer, when the
broker was due to answer by then), and the next send opens a new stream. A broker without
the stream method (an older version, mid rolling upgrade) ends the call with
UNIMPLEMENTED: the stream then says so (`unimplemented`), its requests fail as unsent,
and the pool sends to that broker with unary calls. (grpc.aio ends a call whose request
write fails with INTERNAL, so when the first write races that answer the stream fails as
any broken one does, the request is retried on a new stream, and one of them sees the
UNIMPLEMENTED.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
import structlog
from raftmq import wire
from raftmq.client.async_conn import AsyncConn
from raftmq.client.conn import closed_error, now_ms, transport_error
from raftmq.client.produce_stream import (
    PRODUCE_STREAM_QUEUE_MAX,
    Answer,
    PendingAnswers,
    no_answer_error,
    queue_full_error,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import broker_pb2 as pb

__all__ = ["AsyncRequestStream", "fetch_stream", "produce_stream"]

_log = structlog.get_logger("raftmq.client")

_LOG_NOUNS = {"ProduceStream": "produce_stream", "FetchStream": "fetch_stream"}

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Response_co = TypeVar("_Response_co", covariant=True)


class _StreamAnswer(Protocol[_Response_co]):
    """A ProduceStreamResponse or FetchStreamResponse."""

    @property
    def correlation_id(self) -> int: ...
    @property
    def response(self) -> _Response_co: ...


class AsyncRequestStream(Generic[_Request, _Response]):
    """One open `method` stream call on `conn`'s channel, created inside the running loop.
    `wrap` is the stream message type (`correlation_id=`, `request=`). Once failed
    (`failed`), it stays failed: open a new one."""

    def __init__(self, conn: AsyncConn, method: str, wrap: Callable[..., Any]) -> None:
        self.endpoint = conn.address
        self.method = method
        # Log events name the stream as the sync client's do: produce_stream.failed, ...
        self.log_noun = _LOG_NOUNS[method]
        self._wrap = wrap
        # None ends the request iterator (and with it grpc's writing task).
        self._outbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=PRODUCE_STREAM_QUEUE_MAX)
        # Each request's `on_answer` is called exactly once: by the reader with its
        # answer, or with the failure when the stream fails.
        self._answers = PendingAnswers[_Response]()
        # The broker answered UNIMPLEMENTED: it has no such stream. Set once, before the
        # stream fails.
        self.unimplemented = False
        self._call: Any = conn.open_stream(method, self._requests())
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name=f"raftmq-{method}-{self.endpoint}"
        )

    @property
    def failed(self) -> bool:
        return self._answers.failure is not None

    @property
    def ended(self) -> bool:
        """Failed, and its reader task is over (nothing of it is left on the loop)."""
        return self._reader.done()

    def send(
        self, request: _Request, *, timeout_ms: int, on_answer: Answer[_Response] | None
    ) -> int | None:
        """Queue `request`; its correlation id (None: refused at once). `on_answer` (None
        for acks=0: no answer comes) is called exactly once, from the reader task, or here
        at once if the stream has failed; not at all after `abandon`."""
        failure = self._answers.failure
        if failure is None:
            correlation_id = self._answers.add(on_answer, now_ms() + timeout_ms)
            try:
                self._outbox.put_nowait(self._wrap(correlation_id=correlation_id, request=request))
                return correlation_id
            except asyncio.QueueFull:
                self._answers.pop(correlation_id)
                failure = queue_full_error(self.endpoint, self.method)
        if on_answer is not None:
            on_answer(failure)
        return None

    def abandon(self, correlation_id: int) -> None:
        """The caller no longer waits for this request: its answer, if one comes, is
        dropped, and the stream goes on (a caller's own deadline, not a stuck broker)."""
        self._answers.pop(correlation_id)

    def expire(self, now_ms: int) -> int | None:
        """Fail the stream if a request is past its deadline; else the next deadline
        (None: nothing pending)."""
        deadline_ms = self._answers.next_deadline_ms()
        if deadline_ms is None or deadline_ms > now_ms:
            return deadline_ms
        self.fail(no_answer_error(self.endpoint, self.method))
        return None

    async def close(self) -> None:
        """Fail what is pending (closed) and wait for the reader task to end."""
        self.fail(closed_error(self.endpoint, self.method))
        await asyncio.wait([self._reader])

    def fail(self, error: RaftmqError) -> None:
        """End the stream: every pending request gets `error`; later sends too."""
        pending = self._answers.fail(error)
        if pending is None:
            return
        # Bound: the outbox holds at most PRODUCE_STREAM_QUEUE_MAX items; then None fits.
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._outbox.put_nowait(None)
        self._call.cancel()
        if self._reader is not asyncio.current_task():
            self._reader.cancel()
        if pending:
            _log.info(
                f"{self.log_noun}.failed",
                endpoint=self.endpoint,
                pending=len(pending),
                error=str(error),
            )
        for on_answer in pending:
            on_answer(error)

    async def _requests(self) -> AsyncIterator[Any]:
        """grpc's writing task: what `send` queued, until the stream fails."""
        # Bound: one iteration per request, until fail() queues None.
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            yield item

    async def _read(self) -> None:
        """Reader task: each answer to its request, until the stream ends."""
        try:
            # Bound: one iteration per answer, until the call ends.
            answer: _StreamAnswer[_Response]
            async for answer in self._call:
                on_answer = self._answers.pop(answer.correlation_id)
                if on_answer is not None:
                    on_answer(answer.response)
            error = RaftmqError(
                ErrorCode.BROKER_NOT_AVAILABLE, f"{self.endpoint} ended the {self.method}"
            )
        except asyncio.CancelledError:
            # fail() or close() cancelled us (the failure is set), or the loop is going.
            self.fail(closed_error(self.endpoint, self.method))
            raise
        except grpc.RpcError as e:
            self.unimplemented = wire.rpc_status(e) == grpc.StatusCode.UNIMPLEMENTED
            error = transport_error(self.endpoint, self.method, e)
        except grpc.aio.UsageError:  # the channel was closed under the call
            error = closed_error(self.endpoint, self.method)
        except Exception as e:  # a bug in a callback: fail what is pending, say so
            _log.exception(f"{self.log_noun}.reader_failed", endpoint=self.endpoint)
            error = RaftmqError(ErrorCode.UNKNOWN_SERVER_ERROR, f"{self.method} reader: {e}")
        self.fail(error)


def produce_stream(conn: AsyncConn) -> AsyncRequestStream[pb.ProduceRequest, pb.ProduceResponse]:
    return AsyncRequestStream(conn, "ProduceStream", pb.ProduceStreamRequest)


def fetch_stream(conn: AsyncConn) -> AsyncRequestStream[pb.FetchRequest, pb.FetchResponse]:
    return AsyncRequestStream(conn, "FetchStream", pb.FetchStreamRequest)
