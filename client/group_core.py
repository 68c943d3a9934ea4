"""A consumer group's Reader, as a pure core: membership (join, heartbeat, revoke, rejoin,
leave), the fetch engine over the partitions the coordinator assigns, and the commit
bookkeeping. No I/O, no clock of its own, no threads: `now_ms` comes in, `poll` says which
calls to start, answers come back through `on_result` / `on_failure`. The sync `Reader`
(a background thread) and the asyncio `AsyncReader` (a background task) carry the calls
out concurrently and nothing more (`group_reader.py`, `async_group_reader.py`).

Membership follows the coordinator's KIP-848-style contract (broker.proto, "consumer
groups"): the member names itself (a uuid4 hex), joins with epoch 0, heartbeats every
`heartbeat_interval_ms` with the epoch of the last answer and the partitions it owns, and
consumes exactly what the last answer assigned:

- a partition missing from an answer is *revoked*: it is no longer fetched nor handed out
  (its buffered messages are dropped, never delivered — kafka-go #1398), the core waits
  for the application to come back from the message of it that it holds (bounded by half
  the rebalance timeout), commits what was processed, and only then stops listing it (a
  heartbeat at once), so that its next owner starts where this one stopped;
- UNKNOWN_MEMBER_ID / FENCED_MEMBER_EPOCH (or no heartbeat answered for a session
  timeout): the member *lost* its partitions — dropped without a commit (another member
  may own them already), buffered messages discarded — and it rejoins with epoch 0;
- NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE / COORDINATOR_LOAD_IN_PROGRESS and transport
  failures: find the coordinator again and retry, with a bounded backoff. A member that
  stays out of the group (joining) for `JOIN_STALLED_MS` says why (`group.join_stalled`,
  a warning in the shells), then again at doubling intervals: it never gives up, silently.

Commits: `processed` per partition is the next offset after what the application is done
with. `read_message` (auto commit) marks a message processed only when the application
comes back for the next one (or on close), never when it is handed out — kafka-go #622;
with `commit_interval_ms=0` that offset is committed before the next message is returned,
with an interval in the background. `commit_messages` marks the highest offset per
partition (committing the lower ones) and waits for the answer; a commit that fails never
moves `committed`. A commit names the member epoch; the coordinator refuses a zombie's
(NOT_PARTITION_OWNER), and the core never sends one for a partition it does not own or an
offset this ownership did not hand out.

Time: every call is bounded; close and a poll-interval leave are bounded by their
deadlines, whatever the coordinator does.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from raftmq.client.brokers import METADATA_TIMEOUT_MS, candidate_addresses, merge_metadata
from raftmq.client.deadlines import call_timeout_ms
from raftmq.client.group_protocol import (
    JOIN_EPOCH,
    LEAVE_EPOCH,
    NO_OFFSET,
    STATIC_LEAVE_EPOCH,
    CommitOffset,
    CoordinatorResult,
    FetchRequest,
    FindCoordinatorRequest,
    HeartbeatRequest,
    HeartbeatResult,
    ListOffsetsRequest,
    MetadataRequest,
    OffsetCommitRequest,
    OffsetCommitResult,
    OffsetFetchRequest,
    OffsetFetchResult,
    Request,
    Result,
    TopicPartition,
    sorted_partitions,
)
from raftmq.client.protocol import ClusterMetadata, FetchResult, OffsetResult
from raftmq.client.reader_core import (
    FetchStep,
    FirstOffset,
    LastOffset,
    ListOffsetStep,
    MetadataStep,
    ReaderConfig,
    ReaderCore,
    ReaderStats,
    WaitStep,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

AUTO_OFFSET_RESETS = ("earliest", "latest")
ASSIGNORS = ("uniform", "range")
# What session_timeout_ms=0 means at the coordinator (the contract's default), and the
# range it accepts.
SESSION_TIMEOUT_MS_DEFAULT = 10_000
SESSION_TIMEOUT_MS_MIN = 1_000
SESSION_TIMEOUT_MS_MAX = 300_000
# Until the coordinator said how often to heartbeat.
HEARTBEAT_INTERVAL_MS_DEFAULT = 3_000
# One coordinator call's bound (FindCoordinator, heartbeat, commit, offset fetch).
COORDINATOR_TIMEOUT_MS = 5_000
LIST_OFFSETS_TIMEOUT_MS = 5_000
BACKOFF_MS = 50
BACKOFF_MS_MAX = 1_000
# A leave because the application stopped polling: commit, then leave, within this.
POLL_LEAVE_TIMEOUT_MS = 10_000
CLOSE_TIMEOUT_MS = 10_000
COMMIT_TIMEOUT_MS = 10_000
# poll() is asked again at least this often (timers are recomputed anyway).
IDLE_WAKEUP_MS_MAX = 1_000
# A member out of the group (joining) for this long says why (`group.join_stalled`), then
# again after twice as long each time, up to the maximum: a join takes a few heartbeats, so
# a member that stays out while its coordinator keeps failing it is never silent.
JOIN_STALLED_MS = 5_000
JOIN_STALLED_INTERVAL_MS_MAX = 60_000
EVENTS_MAX = 256

_ROUTING_CODES = frozenset(
    {
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode.BROKER_NOT_AVAILABLE,
    }
)
_MEMBER_GONE_CODES = frozenset({ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.FENCED_MEMBER_EPOCH})


class CommitError(RaftmqError):
    """Offsets that were not committed: `errors` pairs each (topic, partition, offset) with
    its cause. For those, the group's committed offset did not move through this commit.
    Also a RaftmqError, with the first cause's code; `retriable` when every cause is."""

    def __init__(self, errors: list[tuple[TopicPartition, int, RaftmqError]]) -> None:
        first = errors[0][2]
        shown = "; ".join(f"{t}-{p} at {o}: {e}" for (t, p), o, e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        super().__init__(first.code, f"{len(errors)} offset(s) not committed: {shown}{more}")
        self.errors = errors

    def __new__(cls, errors: list[tuple[TopicPartition, int, RaftmqError]]) -> CommitError:
        return Exception.__new__(cls)

    def __reduce__(self) -> tuple[object, ...]:
        return (CommitError, (self.errors,))

    @property
    def retriable(self) -> bool:
        return all(e.retriable for _, _, e in self.errors)


class MemberState(enum.Enum):
    JOINING = "joining"  # epoch 0: a join heartbeat is due or in flight
    MEMBER = "member"  # epoch > 0: consuming what the last answer assigned
    LEAVING = "leaving"  # committing what was processed, then a leave heartbeat
    POLL_TIMEOUT = "poll_timeout"  # left: the application did not come back in time
    LEFT = "left"  # closed
    FAILED = "failed"  # a fatal error (self.error); close() is what is left to do


@dataclass(frozen=True, slots=True)
class GroupConfig:
    group_id: str
    topics: tuple[str, ...] = ()
    pattern: str = ""
    assignor: str = "uniform"
    instance_id: str = ""
    session_timeout_ms: int = 0  # 0: the coordinator's default
    heartbeat_interval_ms: int = 0  # 0: what the coordinator says
    rebalance_timeout_ms: int = 30_000
    max_poll_interval_ms: int = 300_000
    commit_interval_ms: int = 0  # 0: synchronous commits
    auto_offset_reset: str = "latest"
    client_id: str = "raftmq-python"
    reader: ReaderConfig = field(default_factory=ReaderConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.group_id, str) or not self.group_id:
            raise ValueError("group_id must be a non-empty string")
        if not self.topics and not self.pattern:
            raise ValueError("a consumer group needs topic=, group_topics= or topic_pattern=")
        if any(not isinstance(t, str) or not t for t in self.topics):
            raise ValueError(f"topics must be non-empty strings, got {list(self.topics)}")
        if self.pattern:
            import re

            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"topic_pattern {self.pattern!r} is not a regex: {e}") from e
        if self.assignor not in ASSIGNORS:
            raise ValueError(f"assignor must be one of {ASSIGNORS}, got {self.assignor!r}")
        if self.auto_offset_reset not in AUTO_OFFSET_RESETS:
            raise ValueError(
                f"auto_offset_reset must be one of {AUTO_OFFSET_RESETS}, "
                f"got {self.auto_offset_reset!r}"
            )
        if self.session_timeout_ms != 0 and not (
            SESSION_TIMEOUT_MS_MIN <= self.session_timeout_ms <= SESSION_TIMEOUT_MS_MAX
        ):
            raise ValueError(
                f"session_timeout_ms must be 0 (the coordinator's default) or within "
                f"{SESSION_TIMEOUT_MS_MIN}..{SESSION_TIMEOUT_MS_MAX}"
            )
        for name in ("heartbeat_interval_ms", "commit_interval_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("rebalance_timeout_ms", "max_poll_interval_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")

    @property
    def leave_epoch(self) -> int:
        """A static member leaves for a restart (keeping its assignment for the session
        timeout); a dynamic one leaves for good."""
        return STATIC_LEAVE_EPOCH if self.instance_id else LEAVE_EPOCH

    @property
    def session_ms(self) -> int:
        return self.session_timeout_ms or SESSION_TIMEOUT_MS_DEFAULT


def reader_group_config(
    *,
    topic: str | None,
    partition: int | None,
    start_offset: int | None,
    group_id: str | None,
    group_topics: Sequence[str] | None,
    topic_pattern: str | None,
    group_instance_id: str | None,
    reader: ReaderConfig,
    assignor: str,
    auto_offset_reset: str,
    commit_interval_ms: int,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    rebalance_timeout_ms: int,
    max_poll_interval_ms: int,
    client_id: str,
) -> GroupConfig | None:
    """The group configuration of a `Reader(...)` / `AsyncReader(...)` call (None: a
    Reader of one partition), or TypeError for arguments of the other mode."""
    if group_id is None:
        for name, value in (
            ("group_topics", group_topics),
            ("topic_pattern", topic_pattern),
            ("group_instance_id", group_instance_id),
        ):
            if value is not None:
                raise TypeError(f"{name}= needs a consumer group (group_id=)")
        if topic is None:
            raise TypeError("a Reader needs topic= (and partition=), or group_id=")
        return None
    if partition is not None:
        raise TypeError(
            "partition= and group_id= are exclusive: a group's coordinator assigns partitions"
        )
    if start_offset is not None:
        raise TypeError(
            "start_offset= does not apply to a consumer group: it starts at the committed "
            "offsets, and auto_offset_reset='earliest' | 'latest' where there are none"
        )
    if topic is not None and group_topics is not None:
        raise TypeError("give topic= or group_topics=, not both")
    if isinstance(group_topics, str):
        raise TypeError("group_topics= is a list of topic names")
    topics = (topic,) if topic is not None else tuple(group_topics or ())
    return GroupConfig(
        group_id=group_id,
        topics=topics,
        pattern=topic_pattern or "",
        instance_id=group_instance_id or "",
        reader=reader,
        assignor=assignor,
        auto_offset_reset=auto_offset_reset,
        commit_interval_ms=commit_interval_ms,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        rebalance_timeout_ms=rebalance_timeout_ms,
        max_poll_interval_ms=max_poll_interval_ms,
        client_id=client_id,
    )


@dataclass(frozen=True, slots=True)
class GroupCall:
    """Start `request` at `endpoint` now, bounded by `timeout_ms`; report the outcome with
    `on_result(call_id, ...)` or `on_failure(call_id, ...)`."""

    call_id: int
    endpoint: str
    request: Request
    timeout_ms: int


@dataclass(slots=True)
class PartitionStats:
    topic: str
    partition: int
    offset: int  # the next offset handed out (FirstOffset / LastOffset: not resolved yet)
    committed: int  # -1: nothing committed
    high_watermark: int
    lag: int  # -1 before the first fetch
    revoking: bool


@dataclass(slots=True)
class GroupStats:
    group_id: str
    member_id: str
    member_epoch: int
    state: str
    coordinator: str | None
    partitions: list[PartitionStats]
    heartbeats: int = 0
    commits: int = 0  # offsets committed
    commit_errors: int = 0
    revoked: int = 0  # partitions released after a revocation
    lost: int = 0  # partitions dropped without a commit (fenced, evicted, ...)
    rejoins: int = 0
    poll_timeouts: int = 0


class CommitTicket:
    """One `commit_messages` call: done once every partition's offset is committed or
    failed (or its deadline passed). `error` then names what was not committed."""

    __slots__ = ("deadline_ms", "done", "error", "failures", "wanted")

    def __init__(
        self,
        wanted: dict[TopicPartition, tuple[int, int]],
        failures: list[tuple[TopicPartition, int, RaftmqError]],
        deadline_ms: int,
    ) -> None:
        # Partition -> (ownership token, the next offset to commit), still pending.
        self.wanted = wanted
        self.failures = failures
        self.deadline_ms = deadline_ms
        self.done = False
        self.error: CommitError | None = None

    def _fail(self, tp: TopicPartition, error: RaftmqError) -> None:
        _, offset = self.wanted.pop(tp)
        self.failures.append((tp, offset, error))

    def _settle(self) -> None:
        if not self.wanted and not self.done:
            self.done = True
            self.error = CommitError(self.failures) if self.failures else None


class PartitionFeed:
    """One partition this member owns: its ReaderCore (position, buffer, leader, backoff)
    and its commit bookkeeping, for one ownership (`token`: a regained partition is a new
    feed, so nothing of an earlier ownership is committed or delivered through it).

    Invariants: delivered_start <= processed - 1 < delivered_end once processed was set by
    this ownership (the core only commits offsets it handed out); committed only moves up,
    and only on a successful commit answer or the OffsetFetch that started the feed."""

    __slots__ = (
        "committed",
        "delivered_end",
        "delivered_start",
        "failed_offset",
        "inflight",
        "processed",
        "reader",
        "resolved",
        "revoke_deadline_ms",
        "revoking",
        "token",
        "tp",
    )

    def __init__(self, tp: TopicPartition, token: int, reader: ReaderCore) -> None:
        self.tp = tp
        self.token = token
        self.reader = reader
        # The start position (committed offset, or auto_offset_reset) is known.
        self.resolved = False
        self.revoking = False
        self.revoke_deadline_ms = 0
        # A fetch or ListOffsets call that includes this partition is in flight.
        self.inflight = False
        self.committed = NO_OFFSET
        self.processed = NO_OFFSET
        # A commit of this offset failed for good: not sent again automatically.
        self.failed_offset = NO_OFFSET
        self.delivered_start = -1
        self.delivered_end = -1

    @property
    def commit_wanted(self) -> int | None:
        """The offset to commit, if any: processed, above committed, not failed before."""
        if self.processed > self.committed and self.processed != self.failed_offset:
            return self.processed
        return None

    def handed_out(self, offset: int) -> bool:
        return self.delivered_start <= offset < self.delivered_end


@dataclass(frozen=True, slots=True)
class _Held:
    """The last message handed to the application, until it comes back."""

    tp: TopicPartition
    offset: int
    token: int
    auto_commit: bool


@dataclass(slots=True)
class _Inflight:
    kind: str  # find | heartbeat | leave | commit | offset_fetch | metadata | list | fetch
    endpoint: str
    request: Request
    # commit: tp -> (token, offset); offset_fetch: tp -> token
    offsets: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    tokens: dict[TopicPartition, int] = field(default_factory=dict)
    # list / fetch: (tp, token, the ReaderCore step) each
    steps: list[tuple[TopicPartition, int, FetchStep | ListOffsetStep]] = field(
        default_factory=list
    )


class GroupCore:
    """One member of one consumer group. Not thread-safe: the sync shell calls it under
    its lock, the asyncio shell from its loop."""

    def __init__(
        self, config: GroupConfig, bootstrap: Sequence[str], *, member_id: str, now_ms: int
    ) -> None:
        assert bootstrap, "at least one bootstrap broker"
        self.config = config
        self.bootstrap = list(bootstrap)
        self.member_id = member_id
        # Invariant: member_epoch > 0 exactly when state is MEMBER, or LEAVING after it.
        self.member_epoch = JOIN_EPOCH
        self.state = MemberState.JOINING
        # While JOINING: since when, the join heartbeats sent, the last failure of a find
        # or join (kept when a find then succeeds: it is why the member is still out), and
        # when `group.join_stalled` is due next (the interval doubles, bounded).
        self._out_since_ms = now_ms
        self._join_attempts = 0
        self._join_error: RaftmqError | None = None
        self._join_stalled_ms = JOIN_STALLED_MS
        self._join_stalled_at_ms = now_ms + JOIN_STALLED_MS
        self.coordinator: str | None = None
        self.error: RaftmqError | None = None  # fatal (state FAILED)
        self.last_error: RaftmqError | None = None
        # Commit failures on close (the offsets processed and not committed).
        self.close_error: CommitError | None = None
        self.metadata: ClusterMetadata | None = None
        self.feeds: dict[TopicPartition, PartitionFeed] = {}
        self.events: deque[tuple[str, dict[str, object]]] = deque(maxlen=EVENTS_MAX)
        self._interval_ms = config.heartbeat_interval_ms or HEARTBEAT_INTERVAL_MS_DEFAULT
        self._next_heartbeat_ms = now_ms
        self._heartbeat_soon = False
        self._last_heartbeat_ok_ms = now_ms
        self._backoff_until_ms = 0
        self._backoff_ms = BACKOFF_MS
        self._find_attempt = 0
        self._metadata_attempt = 0
        self._next_call_id = 1
        self._inflight: dict[int, _Inflight] = {}
        self._find_call: int | None = None
        self._heartbeat_call: int | None = None
        self._commit_call: int | None = None
        self._offset_fetch_call: int | None = None
        self._metadata_call: int | None = None
        self._fetch_calls: dict[str, int] = {}
        self._list_calls: dict[str, int] = {}
        self._fetch_wake_ms: int | None = None
        # A commit answered STALE_MEMBER_EPOCH: the next commit waits for a heartbeat.
        self._commit_after_heartbeat = False
        self._commit_due_ms = now_ms + config.commit_interval_ms
        self._tickets: list[CommitTicket] = []
        # Errors read_message / fetch_message raise once (auto-commit failures, fetch
        # errors that are not retriable).
        self._pending_errors: deque[RaftmqError] = deque(maxlen=EVENTS_MAX)
        self._ready: deque[tuple[TopicPartition, int]] = deque()
        self._ready_set: set[tuple[TopicPartition, int]] = set()
        self._next_token = 1
        self._held: _Held | None = None
        self._app_inside = False
        self._app_left_ms = now_ms
        self._leave_target = MemberState.LEFT
        self._leave_deadline_ms = 0
        self._leave_sent = False
        # Commits that failed for good while leaving (part of close_error).
        self._close_failures: list[tuple[TopicPartition, int, RaftmqError]] = []
        self._lag_tokens: dict[TopicPartition, int] | None = None
        # The application's calls made work for poll() (a buffer emptied: fetch again; a
        # commit is due): the shell wakes its background up only then (`take_poll_wanted`).
        self._poll_wanted = False
        # Stats of feeds that are gone, and the group's counters.
        self._retired = ReaderStats()
        self._stats = GroupStats(config.group_id, member_id, 0, "", None, [])

    # ------------------------------------------------------------ the application

    def app_enter(self, *, now_ms: int) -> None:
        """The application called read_message / fetch_message: it is done with the
        message it held (auto commit: that message is processed now)."""
        self._app_inside = True
        if self._release_held(processed=True) and self.config.commit_interval_ms == 0:
            self._poll_wanted = True  # commit it now
        if self.state is MemberState.POLL_TIMEOUT:
            self._poll_wanted = True
            self._event("group.rejoining", reason="the application polled again")
            self._stats.rejoins += 1
            self._become_joining(now_ms)

    def app_exit(self, *, now_ms: int) -> None:
        """The read call returned (or raised): the poll interval runs from now."""
        self._app_inside = False
        self._app_left_ms = now_ms

    def next_message(self, *, now_ms: int, auto_commit: bool) -> Message | None:
        """The next message to hand out, or None (nothing buffered, not a member yet, or a
        synchronous auto commit still waiting for its answer). Raises the fatal error, or
        once each error the application must hear of."""
        if self.error is not None:
            raise self.error
        if self._pending_errors:
            raise self._pending_errors.popleft()
        if self.state is not MemberState.MEMBER:
            return None
        if auto_commit and self.config.commit_interval_ms == 0 and self._commit_pending():
            return None
        ready = self._ready
        # Bound: each pass hands out a message or drops an entry.
        while ready:
            tp, token = ready[0]
            feed = self.feeds.get(tp)
            if feed is None or feed.token != token or feed.revoking:
                ready.popleft()
                self._ready_set.discard((tp, token))
                continue
            message = feed.reader.pop()
            if message is None:
                ready.popleft()
                self._ready_set.discard((tp, token))
                continue
            if feed.reader.buffered:
                ready.rotate(-1)  # one message per partition in turn
            else:
                ready.popleft()
                self._ready_set.discard((tp, token))
                self._poll_wanted = True  # fetch it again
            if feed.delivered_start < 0:
                feed.delivered_start = message.offset
            feed.delivered_end = message.offset + 1
            self._held = _Held(tp, message.offset, token, auto_commit)
            return message
        return None

    def commit(
        self, messages: Iterable[Message], *, now_ms: int, timeout_ms: int = COMMIT_TIMEOUT_MS
    ) -> CommitTicket:
        """`commit_messages`: the highest offset per partition is committed (and with it
        the lower ones). A message this member's current ownership of its partition did
        not hand out (revoked, lost, never read) fails at once, unsent. With
        commit_interval_ms > 0 the offsets are committed in the background: the ticket
        carries only those local failures."""
        highest: dict[TopicPartition, int] = {}
        for m in messages:
            if m.topic is None or m.partition is None or m.offset < 0:
                raise ValueError(f"{m!r} was not read from a topic: nothing to commit")
            tp = (m.topic, m.partition)
            highest[tp] = max(highest.get(tp, -1), m.offset)
        wanted: dict[TopicPartition, tuple[int, int]] = {}
        failures: list[tuple[TopicPartition, int, RaftmqError]] = []
        for tp, offset in sorted(highest.items()):
            feed = self.feeds.get(tp)
            if feed is None or not feed.handed_out(offset):
                failures.append((tp, offset + 1, self._not_owned(tp, offset)))
                continue
            feed.processed = max(feed.processed, offset + 1)
            if feed.failed_offset == feed.processed:
                feed.failed_offset = NO_OFFSET  # the application asks again: try again
            held = self._held
            if (
                held is not None
                and held.tp == tp
                and held.token == feed.token
                and held.offset <= offset
            ):
                self._held = None  # the application is done with it
            if feed.committed < offset + 1 and self.config.commit_interval_ms == 0:
                wanted[tp] = (feed.token, offset + 1)
        ticket = CommitTicket(wanted, failures, now_ms + timeout_ms)
        self._tickets.append(ticket)
        self._poll_wanted = True
        self._settle_tickets(now_ms)
        return ticket

    def close(self, *, now_ms: int, timeout_ms: int = CLOSE_TIMEOUT_MS) -> None:
        """Stop: what the application processed (with read_message: also the message it
        holds) is committed, then the member leaves the group (epoch -1, or -2 with an
        instance id), all within `timeout_ms`; `done` once that is over."""
        if self.state is MemberState.LEFT:
            return
        self._release_held(processed=True)
        self._stop_fetching()
        if self.state in (MemberState.FAILED, MemberState.POLL_TIMEOUT):
            self._finish_leave(MemberState.LEFT)
            return
        self._start_leave(MemberState.LEFT, now_ms + timeout_ms)

    @property
    def done(self) -> bool:
        return self.state is MemberState.LEFT

    @property
    def assignment(self) -> list[TopicPartition]:
        """The partitions owned now (revoking ones included: not released yet)."""
        return sorted(self.feeds)

    @property
    def lag(self) -> int:
        """Sum over the owned partitions of high watermark - position as of each one's
        last fetch; -1 while none is known (0 for a member that owns nothing)."""
        lags = [f.reader.lag for f in self.feeds.values() if not f.revoking and f.reader.lag >= 0]
        if lags:
            return sum(lags)
        if self.state is MemberState.MEMBER and not self.feeds:
            return 0
        return -1

    def ask_lag(self) -> None:
        """`read_lag`: ask every owned partition's leader for its high watermark now;
        `lag_answer` sums them once all came."""
        self._lag_tokens = None
        self._poll_wanted = True

    def take_poll_wanted(self) -> bool:
        """Did the application's calls since the last look give poll() something to do?"""
        wanted, self._poll_wanted = self._poll_wanted, False
        return wanted

    def lag_answer(self) -> int | None:
        """After `ask_lag`: the lag once every partition owned when the member first
        looked has answered (partitions released meanwhile do not count), else None."""
        if self.error is not None:
            raise self.error
        if self.state is not MemberState.MEMBER:
            return None
        if self._lag_tokens is None:
            # Asked now, for what is owned now (a member asks only once it is one).
            self._lag_tokens = {tp: f.token for tp, f in self.feeds.items() if not f.revoking}
            for tp in self._lag_tokens:
                self.feeds[tp].reader.ask_high_watermark()
            self._poll_wanted = True
        total = 0
        for tp, token in self._lag_tokens.items():
            feed = self.feeds.get(tp)
            if feed is None or feed.token != token or feed.revoking:
                continue  # released meanwhile: not this member's lag any more
            lag = feed.reader.asked_lag() if feed.resolved else None
            if lag is None:
                return None
            total += lag
        return total

    def current_stats(self) -> ReaderStats:
        feeds = list(self.feeds.values())
        per = [f.reader.current_stats() for f in feeds]
        by_code = dict(self._retired.errors_by_code)
        for s in per:
            for code, n in s.errors_by_code.items():
                by_code[code] = by_code.get(code, 0) + n
        group = GroupStats(
            group_id=self.config.group_id,
            member_id=self.member_id,
            member_epoch=self.member_epoch,
            state=self.state.value,
            coordinator=self.coordinator,
            partitions=[
                PartitionStats(
                    f.tp[0],
                    f.tp[1],
                    f.reader.offset,
                    f.committed,
                    f.reader.high_watermark,
                    f.reader.lag,
                    f.revoking,
                )
                for f in sorted(feeds, key=lambda f: f.tp)
            ],
            heartbeats=self._stats.heartbeats,
            commits=self._stats.commits,
            commit_errors=self._stats.commit_errors,
            revoked=self._stats.revoked,
            lost=self._stats.lost,
            rejoins=self._stats.rejoins,
            poll_timeouts=self._stats.poll_timeouts,
        )
        return ReaderStats(
            messages=self._retired.messages + sum(s.messages for s in per),
            bytes=self._retired.bytes + sum(s.bytes for s in per),
            fetches=self._retired.fetches + sum(s.fetches for s in per),
            errors=self._retired.errors + sum(s.errors for s in per),
            offset=-1,
            lag=self.lag,
            errors_by_code=by_code,
            group=group,
        )

    def describe_wait(self) -> str:
        """Why nothing came (TimeoutError messages): the state and the last error."""
        last = self.last_error
        for feed in self.feeds.values():
            last = last or feed.reader.last_error
        return f"group {self.config.group_id!r}, {self.state.value}" + (
            f", last error: {last}" if last is not None else ""
        )

    # ------------------------------------------------------------ what to do

    def poll(self, *, now_ms: int) -> list[GroupCall]:
        """The calls to start now (each bounded; at most one of a kind, one fetch and one
        ListOffsets per broker). Then wait until `next_wakeup_ms` or an answer."""
        self._check_timers(now_ms)
        calls: list[GroupCall] = []
        if self.state in (MemberState.LEFT, MemberState.FAILED, MemberState.POLL_TIMEOUT):
            return calls
        if now_ms >= self._backoff_until_ms:
            if self.coordinator is None:
                self._maybe_find(now_ms, calls)
            else:
                self._maybe_commit(now_ms, calls)
                self._maybe_offset_fetch(now_ms, calls)
                self._maybe_heartbeat(now_ms, calls)
        if self.state is MemberState.MEMBER:
            self._plan_fetches(now_ms, calls)
        return calls

    def next_wakeup_ms(self, *, now_ms: int) -> int:
        """When poll() has something to do at the latest, absent answers."""
        wake = now_ms + IDLE_WAKEUP_MS_MAX
        if self.state in (MemberState.LEFT, MemberState.FAILED):
            return wake
        times = [self._backoff_until_ms]
        if self.state is MemberState.MEMBER:
            if self._heartbeat_call is None:
                times.append(self._next_heartbeat_ms)
            if self.config.commit_interval_ms > 0:
                times.append(self._commit_due_ms)
            times += [f.revoke_deadline_ms for f in self.feeds.values() if f.revoking]
            times.append(self._last_heartbeat_ok_ms + self.config.session_ms)
            if self._fetch_wake_ms is not None:
                times.append(self._fetch_wake_ms)
        if self.state is MemberState.LEAVING:
            times.append(self._leave_deadline_ms)
        if self.state is MemberState.JOINING:
            times.append(self._join_stalled_at_ms)
        if self.state in (MemberState.JOINING, MemberState.MEMBER) and not self._app_inside:
            times.append(self._app_left_ms + self.config.max_poll_interval_ms)
        times += [t.deadline_ms for t in self._tickets]
        # What is due already and was not started waits for an answer: the answer wakes
        # the shell, not a timer.
        return min([wake, *(t for t in times if t > now_ms)])

    def on_result(self, call_id: int, result: Result, *, now_ms: int) -> None:
        """The answer to call `call_id` (its type is fixed by the request's)."""
        entry = self._inflight.pop(call_id, None)
        if entry is None:
            return  # forgotten (a loss, a leave that ended): its answer means nothing now
        kind = entry.kind
        if kind == "find":
            assert isinstance(result, CoordinatorResult)
            self._on_coordinator(result, now_ms)
        elif kind in ("heartbeat", "leave"):
            assert isinstance(result, HeartbeatResult)
            self._on_heartbeat(entry, result, now_ms)
        elif kind == "commit":
            assert isinstance(result, OffsetCommitResult)
            self._on_commit(entry, result, now_ms)
        elif kind == "offset_fetch":
            assert isinstance(result, OffsetFetchResult)
            self._on_offset_fetch(entry, result, now_ms)
        elif kind == "metadata":
            assert isinstance(result, ClusterMetadata)
            self._on_metadata(entry, result, now_ms)
        elif kind == "list":
            assert isinstance(result, list)
            self._on_list_offsets(entry, cast(list[OffsetResult], result), now_ms)
        else:
            assert kind == "fetch" and isinstance(result, list), kind
            self._on_fetch(entry, cast(list[FetchResult], result), now_ms)
        self._check_timers(now_ms)

    def on_failure(self, call_id: int, error: RaftmqError, *, now_ms: int) -> None:
        """Call `call_id` failed in transport (or the client was closed): BROKER_NOT_AVAILABLE."""
        entry = self._inflight.pop(call_id, None)
        if entry is None:
            return
        self.last_error = error
        kind = entry.kind
        if kind in ("find", "heartbeat"):
            self._joining_failed(error)
        if kind == "find":
            self._find_call = None
            self._find_attempt += 1
            self._backoff(now_ms)
        elif kind in ("heartbeat", "leave", "commit", "offset_fetch"):
            self._clear_call(kind)
            if kind == "leave":
                self._leave_sent = False
            self._route(error, now_ms)
        elif kind == "metadata":
            self._metadata_call = None
            self._metadata_attempt += 1
            for feed in self.feeds.values():
                feed.reader.on_metadata_failure(error, now_ms=now_ms)
        else:
            calls = self._fetch_calls if kind == "fetch" else self._list_calls
            calls.pop(entry.endpoint, None)
            for tp, token, _ in entry.steps:
                live = self._live(tp, token)
                if live is not None:
                    live.inflight = False
                    live.reader.on_transport_failure(error, now_ms=now_ms)
        self._check_timers(now_ms)

    # ------------------------------------------------------------ timers

    def _check_timers(self, now_ms: int) -> None:
        state = self.state
        if state is MemberState.LEAVING:
            if now_ms >= self._leave_deadline_ms:
                self._event("group.leave_timed_out", member_id=self.member_id)
                self._finish_leave(self._leave_target)
                return
            if self._leave_ready():
                self._finish_leave(self._leave_target)
                return
        if (
            state in (MemberState.JOINING, MemberState.MEMBER)
            and not self._app_inside
            and now_ms - self._app_left_ms >= self.config.max_poll_interval_ms
        ):
            # KIP-62: a member whose application stopped polling leaves, so that its
            # partitions go to members that consume them. The message it holds is not
            # processed (it never came back): not committed.
            self._event("group.poll_timed_out", member_id=self.member_id)
            self._stats.poll_timeouts += 1
            self._held = None
            self._stop_fetching()
            self._start_leave(MemberState.POLL_TIMEOUT, now_ms + POLL_LEAVE_TIMEOUT_MS)
            return
        if (
            state is MemberState.MEMBER
            and now_ms - self._last_heartbeat_ok_ms >= self.config.session_ms
            and now_ms >= self._next_heartbeat_ms
        ):
            # No heartbeat answered for a session timeout: the coordinator has evicted
            # this member by now, and its partitions may be another's.
            self._lose_all(
                RaftmqError(
                    ErrorCode.UNKNOWN_MEMBER_ID,
                    f"no heartbeat answered for {self.config.session_ms} ms (last error: "
                    f"{self.last_error})",
                ),
                now_ms,
            )
            return
        if state is MemberState.MEMBER:
            for feed in [f for f in self.feeds.values() if f.revoking]:
                if self._release_ready(feed, now_ms):
                    self._release(feed)
        if state is MemberState.JOINING and now_ms >= self._join_stalled_at_ms:
            self._join_stalled(now_ms)
        if self._tickets:
            self._settle_tickets(now_ms)

    def _release_ready(self, feed: PartitionFeed, now_ms: int) -> bool:
        """A revoked partition may be released: the application is not holding a message
        of it, its processed offset is committed (or failed for good), and no commit of it
        is in flight — or the grace period is over."""
        if now_ms >= feed.revoke_deadline_ms:
            return True
        held = self._held
        if held is not None and held.tp == feed.tp and held.token == feed.token:
            return False
        if self._commit_call is not None:
            entry = self._inflight.get(self._commit_call)
            if entry is not None and feed.tp in entry.offsets:
                return False
        return feed.commit_wanted is None

    # ------------------------------------------------------------ coordinator calls

    def _call(
        self, kind: str, endpoint: str, request: Request, timeout_ms: int, now_ms: int
    ) -> GroupCall:
        call_id = self._next_call_id
        self._next_call_id += 1
        self._inflight[call_id] = _Inflight(kind, endpoint, request)
        if self.state is MemberState.LEAVING:
            # Nothing of a leave outlives its deadline.
            timeout_ms = call_timeout_ms(self._leave_deadline_ms - now_ms, timeout_ms)
        return GroupCall(call_id, endpoint, request, max(1, timeout_ms))

    def _maybe_find(self, now_ms: int, calls: list[GroupCall]) -> None:
        if self._find_call is not None or not self._wants_coordinator():
            return
        candidates = candidate_addresses(self.bootstrap, self.metadata)
        endpoint = candidates[self._find_attempt % len(candidates)]
        request = FindCoordinatorRequest(self.config.group_id)
        call = self._call("find", endpoint, request, COORDINATOR_TIMEOUT_MS, now_ms)
        self._find_call = call.call_id
        calls.append(call)

    def _wants_coordinator(self) -> bool:
        if self.state is MemberState.LEAVING:
            return self.member_epoch > 0 or self._heartbeat_call is not None
        return self.state in (MemberState.JOINING, MemberState.MEMBER)

    def _maybe_heartbeat(self, now_ms: int, calls: list[GroupCall]) -> None:
        if self._heartbeat_call is not None:
            return
        assert self.coordinator is not None
        state = self.state
        if state is MemberState.LEAVING:
            if self.member_epoch <= 0 or self._leave_sent:
                return
            if self._commit_after_heartbeat:
                epoch, kind = self.member_epoch, "heartbeat"  # learn the epoch to commit at
            elif self._commit_call is not None or self._leave_commits_pending():
                return  # what was processed is committed first
            else:
                epoch, kind = self.config.leave_epoch, "leave"
                self._leave_sent = True
        elif state is MemberState.JOINING:
            epoch, kind = JOIN_EPOCH, "heartbeat"
            self._join_attempts += 1
        elif state is MemberState.MEMBER:
            if not self._heartbeat_soon and now_ms < self._next_heartbeat_ms:
                return
            epoch, kind = self.member_epoch, "heartbeat"
        else:
            return
        owned = () if state is MemberState.JOINING else sorted_partitions(self.feeds)
        request = HeartbeatRequest(
            group_id=self.config.group_id,
            member_id=self.member_id,
            member_epoch=epoch,
            instance_id=self.config.instance_id,
            rebalance_timeout_ms=self.config.rebalance_timeout_ms,
            session_timeout_ms=self.config.session_timeout_ms,
            subscribed_topics=self.config.topics,
            subscribed_pattern=self.config.pattern,
            assignor=self.config.assignor,
            owned=owned,
            client_id=self.config.client_id,
        )
        call = self._call(kind, self.coordinator, request, COORDINATOR_TIMEOUT_MS, now_ms)
        self._heartbeat_call = call.call_id
        self._heartbeat_soon = False
        self._stats.heartbeats += 1
        calls.append(call)

    def _maybe_commit(self, now_ms: int, calls: list[GroupCall]) -> None:
        if self._commit_call is not None or self.member_epoch <= 0:
            return
        if self._commit_after_heartbeat:
            return
        if self.state not in (MemberState.MEMBER, MemberState.LEAVING):
            return
        wanted = [
            (f, offset) for f in self.feeds.values() if (offset := f.commit_wanted) is not None
        ]
        if not wanted:
            return
        interval_ms = self.config.commit_interval_ms
        due = (
            interval_ms == 0
            or now_ms >= self._commit_due_ms
            or self.state is MemberState.LEAVING
            or any(f.revoking for f, _ in wanted)
        )
        if not due:
            return
        if interval_ms > 0:
            self._commit_due_ms = now_ms + interval_ms
        assert self.coordinator is not None
        request = OffsetCommitRequest(
            self.config.group_id,
            self.member_id,
            self.member_epoch,
            tuple(CommitOffset(f.tp[0], f.tp[1], offset) for f, offset in wanted),
        )
        call = self._call("commit", self.coordinator, request, COORDINATOR_TIMEOUT_MS, now_ms)
        self._inflight[call.call_id].offsets = {f.tp: (f.token, offset) for f, offset in wanted}
        self._commit_call = call.call_id
        calls.append(call)

    def _maybe_offset_fetch(self, now_ms: int, calls: list[GroupCall]) -> None:
        if self._offset_fetch_call is not None or self.state is not MemberState.MEMBER:
            return
        pending = [f for f in self.feeds.values() if not f.resolved and not f.revoking]
        if not pending:
            return
        assert self.coordinator is not None
        request = OffsetFetchRequest(self.config.group_id, sorted_partitions(f.tp for f in pending))
        call = self._call("offset_fetch", self.coordinator, request, COORDINATOR_TIMEOUT_MS, now_ms)
        self._inflight[call.call_id].tokens = {f.tp: f.token for f in pending}
        self._offset_fetch_call = call.call_id
        calls.append(call)

    # ------------------------------------------------------------ coordinator answers

    def _on_coordinator(self, result: CoordinatorResult, now_ms: int) -> None:
        self._find_call = None
        if result.error is not None or result.endpoint is None:
            self.last_error = result.error or RaftmqError(
                ErrorCode.COORDINATOR_NOT_AVAILABLE, "FindCoordinator named no endpoint"
            )
            self._joining_failed(self.last_error)
            if self.last_error.retriable:
                self._find_attempt += 1
                self._backoff(now_ms)
            else:
                self._fatal(self.last_error)
            return
        self.coordinator = result.endpoint
        self.last_error = None
        self._event("group.coordinator_found", coordinator=result.endpoint)

    def _on_heartbeat(self, entry: _Inflight, result: HeartbeatResult, now_ms: int) -> None:
        self._heartbeat_call = None
        error = result.error
        if entry.kind == "leave":
            if error is not None and error.code in _ROUTING_CODES:
                self._leave_sent = False  # find the coordinator again, then leave again
                self._route(error, now_ms)
                return
            self._event("group.left", member_id=self.member_id, error=str(error or ""))
            self.member_epoch = JOIN_EPOCH
            self._finish_leave(self._leave_target)
            return
        if error is not None:
            self.last_error = error
            self._joining_failed(error)
            if error.code in _MEMBER_GONE_CODES:
                self._lose_all(error, now_ms)
            elif error.code in _ROUTING_CODES:
                self._route(error, now_ms)
            elif error.retriable:  # UNRELEASED_INSTANCE_ID: the previous instance holds it
                self._backoff(now_ms)
            else:
                self._fatal(error)
            return
        self._ok()
        self._last_heartbeat_ok_ms = now_ms
        if result.member_id:
            self.member_id = result.member_id
        joined = self.state is MemberState.JOINING
        self.member_epoch = result.member_epoch
        self._interval_ms = (
            self.config.heartbeat_interval_ms
            or result.heartbeat_interval_ms
            or HEARTBEAT_INTERVAL_MS_DEFAULT
        )
        self._next_heartbeat_ms = now_ms + self._interval_ms
        self._commit_after_heartbeat = False
        if joined and result.member_epoch > 0:
            self.state = MemberState.MEMBER
            self._event(
                "group.joined",
                member_id=self.member_id,
                epoch=result.member_epoch,
                out_of_group_ms=now_ms - self._out_since_ms,
                attempts=self._join_attempts,
            )
        if self.state is MemberState.MEMBER:
            self._apply_assignment(result.assignment, now_ms)

    def _apply_assignment(self, assignment: frozenset[TopicPartition], now_ms: int) -> None:
        """Follow an answer's assignment: revoke what is missing (released later), start
        what is new (from the committed offset)."""
        grace_ms = self.config.rebalance_timeout_ms // 2
        revoked = []
        for tp, feed in self.feeds.items():
            if tp not in assignment and not feed.revoking:
                feed.revoking = True
                feed.revoke_deadline_ms = now_ms + grace_ms
                feed.reader.drop_buffer()  # never delivered (kafka-go #1398)
                revoked.append(tp)
            elif tp in assignment and feed.revoking:
                feed.revoking = False  # given back before it was released
        added = sorted(assignment - self.feeds.keys())
        for tp in added:
            reader = ReaderCore(tp[0], tp[1], self.config.reader)
            if self.metadata is not None and tp[0] in self.metadata.topics:
                reader.on_metadata(self.metadata)
            self.feeds[tp] = PartitionFeed(tp, self._next_token, reader)
            self._next_token += 1
        if revoked:
            self._event("group.partitions_revoked", partitions=revoked, epoch=self.member_epoch)
        if added:
            self._event("group.partitions_assigned", partitions=added, epoch=self.member_epoch)
            self._heartbeat_soon = True  # tell the coordinator they are consumed now

    def _on_commit(self, entry: _Inflight, result: OffsetCommitResult, now_ms: int) -> None:
        self._commit_call = None
        if result.error is not None:
            error = result.error
            self.last_error = error
            if error.code in _MEMBER_GONE_CODES:
                self._lose_all(error, now_ms)
            elif error.code == ErrorCode.STALE_MEMBER_EPOCH:
                # Learn the current epoch, then commit again what is still owned.
                self._heartbeat_soon = True
                self._commit_after_heartbeat = True
            elif error.code in _ROUTING_CODES or error.retriable:
                self._route(error, now_ms)
            else:
                for tp, (token, offset) in entry.offsets.items():
                    self._commit_failed(tp, token, offset, error)
            return
        self._ok()
        for tp, (token, offset) in entry.offsets.items():
            answer = result.partitions.get(tp, _no_answer(tp))
            feed = self._live(tp, token)
            if answer is None:
                if feed is not None:
                    feed.committed = max(feed.committed, offset)
                self._stats.commits += 1
                continue
            error = answer
            self.last_error = error
            if error.code == ErrorCode.STALE_MEMBER_EPOCH:
                # Learn the current epoch, then commit again if still owned.
                self._heartbeat_soon = True
                self._commit_after_heartbeat = True
            elif error.code in _MEMBER_GONE_CODES:
                self._lose_all(error, now_ms)
                return
            elif error.code == ErrorCode.NOT_PARTITION_OWNER:
                # The coordinator says it is not ours at this epoch: never retried; stop
                # consuming it (the next heartbeat tells what is).
                self._commit_failed(tp, token, offset, error)
                if feed is not None:
                    self._drop_feed(feed, error, lost=True)
                    self._heartbeat_soon = True
            elif error.code in _ROUTING_CODES or error.retriable:
                self._route(error, now_ms)
            else:
                self._commit_failed(tp, token, offset, error)
        self._settle_tickets(now_ms)

    def _commit_failed(
        self, tp: TopicPartition, token: int, offset: int, error: RaftmqError
    ) -> None:
        """A commit of `offset` failed for good: `committed` stays; the tickets it covered
        fail; without a ticket (auto commit), read_message raises it once."""
        self._stats.commit_errors += 1
        feed = self._live(tp, token)
        if feed is not None:
            feed.failed_offset = offset
        covered = False
        for ticket in self._tickets:
            want = ticket.wanted.get(tp)
            if want is not None and want[0] == token and want[1] <= offset:
                ticket._fail(tp, error)
                covered = True
        if not covered and self.state is not MemberState.LEAVING:
            self._pending_errors.append(CommitError([(tp, offset, error)]))
        elif not covered:
            self._close_failures.append((tp, offset, error))

    def _on_offset_fetch(self, entry: _Inflight, result: OffsetFetchResult, now_ms: int) -> None:
        self._offset_fetch_call = None
        error = result.error
        if error is not None and error.code != ErrorCode.GROUP_ID_NOT_FOUND:
            self.last_error = error
            if error.code in _ROUTING_CODES or error.retriable:
                self._route(error, now_ms)
            else:
                self._fatal(error)
            return
        self._ok()
        reset = FirstOffset if self.config.auto_offset_reset == "earliest" else LastOffset
        for tp, token in entry.tokens.items():
            feed = self._live(tp, token)
            if feed is None or feed.resolved:
                continue
            committed = result.offsets.get(tp)
            offset = NO_OFFSET if committed is None else committed.offset
            feed.committed = offset
            feed.processed = offset
            feed.reader.set_offset(offset if offset >= 0 else reset)
            feed.resolved = True

    # ------------------------------------------------------------ fetching

    def _plan_fetches(self, now_ms: int, calls: list[GroupCall]) -> None:
        self._fetch_wake_ms = None
        want_metadata = False
        prefer: list[str] = []
        fetches: dict[str, list[tuple[PartitionFeed, FetchStep]]] = {}
        lists: dict[str, list[tuple[PartitionFeed, ListOffsetStep]]] = {}
        for feed in self.feeds.values():
            if not feed.resolved or feed.revoking or feed.inflight:
                continue
            # A partition with messages buffered is fetched again once they are taken;
            # read_lag still asks its leader for the high watermark meanwhile.
            buffered = feed.reader.buffered > 0
            if buffered and not feed.reader.wants_high_watermark:
                continue
            step = feed.reader.next_step(now_ms=now_ms)
            if buffered and isinstance(step, FetchStep):
                continue
            if isinstance(step, WaitStep):
                if self._fetch_wake_ms is None or step.until_ms < self._fetch_wake_ms:
                    self._fetch_wake_ms = step.until_ms
            elif isinstance(step, MetadataStep):
                want_metadata = True
                prefer += [p for p in step.prefer if p not in prefer]
            elif isinstance(step, ListOffsetStep):
                if step.endpoint not in self._list_calls:
                    lists.setdefault(step.endpoint, []).append((feed, step))
            else:
                assert isinstance(step, FetchStep)
                if step.endpoint not in self._fetch_calls:
                    fetches.setdefault(step.endpoint, []).append((feed, step))
        if want_metadata and self._metadata_call is None:
            # A leader hint first (it knows the newest state), else the next broker in turn.
            candidates = candidate_addresses(self.bootstrap, self.metadata, prefer)
            endpoint = candidates[0 if prefer else self._metadata_attempt % len(candidates)]
            topics = tuple(sorted({tp[0] for tp in self.feeds}))
            call = self._call(
                "metadata", endpoint, MetadataRequest(topics), METADATA_TIMEOUT_MS, now_ms
            )
            self._metadata_call = call.call_id
            calls.append(call)
        for endpoint, items in lists.items():
            list_request = ListOffsetsRequest(
                tuple((f.tp[0], f.tp[1], s.timestamp) for f, s in items)
            )
            timeout_ms = min([LIST_OFFSETS_TIMEOUT_MS, *(s.timeout_ms for _, s in items)])
            call = self._call("list", endpoint, list_request, timeout_ms, now_ms)
            self._inflight[call.call_id].steps = [(f.tp, f.token, s) for f, s in items]
            self._list_calls[endpoint] = call.call_id
            for f, _ in items:
                f.inflight = True
            calls.append(call)
        for endpoint, fetch_items in fetches.items():
            first = fetch_items[0][1]
            fetch_request = FetchRequest(
                tuple((f.tp[0], f.tp[1], s.offset, s.leader_epoch) for f, s in fetch_items),
                max_wait_ms=first.max_wait_ms,
                min_bytes=first.min_bytes,
                max_bytes=first.max_bytes,
                partition_max_bytes=first.max_bytes,
            )
            call = self._call("fetch", endpoint, fetch_request, first.timeout_ms, now_ms)
            self._inflight[call.call_id].steps = [(f.tp, f.token, s) for f, s in fetch_items]
            self._fetch_calls[endpoint] = call.call_id
            for f, _ in fetch_items:
                f.inflight = True
            calls.append(call)

    def _on_metadata(self, entry: _Inflight, metadata: ClusterMetadata, now_ms: int) -> None:
        self._metadata_call = None
        assert isinstance(entry.request, MetadataRequest)
        if metadata.version == 0:
            error = RaftmqError(
                ErrorCode.BROKER_NOT_AVAILABLE, f"{entry.endpoint} has no metadata yet"
            )
            self._metadata_attempt += 1
            for feed in self.feeds.values():
                feed.reader.on_metadata_failure(error, now_ms=now_ms)
            return
        self.metadata = merge_metadata(self.metadata, metadata, entry.request.topics)
        for feed in self.feeds.values():
            feed.reader.on_metadata(self.metadata)

    def _on_list_offsets(self, entry: _Inflight, results: list[OffsetResult], now_ms: int) -> None:
        self._list_calls.pop(entry.endpoint, None)
        by_tp = {(r.topic, r.partition): r for r in results}
        for tp, token, step in entry.steps:
            feed = self._live(tp, token)
            if feed is None:
                continue
            feed.inflight = False
            assert isinstance(step, ListOffsetStep)
            result = by_tp.get(tp)
            if result is None:
                feed.reader.backoff(_no_answer(tp), now_ms=now_ms)
                continue
            try:
                feed.reader.on_offset(step, result, now_ms=now_ms)
            except RaftmqError as e:  # pragma: no cover - on_offset raises nothing today
                self._on_partition_error(feed, e, now_ms)

    def _on_fetch(self, entry: _Inflight, results: list[FetchResult], now_ms: int) -> None:
        self._fetch_calls.pop(entry.endpoint, None)
        by_tp = {(r.topic, r.partition): r for r in results}
        for tp, token, step in entry.steps:
            feed = self._live(tp, token)
            if feed is None:
                continue  # released or lost meanwhile: its records are not delivered
            feed.inflight = False
            if feed.revoking:
                continue
            assert isinstance(step, FetchStep)
            result = by_tp.get(tp)
            if result is None:
                feed.reader.backoff(_no_answer(tp), now_ms=now_ms)
                continue
            try:
                feed.reader.on_fetch(step, result, now_ms=now_ms)
            except RaftmqError as e:
                self._on_partition_error(feed, e, now_ms)
            if feed.reader.buffered and (tp, token) not in self._ready_set:
                self._ready.append((tp, token))
                self._ready_set.add((tp, token))

    def _on_partition_error(self, feed: PartitionFeed, error: RaftmqError, now_ms: int) -> None:
        """A fetch error the ReaderCore leaves to its caller."""
        self.last_error = error
        if error.code == ErrorCode.OFFSET_OUT_OF_RANGE:
            # The committed or reached position is outside the log (retention, a topic
            # made anew): auto_offset_reset decides, as in Kafka.
            reset = FirstOffset if self.config.auto_offset_reset == "earliest" else LastOffset
            self._event("group.offset_reset", partition=feed.tp, error=str(error))
            feed.reader.set_offset(reset)
            return
        feed.reader.backoff(error, now_ms=now_ms)
        self._pending_errors.append(error)

    def _stop_fetching(self) -> None:
        for feed in self.feeds.values():
            feed.reader.drop_buffer()
        self._ready.clear()
        self._ready_set.clear()

    # ------------------------------------------------------------ transitions

    def _release_held(self, *, processed: bool) -> bool:
        """The application is done with the message it held; True when that made an
        offset to commit (read_message's)."""
        held = self._held
        self._held = None
        if held is None:
            return False
        feed = self._live(held.tp, held.token)
        if feed is None:
            return False
        if feed.revoking:
            self._poll_wanted = True  # its release waited for this
        if not processed or not held.auto_commit:
            return False
        feed.processed = max(feed.processed, held.offset + 1)
        return True

    def _release(self, feed: PartitionFeed) -> None:
        """A revoked partition is given up: not listed as owned from now on (a heartbeat
        at once tells the coordinator, which then gives it to its next owner)."""
        self._stats.revoked += 1
        self._event("group.partition_released", partition=feed.tp, committed=feed.committed)
        self._drop_feed(
            feed,
            RaftmqError(
                ErrorCode.NOT_PARTITION_OWNER,
                f"{feed.tp[0]}-{feed.tp[1]} was revoked from this member before the commit",
            ),
            lost=False,
        )
        self._heartbeat_soon = True

    def _drop_feed(self, feed: PartitionFeed, reason: RaftmqError, *, lost: bool) -> None:
        del self.feeds[feed.tp]
        if lost:
            self._stats.lost += 1
        feed.reader.drop_buffer()  # never delivered: not counted as read
        stats = feed.reader.current_stats()
        retired = self._retired
        retired.messages += stats.messages
        retired.bytes += stats.bytes
        retired.fetches += stats.fetches
        retired.errors += stats.errors
        for code, n in stats.errors_by_code.items():
            retired.errors_by_code[code] = retired.errors_by_code.get(code, 0) + n
        held = self._held
        if held is not None and held.tp == feed.tp and held.token == feed.token:
            self._held = None
        for ticket in self._tickets:
            want = ticket.wanted.get(feed.tp)
            if want is not None and want[0] == feed.token:
                ticket._fail(feed.tp, reason)

    def _lose_all(self, error: RaftmqError, now_ms: int) -> None:
        """The member is gone at the coordinator (fenced, unknown, session over): drop
        every partition WITHOUT a commit (another member may own them already), discard
        what is buffered, and join again with epoch 0 at once."""
        self.last_error = error
        if self.feeds:
            self._event("group.partitions_lost", partitions=sorted(self.feeds), error=str(error))
        for feed in list(self.feeds.values()):
            self._drop_feed(feed, error, lost=True)
        self._ready.clear()
        self._ready_set.clear()
        self._held = None
        self._forget_group_calls()
        self.member_epoch = JOIN_EPOCH
        self._commit_after_heartbeat = False
        if self.state is MemberState.LEAVING:
            self._finish_leave(self._leave_target)  # nothing left to leave
            return
        self._stats.rejoins += 1
        self._become_joining(now_ms)
        self._last_heartbeat_ok_ms = now_ms

    def _become_joining(self, now_ms: int) -> None:
        self.state = MemberState.JOINING
        self._out_since_ms = now_ms
        self._join_attempts = 0
        self._join_error = None
        self._join_stalled_ms = JOIN_STALLED_MS
        self._join_stalled_at_ms = now_ms + JOIN_STALLED_MS

    def _joining_failed(self, error: RaftmqError) -> None:
        if self.state is MemberState.JOINING:
            self._join_error = error

    def _join_stalled(self, now_ms: int) -> None:
        """Still out of the group: say why (a warning), and when it is due again."""
        # Not last_error: after a loss that is the loss's reason, not the join's.
        if self._join_error is not None:
            why = str(self._join_error)
        elif self._heartbeat_call is not None:
            why = "the join heartbeat is not answered yet"
        elif self._find_call is not None:
            why = "FindCoordinator is not answered yet"
        else:
            why = "no join sent yet"
        self._event(
            "group.join_stalled",
            member_id=self.member_id,
            instance_id=self.config.instance_id,
            out_of_group_ms=now_ms - self._out_since_ms,
            attempts=self._join_attempts,
            coordinator=self.coordinator,
            error=why,
        )
        self._join_stalled_ms = min(JOIN_STALLED_INTERVAL_MS_MAX, self._join_stalled_ms * 2)
        self._join_stalled_at_ms = now_ms + self._join_stalled_ms

    def _start_leave(self, target: MemberState, deadline_ms: int) -> None:
        if self.state is MemberState.LEAVING:
            # close() during a poll-interval leave: it ends closed, by the nearer deadline.
            self._leave_target = MemberState.LEFT
            self._leave_deadline_ms = min(self._leave_deadline_ms, deadline_ms)
            return
        self.state = MemberState.LEAVING
        self._leave_target = target
        self._leave_deadline_ms = deadline_ms
        self._leave_sent = False
        self._close_failures = []
        if self._leave_ready():
            self._finish_leave(target)

    def _leave_ready(self) -> bool:
        """Nothing more to do for the leave: never joined (and no join in flight)."""
        return self.member_epoch <= 0 and self._heartbeat_call is None

    def _leave_commits_pending(self) -> bool:
        return any(f.commit_wanted is not None for f in self.feeds.values())

    def _finish_leave(self, target: MemberState) -> None:
        """The leave is over (answered, or its deadline passed): every partition is
        dropped; on close, what was processed and is not committed is `close_error`."""
        failures = list(self._close_failures)
        for feed in list(self.feeds.values()):
            wanted = feed.commit_wanted
            if wanted is not None and target is MemberState.LEFT:
                failures.append(
                    (
                        feed.tp,
                        wanted,
                        self.last_error
                        or RaftmqError(
                            ErrorCode.REQUEST_TIMED_OUT, "the commit did not finish in time"
                        ),
                    )
                )
            self._drop_feed(
                feed, RaftmqError(ErrorCode.UNKNOWN_MEMBER_ID, "the member left"), lost=False
            )
        if failures and target is MemberState.LEFT:
            self.close_error = CommitError(failures)
        self._close_failures = []
        self._ready.clear()
        self._ready_set.clear()
        self._held = None
        self._forget_group_calls()
        self._forget_fetch_calls()
        self.member_epoch = JOIN_EPOCH
        self.state = target
        for ticket in self._tickets:
            for tp in list(ticket.wanted):
                ticket._fail(tp, RaftmqError(ErrorCode.UNKNOWN_MEMBER_ID, "the member left"))
            ticket._settle()
        self._tickets = [t for t in self._tickets if not t.done]

    def _fatal(self, error: RaftmqError) -> None:
        self._event("group.failed", error=str(error))
        self.error = error
        for feed in list(self.feeds.values()):
            self._drop_feed(feed, error, lost=True)
        self._forget_group_calls()
        self._forget_fetch_calls()
        self.member_epoch = JOIN_EPOCH
        self.state = MemberState.FAILED
        for ticket in self._tickets:
            ticket._settle()

    def _forget_group_calls(self) -> None:
        """Answers to these calls mean nothing any more (a new membership, or none)."""
        for call_id in (
            self._heartbeat_call,
            self._commit_call,
            self._offset_fetch_call,
        ):
            if call_id is not None:
                self._inflight.pop(call_id, None)
        self._heartbeat_call = self._commit_call = self._offset_fetch_call = None

    def _forget_fetch_calls(self) -> None:
        for call_id in [*self._fetch_calls.values(), *self._list_calls.values()]:
            self._inflight.pop(call_id, None)
        if self._metadata_call is not None:
            self._inflight.pop(self._metadata_call, None)
        self._fetch_calls.clear()
        self._list_calls.clear()
        self._metadata_call = None

    def _clear_call(self, kind: str) -> None:
        if kind in ("heartbeat", "leave"):
            self._heartbeat_call = None
        elif kind == "commit":
            self._commit_call = None
        else:
            assert kind == "offset_fetch", kind
            self._offset_fetch_call = None

    def _route(self, error: RaftmqError, now_ms: int) -> None:
        """A coordinator call failed retriably: find the coordinator again (it moved or is
        not reachable) unless it is only loading, and back off."""
        self.last_error = error
        if error.code != ErrorCode.COORDINATOR_LOAD_IN_PROGRESS and error.code in _ROUTING_CODES:
            if self.coordinator is not None:
                self._event("group.coordinator_lost", error=str(error))
            self.coordinator = None
        self._backoff(now_ms)

    def _backoff(self, now_ms: int) -> None:
        self._backoff_until_ms = now_ms + self._backoff_ms
        self._backoff_ms = min(BACKOFF_MS_MAX, self._backoff_ms * 2)

    def _ok(self) -> None:
        self._backoff_ms = BACKOFF_MS
        self.last_error = None

    def _settle_tickets(self, now_ms: int) -> None:
        for ticket in self._tickets:
            for tp, (token, want) in list(ticket.wanted.items()):
                feed = self._live(tp, token)
                if feed is None:
                    ticket._fail(tp, self._not_owned(tp, want - 1))
                elif feed.committed >= want:
                    del ticket.wanted[tp]
                elif now_ms >= ticket.deadline_ms:
                    ticket._fail(
                        tp,
                        RaftmqError(
                            ErrorCode.REQUEST_TIMED_OUT,
                            f"no commit answer in time ({self.describe_wait()}); the offset "
                            "may still be committed",
                        ),
                    )
            ticket._settle()
        self._tickets = [t for t in self._tickets if not t.done]

    def _commit_pending(self) -> bool:
        return any(f.commit_wanted is not None for f in self.feeds.values())

    def _live(self, tp: TopicPartition, token: int) -> PartitionFeed | None:
        feed = self.feeds.get(tp)
        return feed if feed is not None and feed.token == token else None

    def _not_owned(self, tp: TopicPartition, offset: int) -> RaftmqError:
        return RaftmqError(
            ErrorCode.NOT_PARTITION_OWNER,
            f"{tp[0]}-{tp[1]} at offset {offset} was not handed out by this member's current "
            "assignment (revoked, lost, or never read): not committed",
        )

    def _event(self, name: str, **data: object) -> None:
        self.events.append((name, {"group_id": self.config.group_id, **data}))


def _no_answer(tp: TopicPartition) -> RaftmqError:
    return RaftmqError(
        ErrorCode.UNKNOWN_SERVER_ERROR, f"the answer did not mention {tp[0]}-{tp[1]}"
    )
