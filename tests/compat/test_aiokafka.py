"""aiokafka (asyncio, its compiled record codec) against raftmq's Kafka listener: an
idempotent acks=all producer and a consumer round-trip keyed messages with headers; a
consumer group of two members splits the partitions and commits, and a restarted member
resumes at the committed offsets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from raftmq.local_cluster import LocalCluster

from .conftest import TIMEOUT_S, make_topic

aiokafka = pytest.importorskip(
    "aiokafka", reason="aiokafka is not installed (pip install -e '.[dev]')"
)

pytestmark = pytest.mark.compat

PARTITIONS = 4


def bootstrap(cluster: LocalCluster) -> str:
    return ",".join(cluster.layout.kafka_endpoints)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {TIMEOUT_S:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def produce(cluster: LocalCluster, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = aiokafka.AIOKafkaProducer(
        bootstrap_servers=bootstrap(cluster), acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value, key=key, headers=[("k", key), ("n", b"1")])
            for key, value in messages
        ]
        await asyncio.wait_for(asyncio.gather(*sent), TIMEOUT_S)
    finally:
        await producer.stop()


def run(coroutine: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coroutine(), 4 * TIMEOUT_S))


def test_idempotent_producer_and_consumer_round_trip(cluster: LocalCluster) -> None:
    topic = f"aio-{uuid.uuid4().hex[:8]}"
    make_topic(cluster, topic, 1)
    messages = [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(20)]

    async def scenario() -> None:
        await produce(cluster, topic, messages)
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap(cluster), auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign([aiokafka.TopicPartition(topic, 0)])
            got = []
            while len(got) < len(messages):
                batch = await consumer.getmany(timeout_ms=1_000)
                got += [r for records in batch.values() for r in records]
        finally:
            await consumer.stop()
        assert [(r.offset, r.key, r.value, list(r.headers)) for r in got] == [
            (i, key, value, [("k", key), ("n", b"1")]) for i, (key, value) in enumerate(messages)
        ]
        assert all(r.timestamp > 0 for r in got)

    run(scenario)


class Member:
    """One AIOKafkaConsumer in a group, consuming on a task until `stop`."""

    def __init__(self, cluster: LocalCluster, topic: str, group: str) -> None:
        self.consumer = aiokafka.AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap(cluster),
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=500,
        )
        self.values: list[bytes] = []
        self.partitions_read: set[int] = set()
        self.task: asyncio.Task[None] | None = None

    def partitions(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                self.values += [r.value for r in records]
                self.partitions_read.add(tp.partition)
            if batch:
                await self.consumer.commit()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()


def test_a_group_of_two_splits_commits_and_a_restarted_member_resumes(
    cluster: LocalCluster,
) -> None:
    topic, group = f"aio-group-{uuid.uuid4().hex[:8]}", f"aio-g-{uuid.uuid4().hex[:8]}"
    make_topic(cluster, topic, PARTITIONS)
    first = [(f"k{i}".encode(), f"first-{i}".encode()) for i in range(40)]
    second = [(f"k{i}".encode(), f"second-{i}".encode()) for i in range(12)]

    async def scenario() -> None:
        a, b = Member(cluster, topic, group), Member(cluster, topic, group)
        try:
            await a.start()
            await b.start()
            await wait_for(
                lambda: (
                    bool(a.partitions())
                    and bool(b.partitions())
                    and not a.partitions() & b.partitions()
                    and a.partitions() | b.partitions() == set(range(PARTITIONS))
                ),
                "two members splitting the partitions",
            )
            await produce(cluster, topic, first)
            await wait_for(
                lambda: sorted(a.values + b.values) == sorted(v for _, v in first),
                "the two members reading every message once",
            )
            assert a.partitions_read <= a.partitions() and b.partitions_read <= b.partitions()
        finally:
            await a.stop()
            await b.stop()
        await produce(cluster, topic, second)
        c = Member(cluster, topic, group)
        try:
            await c.start()
            await wait_for(
                lambda: {v for _, v in second} <= set(c.values),
                "a restarted member reading what came after the commits",
            )
            # A window for anything it would wrongly re-read (it comes with the same fetches).
            await asyncio.sleep(0.5)
            assert sorted(c.values) == sorted(v for _, v in second)
        finally:
            await c.stop()

    run(scenario)
