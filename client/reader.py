"""`Reader`: reads one partition from a position, or consumes as a member of a consumer
group (kafka-go's Reader, pythonic); the sync shell around `ReaderCore` (one partition)
and `GroupCore` (a group, through `GroupReader`).

    with Reader(brokers=["127.0.0.1:9092"], topic="orders", partition=0) as reader:
        reader.set_offset(42)
        for message in reader:
            print(message.offset, message.value)

    with Reader(brokers=["127.0.0.1:9092"], group_id="billing", topic="orders") as reader:
        for message in reader:  # committed once the loop comes back for the next one
            handle(message)

It follows leader changes and broker restarts by itself. `read_message(timeout_ms=...)`
(kafka-go's `ReadMessage` with a context deadline; the unit is in the name) raises
TimeoutError, naming the last error seen, when nothing came in time; every call it makes
is bounded by what is left of that timeout.

With `group_id=` the group's coordinator assigns the partitions of `topic=`,
`group_topics=[...]` or `topic_pattern=` among the group's members; `read_message`
commits a message once the application comes back for the next one (synchronously, or
every `commit_interval_ms`), `fetch_message` + `commit_messages` commit explicitly, and
`close()` commits what was processed and leaves the group (see `group_core.py`).

The cores decide every step; these shells only perform them and report back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime

import structlog
from raftmq.client.brokers import BrokerPool
from raftmq.client.conn import now_ms
from raftmq.client.deadlines import Deadline
from raftmq.client.group_core import CommitError, reader_group_config
from raftmq.client.group_reader import GroupReader
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

_log = structlog.get_logger("raftmq.client")

__all__ = ["CommitError", "FirstOffset", "LastOffset", "Reader"]


def epoch_ms(when: datetime) -> int:
    """A datetime (naive: local time) as milliseconds since the epoch."""
    aware = when if when.tzinfo is not None else when.astimezone()
    return int(aware.timestamp() * 1000)


class Reader:
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
        """One partition: `topic`, `partition` (default 0), `start_offset` (default
        FirstOffset). A consumer group: `group_id` with `topic`, `group_topics` or
        `topic_pattern` (a Python regex matched against whole topic names), and
        `auto_offset_reset` ("latest", as Kafka, or "earliest") for partitions the group
        has committed nothing for; `group_instance_id` makes it a static member (a restart
        within the session timeout gets the same partitions, no rebalance);
        `commit_interval_ms` 0 commits synchronously, more commits in the background
        that often; `session_timeout_ms` / `heartbeat_interval_ms` 0: the coordinator's;
        a Reader whose application does not come back for a message within
        `max_poll_interval_ms` leaves the group (and joins again on its next read)."""
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
        self._group: GroupReader | None = None
        self._closed = False
        if group is not None:
            # The subscription's only topic, if it is one ("" otherwise); no partition.
            self.topic = topic or ""
            self.partition = -1
            self._group = GroupReader(brokers, group)
            return
        assert topic is not None
        partition = 0 if partition is None else partition
        check_reader_args(partition)
        self.topic = topic
        self.partition = partition
        self._pool = BrokerPool(brokers)
        self._core = ReaderCore(topic, partition, config)
        self._core.set_offset(FirstOffset if start_offset is None else start_offset)

    # ------------------------------------------------------------ position

    @property
    def offset(self) -> int:
        """The offset of the next message read_message returns (or FirstOffset /
        LastOffset until that was resolved); -1 for a consumer group (several
        partitions: see stats().group.partitions)."""
        if self._group is not None:
            return -1
        return self._core.offset

    def set_offset(self, offset: int) -> None:
        """Read from `offset` next: FirstOffset, LastOffset, or an offset."""
        self._single("set_offset").set_offset(offset)

    def set_offset_at(self, when: datetime) -> None:
        """Read from the first message at or after `when` (naive: local time)."""
        self._single("set_offset_at").set_offset_at(epoch_ms(when))

    @property
    def lag(self) -> int:
        """Messages behind the high watermark, as of the last fetch (-1 before it); for a
        consumer group, the sum over the partitions it owns."""
        if self._group is not None:
            return self._group.lag()
        return self._core.lag

    def read_lag(self, timeout_ms: int = READ_LAG_TIMEOUT_MS) -> int:
        """Messages behind the high watermark, asked of the leader now (resolving the
        position first if needed; for a group, summed over the partitions it owns);
        TimeoutError after `timeout_ms`."""
        if self._group is not None:
            return self._group.read_lag(timeout_ms)
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
        if self._group is not None:
            return self._group.stats()
        return self._core.current_stats()

    @property
    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this Reader consumes now."""
        if self._group is not None:
            return self._group.assignment
        return [(self.topic, self.partition)]

    # ------------------------------------------------------------ reading

    def read_message(self, timeout_ms: int | None = None) -> Message:
        """The next message; waits up to `timeout_ms` (None: until one comes). For a
        consumer group, the message returned before is committed first (or, with
        commit_interval_ms, within that interval): the application has come back for
        the next one, so it is done with it."""
        if self._group is not None:
            return self._group.read_message(timeout_ms)
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

    def fetch_message(self, timeout_ms: int | None = None) -> Message:
        """The next message, as read_message, but a consumer group commits it only when
        `commit_messages` is called with it (or a later message of its partition)."""
        if self._group is not None:
            return self._group.fetch_message(timeout_ms)
        return self.read_message(timeout_ms)

    def commit_messages(self, *messages: Message, timeout_ms: int | None = None) -> None:
        """Commit `messages` (consumer groups): per partition the highest offset, which
        commits the lower ones. Returns once committed (with commit_interval_ms: once
        recorded; the interval commits it); raises CommitError for what was not, and the
        group's committed offsets do not move for those."""
        if self._group is None:
            raise RuntimeError("commit_messages needs a consumer group (group_id=)")
        self._group.commit_messages(messages, timeout_ms)

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.read_message()

    def close(self, timeout_ms: int | None = None) -> None:
        """Stop reading. A consumer group's Reader commits what was processed (with
        read_message, also the last message returned), leaves the group and stops,
        within `timeout_ms` (default 10 s) whatever the cluster does; it raises
        CommitError, once everything is closed, for processed offsets it could not
        commit."""
        if self._closed:
            return
        self._closed = True
        if self._group is not None:
            self._group.close(timeout_ms)
            return
        self._pool.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            self.close()
            return
        try:  # the application's own error is the one to see
            self.close()
        except CommitError as e:
            _log.warning("group.close_commit_failed", error=str(e))

    def _single(self, method: str) -> ReaderCore:
        if self._group is not None:
            raise RuntimeError(
                f"{method} is not available with a consumer group: it starts at the group's "
                "committed offsets (reset them with Admin.reset_offsets)"
            )
        return self._core

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
                    [core.topic], timeout_ms=step.timeout_ms, prefer=step.prefer
                )
            except RaftmqError as e:
                core.on_metadata_failure(e, now_ms=now_ms())
                return
            core.on_metadata(metadata)
        elif isinstance(step, ListOffsetStep):
            try:
                [offset] = self._pool.conn(step.endpoint).list_offsets(
                    [(core.topic, core.partition, step.timestamp)], timeout_ms=step.timeout_ms
                )
            except RaftmqError as e:
                core.on_transport_failure(e, now_ms=now_ms())
                return
            core.on_offset(step, offset, now_ms=now_ms())
        else:
            assert isinstance(step, FetchStep)
            try:
                [result] = self._pool.conn(step.endpoint).fetch(
                    [(core.topic, core.partition, step.offset)],
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
