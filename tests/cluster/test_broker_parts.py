"""Broker parts on real gRPC (loopback) and real RocksDB, in this process: replica
fetchers that survive a partition's storage error, a topic deleted and re-created in one
metadata change, a fetch from a stale broker incarnation, fetchers owned by one thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from raftmq import ports
from raftmq.broker.log_store import LogStore
from raftmq.broker.metadata_cache import MetadataCache, MetadataImage
from raftmq.broker.partition import Partition
from raftmq.broker.producer_ids import ProducerIdManager
from raftmq.broker.replica_manager import ReplicaManager
from raftmq.broker.server import BrokerServicer, TopicDefaults
from raftmq.client.controller_client import EndpointPool
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.local_cluster import LocalCluster, free_ports, wait_until
from raftmq.message import Message
from raftmq.metadata import BrokerRegistration, PartitionRecord, TopicRecord
from raftmq.record_batch import encode_batch
from raftmq.topic_config import TopicConfig
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc

pytestmark = pytest.mark.cluster

TOPIC_A = bytes(range(16))
TOPIC_B = bytes(range(16, 32))


@dataclass
class Node:
    """One broker's data plane without its controller session: the test feeds it images."""

    broker_id: int
    port: int
    store: LogStore
    replicas: ReplicaManager
    metadata: MetadataCache
    server: Any
    fatal: list[str] = field(default_factory=list)

    def apply(self, image: MetadataImage) -> None:
        self.metadata.image = image
        self.replicas.apply_image(image)

    def close(self) -> None:
        self.server.stop(None)
        self.replicas.stop()
        self.store.close()
        self.metadata.pool.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[int, Node]]:
    made: dict[int, Node] = {}
    [port_1, port_2, unused] = free_ports(3)
    for broker_id, port in ((1, port_1), (2, port_2)):
        fatal: list[str] = []
        # No controller listens there: ISR proposals (none are expected) would just fail.
        pool = EndpointPool([f"127.0.0.1:{unused}"], service="controller")
        store = LogStore(tmp_path / f"broker-{broker_id}")
        replicas = ReplicaManager(
            broker_id=broker_id,
            store=store,
            controllers=pool,
            broker_epoch=lambda: 7,
            replica_lag_time_max_ms=60_000,
            on_fatal=fatal.append,
        )
        metadata = MetadataCache(
            pool, watcher_name=f"b{broker_id}", listener=replicas.apply_image, on_fatal=fatal.append
        )
        server = grpc.server(futures.ThreadPoolExecutor(8), options=ports.GRPC_SERVER_OPTIONS)
        broker_pb2_grpc.add_BrokerServiceServicer_to_server(
            BrokerServicer(
                broker_id=broker_id,
                replicas=replicas,
                metadata=metadata,
                controllers=pool,
                wait_durable=store.wait_durable,
                producer_ids=ProducerIdManager(
                    broker_id=broker_id, broker_epoch=lambda: 7, controllers=pool
                ),
                topic_defaults=TopicDefaults(auto_create=False),
            ),
            server,
        )
        ports.bind_grpc(server, "127.0.0.1", port)
        server.start()
        made[broker_id] = Node(broker_id, port, store, replicas, metadata, server, fatal)
    try:
        yield made
    finally:
        for node in made.values():
            node.close()


def image(
    nodes: dict[int, Node],
    *,
    leader: int,
    topic_id: bytes = TOPIC_A,
    version: int = 10,
    epoch: int = 0,
) -> MetadataImage:
    brokers = {
        n.broker_id: BrokerRegistration(n.broker_id, "127.0.0.1", n.port, "", "x", 7, fenced=False)
        for n in nodes.values()
    }
    partition = PartitionRecord(
        ar=(1, 2), isr=(1, 2), leader=leader, leader_epoch=epoch, partition_epoch=epoch
    )
    topic = TopicRecord("t", topic_id, TopicConfig(), (partition,))
    return MetadataImage(version=version, brokers=brokers, topics={"t": topic})


def produce(partition: Partition, count: int) -> None:
    for i in range(count):
        batch = encode_batch([Message(f"v{i}")])
        partition.append(batch, acks=1, current_leader_epoch=-1)


def test_a_fetcher_survives_a_partition_storage_error(nodes: dict[int, Node]) -> None:
    nodes[1].apply(image(nodes, leader=1))
    leader = nodes[1].replicas.partition("t", 0)
    produce(leader, 5)
    follower_partition: list[Partition] = []
    failures = [2]  # the follower's first two appends fail as a broken disk would

    original = Partition.append_from_leader

    def flaky(self: Partition, records: bytes, **kwargs: Any) -> None:
        if self.broker_id == 2 and failures[0] > 0:
            failures[0] -= 1
            raise RaftmqError(ErrorCode.KAFKA_STORAGE_ERROR, "write failed: injected")
        original(self, records, **kwargs)

    Partition.append_from_leader = flaky  # type: ignore[method-assign]
    try:
        nodes[2].apply(image(nodes, leader=1))
        follower_partition.append(nodes[2].replicas.partition("t", 0))
        wait_until(
            lambda: follower_partition[0].log.log_end_offset == leader.log.log_end_offset,
            timeout_s=20,
            what="the follower to replicate past the injected storage errors",
        )
    finally:
        Partition.append_from_leader = original  # type: ignore[method-assign]
    assert failures[0] == 0
    assert nodes[2].fatal == []
    # It goes on replicating new data.
    produce(leader, 3)
    wait_until(lambda: follower_partition[0].log.log_end_offset == 8, timeout_s=10, what="new data")


