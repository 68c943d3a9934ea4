"""The Kafka wire mapping of the group APIs (`raftmq.broker.kafka_groups`): every
registered version of every API takes its kio request entity, calls the coordinator with
the right domain request, and answers an entity of that version that kio can write and
read back, with raftmq's errors as Kafka's codes. The coordinator is a fake that records
what it was asked and answers what the test gives it."""

from __future__ import annotations

import asyncio
import io
import sys
from datetime import timedelta
from typing import Any

import pytest
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode as K
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i32, i32Timedelta, i64
from raftmq.broker.classic_group import (
    JoinMember,
    JoinResponse,
    LeaveResponse,
    SyncResponse,
)
from raftmq.broker.group_records import OffsetValue
from raftmq.broker.group_shard import (
    CommitResponse,
    GroupListing,
    KafkaGroupDescription,
    KafkaMemberDescription,
)
from raftmq.broker.kafka_api import KafkaApi, RequestContext
from raftmq.broker.kafka_groups import (
    GROUP_API_VERSIONS,
    JOIN_GROUP,
    LEAVE_GROUP,
    OFFSET_COMMIT,
    OFFSET_FETCH,
    _build,
    register_group_apis,
)
from raftmq.errors import ErrorCode, RaftmqError


class FakeCoordinator:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.join = JoinResponse(
            generation_id=3,
            protocol_type="consumer",
            protocol_name="range",
            leader_id="m-1",
            member_id="m-1",
            members=(JoinMember("m-1", "i-1", b"meta"),),
        )
        self.commit_error: RaftmqError | None = None

    async def classic_join(self, request: Any) -> JoinResponse:
        self.calls.append(("join", request))
        return self.join

    async def classic_sync(self, request: Any) -> SyncResponse:
        self.calls.append(("sync", request))
        return SyncResponse(protocol_type="consumer", protocol_name="range", assignment=b"a")

    async def classic_heartbeat(self, request: Any) -> RaftmqError | None:
        self.calls.append(("heartbeat", request))
        return RaftmqError(ErrorCode.REBALANCE_IN_PROGRESS, "rejoin")

    async def classic_leave(self, request: Any) -> LeaveResponse:
        self.calls.append(("leave", request))
        return LeaveResponse(results=tuple((m, None) for m in request.members))

    async def classic_commit(self, request: Any) -> CommitResponse:
        self.calls.append(("commit", request))
        if self.commit_error is not None:
            return CommitResponse(error=self.commit_error)
        parts = {(o.topic, o.partition): None for o in request.offsets}
        parts[("t", 1)] = RaftmqError(ErrorCode.NOT_PARTITION_OWNER, "zombie")  # type: ignore[assignment]
        return CommitResponse(partitions=parts)  # type: ignore[arg-type]

    async def fetch_offsets(self, group_id: str, partitions: Any) -> Any:
        self.calls.append(("fetch", (group_id, partitions)))
        found = {("t", 0): OffsetValue(42, 5, "meta", 1)}
        if partitions is None:
            return None, found
        return None, {tp: found.get(tp) for tp in partitions}

    async def kafka_describe(self, group_id: str) -> Any:
        if group_id == "missing":
            return None, None
        return None, KafkaGroupDescription(
            group_id,
            "Stable",
            "consumer",
            "range",
            (KafkaMemberDescription("m-1", "", "cli", "/127.0.0.1", b"meta", b"asg"),),
        )

    def group_listings(self) -> Any:
        return None, [GroupListing("g", "consumer", "Stable", "classic")]

    async def delete(self, group_id: str) -> RaftmqError | None:
        return RaftmqError(ErrorCode.NON_EMPTY_GROUP, "members")


def _req(api_key: int, version: int, **values: Any) -> Any:
    cls = load_request_schema(api_key, version)
    return _build(cls, **values)


def _mod(api_key: int, version: int) -> Any:
    return sys.modules[load_request_schema(api_key, version).__module__]


