"""The Writer's core: batching, partitioning, idempotent sequencing and retry decisions,
with no I/O and no clock of its own (`now_ms` comes in; actions go out), as h11 is driven
by bytes. The sync `Writer` and the asyncio `AsyncWriter` are thin shells around it: they
feed it messages, metadata, responses and the time, and carry out what it asks for —
`poll` gives the produce requests to send (without waiting for them), `next_request` the
one metadata or producer-id request to make next (awaited, bounded by its `timeout_ms`).

Flow of one message: `add` -> the partition's open batch (balancer, or the message's own
partition) -> sealed when it reaches `batch_size` messages or `batch_bytes`, or after
`linger_ms` once nothing of its partition is in flight (`pipeline_partial_batches`: once
the in-flight window has room), or on `flush` -> queued ->
sent to the partition's leader in a `ProduceSend` (one request per leader broker, many
partitions each) -> completed (`Completion`) with its offset, or retried, or failed.

Idempotence (on by default): the writer holds a producer id and epoch from the cluster
(`InitProducerId`, asked when there is something to write); every sealed batch of a
partition gets the next sequence numbers; at most `INFLIGHT_IDEMPOTENT_MAX` (5) batches
per partition are in flight (`inflight_batches_max`; a batch that is not full is sent only
while none is, unless `pipeline_partial_batches`), which is the window the partition
leader remembers, so a retry after a lost acknowledgement is answered with the original
offset and never written twice. A batch keeps its encoded bytes across retries. After an
error a partition sends one batch at a time, in sequence order, until its retries are
through. A sequence error at the head of a partition (the leader lost our state) bumps the epoch and
restarts every partition's sequences at 0 (KIP-360). Without idempotence one batch per
partition is in flight (order) and a retry may duplicate.

Time: every message has a deadline (`write_timeout_ms` after `add`). Every request is
bounded by what the earliest pending message has left (`deadlines.py`), so a broker that
never answers costs a write its own timeout, not an RPC timeout on top; a message past
its deadline fails at the next `poll`, whatever it waits for (metadata, a producer id, a
leader), with the last error seen.

Leader hints: a NOT_LEADER_OR_FOLLOWER answer may name the leader. The retry goes there at
once (with leader epoch -1, as the hint carries none: sequence numbers, not the epoch,
keep a retry from being written twice), and the metadata refresh asks that broker first.

Outcomes: every message ends in exactly one `Completion`: an offset, or an error. A batch
that was sent and whose fate is unknown when it gives up (timeout, lost connection, leader
moved after the append) fails with `OutcomeUnknownError` ("maybe written"); every other
error means "not written". `close` fails whatever is left (in flight: outcome unknown;
never sent: `WriterClosedError`), so nothing is dropped silently.

Not thread-safe: the shells call it under their lock (sync) or from one event loop.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from raftmq.client.balancers import Balancer, RoundRobin
from raftmq.client.deadlines import call_timeout_ms, wait_budget
from raftmq.client.protocol import ClusterMetadata
from raftmq.compression import CODEC_NONE
from raftmq.errors import (
    NOTHING_APPENDED_CODES,
    ErrorCode,
    OutcomeUnknownError,
    RaftmqError,
    WriterClosedError,
)
from raftmq.message import TIMESTAMP_UNSET, Message
from raftmq.metadata import NO_LEADER
from raftmq.record_batch import encode_batch, payload_bytes, untrack_messages

ACKS_ALL = -1
INFLIGHT_IDEMPOTENT_MAX = 5  # Kafka: the leader's duplicate window per producer
REQUEST_BYTES_MAX = 16 << 20  # one ProduceRequest carries at most this many batch bytes
RETRY_BACKOFF_MS = 100
RETRY_BACKOFF_MS_MAX = 1_000
# While a retried batch waits out its backoff and the metadata still names the leader
# epoch it failed on, the metadata is asked again this often, so that the batch goes to a
# new leader as soon as the controller has elected one (KIP-951) rather than after its
# backoff: after a leader's kill -9 the cluster took writes at ~170 ms, the Writer's
# refreshes at the ends of its backoffs (0, 100, 300 ms) saw the new leader at ~300.
LEADER_WATCH_INTERVAL_MS = 50
# Metadata and InitProducerId retries: exponential from the first to the max (Kafka's
# retry.backoff.ms and retry.backoff.max.ms). With a 2 s max, a Writer whose every broker
# had been down asked again at 1.1, 3.1, 5.1 s ... after the failure, up to 2 s after the
# cluster was back (`on_broker_reachable` now also asks when a broker answers again).
METADATA_BACKOFF_MS = 100
METADATA_BACKOFF_MS_MAX = 1_000
# A failing InitProducerId is reported once, then at most this often (it is retried
# every METADATA_BACKOFF_MS_MAX while messages wait for it).
PRODUCER_ID_REPORT_INTERVAL_MS = 10_000
# Per-message overhead counted toward batch_bytes (varints, attributes, deltas).
RECORD_OVERHEAD_BYTES = 10
# Codes after which the topic's metadata is refreshed before the retry.
_STALE_METADATA_CODES = frozenset(
    {
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.LEADER_NOT_AVAILABLE,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.BROKER_NOT_AVAILABLE,
    }
)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    topic: str | None = None
    balancer_factory: Callable[[], Balancer] | None = None
    required_acks: int = ACKS_ALL
    batch_size: int = 1_000  # messages per batch
    batch_bytes: int = 1 << 20  # bytes of records per batch
    linger_ms: int = 5
    compression: int = CODEC_NONE
    idempotent: bool = True
    max_attempts: int = 10
    write_timeout_ms: int = 30_000
    # One request's budget (Kafka's request.timeout.ms): a request to a leader that does
    # not answer in time is given up and retried (elsewhere, after a metadata refresh).
    request_timeout_ms: int = 30_000
    # Messages accepted but not yet completed; `add` refuses more (the shell waits).
    buffered_messages_max: int = 100_000
    # Batches of one partition in flight at once (Kafka's max.in.flight.requests.per.
    # connection, per partition here): None is INFLIGHT_IDEMPOTENT_MAX for an idempotent
    # writer, 1 otherwise. With 1, full batches too wait for the one in flight (kafka-go's
    # Writer sends one batch per partition at a time).
    inflight_batches_max: int | None = None
    # False: a batch sealed before it is full (linger_ms passed, or a blocking caller)
    # waits while its partition has a batch in flight and takes what arrives meanwhile,
    # as Nagle's algorithm holds small segments: under load a partition sends fewer,
    # larger requests, and CPU per request is what limits this cluster; full batches are
    # pipelined up to the window either way. True: partial batches are pipelined too,
    # as Kafka's producer does.
    pipeline_partial_batches: bool = False

    def __post_init__(self) -> None:
        if self.required_acks not in (-1, 0, 1):
            raise ValueError(f"required_acks must be -1 (all), 0 or 1, got {self.required_acks}")
        if self.idempotent and self.required_acks != ACKS_ALL:
            raise ValueError(
                "an idempotent writer needs required_acks=RequireAll (-1); "
                "pass idempotent=False for acks 0 or 1"
            )
        for name in (
            "batch_size",
            "batch_bytes",
            "max_attempts",
            "write_timeout_ms",
            "request_timeout_ms",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.linger_ms < 0:
            raise ValueError("linger_ms must be >= 0")
        window = self.inflight_batches_max
        if window is not None and not 1 <= window <= self.inflight_limit:
            raise ValueError(
                f"inflight_batches_max must be in [1, {self.inflight_limit}], got {window}"
                + (
                    f" (the leader remembers the last {INFLIGHT_IDEMPOTENT_MAX} batches of "
                    "an idempotent writer)"
                    if self.idempotent
                    else " (without idempotence, a retry behind another batch would reorder)"
                )
            )

    @property
    def inflight_limit(self) -> int:
        """The largest window this writer may use."""
        return INFLIGHT_IDEMPOTENT_MAX if self.idempotent else 1

    @property
    def inflight_max(self) -> int:
        """Batches of one partition in flight at once."""
        window = self.inflight_batches_max
        return self.inflight_limit if window is None else window


def check_topics(writer_topic: str | None, messages: Iterable[Message]) -> None:
    """A topic on the Writer and on a message is exclusive: exactly one of them (kafka-go's
    rule), checked before anything is sent. A message whose topic is the Writer's own is
    no conflict: a written message carries its topic, and writing the same messages again
    (a retry loop) must work."""
    for message in messages:
        if writer_topic is not None and message.topic not in (None, writer_topic):
            raise ValueError(
                f"the Writer has topic {writer_topic!r} and a message has topic "
                f"{message.topic!r}: set the topic on the Writer or on each message, not both"
            )
        if writer_topic is None and message.topic is None:
            raise ValueError("a message has no topic and the Writer has none: set one of them")


class WriteError(RaftmqError):
    """Some messages of a write failed: `errors` pairs each with its cause (a per-code
    error such as `LeaderNotAvailableError`, or `OutcomeUnknownError`). Also a
    RaftmqError, with the first failure's code; `retriable` is True only when every cause
    is retriable, so `except WriteError as e: if e.retriable: ...` is the retry test."""

    def __init__(self, errors: list[tuple[Message, RaftmqError]]) -> None:
        first = errors[0][1]
        shown = "; ".join(f"{m!r}: {e}" for m, e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        super().__init__(first.code, f"{len(errors)} message(s) failed: {shown}{more}")
        self.errors = errors

    def __new__(cls, errors: list[tuple[Message, RaftmqError]]) -> WriteError:
        return Exception.__new__(cls)

    def __reduce__(self) -> tuple[object, ...]:
        return (WriteError, (self.errors,))

    @property
    def retriable(self) -> bool:
        """Every message failed for a reason that writing it again may cure (a leader
        change, a timeout, an unknown outcome)."""
        return all(error.retriable for _, error in self.errors)


class WriteCall:
    """One `write_messages` call: its messages' outcomes as completions come in (a batch
    may mix several calls' messages, and a call's messages may span batches). The ticket
    both shells give `add`; `resolve` gets None (all written) or the WriteError, once."""

    __slots__ = ("failures", "messages", "outcomes", "resolve")

    def __init__(
        self, messages: list[Message], resolve: Callable[[WriteError | None], None]
    ) -> None:
        self.messages = messages
        self.resolve = resolve
        self.outcomes = 0
        self.failures: list[tuple[Message, RaftmqError]] = []

    def add(self, completion: Completion) -> None:
        """Count one completion; resolve once every message has an outcome."""
        self.outcomes += len(completion.messages)
        if completion.error is not None:
            self.failures.extend((m, completion.error) for m in completion.messages)
        assert self.outcomes <= len(self.messages)
        if self.outcomes == len(self.messages):
            self.resolve(WriteError(self.failures) if self.failures else None)


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of some messages of one `add` call (`ticket`): all written (offsets are
    set on the messages) or all failed with `error`."""

    ticket: object
    messages: list[Message]
    error: RaftmqError | None


