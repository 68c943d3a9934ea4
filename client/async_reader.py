"""`AsyncReader`: the asyncio twin of `Reader`, the same cores (`ReaderCore`, and
`GroupCore` through `AsyncGroupReader` for consumer groups) on grpc.aio, with the same
options.

async with AsyncReader(brokers=["127.0.0.1:9092"], topic="orders") as reader:
    async for message in reader:
        ...

async with AsyncReader(brokers=["127.0.0.1:9092"], group_id="billing", topic="orders") as r:
    async for message in r:
        ...

The core decides every step; this shell only performs it (`_perform`) and reports back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import structlog
from raftmq.client import protocol
from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.async_group_reader import AsyncGroupReader
from raftmq.client.conn import now_ms
from raftmq.client.deadlines import Deadline
from raftmq.client.group_core import CommitError, reader_group_config
from raftmq.client.reader import epoch_ms
from raftmq.client.reader_core import (
    READ_LAG_TIMEOUT_MS,
    FetchStep,
    FirstOffset,
    ListOffsetStep,
    MetadataStep,
    ReaderConfig,
    ReaderCore,
    ReaderStats,
    Step,
    WaitStep,
    check_reader_args,
)
from raftmq.errors import RaftmqError
from raftmq.message import Message

_log = structlog.get_logger("raftmq.client")


class AsyncReader:
    def __init__(
        self,
        brokers: Sequence[str] | str,
        topic: str | None = None,
        partition: int | None = None,
        *,
        min_bytes: int = 1,
        max_bytes: int = 1 << 20,
        max_wait_ms: int = 500,
        start_offset: int | None = None,
        group_id: str | None = None,
        group_topics: Sequence[str] | None = None,
        topic_pattern: str | None = None,
        group_instance_id: str | None = None,
        auto_offset_reset: str = "latest",
        commit_interval_ms: int = 0,
        session_timeout_ms: int = 0,
        heartbeat_interval_ms: int = 0,
        rebalance_timeout_ms: int = 30_000,
        max_poll_interval_ms: int = 300_000,
        assignor: str = "uniform",
        client_id: str = "raftmq-python",
    ) -> None:
        """As `Reader`. Create it inside a running event loop."""
        config = ReaderConfig(min_bytes=min_bytes, max_bytes=max_bytes, max_wait_ms=max_wait_ms)
        group = reader_group_config(
            topic=topic,
            partition=partition,
            start_offset=start_offset,
            group_id=group_id,
            group_topics=group_topics,
            topic_pattern=topic_pattern,
            group_instance_id=group_instance_id,
            reader=config,
            assignor=assignor,
            auto_offset_reset=auto_offset_reset,
            commit_interval_ms=commit_interval_ms,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            rebalance_timeout_ms=rebalance_timeout_ms,
            max_poll_interval_ms=max_poll_interval_ms,
            client_id=client_id,
        )
        self.group_id = group_id
        self._group: AsyncGroupReader | None = None
        self._closed = False
        if group is not None:
            # The subscription's only topic, if it is one ("" otherwise); no partition.
            self.topic = topic or ""
            self.partition = -1
            self._group = AsyncGroupReader(brokers, group)
            return
        assert topic is not None
        partition = 0 if partition is None else partition
        check_reader_args(partition)
        self.topic = topic
        self.partition = partition
        self._pool = AsyncBrokerPool(brokers)
        self._core = ReaderCore(topic, partition, config)
        self._core.set_offset(FirstOffset if start_offset is None else start_offset)

    @property
    def offset(self) -> int:
        if self._group is not None:
            return -1
        return self._core.offset

    def set_offset(self, offset: int) -> None:
        self._single("set_offset").set_offset(offset)

    def set_offset_at(self, when: datetime) -> None:
        self._single("set_offset_at").set_offset_at(epoch_ms(when))

    @property
    def lag(self) -> int:
        if self._group is not None:
            return self._group.lag()
        return self._core.lag

    async def read_lag(self, timeout_ms: int = READ_LAG_TIMEOUT_MS) -> int:
        """As `Reader.read_lag`."""
        if self._group is not None:
            return await self._group.read_lag(timeout_ms)
        deadline = Deadline(now_ms() + timeout_ms, timeout_ms)
        self._core.ask_high_watermark()
        # Bound: each pass performs one step bounded by the deadline, or raises past it.
        while True:
            self._check_open()
            lag = self._core.next_lag(now_ms=now_ms(), deadline=deadline)
            if isinstance(lag, int):
                return lag
            await self._perform(lag)

    def stats(self) -> ReaderStats:
        if self._group is not None:
            return self._group.stats()
        return self._core.current_stats()

    @property
    def assignment(self) -> list[tuple[str, int]]:
        if self._group is not None:
            return self._group.assignment
        return [(self.topic, self.partition)]

    async def read_message(self, timeout_ms: int | None = None) -> Message:
        """As `Reader.read_message`."""
        if self._group is not None:
            return await self._group.read_message(timeout_ms)
        message = self._core.pop()  # the hot path: a buffered message
        if message is not None:
            return message
        deadline = Deadline.after(timeout_ms, now_ms=now_ms())
        # Bound: each pass performs one step bounded by the deadline, until a message
        # comes or the core raises TimeoutError.
        while True:
            self._check_open()
            step = self._core.next_read(now_ms=now_ms(), deadline=deadline)
            if isinstance(step, Message):
                return step
            await self._perform(step)

    async def fetch_message(self, timeout_ms: int | None = None) -> Message:
        """As `Reader.fetch_message`."""
        if self._group is not None:
            return await self._group.fetch_message(timeout_ms)
        return await self.read_message(timeout_ms)

    async def commit_messages(self, *messages: Message, timeout_ms: int | None = None) -> None:
        """As `Reader.commit_messages`."""
        if self._group is None:
            raise RuntimeError("commit_messages needs a consumer group (group_id=)")
        await self._group.commit_messages(messages, timeout_ms)

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.read_message()

    async def close(self, timeout_ms: int | None = None) -> None:
        """As `Reader.close`."""
        if self._closed:
            return
        self._closed = True
        if self._group is not None:
            await self._group.close(timeout_ms)
            return
        await self._pool.close()

    async def __aenter__(self) -> AsyncReader:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            await self.close()
            return
        try:  # the application's own error is the one to see
            await self.close()
        except CommitError as e:
            _log.warning("group.close_commit_failed", error=str(e))

    def _single(self, method: str) -> ReaderCore:
        if self._group is not None:
            raise RuntimeError(
                f"{method} is not available with a consumer group: it starts at the group's "
                "committed offsets (reset them with Admin.reset_offsets)"
            )
        return self._core

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("read on a closed AsyncReader")

    async def _perform(self, step: Step) -> None:
        """Carry out one step of the core and report its outcome."""
        core = self._core
        if isinstance(step, WaitStep):
            await asyncio.sleep(max(0, step.until_ms - now_ms()) / 1000)
        elif isinstance(step, MetadataStep):
            try:
                metadata = await self._pool.fetch_metadata(
                    [core.topic], timeout_ms=step.timeout_ms, prefer=step.prefer
                )
            except RaftmqError as e:
                core.on_metadata_failure(e, now_ms=now_ms())
                return
            core.on_metadata(metadata)
        elif isinstance(step, ListOffsetStep):
            try:
                [offset] = await self._pool.conn(step.endpoint).list_offsets(
                    [(core.topic, core.partition, step.timestamp)], timeout_ms=step.timeout_ms
                )
            except RaftmqError as e:
                core.on_transport_failure(e, now_ms=now_ms())
                return
            core.on_offset(step, offset, now_ms=now_ms())
        else:
            assert isinstance(step, FetchStep)
            request = protocol.fetch_request(
                [(core.topic, core.partition, step.offset, step.leader_epoch)],
                max_wait_ms=step.max_wait_ms,
                min_bytes=step.min_bytes,
                max_bytes=step.max_bytes,
                partition_max_bytes=step.max_bytes,
            )
            try:
                response = await self._pool.fetch(
                    step.endpoint, request, timeout_ms=step.timeout_ms
                )
            except RaftmqError as e:
                core.on_transport_failure(e, now_ms=now_ms())
                return
            [result] = protocol.fetch_results(response)
            core.on_fetch(step, result, now_ms=now_ms())
