"""The client library against a real cluster: Writer, Reader, Conn and Admin, every
compression codec, headers and timestamps, async completions, timeouts, auto topic
creation, several topics from one Writer, and the idempotent producer across a partition
leader's kill -9 (no duplicate, no loss)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from raftmq import (
    Admin,
    Conn,
    FirstOffset,
    Hash,
    LastOffset,
    Message,
    Reader,
    WriteError,
    Writer,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.local_cluster import LocalCluster, free_ports, wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path_factory.mktemp("client-cluster"),
        controllers=3,
        brokers=3,
        broker_args=["--replica-lag-time-max-ms=3000", "--default-replication-factor=3"],
    )
    try:
        cluster.start()
        cluster.wait_ready(timeout_s=60)
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture
def brokers(cluster: LocalCluster) -> list[str]:
    return cluster.layout.broker_endpoints


def read_all(brokers: list[str], topic: str, partition: int, count: int) -> list[Message]:
    with Reader(brokers, topic, partition, start_offset=FirstOffset) as reader:
        return [reader.read_message(timeout_ms=10_000) for _ in range(count)]


def test_messages_round_trip_with_keys_headers_and_times(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("round-trip", partitions=3, replication_factor=3)
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    sent = [
        Message(b"v0", key=b"k0", headers=[("trace", b"t0"), ("trace", b"t1")], time=when),
        Message("v1 text", key=None, headers=[("empty", None)]),
        Message(None, key=b"k2"),  # a tombstone
    ]
    with Writer(brokers, topic="round-trip", balancer=Hash()) as writer:
        writer.write_messages(*sent)
    assert all(m.offset >= 0 and m.partition is not None for m in sent)
    for original in sent:
        assert original.partition is not None
        with Reader(brokers, "round-trip", original.partition) as reader:
            reader.set_offset(original.offset)
            got = reader.read_message(timeout_ms=10_000)
        assert (got.key, got.value, got.headers) == (original.key, original.value, original.headers)
        assert got.offset == original.offset and got.topic == "round-trip"
        if original is sent[0]:
            assert got.time == when
        else:  # no time given: the writer stamped the current time
            assert got.time is not None
            assert abs((datetime.now(UTC) - got.time).total_seconds()) < 60


def test_several_batches_of_one_partition_in_one_request_get_their_own_offsets(
    brokers: list[str],
) -> None:
    # 25 messages in batches of 10: one produce request carries three batches of the one
    # partition, and each message reports its own offset.
    with Admin(brokers) as admin:
        admin.create_topic("many-batches", partitions=1, replication_factor=3)
    sent = [Message(f"m{i}") for i in range(25)]
    with Writer(brokers, topic="many-batches", batch_size=10) as writer:
        writer.write_messages(*sent)
        assert writer.stats().batches == 3
    assert [m.offset for m in sent] == list(range(25))
    stored = read_all(brokers, "many-batches", 0, 25)
    assert [(m.offset, m.value) for m in stored] == [(m.offset, m.value) for m in sent]


def test_raftmq_produce_json_prints_each_lines_own_offset(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("produce-json", partitions=1, replication_factor=3)
    lines = "".join(f"line {i}\n" for i in range(1_200))  # batches of 500: 3 per request
    done = subprocess.run(
        [sys.executable, "-m", "raftmq.cli.main", "produce", "produce-json", "--json"],
        input=lines,
        capture_output=True,
        text=True,
        env=dict(os.environ, RAFTMQ_BOOTSTRAP=",".join(brokers)),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [p["value"] for p in printed] == [f"line {i}" for i in range(1_200)]
    assert [p["offset"] for p in printed] == list(range(1_200))


def test_the_same_key_goes_to_the_same_partition(brokers: list[str]) -> None:
    with Writer(brokers, topic="keyed", balancer=Hash(), allow_auto_topic_creation=True) as writer:
        messages = [Message(f"v{i}", key=f"user-{i % 3}") for i in range(30)]
        writer.write_messages(*messages)
    by_key: dict[bytes | None, set[int | None]] = {}
    for m in messages:
        by_key.setdefault(m.key, set()).add(m.partition)
    assert all(len(p) == 1 for p in by_key.values())


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_round_trips(brokers: list[str], compression: str | None) -> None:
    topic = f"codec-{compression or 'none'}"
    with Admin(brokers) as admin:
        admin.create_topic(topic, partitions=1, replication_factor=3)
    values = [f"value {i} ".encode() * 20 for i in range(200)]
    with Writer(brokers, topic=topic, compression=compression, batch_size=50) as writer:
        writer.write_messages(
            *(Message(v, headers=[("i", str(i).encode())]) for i, v in enumerate(values))
        )
    got = read_all(brokers, topic, 0, len(values))
    assert [m.value for m in got] == values
    assert [m.headers for m in got] == [(("i", str(i).encode()),) for i in range(len(values))]


def test_an_async_writer_reports_a_failure_through_its_callback(brokers: list[str]) -> None:
    outcomes: list[tuple[int, RaftmqError | None]] = []
    done = threading.Event()

    def completion(messages: list[Message], error: RaftmqError | None) -> None:
        outcomes.append((len(messages), error))
        done.set()

    with Writer(
        brokers,
        topic="no-such-topic",
        async_=True,
        completion=completion,
        write_timeout_ms=1_500,
        allow_auto_topic_creation=False,
    ) as writer:
        future = writer.write_messages(Message("a"), Message("b"))
        assert done.wait(10)
        with pytest.raises(WriteError) as e:
            future.result(timeout=10)
    assert sum(n for n, _ in outcomes) == 2
    assert all(
        err is not None and err.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION for _, err in outcomes
    )
    assert len(e.value.errors) == 2


def test_a_write_with_no_reachable_broker_fails_within_its_timeout() -> None:
    [port] = free_ports(1)
    started = time.monotonic()
    with (
        pytest.raises(WriteError) as e,
        Writer([f"127.0.0.1:{port}"], topic="t", write_timeout_ms=1_000) as writer,
    ):
        writer.write_messages(Message("x"))
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    assert e.value.errors[0][1].code in (
        ErrorCode.BROKER_NOT_AVAILABLE,
        ErrorCode.REQUEST_TIMED_OUT,
    )


def test_a_topic_on_the_writer_and_on_a_message_is_refused(brokers: list[str]) -> None:
    with Writer(brokers, topic="a") as writer, pytest.raises(ValueError, match="not both"):
        writer.write_messages(Message("x", topic="b"))
    with Writer(brokers) as writer, pytest.raises(ValueError, match="no topic"):
        writer.write_messages(Message("x"))


def test_the_same_messages_can_be_written_again(brokers: list[str]) -> None:
    # The seed's retry loop writes the same Message objects again; once written they
    # carry the Writer's topic, which is no conflict.
    with Writer(brokers, topic="rewrite", allow_auto_topic_creation=True) as writer:
        sent = [Message("a"), Message("b")]
        writer.write_messages(*sent)
        assert [(m.topic, m.offset) for m in sent] == [("rewrite", 0), ("rewrite", 1)]
        writer.write_messages(*sent)
        assert [m.offset for m in sent] == [2, 3]
        with pytest.raises(ValueError, match="not both"):
            writer.write_messages(Message("c", topic="another"))
    assert [m.value for m in read_all(brokers, "rewrite", 0, 4)] == [b"a", b"b"] * 2


def test_one_writer_writes_to_several_topics(brokers: list[str]) -> None:
    with Writer(brokers, allow_auto_topic_creation=True) as writer:
        writer.write_messages(
            Message("to a", topic="multi-a"),
            Message("to b", topic="multi-b"),
            Message("a2", topic="multi-a"),
        )
    assert [m.value for m in read_all(brokers, "multi-a", 0, 2)] == [b"to a", b"a2"]
    assert [m.value for m in read_all(brokers, "multi-b", 0, 1)] == [b"to b"]


def test_reader_positions_lag_and_times(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("positions", partitions=1, replication_factor=3)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    with Writer(brokers, topic="positions") as writer:
        writer.write_messages(
            *(Message(f"m{i}", time=base + timedelta(minutes=i)) for i in range(10))
        )
    with Reader(brokers, "positions", 0) as reader:
        reader.set_offset_at(base + timedelta(minutes=4, seconds=30))
        assert reader.read_message(timeout_ms=10_000).value == b"m5"
        assert reader.lag == 4
        assert reader.read_lag() == 4
        reader.set_offset(LastOffset)
        with pytest.raises(TimeoutError):
            reader.read_message(timeout_ms=300)
        reader.set_offset(2)
        assert [m.offset for m in (reader.read_message(timeout_ms=10_000) for _ in range(3))] == [
            2,
            3,
            4,
        ]
        assert reader.stats().messages == 4
    with Admin(brokers) as admin:
        assert admin.list_offsets("positions", FirstOffset) == {0: 0}
        assert admin.list_offsets("positions", LastOffset) == {0: 10}


def test_conn_is_kafka_gos_conn(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("conn", partitions=1, replication_factor=3)
    with Conn.dial_leader(brokers, "conn", 0) as conn:
        base = conn.write_messages(Message("one"), Message("two"))
        assert base == 0
        assert [m.value for m in conn.read_batch(0)] == [b"one", b"two"]
        assert conn.read_offsets() == (0, 2)


def test_an_idempotent_writer_loses_and_duplicates_nothing_across_a_leader_kill(
    cluster: LocalCluster, brokers: list[str]
) -> None:
    with Admin(brokers) as admin:
        admin.create_topic(
            "exactly-once", partitions=1, replication_factor=3, configs={"min.insync.replicas": "2"}
        )
    acknowledged: list[bytes] = []
    failed: list[bytes] = []
    stop = threading.Event()

    def produce() -> None:
        with Writer(
            brokers, topic="exactly-once", write_timeout_ms=20_000, max_attempts=50
        ) as writer:
            n = 0
            while not stop.is_set():
                batch = [Message(f"v{n + i}") for i in range(5)]
                n += 5
                try:
                    writer.write_messages(*batch)
                    acknowledged.extend(m.value or b"" for m in batch)
                except WriteError as e:
                    failed.extend(m.value or b"" for m, _ in e.errors)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acknowledged) >= 200, timeout_s=30, what="writes before the kill")
        with Admin(brokers) as admin:
            [topic] = admin.describe_topics("exactly-once")
        leader = topic.partitions[0].leader
        cluster.brokers[leader].kill()
        at_kill = len(acknowledged)
        wait_until(
            lambda: len(acknowledged) >= at_kill + 200, timeout_s=60, what="writes after the kill"
        )
        cluster.brokers[leader].start()
    finally:
        stop.set()
        thread.join(timeout=60)
    with Admin(brokers) as admin:
        end = admin.list_offsets("exactly-once", LastOffset)[0]
    stored = [m.value for m in read_all(brokers, "exactly-once", 0, end)]
    assert len(stored) == len(set(stored)), "a message was stored twice"
    missing = set(acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    assert failed == [] or set(failed).isdisjoint(set(acknowledged))
