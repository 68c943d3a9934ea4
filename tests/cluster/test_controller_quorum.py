"""Three real controller processes: kill -9 the Raft leader, restart, restart them all."""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from raftmq import node_meta
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.local_cluster import LocalCluster, wait_until
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc

pytestmark = pytest.mark.cluster

# Longer than a controller's election timeout (raftMaxTimeout 0.4 s).
PAUSE_PAST_ELECTION_S = 0.6


class BrokerSessions:
    """Registers broker identities with the quorum and keeps their sessions alive, the way
    a broker process does (the real broker is exercised by the broker tests)."""

    def __init__(self, pool: EndpointPool, count: int) -> None:
        self.pool = pool
        self.epochs: dict[int, int] = {}
        for broker_id in range(1, count + 1):
            response = call_with_failover(
                pool,
                "RegisterBroker",
                pb.RegisterBrokerRequest(
                    broker_id=broker_id,
                    endpoint=cpb.Endpoint(host="127.0.0.1", port=9000 + broker_id),
                    incarnation_id=uuid.uuid4().hex,
                    request_id=uuid.uuid4().hex,
                ),
                timeout_ms=20_000,
            )
            assert response.error.code == 0, response
            self.epochs[broker_id] = response.broker_epoch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(0.3):
            # A copy: tests drop brokers from `epochs` to let their sessions expire.
            for broker_id, epoch in list(self.epochs.items()):
                # The quorum may be down on purpose.
                with contextlib.suppress(RaftmqError):
                    call_with_failover(
                        self.pool,
                        "BrokerHeartbeat",
                        # No metadata watch here: claim to have caught up with the own
                        # registration, which the controller requires before unfencing.
                        pb.BrokerHeartbeatRequest(
                            broker_id=broker_id, broker_epoch=epoch, metadata_version=epoch
                        ),
                        timeout_ms=2_000,
                    )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def quorum(make_cluster: type[LocalCluster]) -> Iterator[tuple[LocalCluster, EndpointPool]]:
    cluster = make_cluster(controllers=3, brokers=0)
    cluster.start()
    cluster.wait_ready(timeout_s=30)
    pool = EndpointPool(cluster.layout.controller_endpoints, service="controller")
    yield cluster, pool
    pool.close()
    cluster.stop()


def create_topic(pool: EndpointPool, name: str, rf: int = 3) -> pb.CreateTopicResponse:
    response: pb.CreateTopicResponse = call_with_failover(
        pool,
        "CreateTopic",
        pb.CreateTopicRequest(
            name=name, partitions=2, replication_factor=rf, request_id=uuid.uuid4().hex
        ),
        timeout_ms=20_000,
    )
    return response


def topics_on(cluster: LocalCluster, node_id: int) -> dict[str, tuple[object, ...]]:
    pool = EndpointPool([cluster.layout.controller_endpoints[node_id - 1]], service="controller")
    try:
        response = call_with_failover(
            pool, "DescribeTopics", pb.DescribeTopicsRequest(), timeout_ms=5_000
        )
    finally:
        pool.close()
    return {
        t.name: (
            bytes(t.topic_id),
            tuple((tuple(p.ar), tuple(p.isr), p.leader) for p in t.partitions),
        )
        for t in response.topics
    }


def leader_id(cluster: LocalCluster) -> int:
    status = cluster.describe()
    return -1 if status is None else status.controller.leader_id


def wait_all_unfenced(cluster: LocalCluster, count: int) -> None:
    def unfenced() -> bool:
        status = cluster.describe()
        return status is not None and sum(not b.fenced for b in status.brokers) == count

    wait_until(unfenced, timeout_s=20, what="brokers to be unfenced")


