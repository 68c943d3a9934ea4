"""Kafka's group APIs on the group coordinator: JoinGroup, SyncGroup, Heartbeat,
LeaveGroup (the classic protocol), OffsetCommit, OffsetFetch, DescribeGroups, ListGroups
and DeleteGroups.

An adapter, as the gRPC servicer is: a kio request entity in, the coordinator's domain
request out; its answer back as the kio response entity of the request's version, with
raftmq error codes as Kafka's. Versions differ only in which fields exist, so responses
are built from the fields of the version's own classes (`_build`).

Versions served (every client in kafka-protocol.md fits): JoinGroup 0-9, SyncGroup 0-5,
Heartbeat 0-4, LeaveGroup 0-5, OffsetCommit 2-9, OffsetFetch 1-8, DescribeGroups 0-5,
ListGroups 0-4, DeleteGroups 0-2. kio 0.6 carries all of them (kafka-go 0.2.1's JoinGroup
v1, SyncGroup v0, Heartbeat v0, LeaveGroup v0, OffsetCommit v2 and OffsetFetch v1
included), so no legacy codec is needed here.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode as KafkaErrorCode
from kio.static.primitive import i32, i32Timedelta, i64
from raftmq.broker.classic_group import (
    BeatRequest,
    JoinRequest,
    LeaveMember,
    LeaveRequest,
    SyncRequest,
)
from raftmq.broker.group_coordinator import GroupCoordinator
from raftmq.broker.group_shard import ClassicCommitRequest, CommitOffset
from raftmq.broker.kafka_api import KafkaApi, RequestContext
from raftmq.broker.kafka_errors import kafka_error
from raftmq.errors import ErrorCode, RaftmqError

__all__ = ["GROUP_API_VERSIONS", "register_group_apis"]

JOIN_GROUP, SYNC_GROUP, HEARTBEAT, LEAVE_GROUP = 11, 14, 12, 13
OFFSET_COMMIT, OFFSET_FETCH = 8, 9
DESCRIBE_GROUPS, LIST_GROUPS, DELETE_GROUPS = 15, 16, 42

# api key -> (min version, max version)
GROUP_API_VERSIONS: dict[int, tuple[int, int]] = {
    JOIN_GROUP: (0, 9),
    SYNC_GROUP: (0, 5),
    HEARTBEAT: (0, 4),
    LEAVE_GROUP: (0, 5),
    OFFSET_COMMIT: (2, 9),
    OFFSET_FETCH: (1, 8),
    DESCRIBE_GROUPS: (0, 5),
    LIST_GROUPS: (0, 4),
    DELETE_GROUPS: (0, 2),
}
# A request naming more groups, topics or partitions than this is refused.
REQUEST_ITEMS_MAX = 100_000

_log = structlog.get_logger("raftmq.broker")


def register_group_apis(api: KafkaApi, coordinator: GroupCoordinator) -> None:
    """Serve the group APIs of `coordinator` on `api` (once, at broker start)."""
    handlers = _Handlers(coordinator)
    table: dict[int, Callable[[RequestContext, Any], Any]] = {
        JOIN_GROUP: handlers.join_group,
        SYNC_GROUP: handlers.sync_group,
        HEARTBEAT: handlers.heartbeat,
        LEAVE_GROUP: handlers.leave_group,
        OFFSET_COMMIT: handlers.offset_commit,
        OFFSET_FETCH: handlers.offset_fetch,
        DESCRIBE_GROUPS: handlers.describe_groups,
        LIST_GROUPS: handlers.list_groups,
        DELETE_GROUPS: handlers.delete_groups,
    }
    for key, (low, high) in GROUP_API_VERSIONS.items():
        api.register(key, low, high, table[key])


# ------------------------------------------------------------------ building responses


def _code(error: RaftmqError | None) -> KafkaErrorCode:
    return KafkaErrorCode.none if error is None else kafka_error(error.code)


def _classes(ctx: RequestContext) -> Any:
    """The module of the response classes of this request's API and version."""
    return sys.modules[load_response_schema(ctx.api_key, ctx.api_version).__module__]


def _build(cls: Any, **values: Any) -> Any:
    """An entity of `cls` from the values its version has (the others are dropped);
    throttle time is always 0."""
    names = {f.name for f in dataclasses.fields(cls)}
    if "throttle_time" in names:
        values.setdefault("throttle_time", i32Timedelta.parse(timedelta(0)))
    return cls(**{k: v for k, v in values.items() if k in names})


