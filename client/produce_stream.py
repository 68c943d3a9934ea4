"""`ProduceStream`: produce requests pipelined on one long-lived `ProduceStream` call to one
broker, for the sync Writer (the way a Kafka producer pipelines its connection).

A unary call per request costs a whole gRPC call on both sides (~0.65 ms of CPU each here)
and, with grpc's sync API, a new channel thread whenever the channel had no call in
flight: a writer with one request in flight paid that on every write. On one stream a
request is one message each way; answers carry the request's correlation id.

Threads: `send` queues the request (any thread, never blocks); grpc's request thread
writes it; one reader thread per stream takes the answers and runs each request's
`on_answer`, exactly once, with the response or with the failure that ended the stream
(BROKER_NOT_AVAILABLE, like a failed unary call). A request without an answer by its
deadline fails the whole stream (`expire`, from the caller's own loop): a broker that
stopped answering is given up on the way a unary deadline would, and the next send opens
a new stream.

A broker that has no ProduceStream (an older version, mid rolling upgrade) ends the call
with UNIMPLEMENTED before it reads anything: the stream then says so (`unimplemented`),
its requests fail as unsent, and the pool sends to that broker with unary Produce calls.
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import grpc
import structlog
from raftmq import wire
from raftmq.client.conn import Conn, closed_error, now_ms, transport_error
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import broker_pb2 as pb

__all__ = ["PRODUCE_STREAM_QUEUE_MAX", "Answer", "PendingAnswers", "ProduceStream"]

# Requests handed to a stream and not yet written by grpc. The Writer keeps at most 5
# batches in flight per partition, so it never comes near; past it `send` fails the
# request rather than block its caller.
PRODUCE_STREAM_QUEUE_MAX = 10_000

# Stale deadline pairs a stream may hold beyond its pending requests before it rebuilds the
# heap from them (see PendingAnswers).
STALE_DEADLINES_SLACK = 64

_log = structlog.get_logger("raftmq.client")

_Response = TypeVar("_Response")

# Called once per request with its response or with the error that ended the stream.
Answer = Callable[[_Response | RaftmqError], None]


class PendingAnswers(Generic[_Response]):
    """The answers a produce stream owes, by correlation id, with their deadlines, and the
    failure that ended the stream. Pure (no I/O, clock or lock): `ProduceStream` uses it
    under its lock, `AsyncRequestStream` (produce and fetch) from its event loop.

    Invariants: a request that owes an answer is pending from `add` until `pop` or `fail`
    removes it, exactly once; _deadlines holds (deadline, id) for every pending id, and
    stale pairs of answered ones: dropped when they surface, and all of them once they
    outnumber the pending ones (+ STALE_DEADLINES_SLACK), so the heap stays within twice
    the pending requests plus that slack however long the stream lives; `failure` is set
    once, and after it nothing is pending."""

    def __init__(self) -> None:
        self._pending: dict[int, Answer[_Response]] = {}
        self._deadlines: list[tuple[int, int]] = []
        self._next_id = 0
        self.failure: RaftmqError | None = None

    def add(self, on_answer: Answer[_Response] | None, deadline_ms: int) -> int:
        """The next correlation id; `on_answer` (None: no answer comes, acks=0) is owed
        an answer by `deadline_ms`."""
        assert self.failure is None, "a failed stream takes no requests"
        correlation_id = self._next_id
        self._next_id += 1
        if on_answer is not None:
            self._pending[correlation_id] = on_answer
            heapq.heappush(self._deadlines, (deadline_ms, correlation_id))
        return correlation_id

    def pop(self, correlation_id: int) -> Answer[_Response] | None:
        """The answer owed to `correlation_id`, no longer pending (None: none is)."""
        on_answer = self._pending.pop(correlation_id, None)
        if on_answer is not None:
            self._drop_stale()
        return on_answer

    def next_deadline_ms(self) -> int | None:
        """The earliest deadline of a pending request (None: nothing is pending)."""
        self._drop_stale()
        return self._deadlines[0][0] if self._deadlines else None

    def deadlines_held(self) -> int:
        """Pairs in the deadline heap, stale ones included (for the bound's tests)."""
        return len(self._deadlines)

    def _drop_stale(self) -> None:
        # Bound: pops each answered request's stale pair once.
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)
        if len(self._deadlines) > 2 * len(self._pending) + STALE_DEADLINES_SLACK:
            # Stale pairs stuck behind a long-pending one: rebuild from the pending.
            self._deadlines = [(d, i) for d, i in self._deadlines if i in self._pending]
            heapq.heapify(self._deadlines)

    def fail(self, error: RaftmqError) -> list[Answer[_Response]] | None:
        """Record the failure; the answers that were pending (each then owed `error`), or
        None if the stream had failed already."""
        if self.failure is not None:
            return None
        self.failure = error
        pending = list(self._pending.values())
        self._pending.clear()
        self._deadlines.clear()
        return pending


