"""Broker parts on real gRPC (loopback) and real RocksDB, in this process, on one event
loop: two `BrokerNode`s without a controller session, fed metadata by the test. Replica
fetch sessions that survive a partition's storage error, a topic deleted and re-created
in one metadata change, a replica stream from a stale broker incarnation, fetchers routed
by topic id, role flips, and a metadata listener error that ends the broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from raftmq import wire
from raftmq.broker.broker import BrokerNode, BrokerOptions
from raftmq.broker.controller_link import ControllerLink
from raftmq.broker.metadata_cache import MetadataCache, MetadataDelta, MetadataImage
from raftmq.broker.partition_log import PartitionLog
from raftmq.broker.server import TopicDefaults
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.local_cluster import LocalCluster, free_ports
from raftmq.message import Message
from raftmq.metadata import BrokerRegistration, PartitionRecord, TopicRecord
from raftmq.node_meta import NodeMeta
from raftmq.record_batch import encode_batch
from raftmq.topic_config import TopicConfig
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc

pytestmark = pytest.mark.cluster

TOPIC_A = bytes(range(16))
TOPIC_B = bytes(range(16, 32))
BROKER_EPOCH = 7


@contextlib.asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[dict[int, BrokerNode], list[str]]]:
    """Brokers 1 and 2, serving; no controller listens at their controller address (ISR
    proposals, none expected, would fail). Yields the nodes and the fatal reports."""
    fatal: list[str] = []
    [port_1, port_2, unused] = free_ports(3)
    nodes: dict[int, BrokerNode] = {}
    try:
        for broker_id, port in ((1, port_1), (2, port_2)):
            node = BrokerNode(
                BrokerOptions(
                    node_id=broker_id,
                    listen=("127.0.0.1", port),
                    advertise=("127.0.0.1", port),
                    controllers=[f"127.0.0.1:{unused}"],
                    data_dir=tmp_path / f"broker-{broker_id}",
                    replica_lag_time_max_ms=60_000,
                    topic_defaults=TopicDefaults(auto_create=False),
                ),
                meta=NodeMeta("", broker_id, "broker"),
                on_fatal=fatal.append,
                stopping=lambda: False,
            )
            node.session.broker_epoch = BROKER_EPOCH
            await node.start_serving()
            nodes[broker_id] = node
        yield nodes, fatal
    finally:
        for node in nodes.values():
            await node.close()


def image(
    nodes: dict[int, BrokerNode],
    *,
    leader: int,
    topic_id: bytes = TOPIC_A,
    version: int = 10,
    epoch: int = 0,
    broker_epochs: dict[int, int] | None = None,
) -> MetadataImage:
    brokers = {
        broker_id: BrokerRegistration(
            broker_id,
            "127.0.0.1",
            node.port,
            "",
            "x",
            (broker_epochs or {}).get(broker_id, BROKER_EPOCH),
            fenced=False,
        )
        for broker_id, node in nodes.items()
    }
    partition = PartitionRecord(
        ar=(1, 2), isr=(1, 2), leader=leader, leader_epoch=epoch, partition_epoch=epoch
    )
    topic = TopicRecord("t", topic_id, TopicConfig(), (partition,))
    return MetadataImage(version=version, brokers=brokers, topics={"t": topic})


def apply_snapshot(node: BrokerNode, snapshot: MetadataImage) -> None:
    node.metadata.apply(
        MetadataDelta(
            version=snapshot.version,
            controller_epoch=1,
            snapshot=True,
            brokers=tuple(snapshot.brokers.values()),
            topics=tuple(snapshot.topics.values()),
        )
    )


def produce(node: BrokerNode, count: int) -> None:
    replica = node.replicas.replica("t", 0)
    for i in range(count):
        appended = replica.append_as_leader(
            encode_batch([Message(f"v{i}")]), acks=1, current_leader_epoch=-1
        )
        node.replicas.on_appended(replica, high_watermark_advanced=appended.high_watermark_advanced)


async def eventually(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_a_fetcher_survives_a_partition_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def test() -> None:
        async with two_nodes(tmp_path) as (nodes, fatal):
            apply_snapshot(nodes[1], image(nodes, leader=1))
            produce(nodes[1], 5)
            leader_log = nodes[1].replicas.replica("t", 0).log
            failures = [2]  # the follower's first two appends fail as a broken disk would
            original = PartitionLog.append_as_follower

            def flaky(self: PartitionLog, records: bytes, *, allow_gaps: bool = False) -> int:
                if self.store is nodes[2].store and failures[0] > 0:
                    failures[0] -= 1
                    raise RaftmqError(ErrorCode.KAFKA_STORAGE_ERROR, "write failed: injected")
                return original(self, records, allow_gaps=allow_gaps)

            monkeypatch.setattr(PartitionLog, "append_as_follower", flaky)
            apply_snapshot(nodes[2], image(nodes, leader=1))
            follower_log = nodes[2].replicas.replica("t", 0).log
            await eventually(
                lambda: follower_log.log_end_offset == leader_log.log_end_offset,
                timeout_s=20,
                what="the follower to replicate past the injected storage errors",
            )
            assert failures[0] == 0
            assert fatal == []
            # It goes on replicating new data.
            produce(nodes[1], 3)
            await eventually(
                lambda: follower_log.log_end_offset == 8, timeout_s=10, what="new data"
            )

    run(test)


def test_a_topic_deleted_and_recreated_in_one_change_is_served(tmp_path: Path) -> None:
    async def test() -> None:
        async with two_nodes(tmp_path) as (nodes, _):
            node = nodes[1]
            apply_snapshot(node, image(nodes, leader=1, topic_id=TOPIC_A))
            assert node.replicas.replica("t", 0).topic_id == TOPIC_A
            # One delta: "t" (id A) deleted, "t" (id B) created.
            recreated = image(nodes, leader=1, topic_id=TOPIC_B, version=11)
            node.metadata.apply(
                MetadataDelta(
                    version=11,
                    controller_epoch=1,
                    snapshot=False,
                    topics=tuple(recreated.topics.values()),
                    deleted_topics=("t",),
                )
            )
            assert node.replicas.replica("t", 0).topic_id == TOPIC_B
            assert node.replicas.replica_by_id(TOPIC_B, 0) is node.replicas.replica("t", 0)
            with pytest.raises(RaftmqError):
                node.replicas.replica_by_id(TOPIC_A, 0)
            # The same as a snapshot.
            apply_snapshot(node, image(nodes, leader=1, topic_id=TOPIC_A, version=12))
            assert node.replicas.replica("t", 0).topic_id == TOPIC_A

    run(test)


async def _replica_fetch(
    node: BrokerNode, *, replica_id: int, broker_epoch: int, topic_id: bytes
) -> pb.ReplicaFetchResponse:
    """Open a replica stream to `node`, send one position, return the first answer."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        stub: Any = broker_pb2_grpc.BrokerServiceStub(channel)
        call = stub.ReplicaFetch()
        await call.write(
            pb.ReplicaFetchRequest(
                replica_id=replica_id,
                replica_broker_epoch=broker_epoch,
                positions=[
                    pb.ReplicaPosition(
                        topic_id=topic_id,
                        partition=0,
                        fetch_offset=0,
                        last_fetched_epoch=-1,
                        current_leader_epoch=0,
                    )
                ],
            )
        )
        response: pb.ReplicaFetchResponse = await asyncio.wait_for(call.read(), 5)
        call.cancel()
        return response


