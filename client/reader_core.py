"""The Reader's core: where to read next, from which broker, with what time budget, and
what each answer means, with no I/O (`now_ms` comes in; `next_read` says what to do). The
sync `Reader` and the asyncio `AsyncReader` carry the steps out and nothing more.

A Reader reads one partition from a position (`offset`): FirstOffset (-2, the log start),
LastOffset (-1, the high watermark: only new messages) or an offset, or the first offset at
or after a time. It fetches from the partition's leader with the leader epoch its metadata
shows (so a stale leader answers FENCED_LEADER_EPOCH instead of serving stale data),
follows leader changes and broker restarts by refreshing metadata — asking first the
broker a NOT_LEADER_OR_FOLLOWER answer named as leader (the hint carries no epoch, so the
Reader learns the epoch from that broker's metadata rather than fetch unfenced) — and
backs off on errors. Fetched messages are buffered; the position moves as the application
takes them.

Time: a read with a timeout bounds every call it makes by what it has left
(`deadlines.py`): a broker that accepts connections and never answers costs the read its
own timeout, and the TimeoutError names the last error seen.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raftmq.client.deadlines import Deadline, call_timeout_ms, wait_budget
from raftmq.client.protocol import EARLIEST, LATEST, ClusterMetadata, FetchResult, OffsetResult
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import decode_batches, payload_bytes

if TYPE_CHECKING:
    from raftmq.client.group_core import GroupStats

FirstOffset = EARLIEST
LastOffset = LATEST
BACKOFF_MS = 50
BACKOFF_MS_MAX = 1_000
LIST_OFFSETS_TIMEOUT_MS = 10_000
# read_lag's default bound (it may have to resolve the position first).
READ_LAG_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    min_bytes: int = 1
    max_bytes: int = 1 << 20
    max_wait_ms: int = 500

    def __post_init__(self) -> None:
        if not 1 <= self.min_bytes <= self.max_bytes:
            raise ValueError("need 1 <= min_bytes <= max_bytes")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")


def check_reader_args(partition: int) -> None:
    """A Reader of one partition (group mode is checked by `GroupConfig`)."""
    if partition < 0:
        raise ValueError(f"partition must be >= 0, got {partition}")


@dataclass(frozen=True, slots=True)
class FetchStep:
    """Fetch from `offset` at `endpoint`: a long poll of `max_wait_ms`, the call bounded
    by `timeout_ms`."""

    endpoint: str
    offset: int
    leader_epoch: int
    max_wait_ms: int
    min_bytes: int
    max_bytes: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class ListOffsetStep:
    """Resolve `timestamp` (FirstOffset, LastOffset or a time in ms) at the leader; with
    `high_watermark`, LastOffset for `read_lag` (the position stays)."""

    endpoint: str
    timestamp: int
    timeout_ms: int
    high_watermark: bool = False


@dataclass(frozen=True, slots=True)
class MetadataStep:
    """Refresh the topic's metadata, asking `prefer` first, within `timeout_ms` (None:
    each attempt's own bound)."""

    prefer: tuple[str, ...]
    timeout_ms: int | None


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
    # Error code name -> how often (FENCED_LEADER_EPOCH: a stale leader epoch was fenced).
    errors_by_code: dict[str, int] = field(default_factory=dict)
    # A consumer group's Reader: its membership, partitions and commits (None otherwise;
    # `offset` is then -1 and `lag` the sum over the partitions it owns).
    group: GroupStats | None = None