def test_leader_kill_failover_keeps_committed_changes_and_restart_catches_up(quorum) -> None:
    cluster, pool = quorum
    sessions = BrokerSessions(pool, 3)
    try:
        wait_all_unfenced(cluster, 3)
        for i in range(5):
            assert create_topic(pool, f"before-{i}").error.code == 0
        old_leader = leader_id(cluster)
        assert old_leader > 0
        before = topics_on(cluster, old_leader)
        assert len(before) == 5

        cluster.controllers[old_leader].kill()
        killed_at = time.monotonic()
        wait_until(
            lambda: leader_id(cluster) not in (-1, old_leader), timeout_s=10, what="a new leader"
        )
        response = create_topic(pool, "after-failover")
        assert response.error.code == 0, response
        failover_s = time.monotonic() - killed_at
        assert failover_s < 10, failover_s
        survivors = [n for n in cluster.controllers if n != old_leader]
        for node in survivors:
            wait_until(
                lambda node=node: "after-failover" in topics_on(cluster, node),
                timeout_s=10,
                what=f"controller {node} to apply the new topic",
            )
            on_node = topics_on(cluster, node)
            for name, value in before.items():
                assert on_node[name] == value

        # The killed controller restarts on its data dir and catches up.
        cluster.controllers[old_leader].start()
        wait_until(
            lambda: (
                "after-failover" in topics_on(cluster, old_leader)
                if cluster.controllers[old_leader].running
                else False
            ),
            timeout_s=20,
            what="the restarted controller to catch up",
        )
        assert topics_on(cluster, old_leader) == topics_on(cluster, survivors[0])
    finally:
        sessions.stop()


def test_all_controllers_killed_and_restarted_recover_the_metadata(quorum) -> None:
    cluster, pool = quorum
    sessions = BrokerSessions(pool, 3)
    try:
        wait_all_unfenced(cluster, 3)
        for i in range(3):
            assert create_topic(pool, f"t{i}").error.code == 0
        assert (
            call_with_failover(
                pool,
                "DeleteTopic",
                pb.DeleteTopicRequest(name="t1", request_id="del-t1"),
                timeout_ms=10_000,
            ).error.code
            == 0
        )
        wait_until(
            lambda: all("t1" not in topics_on(cluster, n) for n in cluster.controllers),
            timeout_s=10,
            what="every controller to apply the deletion",
        )
        expected = topics_on(cluster, 1)
    finally:
        sessions.stop()
    for process in cluster.controllers.values():
        process.kill()
    for process in cluster.controllers.values():
        process.start()
    cluster.wait_ready(timeout_s=30)
    for node in cluster.controllers:
        wait_until(
            lambda node=node: topics_on(cluster, node) == expected,
            timeout_s=20,
            what=f"controller {node} to recover its state",
        )
    # A retried command (same request id) is not applied twice after the restart.
    again = call_with_failover(
        pool,
        "DeleteTopic",
        pb.DeleteTopicRequest(name="t1", request_id="del-t1"),
        timeout_ms=10_000,
    )
    assert again.error.code == 0


def test_sessions_expire_and_fenced_brokers_leave_isr(quorum) -> None:
    cluster, pool = quorum
    sessions = BrokerSessions(pool, 3)
    wait_all_unfenced(cluster, 3)
    assert create_topic(pool, "fenced").error.code == 0
    # Broker 3 stops heartbeating: after the session timeout it is fenced, leaves every ISR
    # and loses its leaderships; the others are untouched.
    del sessions.epochs[3]
    try:

        def fenced() -> bool:
            status = cluster.describe()
            return status is not None and any(b.id == 3 and b.fenced for b in status.brokers)

        wait_until(fenced, timeout_s=15, what="broker 3 to be fenced")
        status = cluster.describe()
        assert status is not None
        for topic in status.topics:
            for p in topic.partitions:
                assert 3 not in p.isr and p.leader != 3
                assert 3 in p.osr
        for b in status.brokers:
            assert b.fenced == (b.id == 3)
    finally:
        sessions.stop()


