"""Brokers on real processes: produce/fetch, leader kill -9 with nothing acknowledged lost,
restart + truncate + rejoin, byte-identical replicas, min.insync.replicas, bad input."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from raftmq import FirstOffset, Reader
from raftmq.broker.log_store import LogStore
from raftmq.client.conn import Conn
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.local_cluster import LocalCluster, wait_until
from raftmq.message import Message
from raftmq.record_batch import encode_batch
from raftmq.v1 import broker_pb2 as bpb
from raftmq.v1 import broker_pb2_grpc
from raftmq.v1 import controller_pb2 as pb

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(make_cluster: type[LocalCluster]) -> Iterator[LocalCluster]:
    cluster = make_cluster(controllers=3, brokers=3, broker_args=["--replica-lag-time-max-ms=3000"])
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    yield cluster
    cluster.stop()


def create_topic(
    cluster: LocalCluster, name: str, *, partitions: int = 1, rf: int = 3, **configs: str
) -> pb.CreateTopicResponse:
    with Conn(cluster.layout.broker_endpoints[0]) as connection:
        response: pb.CreateTopicResponse = connection.admin(
            "CreateTopic",
            pb.CreateTopicRequest(
                name=name,
                partitions=partitions,
                replication_factor=rf,
                configs={k.replace("_", "."): v for k, v in configs.items()},
                request_id=uuid.uuid4().hex,
            ),
        )
    return response


def partition_state(cluster: LocalCluster, topic: str, index: int = 0) -> tuple[int, list[int]]:
    status = cluster.describe()
    assert status is not None
    for t in status.topics:
        if t.name == topic:
            p = t.partitions[index]
            return p.leader, list(p.isr)
    raise AssertionError(f"no topic {topic}")


def read_all(bootstrap: list[str], topic: str, partition: int = 0) -> list[tuple[int, bytes]]:
    """Every record below the high watermark, from offset 0."""
    with Conn.dial_leader(bootstrap, topic, partition) as leader:
        _, end = leader.read_offsets()
    out: list[tuple[int, bytes]] = []
    with Reader(bootstrap, topic, partition, start_offset=FirstOffset, max_wait_ms=100) as reader:
        while len(out) < end:
            message = reader.read_message(timeout_ms=30_000)
            assert message.value is not None
            out.append((message.offset, message.value))
    return out


def produce_once(bootstrap: list[str], topic: str, batch: bytes, *, timeout_ms: int = 8_000) -> int:
    """Send `batch` once (no retry: a lost answer must not duplicate it) to partition 0's
    current leader with acks=all; its base offset, or the broker's error."""
    with Conn.dial_leader(bootstrap, topic, 0) as leader:
        [result] = leader.produce([(topic, 0, batch)], acks=-1, timeout_ms=timeout_ms)
    if result.error is not None:
        raise result.error
    return result.base_offset


class Producer(threading.Thread):
    """Sends batches of unique values with acks=all, each batch exactly once (no retry of
    an unknown outcome, so nothing can be duplicated without idempotence), recording the
    acknowledged offset of every value."""

    def __init__(self, bootstrap: list[str], topic: str, batch_records: int = 5) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.batch_records = batch_records
        self.acked: dict[bytes, int] = {}
        self.unknown: set[bytes] = set()
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            values = [f"v{n + i}".encode() for i in range(self.batch_records)]
            n += self.batch_records
            batch = encode_batch([Message(v, timestamp_ms=int(time.time() * 1000)) for v in values])
            try:
                base = produce_once(self.bootstrap, self.topic, batch)
            except RaftmqError:
                self.unknown.update(values)
                time.sleep(0.05)
                continue
            for i, v in enumerate(values):
                self.acked[v] = base + i
            self.sent += 1

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def replica_bytes(cluster: LocalCluster, topic_id: bytes, upper_offset: int) -> dict[int, bytes]:
    """The stored batch bytes below `upper_offset` of every broker (brokers stopped)."""
    out = {}
    for broker_id in cluster.brokers:
        store = LogStore(Path(cluster.data_dir) / f"broker-{broker_id}" / "log")
        try:
            log = store.open_partition(topic_id, 0)
            assert log.high_watermark >= upper_offset, (broker_id, log.high_watermark, upper_offset)
            out[broker_id] = log.read(0, max_bytes=1 << 30, upper_offset=upper_offset)
        finally:
            store.close()
    return out


