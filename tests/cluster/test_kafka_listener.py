"""The Kafka wire-protocol listener through real broker processes: Kafka clients nobody here
wrote (kafka-python, librdkafka via confluent-kafka) produce and consume; our gRPC client
and a Kafka client read each other's messages identically; pipelined requests come back in
order; acks=0 gets no response; bad input — truncated, oversized, unknown, garbage, a
hypothesis fuzz of frames — closes the connection or is answered with an error, and never
stops the broker or stores a byte."""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.index import load_response_schema
from kio.schema.api_versions.v0 import response as api_versions_v0
from kio.schema.api_versions.v3 import request as api_versions_v3
from kio.schema.errors import ErrorCode as K
from kio.schema.fetch.v12 import request as fetch_v12
from kio.schema.list_offsets.v7 import request as list_offsets_v7
from kio.schema.metadata.v12 import request as metadata_v12
from kio.schema.produce.v9 import request as produce_v9
from kio.serial import entity_reader, entity_writer
from raftmq import ports
from raftmq.client.reader import Reader
from raftmq.client.writer import Writer
from raftmq.local_cluster import LocalCluster, free_ports, wait_until
from raftmq.message import Message
from raftmq.record_batch import encode_batch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka
    from kafka.record.legacy_records import LegacyRecordBatchBuilder

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

pytestmark = pytest.mark.cluster

TOPIC = "kafka-listener"
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One controller, two brokers, each with a Kafka listener; the topic has two
    partitions of two replicas. Stopped by PID at the end, also on failure."""
    cluster = LocalCluster(tmp_path_factory.mktemp("kafka"), controllers=1, brokers=2)
    cluster.start()
    try:
        cluster.wait_ready(timeout_s=60)
        admin = AdminClient({"bootstrap.servers": cluster.layout.kafka_endpoints[0]})
        [future] = admin.create_topics([NewTopic(TOPIC, 2, 2)]).values()
        future.result(timeout=TIMEOUT_S)
        wait_for_leaders(cluster, TOPIC, 2)
        yield cluster
    finally:
        cluster.kill_all()


def wait_for_leaders(cluster: LocalCluster, topic: str, partitions: int) -> None:
    def ready() -> bool:
        with KafkaWire(cluster.layout.kafka_endpoints[0]) as wire:
            response = wire.call(
                3,
                12,
                metadata_v12.MetadataRequest(
                    topics=(metadata_v12.MetadataRequestTopic(topic_id=None, name=topic),),
                    allow_auto_topic_creation=False,
                    include_topic_authorized_operations=False,
                ),
            )
        [t] = response.topics
        return (
            t.error_code == K.none
            and len(t.partitions) == partitions
            and all(p.error_code == K.none and p.leader_id >= 0 for p in t.partitions)
        )

    wait_until(ready, timeout_s=TIMEOUT_S, what=f"leaders of {topic}")


# ---------------------------------------------------------------- a raw Kafka connection


class KafkaWire:
    """A bare Kafka connection for the tests that need exact control of the bytes: kio
    entities framed by hand, answers read by correlation id."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
        self.next_correlation_id = 1

    def __enter__(self) -> KafkaWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def frame(self, api_key: int, version: int, request: Any, correlation_id: int) -> bytes:
        body = io.BytesIO()
        entity_writer(type(request))(body, request)
        flexible = type(request).__flexible__
        header = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"test"
        if flexible:
            header += b"\0"
        payload = header + body.getvalue()
        return struct.pack(">i", len(payload)) + payload

    def send(self, api_key: int, version: int, request: Any) -> int:
        correlation_id = self.next_correlation_id
        self.next_correlation_id += 1
        self.sock.sendall(self.frame(api_key, version, request, correlation_id))
        return correlation_id

    def receive(self) -> tuple[int, bytes]:
        """(correlation id, the rest of the frame); raises ConnectionError on close."""
        size = struct.unpack(">i", self._exactly(4))[0]
        frame = self._exactly(size)
        return struct.unpack_from(">i", frame)[0], frame[4:]

    def _exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ConnectionError("closed by the broker")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def call(self, api_key: int, version: int, request: Any) -> Any:
        correlation_id = self.send(api_key, version, request)
        got, rest = self.receive()
        assert got == correlation_id
        return decode_response(api_key, version, rest)

    def closed_by_broker(self) -> bool:
        """True once the broker closed this connection (reads EOF within the timeout)."""
        self.sock.settimeout(TIMEOUT_S)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def decode_response(api_key: int, version: int, rest: bytes) -> Any:
    schema = load_response_schema(api_key, version)
    # Response header v1 (one byte of tagged fields) for flexible versions but ApiVersions.
    offset = 1 if schema.__flexible__ and api_key != 18 else 0
    entity, _ = entity_reader(schema)(rest, offset)
    return entity