def _ms(value: Any) -> int:
    if isinstance(value, timedelta):
        return int(value.total_seconds() * 1000)
    return int(value)


def _host(ctx: RequestContext) -> str:
    # Kafka shows a member's host as "/address".
    return "/" + ctx.peer.rsplit(":", 1)[0]


def _too_many(count: int) -> RaftmqError | None:
    if count > REQUEST_ITEMS_MAX:
        return RaftmqError(ErrorCode.INVALID_REQUEST, f"more than {REQUEST_ITEMS_MAX} items")
    return None


def _nullable(text: str, version: int, nullable_from: int) -> str | None:
    return text if text or version < nullable_from else None


class _Handlers:
    def __init__(self, coordinator: GroupCoordinator) -> None:
        self.coordinator = coordinator

    # ------------------------------------------------------------ classic protocol

    async def join_group(self, ctx: RequestContext, request: Any) -> Any:
        v = ctx.api_version
        m = _classes(ctx)
        protocols = tuple((str(p.name), bytes(p.metadata)) for p in request.protocols)
        error = _too_many(len(protocols))
        given_member_id = request.member_id
        if error is None:
            session_ms = _ms(request.session_timeout)
            response = await self.coordinator.classic_join(
                JoinRequest(
                    group_id=request.group_id,
                    member_id=request.member_id,
                    protocol_type=request.protocol_type,
                    protocols=protocols,
                    session_timeout_ms=session_ms,
                    # v0 has none: the session timeout (the shard substitutes it for 0).
                    rebalance_timeout_ms=_ms(request.rebalance_timeout) if v >= 1 else 0,
                    instance_id=(request.group_instance_id or "") if v >= 5 else "",
                    client_id=ctx.client_id or "",
                    client_host=_host(ctx),
                    require_known_member_id=v >= 4,
                )
            )
            error = response.error
            if error is None:
                return self._joined(m, v, response)
            if error.code == ErrorCode.MEMBER_ID_REQUIRED:
                given_member_id = response.member_id
        _log.debug("kafka_group.join_refused", group=request.group_id, error=str(error))
        return _build(
            m.JoinGroupResponse,
            error_code=_code(error),
            generation_id=i32(-1),
            protocol_type=None,
            protocol_name=_nullable("", v, 7),
            leader="",
            skip_assignment=False,
            member_id=given_member_id,
            members=(),
        )

    def _joined(self, m: Any, v: int, response: Any) -> Any:
        return _build(
            m.JoinGroupResponse,
            error_code=KafkaErrorCode.none,
            generation_id=i32(response.generation_id),
            protocol_type=response.protocol_type or None,
            protocol_name=_nullable(response.protocol_name, v, 7),
            leader=response.leader_id,
            skip_assignment=response.skip_assignment,
            member_id=response.member_id,
            members=tuple(
                _build(
                    m.JoinGroupResponseMember,
                    member_id=j.member_id,
                    group_instance_id=j.instance_id or None,
                    metadata=j.metadata,
                )
                for j in response.members
            ),
        )

    async def sync_group(self, ctx: RequestContext, request: Any) -> Any:
        v = ctx.api_version
        m = _classes(ctx)
        assignments = tuple((str(a.member_id), bytes(a.assignment)) for a in request.assignments)
        error = _too_many(len(assignments))
        response = None
        if error is None:
            response = await self.coordinator.classic_sync(
                SyncRequest(
                    group_id=request.group_id,
                    member_id=request.member_id,
                    generation_id=int(request.generation_id),
                    instance_id=(request.group_instance_id or "") if v >= 3 else "",
                    protocol_type=(request.protocol_type or "") if v >= 5 else "",
                    protocol_name=(request.protocol_name or "") if v >= 5 else "",
                    assignments=assignments,
                )
            )
            error = response.error
        if error is not None or response is None:
            return _build(
                m.SyncGroupResponse,
                error_code=_code(error),
                protocol_type=None,
                protocol_name=None,
                assignment=b"",
            )
        return _build(
            m.SyncGroupResponse,
            error_code=KafkaErrorCode.none,
            protocol_type=response.protocol_type or None,
            protocol_name=response.protocol_name or None,
            assignment=response.assignment,
        )

    async def heartbeat(self, ctx: RequestContext, request: Any) -> Any:
        m = _classes(ctx)
        error = await self.coordinator.classic_heartbeat(
            BeatRequest(
                group_id=request.group_id,
                member_id=request.member_id,
                generation_id=int(request.generation_id),
                instance_id=(request.group_instance_id or "") if ctx.api_version >= 3 else "",
            )
        )
        return _build(m.HeartbeatResponse, error_code=_code(error))

    async def leave_group(self, ctx: RequestContext, request: Any) -> Any:
        v = ctx.api_version
        m = _classes(ctx)
        if v < 3:
            members: tuple[LeaveMember, ...] = (LeaveMember(request.member_id),)
        else:
            members = tuple(
                LeaveMember(x.member_id, x.group_instance_id or "") for x in request.members
            )
        error = _too_many(len(members))
        if error is not None:
            return _build(m.LeaveGroupResponse, error_code=_code(error), members=())
        response = await self.coordinator.classic_leave(LeaveRequest(request.group_id, members))
        if response.error is not None:
            return _build(m.LeaveGroupResponse, error_code=_code(response.error), members=())
        if v < 3:
            [(_, member_error)] = response.results
            return _build(m.LeaveGroupResponse, error_code=_code(member_error))
        return _build(
            m.LeaveGroupResponse,
            error_code=KafkaErrorCode.none,
            members=tuple(
                _build(
                    m.MemberResponse,
                    member_id=who.member_id,
                    group_instance_id=who.instance_id or None,
                    error_code=_code(member_error),
                )
                for who, member_error in response.results
            ),
        )

    # ------------------------------------------------------------ offsets

    async def offset_commit(self, ctx: RequestContext, request: Any) -> Any:
        v = ctx.api_version
        m = _classes(ctx)
        offsets = tuple(
            CommitOffset(
                str(t.name),
                int(p.partition_index),
                int(p.committed_offset),
                int(p.committed_leader_epoch) if v >= 6 else -1,
                p.committed_metadata or "",
            )
            for t in request.topics
            for p in t.partitions
        )
        error = _too_many(len(offsets))
        results: dict[tuple[str, int], RaftmqError | None] = {}
        if error is None:
            response = await self.coordinator.classic_commit(
                ClassicCommitRequest(
                    group_id=request.group_id,
                    member_id=request.member_id,
                    generation_id=int(request.generation_id_or_member_epoch),
                    offsets=offsets,
                    instance_id=(request.group_instance_id or "") if v >= 7 else "",
                )
            )
            error = response.error
            results = response.partitions
        return _build(
            m.OffsetCommitResponse,
            topics=tuple(
                _build(
                    m.OffsetCommitResponseTopic,
                    name=t.name,
                    partitions=tuple(
                        _build(
                            m.OffsetCommitResponsePartition,
                            partition_index=p.partition_index,
                            error_code=_code(
                                error
                                if error is not None
                                else results.get((str(t.name), int(p.partition_index)))
                            ),
                        )
                        for p in t.partitions
                    ),
                )
                for t in request.topics
            ),
        )

    async def offset_fetch(self, ctx: RequestContext, request: Any) -> Any:
        v = ctx.api_version
        m = _classes(ctx)
        if v >= 8:
            groups = [(g.group_id, g.topics) for g in request.groups]
            if _too_many(len(groups)) is not None:
                groups = []
            answers = []
            for group_id, topics in groups:
                error, body = await self._fetch_group(group_id, topics, m, v)
                answers.append(
                    _build(
                        m.OffsetFetchResponseGroup,
                        group_id=group_id,
                        topics=body,
                        error_code=_code(error),
                    )
                )
            return _build(m.OffsetFetchResponse, groups=tuple(answers))
        error, body = await self._fetch_group(request.group_id, request.topics, m, v)
        return _build(m.OffsetFetchResponse, topics=body, error_code=_code(error))

    async def _fetch_group(
        self, group_id: str, topics: Any, m: Any, v: int
    ) -> tuple[RaftmqError | None, tuple[Any, ...]]:
        """One group's committed offsets: those asked for, or all (topics null, v2+).
        Every commit is answered only once replicated, and a read waits for the last
        write before it, so what this returns is always stable (v7's require_stable
        never needs UNSTABLE_OFFSET_COMMIT: there are no pending transactional
        commits)."""
        topic_type = m.OffsetFetchResponseTopics if v >= 8 else m.OffsetFetchResponseTopic
        partition_type = (
            m.OffsetFetchResponsePartitions if v >= 8 else m.OffsetFetchResponsePartition
        )
        wanted = (
            None
            if topics is None
            else [(str(t.name), int(p)) for t in topics for p in t.partition_indexes]
        )
        if wanted is not None and _too_many(len(wanted)) is not None:
            return _too_many(len(wanted)), ()
        error, offsets = await self.coordinator.fetch_offsets(group_id, wanted)
        by_topic: dict[str, list[Any]] = {}
        for (topic, index), value in offsets.items():
            partition_error = error if v < 2 else None
            by_topic.setdefault(topic, []).append(
                _build(
                    partition_type,
                    partition_index=i32(index),
                    committed_offset=i64(value.offset if value is not None else -1),
                    committed_leader_epoch=i32(value.leader_epoch if value is not None else -1),
                    metadata=value.metadata if value is not None else "",
                    error_code=_code(partition_error),
                )
            )
        if error is not None and v < 2 and wanted is not None:
            # v0-v1 have no group error: every partition carries it.
            by_topic = {}
            for topic, index in wanted:
                by_topic.setdefault(topic, []).append(
                    _build(
                        partition_type,
                        partition_index=i32(index),
                        committed_offset=i64(-1),
                        committed_leader_epoch=i32(-1),
                        metadata="",
                        error_code=_code(error),
                    )
                )
        body = tuple(
            _build(topic_type, name=topic, partitions=tuple(parts))
            for topic, parts in by_topic.items()
        )
        return error, body

    # ------------------------------------------------------------ admin

    async def describe_groups(self, ctx: RequestContext, request: Any) -> Any:
        m = _classes(ctx)
        group_ids = list(request.groups)
        if _too_many(len(group_ids)) is not None:
            group_ids = []
        described = []
        for group_id in group_ids:
            error, d = await self.coordinator.kafka_describe(group_id)
            if error is not None or d is None:
                # No such group: Kafka answers it as Dead, with no error (v0-v5).
                described.append(
                    _build(
                        m.DescribedGroup,
                        error_code=_code(error),
                        group_id=group_id,
                        group_state="Dead",
                        protocol_type="",
                        protocol_data="",
                        members=(),
                        authorized_operations=i32(-(2**31)),
                    )
                )
                continue
            described.append(
                _build(
                    m.DescribedGroup,
                    error_code=KafkaErrorCode.none,
                    group_id=group_id,
                    group_state=d.state,
                    protocol_type=d.protocol_type,
                    protocol_data=d.protocol_name,
                    members=tuple(
                        _build(
                            m.DescribedGroupMember,
                            member_id=x.member_id,
                            group_instance_id=x.instance_id or None,
                            client_id=x.client_id,
                            client_host=x.client_host,
                            member_metadata=x.metadata,
                            member_assignment=x.assignment,
                        )
                        for x in d.members
                    ),
                    # Kafka's "not requested" value (no ACLs here).
                    authorized_operations=i32(-(2**31)),
                )
            )
        return _build(m.DescribeGroupsResponse, groups=tuple(described))

    async def list_groups(self, ctx: RequestContext, request: Any) -> Any:
        m = _classes(ctx)
        error, listings = self.coordinator.group_listings()
        states = {s.lower() for s in getattr(request, "states_filter", ())}
        return _build(
            m.ListGroupsResponse,
            error_code=_code(error),
            groups=tuple(
                _build(
                    m.ListedGroup,
                    group_id=g.group_id,
                    protocol_type=g.protocol_type,
                    group_state=g.state,
                )
                for g in listings
                if not states or g.state.lower() in states
            ),
        )

    async def delete_groups(self, ctx: RequestContext, request: Any) -> Any:
        m = _classes(ctx)
        names = list(request.groups_names)
        if _too_many(len(names)) is not None:
            names = []
        results = []
        for group_id in names:
            error = await self.coordinator.delete(group_id)
            results.append(
                _build(m.DeletableGroupResult, group_id=group_id, error_code=_code(error))
            )
        return _build(m.DeleteGroupsResponse, results=tuple(results))
