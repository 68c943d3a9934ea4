"""`AsyncConn`: `Conn` for asyncio (grpc.aio): the same raw calls and kafka-go conveniences,
as coroutines. Request building and answer parsing are shared with `Conn`
(`raftmq.client.protocol`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from raftmq import wire
from raftmq.client import protocol
from raftmq.client.conn import DEADLINE_MARGIN_MS, closed_error, decode_from, transport_error
from raftmq.client.protocol import (
    ACKS_ALL,
    EARLIEST,
    LATEST,
    ClusterMetadata,
    FetchResult,
    OffsetResult,
    ProduceResult,
)
from raftmq.compression import CODEC_NONE
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import encode_batch
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc


class AsyncConn:
    """One grpc.aio channel to one broker. Create and use it inside a running event loop."""

    def __init__(self, address: str, *, topic: str | None = None, partition: int = 0) -> None:
        wire.parse_host_port(address)
        self.address = address
        self.topic = topic
        self.partition = partition
        self._channel = grpc.aio.insecure_channel(address, options=wire.GRPC_CLIENT_OPTIONS)
        self._stub: Any = broker_pb2_grpc.BrokerServiceStub(self._channel)

    @classmethod
    async def dial_leader(
        cls, brokers: Sequence[str], topic: str, partition: int, *, timeout_ms: int = 10_000
    ) -> AsyncConn:
        failures = []
        for address in brokers:
            bootstrap = cls(address)
            try:
                metadata = await bootstrap.metadata([topic], timeout_ms=timeout_ms)
            except RaftmqError as e:
                failures.append(str(e))
                continue
            finally:
                await bootstrap.close()
            leader, _ = metadata.leader(topic, partition)
            if leader is None:
                code = (
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    if topic not in metadata.topics
                    else ErrorCode.LEADER_NOT_AVAILABLE
                )
                raise RaftmqError(code, f"{topic}-{partition} has no leader (or does not exist)")
            return cls(leader, topic=topic, partition=partition)
        raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "; ".join(failures) or "no brokers")

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, request: Any, *, timeout_ms: int) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=timeout_ms / 1000)
        except grpc.RpcError as e:
            raise transport_error(self.address, method, e) from e
        except grpc.aio.UsageError as e:  # a call on a closed channel
            raise closed_error(self.address, method) from e

    def open_stream(self, method: str, requests: AsyncIterator[Any]) -> Any:
        """Open a stream-stream RPC fed by `requests` (no deadline: the caller bounds what
        it waits for); iterate the result (`async for`) for the answers, `cancel()` it to
        end it."""
        try:
            return getattr(self._stub, method)(requests)
        except grpc.aio.UsageError as e:  # a call on a closed channel
            raise closed_error(self.address, method) from e

    async def produce(
        self,
        batches: Sequence[tuple[str, int, bytes]],
        *,
        acks: int = ACKS_ALL,
        timeout_ms: int = 30_000,
        leader_epoch: int = -1,
    ) -> list[ProduceResult]:
        request = protocol.produce_request(
            [(t, p, leader_epoch, b) for t, p, b in batches], acks=acks, timeout_ms=timeout_ms
        )
        response = await self.call("Produce", request, timeout_ms=timeout_ms + DEADLINE_MARGIN_MS)
        return protocol.produce_results(response)

    async def fetch(
        self,
        partitions: Sequence[tuple[str, int, int]],
        *,
        max_wait_ms: int = 500,
        min_bytes: int = 1,
        max_bytes: int = 16 << 20,
        partition_max_bytes: int = 4 << 20,
        leader_epoch: int = -1,
        timeout_ms: int | None = None,
    ) -> list[FetchResult]:
        request = protocol.fetch_request(
            [(t, p, o, leader_epoch) for t, p, o in partitions],
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            partition_max_bytes=partition_max_bytes,
        )
        if timeout_ms is None:
            timeout_ms = max_wait_ms + DEADLINE_MARGIN_MS
        response = await self.call("Fetch", request, timeout_ms=timeout_ms)
        return protocol.fetch_results(response)

    async def list_offsets(
        self, partitions: Sequence[tuple[str, int, int]], *, timeout_ms: int = 10_000
    ) -> list[OffsetResult]:
        response = await self.call(
            "ListOffsets", protocol.list_offsets_request(partitions), timeout_ms=timeout_ms
        )
        return protocol.offset_results(response)

    async def metadata(
        self,
        topics: Sequence[str] = (),
        *,
        allow_auto_topic_creation: bool = False,
        timeout_ms: int = 10_000,
    ) -> ClusterMetadata:
        response = await self.call(
            "Metadata",
            pb.MetadataRequest(
                topics=list(topics), allow_auto_topic_creation=allow_auto_topic_creation
            ),
            timeout_ms=timeout_ms,
        )
        return protocol.cluster_metadata(response)

    async def init_producer_id(
        self, producer_id: int = -1, producer_epoch: int = -1, *, timeout_ms: int = 10_000
    ) -> tuple[int, int]:
        response = await self.call(
            "InitProducerId",
            pb.InitProducerIdRequest(producer_id=producer_id, producer_epoch=producer_epoch),
            timeout_ms=timeout_ms,
        )
        wire.raise_for(response.error)
        return response.producer_id, response.producer_epoch

    def _bound(self) -> str:
        if self.topic is None:
            raise ValueError("this AsyncConn is not bound to a topic: pass topic= (or dial_leader)")
        return self.topic

    async def write_messages(
        self, *messages: Message, compression: int = CODEC_NONE, timeout_ms: int = 30_000
    ) -> int:
        topic = self._bound()
        [result] = await self.produce(
            [(topic, self.partition, encode_batch(messages, compression=compression))],
            timeout_ms=timeout_ms,
        )
        if result.error is not None:
            raise result.error
        return result.base_offset

    async def read_batch(
        self, offset: int, *, min_bytes: int = 1, max_bytes: int = 1 << 20, max_wait_ms: int = 500
    ) -> list[Message]:
        topic = self._bound()
        [result] = await self.fetch(
            [(topic, self.partition, offset)],
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            partition_max_bytes=max_bytes,
        )
        if result.error is not None:
            raise result.error
        return decode_from(result.records, topic, self.partition, offset)

    async def read_offsets(self) -> tuple[int, int]:
        topic = self._bound()
        first, last = await self.list_offsets(
            [(topic, self.partition, EARLIEST), (topic, self.partition, LATEST)]
        )
        for result in (first, last):
            if result.error is not None:
                raise result.error
        return first.offset, last.offset