def api_versions() -> Any:
    return api_versions_v3.ApiVersionsRequest(
        client_software_name="test", client_software_version="1"
    )


def produce_request(partition: int, records: bytes, *, acks: int) -> Any:
    return produce_v9.ProduceRequest(
        transactional_id=None,
        acks=acks,
        timeout=timedelta(seconds=10),
        topic_data=(
            produce_v9.TopicProduceData(
                name=TOPIC,
                partition_data=(produce_v9.PartitionProduceData(index=partition, records=records),),
            ),
        ),
    )


def leader_endpoint(cluster: LocalCluster, partition: int) -> str:
    with KafkaWire(cluster.layout.kafka_endpoints[0]) as wire:
        response = wire.call(
            3,
            12,
            metadata_v12.MetadataRequest(
                topics=(metadata_v12.MetadataRequestTopic(topic_id=None, name=TOPIC),),
                allow_auto_topic_creation=False,
                include_topic_authorized_operations=False,
            ),
        )
    brokers = {b.node_id: f"{b.host}:{b.port}" for b in response.brokers}
    [topic] = response.topics
    return brokers[topic.partitions[partition].leader_id]


def log_end_offsets(cluster: LocalCluster) -> list[int]:
    """Each partition's latest offset, through ListOffsets at its leader."""
    ends = []
    for partition in range(2):
        with KafkaWire(leader_endpoint(cluster, partition)) as wire:
            response = wire.call(
                2,
                7,
                list_offsets_v7.ListOffsetsRequest(
                    replica_id=-1,
                    isolation_level=0,
                    topics=(
                        list_offsets_v7.ListOffsetsTopic(
                            name=TOPIC,
                            partitions=(
                                list_offsets_v7.ListOffsetsPartition(
                                    partition_index=partition, current_leader_epoch=-1, timestamp=-1
                                ),
                            ),
                        ),
                    ),
                ),
            )
        [result] = response.topics[0].partitions
        assert result.error_code == K.none
        ends.append(result.offset)
    return ends


def internal_errors(cluster: LocalCluster) -> list[str]:
    """Handler failures the brokers logged (a bug of ours, even though the listener
    survives it by closing the connection)."""
    return [
        line
        for p in cluster.brokers.values()
        for line in p.log_path.read_text(errors="replace").splitlines()
        if "kafka.request_failed" in line or "kafka.connection_failed" in line
    ]


def broker_serves(cluster: LocalCluster) -> bool:
    for endpoint in cluster.layout.kafka_endpoints:
        with KafkaWire(endpoint) as wire:
            if wire.call(18, 3, api_versions()).error_code != K.none:
                return False
    return all(p.running for p in cluster.brokers.values())


# ---------------------------------------------------------------- real Kafka clients


MESSAGES = [
    (b"key-%d" % i, b"value-%d" % i, [("trace", b"%d" % i), ("empty", b"")]) for i in range(20)
]


def test_kafka_python_produces_and_consumes_keyed_messages_with_headers(
    cluster: LocalCluster,
) -> None:
    topic = f"kp-{uuid.uuid4().hex[:8]}"  # auto-created through Metadata
    producer = kafka.KafkaProducer(
        bootstrap_servers=cluster.layout.kafka_endpoints, acks="all", linger_ms=5
    )
    sent = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in MESSAGES]
    metadata = [f.get(timeout=TIMEOUT_S) for f in sent]
    producer.close()
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=cluster.layout.kafka_endpoints,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    consumer.assign([kafka.TopicPartition(topic, 0)])
    got = []
    for record in consumer:
        got.append(record)
        if len(got) == len(MESSAGES):
            break
    consumer.close()
    assert [(r.key, r.value, list(r.headers)) for r in got] == [(k, v, h) for k, v, h in MESSAGES]
    assert [r.offset for r in got] == [m.offset for m in metadata] == list(range(len(MESSAGES)))
    assert [r.timestamp for r in got] == [m.timestamp for m in metadata]