def test_bad_requests_get_clear_errors(quorum) -> None:
    _, pool = quorum
    assert create_topic(pool, "no-brokers").error.code == ErrorCode.INVALID_REPLICATION_FACTOR
    bad = call_with_failover(
        pool,
        "CreateTopic",
        pb.CreateTopicRequest(name="bad/name", partitions=1, replication_factor=1),
    )
    assert (
        bad.error.code == ErrorCode.INVALID_TOPIC_NAME and "may contain only" in bad.error.message
    )
    reserved = call_with_failover(
        pool,
        "CreateTopic",
        pb.CreateTopicRequest(name="__consumer_offsets", partitions=1, replication_factor=1),
    )
    assert reserved.error.code == ErrorCode.INVALID_TOPIC_NAME
    assert "reserved" in reserved.error.message
    stale = call_with_failover(
        pool, "BrokerHeartbeat", pb.BrokerHeartbeatRequest(broker_id=9, broker_epoch=1)
    )
    assert stale.error.code == ErrorCode.STALE_BROKER_EPOCH


def test_controller_without_reachable_leader_ends_watch_streams(quorum) -> None:
    """A controller cut off from the quorum must not keep feeding stale metadata: its watch
    streams end (UNAVAILABLE) so brokers move to a controller whose state is current."""
    cluster, _ = quorum
    survivor = 1
    endpoint = cluster.layout.controller_endpoints[survivor - 1]
    with grpc.insecure_channel(endpoint) as channel:
        stream = controller_pb2_grpc.ControllerServiceStub(channel).WatchMetadata(
            pb.WatchMetadataRequest(watcher="test"), timeout=30
        )
        first = next(stream)
        assert first.snapshot
        for node, process in cluster.controllers.items():
            if node != survivor:
                process.kill()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            for _ in stream:
                pass
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 15


def register(pool: EndpointPool, broker_id: int, cluster_id: str = "") -> pb.RegisterBrokerResponse:
    response: pb.RegisterBrokerResponse = call_with_failover(
        pool,
        "RegisterBroker",
        pb.RegisterBrokerRequest(
            broker_id=broker_id,
            endpoint=cpb.Endpoint(host="127.0.0.1", port=9000 + broker_id),
            incarnation_id=uuid.uuid4().hex,
            request_id=uuid.uuid4().hex,
            cluster_id=cluster_id,
        ),
        timeout_ms=20_000,
    )
    return response


def test_the_cluster_id_is_committed_stamped_and_checked(quorum) -> None:
    cluster, pool = quorum

    def committed_cluster_id() -> str:
        status = cluster.describe()
        return "" if status is None else status.cluster_id

    # The first leader commits it right after its election.
    wait_until(lambda: bool(committed_cluster_id()), timeout_s=10, what="the cluster id")
    cluster_id = committed_cluster_id()
    assert len(cluster_id) == 22  # Kafka's form: base64url of a uuid4
    first = register(pool, 1)
    assert first.error.code == 0 and first.cluster_id == cluster_id
    foreign = register(pool, 2, cluster_id="another-cluster")
    assert foreign.error.code == ErrorCode.INCONSISTENT_CLUSTER_ID and not foreign.error.retriable
    assert foreign.error.message == (
        f"broker 2 belongs to cluster another-cluster, this quorum is cluster {cluster_id}"
    )
    for node, process in cluster.controllers.items():
        data_dir = cluster.data_dir / process.name
        wait_until(
            lambda data_dir=data_dir: bool(getattr(node_meta.load(data_dir), "cluster_id", "")),
            timeout_s=10,
            what=f"controller {node} to stamp the cluster id into its data dir",
        )
        assert node_meta.load(data_dir) == node_meta.NodeMeta(cluster_id, node, "controller")

    # Writes reach only the leader: a follower answers NOT_CONTROLLER with its endpoint.
    leader = leader_id(cluster)
    follower = next(n for n in cluster.controllers if n != leader)
    endpoint = cluster.layout.controller_endpoints[follower - 1]
    with grpc.insecure_channel(endpoint) as channel:
        answer = controller_pb2_grpc.ControllerServiceStub(channel).CreateTopic(
            pb.CreateTopicRequest(name="t", partitions=1, replication_factor=1), timeout=10
        )
    assert answer.error.code == ErrorCode.NOT_CONTROLLER and answer.error.leader_id == leader
    hint = f"{answer.error.leader_endpoint.host}:{answer.error.leader_endpoint.port}"
    assert hint == cluster.layout.controller_endpoints[leader - 1]

    # A controller whose data dir belongs to another cluster ends, naming both ids.
    process = cluster.controllers[follower]
    process.stop()
    data_dir = cluster.data_dir / process.name
    shutil.rmtree(data_dir)
    node_meta.stamp(data_dir, node_meta.NodeMeta("another-cluster", follower, "controller"))
    process.start()
    wait_until(lambda: not process.running, timeout_s=20, what="the foreign controller to exit")
    assert process.returncode not in (0, None)
    output = process.log_path.read_text()
    assert f"error: controller {follower} belongs to cluster another-cluster" in output
    assert f"the quorum it joined is cluster {cluster_id}" in output