def queue_full_error(endpoint: str, method: str = "ProduceStream") -> RaftmqError:
    return RaftmqError(
        ErrorCode.BROKER_NOT_AVAILABLE,
        f"{endpoint} {method}: {PRODUCE_STREAM_QUEUE_MAX} requests wait to be sent",
    )


def no_answer_error(endpoint: str, method: str = "ProduceStream") -> RaftmqError:
    return RaftmqError(
        ErrorCode.BROKER_NOT_AVAILABLE,
        f"{endpoint} {method}: no answer by the request's deadline",
    )


class ProduceStream:
    """One open ProduceStream call on `conn`'s channel. Once failed (`failed`), it stays
    failed: open a new one."""

    def __init__(self, conn: Conn) -> None:
        self.endpoint = conn.address
        self._lock = threading.Lock()
        # None ends the request iterator (and with it grpc's request thread).
        self._outbox: queue.Queue[pb.ProduceStreamRequest | None] = queue.Queue(
            maxsize=PRODUCE_STREAM_QUEUE_MAX
        )
        # Guarded by _lock. Each request's `on_answer` is called exactly once: by the
        # reader with its answer, or with the failure when the stream fails.
        self._answers = PendingAnswers[pb.ProduceResponse]()
        # The broker answered UNIMPLEMENTED: it has no ProduceStream. Set once, before
        # the stream fails.
        self.unimplemented = False
        self._responses: Any = conn.open_stream("ProduceStream", self._requests())
        self._reader = threading.Thread(
            target=self._read, name="raftmq-produce-stream", daemon=True
        )
        self._reader.start()

    @property
    def failed(self) -> bool:
        with self._lock:
            return self._answers.failure is not None

    def send(
        self,
        request: pb.ProduceRequest,
        *,
        timeout_ms: int,
        on_answer: Answer[pb.ProduceResponse] | None,
    ) -> None:
        """Queue `request`. `on_answer` (None for acks=0: no answer comes) is called
        exactly once, on the reader thread, or here at once if the stream has failed."""
        with self._lock:
            failure = self._answers.failure
            if failure is None:
                correlation_id = self._answers.add(on_answer, now_ms() + timeout_ms)
                try:
                    self._outbox.put_nowait(
                        pb.ProduceStreamRequest(correlation_id=correlation_id, request=request)
                    )
                except queue.Full:
                    self._answers.pop(correlation_id)
                    failure = queue_full_error(self.endpoint)
        if failure is not None and on_answer is not None:
            on_answer(failure)

    def expire(self, now_ms: int) -> int | None:
        """Fail the stream if a request is past its deadline; else the next deadline
        (None: nothing pending)."""
        with self._lock:
            deadline_ms = self._answers.next_deadline_ms()
        if deadline_ms is None or deadline_ms > now_ms:
            return deadline_ms
        self.fail(no_answer_error(self.endpoint))
        return None

    def close(self) -> None:
        self.fail(closed_error(self.endpoint, "ProduceStream"))

    def fail(self, error: RaftmqError) -> None:
        """End the stream: every pending request gets `error`; later sends too."""
        with self._lock:
            pending = self._answers.fail(error)
        if pending is None:
            return
        # Bound: the outbox holds at most PRODUCE_STREAM_QUEUE_MAX items.
        while True:
            try:
                self._outbox.get_nowait()
            except queue.Empty:
                break
        self._outbox.put_nowait(None)
        self._responses.cancel()
        if pending:
            _log.info(
                "produce_stream.failed",
                endpoint=self.endpoint,
                pending=len(pending),
                error=str(error),
            )
        for on_answer in pending:
            on_answer(error)

    def _requests(self) -> Iterator[pb.ProduceStreamRequest]:
        """grpc's request thread: what `send` queued, until the stream fails."""
        # Bound: one iteration per request, until fail() queues None.
        while True:
            item = self._outbox.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        """Reader thread: each answer to its request, until the stream ends."""
        try:
            # Bound: one iteration per answer, until the call ends.
            for answer in self._responses:
                with self._lock:
                    on_answer = self._answers.pop(answer.correlation_id)
                if on_answer is not None:
                    on_answer(answer.response)
            error = RaftmqError(
                ErrorCode.BROKER_NOT_AVAILABLE, f"{self.endpoint} ended the ProduceStream"
            )
        except grpc.RpcError as e:
            self.unimplemented = wire.rpc_status(e) == grpc.StatusCode.UNIMPLEMENTED
            error = transport_error(self.endpoint, "ProduceStream", e)
        except Exception as e:  # a bug in a callback: fail what is pending, say so
            _log.exception("produce_stream.reader_failed", endpoint=self.endpoint)
            error = RaftmqError(ErrorCode.UNKNOWN_SERVER_ERROR, f"produce stream reader: {e}")
        self.fail(error)