def test_confluent_kafka_idempotent_producer_and_consumer(cluster: LocalCluster) -> None:
    boot = ",".join(cluster.layout.kafka_endpoints)
    producer = Producer({"bootstrap.servers": boot, "enable.idempotence": True, "linger.ms": 5})
    delivered: list[Any] = []
    for key, value, headers in MESSAGES:
        producer.produce(
            TOPIC,
            key=key,
            value=value,
            headers=headers,
            partition=1,
            on_delivery=lambda error, msg: delivered.append((error, msg.offset())),
        )
    assert producer.flush(TIMEOUT_S) == 0
    assert all(error is None for error, _ in delivered)
    first = delivered[0][1]
    assert [offset for _, offset in delivered] == list(range(first, first + len(MESSAGES)))
    consumer = Consumer(
        {"bootstrap.servers": boot, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(TOPIC, 1, first)])
    got: list[Any] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < len(MESSAGES) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            got.append(message)
    consumer.close()
    assert [(m.key(), m.value(), m.headers()) for m in got] == [(k, v, h) for k, v, h in MESSAGES]


def test_confluent_admin_creates_describes_and_deletes_topics(cluster: LocalCluster) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.layout.kafka_endpoints[1]})
    name = f"admin-{uuid.uuid4().hex[:8]}"
    [created] = admin.create_topics(
        [NewTopic(name, 3, 1, config={"retention.ms": "60000"})]
    ).values()
    created.result(timeout=TIMEOUT_S)
    [again] = admin.create_topics([NewTopic(name, 3, 1)]).values()
    with pytest.raises(Exception, match="TOPIC_ALREADY_EXISTS"):
        again.result(timeout=TIMEOUT_S)
    wait_until(lambda: name in admin.list_topics(timeout=10).topics, timeout_s=TIMEOUT_S, what=name)
    assert len(admin.list_topics(timeout=10).topics[name].partitions) == 3
    [configs] = admin.describe_configs([ConfigResource("topic", name)]).values()
    entries = configs.result(timeout=TIMEOUT_S)
    assert entries["retention.ms"].value == "60000" and not entries["retention.ms"].is_default
    assert entries["max.message.bytes"].is_default
    [broker] = admin.describe_configs([ConfigResource("broker", "2")]).values()
    assert broker.result(timeout=TIMEOUT_S)["broker.id"].value == "2"
    [deleted] = admin.delete_topics([name]).values()
    deleted.result(timeout=TIMEOUT_S)
    wait_until(
        lambda: name not in admin.list_topics(timeout=10).topics,
        timeout_s=TIMEOUT_S,
        what=f"{name} deleted",
    )


def test_metadata_gives_every_brokers_kafka_address(cluster: LocalCluster) -> None:
    for endpoint in cluster.layout.kafka_endpoints:
        with KafkaWire(endpoint) as wire:
            for version in (1, 4, 9, 12):
                response = wire.call(3, version, _metadata_request(version))
                assert sorted(f"{b.host}:{b.port}" for b in response.brokers) == sorted(
                    cluster.layout.kafka_endpoints
                )


def _metadata_request(version: int) -> Any:
    from kio.index import load_request_schema

    schema: Any = load_request_schema(3, version)
    fields: dict[str, Any] = {"topics": None}
    if version >= 4:
        fields["allow_auto_topic_creation"] = False
    if 8 <= version <= 10:
        fields["include_cluster_authorized_operations"] = False
    if version >= 8:
        fields["include_topic_authorized_operations"] = False
    return schema(**fields)


# ---------------------------------------------------------------- both front doors


