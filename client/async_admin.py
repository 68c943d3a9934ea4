"""`AsyncAdmin`: the asyncio twin of `Admin` (same requests, results and failover, on
grpc.aio)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from raftmq import wire
from raftmq.client.admin import (
    ClusterStatus,
    LastOffset,
    cluster_status_from_pb,
    create_topic_request,
    delete_topic_request,
    offsets_timestamp,
    plan_list_offsets,
)
from raftmq.client.async_conn import AsyncConn
from raftmq.client.async_controller_client import AsyncEndpointPool, async_call_with_failover
from raftmq.client.brokers import parse_brokers
from raftmq.metadata import TopicRecord
from raftmq.v1 import controller_pb2 as pb


class AsyncAdmin:
    def __init__(self, brokers: Sequence[str] | str, *, timeout_ms: int = 15_000) -> None:
        self.timeout_ms = timeout_ms
        self._pool = AsyncEndpointPool(parse_brokers(brokers), service="broker")

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> AsyncAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request: Any) -> Any:
        """As `Admin._call`: the same failover decisions (`FailoverCall`), on grpc.aio."""
        response = await async_call_with_failover(
            self._pool, method, request, timeout_ms=self.timeout_ms
        )
        wire.raise_for(response.error)
        return response

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
        await self._call("DeleteTopic", delete_topic_request(name))

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
