"""The idempotent producer of each Kafka client that has one, with the partition's leader
killed (kill -9) mid-stream: every acknowledged message is stored exactly once.

Each client writes numbered values to a one-partition topic (RF 3, min.insync.replicas=2)
while the test SIGKILLs the partition's leader; the client retries what was in flight at
the new leader with the same producer id and sequences, and the broker keeps a retried
batch once. The check reads the partition back through our gRPC Reader: nothing
acknowledged is missing, nothing is stored twice. The killed broker is started again
before the next test (the module shares one cluster).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
from raftmq import Admin, FirstOffset, Reader
from raftmq.local_cluster import LocalCluster, wait_until

from tests.compat.conftest import TIMEOUT_S, wait_for_leaders

pytestmark = [
    pytest.mark.compat,
    pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning"),
]

MESSAGES = 600


def leader_of(cluster: LocalCluster, topic: str) -> int:
    with Admin(cluster.layout.broker_endpoints) as admin:
        [described] = admin.describe_topics(topic)
    return described.partitions[0].leader


def stored_values(cluster: LocalCluster, topic: str) -> list[bytes]:
    with Admin(cluster.layout.broker_endpoints) as admin:
        end = admin.list_offsets(topic)[0]
    with Reader(cluster.layout.broker_endpoints, topic, 0, start_offset=FirstOffset) as reader:
        return [reader.read_message(timeout_ms=30_000).value or b"" for _ in range(end)]


@pytest.fixture
def failover_topic(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh one-partition topic; afterwards every broker runs again."""
    name = "idem-" + request.node.name.removeprefix("test_").split("_", 1)[0]
    with Admin(cluster.layout.broker_endpoints) as admin:
        admin.create_topic(
            name, partitions=1, replication_factor=3, configs={"min.insync.replicas": "2"}
        )
    wait_for_leaders(cluster, name, 1)
    yield name
    for process in cluster.brokers.values():
        if not process.running:
            process.start()
    cluster.wait_ready(timeout_s=90)


def kill_leader_after(
    cluster: LocalCluster, topic: str, acknowledged: Callable[[], int], count: int
) -> int:
    """Once `count` messages are acknowledged, SIGKILL the partition's leader; its id."""
    wait_until(lambda: acknowledged() >= count, timeout_s=TIMEOUT_S, what=f"{count} acks")
    leader = leader_of(cluster, topic)
    cluster.brokers[leader].kill()
    return leader


def check_exactly_once(cluster: LocalCluster, topic: str, acked: set[bytes]) -> None:
    assert len(acked) == MESSAGES, f"only {len(acked)} of {MESSAGES} acknowledged"
    stored = stored_values(cluster, topic)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert acked <= set(stored), f"lost: {sorted(acked - set(stored))[:5]}"


def values() -> list[bytes]:
    return [f"v{i:05d}".encode() for i in range(MESSAGES)]


def test_confluent_kafka_idempotent_producer_across_a_leader_kill(
    cluster: LocalCluster, failover_topic: str
) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": ",".join(cluster.layout.kafka_endpoints),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": 60_000,
        }
    )
    acked: set[bytes] = set()
    errors: list[str] = []

    def delivered(error: object, message: object) -> None:
        if error is not None:
            errors.append(str(error))
        else:
            acked.add(message.value())  # type: ignore[attr-defined]

    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            producer.poll(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        all_values = values()
        for value in all_values[: MESSAGES // 2]:
            producer.produce(failover_topic, value, callback=delivered)
        kill_leader_after(cluster, failover_topic, lambda: len(acked), MESSAGES // 4)
        for value in all_values[MESSAGES // 2 :]:
            producer.produce(failover_topic, value, callback=delivered)
        assert producer.flush(TIMEOUT_S) == 0
    finally:
        stop.set()
        poller.join(timeout=10)
    assert not errors, errors[:3]
    check_exactly_once(cluster, failover_topic, acked)


def test_kafka_python_idempotent_producer_across_a_leader_kill(
    cluster: LocalCluster, failover_topic: str
) -> None:
    kafka = pytest.importorskip("kafka")
    producer = kafka.KafkaProducer(
        bootstrap_servers=cluster.layout.kafka_endpoints,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        retries=50,
        request_timeout_ms=10_000,
        delivery_timeout_ms=60_000,
    )
    acked: set[bytes] = set()
    try:
        futures = []
        all_values = values()
        for value in all_values[: MESSAGES // 2]:
            futures.append((value, producer.send(failover_topic, value)))

        def count() -> int:
            return sum(1 for _, f in list(futures) if f.succeeded())

        kill_leader_after(cluster, failover_topic, count, MESSAGES // 4)
        for value in all_values[MESSAGES // 2 :]:
            futures.append((value, producer.send(failover_topic, value)))
        producer.flush(timeout=TIMEOUT_S)
        for value, future in futures:
            future.get(timeout=TIMEOUT_S)  # raises the client's error, if any
            acked.add(value)
    finally:
        producer.close(timeout=10)
    check_exactly_once(cluster, failover_topic, acked)


def test_aiokafka_idempotent_producer_across_a_leader_kill(
    cluster: LocalCluster, failover_topic: str
) -> None:
    aiokafka = pytest.importorskip("aiokafka")

    async def run() -> set[bytes]:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=",".join(cluster.layout.kafka_endpoints),
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            request_timeout_ms=60_000,
        )
        await producer.start()
        acked: set[bytes] = set()
        try:
            all_values = values()
            first = [await producer.send(failover_topic, v) for v in all_values[: MESSAGES // 2]]
            done = [await f for f in first[: MESSAGES // 4]]
            assert len(done) == MESSAGES // 4
            leader = leader_of(cluster, failover_topic)
            cluster.brokers[leader].kill()
            rest = [await producer.send(failover_topic, v) for v in all_values[MESSAGES // 2 :]]
            for value, future in zip(all_values, first + rest, strict=True):
                await asyncio.wait_for(future, TIMEOUT_S)
                acked.add(value)
        finally:
            await producer.stop()
        return acked

    check_exactly_once(cluster, failover_topic, asyncio.run(run()))