def test_a_topic_deleted_and_recreated_in_one_change_is_served(nodes: dict[int, Node]) -> None:
    node = nodes[1]
    node.apply(image(nodes, leader=1, topic_id=TOPIC_A))
    assert node.replicas.partition("t", 0).topic_id == TOPIC_A
    # One delta: "t" (id A) deleted, "t" (id B) created.
    node.apply(image(nodes, leader=1, topic_id=TOPIC_B, version=11))
    assert node.replicas.partition("t", 0).topic_id == TOPIC_B
    assert node.replicas.partition_by_id(TOPIC_B, 0) is node.replicas.partition("t", 0)
    with pytest.raises(RaftmqError):
        node.replicas.partition_by_id(TOPIC_A, 0)


def _fetch(
    node: Node, *, replica_id: int, broker_epoch: int, topic_id: bytes
) -> pb.PartitionFetchResult:
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        stub = broker_pb2_grpc.BrokerServiceStub(channel)
        response = stub.Fetch(
            pb.FetchRequest(
                replica_id=replica_id,
                replica_broker_epoch=broker_epoch,
                max_wait_ms=0,
                partitions=[
                    pb.PartitionFetchData(
                        topic="t",
                        topic_id=topic_id,
                        partition=0,
                        fetch_offset=0,
                        last_fetched_epoch=-1,
                        current_leader_epoch=-1,
                    )
                ],
            ),
            timeout=5,
        )
    [result] = response.partitions
    return result


def test_a_fetch_from_a_stale_broker_incarnation_is_refused(nodes: dict[int, Node]) -> None:
    node = nodes[1]
    node.apply(image(nodes, leader=1))
    # Broker 2 re-registered: the metadata now shows its new epoch 9.
    current = image(nodes, leader=1)
    brokers = dict(current.brokers)
    brokers[2] = replace(brokers[2], broker_epoch=9)
    node.apply(replace(current, brokers=brokers, version=11))
    stale = _fetch(node, replica_id=2, broker_epoch=7, topic_id=TOPIC_A)
    assert stale.error.code == ErrorCode.STALE_BROKER_EPOCH
    assert "epoch 7" in stale.error.message and "epoch 9" in stale.error.message
    current_epoch = _fetch(node, replica_id=2, broker_epoch=9, topic_id=TOPIC_A)
    assert current_epoch.error.code == ErrorCode.NONE
    assert bytes(current_epoch.topic_id) == TOPIC_A


def test_a_follower_fetch_names_the_partition_by_topic_id(nodes: dict[int, Node]) -> None:
    node = nodes[1]
    node.apply(image(nodes, leader=1, topic_id=TOPIC_B))
    # A follower still following the deleted topic "t" (id A) must not get the new topic's data.
    old = _fetch(node, replica_id=2, broker_epoch=7, topic_id=TOPIC_A)
    assert old.error.code in (
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
    )


def test_every_follower_partition_is_in_a_running_fetcher_of_its_leader(
    nodes: dict[int, Node],
) -> None:
    """Role flips on the metadata thread while the duty thread runs: the fetcher map has
    one owner, so a partition never lands in a fetcher that is being stopped."""
    node = nodes[2]
    node.replicas.start()
    nodes[1].apply(image(nodes, leader=1))
    produce(nodes[1].replicas.partition("t", 0), 3)
    stop = threading.Event()
    for round_ in range(30):
        leader = 1 if round_ % 2 == 0 else 2
        node.apply(image(nodes, leader=leader, version=20 + round_, epoch=round_))
    node.apply(image(nodes, leader=1, version=100, epoch=40))
    nodes[1].apply(image(nodes, leader=1, version=100, epoch=40))
    stop.set()
    fetchers = node.replicas._fetchers
    assert list(fetchers) == [1]
    assert fetchers[1]._thread.is_alive() and len(fetchers[1]) == 1
    wait_until(
        lambda: node.replicas.partition("t", 0).log.log_end_offset == 3,
        timeout_s=20,
        what="the follower to catch up after the role flips",
    )


def test_metadata_a_broker_cannot_apply_ends_the_broker(make_cluster: type[LocalCluster]) -> None:
    """A listener error used to kill the watch thread silently: metadata froze while the
    heartbeats went on. Now the broker is told to end (and its supervisor restarts it)."""
    cluster = make_cluster(controllers=1, brokers=0)
    cluster.start()
    cluster.wait_ready(timeout_s=60, brokers=0)
    fatal: list[str] = []
    pool = EndpointPool(cluster.layout.controller_endpoints, service="controller")

    def listener(image: MetadataImage) -> None:
        raise RuntimeError("cannot open the partition's log")

    cache = MetadataCache(pool, watcher_name="b1", listener=listener, on_fatal=fatal.append)
    cache.start()
    try:
        wait_until(lambda: bool(fatal), timeout_s=20, what="the fatal report")
    finally:
        cache.stop()
        pool.close()
    assert "cannot open the partition's log" in fatal[0]
    assert cache.image.version == 0, "an image that was not applied is never published"
