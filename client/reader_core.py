"""The Reader's core: where to read next, from which broker, and what each answer means,
with no I/O (`now_ms` comes in; `next_step` says what to do). The sync `Reader` and the
asyncio `AsyncReader` carry the steps out.

A Reader reads one partition from a position (`offset`): FirstOffset (-2, the log start),
LastOffset (-1, the high watermark: only new messages) or an offset, or the first offset at
or after a time. It fetches from the partition's leader with the leader epoch its metadata
shows (so a stale leader answers FENCED_LEADER_EPOCH instead of serving stale data),
follows leader changes and broker restarts by refreshing metadata, and backs off on
errors. Fetched messages are buffered; the position moves as the application takes them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from raftmq.client.protocol import EARLIEST, LATEST, ClusterMetadata, FetchResult
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

FirstOffset = EARLIEST
LastOffset = LATEST
BACKOFF_MS = 50
BACKOFF_MS_MAX = 1_000


@dataclass(frozen=True, slots=True)
class FetchStep:
    endpoint: str
    offset: int
    leader_epoch: int


@dataclass(frozen=True, slots=True)
class ListOffsetStep:
    """Resolve `timestamp` (FirstOffset, LastOffset or a time in ms) at the leader."""

    endpoint: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class MetadataStep:
    pass


@dataclass(frozen=True, slots=True)
class WaitStep:
    until_ms: int


Step = FetchStep | ListOffsetStep | MetadataStep | WaitStep


@dataclass(slots=True)
class ReaderStats:
    messages: int = 0
    bytes: int = 0
    fetches: int = 0
    errors: int = 0
    offset: int = -1
    lag: int = -1


class ReaderCore:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        # The next offset to hand out, or FirstOffset / LastOffset (to resolve), or a time
        # to resolve (then `_seek_time_ms` >= 0).
        self.offset = FirstOffset
        self._seek_time_ms = -1
        self._metadata: ClusterMetadata | None = None
        self._metadata_stale = True
        self._buffer: deque[Message] = deque()
        self.high_watermark = -1
        self._backoff_until_ms = 0
        self._backoff_ms = BACKOFF_MS
        self.last_error: RaftmqError | None = None
        # Counters behind `current_stats` (kept off the per-message path).
        self._fetched_messages = 0
        self._fetched_bytes = 0
        self._fetches = 0
        self._errors = 0

    # ------------------------------------------------------------ position

    def set_offset(self, offset: int) -> None:
        if offset < FirstOffset:
            raise ValueError(f"offset must be >= 0, FirstOffset or LastOffset, got {offset}")
        self.offset = offset
        self._seek_time_ms = -1
        self._drop_buffer()

    def set_offset_at(self, timestamp_ms: int) -> None:
        if timestamp_ms < 0:
            raise ValueError(f"a time before 1970 ({timestamp_ms} ms) has no offset")
        self._seek_time_ms = timestamp_ms
        self._drop_buffer()

    def _drop_buffer(self) -> None:
        """A seek: what was fetched and not handed out does not count as read."""
        self._fetched_messages -= len(self._buffer)
        self._fetched_bytes -= sum(len(m.value or b"") + len(m.key or b"") for m in self._buffer)
        self._buffer.clear()

    @property
    def resolved(self) -> bool:
        return self.offset >= 0 and self._seek_time_ms < 0

    @property
    def lag(self) -> int:
        """Messages between the position and the high watermark at the last fetch (-1 until
        the first fetch)."""
        if self.high_watermark < 0 or not self.resolved:
            return -1
        return max(0, self.high_watermark - self.offset)

    # ------------------------------------------------------------ steps

    def pop(self) -> Message | None:
        """The next buffered message, or None. The hot path of every read: no bookkeeping
        beyond the position (`current_stats` derives the rest)."""
        buffer = self._buffer
        if not buffer:
            return None
        message = buffer.popleft()
        self.offset = message.offset + 1
        return message

    def current_stats(self) -> ReaderStats:
        """Stats as of now: what was fetched minus what is still buffered."""
        buffered_bytes = sum(len(m.value or b"") + len(m.key or b"") for m in self._buffer)
        return ReaderStats(
            messages=self._fetched_messages - len(self._buffer),
            bytes=self._fetched_bytes - buffered_bytes,
            fetches=self._fetches,
            errors=self._errors,
            offset=self.offset,
            lag=self.lag,
        )

    def next_step(self, *, now_ms: int) -> Step:
        if now_ms < self._backoff_until_ms:
            return WaitStep(self._backoff_until_ms)
        if self._metadata is None or self._metadata_stale:
            return MetadataStep()
        endpoint, epoch = self._metadata.leader(self.topic, self.partition)
        if endpoint is None:
            if self.topic not in self._metadata.topics:
                self._fail(
                    RaftmqError(
                        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                        f"topic {self.topic!r} does not exist",
                    ),
                    now_ms=now_ms,
                )
            else:
                self._fail(
                    RaftmqError(
                        ErrorCode.LEADER_NOT_AVAILABLE,
                        f"{self.topic}-{self.partition} has no leader right now",
                    ),
                    now_ms=now_ms,
                )
            return WaitStep(self._backoff_until_ms)
        if self._seek_time_ms >= 0:
            return ListOffsetStep(endpoint, self._seek_time_ms)
        if self.offset < 0:
            return ListOffsetStep(endpoint, self.offset)
        return FetchStep(endpoint, self.offset, epoch)

    # ------------------------------------------------------------ answers

    def on_metadata(self, metadata: ClusterMetadata) -> None:
        self._metadata = metadata
        self._metadata_stale = False

    def on_metadata_failure(self, error: RaftmqError, *, now_ms: int) -> None:
        self._fail(error, now_ms=now_ms)

    def on_offset(self, offset: int, error: RaftmqError | None, *, now_ms: int) -> None:
        """The answer to a ListOffsetStep (offset -1: no message at or after that time)."""
        if error is not None:
            self._on_error(error, now_ms=now_ms)
            return
        self._ok()
        if self._seek_time_ms >= 0:
            self._seek_time_ms = -1
            # Nothing at or after that time yet: read from the end.
            self.offset = offset if offset >= 0 else LastOffset
        else:
            self.offset = offset

    def on_fetch(self, result: FetchResult, messages: list[Message], *, now_ms: int) -> None:
        """The answer to a FetchStep: `messages` are the records at or after the position."""
        self._fetches += 1
        if result.error is not None:
            self._on_error(result.error, now_ms=now_ms)
            return
        self._ok()
        self.high_watermark = result.high_watermark
        self._buffer.extend(messages)
        self._fetched_messages += len(messages)
        self._fetched_bytes += sum(len(m.value or b"") + len(m.key or b"") for m in messages)

    def on_transport_failure(self, error: RaftmqError, *, now_ms: int) -> None:
        self._metadata_stale = True
        self._fail(error, now_ms=now_ms)

    def _on_error(self, error: RaftmqError, *, now_ms: int) -> None:
        if error.code == ErrorCode.OFFSET_OUT_OF_RANGE:
            # The application decides (set_offset): a silent jump would lose or repeat data.
            raise error
        if error.code in (
            ErrorCode.NOT_LEADER_OR_FOLLOWER,
            ErrorCode.LEADER_NOT_AVAILABLE,
            ErrorCode.FENCED_LEADER_EPOCH,
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
            ErrorCode.BROKER_NOT_AVAILABLE,
        ):
            self._metadata_stale = True
        if not error.retriable and error.code != ErrorCode.FENCED_LEADER_EPOCH:
            raise error
        self._fail(error, now_ms=now_ms)

    def _fail(self, error: RaftmqError, *, now_ms: int) -> None:
        self._errors += 1
        self.last_error = error
        self._backoff_until_ms = now_ms + self._backoff_ms
        self._backoff_ms = min(BACKOFF_MS_MAX, self._backoff_ms * 2)

    def _ok(self) -> None:
        self._backoff_ms = BACKOFF_MS
        self.last_error = None
