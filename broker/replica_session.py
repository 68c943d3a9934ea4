"""The leader side of replication: one `ReplicaSession` per follower stream (gRPC
`ReplicaFetch`), an incremental fetch session in the manner of Kafka's KIP-227.

The follower sends a partition's position when it adds the partition or has applied the
last answer for it; that position counts as its fetch (the follower's progress is
recorded, the high watermark may advance) and marks the partition *ready*. A ready
partition is answered as soon as it has something to say: records (after an append), an
error, a diverging epoch. A newer high watermark alone is sent after a short linger and
keeps the partition ready. Partitions with nothing new cost nothing: no per-round
request lists thousands of idle partitions, and no timer polls them.

Bounds: one answer carries at most `response_bytes_max`; records a follower has not yet
acknowledged (by a new position) are at most `inflight_bytes_max` per session; every
partition at most `partition_bytes_max` per answer. Fairness: each flush starts one
partition further along the session's order, so a busy partition cannot starve others.

Single-threaded (the broker's event loop). No gRPC here: `send` takes domain results and
the servicer converts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from raftmq.broker.partition_replica import PartitionReplica, ReadResult
from raftmq.broker.purgatory import Scheduler, TimerHandle
from raftmq.errors import ErrorCode, RaftmqError

PartitionKey = tuple[bytes, int]

PARTITION_BYTES_MAX = 4 << 20
RESPONSE_BYTES_MAX = 16 << 20
INFLIGHT_BYTES_MAX = 32 << 20
# A high watermark that moved while a follower had nothing to fetch reaches it this late
# at most (Kafka: within the follower's next fetch, i.e. replica.fetch.wait.max.ms).
HIGH_WATERMARK_LINGER_MS = 50
POSITIONS_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class ReplicaPosition:
    topic_id: bytes
    partition: int
    fetch_offset: int
    last_fetched_epoch: int
    current_leader_epoch: int


@dataclass(frozen=True, slots=True)
class SessionResult:
    """One partition of an answer: `read` on success, else `error` (with the log's
    offsets where known, for OFFSET_OUT_OF_RANGE)."""

    topic: str
    topic_id: bytes
    partition: int
    read: ReadResult | None = None
    error: RaftmqError | None = None
    log_start_offset: int = -1
    log_end_offset: int = -1


@dataclass(slots=True)
class _Partition:
    position: ReplicaPosition
    # The follower waits for news of it. Invariant: not ready while records sent for it
    # are unacknowledged (`inflight_bytes` > 0).
    ready: bool = True
    inflight_bytes: int = 0
    # The last high watermark this follower was told.
    sent_high_watermark: int = -1


class ReplicaHooks:
    """What a session needs of the replica manager."""

    def __init__(
        self,
        replica_by_id: Callable[[bytes, int], PartitionReplica[Any]],
        on_high_watermark_advanced: Callable[[PartitionReplica[Any]], None],
        now_ms: Callable[[], int],
    ) -> None:
        self.replica_by_id = replica_by_id
        self.on_high_watermark_advanced = on_high_watermark_advanced
        self.now_ms = now_ms


class ReplicaSession:
    def __init__(
        self,
        *,
        replica_id: int,
        broker_epoch: int,
        hooks: ReplicaHooks,
        scheduler: Scheduler,
        send: Callable[[list[SessionResult]], None],
        call_soon: Callable[[Callable[[], None]], object],
        partition_bytes_max: int = PARTITION_BYTES_MAX,
        response_bytes_max: int = RESPONSE_BYTES_MAX,
        inflight_bytes_max: int = INFLIGHT_BYTES_MAX,
    ) -> None:
        self.replica_id = replica_id
        self.broker_epoch = broker_epoch
        self.hooks = hooks
        self.scheduler = scheduler
        self.send = send
        self.call_soon = call_soon
        self.partition_bytes_max = partition_bytes_max
        self.response_bytes_max = response_bytes_max
        self.inflight_bytes_max = inflight_bytes_max
        # Partitions of the session, in the order they joined (the rotation's order).
        self._partitions: dict[PartitionKey, _Partition] = {}
        # Ready partitions to look at in the next flush (insertion-ordered set).
        self._dirty: dict[PartitionKey, None] = {}
        # Ready partitions whose HW moved: told at the linger timer, unless an answer with
        # records (which carries the HW) goes first.
        self._stale_high_watermark: dict[PartitionKey, None] = {}
        # Keys the linger timer flushes: these may be answered with a high watermark alone.
        self._linger_due: set[PartitionKey] = set()
        # Invariant: the sum of every partition's inflight_bytes.
        self.inflight_bytes = 0
        self._flush_scheduled = False
        self._linger: TimerHandle | None = None
        self._rotation = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._partitions)

    def keys(self) -> Iterable[PartitionKey]:
        return self._partitions.keys()

    def is_waiting(self, key: PartitionKey) -> bool:
        state = self._partitions.get(key)
        return state is not None and state.ready

    # ------------------------------------------------------------ follower -> leader

    def on_positions(
        self, positions: Iterable[ReplicaPosition], removed: Iterable[PartitionKey]
    ) -> None:
        """A message from the follower: moved or added partitions (each acknowledges what
        was sent for it and asks for more), and partitions it stopped fetching here."""
        for key in removed:
            gone = self._partitions.pop(key, None)
            if gone is not None:
                self.inflight_bytes -= gone.inflight_bytes
            self._dirty.pop(key, None)
            self._stale_high_watermark.pop(key, None)
        for position in positions:
            key = (position.topic_id, position.partition)
            state = self._partitions.get(key)
            if state is None:
                if len(self._partitions) >= POSITIONS_MAX:
                    raise RaftmqError(
                        ErrorCode.INVALID_REQUEST,
                        f"a replica fetch session holds at most {POSITIONS_MAX} partitions",
                    )
                state = self._partitions[key] = _Partition(position)
            else:
                self.inflight_bytes -= state.inflight_bytes
                state.position = position
                state.inflight_bytes = 0
                state.ready = True
            self._dirty[key] = None
        assert self.inflight_bytes >= 0
        # Answered now, not on the next loop turn: the positions just advanced the high
        # watermark, and waiting acks=all requests complete in this flush.
        self.flush()

    # ------------------------------------------------------------ hooks

    def on_partition_changed(self, key: PartitionKey) -> None:
        """An append or a role change on a partition of this session."""
        state = self._partitions.get(key)
        if state is not None and state.ready:
            self._dirty[key] = None
            self._schedule_flush()

    def on_high_watermark_advanced(self, key: PartitionKey) -> None:
        state = self._partitions.get(key)
        if state is None or not state.ready or key in self._dirty:
            return
        self._linger_high_watermark(key)

    def _linger_high_watermark(self, key: PartitionKey) -> None:
        self._stale_high_watermark[key] = None
        if self._linger is None and not self.closed:
            self._linger = self.scheduler.call_later(
                HIGH_WATERMARK_LINGER_MS / 1000, self._on_linger
            )

    def close(self) -> None:
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._partitions.clear()
        self._dirty.clear()
        self._stale_high_watermark.clear()
        self.inflight_bytes = 0

    # ------------------------------------------------------------ answers

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self.closed:
            self._flush_scheduled = True
            self.call_soon(self.flush)

    def _on_linger(self) -> None:
        self._linger = None
        for key in self._stale_high_watermark:
            if key in self._partitions:
                self._dirty[key] = None
                self._linger_due.add(key)
        self._stale_high_watermark.clear()
        self.flush()
        self._linger_due.clear()

    def flush(self) -> None:
        """Answer every dirty partition that has news, within the byte bounds."""
        self._flush_scheduled = False
        if self.closed or not self._dirty:
            return
        keys = list(self._dirty)
        start = self._rotation % len(keys)
        self._rotation += 1
        results: list[SessionResult] = []
        response_bytes = 0
        now_ms = self.hooks.now_ms()
        for key in keys[start:] + keys[:start]:
            state = self._partitions.get(key)
            if state is None or not state.ready:
                self._dirty.pop(key, None)
                continue
            budget = min(
                self.partition_bytes_max,
                self.response_bytes_max - response_bytes,
                self.inflight_bytes_max - self.inflight_bytes,
            )
            if budget <= 0:
                break  # the rest stay dirty: flushed again when the follower acknowledges
            self._dirty.pop(key, None)
            self._stale_high_watermark.pop(key, None)
            result = self._answer(key, state, budget, now_ms)
            if result is None:
                continue
            results.append(result)
            if result.read is not None and result.read.records:
                size = len(result.read.records)
                response_bytes += size
                state.inflight_bytes = size
                self.inflight_bytes += size
                state.ready = False
            elif result.read is None or result.read.diverging_epoch is not None:
                state.ready = False  # the follower acts, then sends a new position
        if results:
            self.send(results)

    def _answer(
        self, key: PartitionKey, state: _Partition, budget: int, now_ms: int
    ) -> SessionResult | None:
        """Serve one ready partition: None when there is nothing new to say."""
        position = state.position
        try:
            replica = self.hooks.replica_by_id(*key)
        except RaftmqError as e:
            return SessionResult("", key[0], key[1], error=e)
        try:
            fetched = replica.read_for_follower(
                self.replica_id,
                position.fetch_offset,
                last_fetched_epoch=position.last_fetched_epoch,
                current_leader_epoch=position.current_leader_epoch,
                max_bytes=budget,
                now_ms=now_ms,
            )
        except RaftmqError as e:
            log = replica.log
            out_of_range = e.code == ErrorCode.OFFSET_OUT_OF_RANGE
            return SessionResult(
                replica.topic,
                key[0],
                key[1],
                error=e,
                log_start_offset=log.log_start_offset if out_of_range else -1,
                log_end_offset=log.log_end_offset if out_of_range else -1,
            )
        if fetched.high_watermark_advanced:
            self.hooks.on_high_watermark_advanced(replica)
        read = fetched.read
        if not read.records and read.diverging_epoch is None:
            if read.high_watermark == state.sent_high_watermark:
                return None
            if key not in self._linger_due:
                # A high watermark alone is not urgent: batch it with the next records,
                # or send it at the linger timer.
                self._linger_high_watermark(key)
                return None
        state.sent_high_watermark = read.high_watermark
        return SessionResult(replica.topic, key[0], key[1], read=read)


class ReplicaSessions:
    """Every open follower session of this broker, indexed by partition so that a hook
    reaches only the sessions that follow that partition."""

    def __init__(self) -> None:
        self._sessions: set[ReplicaSession] = set()
        self._by_partition: dict[PartitionKey, set[ReplicaSession]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, session: ReplicaSession) -> None:
        self._sessions.add(session)

    def close(self, session: ReplicaSession) -> None:
        self._sessions.discard(session)
        for key in list(session.keys()):
            self._unindex(session, key)
        session.close()

    def sessions(self) -> list[ReplicaSession]:
        return list(self._sessions)

    def update(
        self,
        session: ReplicaSession,
        positions: list[ReplicaPosition],
        removed: list[PartitionKey],
    ) -> None:
        for key in removed:
            self._unindex(session, key)
        for position in positions:
            key = (position.topic_id, position.partition)
            self._by_partition.setdefault(key, set()).add(session)
        session.on_positions(positions, removed)

    def _unindex(self, session: ReplicaSession, key: PartitionKey) -> None:
        followers = self._by_partition.get(key)
        if followers is not None:
            followers.discard(session)
            if not followers:
                del self._by_partition[key]

    def on_partition_changed(self, key: PartitionKey) -> None:
        for session in self._by_partition.get(key, ()):
            session.on_partition_changed(key)

    def on_high_watermark_advanced(self, key: PartitionKey) -> None:
        for session in self._by_partition.get(key, ()):
            session.on_high_watermark_advanced(key)

    def waiting_followers(self, key: PartitionKey) -> frozenset[int]:
        """Followers whose session waits for news of `key` (nothing unacknowledged)."""
        return frozenset(s.replica_id for s in self._by_partition.get(key, ()) if s.is_waiting(key))
