"""Operating a cluster: named listeners (each client is answered with the addresses of the
listener it came in on), the gRPC health service (NOT_SERVING until a broker registered and
caught up, and again from its controlled shutdown), server reflection, and Prometheus
metrics on every node."""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from raftmq import Admin, Message, Reader, Writer
from raftmq.health import probe
from raftmq.local_cluster import LocalCluster, ManagedProcess, free_ports, wait_until
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc, controller_pb2, controller_pb2_grpc

pytestmark = pytest.mark.cluster


@pytest.fixture
def quorum(make_cluster: type[LocalCluster]) -> LocalCluster:
    cluster = make_cluster(controllers=1, brokers=0, metrics=True)
    cluster.start()
    cluster.wait_ready(timeout_s=60, brokers=0)
    return cluster


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for p in started:
        p.kill()


def start_broker(
    quorum: LocalCluster, processes: list[ManagedProcess], tmp_path: Path, node_id: int, *args: str
) -> ManagedProcess:
    process = ManagedProcess(
        f"broker-{node_id}",
        [
            "broker",
            f"--node-id={node_id}",
            f"--controllers={','.join(quorum.layout.controller_endpoints)}",
            f"--data-dir={tmp_path / f'broker-{node_id}'}",
            "--log-json",
            *args,
        ],
        tmp_path / "logs" / f"broker-{node_id}.log",
    )
    process.start()
    processes.append(process)
    return process


def metadata_endpoints(address: str) -> dict[int, str]:
    with grpc.insecure_channel(address) as channel:
        response = broker_pb2_grpc.BrokerServiceStub(channel).Metadata(
            pb.MetadataRequest(), timeout=5
        )
    return {b.id: f"{b.endpoint.host}:{b.endpoint.port}" for b in response.brokers}


def test_each_listener_answers_with_its_own_addresses(
    quorum: LocalCluster, processes: list[ManagedProcess], tmp_path: Path
) -> None:
    ports = free_ports(4)
    internal = {1: f"127.0.0.1:{ports[0]}", 2: f"127.0.0.1:{ports[1]}"}
    # EXTERNAL advertises another name for the same machine, as a published port would.
    external = {1: f"localhost:{ports[2]}", 2: f"localhost:{ports[3]}"}
    for node_id in (1, 2):
        start_broker(
            quorum,
            processes,
            tmp_path,
            node_id,
            f"--listeners=INTERNAL://127.0.0.1:{internal[node_id].split(':')[1]},"
            f"EXTERNAL://127.0.0.1:{external[node_id].split(':')[1]}",
            f"--advertised-listeners=INTERNAL://{internal[node_id]},EXTERNAL://{external[node_id]}",
            "--inter-broker-listener-name=INTERNAL",
        )
    wait_until(
        lambda: all(probe(a) == "SERVING" for a in internal.values()),
        timeout_s=30,
        what="both brokers serving",
    )
    assert metadata_endpoints(internal[1]) == internal
    assert metadata_endpoints(external[2]) == external
    # Replication and clients work over both: a topic replicated between them (the
    # followers fetch over INTERNAL), written through EXTERNAL, read through INTERNAL.
    with Admin([external[1]]) as admin:
        admin.create_topic("l", partitions=2, replication_factor=2)
    with Writer([external[1]], topic="l") as writer:
        writer.write_messages(*[Message(f"m{i}".encode()) for i in range(10)])
    seen = []
    for partition in (0, 1):
        with Reader([internal[2]], topic="l", partition=partition) as reader:
            reader.set_offset(0)
            while len(seen) < 10:
                try:
                    seen.append(reader.read_message(timeout_ms=2_000).value)
                except TimeoutError:
                    break
    assert sorted(seen) == sorted(f"m{i}".encode() for i in range(10))