@dataclass(frozen=True, slots=True)
class ProduceBatch:
    topic: str
    partition: int
    leader_epoch: int
    records: bytes


@dataclass(frozen=True, slots=True)
class ProduceSend:
    """Send one ProduceRequest to `endpoint` with the broker's wait `timeout_ms` and the
    call's deadline `rpc_timeout_ms`; report with `on_produce_response` or
    `on_produce_failure` (acks=0: report nothing)."""

    request_id: int
    endpoint: str
    acks: int
    timeout_ms: int
    batches: tuple[ProduceBatch, ...]
    rpc_timeout_ms: int


@dataclass(frozen=True, slots=True)
class ProducerIdRequest:
    """InitProducerId ((-1, -1): a new id; our own: bump the epoch) at any broker, within
    `timeout_ms` in all; report with `on_producer_id` or `on_producer_id_failure`."""

    producer_id: int
    producer_epoch: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    """Metadata for `topics`, asking the `prefer` brokers (leader hints) first, within
    `timeout_ms` in all; report with `on_metadata` or `on_metadata_failure`."""

    topics: tuple[str, ...]
    prefer: tuple[str, ...]
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class PartitionResult:
    topic: str
    partition: int
    base_offset: int
    error: RaftmqError | None
    # With NOT_LEADER_OR_FOLLOWER: the leader the broker knows of, if any.
    leader_endpoint: str | None = None


@dataclass(slots=True)
class _Batch:
    topic: str
    partition: int
    messages: list[Message]
    tickets: list[object]
    created_ms: int
    deadline_ms: int
    base_sequence: int = -1
    producer_epoch: int = -1
    records: bytes = b""
    attempts: int = 0
    backoff_until_ms: int = 0
    # The leader epoch its last attempt was routed with (-1: none yet, or sent to a
    # refusal's hint, which names no epoch). A higher epoch in the metadata ends the
    # backoff at once (KIP-951): the retry goes to a new leader, not the one that failed.
    attempt_leader_epoch: int = -1
    # Some attempt may have appended it (sent, then no definite "nothing appended").
    maybe_written: bool = False
    # It failed at least once and went back into the queue.
    retried: bool = False
    last_error: RaftmqError | None = None

    @property
    def record_count(self) -> int:
        return len(self.messages)


