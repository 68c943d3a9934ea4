"""`AsyncReader`: the asyncio twin of `Reader`, the same core (`ReaderCore`) on grpc.aio.

async with AsyncReader(brokers=["127.0.0.1:9092"], topic="orders") as reader:
    async for message in reader:
        ...

The core decides every step; this shell only performs it (`_perform`) and reports back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.conn import now_ms
from raftmq.client.deadlines import Deadline
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


class AsyncReader:
    def __init__(
        self,
        brokers: Sequence[str] | str,
        topic: str,
        partition: int = 0,
        *,
        min_bytes: int = 1,
        max_bytes: int = 1 << 20,
        max_wait_ms: int = 500,
        start_offset: int = FirstOffset,
        group_id: str | None = None,
    ) -> None:
        check_reader_args(partition, group_id)
        self.topic = topic
        self.partition = partition
        config = ReaderConfig(min_bytes=min_bytes, max_bytes=max_bytes, max_wait_ms=max_wait_ms)
        self._pool = AsyncBrokerPool(brokers)
        self._core = ReaderCore(topic, partition, config)
        self._core.set_offset(start_offset)
        self._closed = False

    @property
    def offset(self) -> int:
        return self._core.offset

    def set_offset(self, offset: int) -> None:
        self._core.set_offset(offset)

    def set_offset_at(self, when: datetime) -> None:
        self._core.set_offset_at(epoch_ms(when))

    @property
    def lag(self) -> int:
        return self._core.lag

    async def read_lag(self, timeout_ms: int = READ_LAG_TIMEOUT_MS) -> int:
        """As `Reader.read_lag`."""
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
        return self._core.current_stats()

    async def read_message(self, timeout_ms: int | None = None) -> Message:
        """As `Reader.read_message`."""
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

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.read_message()

    async def close(self) -> None:
        self._closed = True
        await self._pool.close()

    async def __aenter__(self) -> AsyncReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
                    [self.topic], timeout_ms=step.timeout_ms, prefer=step.prefer
                )
            except RaftmqError as e:
                core.on_metadata_failure(e, now_ms=now_ms())
                return
            core.on_metadata(metadata)
        elif isinstance(step, ListOffsetStep):
            try:
                [offset] = await self._pool.conn(step.endpoint).list_offsets(
                    [(self.topic, self.partition, step.timestamp)], timeout_ms=step.timeout_ms
                )
            except RaftmqError as e:
                core.on_transport_failure(e, now_ms=now_ms())
                return
            core.on_offset(step, offset, now_ms=now_ms())
        else:
            assert isinstance(step, FetchStep)
            try:
                [result] = await self._pool.conn(step.endpoint).fetch(
                    [(self.topic, self.partition, step.offset)],
                    max_wait_ms=step.max_wait_ms,
                    min_bytes=step.min_bytes,
                    max_bytes=step.max_bytes,
                    partition_max_bytes=step.max_bytes,
                    leader_epoch=step.leader_epoch,
                    timeout_ms=step.timeout_ms,
                )
            except RaftmqError as e:
                core.on_transport_failure(e, now_ms=now_ms())
                return
            core.on_fetch(step, result, now_ms=now_ms())
