"""The group coordinator on real brokers, through its gRPC API: the cluster creates its
compacted offsets topic, a non-coordinator says so, and a coordinator killed with kill -9
is replaced by one that replayed the partition: same members, same assignments, same
committed offsets, and the members go on at their epochs."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from raftmq import Admin
from raftmq.broker.group_coordinator import OFFSETS_TOPIC, partition_for
from raftmq.errors import ErrorCode
from raftmq.local_cluster import LocalCluster, wait_until
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc

pytestmark = pytest.mark.cluster

RETRIABLE = {
    ErrorCode.COORDINATOR_NOT_AVAILABLE,
    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
    ErrorCode.NOT_COORDINATOR,
}


def stub(endpoint: str) -> Any:
    return broker_pb2_grpc.BrokerServiceStub(grpc.insecure_channel(endpoint))


def coordinator(bootstrap: list[str], group: str, *, not_node: int = -1) -> tuple[int, str]:
    """(node id, endpoint) of `group`'s coordinator, once one answers (not `not_node`)."""
    found: list[tuple[int, str]] = []

    def ready() -> bool:
        for endpoint in bootstrap:
            try:
                [c] = (
                    stub(endpoint)
                    .FindCoordinator(pb.FindCoordinatorRequest(group_ids=[group]), timeout=3)
                    .coordinators
                )
            except grpc.RpcError:
                continue
            if c.error.code == ErrorCode.NONE and c.node_id != not_node:
                found.append((c.node_id, f"{c.endpoint.host}:{c.endpoint.port}"))
                return True
        return False

    wait_until(ready, timeout_s=30, what=f"a coordinator for {group}")
    return found[0]


def call(endpoint: str, method: str, request: Any) -> Any:
    """A group call, retried while the coordinator loads or moves (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        response = getattr(stub(endpoint), method)(request, timeout=5)
        error = response.groups[0].error if method == "DescribeGroups" else response.error
        code = error.code
        if code not in RETRIABLE or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def beat(
    endpoint: str, member: str, epoch: int, owned: list[int]
) -> pb.ConsumerGroupHeartbeatResponse:
    response: pb.ConsumerGroupHeartbeatResponse = call(
        endpoint,
        "ConsumerGroupHeartbeat",
        pb.ConsumerGroupHeartbeatRequest(
            group_id="orders",
            member_id=member,
            member_epoch=epoch,
            subscribed_topics=["t"],
            session_timeout_ms=30_000,
            owned=[pb.TopicPartitions(topic="t", partitions=owned)],
        ),
    )
    return response


def partitions(response: Any) -> list[int]:
    return sorted(p for tp in response.assignment for p in tp.partitions)


def test_the_offsets_topic_is_created_compacted_and_replicated(
    make_cluster: type[LocalCluster],
) -> None:
    cluster = make_cluster(controllers=1, brokers=3, broker_args=["--offsets-topic-partitions=4"])
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    bootstrap = cluster.layout.broker_endpoints
    node, endpoint = coordinator(bootstrap, "g")
    with Admin(bootstrap) as admin:
        [topic] = admin.describe_topics(OFFSETS_TOPIC)
    assert len(topic.partitions) == 4
    assert all(len(p.ar) == 3 for p in topic.partitions)
    assert topic.config.cleanup_policy == "compact"
    assert topic.partitions[partition_for("g", 4)].leader == node
    # Another broker is not the coordinator, and says so.
    other = next(e for e in bootstrap if e != endpoint)
    response = stub(other).OffsetFetch(pb.OffsetFetchRequest(group_id="g"), timeout=5)
    assert response.error.code == ErrorCode.NOT_COORDINATOR
    # Clients can neither create nor delete it.
    with Admin(bootstrap) as admin, pytest.raises(Exception, match="POLICY_VIOLATION"):
        admin.delete_topic(OFFSETS_TOPIC)


def test_a_killed_coordinator_is_replaced_with_the_same_state(
    make_cluster: type[LocalCluster],
) -> None:
    cluster = make_cluster(controllers=3, brokers=3, broker_args=["--offsets-topic-partitions=3"])
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    bootstrap = cluster.layout.broker_endpoints
    with Admin(bootstrap) as admin:
        admin.create_topic("t", partitions=4, replication_factor=3)
    node, endpoint = coordinator(bootstrap, "orders")
    a = beat(endpoint, "a", 0, [])
    b = beat(endpoint, "b", 0, [])
    # Reconcile until stable: each releases what it is told to and takes what it gets.
    epochs, owned = (
        {"a": a.member_epoch, "b": b.member_epoch},
        {"a": partitions(a), "b": partitions(b)},
    )
    for _ in range(6):
        for m in ("a", "b"):
            r = beat(endpoint, m, epochs[m], owned[m])
            epochs[m], owned[m] = r.member_epoch, partitions(r)
    assert sorted(owned["a"] + owned["b"]) == [0, 1, 2, 3] and len(owned["a"]) == 2
    commit = call(
        endpoint,
        "OffsetCommit",
        pb.OffsetCommitRequest(
            group_id="orders",
            member_id="a",
            member_epoch=epochs["a"],
            partitions=[
                pb.OffsetCommitPartition(topic="t", partition=p, offset=100 + p) for p in owned["a"]
            ],
        ),
    )
    assert [p.error.code for p in commit.partitions] == [ErrorCode.NONE] * 2
    before = call(
        endpoint, "DescribeGroups", pb.DescribeGroupsRequest(group_ids=["orders"])
    ).groups[0]

    cluster.brokers[node].kill()
    new_node, new_endpoint = coordinator(bootstrap, "orders", not_node=node)
    assert new_node != node
    fetched = call(new_endpoint, "OffsetFetch", pb.OffsetFetchRequest(group_id="orders"))
    assert fetched.error.code == ErrorCode.NONE
    assert {(p.partition, p.offset) for p in fetched.partitions} == {
        (p, 100 + p) for p in owned["a"]
    }
    after = call(
        new_endpoint, "DescribeGroups", pb.DescribeGroupsRequest(group_ids=["orders"])
    ).groups[0]
    assert after.group_epoch == before.group_epoch
    assert {(m.member_id, m.member_epoch) for m in after.members} == {
        (m.member_id, m.member_epoch) for m in before.members
    }
    # The members go on at their epochs with what they own: no rebalance.
    for m in ("a", "b"):
        r = beat(new_endpoint, m, epochs[m], owned[m])
        assert r.error.code == ErrorCode.NONE, r.error
        assert r.member_epoch == epochs[m] and partitions(r) == owned[m]
    # And a zombie's commit of a partition it does not own is still refused there.
    zombie = call(
        new_endpoint,
        "OffsetCommit",
        pb.OffsetCommitRequest(
            group_id="orders",
            member_id="a",
            member_epoch=epochs["a"],
            partitions=[pb.OffsetCommitPartition(topic="t", partition=owned["b"][0], offset=1)],
        ),
    )
    assert zombie.partitions[0].error.code == ErrorCode.NOT_PARTITION_OWNER