def test_grpc_writer_to_kafka_python_and_kafka_python_to_grpc_reader(cluster: LocalCluster) -> None:
    topic = f"cross-{uuid.uuid4().hex[:8]}"
    written = [
        Message(
            key=b"k1",
            value=b"from grpc",
            headers=[("h", b"1"), ("h", b"2")],
            timestamp_ms=1_700_000_000_123,
        ),
        Message(key=None, value=b"no key", timestamp_ms=1_700_000_000_456),
    ]
    with Writer(
        cluster.layout.broker_endpoints, topic=topic, allow_auto_topic_creation=True
    ) as writer:
        writer.write_messages(*written).result(timeout=TIMEOUT_S)
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=cluster.layout.kafka_endpoints,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    consumer.assign([kafka.TopicPartition(topic, 0)])
    got = [r for _, r in zip(range(2), consumer, strict=False)]
    consumer.close()
    assert [(r.key, r.value, list(r.headers), r.timestamp) for r in got] == [
        (m.key, m.value, list(m.headers), m.timestamp_ms) for m in written
    ]
    # And back: kafka-python writes, our Reader reads the same fields.
    producer = kafka.KafkaProducer(bootstrap_servers=cluster.layout.kafka_endpoints)
    producer.send(
        topic, key=b"k3", value=b"from kafka", headers=[("x", b"y")], timestamp_ms=1_700_000_000_789
    ).get(timeout=TIMEOUT_S)
    producer.close()
    with Reader(
        cluster.layout.broker_endpoints, topic=topic, partition=0, start_offset=2
    ) as reader:
        message = reader.read_message(timeout_ms=10_000)
    assert (message.key, message.value, list(message.headers), message.timestamp_ms) == (
        b"k3",
        b"from kafka",
        [("x", b"y")],
        1_700_000_000_789,
    )


# ---------------------------------------------------------------- the listener's rules


def test_pipelined_requests_are_answered_in_request_order(cluster: LocalCluster) -> None:
    """A long-polling fetch first, then quick requests behind it on one connection: the
    quick ones are handled at once, but every answer leaves in request order."""
    end = log_end_offsets(cluster)[0]
    with KafkaWire(leader_endpoint(cluster, 0)) as wire:
        fetch = fetch_v12.FetchRequest(
            replica_id=-1,
            max_wait=timedelta(milliseconds=1_500),
            min_bytes=1,
            max_bytes=1 << 20,
            isolation_level=0,
            session_id=0,
            session_epoch=-1,
            topics=(
                fetch_v12.FetchTopic(
                    topic=TOPIC,
                    partitions=(
                        fetch_v12.FetchPartition(
                            partition=0,
                            current_leader_epoch=-1,
                            fetch_offset=end,
                            last_fetched_epoch=-1,
                            log_start_offset=-1,
                            partition_max_bytes=1 << 20,
                        ),
                    ),
                ),
            ),
            forgotten_topics_data=(),
            rack_id="",
        )
        frames = [wire.frame(1, 12, fetch, 100)] + [
            wire.frame(18, 3, api_versions(), 101 + i) for i in range(40)
        ]
        started = time.monotonic()
        wire.sock.sendall(b"".join(frames))
        order = [wire.receive()[0] for _ in frames]
        waited_s = time.monotonic() - started
    assert order == list(range(100, 141))
    assert waited_s >= 1.0  # the fetch long-polled, and the others waited behind it


def test_acks_0_gets_no_response_and_is_stored(cluster: LocalCluster) -> None:
    before = log_end_offsets(cluster)[0]
    with KafkaWire(leader_endpoint(cluster, 0)) as wire:
        produce_id = wire.send(
            0, 9, produce_request(0, encode_batch([Message(b"fire and forget")]), acks=0)
        )
        probe_id = wire.send(18, 3, api_versions())
        got, _ = wire.receive()
        assert got == probe_id != produce_id  # nothing came for the produce
    wait_until(
        lambda: log_end_offsets(cluster)[0] == before + 1,
        timeout_s=TIMEOUT_S,
        what="the acks=0 write",
    )