def test_health_follows_registration_and_shutdown(
    quorum: LocalCluster, processes: list[ManagedProcess], tmp_path: Path
) -> None:
    [port, stray_controller] = free_ports(2)
    address = f"127.0.0.1:{port}"
    # A broker whose controllers do not answer serves gRPC but is not healthy.
    lonely = ManagedProcess(
        "lonely",
        [
            "broker",
            "--node-id=9",
            f"--listen={address}",
            f"--controllers=127.0.0.1:{stray_controller}",
            f"--data-dir={tmp_path / 'lonely'}",
        ],
        tmp_path / "logs" / "lonely.log",
    )
    lonely.start()
    processes.append(lonely)
    wait_until(lambda: probe(address) != "UNREACHABLE", timeout_s=20, what="the lonely broker up")
    assert probe(address) == "NOT_SERVING"
    lonely.kill()
    # A broker that registers becomes SERVING, for the node and for its service.
    broker = start_broker(quorum, processes, tmp_path, 1, f"--listen={address}")
    wait_until(lambda: probe(address) == "SERVING", timeout_s=30, what="SERVING")
    assert probe(address, service="raftmq.v1.BrokerService") == "SERVING"
    assert probe(quorum.layout.controller_endpoints[0]) == "SERVING"
    # Reflection lists the services.
    with grpc.insecure_channel(address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"raftmq.v1.BrokerService", "grpc.health.v1.Health"} <= services
    # From its controlled shutdown on, it says NOT_SERVING (while it still answers).
    broker.signal(signal.SIGTERM)
    answers = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = probe(address, timeout_ms=500)
        answers.append(answer)
        if answer == "UNREACHABLE":
            break
        time.sleep(0.01)
    assert "NOT_SERVING" in answers and answers[-1] == "UNREACHABLE"
    assert "SERVING" not in answers[answers.index("NOT_SERVING") :]


def test_every_node_serves_metrics(make_cluster: type[LocalCluster]) -> None:
    cluster = make_cluster(controllers=3, brokers=3, metrics=True)
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    bootstrap = cluster.layout.broker_endpoints
    with Admin(bootstrap) as admin:
        admin.create_topic("metered", partitions=3, replication_factor=3)
    with Writer(bootstrap, topic="metered") as writer:
        writer.write_messages(*[Message(b"x" * 100) for _ in range(30)])
    texts = {}
    for name, url in cluster.layout.metrics_urls():
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            texts[name] = response.read().decode()
    assert len(texts) == 6
    broker_names = [
        "raftmq_broker_requests_total",
        "raftmq_broker_request_duration_seconds_bucket",
        "raftmq_broker_under_replicated_partitions",
        "raftmq_broker_leader_partitions",
        "raftmq_broker_disk_free_bytes",
        "raftmq_broker_replica_sessions",
    ]
    for name in ("broker-1", "broker-2", "broker-3"):
        for metric in broker_names:
            assert metric in texts[name], (name, metric)
    produced = sum(
        float(line.split()[-1])
        for text in (texts["broker-1"], texts["broker-2"], texts["broker-3"])
        for line in text.splitlines()
        if line.startswith('raftmq_broker_topic_messages_in_total{topic="metered"}')
    )
    assert produced == 30
    leaders = [
        line
        for text in texts.values()
        for line in text.splitlines()
        if line.startswith("raftmq_controller_is_leader ")
    ]
    assert sorted(float(line.split()[-1]) for line in leaders) == [0.0, 0.0, 1.0]
    assert all("raftmq_controller_raft_term" in texts[f"controller-{i}"] for i in (1, 2, 3))
    # The leader's view of its followers: how far they are and when they last answered.
    with Admin(bootstrap) as admin:
        status = admin.cluster_status()
    views = []
    for endpoint in cluster.layout.controller_endpoints:
        with grpc.insecure_channel(endpoint) as channel:
            views.append(
                controller_pb2_grpc.ControllerServiceStub(channel).DescribeCluster(
                    controller_pb2.DescribeClusterRequest(), timeout=5
                )
            )
    assert {v.cluster_id for v in views} == {status.cluster_id}
    leader_id = views[0].controller.leader_id
    leader_view = views[leader_id - 1]  # controller i listens at endpoint i-1
    followers = [v for v in leader_view.controller.voters if v.id != leader_id]
    assert len(followers) == 2
    assert all(0 <= v.last_contact_ms < 5_000 and v.match_index > 0 for v in followers)
    # Another controller does not pretend to know.
    other = views[leader_id % 3]
    assert all(v.last_contact_ms == -1 for v in other.controller.voters)