def test_leader_kill9_loses_nothing_acknowledged_and_replicas_converge(
    cluster: LocalCluster,
) -> None:
    topic = create_topic(cluster, "orders", min_insync_replicas="2").topic
    bootstrap = cluster.layout.broker_endpoints
    producer = Producer(bootstrap, "orders")
    producer.start()
    try:
        wait_until(lambda: producer.sent >= 40, timeout_s=30, what="acknowledged writes")
        leader, isr = partition_state(cluster, "orders")
        assert sorted(isr) == [1, 2, 3]
        cluster.brokers[leader].kill()
        acked_at_kill = producer.sent
        wait_until(
            lambda: partition_state(cluster, "orders")[0] not in (-1, leader),
            timeout_s=30,
            what="a new partition leader",
        )
        wait_until(
            lambda: producer.sent >= acked_at_kill + 40,
            timeout_s=30,
            what="writes acknowledged by the new leader",
        )
        # The killed broker restarts on its data, truncates by leader epoch, catches up and
        # rejoins the ISR while writes continue.
        cluster.brokers[leader].start()
        wait_until(
            lambda: leader in partition_state(cluster, "orders")[1],
            timeout_s=60,
            what=f"broker {leader} to rejoin the ISR",
            on_timeout=cluster.tail_logs,
        )
        rejoined_at = producer.sent
        wait_until(lambda: producer.sent >= rejoined_at + 20, timeout_s=30, what="more writes")
    finally:
        producer.finish()

    records = read_all(bootstrap, "orders")
    offsets = [o for o, _ in records]
    assert offsets == list(range(len(records))), "offsets are contiguous from 0"
    values = [v for _, v in records]
    assert len(values) == len(set(values)), "no value is stored twice"
    position = {v: o for o, v in records}
    for value, offset in producer.acked.items():
        assert position.get(value) == offset, f"acknowledged {value!r}@{offset} lost or moved"
    acked_in_order = sorted(producer.acked, key=producer.acked.__getitem__)
    assert [v for v in values if v in producer.acked] == acked_in_order
    assert set(values) <= set(producer.acked) | producer.unknown

    # Every replica holds the same bytes up to the high watermark.
    wait_until(
        lambda: len(partition_state(cluster, "orders")[1]) == 3, timeout_s=30, what="full ISR"
    )
    high_watermark = len(records)
    time.sleep(1.0)  # one more follower fetch round carries the final high watermark
    for process in cluster.brokers.values():
        process.stop()
    stored = replica_bytes(cluster, bytes(topic.topic_id), high_watermark)
    assert len(set(stored.values())) == 1, {b: len(s) for b, s in stored.items()}
    assert stored[1], "the replicas hold the data"


def test_acks_all_with_one_in_sync_replica_and_min_isr_2_stores_nothing(
    cluster: LocalCluster,
) -> None:
    create_topic(cluster, "strict", min_insync_replicas="2")
    leader, _ = partition_state(cluster, "strict")
    for broker_id, process in cluster.brokers.items():
        if broker_id != leader:
            process.kill()
    wait_until(
        lambda: partition_state(cluster, "strict")[1] == [leader],
        timeout_s=30,
        what="the ISR to shrink to the leader",
    )
    endpoint = cluster.layout.broker_endpoints[leader - 1]
    batch = encode_batch([Message(b"must-not-be-stored", timestamp_ms=1)])
    with Conn(endpoint) as connection:
        before = connection.fetch([("strict", 0, 0)], max_wait_ms=0)[0]
        [result] = connection.produce([("strict", 0, batch)], acks=-1, timeout_ms=2_000)
        assert result.error is not None and result.error.code == ErrorCode.NOT_ENOUGH_REPLICAS
        assert "min.insync.replicas is 2" in result.error.message
        after = connection.fetch([("strict", 0, 0)], max_wait_ms=0)[0]
        assert after.log_end_offset == before.log_end_offset == 0
        # acks=1 is still accepted by the lone leader (Kafka semantics).
        [ok] = connection.produce([("strict", 0, batch)], acks=1)
        assert ok.error is None and ok.base_offset == 0


