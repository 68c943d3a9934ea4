"""`AsyncAdmin`: the asyncio twin of `Admin` (same requests, results and failover, on
grpc.aio; consumer-group calls make the same `CoordinatorCall` decisions)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import grpc
from raftmq import wire
from raftmq.client import group_protocol as gp
from raftmq.client.admin import (
    BROKERS_ONLY_TOPIC,
    ClusterStatus,
    FirstOffset,
    LastOffset,
    cluster_status_from_pb,
    create_topic_request,
    delete_topic_request,
    offsets_timestamp,
    plan_list_offsets,
    raise_commit_errors,
    reachable_endpoints,
)
from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.async_conn import AsyncConn
from raftmq.client.async_controller_client import AsyncEndpointPool, async_call_with_failover
from raftmq.client.brokers import parse_brokers
from raftmq.client.conn import now_ms, transport_error
from raftmq.client.controller_client import Backoff
from raftmq.client.group_admin import (
    CoordinatorCall,
    FindStep,
    GroupDescription,
    ResetTo,
    check_reset_to,
    described_topics,
    group_description,
    merged_listings,
    reset_targets,
)
from raftmq.errors import ErrorCode, RaftmqError, UnknownTopicOrPartitionError
from raftmq.metadata import TopicRecord
from raftmq.v1 import controller_pb2 as pb


class AsyncAdmin:
    def __init__(self, brokers: Sequence[str] | str, *, timeout_ms: int = 15_000) -> None:
        self.timeout_ms = timeout_ms
        self._pool = AsyncEndpointPool(parse_brokers(brokers), service="broker")
        # Metadata (listener-aware broker addresses) for the calls that go to each broker.
        self._brokers = AsyncBrokerPool(brokers)

    async def close(self) -> None:
        await self._pool.close()
        await self._brokers.close()

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

    async def _endpoints(self, topics: Sequence[str]) -> dict[int, str]:
        """As `Admin._endpoints`."""
        return reachable_endpoints(
            await self._brokers.fetch_metadata(topics, timeout_ms=self.timeout_ms)
        )

    async def cluster_status(self) -> ClusterStatus:
        return cluster_status_from_pb(
            await self._call("DescribeCluster", pb.DescribeClusterRequest())
        )

    async def list_offsets(
        self, topic: str, at: int | datetime = LastOffset, *, partitions: Sequence[int] = ()
    ) -> dict[int, int]:
        [topic_record] = await self.describe_topics(topic)
        endpoints = await self._endpoints([topic])
        timestamp = offsets_timestamp(at)
        offsets: dict[int, int] = {}
        for endpoint, indexes in plan_list_offsets(topic_record, endpoints, partitions).items():
            async with AsyncConn(endpoint) as conn:
                results = await conn.list_offsets(
                    [(topic, i, timestamp) for i in indexes], timeout_ms=self.timeout_ms
                )
            for result in results:
                if result.error is not None:
                    raise result.error
                offsets[result.partition] = result.offset
        return dict(sorted(offsets.items()))

    # ------------------------------------------------------------ consumer groups

    async def list_groups(self) -> list[gp.GroupListing]:
        """As `Admin.list_groups`."""
        listings: list[gp.GroupListing] = []
        for endpoint in (await self._endpoints([BROKERS_ONLY_TOPIC])).values():
            result = await self._at(endpoint, gp.ListGroupsRequest(), timeout_ms=self.timeout_ms)
            assert isinstance(result, gp.ListGroupsResult)
            if result.error is not None:
                raise result.error
            listings += result.groups
        return merged_listings(listings)

    async def describe_group(self, group_id: str) -> GroupDescription:
        """As `Admin.describe_group`."""
        described = await self._group_call(group_id, gp.DescribeGroupsRequest(group_id))
        assert isinstance(described, gp.GroupDescriptionResult)
        if described.error is not None:
            raise described.error
        fetched = await self._group_call(group_id, gp.OffsetFetchRequest(group_id))
        assert isinstance(fetched, gp.OffsetFetchResult)
        if fetched.error is not None and fetched.error.code != ErrorCode.GROUP_ID_NOT_FOUND:
            raise fetched.error
        ends: dict[tuple[str, int], int] = {}
        for topic in described_topics(described, fetched.offsets):
            try:
                offsets = await self.list_offsets(topic, LastOffset)
            except UnknownTopicOrPartitionError:
                continue
            ends.update({(topic, p): o for p, o in offsets.items()})
        return group_description(described, fetched.offsets, ends)

    async def reset_offsets(self, group_id: str, topic: str, to: ResetTo) -> dict[int, int]:
        """As `Admin.reset_offsets`."""
        check_reset_to(to)
        earliest = await self.list_offsets(topic, FirstOffset)
        latest = await self.list_offsets(topic, LastOffset)
        at_time = await self.list_offsets(topic, to) if isinstance(to, datetime) else None
        targets = reset_targets(to, earliest, latest, at_time)
        request = gp.OffsetCommitRequest(
            group_id,
            "",
            gp.ADMIN_COMMIT_EPOCH,
            tuple(gp.CommitOffset(topic, p, o) for p, o in targets.items()),
        )
        result = await self._group_call(group_id, request)
        assert isinstance(result, gp.OffsetCommitResult)
        raise_commit_errors(result)
        return targets

    async def delete_group(self, group_id: str) -> None:
        """As `Admin.delete_group`."""
        result = await self._group_call(group_id, gp.DeleteGroupsRequest(group_id))
        assert isinstance(result, gp.DeleteGroupResult)
        if result.error is not None:
            raise result.error

    async def _at(self, endpoint: str, request: gp.Request, *, timeout_ms: int) -> gp.Result:
        method, message = gp.to_pb(request)
        try:
            response = await getattr(self._pool.stub(endpoint), method)(
                message, timeout=timeout_ms / 1000
            )
        except grpc.RpcError as e:
            raise transport_error(endpoint, method, e) from e
        return gp.from_pb(request, response)

    async def _group_call(self, group_id: str, request: gp.Request) -> gp.Result:
        """As `Admin._group_call`."""
        method, _ = gp.to_pb(request)
        plan = CoordinatorCall(
            group_id, method, self._pool.ordering, now_ms=now_ms(), timeout_ms=self.timeout_ms
        )
        # Bound: CoordinatorCall gives up after its attempts or timeout_ms.
        while (step := plan.next(now_ms=now_ms())) is not None:
            if isinstance(step, Backoff):
                await asyncio.sleep(step.wait_ms / 1000)
                continue
            find = isinstance(step, FindStep)
            asked: gp.Request = gp.FindCoordinatorRequest(group_id) if find else request
            try:
                result = await self._at(step.endpoint, asked, timeout_ms=step.timeout_ms)
            except RaftmqError as e:
                plan.on_transport_failure(step.endpoint, e)
                continue
            if isinstance(result, gp.CoordinatorResult) and find:
                plan.on_coordinator(result)
            elif plan.on_answer(gp.coordinator_error(result)):
                return result
        raise plan.give_up()