def request_for(api_key: int, v: int) -> Any:
    m = _mod(api_key, v)
    if api_key == JOIN_GROUP:
        return _req(
            api_key,
            v,
            group_id="g",
            session_timeout=i32Timedelta.parse(timedelta(seconds=10)),
            rebalance_timeout=i32Timedelta.parse(timedelta(seconds=30)),
            member_id="",
            group_instance_id="i-1",
            protocol_type="consumer",
            protocols=(m.JoinGroupRequestProtocol(name="range", metadata=b"meta"),),
            reason=None,
        )
    if api_key == 14:
        return _req(
            api_key,
            v,
            group_id="g",
            generation_id=i32(3),
            member_id="m-1",
            group_instance_id=None,
            protocol_type="consumer",
            protocol_name="range",
            assignments=(m.SyncGroupRequestAssignment(member_id="m-1", assignment=b"a"),),
        )
    if api_key == 12:
        return _req(api_key, v, group_id="g", generation_id=i32(3), member_id="m-1")
    if api_key == LEAVE_GROUP:
        members = ()
        if v >= 3:
            fields = {"member_id": "m-1", "group_instance_id": None, "reason": None}
            members = (_build(m.MemberIdentity, **fields),)
        return _req(api_key, v, group_id="g", member_id="m-1", members=members)
    if api_key == OFFSET_COMMIT:
        part = _build(
            m.OffsetCommitRequestPartition,
            partition_index=i32(0),
            committed_offset=i64(7),
            committed_leader_epoch=i32(-1),
            committed_metadata=None,
        )
        part1 = _build(
            m.OffsetCommitRequestPartition,
            partition_index=i32(1),
            committed_offset=i64(8),
            committed_leader_epoch=i32(-1),
            committed_metadata="x",
        )
        return _req(
            api_key,
            v,
            group_id="g",
            generation_id_or_member_epoch=i32(3),
            member_id="m-1",
            group_instance_id=None,
            retention_time=i64(-1),
            topics=(m.OffsetCommitRequestTopic(name="t", partitions=(part, part1)),),
        )
    if api_key == OFFSET_FETCH:
        if v >= 8:
            topic = m.OffsetFetchRequestTopics(name="t", partition_indexes=(i32(0), i32(1)))
            group = m.OffsetFetchRequestGroup(group_id="g", topics=(topic,))
            return _req(api_key, v, groups=(group,), require_stable=True)
        topic = m.OffsetFetchRequestTopic(name="t", partition_indexes=(i32(0), i32(1)))
        return _req(api_key, v, group_id="g", topics=(topic,), require_stable=True)
    if api_key == 15:
        return _req(api_key, v, groups=("g", "missing"), include_authorized_operations=False)
    if api_key == 16:
        return _req(api_key, v, states_filter=())
    return _req(api_key, v, groups_names=("g",))


def round_trip(api_key: int, v: int, response: Any) -> Any:
    assert type(response) is load_response_schema(api_key, v)
    buffer = io.BytesIO()
    entity_writer(type(response))(buffer, response)
    data = buffer.getvalue()
    decoded = entity_reader(type(response))(memoryview(data), 0)
    return decoded[0] if isinstance(decoded, tuple) else decoded


CASES = [(k, v) for k, (low, high) in GROUP_API_VERSIONS.items() for v in range(low, high + 1)]


@pytest.mark.parametrize(("api_key", "version"), CASES)
def test_every_version_maps_and_encodes(api_key: int, version: int) -> None:
    fake = FakeCoordinator()
    api = KafkaApi()
    register_group_apis(api, fake)  # type: ignore[arg-type]
    handler = api.lookup(api_key, version)
    assert handler is not None
    ctx = RequestContext(api_key, version, 1, "cli", "PLAINTEXT", "127.0.0.1:5000")
    response = asyncio.run(handler(ctx, request_for(api_key, version)))
    decoded = round_trip(api_key, version, response)
    if api_key == JOIN_GROUP:
        [(_, join)] = fake.calls
        assert join.require_known_member_id == (version >= 4)
        assert join.instance_id == ("i-1" if version >= 5 else "")
        assert join.rebalance_timeout_ms == (30_000 if version >= 1 else 0)
        assert join.client_host == "/127.0.0.1"
        assert decoded.generation_id == 3 and decoded.leader == "m-1"
        assert decoded.members[0].metadata == b"meta"
    elif api_key == 12:
        assert decoded.error_code == K.rebalance_in_progress
    elif api_key == OFFSET_COMMIT:
        codes = [p.error_code for p in decoded.topics[0].partitions]
        assert codes == [K.none, K.illegal_generation]  # ownership refusals make clients rejoin
    elif api_key == OFFSET_FETCH:
        topics = decoded.groups[0].topics if version >= 8 else decoded.topics
        offsets = {p.partition_index: p.committed_offset for p in topics[0].partitions}
        assert offsets == {0: 42, 1: -1}
    elif api_key == 15:
        states = [g.group_state for g in decoded.groups]
        assert states == ["Stable", "Dead"]
    elif api_key == 16:
        assert [g.group_id for g in decoded.groups] == ["g"]
    elif api_key == 42:
        assert decoded.results[0].error_code == K.non_empty_group


def test_member_id_required_carries_the_new_id_and_commit_errors_cover_every_partition() -> None:
    fake = FakeCoordinator()
    fake.join = JoinResponse(
        error=RaftmqError(ErrorCode.MEMBER_ID_REQUIRED, "again"), member_id="cli-123"
    )
    api = KafkaApi()
    register_group_apis(api, fake)  # type: ignore[arg-type]
    ctx = RequestContext(JOIN_GROUP, 5, 1, "cli", "PLAINTEXT", "127.0.0.1:5000")
    handler = api.lookup(JOIN_GROUP, 5)
    assert handler is not None
    response = asyncio.run(handler(ctx, request_for(JOIN_GROUP, 5)))
    assert response.error_code == K.member_id_required and response.member_id == "cli-123"
    fake.commit_error = RaftmqError(ErrorCode.ILLEGAL_GENERATION, "old")
    commit = api.lookup(OFFSET_COMMIT, 2)
    assert commit is not None
    ctx = RequestContext(OFFSET_COMMIT, 2, 1, "cli", "PLAINTEXT", "127.0.0.1:5000")
    response = asyncio.run(commit(ctx, request_for(OFFSET_COMMIT, 2)))
    assert [p.error_code for p in response.topics[0].partitions] == [K.illegal_generation] * 2
