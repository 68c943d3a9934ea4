"""Bootstrap addresses, metadata, and produce and fetch streams for the asyncio shells
(`AsyncWriter`, `AsyncReader`): `BrokerPool`'s twin, sharing its address order and metadata
merge."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import structlog
from raftmq.client.async_conn import AsyncConn
from raftmq.client.async_request_stream import AsyncRequestStream, fetch_stream, produce_stream
from raftmq.client.brokers import (
    INIT_PRODUCER_ID_TIMEOUT_MS,
    METADATA_TIMEOUT_MS,
    attempts,
    candidate_addresses,
    merge_metadata,
    no_metadata,
    no_producer_id,
    parse_brokers,
)
from raftmq.client.deadlines import DEADLINE_MARGIN_MS
from raftmq.client.produce_stream import no_answer_error
from raftmq.client.protocol import ClusterMetadata
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import broker_pb2 as pb

_log = structlog.get_logger("raftmq.client")

_Stream = TypeVar("_Stream", bound=AsyncRequestStream[Any, Any])


class AsyncBrokerPool:
    """AsyncConns by address and the latest metadata. One event loop only."""

    def __init__(self, bootstrap: Sequence[str] | str) -> None:
        self.bootstrap = parse_brokers(bootstrap)
        self._conns: dict[str, AsyncConn] = {}
        # At most one open stream per (method, address); a failed one is replaced on next
        # use.
        self._streams: dict[tuple[str, str], AsyncRequestStream[Any, Any]] = {}
        # (method, address) pairs whose broker has no such stream (it answered
        # UNIMPLEMENTED): they get unary calls.
        self._unary_only: set[tuple[str, str]] = set()
        # Failed streams whose reader task may still be ending: awaited by `close`.
        # Bound: pruned of the ended ones whenever one is added.
        self._retired: list[AsyncRequestStream[Any, Any]] = []
        self._closed = False
        self.metadata: ClusterMetadata | None = None

    def conn(self, address: str) -> AsyncConn:
        if self._closed:
            raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "the client was closed")
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = AsyncConn(address)
        return conn

    def produce_stream(
        self, address: str
    ) -> AsyncRequestStream[pb.ProduceRequest, pb.ProduceResponse] | None:
        """The open produce stream to `address` (a new one if none is, or it failed);
        None if that broker has no ProduceStream (send it unary Produce calls instead).
        After `close`, raises BROKER_NOT_AVAILABLE."""
        return self._stream(address, "ProduceStream", produce_stream)

    def fetch_stream(
        self, address: str
    ) -> AsyncRequestStream[pb.FetchRequest, pb.FetchResponse] | None:
        """As `produce_stream`, for consumer fetches (FetchStream)."""
        return self._stream(address, "FetchStream", fetch_stream)

    def _stream(
        self,
        address: str,
        method: str,
        open_stream: Callable[[AsyncConn], _Stream],
    ) -> _Stream | None:
        conn = self.conn(address)
        key = (method, address)
        if key in self._unary_only:
            return None
        stream = self._streams.get(key)
        if stream is not None and stream.unimplemented:
            self._unary_only.add(key)
            del self._streams[key]
            self._retire(stream)
            _log.info(f"{stream.log_noun}.unsupported", endpoint=address)
            return None
        if stream is None or stream.failed:
            if stream is not None:
                self._retire(stream)
            stream = self._streams[key] = open_stream(conn)
        return cast(_Stream, stream)  # what open_stream made for this method

    def _retire(self, stream: AsyncRequestStream[Any, Any]) -> None:
        self._retired = [s for s in self._retired if not s.ended] + [stream]

    def expire_streams(self, now_ms: int) -> int | None:
        """Fail the streams with a request past its deadline; the next deadline (None:
        no request is waiting for an answer)."""
        deadlines = [d for s in list(self._streams.values()) if (d := s.expire(now_ms)) is not None]
        return min(deadlines, default=None)

    async def call(self, address: str, method: str, request: Any, *, timeout_ms: int) -> Any:
        """One request to `address` (as `AsyncConn.call`); a Fetch goes on its stream."""
        if method == "Fetch":
            return await self.fetch(address, request, timeout_ms=timeout_ms)
        return await self.conn(address).call(method, request, timeout_ms=timeout_ms)

    async def fetch(
        self, address: str, request: pb.FetchRequest, *, timeout_ms: int
    ) -> pb.FetchResponse:
        """One consumer fetch from `address`: on its FetchStream, or a unary Fetch call if
        that broker has none. No answer within `timeout_ms` raises BROKER_NOT_AVAILABLE,
        as a unary call's deadline would (see `_ask`: it also fails the stream when the
        broker was overdue)."""
        # Bound: a second pass only after the broker said it has no FetchStream, and
        # then the unary call ends it.
        while True:
            stream = self.fetch_stream(address)
            if stream is None:
                response: pb.FetchResponse = await self.conn(address).call(
                    "Fetch", request, timeout_ms=timeout_ms
                )
                return response
            answer = await _ask(stream, request, timeout_ms)
            if not isinstance(answer, RaftmqError):
                return answer
            if not stream.unimplemented:
                raise answer

    async def init_producer_id(
        self, producer_id: int, producer_epoch: int, *, timeout_ms: int | None = None
    ) -> tuple[int, int]:
        """As `BrokerPool.init_producer_id`."""
        failures = []
        for address, attempt_ms in attempts(
            candidate_addresses(self.bootstrap, self.metadata),
            timeout_ms=timeout_ms,
            attempt_timeout_ms=INIT_PRODUCER_ID_TIMEOUT_MS,
        ):
            try:
                return await self.conn(address).init_producer_id(
                    producer_id, producer_epoch, timeout_ms=attempt_ms
                )
            except RaftmqError as e:
                if e.code != ErrorCode.BROKER_NOT_AVAILABLE:
                    raise
                failures.append(e.message)
        raise no_producer_id(failures, timeout_ms)

    async def fetch_metadata(
        self,
        topics: Sequence[str] = (),
        *,
        allow_auto_topic_creation: bool = False,
        timeout_ms: int | None = None,
        prefer: Sequence[str] = (),
    ) -> ClusterMetadata:
        """As `BrokerPool.fetch_metadata`."""
        failures = []
        for address, attempt_ms in attempts(
            candidate_addresses(self.bootstrap, self.metadata, prefer),
            timeout_ms=timeout_ms,
            attempt_timeout_ms=METADATA_TIMEOUT_MS,
        ):
            try:
                answer = await self.conn(address).metadata(
                    topics,
                    allow_auto_topic_creation=allow_auto_topic_creation,
                    timeout_ms=attempt_ms,
                )
            except RaftmqError as e:
                failures.append(e.message)
                continue
            if answer.version == 0:
                failures.append(f"{address} has no metadata yet")
                continue
            self.metadata = merge_metadata(self.metadata, answer, topics)
            return self.metadata
        raise no_metadata(failures, timeout_ms)

    async def close(self) -> None:
        self._closed = True
        streams = [*self._retired, *self._streams.values()]
        self._streams.clear()
        self._retired.clear()
        # A closed stream answers its pending requests (closed) before its channel goes.
        for stream in streams:
            await stream.close()
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()


async def _ask(
    stream: AsyncRequestStream[pb.FetchRequest, pb.FetchResponse],
    request: pb.FetchRequest,
    timeout_ms: int,
) -> pb.FetchResponse | RaftmqError:
    """`request`'s answer on `stream`, or the failure that ended the stream. Past
    `timeout_ms` it raises BROKER_NOT_AVAILABLE, as a unary call's deadline does: if the
    broker was due to answer by then (max_wait_ms and the round trip's margin had
    passed), the stream fails with it; if the caller's deadline was shorter than that,
    only this request is given up, and the stream goes on."""
    answered: asyncio.Future[pb.FetchResponse | RaftmqError] = (
        asyncio.get_running_loop().create_future()
    )

    def on_answer(answer: pb.FetchResponse | RaftmqError) -> None:
        if not answered.done():  # not given up on (timed out, or the caller went)
            answered.set_result(answer)

    correlation_id = stream.send(request, timeout_ms=timeout_ms, on_answer=on_answer)
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            return await answered
    except TimeoutError:
        if timeout_ms >= request.max_wait_ms + DEADLINE_MARGIN_MS:
            error = no_answer_error(stream.endpoint, stream.method)
            stream.fail(error)
        else:
            assert correlation_id is not None  # refused at once: answered, no timeout
            stream.abandon(correlation_id)
            error = RaftmqError(
                ErrorCode.BROKER_NOT_AVAILABLE,
                f"{stream.endpoint} {stream.method} failed: DEADLINE_EXCEEDED",
            )
        raise error from None