def test_a_replica_stream_from_a_stale_broker_incarnation_is_refused(tmp_path: Path) -> None:
    async def test() -> None:
        async with two_nodes(tmp_path) as (nodes, _):
            node = nodes[1]
            # Broker 2 re-registered: the metadata shows its new epoch 9.
            apply_snapshot(node, image(nodes, leader=1, broker_epochs={2: 9}))
            produce(node, 1)
            stale = await _replica_fetch(node, replica_id=2, broker_epoch=7, topic_id=TOPIC_A)
            assert stale.error.code == ErrorCode.STALE_BROKER_EPOCH
            assert "epoch 7" in stale.error.message and "epoch 9" in stale.error.message
            current = await _replica_fetch(node, replica_id=2, broker_epoch=9, topic_id=TOPIC_A)
            assert current.error.code == ErrorCode.NONE
            [result] = current.partitions
            assert result.error.code == ErrorCode.NONE and bytes(result.topic_id) == TOPIC_A
            assert result.records  # the produced batch, pushed at once

    run(test)


def test_a_replica_position_names_the_partition_by_topic_id(tmp_path: Path) -> None:
    async def test() -> None:
        async with two_nodes(tmp_path) as (nodes, _):
            node = nodes[1]
            apply_snapshot(node, image(nodes, leader=1, topic_id=TOPIC_B))
            # A follower still following the deleted topic "t" (id A) must not get the
            # new topic's data.
            old = await _replica_fetch(node, replica_id=2, broker_epoch=7, topic_id=TOPIC_A)
            [result] = old.partitions
            assert result.error.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            assert not result.records

    run(test)


def test_a_unary_fetch_as_a_replica_is_refused(tmp_path: Path) -> None:
    async def test() -> None:
        async with two_nodes(tmp_path) as (nodes, _):
            apply_snapshot(nodes[1], image(nodes, leader=1))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{nodes[1].port}") as channel:
                stub: Any = broker_pb2_grpc.BrokerServiceStub(channel)
                response = await stub.Fetch(
                    pb.FetchRequest(
                        replica_id=2,
                        partitions=[pb.PartitionFetchData(topic="t", partition=0)],
                    ),
                    timeout=5,
                )
            [result] = response.partitions
            assert result.error.code == ErrorCode.INVALID_REQUEST
            assert "ReplicaFetch" in result.error.message

    run(test)


