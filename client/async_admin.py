"""`AsyncAdmin`: the asyncio twin of `Admin` (same requests and results, grpc.aio)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import grpc
from raftmq import wire
from raftmq.client.admin import (
    ClusterStatus,
    LastOffset,
    cluster_status_from_pb,
    create_topic_request,
    offsets_timestamp,
    plan_list_offsets,
)
from raftmq.client.async_conn import AsyncConn
from raftmq.client.brokers import parse_brokers
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.metadata import TopicRecord
from raftmq.v1 import broker_pb2_grpc
from raftmq.v1 import controller_pb2 as pb

BACKOFF_MS_MAX = 500


class AsyncAdmin:
    def __init__(self, brokers: Sequence[str] | str, *, timeout_ms: int = 15_000) -> None:
        self.timeout_ms = timeout_ms
        self._addresses = parse_brokers(brokers)
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    async def __aenter__(self) -> AsyncAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request: Any) -> Any:
        """Try the brokers in turn until one answers (transport failures only), bounded by
        timeout_ms; raise the answer's error."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        backoff_ms = 50
        last = ""
        while time.monotonic() < deadline:
            for address in self._addresses:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                channel = self._channels.get(address)
                if channel is None:
                    channel = grpc.aio.insecure_channel(address, options=wire.GRPC_OPTIONS)
                    self._channels[address] = channel
                stub: Any = broker_pb2_grpc.BrokerServiceStub(channel)
                try:
                    response = await getattr(stub, method)(request, timeout=min(remaining_s, 6.0))
                except grpc.RpcError as e:
                    last = f"{address}: {wire.rpc_status(e)}"
                    continue
                wire.raise_for(response.error)
                return response
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(BACKOFF_MS_MAX, backoff_ms * 2)
        raise RaftmqError(
            ErrorCode.BROKER_NOT_AVAILABLE,
            f"no broker answered {method} within {self.timeout_ms} ms (last: {last or 'none'})",
        )

    async def create_topic(
        self,
        name: str,
        *,
        partitions: int = 1,
        replication_factor: int = 1,
        configs: Mapping[str, str] | None = None,
    ) -> TopicRecord:
        response = await self._call(
            "CreateTopic", create_topic_request(name, partitions, replication_factor, configs)
        )
        return wire.topic_from_pb(response.topic)

    async def delete_topic(self, name: str) -> None:
        await self._call(
            "DeleteTopic", pb.DeleteTopicRequest(name=name, request_id=uuid.uuid4().hex)
        )

    async def describe_topics(self, *names: str) -> list[TopicRecord]:
        response = await self._call("DescribeTopics", pb.DescribeTopicsRequest(names=list(names)))
        return [wire.topic_from_pb(t) for t in response.topics]

    async def list_topics(self) -> list[str]:
        return sorted(t.name for t in await self.describe_topics())

    async def cluster_status(self) -> ClusterStatus:
        return cluster_status_from_pb(
            await self._call("DescribeCluster", pb.DescribeClusterRequest())
        )

    async def list_offsets(
        self, topic: str, at: int | datetime = LastOffset, *, partitions: Sequence[int] = ()
    ) -> dict[int, int]:
        [topic_record] = await self.describe_topics(topic)
        status = await self.cluster_status()
        timestamp = offsets_timestamp(at)
        offsets: dict[int, int] = {}
        for endpoint, indexes in plan_list_offsets(topic_record, status, partitions).items():
            async with AsyncConn(endpoint) as conn:
                results = await conn.list_offsets(
                    [(topic, i, timestamp) for i in indexes], timeout_ms=self.timeout_ms
                )
            for result in results:
                if result.error is not None:
                    raise result.error
                offsets[result.partition] = result.offset
        return dict(sorted(offsets.items()))