def test_bad_input_gets_clear_errors_and_stores_nothing(cluster: LocalCluster) -> None:
    create_topic(cluster, "input", max_message_bytes="1024")
    leader, _ = partition_state(cluster, "input")
    follower = next(b for b in cluster.brokers if b != leader)
    good = encode_batch([Message(b"v", b"k", timestamp_ms=1)])
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF
    with Conn(cluster.layout.broker_endpoints[leader - 1]) as connection:
        results = connection.produce(
            [
                ("input", 0, bytes(corrupt)),
                ("input", 0, b"\x00" * 10),
                ("input", 0, encode_batch([Message(b"x" * 2000, timestamp_ms=1)])),
                ("nope", 0, good),
                ("input", 7, good),
            ],
            acks=1,
        )
        codes = [r.error.code if r.error else None for r in results]
        assert codes == [
            ErrorCode.CORRUPT_MESSAGE,
            ErrorCode.CORRUPT_MESSAGE,
            ErrorCode.MESSAGE_TOO_LARGE,
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ]
        assert all(r.error and r.error.message for r in results)
        assert connection.fetch([("input", 0, 0)], max_wait_ms=0)[0].log_end_offset == 0
        [bad_acks] = connection.produce([("input", 0, good)], acks=2)
        assert bad_acks.error is not None and bad_acks.error.code == ErrorCode.INVALID_REQUIRED_ACKS
        [ok] = connection.produce([("input", 0, good)], acks=1)
        assert ok.error is None
        [out_of_range] = connection.fetch([("input", 0, 5)], max_wait_ms=0)
        assert out_of_range.error is not None
        assert out_of_range.error.code == ErrorCode.OFFSET_OUT_OF_RANGE
        assert "[0, 1]" in out_of_range.error.message
        # Long poll: a fetch at the end waits up to max_wait_ms, then returns empty.
        started = time.monotonic()
        [empty] = connection.fetch([("input", 0, 1)], max_wait_ms=300)
        assert empty.error is None and empty.records == b""
        assert time.monotonic() - started >= 0.25
    with Conn(cluster.layout.broker_endpoints[follower - 1]) as connection:
        [not_leader] = connection.produce([("input", 0, good)], acks=1)
        assert not_leader.error is not None
        assert not_leader.error.code == ErrorCode.NOT_LEADER_OR_FOLLOWER
        assert not_leader.leader_endpoint == cluster.layout.broker_endpoints[leader - 1]


def test_long_poll_fetch_wakes_on_append(cluster: LocalCluster) -> None:
    create_topic(cluster, "wake", rf=3)
    leader, _ = partition_state(cluster, "wake")
    endpoint = cluster.layout.broker_endpoints[leader - 1]
    produce_once([endpoint], "wake", encode_batch([Message(b"first", timestamp_ms=1)]))  # HW 1
    results: list[float] = []

    def waiter() -> None:
        with Conn(endpoint) as connection:
            started = time.monotonic()
            [r] = connection.fetch([("wake", 0, 1)], max_wait_ms=10_000)
            assert r.records
            results.append(time.monotonic() - started)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    produce_once([endpoint], "wake", encode_batch([Message(b"second", timestamp_ms=2)]))
    thread.join(timeout=15)
    assert results and 0.4 < results[0] < 5.0, results


def broker_states(cluster: LocalCluster) -> dict[int, bool]:
    """broker id -> fenced, as the controller quorum sees it."""
    status = cluster.describe()
    assert status is not None
    return {b.id: b.fenced for b in status.brokers}