def test_legacy_produce_v2_and_fetch_v2_with_message_sets(cluster: LocalCluster) -> None:
    """kafka-go 0.2's versions: a gzip-wrapped magic 1 message set goes in, is stored as a
    v2 batch (a v4+ fetch sees it as one), and comes back to Fetch v2 as a message set."""
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=1, batch_size=1 << 20)
    builder.append(0, timestamp=1_700_000_000_000, key=b"old", value=b"client")
    message_set = bytes(builder.build())
    body = (
        struct.pack(">hi", 1, 10_000)
        + struct.pack(">i", 1)
        + struct.pack(">h", len(TOPIC))
        + TOPIC.encode()
        + struct.pack(">i", 1)
        + struct.pack(">ii", 0, len(message_set))
        + message_set
    )
    with KafkaWire(leader_endpoint(cluster, 0)) as wire:
        header = struct.pack(">hhih", 0, 2, 7, -1)
        wire.sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        correlation_id, rest = wire.receive()
        assert correlation_id == 7
        # Produce v2's response: [topic [partition, error, base offset, log append time]], throttle.
        (count,) = struct.unpack_from(">i", rest)
        name_length = struct.unpack_from(">h", rest, 4)[0]
        pos = 6 + name_length + 4
        partition, error, base_offset, _ = struct.unpack_from(">ihqq", rest, pos)
        assert (count, partition, error) == (1, 0, 0)
        fetch = (
            struct.pack(">iii", -1, 100, 1)
            + struct.pack(">i", 1)
            + struct.pack(">h", len(TOPIC))
            + TOPIC.encode()
            + struct.pack(">i", 1)
            + struct.pack(">iqi", 0, base_offset, 1 << 20)
        )
        header = struct.pack(">hhih", 1, 2, 8, -1)
        wire.sock.sendall(struct.pack(">i", len(header) + len(fetch)) + header + fetch)
        correlation_id, rest = wire.receive()
    assert correlation_id == 8
    pos = 4 + 4 + 2 + len(TOPIC) + 4
    partition, error, high_watermark, size = struct.unpack_from(">ihqi", rest, pos)
    assert (partition, error) == (0, 0) and high_watermark > base_offset
    records = rest[pos + 18 : pos + 18 + size]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka.record.memory_records import MemoryRecords
    batch = MemoryRecords(records).next_batch()
    [record] = list(batch)
    assert (record.offset, record.key, record.value, record.timestamp) == (
        base_offset,
        b"old",
        b"client",
        1_700_000_000_000,
    )


# ---------------------------------------------------------------- bad input


@dataclass
class BadInput:
    name: str
    data: bytes
    answered: bool  # an answer comes before the close (or no close at all)


def bad_inputs() -> list[BadInput]:
    header = struct.pack(">hhih", 18, 3, 1, -1)
    corrupt_batch = bytearray(encode_batch([Message(b"x")]))
    corrupt_batch[-1] ^= 0xFF
    return [
        BadInput("size below a header", struct.pack(">i", 3) + b"abc", False),
        BadInput("negative size", struct.pack(">i", -7), False),
        BadInput("oversized frame", struct.pack(">i", 200 * 1024 * 1024) + b"\0" * 64, False),
        BadInput("truncated frame", struct.pack(">i", 100) + header, False),
        BadInput("unknown api key", _frame(struct.pack(">hhih", 999, 0, 1, -1)), False),
        BadInput("unserved version", _frame(struct.pack(">hhih", 0, 99, 1, -1)), False),
        BadInput(
            "garbage body", _frame(struct.pack(">hhih", 0, 9, 1, -1) + b"\0\xff\xfe" * 10), False
        ),
        BadInput("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        BadInput(
            "client id longer than the frame", _frame(struct.pack(">hhih", 18, 3, 1, 400)), False
        ),
    ]


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@pytest.mark.parametrize("bad", bad_inputs(), ids=lambda b: b.name)
def test_bad_input_closes_the_connection_and_stores_nothing(
    cluster: LocalCluster, bad: BadInput
) -> None:
    before = log_end_offsets(cluster)
    for endpoint in cluster.layout.kafka_endpoints:
        with KafkaWire(endpoint) as wire:
            wire.sock.sendall(bad.data)
            if bad.name == "truncated frame":
                wire.sock.shutdown(socket.SHUT_WR)  # the client goes away mid-request
            assert wire.closed_by_broker()
    assert broker_serves(cluster)
    assert log_end_offsets(cluster) == before
    assert not internal_errors(cluster)


