"""The client library against a real cluster: Writer, Reader, Conn and Admin and their
asyncio twins, every compression codec, headers and timestamps, offsets of several batches
per request, async completions, timeouts, auto topic creation (and brokers forbidding it),
several topics from one Writer, stats, a stale leader epoch fenced, and the idempotent
producer across a partition leader's kill -9 (no duplicate, no loss)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from raftmq import (
    Admin,
    AsyncAdmin,
    AsyncConn,
    AsyncReader,
    AsyncWriter,
    Conn,
    FirstOffset,
    Hash,
    LastOffset,
    Message,
    Reader,
    WriteError,
    Writer,
)
from raftmq.client import protocol
from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.brokers import BrokerPool
from raftmq.client.conn import decode_from
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError, UnknownTopicOrPartitionError
from raftmq.local_cluster import LocalCluster, free_ports, wait_until
from raftmq.metadata import PartitionRecord
from raftmq.record_batch import encode_batch
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import controller_pb2 as cpb

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


def test_auto_creation_of_a_reserved_name_fails_at_once_with_invalid_topic_name(
    brokers: list[str],
) -> None:
    # "__" names are the cluster's own. The refusal comes back in the Metadata answer, so
    # the Writer fails with the reason instead of waiting write_timeout_ms for a topic
    # that can never appear and then saying UNKNOWN_TOPIC_OR_PARTITION.
    with (
        pytest.raises(WriteError) as e,
        Writer(brokers, topic="__sneaky", allow_auto_topic_creation=True) as writer,
    ):
        writer.write_messages(Message("x"))
    [(_, cause)] = e.value.errors
    assert cause.code == ErrorCode.INVALID_TOPIC_NAME and "reserved" in cause.message
    with Admin(brokers) as admin:
        assert "__sneaky" not in admin.list_topics()
    # A good name is still created on the same Writer path.
    with Writer(brokers, topic="after-sneaky", allow_auto_topic_creation=True) as writer:
        writer.write_messages(Message("y"))


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
    cluster.wait_ready(timeout_s=60)  # every broker back for the tests after this one
    with Admin(brokers) as admin:
        end = admin.list_offsets("exactly-once", LastOffset)[0]
    stored = [m.value for m in read_all(brokers, "exactly-once", 0, end)]
    assert len(stored) == len(set(stored)), "a message was stored twice"
    missing = set(acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    assert failed == [] or set(failed).isdisjoint(set(acknowledged))


def test_an_async_reader_reads_on_across_a_kill_of_the_leader_its_fetch_stream_goes_to(
    cluster: LocalCluster, brokers: list[str]
) -> None:
    with Admin(brokers) as admin:
        admin.create_topic(
            "read-across-kill",
            partitions=1,
            replication_factor=3,
            configs={"min.insync.replicas": "2"},
        )
    with Writer(brokers, topic="read-across-kill") as writer:
        writer.write_messages(*(Message(b"before-%d" % i) for i in range(50)))
    with Admin(brokers) as admin:
        [topic] = admin.describe_topics("read-across-kill")
    leader = topic.partitions[0].leader

    async def main() -> list[bytes]:
        values: list[bytes] = []
        async with AsyncReader(
            brokers, "read-across-kill", 0, start_offset=FirstOffset, max_wait_ms=200
        ) as reader:
            # Bound: 50 reads, each within its timeout.
            for _ in range(50):
                values.append((await reader.read_message(timeout_ms=10_000)).value or b"")
            cluster.brokers[leader].kill()  # the broker its FetchStream is open to
            async with AsyncWriter(
                brokers, topic="read-across-kill", write_timeout_ms=30_000
            ) as writer:
                await writer.write_messages(*(Message(b"after-%d" % i) for i in range(50)))
            for _ in range(50):
                values.append((await reader.read_message(timeout_ms=30_000)).value or b"")
        return values

    try:
        values = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        cluster.brokers[leader].start()
    cluster.wait_ready(timeout_s=60)  # every broker back for the tests after this one
    assert values == [b"before-%d" % i for i in range(50)] + [b"after-%d" % i for i in range(50)]


def test_writer_stats_count_messages_bytes_batches_errors_and_batch_sizes(
    brokers: list[str],
) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("stats", partitions=1, replication_factor=3)
    with Writer(brokers, topic="stats", batch_size=10) as writer:
        writer.write_messages(*(Message(f"m{i}") for i in range(25)))
        with pytest.raises(WriteError):
            writer.write_messages(Message("x", partition=3))  # no such partition
        stats = writer.stats()
    assert (stats.messages, stats.batches, stats.errors, stats.retries) == (25, 3, 1, 0)
    assert stats.bytes > 25 * len(b"m10")
    assert (stats.batch_messages_min, stats.batch_messages_max) == (5, 10)
    assert stats.batch_messages_avg == pytest.approx(25 / 3)
    assert stats.batch_messages_histogram == {8: 1, 16: 2}  # batches of 5, 10 and 10


def test_admin_deletes_a_topic(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("doomed", partitions=2, replication_factor=3)
        assert "doomed" in admin.list_topics()
        admin.delete_topic("doomed")
        assert "doomed" not in admin.list_topics()
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.describe_topics("doomed")
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.delete_topic("doomed")


def test_read_lag_resolves_the_position_first(brokers: list[str]) -> None:
    with Writer(brokers, topic="lag", allow_auto_topic_creation=True) as writer:
        writer.write_messages(*(Message(f"m{i}") for i in range(6)))
    with Reader(brokers, "lag", 0) as reader:  # at FirstOffset, not resolved yet
        assert reader.read_lag() == 6
        assert reader.offset == 0

    async def main() -> int:
        async with AsyncReader(brokers, "lag", 0) as reader:
            return await reader.read_lag()

    assert asyncio.run(main()) == 6


def test_readers_refuse_arguments_of_the_other_mode() -> None:
    with pytest.raises(TypeError, match="exclusive"):
        Reader(["127.0.0.1:1"], "t", 0, group_id="g")
    with pytest.raises(TypeError, match="auto_offset_reset"):
        AsyncReader(["127.0.0.1:1"], "t", group_id="g", start_offset=FirstOffset)
    with pytest.raises(TypeError, match="needs a consumer group"):
        Reader(["127.0.0.1:1"], "t", group_topics=["t"])
    with Reader(["127.0.0.1:1"], "t") as reader, pytest.raises(RuntimeError, match="group"):
        reader.commit_messages(Message(b"x"))


def test_brokers_can_forbid_auto_topic_creation(make_cluster: type[LocalCluster]) -> None:
    cluster = make_cluster(controllers=1, brokers=1, broker_args=["--no-auto-create-topics"])
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    brokers = cluster.layout.broker_endpoints
    with (
        pytest.raises(WriteError) as e,
        Writer(
            brokers, topic="wanted", allow_auto_topic_creation=True, write_timeout_ms=2_000
        ) as w,
    ):
        w.write_messages(Message("x"))
    assert {cause.code for _, cause in e.value.errors} == {ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
    with Admin(brokers) as admin:
        assert "wanted" not in admin.list_topics()


def test_a_reader_with_a_stale_leader_epoch_is_fenced_then_recovers(
    cluster: LocalCluster, brokers: list[str]
) -> None:
    # The Reader sends the leader epoch its metadata shows. Leadership goes away from the
    # preferred leader and back (two elections): the same broker leads again, with a newer
    # epoch, and the Reader's next fetch there is fenced instead of being served.
    with Admin(brokers) as admin:
        created = admin.create_topic("fenced", partitions=1, replication_factor=3)
        preferred = created.partitions[0].ar[0]

        def partition() -> PartitionRecord:
            [topic] = admin.describe_topics("fenced")
            return topic.partitions[0]

        with Writer(brokers, topic="fenced") as writer:
            writer.write_messages(Message("before"))
        reader = Reader(brokers, "fenced", 0)
        try:
            assert reader.read_message(timeout_ms=10_000).value == b"before"
            epoch_read = partition().leader_epoch
            cluster.brokers[preferred].stop()  # a controlled shutdown moves leadership
            wait_until(lambda: partition().leader != preferred, timeout_s=30, what="a new leader")
            cluster.brokers[preferred].start()
            wait_until(
                lambda: preferred in partition().isr,
                timeout_s=60,
                what="the restarted broker in sync",
            )
            elect_preferred_leader(cluster, "fenced")
            wait_until(
                lambda: partition().leader == preferred,
                timeout_s=30,
                what="the preferred leader back",
            )
            assert partition().leader_epoch >= epoch_read + 2
            with Writer(brokers, topic="fenced") as writer:
                writer.write_messages(Message("after"))
            assert reader.read_message(timeout_ms=20_000).value == b"after"
            assert reader.stats().errors_by_code.get("FENCED_LEADER_EPOCH") == 1
        finally:
            reader.close()
            if not cluster.brokers[preferred].running:  # a failure midway: for later tests
                cluster.brokers[preferred].start()


def elect_preferred_leader(cluster: LocalCluster, topic: str) -> None:
    pool = EndpointPool(cluster.layout.controller_endpoints, service="controller")
    try:
        response = call_with_failover(
            pool,
            "ElectLeaders",
            cpb.ElectLeadersRequest(
                type=cpb.PREFERRED,
                partitions=[cpb.TopicPartition(topic=topic, partition=0)],
                request_id=uuid.uuid4().hex,
            ),
            timeout_ms=15_000,
        )
    finally:
        pool.close()
    assert response.error.code == 0, response.error


# ---------------------------------------------------------------- the asyncio twins


def test_an_async_writer_reports_a_failure_through_its_callback_too(brokers: list[str]) -> None:
    outcomes: list[tuple[int, RaftmqError | None]] = []

    async def main() -> WriteError:
        async with AsyncWriter(
            brokers,
            topic="no-such-topic-async",
            async_=True,
            write_timeout_ms=1_500,
            completion=lambda messages, error: outcomes.append((len(messages), error)),
        ) as writer:
            future = await writer.write_messages(Message("a"), Message("b"))
            with pytest.raises(WriteError) as e:
                await future
        return e.value

    error = asyncio.run(main())
    assert len(error.errors) == 2
    assert sum(n for n, _ in outcomes) == 2
    assert all(
        err is not None and err.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION for _, err in outcomes
    )


def test_an_async_reader_iterates_with_async_for(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("async-for", partitions=1, replication_factor=3)

    async def main() -> list[bytes | None]:
        async with AsyncWriter(brokers, topic="async-for") as writer:
            await writer.write_messages(*(Message(f"m{i}") for i in range(5)))
        got: list[bytes | None] = []
        async with AsyncReader(brokers, "async-for", 0, start_offset=FirstOffset) as reader:
            async for message in reader:
                got.append(message.value)
                if len(got) == 5:
                    break
            assert reader.offset == 5 and await reader.read_lag() == 0
            assert reader.stats().messages == 5
        return got

    assert asyncio.run(asyncio.wait_for(main(), 60)) == [f"m{i}".encode() for i in range(5)]


def test_async_conn_has_the_raw_calls(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("async-conn", partitions=1, replication_factor=3)

    async def main() -> None:
        conn = await AsyncConn.dial_leader(brokers, "async-conn", 0)
        async with conn:
            assert await conn.write_messages(Message("one"), Message("two")) == 0
            assert [m.value for m in await conn.read_batch(0)] == [b"one", b"two"]
            assert await conn.read_offsets() == (0, 2)
            [produced] = await conn.produce([("async-conn", 0, encode_batch([Message("three")]))])
            assert (produced.error, produced.base_offset) == (None, 2)
            [fetched] = await conn.fetch([("async-conn", 0, 2)], max_wait_ms=0)
            assert fetched.error is None and fetched.high_watermark == 3
            assert [m.value for m in decode_from(fetched.records, "async-conn", 0, 2)] == [b"three"]
            [latest] = await conn.list_offsets([("async-conn", 0, LastOffset)])
            assert latest.offset == 3
            metadata = await conn.metadata(["async-conn"])
            assert metadata.leader("async-conn", 0)[0] == conn.address

    asyncio.run(asyncio.wait_for(main(), 60))


def test_async_admin_creates_describes_lists_offsets_and_deletes(brokers: list[str]) -> None:
    async def main() -> None:
        async with AsyncAdmin(brokers) as admin:
            created = await admin.create_topic("async-admin", partitions=2, replication_factor=3)
            assert len(created.partitions) == 2
            [described] = await admin.describe_topics("async-admin")
            assert described.name == "async-admin" and len(described.partitions) == 2
            async with AsyncWriter(brokers, topic="async-admin") as writer:
                await writer.write_messages(Message("p0", partition=0), Message("p1", partition=1))
            assert await admin.list_offsets("async-admin", LastOffset) == {0: 1, 1: 1}
            assert await admin.list_offsets("async-admin", FirstOffset) == {0: 0, 1: 0}
            assert "async-admin" in await admin.list_topics()
            assert (await admin.cluster_status()).cluster_id
            await admin.delete_topic("async-admin")
            assert "async-admin" not in await admin.list_topics()
            with pytest.raises(UnknownTopicOrPartitionError):
                await admin.describe_topics("async-admin")

    asyncio.run(asyncio.wait_for(main(), 60))


# ---------------------------------------------------------------- the produce stream


class Answers:
    """What a ProduceStream answered, by request number, with an event per request."""

    def __init__(self) -> None:
        self.by_request: dict[int, pb.ProduceResponse | RaftmqError] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def to(self, number: int) -> Callable[[pb.ProduceResponse | RaftmqError], None]:
        def on_answer(answer: pb.ProduceResponse | RaftmqError) -> None:
            with self._changed:
                assert number not in self.by_request, "answered twice"
                self.by_request[number] = answer
                self._changed.notify_all()

        return on_answer

    def wait(self, count: int, timeout_s: float = 20.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.by_request) >= count, timeout_s), (
                f"{len(self.by_request)} of {count} requests answered"
            )


def one_record_request(topic: str, payload: bytes, *, acks: int = -1) -> pb.ProduceRequest:
    return protocol.produce_request(
        [(topic, 0, -1, encode_batch([Message(payload)]))], acks=acks, timeout_ms=10_000
    )


def test_the_produce_stream_pipelines_requests_and_answers_each_one(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("stream", partitions=1, replication_factor=3)
    leader = Conn.dial_leader(brokers, "stream", 0)
    pool = BrokerPool(brokers)
    try:
        stream = pool.produce_stream(leader.address)
        assert stream is not None  # this broker has ProduceStream
        answers = Answers()
        # 30 acks=all requests sent before any answer is awaited.
        for n in range(30):
            stream.send(
                one_record_request("stream", b"p%d" % n), timeout_ms=15_000, on_answer=answers.to(n)
            )
        answers.wait(30)
        offsets = []
        for n in range(30):
            answer = answers.by_request[n]
            assert isinstance(answer, pb.ProduceResponse), answer
            [result] = protocol.produce_results(answer)
            assert result.error is None
            offsets.append(result.base_offset)
        assert sorted(offsets) == list(range(30))
        # acks=0 requests are written and never answered; an acks=all one after them is.
        for n in range(5):
            stream.send(
                one_record_request("stream", b"z%d" % n, acks=0), timeout_ms=15_000, on_answer=None
            )
        stream.send(
            one_record_request("stream", b"last"), timeout_ms=15_000, on_answer=answers.to(100)
        )
        answers.wait(31)
        assert set(answers.by_request) == {*range(30), 100}
        wait_until(
            lambda: leader.read_offsets()[1] == 36,
            timeout_s=10,
            what="the acks=0 writes in the high watermark",
        )
        # A corrupt batch gets its partition's error; the stream goes on serving.
        corrupt = bytearray(encode_batch([Message(b"bad")]))
        corrupt[-1] ^= 0xFF
        stream.send(
            protocol.produce_request(
                [("stream", 0, -1, bytes(corrupt))], acks=-1, timeout_ms=10_000
            ),
            timeout_ms=15_000,
            on_answer=answers.to(101),
        )
        stream.send(
            one_record_request("stream", b"after"), timeout_ms=15_000, on_answer=answers.to(102)
        )
        answers.wait(33)
        bad, good = answers.by_request[101], answers.by_request[102]
        assert isinstance(bad, pb.ProduceResponse) and isinstance(good, pb.ProduceResponse)
        [bad_result] = protocol.produce_results(bad)
        assert bad_result.error is not None and bad_result.error.code == ErrorCode.CORRUPT_MESSAGE
        [good_result] = protocol.produce_results(good)
        assert good_result.error is None and good_result.base_offset == 36
        assert pool.produce_stream(leader.address) is stream
    finally:
        pool.close()
        leader.close()
    # Closed with the pool: a send now fails at once.
    late = Answers()
    stream.send(one_record_request("stream", b"late"), timeout_ms=1_000, on_answer=late.to(0))
    late.wait(1, timeout_s=1)
    failure = late.by_request[0]
    assert isinstance(failure, RaftmqError) and failure.code == ErrorCode.BROKER_NOT_AVAILABLE


# ---------------------------------------------------------------- the fetch stream


def test_the_fetch_stream_answers_each_fetch_when_it_completes(brokers: list[str]) -> None:
    """A long poll past the end and a fetch of records already there, on one FetchStream:
    the second is answered first, the first when a write fills it; a follower's fetch and
    an unknown partition get their errors, and the stream goes on serving."""
    with Admin(brokers) as admin:
        admin.create_topic("fetch-stream", partitions=1, replication_factor=3)
    with Writer(brokers, topic="fetch-stream") as writer:
        writer.write_messages(*(Message(b"m%d" % i) for i in range(3)))
    leader = Conn.dial_leader(brokers, "fetch-stream", 0)
    leader.close()

    def fetch(offset: int, *, max_wait_ms: int, topic: str = "fetch-stream") -> pb.FetchRequest:
        return protocol.fetch_request(
            [(topic, 0, offset, -1)],
            max_wait_ms=max_wait_ms,
            min_bytes=1,
            max_bytes=1 << 20,
            partition_max_bytes=1 << 20,
        )

    async def main() -> None:
        pool = AsyncBrokerPool(brokers)
        try:
            stream = pool.fetch_stream(leader.address)
            assert stream is not None  # this broker has FetchStream
            order: list[str] = []
            answers: dict[str, pb.FetchResponse | RaftmqError] = {}
            done = asyncio.Event()

            def to(name: str) -> Callable[[pb.FetchResponse | RaftmqError], None]:
                def on_answer(answer: pb.FetchResponse | RaftmqError) -> None:
                    order.append(name)
                    answers[name] = answer
                    if len(answers) == 4:
                        done.set()

                return on_answer

            stream.send(fetch(3, max_wait_ms=10_000), timeout_ms=15_000, on_answer=to("poll"))
            stream.send(fetch(0, max_wait_ms=10_000), timeout_ms=15_000, on_answer=to("there"))
            follower = fetch(0, max_wait_ms=0)
            follower.replica_id = 2
            stream.send(follower, timeout_ms=15_000, on_answer=to("follower"))
            stream.send(
                fetch(0, max_wait_ms=0, topic="no-such-topic"),
                timeout_ms=15_000,
                on_answer=to("unknown"),
            )
            for _ in range(100):  # bound: 5 s for the three answers that need no write
                if len(answers) == 3:
                    break
                await asyncio.sleep(0.05)
            assert sorted(order) == ["follower", "there", "unknown"], order
            async with AsyncWriter(brokers, topic="fetch-stream") as writer:
                await writer.write_messages(Message(b"m3"))
            async with asyncio.timeout(10):
                await done.wait()
            assert order[-1] == "poll"
            results = {}
            for name, answer in answers.items():
                assert isinstance(answer, pb.FetchResponse), (name, answer)
                [results[name]] = protocol.fetch_results(answer)
            assert [m.value for m in decode_from(results["there"].records, "fetch-stream", 0, 0)][
                :3
            ] == [b"m0", b"m1", b"m2"]
            assert [
                m.value for m in decode_from(results["poll"].records, "fetch-stream", 0, 3)
            ] == [b"m3"]
            follower_error = results["follower"].error
            assert follower_error is not None
            assert follower_error.code == ErrorCode.INVALID_REQUEST
            unknown_error = results["unknown"].error
            assert unknown_error is not None
            assert unknown_error.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            assert pool.fetch_stream(leader.address) is stream and not stream.failed
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# ---------------------------------------------------------------- the sync Writer's direct path


def sending_threads(writer: Writer) -> list[str]:
    """Record the name of the thread that hands each produce request to its stream."""
    names: list[str] = []
    send = writer._send

    def recorded(item: Any) -> None:
        names.append(threading.current_thread().name)
        send(item)

    writer._send = recorded  # type: ignore[method-assign]
    return names


def test_a_sync_writer_sends_from_the_calling_thread_and_a_callback_writer_from_its_sender(
    brokers: list[str],
) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("direct", partitions=1, replication_factor=3)
    with Writer(brokers, topic="direct") as writer:
        writer.write_messages(Message(b"warm", partition=0))  # metadata and producer id
        names = sending_threads(writer)
        offsets = [writer.write_messages(Message(b"d%d" % n, partition=0)).result()[0].offset
                   for n in range(20)]  # fmt: skip
    assert offsets == list(range(1, 21))
    assert names == [threading.current_thread().name] * 20
    done: list[int] = []
    with Writer(
        brokers, topic="direct", completion=lambda messages, error: done.append(len(messages))
    ) as writer:
        writer.write_messages(Message(b"warm", partition=0))
        names = sending_threads(writer)
        for n in range(5):
            writer.write_messages(Message(b"c%d" % n, partition=0))
    assert set(names) == {"raftmq-writer"} and len(names) == 5
    assert done == [1] * 6  # the callback ran for every call, on the sender


def test_sync_writes_from_many_threads_keep_each_threads_order_without_retries(
    brokers: list[str],
) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("direct-threads", partitions=1, replication_factor=3)
    threads_count, writes = 6, 100
    offsets: dict[int, list[int]] = {t: [] for t in range(threads_count)}
    errors: list[BaseException] = []
    with Writer(brokers, topic="direct-threads") as writer:
        writer.write_messages(Message(b"warm", partition=0))

        def write(t: int) -> None:
            try:
                for n in range(writes):
                    [m] = writer.write_messages(Message(b"%d-%d" % (t, n), partition=0)).result()
                    offsets[t].append(m.offset)
            except BaseException as e:  # reported below, not lost in the thread
                errors.append(e)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        stats = writer.stats()
    assert not errors, errors
    every = sorted(o for t in offsets.values() for o in t)
    assert every == list(range(1, 1 + threads_count * writes))  # none lost, none twice
    for t, mine in offsets.items():
        assert mine == sorted(mine), t  # each thread's writes in its order
    assert stats.retries == 0  # sequences never reached the broker out of order
    read = read_all(brokers, "direct-threads", 0, 1 + threads_count * writes)
    assert sorted(m.value for m in read[1:]) == sorted(
        b"%d-%d" % (t, n) for t in range(threads_count) for n in range(writes)
    )


def test_a_sync_write_larger_than_the_buffer_goes_out_in_chunks(brokers: list[str]) -> None:
    with Admin(brokers) as admin:
        admin.create_topic("direct-chunks", partitions=1, replication_factor=3)
    with Writer(brokers, topic="direct-chunks", buffered_messages_max=10, batch_size=5) as writer:
        written = writer.write_messages(*[Message(b"k%d" % n, partition=0) for n in range(100)])
    assert [m.offset for m in written.result()] == list(range(100))
