"""Kafka record batches through real broker processes: what kafka-python encodes (headers,
every compression codec) is stored, replicated and served unchanged and reads back with
our decoder and through a Reader; every codec of our encoder round-trips the same way."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator

import pytest
from raftmq.client.conn import Conn
from raftmq.client.reader import Reader
from raftmq.compression import CODEC_NAMES
from raftmq.local_cluster import LocalCluster
from raftmq.message import Message
from raftmq.record_batch import decode_batch, encode_batch, iter_batches, read_header
from raftmq.v1 import controller_pb2 as pb

with warnings.catch_warnings():
    # kafka-python 3.0 loads its bundled schemas with a deprecated importlib call.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatchBuilder

pytestmark = pytest.mark.cluster

TOPIC = "kafka-batches"
CODECS = sorted(CODEC_NAMES)
NOW_MS = 1_700_000_000_000


@pytest.fixture
def client(make_cluster: type[LocalCluster]) -> Iterator[list[str]]:
    """A client of one controller and two brokers (replication factor 2 and acks=all:
    followers store every batch before it is acknowledged), with the topic created."""
    cluster = make_cluster(controllers=1, brokers=2)
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    with Conn(cluster.layout.broker_endpoints[0]) as connection:
        response: pb.CreateTopicResponse = connection.admin(
            "CreateTopic",
            pb.CreateTopicRequest(
                name=TOPIC,
                partitions=1,
                replication_factor=2,
                configs={"min.insync.replicas": "2"},
                request_id=uuid.uuid4().hex,
            ),
        )
    assert response.error.code == 0, response.error
    yield cluster.layout.broker_endpoints
    cluster.stop()


def produce_and_fetch(client: list[str], batch: bytes) -> bytes:
    """Produce `batch` with acks=all at the leader; return the stored batch as a fetch
    serves it."""
    with Conn.dial_leader(client, TOPIC, 0) as leader:
        [produced] = leader.produce([(TOPIC, 0, batch)], acks=-1, timeout_ms=15_000)
        assert produced.error is None, produced.error
        base_offset = produced.base_offset
        [result] = leader.fetch([(TOPIC, 0, base_offset)], max_wait_ms=0)
    assert result.error is None, result.error
    header, stored = next(iter_batches(result.records))
    assert header.base_offset == base_offset
    # The broker is opaque: it stamps the base offset and leader epoch, nothing else.
    assert stored[16:] == batch[16:]
    assert stored[8:12] == batch[8:12]
    return stored


def test_kafka_python_batches_are_served_unchanged_and_read_back(client: list[str]) -> None:
    for compression in CODECS:
        check_kafka_python_batch(client, compression)


def check_kafka_python_batch(client: list[str], compression: int) -> None:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    sent = [
        (
            b"key-%d" % i,
            b"value %d; " % i * 30,
            NOW_MS - 5 * i,
            [("trace", b"t%d" % i), ("n", None)],
        )
        for i in range(200)
    ] + [(None, None, NOW_MS + 1, [])]
    for i, (key, value, timestamp_ms, headers) in enumerate(sent):
        builder.append(i, timestamp_ms, key, value, headers)
    batch = bytes(builder.build())
    assert read_header(batch).compression_codec == compression

    stored = produce_and_fetch(client, batch)
    base_offset = read_header(stored).base_offset
    decoded = decode_batch(stored)
    expected = [
        (base_offset + i, key, value, headers, timestamp_ms)
        for i, (key, value, timestamp_ms, headers) in enumerate(sent)
    ]
    assert [
        (m.offset, m.key, m.value, list(m.headers), m.timestamp_ms) for m in decoded
    ] == expected
    # And through the Reader, as an application reads them.
    with Reader(client, TOPIC, 0, start_offset=base_offset) as reader:
        read = [reader.read_message(timeout_ms=10_000) for _ in sent]
    assert [(m.offset, m.key, m.value, list(m.headers), m.timestamp_ms) for m in read] == expected
    assert {(m.topic, m.partition) for m in read} == {(TOPIC, 0)}


def test_every_codec_round_trips_through_the_broker(client: list[str]) -> None:
    messages = [
        Message(b"v%d" % i * 50, None if i % 3 else b"k%d" % i, headers=[("i", b"%d" % i)])
        for i in range(300)
    ]
    for compression in CODECS:
        batch = encode_batch(messages, compression=compression, now_ms=NOW_MS)
        stored = produce_and_fetch(client, batch)
        assert read_header(stored).compression_codec == compression
        base_offset = read_header(stored).base_offset
        assert decode_batch(stored) == [
            Message(m.value, m.key, headers=m.headers, offset=base_offset + i, timestamp_ms=NOW_MS)
            for i, m in enumerate(messages)
        ], CODEC_NAMES[compression]
