"""`AsyncReader`: the asyncio twin of `Reader`, the same core (`ReaderCore`) on grpc.aio.

async with AsyncReader(brokers=["127.0.0.1:9092"], topic="orders") as reader:
    async for message in reader:
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.conn import decode_from, now_ms
from raftmq.client.protocol import LATEST
from raftmq.client.reader import check_reader_args, timed_out
from raftmq.client.reader_core import (
    FetchStep,
    FirstOffset,
    ListOffsetStep,
    MetadataStep,
    ReaderCore,
    ReaderStats,
    WaitStep,
)
from raftmq.errors import ErrorCode, RaftmqError
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
    ) -> None:
        check_reader_args(partition, min_bytes, max_bytes)
        self.topic = topic
        self.partition = partition
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self.max_wait_ms = max_wait_ms
        self._pool = AsyncBrokerPool(brokers)
        self._core = ReaderCore(topic, partition)
        self._core.set_offset(start_offset)
        self._closed = False

    @property
    def offset(self) -> int:
        return self._core.offset

    def set_offset(self, offset: int) -> None:
        self._core.set_offset(offset)

    def set_offset_at(self, when: datetime) -> None:
        aware = when if when.tzinfo is not None else when.astimezone()
        self._core.set_offset_at(int(aware.timestamp() * 1000))

    @property
    def lag(self) -> int:
        return self._core.lag

    async def read_lag(self) -> int:
        metadata = await self._pool.fetch_metadata([self.topic])
        endpoint, _ = metadata.leader(self.topic, self.partition)
        if endpoint is None:
            raise RaftmqError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"{self.topic}-{self.partition} has no leader now"
            )
        [result] = await self._pool.conn(endpoint).list_offsets(
            [(self.topic, self.partition, LATEST)]
        )
        if result.error is not None:
            raise result.error
        deadline = now_ms() + 30_000
        while not self._core.resolved and now_ms() < deadline:
            await self._step(now_ms(), deadline - now_ms())
        return max(0, result.offset - self._core.offset)

    def stats(self) -> ReaderStats:
        return self._core.current_stats()

    async def read_message(self, timeout_ms: int | None = None) -> Message:
        message = self._core.pop()  # the hot path: a buffered message
        if message is not None:
            return message
        deadline = None if timeout_ms is None else now_ms() + timeout_ms
        # Bound: one step per pass, each bounded by its own timeout, until a message or the
        # deadline.
        while True:
            if self._closed:
                raise RuntimeError("read_message on a closed AsyncReader")
            message = self._core.pop()
            if message is not None:
                return message
            now = now_ms()
            if deadline is not None and now >= deadline:
                raise timed_out(self._core, timeout_ms)
            await self._step(now, None if deadline is None else deadline - now)

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

    async def _step(self, now: int, remaining_ms: int | None) -> None:
        step = self._core.next_step(now_ms=now)
        if isinstance(step, WaitStep):
            wait_ms = step.until_ms - now
            if remaining_ms is not None:
                wait_ms = min(wait_ms, remaining_ms)
            await asyncio.sleep(max(0, wait_ms) / 1000)
        elif isinstance(step, MetadataStep):
            try:
                metadata = await self._pool.fetch_metadata([self.topic])
            except RaftmqError as e:
                self._core.on_metadata_failure(e, now_ms=now_ms())
                return
            self._core.on_metadata(metadata)
        elif isinstance(step, ListOffsetStep):
            try:
                [offset] = await self._pool.conn(step.endpoint).list_offsets(
                    [(self.topic, self.partition, step.timestamp)]
                )
            except RaftmqError as e:
                self._core.on_transport_failure(e, now_ms=now_ms())
                return
            self._core.on_offset(offset.offset, offset.error, now_ms=now_ms())
        else:
            assert isinstance(step, FetchStep)
            wait_ms = (
                self.max_wait_ms if remaining_ms is None else min(self.max_wait_ms, remaining_ms)
            )
            try:
                [result] = await self._pool.conn(step.endpoint).fetch(
                    [(self.topic, self.partition, step.offset)],
                    max_wait_ms=max(0, wait_ms),
                    min_bytes=self.min_bytes,
                    max_bytes=self.max_bytes,
                    partition_max_bytes=self.max_bytes,
                    leader_epoch=step.leader_epoch,
                )
            except RaftmqError as e:
                self._core.on_transport_failure(e, now_ms=now_ms())
                return
            messages = (
                decode_from(result.records, self.topic, self.partition, step.offset)
                if result.error is None
                else []
            )
            self._core.on_fetch(result, messages, now_ms=now_ms())
