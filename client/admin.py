"""`Admin`: topics, offsets, consumer groups and the cluster's status, through any broker
(brokers forward admin requests to the controller quorum, so clients only ever need broker
addresses; group calls go to the group's coordinator, found through any broker).

Calls fail over between the bootstrap brokers and are bounded by `timeout_ms`; a topic
create or delete carries a request id, so a retry after an unknown outcome is applied
once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from raftmq import wire
from raftmq.client import group_protocol as gp
from raftmq.client.brokers import BrokerPool, parse_brokers
from raftmq.client.conn import Conn, now_ms, transport_error
from raftmq.client.controller_client import Backoff, EndpointPool, call_with_failover
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
from raftmq.client.protocol import EARLIEST, LATEST, ClusterMetadata
from raftmq.errors import ErrorCode, RaftmqError, UnknownTopicOrPartitionError
from raftmq.metadata import BrokerRegistration, TopicRecord
from raftmq.v1 import controller_pb2 as pb

FirstOffset = EARLIEST
LastOffset = LATEST


@dataclass(frozen=True, slots=True)
class VoterStatus:
    node_id: int
    state: str  # leader | follower | unreachable
    raft_address: str
    endpoint: str
    # As the Raft leader sees this voter: the last log index it knows the voter holds, and
    # how long ago it last heard from it. -1 for the leader itself, and for every voter
    # when another controller answered.
    match_index: int = -1
    last_contact_ms: int = -1


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    cluster_id: str
    controller_leader_id: int
    controller_term: int
    voters: tuple[VoterStatus, ...]
    metadata_version: int
    brokers: tuple[BrokerRegistration, ...]
    topics: tuple[TopicRecord, ...]
    # Of the controller that answered (-1: not said).
    controller_commit_index: int = -1
    controller_last_applied: int = -1


def cluster_status_from_pb(response: pb.DescribeClusterResponse) -> ClusterStatus:
    return ClusterStatus(
        cluster_id=response.cluster_id,
        controller_leader_id=response.controller.leader_id,
        controller_term=response.controller.term,
        voters=tuple(
            VoterStatus(
                v.id,
                v.state,
                v.raft_address,
                f"{v.endpoint.host}:{v.endpoint.port}" if v.endpoint.host else "",
                v.match_index,
                v.last_contact_ms,
            )
            for v in response.controller.voters
        ),
        metadata_version=response.metadata_version,
        brokers=tuple(wire.broker_from_pb(b) for b in response.brokers),
        topics=tuple(wire.topic_from_pb(t) for t in response.topics),
        controller_commit_index=response.controller.commit_index,
        controller_last_applied=response.controller.last_applied,
    )


def create_topic_request(
    name: str, partitions: int, replication_factor: int, configs: Mapping[str, str] | None
) -> pb.CreateTopicRequest:
    return pb.CreateTopicRequest(
        name=name,
        partitions=partitions,
        replication_factor=replication_factor,
        configs=dict(configs or {}),
        request_id=uuid.uuid4().hex,
    )


def delete_topic_request(name: str) -> pb.DeleteTopicRequest:
    return pb.DeleteTopicRequest(name=name, request_id=uuid.uuid4().hex)


def offsets_timestamp(at: int | datetime) -> int:
    """FirstOffset / LastOffset as they are; a datetime (naive: local) as epoch ms."""
    if isinstance(at, datetime):
        aware = at if at.tzinfo is not None else at.astimezone()
        return int(aware.timestamp() * 1000)
    return at


def plan_list_offsets(
    topic: TopicRecord, endpoints: Mapping[int, str], partitions: Sequence[int]
) -> dict[str, list[int]]:
    """Leader address -> the partitions (of `partitions`, default all) it leads.
    `endpoints`: broker id -> address as this client reaches it (`reachable_endpoints`)."""
    by_leader: dict[str, list[int]] = {}
    for index in partitions or range(len(topic.partitions)):
        if not 0 <= index < len(topic.partitions):
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic.name} has no partition {index}"
            )
        leader = topic.partitions[index].leader
        if leader not in endpoints:
            raise RaftmqError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"{topic.name}-{index} has no leader now"
            )
        by_leader.setdefault(endpoints[leader], []).append(index)
    return by_leader


# Metadata answers every topic when asked for none; asking for this one (the internal
# offsets topic: one topic at most) gets the brokers without the whole cluster's topics.
BROKERS_ONLY_TOPIC = "__consumer_offsets"


def reachable_endpoints(metadata: ClusterMetadata) -> dict[int, str]:
    """Unfenced broker id -> its address on the listener this client came in on.

    Metadata answers per listener (a client on the host gets the EXTERNAL addresses, one
    inside the compose network the INTERNAL ones); DescribeCluster's addresses are the
    brokers' inter-broker ones, which a client outside the brokers' network cannot reach."""
    return {
        broker_id: f"{b.host}:{b.port}" for broker_id, b in metadata.brokers.items() if not b.fenced
    }


class Admin:
    """Thread-safe. Use as a context manager, or `close()`."""

    def __init__(self, brokers: Sequence[str] | str, *, timeout_ms: int = 15_000) -> None:
        self.timeout_ms = timeout_ms
        self._pool = EndpointPool(parse_brokers(brokers), service="broker")
        # Metadata (listener-aware broker addresses) for the calls that go to each broker.
        self._brokers = BrokerPool(brokers)

    def close(self) -> None:
        self._pool.close()
        self._brokers.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        response = call_with_failover(self._pool, method, request, timeout_ms=self.timeout_ms)
        wire.raise_for(response.error)
        return response

    # ------------------------------------------------------------ topics

    def create_topic(
        self,
        name: str,
        *,
        partitions: int = 1,
        replication_factor: int = 1,
        configs: Mapping[str, str] | None = None,
    ) -> TopicRecord:
        """Create a topic; raises TopicAlreadyExistsError, InvalidTopicNameError, ..."""
        response = self._call(
            "CreateTopic", create_topic_request(name, partitions, replication_factor, configs)
        )
        return wire.topic_from_pb(response.topic)

    def delete_topic(self, name: str) -> None:
        self._call("DeleteTopic", delete_topic_request(name))

    def describe_topics(self, *names: str) -> list[TopicRecord]:
        """The named topics (every topic when none is named), with their partitions' leader,
        epochs, AR, ISR and OSR. An unknown name raises UnknownTopicOrPartitionError."""
        response = self._call("DescribeTopics", pb.DescribeTopicsRequest(names=list(names)))
        return [wire.topic_from_pb(t) for t in response.topics]

    def list_topics(self) -> list[str]:
        return sorted(t.name for t in self.describe_topics())

    # ------------------------------------------------------------ offsets and cluster

    def list_offsets(
        self, topic: str, at: int | datetime = LastOffset, *, partitions: Sequence[int] = ()
    ) -> dict[int, int]:
        """partition -> offset: FirstOffset (log start), LastOffset (high watermark), or the
        first offset at or after a time (-1 where no message is that recent). Asks each
        partition's leader."""
        [topic_record] = self.describe_topics(topic)
        timestamp = offsets_timestamp(at)
        offsets: dict[int, int] = {}
        plan = plan_list_offsets(topic_record, self._endpoints([topic]), partitions)
        for endpoint, indexes in plan.items():
            with Conn(endpoint) as conn:
                results = conn.list_offsets(
                    [(topic, i, timestamp) for i in indexes], timeout_ms=self.timeout_ms
                )
            for result in results:
                if result.error is not None:
                    raise result.error
                offsets[result.partition] = result.offset
        return dict(sorted(offsets.items()))

    def _endpoints(self, topics: Sequence[str]) -> dict[int, str]:
        """`reachable_endpoints` from a Metadata answer (for `topics`: brokers are always
        answered, topics only as asked, so a small list keeps it cheap)."""
        return reachable_endpoints(self._brokers.fetch_metadata(topics, timeout_ms=self.timeout_ms))

    def cluster_status(self) -> ClusterStatus:
        """The controller quorum (leader, term, voters), brokers and topics."""
        return cluster_status_from_pb(self._call("DescribeCluster", pb.DescribeClusterRequest()))

    # ------------------------------------------------------------ consumer groups

    def list_groups(self) -> list[gp.GroupListing]:
        """Every consumer group (each broker lists those it coordinates), by id."""
        listings: list[gp.GroupListing] = []
        # A fenced broker leads nothing, so it coordinates nothing.
        for endpoint in self._endpoints([BROKERS_ONLY_TOPIC]).values():
            result = self._at(endpoint, gp.ListGroupsRequest(), timeout_ms=self.timeout_ms)
            assert isinstance(result, gp.ListGroupsResult)
            if result.error is not None:
                raise result.error
            listings += result.groups
        return merged_listings(listings)

    def describe_group(self, group_id: str) -> GroupDescription:
        """A group's state, epoch and members with their assignments, and per partition its
        committed offset, log end offset (high watermark) and lag. GroupIdNotFoundError for
        a group that does not exist."""
        described = self._group_call(group_id, gp.DescribeGroupsRequest(group_id))
        assert isinstance(described, gp.GroupDescriptionResult)
        if described.error is not None:
            raise described.error
        fetched = self._group_call(group_id, gp.OffsetFetchRequest(group_id))
        assert isinstance(fetched, gp.OffsetFetchResult)
        if fetched.error is not None and fetched.error.code != ErrorCode.GROUP_ID_NOT_FOUND:
            raise fetched.error
        ends: dict[tuple[str, int], int] = {}
        for topic in described_topics(described, fetched.offsets):
            try:
                offsets = self.list_offsets(topic, LastOffset)
            except UnknownTopicOrPartitionError:
                continue  # deleted since: its committed offsets show without an end
            ends.update({(topic, p): o for p, o in offsets.items()})
        return group_description(described, fetched.offsets, ends)

    def reset_offsets(self, group_id: str, topic: str, to: ResetTo) -> dict[int, int]:
        """Set `group_id`'s committed offsets of every partition of `topic` to "earliest"
        (the log start), "latest" (the high watermark), an offset (clamped into the log)
        or the first offset at or after a datetime. Only while the group has no members
        (NonEmptyGroupError). Returns partition -> the offset committed."""
        check_reset_to(to)
        earliest = self.list_offsets(topic, FirstOffset)
        latest = self.list_offsets(topic, LastOffset)
        at_time = self.list_offsets(topic, to) if isinstance(to, datetime) else None
        targets = reset_targets(to, earliest, latest, at_time)
        request = gp.OffsetCommitRequest(
            group_id,
            "",
            gp.ADMIN_COMMIT_EPOCH,
            tuple(gp.CommitOffset(topic, p, o) for p, o in targets.items()),
        )
        result = self._group_call(group_id, request)
        assert isinstance(result, gp.OffsetCommitResult)
        raise_commit_errors(result)
        return targets

    def delete_group(self, group_id: str) -> None:
        """Delete an empty group and its committed offsets (NonEmptyGroupError while it
        has members, GroupIdNotFoundError if there is none)."""
        result = self._group_call(group_id, gp.DeleteGroupsRequest(group_id))
        assert isinstance(result, gp.DeleteGroupResult)
        if result.error is not None:
            raise result.error

    def _at(self, endpoint: str, request: gp.Request, *, timeout_ms: int) -> gp.Result:
        """One call at one broker; a transport failure raises BROKER_NOT_AVAILABLE."""
        method, message = gp.to_pb(request)
        try:
            response = self._pool.call(endpoint, method, message, timeout_ms=timeout_ms)
        except grpc.RpcError as e:
            raise transport_error(endpoint, method, e) from e
        return gp.from_pb(request, response)

    def _group_call(self, group_id: str, request: gp.Request) -> gp.Result:
        """`request` at the group's coordinator, found and followed (`CoordinatorCall`)."""
        method, _ = gp.to_pb(request)
        plan = CoordinatorCall(
            group_id, method, self._pool.ordering, now_ms=now_ms(), timeout_ms=self.timeout_ms
        )
        # Bound: CoordinatorCall gives up after its attempts or timeout_ms.
        while (step := plan.next(now_ms=now_ms())) is not None:
            if isinstance(step, Backoff):
                time.sleep(step.wait_ms / 1000)
                continue
            find = isinstance(step, FindStep)
            asked: gp.Request = gp.FindCoordinatorRequest(group_id) if find else request
            try:
                result = self._at(step.endpoint, asked, timeout_ms=step.timeout_ms)
            except RaftmqError as e:
                plan.on_transport_failure(step.endpoint, e)
                continue
            if isinstance(result, gp.CoordinatorResult) and find:
                plan.on_coordinator(result)
            elif plan.on_answer(gp.coordinator_error(result)):
                return result
        raise plan.give_up()


def raise_commit_errors(result: gp.OffsetCommitResult) -> None:
    """An admin commit's errors: the whole request's, else the first partition's."""
    if result.error is not None:
        raise result.error
    for (topic, partition), error in sorted(result.partitions.items()):
        if error is not None:
            raise RaftmqError(error.code, f"{topic}-{partition}: {error.message}")