def test_a_killed_broker_is_fenced_long_before_its_session_times_out(
    make_cluster: type[LocalCluster],
) -> None:
    # Its session stream to the controller leader breaks when the kernel closes the dead
    # process's connections: the leader fences it then, not after the 30 s session timeout.
    cluster = make_cluster(controllers=3, brokers=3, session_timeout_ms=30_000)
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    create_topic(cluster, "fast", rf=3)
    wait_until(lambda: len(partition_state(cluster, "fast")[1]) == 3, timeout_s=20, what="ISR")
    leader, _ = partition_state(cluster, "fast")
    killed_at = time.monotonic()
    cluster.brokers[leader].kill()
    wait_until(
        lambda: broker_states(cluster).get(leader) is True,
        timeout_s=10,
        what=f"broker {leader} fenced after its kill -9",
    )
    fenced_after_s = time.monotonic() - killed_at
    new_leader, isr = partition_state(cluster, "fast")
    assert new_leader not in (leader, -1) and leader not in isr
    assert fenced_after_s < 10  # far below the 30 s session timeout
    # The others were never fenced.
    assert [b for b, fenced in broker_states(cluster).items() if fenced] == [leader]
    cluster.stop()


def test_a_thousand_idle_long_polls_hold_no_thread_and_shrink_no_isr(
    cluster: LocalCluster,
) -> None:
    # Before the request engine, each waiting fetch held one of the broker's 64 worker
    # threads: 100 idle consumers shrank every ISR that broker led and stalled produce.
    # Now a waiting fetch is a delayed operation; the broker answers everything else.
    create_topic(cluster, "idle", rf=3)
    create_topic(cluster, "busy", rf=3)
    wait_until(lambda: len(partition_state(cluster, "busy")[1]) == 3, timeout_s=20, what="ISR")
    leader, _ = partition_state(cluster, "idle")
    endpoint = cluster.layout.broker_endpoints[leader - 1]
    busy_leader, busy_isr = partition_state(cluster, "busy")

    async def poll(stub: object, deadline: float) -> int:
        answered = 0
        request = bpb.FetchRequest(
            replica_id=-1,
            max_wait_ms=2_000,
            min_bytes=1,
            partitions=[bpb.PartitionFetchData(topic="idle", partition=0, fetch_offset=0)],
        )
        while time.monotonic() < deadline:
            response = await stub.Fetch(request, timeout=10)  # type: ignore[attr-defined]
            assert response.partitions[0].error.code == ErrorCode.NONE
            answered += 1
        return answered

    async def polls(count: int, seconds: float) -> list[int]:
        channels = [grpc.aio.insecure_channel(endpoint) for _ in range(4)]
        try:
            stubs = [broker_pb2_grpc.BrokerServiceStub(c) for c in channels]
            deadline = time.monotonic() + seconds
            return await asyncio.gather(*(poll(stubs[i % 4], deadline) for i in range(count)))
        finally:
            for channel in channels:
                await channel.close()

    answers: list[list[int]] = []
    poller = threading.Thread(target=lambda: answers.append(asyncio.run(polls(1_000, 8.0))))
    poller.start()
    writes = 0
    try:
        bootstrap = cluster.layout.broker_endpoints
        started = time.monotonic()
        # Write while the long polls are held (bounded: the poller's own timeouts, 30 s);
        # each write must be acknowledged within its 5 s timeout or produce_once raises.
        while poller.is_alive() and time.monotonic() - started < 30.0:
            produce_once(bootstrap, "busy", encode_batch([Message(b"w")]), timeout_ms=5_000)
            writes += 1
    finally:
        poller.join(timeout=30)
    assert answers and len(answers[0]) == 1_000
    assert all(n >= 1 for n in answers[0])  # every long poll was answered at its timeout
    # acks=all writes kept being acknowledged while the polls were held (a count, not a
    # rate: the machine may be loaded).
    assert writes >= 10
    assert partition_state(cluster, "busy") == (busy_leader, busy_isr)
    assert len(partition_state(cluster, "idle")[1]) == 3