def allocate(pool: EndpointPool, broker_id: int, epoch: int, request_id: str) -> tuple[int, int]:
    response = call_with_failover(
        pool,
        "AllocateProducerIds",
        pb.AllocateProducerIdsRequest(
            broker_id=broker_id, broker_epoch=epoch, request_id=request_id
        ),
        timeout_ms=20_000,
    )
    assert response.error.code == 0, response
    return response.first_producer_id, response.count


def test_producer_ids_are_never_handed_out_twice_across_a_failover(quorum) -> None:
    cluster, pool = quorum
    sessions = BrokerSessions(pool, 2)
    try:
        blocks = [allocate(pool, 1, sessions.epochs[1], "before")]
        old_leader = leader_id(cluster)
        cluster.controllers[old_leader].kill()
        wait_until(
            lambda: leader_id(cluster) not in (-1, old_leader), timeout_s=10, what="a new leader"
        )
        # A retry of the first request (its answer lost) gets the same block again.
        assert allocate(pool, 1, sessions.epochs[1], "before") == blocks[0]
        blocks.append(allocate(pool, 2, sessions.epochs[2], "after-1"))
        cluster.controllers[old_leader].start()
        blocks.append(allocate(pool, 1, sessions.epochs[1], "after-2"))
    finally:
        sessions.stop()
    ids = [set(range(first, first + count)) for first, count in blocks]
    assert all(count == 1_000 for _, count in blocks)
    assert blocks == sorted(blocks)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            assert not a & b


def test_a_write_is_visible_on_every_controller_once_answered(quorum) -> None:
    """A follower that was paused while the write committed (so it learns of the commit
    late) still shows the write to a read that arrives after the answer: its read asks the
    leader how far to catch up first (read index). Fails without it. Also when the pause
    outlasted its election timeout: the read waits for the election's outcome first."""
    cluster, pool = quorum
    sessions = BrokerSessions(pool, 1)
    channels = {
        n: grpc.insecure_channel(cluster.layout.controller_endpoints[n - 1])
        for n in cluster.controllers
    }
    try:
        wait_all_unfenced(cluster, 1)
        leader = leader_id(cluster)
        followers = [n for n in cluster.controllers if n != leader]
        stubs = {n: controller_pb2_grpc.ControllerServiceStub(c) for n, c in channels.items()}
        for stub in stubs.values():  # connected before any pause
            stub.DescribeTopics(pb.DescribeTopicsRequest(names=["warm-up"]), timeout=5)
        for round_ in range(5):
            paused = followers[round_ % 2]
            name = f"visible-{round_}"
            cluster.controllers[paused].signal(signal.SIGSTOP)
            try:
                created = stubs[leader].CreateTopic(
                    pb.CreateTopicRequest(
                        name=name, partitions=1, replication_factor=1, request_id=name
                    ),
                    timeout=10,
                )
                assert created.error.code == 0, created
                # Sent while it is paused; answered once it runs again.
                pending = stubs[paused].DescribeTopics.future(
                    pb.DescribeTopicsRequest(names=[name]), timeout=10
                )
                if round_ >= 2:
                    # Paused past its election timeout (0.2-0.4 s): it may resume by
                    # starting an election, without a leader to ask.
                    time.sleep(PAUSE_PAST_ELECTION_S)
            finally:
                cluster.controllers[paused].signal(signal.SIGCONT)
            answer = pending.result(timeout=10)
            assert answer.error.code == 0 and [t.name for t in answer.topics] == [name], answer
    finally:
        for channel in channels.values():
            channel.close()
        sessions.stop()
