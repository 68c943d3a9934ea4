"""`Reader`: reads one partition from a position (kafka-go's Reader, pythonic), the sync
shell around `ReaderCore`.

    with Reader(brokers=["127.0.0.1:9092"], topic="orders", partition=0) as reader:
        reader.set_offset(42)
        for message in reader:
            print(message.offset, message.value)

It follows leader changes and broker restarts by itself. `read_message(timeout_ms=...)`
raises TimeoutError (naming the last error seen, if any) when nothing came in time.
Consumer groups (`group_id=`) arrive with a later release.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime

from raftmq.client.brokers import BrokerPool
from raftmq.client.conn import decode_from, now_ms
from raftmq.client.protocol import LATEST
from raftmq.client.reader_core import (
    FetchStep,
    FirstOffset,
    LastOffset,
    ListOffsetStep,
    MetadataStep,
    ReaderCore,
    ReaderStats,
    WaitStep,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

__all__ = ["FirstOffset", "LastOffset", "Reader"]


def check_reader_args(partition: int, min_bytes: int, max_bytes: int) -> None:
    if partition < 0:
        raise ValueError(f"partition must be >= 0, got {partition}")
    if not 1 <= min_bytes <= max_bytes:
        raise ValueError("need 1 <= min_bytes <= max_bytes")


def timed_out(core: ReaderCore, timeout_ms: int | None) -> TimeoutError:
    last = core.last_error
    return TimeoutError(
        f"no message from {core.topic}-{core.partition} within {timeout_ms} ms"
        + (f" (last error: {last})" if last is not None else "")
    )


class Reader:
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
        self._pool = BrokerPool(brokers)
        self._core = ReaderCore(topic, partition)
        self._core.set_offset(start_offset)
        self._closed = False

    # ------------------------------------------------------------ position

    @property
    def offset(self) -> int:
        """The offset of the next message read_message returns (or FirstOffset /
        LastOffset until that was resolved)."""
        return self._core.offset

    def set_offset(self, offset: int) -> None:
        """Read from `offset` next: FirstOffset, LastOffset, or an offset."""
        self._core.set_offset(offset)

    def set_offset_at(self, when: datetime) -> None:
        """Read from the first message at or after `when` (naive: local time)."""
        aware = when if when.tzinfo is not None else when.astimezone()
        self._core.set_offset_at(int(aware.timestamp() * 1000))

    @property
    def lag(self) -> int:
        """Messages behind the high watermark, as of the last fetch (-1 before it)."""
        return self._core.lag

    def read_lag(self) -> int:
        """Messages behind the high watermark, asked of the leader now."""
        endpoint = self._leader()
        [result] = self._pool.conn(endpoint).list_offsets([(self.topic, self.partition, LATEST)])
        if result.error is not None:
            raise result.error
        position = self._resolved_offset()
        return max(0, result.offset - position)

    def stats(self) -> ReaderStats:
        return self._core.current_stats()

    # ------------------------------------------------------------ reading

    def read_message(self, timeout_ms: int | None = None) -> Message:
        """The next message; waits up to `timeout_ms` (None: until one comes)."""
        message = self._core.pop()  # the hot path: a buffered message
        if message is not None:
            return message
        deadline = None if timeout_ms is None else now_ms() + timeout_ms
        # Bound: each pass performs one step (a call bounded by its own timeout) or waits
        # for a backoff, until a message arrives or the deadline passes.
        while True:
            if self._closed:
                raise RuntimeError("read_message on a closed Reader")
            message = self._core.pop()
            if message is not None:
                return message
            now = now_ms()
            if deadline is not None and now >= deadline:
                raise timed_out(self._core, timeout_ms)
            self._step(now, None if deadline is None else deadline - now)

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.read_message()

    def close(self) -> None:
        self._closed = True
        self._pool.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ steps

    def _step(self, now: int, remaining_ms: int | None) -> None:
        step = self._core.next_step(now_ms=now)
        if isinstance(step, WaitStep):
            wait_ms = step.until_ms - now
            if remaining_ms is not None:
                wait_ms = min(wait_ms, remaining_ms)
            time.sleep(max(0, wait_ms) / 1000)
        elif isinstance(step, MetadataStep):
            try:
                metadata = self._pool.fetch_metadata([self.topic])
            except RaftmqError as e:
                self._core.on_metadata_failure(e, now_ms=now_ms())
                return
            self._core.on_metadata(metadata)
        elif isinstance(step, ListOffsetStep):
            try:
                [offset] = self._pool.conn(step.endpoint).list_offsets(
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
                [result] = self._pool.conn(step.endpoint).fetch(
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

    def _leader(self) -> str:
        metadata = self._pool.fetch_metadata([self.topic])
        endpoint, _ = metadata.leader(self.topic, self.partition)
        if endpoint is None:
            raise RaftmqError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"{self.topic}-{self.partition} has no leader now"
            )
        return endpoint

    def _resolved_offset(self) -> int:
        """The position as an offset (resolving FirstOffset / LastOffset / a time first)."""
        deadline = now_ms() + 30_000
        while not self._core.resolved:
            if now_ms() >= deadline:
                raise TimeoutError(f"could not resolve the offset of {self.topic}-{self.partition}")
            self._step(now_ms(), max(0, deadline - now_ms()))
        return self._core.offset