def test_every_follower_partition_is_in_a_running_fetcher_of_its_leader(tmp_path: Path) -> None:
    async def test() -> None:
        async with two_nodes(tmp_path) as (nodes, fatal):
            node = nodes[2]
            apply_snapshot(nodes[1], image(nodes, leader=1))
            produce(nodes[1], 3)
            for round_ in range(30):
                leader = 1 if round_ % 2 == 0 else 2
                apply_snapshot(node, image(nodes, leader=leader, version=20 + round_, epoch=round_))
                await asyncio.sleep(0)
            apply_snapshot(node, image(nodes, leader=1, version=100, epoch=40))
            apply_snapshot(nodes[1], image(nodes, leader=1, version=100, epoch=40))
            fetchers = node.replicas.fetchers()
            assert list(fetchers) == [1]
            assert len(fetchers[1]) == 1
            await eventually(
                lambda: node.replicas.replica("t", 0).log.log_end_offset == 3,
                timeout_s=20,
                what="the follower to catch up after the role flips",
            )
            assert fatal == []

    run(test)


def test_an_idle_follower_stays_in_the_isr(tmp_path: Path) -> None:
    # Push replication sends an idle partition nothing: a follower that waits at the
    # leader's log end must count as caught up, or the ISR would shrink after
    # replica.lag.time.max.ms of silence.
    async def test() -> None:
        async with two_nodes(tmp_path) as (nodes, _):
            for node in nodes.values():
                node.replicas.replica_lag_time_max_ms = 300
            apply_snapshot(nodes[1], image(nodes, leader=1))
            apply_snapshot(nodes[2], image(nodes, leader=1))
            produce(nodes[1], 2)
            leader = nodes[1].replicas.replica("t", 0)
            await eventually(
                lambda: leader.log.high_watermark == 2, timeout_s=10, what="the HW to reach 2"
            )
            await asyncio.sleep(1.0)  # several lag times with nothing produced
            assert (
                leader.isr_proposal(
                    now_ms=nodes[1].replicas.now_ms(),
                    lag_time_max_ms=300,
                    eligible_replicas=frozenset({1, 2}),
                    waiting_followers=nodes[1].replicas.sessions.waiting_followers(leader.key),
                )
                is None
            )
            assert nodes[1].replicas.isr_shrinks_proposed == 0

    run(test)


def test_metadata_a_broker_cannot_apply_ends_the_broker(make_cluster: type[LocalCluster]) -> None:
    """A listener error used to kill the watch thread silently: metadata froze while the
    heartbeats went on. Now the broker is told to end (and its supervisor restarts it)."""
    cluster = make_cluster(controllers=1, brokers=0)
    cluster.start()
    cluster.wait_ready(timeout_s=60, brokers=0)

    async def test() -> None:
        fatal: list[str] = []
        link = ControllerLink(cluster.layout.controller_endpoints)

        def listener(previous: MetadataImage, image: MetadataImage, delta: MetadataDelta) -> None:
            raise RuntimeError("cannot open the partition's log")

        cache = MetadataCache(link, watcher_name="b1", listener=listener, on_fatal=fatal.append)
        cache.start()
        try:
            await eventually(lambda: bool(fatal), timeout_s=20, what="the fatal report")
        finally:
            await cache.stop()
            await link.close()
        assert "cannot open the partition's log" in fatal[0]
        assert cache.image.version == 0, "an image that was not applied is never published"

    run(test)


def test_a_delta_carries_only_the_changed_partition() -> None:
    # A metadata delta of one partition touches that partition only: the image copies the
    # topic's partition tuple once, nothing else is rebuilt.
    before = MetadataImage(
        version=1,
        topics={
            "big": TopicRecord(
                "big",
                TOPIC_A,
                TopicConfig(),
                tuple(
                    PartitionRecord(
                        ar=(1, 2), isr=(1, 2), leader=1, leader_epoch=0, partition_epoch=0
                    )
                    for _ in range(100)
                ),
            ),
            "other": TopicRecord(
                "other",
                TOPIC_B,
                TopicConfig(),
                (PartitionRecord(ar=(1,), isr=(1,), leader=1, leader_epoch=0, partition_epoch=0),),
            ),
        },
        topic_names={TOPIC_A: "big", TOPIC_B: "other"},
    )
    shrunk = PartitionRecord(ar=(1, 2), isr=(1,), leader=1, leader_epoch=0, partition_epoch=1)
    after = before.apply(
        MetadataDelta(
            version=2,
            controller_epoch=1,
            snapshot=False,
            partitions=(("big", TOPIC_A, 7, shrunk),),
        )
    )
    assert after.topics["big"].partitions[7] == shrunk
    assert after.topics["big"].partitions[6] is before.topics["big"].partitions[6]
    assert after.topics["other"] is before.topics["other"]
    assert after.brokers is before.brokers
    # A partition of a topic deleted meanwhile (another topic id) is ignored.
    stale = after.apply(
        MetadataDelta(
            version=3,
            controller_epoch=1,
            snapshot=False,
            partitions=(("big", TOPIC_B, 7, replace(shrunk, partition_epoch=2)),),
        )
    )
    assert stale.topics["big"].partitions[7] == shrunk
    assert wire.topic_from_pb(wire.topic_to_pb(after.topics["big"])) == after.topics["big"]
