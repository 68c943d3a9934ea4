"""Bootstrap addresses and metadata for the asyncio shells (`AsyncWriter`, `AsyncReader`):
`BrokerPool`'s twin, sharing its address order and metadata merge."""

from __future__ import annotations

from collections.abc import Sequence

from raftmq.client.async_conn import AsyncConn
from raftmq.client.brokers import (
    METADATA_TIMEOUT_MS,
    candidate_addresses,
    merge_metadata,
    no_metadata,
    parse_brokers,
)
from raftmq.client.protocol import ClusterMetadata
from raftmq.errors import ErrorCode, RaftmqError


class AsyncBrokerPool:
    """AsyncConns by address and the latest metadata. One event loop only."""

    def __init__(self, bootstrap: Sequence[str] | str) -> None:
        self.bootstrap = parse_brokers(bootstrap)
        self._conns: dict[str, AsyncConn] = {}
        self.metadata: ClusterMetadata | None = None

    def conn(self, address: str) -> AsyncConn:
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = AsyncConn(address)
        return conn

    async def init_producer_id(self, producer_id: int, producer_epoch: int) -> tuple[int, int]:
        """InitProducerId at the first broker that answers (any broker can)."""
        failures = []
        for address in candidate_addresses(self.bootstrap, self.metadata):
            try:
                return await self.conn(address).init_producer_id(producer_id, producer_epoch)
            except RaftmqError as e:
                if e.code != ErrorCode.BROKER_NOT_AVAILABLE:
                    raise
                failures.append(str(e))
        raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "; ".join(failures[-3:]))

    async def fetch_metadata(
        self,
        topics: Sequence[str] = (),
        *,
        allow_auto_topic_creation: bool = False,
        timeout_ms: int = METADATA_TIMEOUT_MS,
    ) -> ClusterMetadata:
        failures = []
        for address in candidate_addresses(self.bootstrap, self.metadata):
            try:
                answer = await self.conn(address).metadata(
                    topics,
                    allow_auto_topic_creation=allow_auto_topic_creation,
                    timeout_ms=timeout_ms,
                )
            except RaftmqError as e:
                failures.append(str(e))
                continue
            if answer.version == 0:
                failures.append(f"{address} has no metadata yet")
                continue
            self.metadata = merge_metadata(self.metadata, answer, topics)
            return self.metadata
        raise no_metadata(failures)

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()