@dataclass(slots=True)
class _Partition:
    topic: str
    partition: int
    open: list[Message] = field(default_factory=list)
    open_tickets: list[object] = field(default_factory=list)
    open_bytes: int = 0
    open_since_ms: int = 0
    open_deadline_ms: int = 0
    # Sealed, in sequence order (retries go back to the front in order).
    queued: deque[_Batch] = field(default_factory=deque)
    # Invariant: len(in_flight) <= inflight limit; keyed by base sequence (or id).
    in_flight: dict[int, _Batch] = field(default_factory=dict)
    next_sequence: int = 0
    # After an error: one batch in flight at a time until the retried ones are through.
    recovering: bool = False


def _histogram_bucket(count: int) -> int:
    """The power of two at or above `count` (1, 2, 4, 8, ...)."""
    return 1 << max(0, count - 1).bit_length()


@dataclass(slots=True)
class WriterStats:
    """Counters since the Writer was made (`Writer.stats()` returns a copy). `messages`,
    `bytes` and `batches` count what was sent once (a retry counts in `retries`, not
    again); `errors` counts failed messages. The batch size distribution: min, max, avg
    (messages per batch) and `batch_messages_histogram`: power-of-two upper bound ->
    batches of at most that many messages (and more than half of it)."""

    messages: int = 0
    bytes: int = 0
    batches: int = 0
    errors: int = 0
    retries: int = 0
    batch_messages_min: int = 0
    batch_messages_max: int = 0
    batch_messages_histogram: dict[int, int] = field(default_factory=dict)

    def record_batch(self, count: int, size: int) -> None:
        self.batches += 1
        self.messages += count
        self.bytes += size
        self.batch_messages_min = (
            count if self.batches == 1 else min(self.batch_messages_min, count)
        )
        self.batch_messages_max = max(self.batch_messages_max, count)
        bucket = _histogram_bucket(count)
        self.batch_messages_histogram[bucket] = self.batch_messages_histogram.get(bucket, 0) + 1

    @property
    def batch_messages_avg(self) -> float:
        return self.messages / self.batches if self.batches else 0.0

    def copy(self) -> WriterStats:
        return WriterStats(
            self.messages,
            self.bytes,
            self.batches,
            self.errors,
            self.retries,
            self.batch_messages_min,
            self.batch_messages_max,
            dict(sorted(self.batch_messages_histogram.items())),
        )