class ReaderCore:
    def __init__(self, topic: str, partition: int, config: ReaderConfig | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.config = config or ReaderConfig()
        # The next offset to hand out, or FirstOffset / LastOffset (to resolve), or a time
        # to resolve (then `_seek_time_ms` >= 0).
        self.offset = FirstOffset
        self._seek_time_ms = -1
        self._metadata: ClusterMetadata | None = None
        self._metadata_stale = True
        # The leader a NOT_LEADER_OR_FOLLOWER answer named: asked first for metadata.
        self._leader_hint: str | None = None
        self._buffer: deque[Message] = deque()
        self.high_watermark = -1
        self._backoff_until_ms = 0
        self._backoff_ms = BACKOFF_MS
        self.last_error: RaftmqError | None = None
        # read_lag: a high watermark asked of the leader now (None: not asked / not yet).
        self._high_watermark_wanted = False
        self._asked_high_watermark: int | None = None
        # Counters behind `current_stats` (kept off the per-message path).
        self._fetched_messages = 0
        self._fetched_bytes = 0
        self._fetches = 0
        self._errors = 0
        self._errors_by_code: dict[str, int] = {}

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

    def drop_buffer(self) -> None:
        """Forget what was fetched and not handed out (a seek; a consumer group's partition
        being revoked): it does not count as read, and the position stays."""
        self._drop_buffer()

    @property
    def buffered(self) -> int:
        """Messages fetched and not handed out yet."""
        return len(self._buffer)

    def _drop_buffer(self) -> None:
        """A seek: what was fetched and not handed out does not count as read."""
        self._fetched_messages -= len(self._buffer)
        self._fetched_bytes -= payload_bytes(list(self._buffer))
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

    # ------------------------------------------------------------ reading

    def pop(self) -> Message | None:
        """The next buffered message, or None. The hot path of every read: no bookkeeping
        beyond the position (`current_stats` derives the rest)."""
        buffer = self._buffer
        if not buffer:
            return None
        message = buffer.popleft()
        self.offset = message.offset + 1
        return message

    def next_read(self, *, now_ms: int, deadline: Deadline | None) -> Message | Step:
        """`read_message`'s decision: the next buffered message, or the step to take to get
        one, bounded by `deadline` (None: none). Raises TimeoutError past it."""
        message = self.pop()
        if message is not None:
            return message
        remaining_ms = self._remaining(now_ms, deadline, "no message")
        return self.next_step(now_ms=now_ms, remaining_ms=remaining_ms)

    def ask_high_watermark(self) -> None:
        """`read_lag`: the next steps resolve the position, then ask the leader for the
        high watermark; `next_lag` returns the lag once that came."""
        self._high_watermark_wanted = True
        self._asked_high_watermark = None

    def next_lag(self, *, now_ms: int, deadline: Deadline) -> int | Step:
        """`read_lag`'s decision: the lag, once the position is resolved and the leader
        answered; else the step to take. Raises TimeoutError past `deadline`."""
        hw = self._asked_high_watermark
        if hw is not None and self.resolved:
            self._asked_high_watermark = None
            return max(0, hw - self.offset)
        remaining_ms = self._remaining(now_ms, deadline, "no high watermark")
        return self.next_step(now_ms=now_ms, remaining_ms=remaining_ms)

    @property
    def wants_high_watermark(self) -> bool:
        """`ask_high_watermark` was called and the answer has not come yet."""
        return self._high_watermark_wanted

    def asked_lag(self) -> int | None:
        """The lag against the high watermark `ask_high_watermark` asked for, once it came
        and the position is resolved (else None). Unlike `next_lag`, it keeps the answer."""
        hw = self._asked_high_watermark
        if hw is None or not self.resolved:
            return None
        return max(0, hw - self.offset)

    def backoff(self, error: RaftmqError, *, now_ms: int) -> None:
        """Count `error` and back off before the next step (a caller that handled an error
        `on_fetch` raised, e.g. a consumer group resetting an out-of-range position)."""
        self._fail(error, now_ms=now_ms)

    def _remaining(self, now_ms: int, deadline: Deadline | None, what: str) -> int | None:
        if deadline is None:
            return None
        if now_ms >= deadline.at_ms:
            last = self.last_error
            raise TimeoutError(
                f"{what} from {self.topic}-{self.partition} within {deadline.timeout_ms} ms"
                + (f" (last error: {last})" if last is not None else "")
            )
        return deadline.at_ms - now_ms

    def current_stats(self) -> ReaderStats:
        """Stats as of now: what was fetched minus what is still buffered."""
        buffered_bytes = payload_bytes(list(self._buffer))
        return ReaderStats(
            messages=self._fetched_messages - len(self._buffer),
            bytes=self._fetched_bytes - buffered_bytes,
            fetches=self._fetches,
            errors=self._errors,
            offset=self.offset,
            lag=self.lag,
            errors_by_code=dict(self._errors_by_code),
        )

    def next_step(self, *, now_ms: int, remaining_ms: int | None = None) -> Step:
        """What to do next, each call bounded by `remaining_ms` (None: its own bound)."""
        if now_ms < self._backoff_until_ms:
            until = self._backoff_until_ms
            return WaitStep(until if remaining_ms is None else min(until, now_ms + remaining_ms))
        if self._metadata is None or self._metadata_stale:
            prefer = () if self._leader_hint is None else (self._leader_hint,)
            return MetadataStep(prefer, remaining_ms)
        endpoint, epoch = self._metadata.leader(self.topic, self.partition)
        if endpoint is None:
            if self.topic not in self._metadata.topics:
                error = RaftmqError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {self.topic!r} does not exist"
                )
            else:
                error = RaftmqError(
                    ErrorCode.LEADER_NOT_AVAILABLE,
                    f"{self.topic}-{self.partition} has no leader right now",
                )
            self._metadata_stale = True  # look again after the backoff
            self._fail(error, now_ms=now_ms)
            return self.next_step(now_ms=now_ms, remaining_ms=remaining_ms)
        list_timeout_ms = call_timeout_ms(remaining_ms, LIST_OFFSETS_TIMEOUT_MS)
        if self._seek_time_ms >= 0:
            return ListOffsetStep(endpoint, self._seek_time_ms, list_timeout_ms)
        if self.offset < 0:
            return ListOffsetStep(endpoint, self.offset, list_timeout_ms)
        if self._high_watermark_wanted:
            return ListOffsetStep(endpoint, LATEST, list_timeout_ms, high_watermark=True)
        budget = wait_budget(remaining_ms, self.config.max_wait_ms)
        return FetchStep(
            endpoint,
            self.offset,
            epoch,
            budget.wait_ms,
            self.config.min_bytes,
            self.config.max_bytes,
            budget.timeout_ms,
        )

    # ------------------------------------------------------------ answers

    def on_metadata(self, metadata: ClusterMetadata) -> None:
        self._metadata = metadata
        self._metadata_stale = False
        self._leader_hint = None

    def on_metadata_failure(self, error: RaftmqError, *, now_ms: int) -> None:
        self._leader_hint = None  # it did not answer: the bootstrap brokers next time
        self._fail(error, now_ms=now_ms)

    def on_offset(self, step: ListOffsetStep, result: OffsetResult, *, now_ms: int) -> None:
        """The answer to a ListOffsetStep (offset -1 for a time: no message at or after
        it)."""
        if result.error is not None:
            self._on_error(result.error, now_ms=now_ms)
            return
        self._ok()
        if step.high_watermark:
            self._high_watermark_wanted = False
            self._asked_high_watermark = result.offset
        elif self._seek_time_ms >= 0:
            self._seek_time_ms = -1
            # Nothing at or after that time yet: read from the end.
            self.offset = result.offset if result.offset >= 0 else LastOffset
        else:
            self.offset = result.offset

    def on_fetch(self, step: FetchStep, result: FetchResult, *, now_ms: int) -> None:
        """The answer to a FetchStep: buffers the records at or after the position."""
        self._fetches += 1
        if result.error is not None:
            self._on_error(result.error, now_ms=now_ms, hint=result.leader_endpoint)
            return
        if step.offset != self.offset:
            return  # a seek happened meanwhile (async): these are not wanted
        messages = decode_batches(
            result.records, topic=self.topic, partition=self.partition, min_offset=step.offset
        )
        self._ok()
        self.high_watermark = result.high_watermark
        self._buffer.extend(messages)
        self._fetched_messages += len(messages)
        self._fetched_bytes += payload_bytes(messages)

    def on_transport_failure(self, error: RaftmqError, *, now_ms: int) -> None:
        self._metadata_stale = True
        self._fail(error, now_ms=now_ms)

    def _on_error(self, error: RaftmqError, *, now_ms: int, hint: str | None = None) -> None:
        if error.code == ErrorCode.OFFSET_OUT_OF_RANGE:
            # The application decides (set_offset): a silent jump would lose or repeat data.
            raise error
        if error.code in (
            ErrorCode.NOT_LEADER_OR_FOLLOWER,
            ErrorCode.LEADER_NOT_AVAILABLE,
            ErrorCode.FENCED_LEADER_EPOCH,
            ErrorCode.UNKNOWN_LEADER_EPOCH,
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
            ErrorCode.BROKER_NOT_AVAILABLE,
        ):
            self._metadata_stale = True
        if error.code == ErrorCode.NOT_LEADER_OR_FOLLOWER and hint is not None:
            self._leader_hint = hint
        if not error.retriable:
            raise error
        self._fail(error, now_ms=now_ms)

    def _fail(self, error: RaftmqError, *, now_ms: int) -> None:
        self._errors += 1
        name = error.code.name
        self._errors_by_code[name] = self._errors_by_code.get(name, 0) + 1
        self.last_error = error
        self._backoff_until_ms = now_ms + self._backoff_ms
        self._backoff_ms = min(BACKOFF_MS_MAX, self._backoff_ms * 2)

    def _ok(self) -> None:
        self._backoff_ms = BACKOFF_MS
        self.last_error = None
