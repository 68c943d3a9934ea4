"""The client's side of the consumer-group part of the raftmq.v1 contract: typed requests
and results, and their conversions to and from protobuf. Pure; shared by both Reader
shells (through `GroupCore`'s calls), `Admin` and `AsyncAdmin`, so each conversion exists
once.

A core asks for a call with one of the request types below (`GroupCall.request`); a shell
turns it into protobuf with `to_pb`, makes the RPC, and turns the answer back with
`from_pb`, whose result type is fixed by the request type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raftmq import wire
from raftmq.client import protocol
from raftmq.client.protocol import ClusterMetadata, FetchResult, OffsetResult
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import broker_pb2 as pb

TopicPartition = tuple[str, int]

# OffsetCommit's member epoch for an admin commit (an offset reset of an empty group).
ADMIN_COMMIT_EPOCH = -1
# ConsumerGroupHeartbeat's member epochs with a meaning of their own.
JOIN_EPOCH = 0
LEAVE_EPOCH = -1
STATIC_LEAVE_EPOCH = -2
NO_OFFSET = -1  # OffsetFetch: nothing committed


def sorted_partitions(partitions: Iterable[TopicPartition]) -> tuple[TopicPartition, ...]:
    return tuple(sorted(set(partitions)))


def partitions_to_pb(partitions: Iterable[TopicPartition]) -> list[pb.TopicPartitions]:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(set(partitions)):
        by_topic.setdefault(topic, []).append(partition)
    return [pb.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]


def partitions_from_pb(items: Iterable[Any]) -> frozenset[TopicPartition]:
    return frozenset((tp.topic, p) for tp in items for p in tp.partitions)


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class FindCoordinatorRequest:
    group_id: str


@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    subscribed_topics: tuple[str, ...]
    subscribed_pattern: str
    assignor: str
    owned: tuple[TopicPartition, ...]
    client_id: str


@dataclass(frozen=True, slots=True)
class CommitOffset:
    topic: str
    partition: int
    offset: int  # the next offset to read
    leader_epoch: int = -1
    metadata: str = ""


@dataclass(frozen=True, slots=True)
class OffsetCommitRequest:
    group_id: str
    member_id: str  # "" with ADMIN_COMMIT_EPOCH: an admin commit
    member_epoch: int
    offsets: tuple[CommitOffset, ...]


@dataclass(frozen=True, slots=True)
class OffsetFetchRequest:
    group_id: str
    partitions: tuple[TopicPartition, ...] = ()  # empty: every committed partition


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListOffsetsRequest:
    partitions: tuple[tuple[str, int, int], ...]  # (topic, partition, timestamp) each


@dataclass(frozen=True, slots=True)
class FetchRequest:
    partitions: tuple[tuple[str, int, int, int], ...]  # (topic, partition, offset, epoch)
    max_wait_ms: int
    min_bytes: int
    max_bytes: int
    partition_max_bytes: int


@dataclass(frozen=True, slots=True)
class ListGroupsRequest:
    pass


@dataclass(frozen=True, slots=True)
class DescribeGroupsRequest:
    group_id: str


@dataclass(frozen=True, slots=True)
class DeleteGroupsRequest:
    group_id: str


Request = (
    FindCoordinatorRequest
    | HeartbeatRequest
    | OffsetCommitRequest
    | OffsetFetchRequest
    | MetadataRequest
    | ListOffsetsRequest
    | FetchRequest
    | ListGroupsRequest
    | DescribeGroupsRequest
    | DeleteGroupsRequest
)


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class CoordinatorResult:
    group_id: str
    error: RaftmqError | None
    node_id: int
    endpoint: str | None


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    error: RaftmqError | None
    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    assignment: frozenset[TopicPartition]


@dataclass(frozen=True, slots=True)
class OffsetCommitResult:
    error: RaftmqError | None  # for the whole request
    partitions: dict[TopicPartition, RaftmqError | None]


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    offset: int  # NO_OFFSET: nothing committed
    leader_epoch: int
    metadata: str
    commit_timestamp_ms: int


@dataclass(frozen=True, slots=True)
class OffsetFetchResult:
    error: RaftmqError | None
    offsets: dict[TopicPartition, CommittedOffset]


@dataclass(frozen=True, slots=True)
class GroupListing:
    group_id: str
    state: str  # empty, assigning, reconciling, stable
    coordinator_id: int


@dataclass(frozen=True, slots=True)
class ListGroupsResult:
    error: RaftmqError | None
    groups: tuple[GroupListing, ...]


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    instance_id: str
    client_id: str
    member_epoch: int
    assignment: tuple[TopicPartition, ...]  # what it may consume now
    revoking: tuple[TopicPartition, ...]  # what it must release
    target: tuple[TopicPartition, ...]  # where the rebalance takes it
    subscribed_topics: tuple[str, ...]
    subscribed_pattern: str


@dataclass(frozen=True, slots=True)
class GroupDescriptionResult:
    group_id: str
    error: RaftmqError | None
    state: str
    group_epoch: int
    assignment_epoch: int
    assignor: str
    coordinator_id: int
    members: tuple[MemberDescription, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class DeleteGroupResult:
    group_id: str
    error: RaftmqError | None


Result = (
    CoordinatorResult
    | HeartbeatResult
    | OffsetCommitResult
    | OffsetFetchResult
    | ClusterMetadata
    | list[OffsetResult]
    | list[FetchResult]
    | ListGroupsResult
    | GroupDescriptionResult
    | DeleteGroupResult
)


# ---------------------------------------------------------------- conversions


def to_pb(request: Request) -> tuple[str, Any]:
    """(RPC method name, protobuf request) for a request."""
    if isinstance(request, FindCoordinatorRequest):
        return "FindCoordinator", pb.FindCoordinatorRequest(group_ids=[request.group_id])
    if isinstance(request, HeartbeatRequest):
        return "ConsumerGroupHeartbeat", pb.ConsumerGroupHeartbeatRequest(
            group_id=request.group_id,
            member_id=request.member_id,
            member_epoch=request.member_epoch,
            instance_id=request.instance_id,
            rebalance_timeout_ms=request.rebalance_timeout_ms,
            session_timeout_ms=request.session_timeout_ms,
            subscribed_topics=list(request.subscribed_topics),
            subscribed_pattern=request.subscribed_pattern,
            assignor=request.assignor,
            owned=partitions_to_pb(request.owned),
            client_id=request.client_id,
        )
    if isinstance(request, OffsetCommitRequest):
        return "OffsetCommit", pb.OffsetCommitRequest(
            group_id=request.group_id,
            member_id=request.member_id,
            member_epoch=request.member_epoch,
            partitions=[
                pb.OffsetCommitPartition(
                    topic=o.topic,
                    partition=o.partition,
                    offset=o.offset,
                    leader_epoch=o.leader_epoch,
                    metadata=o.metadata,
                )
                for o in request.offsets
            ],
        )
    if isinstance(request, OffsetFetchRequest):
        return "OffsetFetch", pb.OffsetFetchRequest(
            group_id=request.group_id, partitions=partitions_to_pb(request.partitions)
        )
    if isinstance(request, MetadataRequest):
        return "Metadata", pb.MetadataRequest(topics=list(request.topics))
    if isinstance(request, ListOffsetsRequest):
        return "ListOffsets", protocol.list_offsets_request(request.partitions)
    if isinstance(request, FetchRequest):
        return "Fetch", protocol.fetch_request(
            request.partitions,
            max_wait_ms=request.max_wait_ms,
            min_bytes=request.min_bytes,
            max_bytes=request.max_bytes,
            partition_max_bytes=request.partition_max_bytes,
        )
    if isinstance(request, ListGroupsRequest):
        return "ListGroups", pb.ListGroupsRequest()
    if isinstance(request, DescribeGroupsRequest):
        return "DescribeGroups", pb.DescribeGroupsRequest(group_ids=[request.group_id])
    assert isinstance(request, DeleteGroupsRequest), request
    return "DeleteGroups", pb.DeleteGroupsRequest(group_ids=[request.group_id])


def endpoint_text(endpoint: Any) -> str | None:
    return f"{endpoint.host}:{endpoint.port}" if endpoint.host else None


def from_pb(request: Request, response: Any) -> Result:
    """The typed answer to `request` (the protobuf `response` of its RPC)."""
    if isinstance(request, FindCoordinatorRequest):
        for c in response.coordinators:
            if c.group_id == request.group_id:
                return CoordinatorResult(
                    c.group_id, wire.error_from_pb(c.error), c.node_id, endpoint_text(c.endpoint)
                )
        return CoordinatorResult(
            request.group_id,
            RaftmqError(
                ErrorCode.UNKNOWN_SERVER_ERROR,
                f"FindCoordinator answered no coordinator for group {request.group_id!r}",
            ),
            -1,
            None,
        )
    if isinstance(request, HeartbeatRequest):
        return HeartbeatResult(
            wire.error_from_pb(response.error),
            response.member_id,
            response.member_epoch,
            response.heartbeat_interval_ms,
            partitions_from_pb(response.assignment),
        )
    if isinstance(request, OffsetCommitRequest):
        return OffsetCommitResult(
            wire.error_from_pb(response.error),
            {(r.topic, r.partition): wire.error_from_pb(r.error) for r in response.partitions},
        )
    if isinstance(request, OffsetFetchRequest):
        return OffsetFetchResult(
            wire.error_from_pb(response.error),
            {
                (p.topic, p.partition): CommittedOffset(
                    p.offset, p.leader_epoch, p.metadata, p.commit_timestamp_ms
                )
                for p in response.partitions
            },
        )
    if isinstance(request, MetadataRequest):
        return protocol.cluster_metadata(response)
    if isinstance(request, ListOffsetsRequest):
        return protocol.offset_results(response)
    if isinstance(request, FetchRequest):
        return protocol.fetch_results(response)
    if isinstance(request, ListGroupsRequest):
        return ListGroupsResult(
            wire.error_from_pb(response.error),
            tuple(GroupListing(g.group_id, g.state, g.coordinator_id) for g in response.groups),
        )
    if isinstance(request, DescribeGroupsRequest):
        for g in response.groups:
            if g.group_id == request.group_id:
                return group_description_from_pb(g)
        return GroupDescriptionResult(
            request.group_id,
            RaftmqError(ErrorCode.GROUP_ID_NOT_FOUND, f"no group {request.group_id!r}"),
            "",
            -1,
            -1,
            "",
            -1,
        )
    assert isinstance(request, DeleteGroupsRequest), request
    for r in response.results:
        if r.group_id == request.group_id:
            return DeleteGroupResult(r.group_id, wire.error_from_pb(r.error))
    return DeleteGroupResult(
        request.group_id,
        RaftmqError(
            ErrorCode.UNKNOWN_SERVER_ERROR,
            f"DeleteGroups answered nothing for group {request.group_id!r}",
        ),
    )


def _sorted_tps(items: Sequence[Any]) -> tuple[TopicPartition, ...]:
    return sorted_partitions(partitions_from_pb(items))


def group_description_from_pb(g: Any) -> GroupDescriptionResult:
    return GroupDescriptionResult(
        group_id=g.group_id,
        error=wire.error_from_pb(g.error),
        state=g.state,
        group_epoch=g.group_epoch,
        assignment_epoch=g.assignment_epoch,
        assignor=g.assignor,
        coordinator_id=g.coordinator_id,
        members=tuple(
            MemberDescription(
                member_id=m.member_id,
                instance_id=m.instance_id,
                client_id=m.client_id,
                member_epoch=m.member_epoch,
                assignment=_sorted_tps(m.assignment),
                revoking=_sorted_tps(m.revoking),
                target=_sorted_tps(m.target),
                subscribed_topics=tuple(m.subscribed_topics),
                subscribed_pattern=m.subscribed_pattern,
            )
            for m in g.members
        ),
    )


def coordinator_error(result: Result) -> RaftmqError | None:
    """The error that routes a coordinator call (NOT_COORDINATOR, ...): the whole answer's
    for requests that have one, the group's own for DescribeGroups / DeleteGroups."""
    if isinstance(
        result,
        HeartbeatResult
        | OffsetCommitResult
        | OffsetFetchResult
        | GroupDescriptionResult
        | DeleteGroupResult
        | CoordinatorResult,
    ):
        return result.error
    return None
