"""Bootstrap addresses, metadata and produce streams for the asyncio shells (`AsyncWriter`,
`AsyncReader`): `BrokerPool`'s twin, sharing its address order and metadata merge."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from raftmq.client.async_conn import AsyncConn
from raftmq.client.async_produce_stream import AsyncProduceStream
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
from raftmq.client.protocol import ClusterMetadata
from raftmq.errors import ErrorCode, RaftmqError

_log = structlog.get_logger("raftmq.client")


class AsyncBrokerPool:
    """AsyncConns by address and the latest metadata. One event loop only."""

    def __init__(self, bootstrap: Sequence[str] | str) -> None:
        self.bootstrap = parse_brokers(bootstrap)
        self._conns: dict[str, AsyncConn] = {}
        # At most one open stream per address; a failed one is replaced on next use.
        self._streams: dict[str, AsyncProduceStream] = {}
        # Addresses whose broker has no ProduceStream (it answered UNIMPLEMENTED): the
        # writer sends them unary Produce calls.
        self._unary_only: set[str] = set()
        # Failed streams whose reader task may still be ending: awaited by `close`.
        # Bound: pruned of the ended ones whenever one is added.
        self._retired: list[AsyncProduceStream] = []
        self._closed = False
        self.metadata: ClusterMetadata | None = None

    def conn(self, address: str) -> AsyncConn:
        if self._closed:
            raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "the client was closed")
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = AsyncConn(address)
        return conn

    def produce_stream(self, address: str) -> AsyncProduceStream | None:
        """The open produce stream to `address` (a new one if none is, or it failed);
        None if that broker has no ProduceStream (send it unary Produce calls instead).
        After `close`, raises BROKER_NOT_AVAILABLE."""
        conn = self.conn(address)
        if address in self._unary_only:
            return None
        stream = self._streams.get(address)
        if stream is not None and stream.unimplemented:
            self._unary_only.add(address)
            del self._streams[address]
            self._retire(stream)
            _log.info("produce_stream.unsupported", endpoint=address)
            return None
        if stream is None or stream.failed:
            if stream is not None:
                self._retire(stream)
            stream = self._streams[address] = AsyncProduceStream(conn)
        return stream

    def _retire(self, stream: AsyncProduceStream) -> None:
        self._retired = [s for s in self._retired if not s.ended] + [stream]

    def expire_streams(self, now_ms: int) -> int | None:
        """Fail the streams with a request past its deadline; the next deadline (None:
        no request is waiting for an answer)."""
        deadlines = [d for s in list(self._streams.values()) if (d := s.expire(now_ms)) is not None]
        return min(deadlines, default=None)

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
