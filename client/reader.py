"""`Reader`: reads one partition from a position (kafka-go's Reader, pythonic), the sync
shell around `ReaderCore`.

    with Reader(brokers=["127.0.0.1:9092"], topic="orders", partition=0) as reader:
        reader.set_offset(42)
        for message in reader:
            print(message.offset, message.value)

It follows leader changes and broker restarts by itself. `read_message(timeout_ms=...)`
(kafka-go's `ReadMessage` with a context deadline; the unit is in the name) raises
TimeoutError, naming the last error seen, when nothing came in time; every call it makes
is bounded by what is left of that timeout. Consumer groups (`group_id=`) arrive with a
later release: until then the argument is refused.

The core decides every step; this shell only performs it (`_perform`) and reports back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime

from raftmq.client.brokers import BrokerPool
from raftmq.client.conn import now_ms
from raftmq.client.deadlines import Deadline
from raftmq.client.reader_core import (
    READ_LAG_TIMEOUT_MS,
    FetchStep,
    FirstOffset,
    LastOffset,
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

__all__ = ["FirstOffset", "LastOffset", "Reader"]


def epoch_ms(when: datetime) -> int:
    """A datetime (naive: local time) as milliseconds since the epoch."""
    aware = when if when.tzinfo is not None else when.astimezone()
    return int(aware.timestamp() * 1000)


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
        group_id: str | None = None,
    ) -> None:
        check_reader_args(partition, group_id)
        self.topic = topic
        self.partition = partition
        config = ReaderConfig(min_bytes=min_bytes, max_bytes=max_bytes, max_wait_ms=max_wait_ms)
        self._pool = BrokerPool(brokers)
        self._core = ReaderCore(topic, partition, config)
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
        self._core.set_offset_at(epoch_ms(when))

    @property
    def lag(self) -> int:
        """Messages behind the high watermark, as of the last fetch (-1 before it)."""
        return self._core.lag

    def read_lag(self, timeout_ms: int = READ_LAG_TIMEOUT_MS) -> int:
        """Messages behind the high watermark, asked of the leader now (resolving the
        position first if needed); TimeoutError after `timeout_ms`."""
        deadline = Deadline(now_ms() + timeout_ms, timeout_ms)
        self._core.ask_high_watermark()
        # Bound: each pass performs one step bounded by the deadline, or raises past it.
        while True:
            self._check_open()
            lag = self._core.next_lag(now_ms=now_ms(), deadline=deadline)
            if isinstance(lag, int):
                return lag
            self._perform(lag)

    def stats(self) -> ReaderStats:
        return self._core.current_stats()

    # ------------------------------------------------------------ reading

    def read_message(self, timeout_ms: int | None = None) -> Message:
        """The next message; waits up to `timeout_ms` (None: until one comes)."""
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
            self._perform(step)

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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("read on a closed Reader")

    def _perform(self, step: Step) -> None:
        """Carry out one step of the core and report its outcome."""
        core = self._core
        if isinstance(step, WaitStep):
            time.sleep(max(0, step.until_ms - now_ms()) / 1000)
        elif isinstance(step, MetadataStep):
            try:
                metadata = self._pool.fetch_metadata(
                    [self.topic], timeout_ms=step.timeout_ms, prefer=step.prefer
                )
            except RaftmqError as e:
                core.on_metadata_failure(e, now_ms=now_ms())
                return
            core.on_metadata(metadata)
        elif isinstance(step, ListOffsetStep):
            try:
                [offset] = self._pool.conn(step.endpoint).list_offsets(
                    [(self.topic, self.partition, step.timestamp)], timeout_ms=step.timeout_ms
                )
            except RaftmqError as e:
                core.on_transport_failure(e, now_ms=now_ms())
                return
            core.on_offset(step, offset, now_ms=now_ms())
        else:
            assert isinstance(step, FetchStep)
            try:
                [result] = self._pool.conn(step.endpoint).fetch(
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
