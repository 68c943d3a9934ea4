"""Bootstrap addresses and metadata for the asyncio shells (`AsyncWriter`, `AsyncReader`):
`BrokerPool`'s twin, sharing its address order and metadata merge."""

from __future__ import annotations

from collections.abc import Sequence

from raftmq.client.async_conn import AsyncConn
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


class AsyncBrokerPool:
    """AsyncConns by address and the latest metadata. One event loop only."""

    def __init__(self, bootstrap: Sequence[str] | str) -> None:
        self.bootstrap = parse_brokers(bootstrap)
        self._conns: dict[str, AsyncConn] = {}
        self._closed = False
        self.metadata: ClusterMetadata | None = None

    def conn(self, address: str) -> AsyncConn:
        if self._closed:
            raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "the client was closed")
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = AsyncConn(address)
        return conn

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
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()