class ProducerCore:
    def __init__(self, config: WriterConfig, balancer: Balancer) -> None:
        self.config = config
        self._balancer = balancer
        # kafka-go's default: a call's messages are spread in bulk (`_add_in_turn`).
        self._round_robin = balancer if type(balancer) is RoundRobin else None
        self._metadata: ClusterMetadata | None = None
        self._partitions: dict[tuple[str, int], _Partition] = {}
        # Messages waiting for their topic's metadata: topic -> (message, ticket, deadline,
        # linger), in arrival order (so in deadline order).
        self._unrouted: dict[str, list[tuple[Message, object, int, bool]]] = {}
        self._stale_topics: set[str] = set()
        # Topics a metadata answer said do not exist (until one shows them).
        self._missing_topics: set[str] = set()
        # (topic, partition) -> the leader endpoint a NOT_LEADER_OR_FOLLOWER answer named;
        # dropped when metadata for the topic comes.
        self._leader_hints: dict[tuple[str, int], str] = {}
        # Why the last refresh of each kind failed (None after one succeeded), and the last
        # failure of any request: the reasons given to messages that run out of time.
        self._metadata_error: RaftmqError | None = None
        self._producer_id_error: RaftmqError | None = None
        self._last_error: RaftmqError | None = None
        self._metadata_backoff_ms = METADATA_BACKOFF_MS
        self._metadata_retry_ms = 0
        self._metadata_requested = False
        # When the next leader-watch refresh is due (None: no batch waits for a new leader;
        # see LEADER_WATCH_INTERVAL_MS).
        self._leader_watch_ms: int | None = None
        self._completions: list[Completion] = []
        self._request_ids = itertools.count(1)
        # request id -> the batches it carries, in request order (acks != 0 only).
        self._requests: dict[int, list[_Batch]] = {}
        # Accepted, not yet completed. Invariant: 0 <= buffered <= buffered_messages_max.
        self.buffered = 0
        self.producer_id = -1
        self.producer_epoch = -1
        self._producer_id_requested = False
        self._producer_id_backoff_ms = METADATA_BACKOFF_MS
        self._producer_id_retry_ms = 0
        # Consecutive InitProducerId failures, and when the last one was reported.
        self.producer_id_failures = 0
        self._producer_id_reported_ms: int | None = None
        self._epoch_bump_needed = False
        self._flush_requested = False
        # After `close`: everything was failed; nothing is accepted or sent any more.
        self.closed = False
        self.stats = WriterStats()

    # ------------------------------------------------------------ inputs

    def room(self) -> int:
        return self.config.buffered_messages_max - self.buffered

    def add(
        self,
        messages: Sequence[Message],
        ticket: object,
        *,
        now_ms: int,
        wall_ms: int,
        linger: bool = True,
    ) -> None:
        """Accept messages of one call. The caller checked `room()` and the topic rules.
        `now_ms` is the shells' monotonic clock (deadlines); `wall_ms` the time since the
        epoch, stamped into messages that have no time (as kafka-go's Writer does).
        `linger=False` (a caller that blocks until they are written gains nothing from
        waiting for more): their batches are due at the next poll (sealed there when they
        could be sent)."""
        assert not self.closed, "the shell refuses writes after close"
        assert len(messages) <= self.room()
        # Held until acknowledged, they would be walked by every collection of the
        # generations they reach (bench produce 300-350k msgs/s with the collector on,
        # 410-450k with it off).
        untrack_messages(messages)
        deadline_ms = now_ms + self.config.write_timeout_ms
        self.buffered += len(messages)
        if self._add_in_turn(
            messages, ticket, now_ms=now_ms, wall_ms=wall_ms, deadline_ms=deadline_ms, linger=linger
        ):
            return
        default_topic = self.config.topic
        balance = self._balancer.balance
        # The messages of each topic by partition, in the order they came.
        groups: dict[str, dict[int, list[Message]]] = {}
        # The per-message work is only what must be: a time, a topic, a partition. What a
        # topic needs (its partitions, its group) is looked up when the topic changes from
        # one message to the next, not per message: a call is mostly of one topic.
        topic = ""  # no topic is named "": the first message sets it
        partitions: range | None = None
        by_partition: dict[int, list[Message]] = {}
        for message in messages:
            if message.timestamp_ms == TIMESTAMP_UNSET:
                message.timestamp_ms = wall_ms
            name = message.topic or default_topic
            if name != topic:
                assert name, "the shell checks that every message has a topic"
                topic = name
                partitions = self._partitions_of(topic)
                by_partition = groups.setdefault(topic, {})
            partition = message.partition
            if partition is not None or partitions is None:
                partition = self._partition_in(
                    message, topic, partitions, ticket, deadline_ms=deadline_ms, linger=linger
                )
                if partition < 0:
                    continue
            else:  # the common case, inline: a balanced message of a known topic
                partition = balance(message, partitions)
            group = by_partition.get(partition)
            if group is None:
                group = by_partition[partition] = []
            group.append(message)
        for topic, by_partition in groups.items():
            for partition, group in by_partition.items():
                self._append(
                    topic,
                    partition,
                    group,
                    ticket,
                    now_ms=now_ms,
                    deadline_ms=deadline_ms,
                    linger=linger,
                )

    def _add_in_turn(
        self,
        messages: Sequence[Message],
        ticket: object,
        *,
        now_ms: int,
        wall_ms: int,
        deadline_ms: int,
        linger: bool,
    ) -> bool:
        """`add`'s most common case, in bulk: a round-robin Writer, every message of the
        call for the Writer's topic (its partitions known) and none for a given partition.
        The i-th message takes the i-th turn, as `balance` would give it, so each
        partition's messages are a slice of the call: no balancer call or dict lookup per
        message (`add` on 1000-message calls: ~300 -> ~100 ns a message). False: not that
        case, and nothing added (timestamps may have been stamped, as `add` stamps them)."""
        rotation, topic = self._round_robin, self.config.topic
        if rotation is None or not topic or not messages:
            return False
        partitions = self._partitions_of(topic)
        if partitions is None:
            return False
        for message in messages:
            if message.partition is not None or (message.topic and message.topic != topic):
                return False
            if message.timestamp_ms == TIMESTAMP_UNSET:
                message.timestamp_ms = wall_ms
        first = rotation.take_turns(len(messages))
        count = len(partitions)
        # Slices of a list are lists, which `_append` takes: no tuple slice copied again.
        spread = messages if isinstance(messages, list) else list(messages)
        for turn in range(first, first + min(count, len(messages))):
            self._append(
                topic,
                partitions[turn % count],
                spread[turn - first :: count],
                ticket,
                now_ms=now_ms,
                deadline_ms=deadline_ms,
                linger=linger,
            )
        return True

    def flush(self) -> None:
        """Seal every open batch at the next poll (a `flush()` or `close()` call)."""
        self._flush_requested = True

    def on_metadata(
        self, metadata: ClusterMetadata, *, now_ms: int, asked: Iterable[str] = ()
    ) -> None:
        """A metadata view (the shell's merged one: every topic it knows), the answer to a
        MetadataRequest for `asked` (empty: given unasked, as tests do)."""
        self._metadata_requested = False
        if self.closed:
            return
        self._metadata_error = None
        if self._metadata is None or metadata.version >= self._metadata.version:
            self._metadata = metadata
        asked = set(asked)
        known = set(metadata.topics)
        # The view merges earlier answers: only what was asked is fresh (all of it when the
        # view came unasked).
        fresh = asked & known if asked else known
        self._stale_topics -= fresh
        self._leader_hints = {
            key: hint for key, hint in self._leader_hints.items() if key[0] not in fresh
        }
        self._missing_topics = (self._missing_topics | asked) - known
        for topic in list(self._unrouted):
            if topic in metadata.topics:
                waiting = self._unrouted.pop(topic)
                for message, ticket, deadline_ms, linger in waiting:
                    partition = self._partition_in(
                        message,
                        topic,
                        self._partitions_of(topic),
                        ticket,
                        deadline_ms=deadline_ms,
                        linger=linger,
                    )
                    if partition >= 0:
                        self._append(
                            topic,
                            partition,
                            [message],
                            ticket,
                            now_ms=now_ms,
                            deadline_ms=deadline_ms,
                            linger=linger,
                        )
        for topic in asked & set(metadata.topic_errors):
            # The brokers refused to create it for good (a bad or reserved name): waiting
            # for it until write_timeout_ms would change nothing.
            refused = self._unrouted.pop(topic, [])
            self._missing_topics.discard(topic)
            if refused:
                self._fail(
                    [w[0] for w in refused], [w[1] for w in refused], metadata.topic_errors[topic]
                )
        if any(
            self._needs_metadata(topic) for topic in asked if topic not in metadata.topic_errors
        ):
            # Missing, or a partition we must write to has no leader yet: ask again later.
            self._metadata_backed_off(now_ms)
        elif asked:
            self._metadata_backoff_ms = METADATA_BACKOFF_MS
            self._metadata_retry_ms = 0
        self._leader_watch_ms = (
            now_ms + LEADER_WATCH_INTERVAL_MS if self._awaiting_new_leader(now_ms) else None
        )

    def on_metadata_failure(
        self, topics: Iterable[str], error: RaftmqError, *, now_ms: int
    ) -> None:
        """A metadata refresh for `topics` failed: messages past their deadline fail."""
        self._metadata_requested = False
        if self.closed:
            return
        self._metadata_error = self._last_error = error
        self._metadata_backed_off(now_ms)
        self._leader_watch_ms = None  # the batches' own backoffs go on
        for topic in topics:
            self._expire_unrouted(topic, now_ms=now_ms)

    def on_broker_reachable(self, *, now_ms: int) -> None:
        """A broker answers again after its connection was lost: a metadata or producer-id
        request waiting out its backoff goes now, and a failure after it backs off from
        the first step again. (Kafka's clients, too, ask as soon as a connection is ready.)
        After kill -9 of all six nodes of a `raftmq up` cluster, the brokers' channels were
        back at ~2.6 s and the Writer's next metadata attempt was due at 3.5 s."""
        self._metadata_backoff_ms = self._producer_id_backoff_ms = METADATA_BACKOFF_MS
        self._metadata_retry_ms = min(self._metadata_retry_ms, now_ms)
        self._producer_id_retry_ms = min(self._producer_id_retry_ms, now_ms)

    def on_producer_id(self, producer_id: int, producer_epoch: int) -> None:
        self._producer_id_requested = False
        self._producer_id_error = None
        self.producer_id_failures = 0
        self._producer_id_reported_ms = None
        self._producer_id_backoff_ms = METADATA_BACKOFF_MS
        self._producer_id_retry_ms = 0
        bumped = producer_id == self.producer_id and producer_epoch > self.producer_epoch
        self.producer_id, self.producer_epoch = producer_id, producer_epoch
        if bumped or self._epoch_bump_needed:
            self._epoch_bump_needed = False
            self._restart_sequences()

    def on_producer_id_failure(self, error: RaftmqError, *, now_ms: int) -> bool:
        """InitProducerId failed: retried after a backoff. True when the shell should
        report it (the first of a run of failures, then every
        PRODUCER_ID_REPORT_INTERVAL_MS): not every 100 ms."""
        self._producer_id_requested = False
        self._producer_id_error = self._last_error = error
        self.producer_id_failures += 1
        self._producer_id_retry_ms = now_ms + self._producer_id_backoff_ms
        self._producer_id_backoff_ms = min(
            METADATA_BACKOFF_MS_MAX, self._producer_id_backoff_ms * 2
        )
        last = self._producer_id_reported_ms
        if last is None or now_ms - last >= PRODUCER_ID_REPORT_INTERVAL_MS:
            self._producer_id_reported_ms = now_ms
            return True
        return False

    def on_produce_response(
        self, request_id: int, results: Sequence[PartitionResult], *, now_ms: int
    ) -> None:
        batches = self._requests.pop(request_id, None)
        if batches is None:
            return
        # The broker answers in request order, one result per batch; a request may carry
        # several batches of one partition, so results pair with batches by position,
        # never by (topic, partition).
        if len(results) != len(batches) or any(
            (r.topic, r.partition) != (b.topic, b.partition)
            for r, b in zip(results, batches, strict=False)
        ):
            error = RaftmqError(
                ErrorCode.UNKNOWN_SERVER_ERROR,
                f"the broker answered {len(results)} result(s) to a request of "
                f"{len(batches)} batch(es), not one per batch in request order",
            )
            for batch in batches:  # which of them were appended is unknown
                self._on_batch_error(batch, error, sent=True, now_ms=now_ms, maybe_written=True)
            return
        for batch, result in zip(batches, results, strict=True):
            if result.error is None:
                self._on_batch_written(batch, result.base_offset)
            else:
                self._on_batch_error(
                    batch, result.error, sent=True, now_ms=now_ms, hint=result.leader_endpoint
                )

    def on_produce_failure(self, request_id: int, error: RaftmqError, *, now_ms: int) -> None:
        """The request failed in transport (timeout, connection lost): its outcome is unknown."""
        batches = self._requests.pop(request_id, ())
        if batches:
            self._last_error = error
        for batch in batches:
            self._stale_topics.add(batch.topic)
            self._on_batch_error(batch, error, sent=True, now_ms=now_ms, maybe_written=True)

    def close(self) -> None:
        """Fail everything not completed yet, at once (the shell's `close` after its flush
        bound): what was sent and not answered with OutcomeUnknownError ("maybe written"),
        the rest with WriterClosedError ("not written"). Later answers are ignored."""
        if self.closed:
            return
        self.closed = True
        for batches in self._requests.values():
            for batch in batches:
                batch.maybe_written = True
        self._requests.clear()
        for state in self._partitions.values():
            where = f"{state.topic}-{state.partition}"
            for batch in state.in_flight.values():
                self._fail(
                    batch.messages,
                    batch.tickets,
                    OutcomeUnknownError(
                        f"{where}: the writer was closed while the batch was in flight "
                        f"(sent, not answered); it may have been written",
                        cause=batch.last_error,
                    ),
                )
            for batch in state.queued:
                if batch.maybe_written:  # an earlier attempt may have been written
                    last = batch.last_error or self._closed_error(where)
                    self._give_up(batch, last, closing=True)
                else:
                    self._fail(batch.messages, batch.tickets, self._closed_error(where, batch))
            state.in_flight.clear()
            state.queued.clear()
            if state.open:
                self._fail(state.open, state.open_tickets, self._closed_error(where))
                state.open, state.open_tickets, state.open_bytes = [], [], 0
        for topic, waiting in self._unrouted.items():
            self._fail(
                [w[0] for w in waiting],
                [w[1] for w in waiting],
                WriterClosedError(
                    f"topic {topic!r}: the writer was closed before its metadata came"
                ),
            )
        self._unrouted.clear()
        assert self.buffered == 0

    @staticmethod
    def _closed_error(where: str, batch: _Batch | None = None) -> WriterClosedError:
        last = batch.last_error if batch is not None else None
        return WriterClosedError(
            f"{where}: the writer was closed before the batch was written"
            + (f" (last attempt refused: {last.message})" if last is not None else "")
        )

    # ------------------------------------------------------------ outputs

    def poll(self, *, now_ms: int) -> list[ProduceSend]:
        """Seal what is due, expire what is late, and return the requests to send now."""
        if self.closed:
            return []
        flush = self._flush_requested
        self._flush_requested = False
        for state in self._partitions.values():
            if state.open and (flush or self._open_due(state, now_ms=now_ms)):
                self._seal(state, now_ms=now_ms)
            self._expire_queued(state, now_ms=now_ms)
        for topic in list(self._unrouted):
            self._expire_unrouted(topic, now_ms=now_ms)
        if self.config.idempotent and (self.producer_id < 0 or self._epoch_bump_needed):
            return []
        return self._sends(now_ms=now_ms)

    def _window_open(self, state: _Partition) -> bool:
        """An open batch that is not full (its linger passed) sealed now would be sent in
        this poll: the in-flight window has room for it after the sealed batches ahead of
        it (which leave in the same request), and, unless pipeline_partial_batches, no
        batch of its partition is in flight."""
        if state.recovering:
            return not state.queued and not state.in_flight
        if state.in_flight and not self.config.pipeline_partial_batches:
            return False
        return len(state.queued) + len(state.in_flight) < self.config.inflight_max

    def _open_due(self, state: _Partition, *, now_ms: int) -> bool:
        """An open batch past its linger is sealed when it could be sent at once. While the
        partition has a batch in flight (or, with pipeline_partial_batches, a full window)
        it stays open and later messages join it (up to batch_size / batch_bytes), as in
        Kafka's accumulator: a busy leader gets fewer, larger batches instead of a queue
        of one-message ones. Its first message's deadline seals it regardless (it then
        expires in the queue)."""
        if now_ms - state.open_since_ms < self.config.linger_ms:
            return False
        return self._window_open(state) or now_ms >= state.open_deadline_ms

    def next_request(self, *, now_ms: int) -> MetadataRequest | ProducerIdRequest | None:
        """The metadata or producer-id request to make now, if any (one at a time: the
        shell reports its answer before asking again). Its `timeout_ms` is what the
        earliest waiting message has left, at most `request_timeout_ms`."""
        if self.closed or self._metadata_requested or self._producer_id_requested:
            return None
        topics = self.metadata_wanted()
        watched: set[str] = set()
        if self._leader_watch_ms is not None and now_ms >= self._leader_watch_ms:
            watched = self._awaiting_new_leader(now_ms)
            self._leader_watch_ms = None  # the answer sets it again while they wait
        if (topics and now_ms >= self._metadata_retry_ms) or watched:
            topics |= watched
            self._metadata_requested = True
            prefer = {hint for (topic, _), hint in self._leader_hints.items() if topic in topics}
            return MetadataRequest(
                tuple(sorted(topics)), tuple(sorted(prefer)), self._request_timeout_ms(now_ms)
            )
        wanted = self._producer_id_wanted(now_ms)
        if wanted is not None:
            self._producer_id_requested = True
            return ProducerIdRequest(*wanted, self._request_timeout_ms(now_ms))
        return None

    def _producer_id_wanted(self, now_ms: int) -> tuple[int, int] | None:
        """(producer id, epoch) to send in an InitProducerId request now ((-1, -1) for a new
        id, asked once there is something to write; our own to bump the epoch), or None."""
        if not self.config.idempotent or now_ms < self._producer_id_retry_ms:
            return None
        if self.producer_id < 0:
            return (-1, -1) if self.buffered > 0 else None
        if self._epoch_bump_needed and not any(s.in_flight for s in self._partitions.values()):
            return (self.producer_id, self.producer_epoch)
        return None

    def _awaiting_new_leader(self, now_ms: int) -> set[str]:
        """Topics with a retried batch still in its backoff whose partition's metadata
        names the leader epoch that batch last failed on."""
        topics = set()
        for state in self._partitions.values():
            if not state.queued:
                continue
            head = state.queued[0]
            if not head.retried or head.backoff_until_ms <= now_ms:
                continue
            route = self._leader_of(state.topic, state.partition)
            if route is not None and route[1] == head.attempt_leader_epoch >= 0:
                topics.add(state.topic)
        return topics

    def metadata_wanted(self) -> set[str]:
        """Topics whose metadata the writer needs: unrouted messages wait for them, or
        queued batches for their leader."""
        stale = {
            state.topic
            for state in self._partitions.values()
            if state.queued and state.topic in self._stale_topics
        }
        return set(self._unrouted) | stale

    def drain_completions(self) -> list[Completion]:
        completions, self._completions = self._completions, []
        return completions

    def next_wakeup_ms(self, *, now_ms: int) -> int:
        """When `poll` or `next_request` has something to do next (linger, backoff,
        deadline, a request's retry), at the latest in a second."""
        wake = now_ms + 1_000
        for state in self._partitions.values():
            if state.open:
                # Held open behind a full window: an answer wakes the shell, or the deadline.
                due_ms = state.open_since_ms + self.config.linger_ms
                wake = min(wake, due_ms if self._window_open(state) else state.open_deadline_ms)
            if state.queued:
                # A head batch past its backoff and still queued waits for an event that
                # wakes the shell itself (an answer, metadata, a producer id): not a time.
                head = state.queued[0]
                route = self._route(head.topic, head.partition)
                if self._backing_off(head, route, now_ms=now_ms):
                    wake = min(wake, head.backoff_until_ms)
                wake = min(wake, *(b.deadline_ms for b in state.queued))
        for waiting in self._unrouted.values():
            wake = min(wake, waiting[0][2])
        if self.metadata_wanted():
            wake = min(wake, self._metadata_retry_ms)
        if self._leader_watch_ms is not None:
            wake = min(wake, self._leader_watch_ms)
        if self.config.idempotent and self.producer_id < 0 and self.buffered > 0:
            wake = min(wake, self._producer_id_retry_ms)
        return max(wake, now_ms)

    def idle(self) -> bool:
        """Every accepted message has completed and its completion was drained."""
        return self.buffered == 0 and not self._completions

    # ------------------------------------------------------------ time

    def _request_timeout_ms(self, now_ms: int) -> int:
        return call_timeout_ms(self._remaining_ms(now_ms), self.config.request_timeout_ms)

    def _remaining_ms(self, now_ms: int) -> int | None:
        """What the earliest waiting message has left (None: nothing waits)."""
        earliest: int | None = None
        for waiting in self._unrouted.values():
            earliest = waiting[0][2] if earliest is None else min(earliest, waiting[0][2])
        for state in self._partitions.values():
            deadlines = [b.deadline_ms for b in state.queued]
            deadlines.extend(b.deadline_ms for b in state.in_flight.values())
            if state.open:
                deadlines.append(state.open_deadline_ms)
            if deadlines:
                first = min(deadlines)
                earliest = first if earliest is None else min(earliest, first)
        return None if earliest is None else earliest - now_ms

    def _metadata_backed_off(self, now_ms: int) -> None:
        self._metadata_retry_ms = now_ms + self._metadata_backoff_ms
        self._metadata_backoff_ms = min(METADATA_BACKOFF_MS_MAX, self._metadata_backoff_ms * 2)

    def _needs_metadata(self, topic: str) -> bool:
        """Messages of `topic` still cannot go anywhere: the topic is unknown, or a
        partition with queued batches has no leader."""
        if topic in self._unrouted:
            return True
        return any(
            self._leader_of(topic, state.partition) is None
            for state in self._partitions.values()
            if state.topic == topic and state.queued
        )

    # ------------------------------------------------------------ routing and batching

    def _partitions_of(self, topic: str) -> range | None:
        """The topic's partition numbers (None: its metadata is not known yet)."""
        metadata = self._metadata
        known = metadata.topics.get(topic) if metadata is not None else None
        return None if known is None else range(len(known.partitions))

    def _partition_in(
        self,
        message: Message,
        topic: str,
        partitions: range | None,
        ticket: object,
        *,
        deadline_ms: int,
        linger: bool,
    ) -> int:
        """The message's partition among the topic's `partitions` (None: its metadata is
        not known yet); -1 when it waits for that metadata or failed."""
        if partitions is None:
            self._unrouted.setdefault(topic, []).append((message, ticket, deadline_ms, linger))
            return -1
        partition = message.partition
        if partition is None:
            return self._balancer.balance(message, partitions)
        if not 0 <= partition < len(partitions):
            self._fail(
                [message],
                [ticket],
                RaftmqError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    f"{topic} has {len(partitions)} partitions; there is no partition {partition}",
                ),
            )
            return -1
        return partition

    def _append(
        self,
        topic: str,
        partition: int,
        messages: list[Message],
        ticket: object,
        *,
        now_ms: int,
        deadline_ms: int,
        linger: bool,
    ) -> None:
        """Add one call's messages of one partition to its open batch, sealing it whenever
        it reaches batch_size messages or batch_bytes (a batch always takes at least one
        message, however large)."""
        key = (topic, partition)
        state = self._partitions.get(key)
        if state is None:
            state = self._partitions[key] = _Partition(topic, partition)
        count = len(messages)
        batch_size, batch_bytes = self.config.batch_size, self.config.batch_bytes
        # Most often they all fit: their sizes in one sum (in C), not one per message.
        fits = count <= batch_size - len(state.open)
        if fits:
            total = state.open_bytes + payload_bytes(messages) + count * RECORD_OVERHEAD_BYTES
            fits = total <= batch_bytes
        if fits:
            self._fill(state, messages, ticket, total, now_ms=now_ms, deadline_ms=deadline_ms)
            if len(state.open) >= batch_size:
                self._seal(state, now_ms=now_ms)
        else:
            sizes = [
                len(m.value or b"") + len(m.key or b"") + RECORD_OVERHEAD_BYTES for m in messages
            ]
            start = 0
            # Bound: each pass moves at least one message into the open batch.
            while start < count:
                room = batch_size - len(state.open)
                totals = list(accumulate(sizes[start : start + room], initial=state.open_bytes))
                fit = bisect_right(totals, batch_bytes) - 1
                if fit == 0:
                    if state.open:
                        self._seal(state, now_ms=now_ms)
                        continue
                    fit = 1
                end = start + fit
                self._fill(
                    state,
                    messages[start:end],
                    ticket,
                    totals[fit],
                    now_ms=now_ms,
                    deadline_ms=deadline_ms,
                )
                start = end
                if len(state.open) >= batch_size or start < count:
                    self._seal(state, now_ms=now_ms)
        if not linger and state.open:  # due at the next poll
            state.open_since_ms = min(state.open_since_ms, now_ms - self.config.linger_ms)

    @staticmethod
    def _fill(
        state: _Partition,
        messages: list[Message],
        ticket: object,
        open_bytes: int,
        *,
        now_ms: int,
        deadline_ms: int,
    ) -> None:
        """Put messages of one call in the open batch, which then holds `open_bytes`."""
        if not state.open:
            state.open_since_ms = now_ms
            state.open_deadline_ms = deadline_ms
        state.open.extend(messages)
        state.open_tickets.extend([ticket] * len(messages))
        state.open_bytes = open_bytes

    def _seal(self, state: _Partition, *, now_ms: int) -> None:
        batch = _Batch(
            state.topic,
            state.partition,
            state.open,
            state.open_tickets,
            created_ms=state.open_since_ms,
            deadline_ms=state.open_deadline_ms,
        )
        state.open, state.open_tickets, state.open_bytes = [], [], 0
        state.queued.append(batch)

    # ------------------------------------------------------------ sending

    def _sends(self, *, now_ms: int) -> list[ProduceSend]:
        metadata = self._metadata
        if metadata is None:
            return []
        by_endpoint: dict[str, list[tuple[_Batch, int]]] = {}
        sizes: dict[str, int] = {}
        for state in self._partitions.values():
            limit = 1 if state.recovering else self.config.inflight_max
            while state.queued and len(state.in_flight) < limit:
                batch = state.queued[0]
                route = self._route(batch.topic, batch.partition)
                if self._backing_off(batch, route, now_ms=now_ms):
                    break
                if route is None:
                    self._stale_topics.add(batch.topic)
                    break
                endpoint, leader_epoch = route
                if sizes.get(endpoint, 0) >= REQUEST_BYTES_MAX:
                    break
                batch.attempt_leader_epoch = leader_epoch
                state.queued.popleft()
                self._prepare(state, batch, now_ms=now_ms)
                state.in_flight[self._in_flight_key(batch)] = batch
                by_endpoint.setdefault(endpoint, []).append((batch, leader_epoch))
                sizes[endpoint] = sizes.get(endpoint, 0) + len(batch.records)
        sends = []
        for endpoint, routed in by_endpoint.items():
            batches = [b for b, _ in routed]
            request_id = next(self._request_ids)
            # The broker waits for acks at most the request timeout, and answers early
            # enough for the answer to arrive before the earliest batch's deadline.
            deadline_ms = min(b.deadline_ms for b in batches)
            budget = wait_budget(deadline_ms - now_ms, self.config.request_timeout_ms)
            send = ProduceSend(
                request_id,
                endpoint,
                self.config.required_acks,
                max(1, budget.wait_ms),
                tuple(ProduceBatch(b.topic, b.partition, e, b.records) for b, e in routed),
                rpc_timeout_ms=budget.timeout_ms,
            )
            if self.config.required_acks == 0:
                for batch in batches:  # nothing will answer: done once sent
                    self._on_batch_written(batch, -1)
            else:
                self._requests[request_id] = batches
            sends.append(send)
        return sends

    def _prepare(self, state: _Partition, batch: _Batch, *, now_ms: int) -> None:
        """Give the batch its sequence (first send) and bytes (first send, or after the
        producer epoch changed)."""
        batch.attempts += 1
        if self.config.idempotent and batch.base_sequence < 0:
            batch.base_sequence = state.next_sequence
            state.next_sequence = (state.next_sequence + batch.record_count) % 2**31
        if not batch.records or batch.producer_epoch != self.producer_epoch:
            batch.producer_epoch = self.producer_epoch
            batch.records = encode_batch(
                batch.messages,
                compression=self.config.compression,
                producer_id=self.producer_id if self.config.idempotent else -1,
                producer_epoch=self.producer_epoch if self.config.idempotent else -1,
                base_sequence=batch.base_sequence,
            )
            if batch.attempts == 1:
                self.stats.record_batch(batch.record_count, len(batch.records))
        else:
            self.stats.retries += 1

    @staticmethod
    def _backing_off(batch: _Batch, route: tuple[str, int] | None, *, now_ms: int) -> bool:
        """The batch still waits out its retry backoff: it has one, and the partition's
        leader epoch has not risen since its last attempt. A backoff gives a failed leader
        (or a lagging metadata view) time; a newer leader needs none, and waiting for it
        was most of the Writer's recovery after a leader's kill -9. Epochs only rise, so
        this cannot bounce a batch between two brokers without a backoff."""
        if batch.backoff_until_ms <= now_ms:
            return False
        return route is None or not (0 <= batch.attempt_leader_epoch < route[1])

    def _route(self, topic: str, partition: int) -> tuple[str, int] | None:
        """(endpoint, leader epoch) to send a batch of `topic`-`partition` to: the leader
        in the metadata, unless the topic's metadata is stale; then the leader a broker
        named in its refusal, if any (epoch -1: the hint has none); else None (wait for
        metadata)."""
        if topic in self._stale_topics:
            hint = self._leader_hints.get((topic, partition))
            return None if hint is None else (hint, -1)
        return self._leader_of(topic, partition)

    def _leader_of(self, topic: str, partition: int) -> tuple[str, int] | None:
        metadata = self._metadata
        known = metadata.topics.get(topic) if metadata is not None else None
        if metadata is None or known is None or partition >= len(known.partitions):
            return None
        state = known.partitions[partition]
        endpoint = metadata.endpoint(state.leader) if state.leader != NO_LEADER else None
        return None if endpoint is None else (endpoint, state.leader_epoch)

    # ------------------------------------------------------------ outcomes

    def _in_flight_key(self, batch: _Batch) -> int:
        return batch.base_sequence if batch.base_sequence >= 0 else id(batch)

    def _on_batch_written(self, batch: _Batch, base_offset: int) -> None:
        state = self._partitions[(batch.topic, batch.partition)]
        state.in_flight.pop(self._in_flight_key(batch), None)
        if state.recovering and not any(
            b.retried for b in (*state.queued, *state.in_flight.values())
        ):
            state.recovering = False
        for i, message in enumerate(batch.messages):
            message.topic = batch.topic
            message.partition = batch.partition
            message.offset = base_offset + i if base_offset >= 0 else -1
        self._complete(batch.messages, batch.tickets, None)

    def _on_batch_error(
        self,
        batch: _Batch,
        error: RaftmqError,
        *,
        sent: bool,
        now_ms: int,
        maybe_written: bool = False,
        hint: str | None = None,
    ) -> None:
        state = self._partitions[(batch.topic, batch.partition)]
        state.in_flight.pop(self._in_flight_key(batch), None)
        code = error.code
        batch.last_error = error
        if sent and (maybe_written or code not in NOTHING_APPENDED_CODES):
            batch.maybe_written = True
        if code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER and self.config.idempotent:
            if self._is_head(state, batch):
                # The leader lost our sequence (e.g. acks=1 data truncated): bump the epoch
                # and restart every partition's sequences (KIP-360).
                self._epoch_bump_needed = True
            retriable = True  # an earlier batch's retry is in progress, or the bump fixes it
        elif code == ErrorCode.UNKNOWN_PRODUCER_ID and self.config.idempotent:
            self._epoch_bump_needed = True
            retriable = True
        else:
            retriable = error.retriable
        if code in _STALE_METADATA_CODES:
            self._stale_topics.add(batch.topic)
        if code == ErrorCode.NOT_LEADER_OR_FOLLOWER and hint is not None:
            self._leader_hints[(batch.topic, batch.partition)] = hint
        out_of_time = now_ms >= batch.deadline_ms
        if retriable and batch.attempts < self.config.max_attempts and not out_of_time:
            backoff_ms = min(RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS << min(batch.attempts - 1, 4))
            batch.backoff_until_ms = now_ms + backoff_ms
            self._requeue(state, batch)
            return
        self._give_up(batch, error)

    def _is_head(self, state: _Partition, batch: _Batch) -> bool:
        """Is `batch` the oldest unacknowledged batch of its partition?"""
        earlier = [b.base_sequence for b in (*state.in_flight.values(), *state.queued)]
        return all(self._seq_before(batch.base_sequence, s) for s in earlier if s >= 0)

    @staticmethod
    def _seq_before(a: int, b: int) -> bool:
        """a comes before (or is) b in the wrapping sequence space (within a window)."""
        return (b - a) % 2**31 < 2**30

    def _requeue(self, state: _Partition, batch: _Batch) -> None:
        """Back into the queue in sequence order; the partition sends one at a time."""
        state.recovering = True
        batch.retried = True
        queued = list(state.queued)
        queued.append(batch)
        if self.config.idempotent:
            head = min((b.base_sequence for b in queued if b.base_sequence >= 0), default=0)
            queued.sort(
                key=lambda b: (b.base_sequence - head) % 2**31 if b.base_sequence >= 0 else 2**31
            )
        else:
            queued.sort(key=lambda b: b.created_ms)
        state.queued = deque(queued)

    def _give_up(self, batch: _Batch, error: RaftmqError, *, closing: bool = False) -> None:
        if batch.maybe_written and not isinstance(error, OutcomeUnknownError):
            why = (
                "the writer was closed" if closing else f"gave up after {batch.attempts} attempt(s)"
            )
            error = OutcomeUnknownError(
                f"{batch.topic}-{batch.partition}: {why}; an attempt may have been written "
                f"(last error: {error})",
                cause=error,
            )
        self._fail(batch.messages, batch.tickets, error)

    def _restart_sequences(self) -> None:
        """After an epoch bump: every unacknowledged batch gets new sequences from 0, in
        order, and new bytes on its next send."""
        for state in self._partitions.values():
            assert not state.in_flight
            state.next_sequence = 0
            for batch in state.queued:
                batch.base_sequence = -1
            state.recovering = False

    def _late(self, what: str, *, waiting_for_producer_id: bool, default: ErrorCode) -> RaftmqError:
        """The error of a message that ran out of time before it was sent: the reason it
        could not be (the last failure of what it waited for), not a guess; `default`
        when nothing failed (e.g. metadata kept showing no leader)."""
        cause = (
            (self._producer_id_error if waiting_for_producer_id else None)
            or self._metadata_error
            or self._last_error
        )
        limit = f"not sent within write_timeout_ms={self.config.write_timeout_ms}"
        if cause is None:
            return RaftmqError(default, f"{what}: {limit}")
        return RaftmqError(cause.code, f"{what}: {limit}; last error: {cause.message}")

    def _expire_queued(self, state: _Partition, *, now_ms: int) -> None:
        if not state.queued or all(b.deadline_ms > now_ms for b in state.queued):
            return
        kept: deque[_Batch] = deque()
        waiting_for_id = self.config.idempotent and self.producer_id < 0
        for batch in state.queued:
            if batch.deadline_ms > now_ms:
                kept.append(batch)
                continue
            error = batch.last_error or self._late(
                f"{batch.topic}-{batch.partition}",
                waiting_for_producer_id=waiting_for_id,
                default=ErrorCode.LEADER_NOT_AVAILABLE,
            )
            self._give_up(batch, error)
        state.queued = kept

    def _expire_unrouted(self, topic: str, *, now_ms: int) -> None:
        waiting = self._unrouted.get(topic)
        if not waiting:
            return
        late = [w for w in waiting if w[2] <= now_ms]
        if not late:
            return
        self._unrouted[topic] = [w for w in waiting if w[2] > now_ms]
        if not self._unrouted[topic]:
            del self._unrouted[topic]
        if topic in self._missing_topics:
            failure = RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic {topic!r} does not exist (waited write_timeout_ms="
                f"{self.config.write_timeout_ms} for it)",
            )
        else:  # no metadata answer came in time: say why
            failure = self._late(
                f"topic {topic!r}",
                waiting_for_producer_id=False,
                default=ErrorCode.BROKER_NOT_AVAILABLE,
            )
        self._fail([w[0] for w in late], [w[1] for w in late], failure)

    def _fail(self, messages: list[Message], tickets: list[object], error: RaftmqError) -> None:
        self.stats.errors += len(messages)
        self._complete(messages, tickets, error)

    def _complete(
        self, messages: list[Message], tickets: list[object], error: RaftmqError | None
    ) -> None:
        """One Completion per ticket (a batch may mix the messages of several calls)."""
        self.buffered -= len(messages)
        assert self.buffered >= 0
        by_ticket: dict[int, tuple[object, list[Message]]] = {}
        for message, ticket in zip(messages, tickets, strict=True):
            by_ticket.setdefault(id(ticket), (ticket, []))[1].append(message)
        for ticket, grouped in by_ticket.values():
            self._completions.append(Completion(ticket, grouped, error))
