"""confluent-kafka (librdkafka) writes through raftmq's Kafka listener and our gRPC
`Reader` reads the same key, value, headers and timestamp."""

from __future__ import annotations

import uuid

import pytest
from raftmq import Reader
from raftmq.local_cluster import LocalCluster

from .conftest import TIMEOUT_S, make_topic

confluent_kafka = pytest.importorskip(
    "confluent_kafka", reason="confluent-kafka is not installed (pip install -e '.[dev]')"
)

pytestmark = pytest.mark.compat


def test_a_confluent_kafka_message_reads_identically_through_our_reader(
    cluster: LocalCluster,
) -> None:
    topic = f"confluent-{uuid.uuid4().hex[:8]}"
    make_topic(cluster, topic, 1)
    written = [
        (b"ck-1", b"from librdkafka", [("h", b"1"), ("h", b"2"), ("x", b"")], 1_700_000_000_321),
        (None, b"no key, no headers", [], 1_700_000_000_654),
    ]
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": ",".join(cluster.layout.kafka_endpoints),
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    errors: list[object] = []
    for key, value, headers, timestamp_ms in written:
        producer.produce(
            topic,
            value,
            key=key,
            partition=0,
            headers=headers or None,
            timestamp=timestamp_ms,
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
    assert producer.flush(TIMEOUT_S) == 0 and not errors, errors
    with Reader(
        cluster.layout.broker_endpoints, topic=topic, partition=0, start_offset=0
    ) as reader:
        got = [reader.read_message(timeout_ms=int(TIMEOUT_S * 1000)) for _ in written]
    assert [(m.key, m.value, list(m.headers), m.timestamp_ms, m.offset) for m in got] == [
        (key, value, headers, timestamp_ms, i)
        for i, (key, value, headers, timestamp_ms) in enumerate(written)
    ]