def test_an_unsupported_api_versions_version_is_answered_in_v0(cluster: LocalCluster) -> None:
    with KafkaWire(cluster.layout.kafka_endpoints[0]) as wire:
        wire.sock.sendall(_frame(struct.pack(">hhih", 18, 99, 5, -1) + b"\x99future"))
        correlation_id, rest = wire.receive()
        response, _ = entity_reader(api_versions_v0.ApiVersionsResponse)(rest, 0)
        assert correlation_id == 5 and response.error_code == K.unsupported_version
        assert {(k.api_key, k.min_version, k.max_version) for k in response.api_keys} >= {
            (0, 2, 9),
            (1, 2, 12),
            (3, 1, 12),
            (18, 0, 3),
        }
        # The connection stays usable: the client retries at a version we gave it.
        assert wire.call(18, 3, api_versions()).error_code == K.none


def test_a_corrupt_batch_is_an_error_answer_and_stores_nothing(cluster: LocalCluster) -> None:
    before = log_end_offsets(cluster)
    batch = bytearray(encode_batch([Message(b"payload")]))
    batch[-1] ^= 0xFF
    with KafkaWire(leader_endpoint(cluster, 0)) as wire:
        response = wire.call(0, 9, produce_request(0, bytes(batch), acks=-1))
    [partition] = response.responses[0].partition_responses
    assert partition.error_code == K.corrupt_message
    assert log_end_offsets(cluster) == before


FUZZ_KEYS = [
    (18, 3),
    (18, 0),
    (0, 3),
    (0, 9),
    (0, 2),
    (1, 4),
    (1, 12),
    (1, 2),
    (2, 1),
    (2, 7),
    (23, 4),
]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.binary(min_size=1, max_size=64),
        st.tuples(st.sampled_from(FUZZ_KEYS), st.binary(max_size=96)).map(
            lambda t: _frame(struct.pack(">hhih", t[0][0], t[0][1], 1, -1) + t[1])
        ),
    )
)
def test_fuzzed_frames_never_stop_the_broker_or_store_a_byte(
    cluster: LocalCluster, data: bytes
) -> None:
    """Random frames at a live listener (headers of served APIs with random bodies, and
    random bytes): each gets an answer or a closed connection, within the timeout."""
    before = log_end_offsets(cluster)
    with KafkaWire(cluster.layout.kafka_endpoints[0]) as wire:
        wire.sock.sendall(data)
        wire.sock.shutdown(socket.SHUT_WR)
        wire.sock.settimeout(TIMEOUT_S)
        while wire.sock.recv(65536):
            pass  # answers, until the broker closes
    assert broker_serves(cluster)
    assert log_end_offsets(cluster) == before
    assert not internal_errors(cluster)


# ---------------------------------------------------------------- startup


def test_a_taken_kafka_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    [grpc_port, controller_port] = free_ports(2)
    with ports.held_port() as kafka_port:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "raftmq.cli.main",
                "broker",
                "--node-id=1",
                f"--listen=127.0.0.1:{grpc_port}",
                f"--kafka-listen=127.0.0.1:{kafka_port}",
                f"--controllers=127.0.0.1:{controller_port}",
                f"--data-dir={tmp_path / 'b'}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"error: 127.0.0.1:{kafka_port} is already in use" in result.stderr


def test_raftmq_up_serves_kafka_and_prints_its_bootstrap(raftmq_up: Any) -> None:
    up = raftmq_up()
    line = up.wait_for_line("Kafka bootstrap:")
    bootstrap = line.split("Kafka bootstrap:", 1)[1].strip()
    assert bootstrap == f"127.0.0.1:{up.base_port + 400}"
    producer = kafka.KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    sent = producer.send("up-kafka", key=b"k", value=b"v").get(timeout=TIMEOUT_S)
    producer.close()
    with KafkaWire(bootstrap) as wire:
        response = wire.call(3, 12, _metadata_request(12))
    assert sorted(b.port for b in response.brokers) == [up.base_port + 400 + i for i in range(3)]
    assert sent.offset == 0
