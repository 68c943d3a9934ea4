"""One partition replica on this broker: its role (leader / follower / none), the partition
state of the latest metadata it applied, the leader-side replication state, and every
decision replication makes — the pure core of `broker/replication.py` grown to a whole
replica.

No locks, no threads, no clock, no gRPC: callers pass `now_ms`, and every method returns
what happened (`Transition`, `LeaderAppend`, `FollowerFetch`, `ReplyOutcome`) for the shell
to act on: wake delayed operations, start or stop fetching, send an ISR proposal. The
shell (`ReplicaManager`, the request handler, the replica fetch sessions) calls it from one
thread — the broker's event loop — so it needs no lock. The log is the only dependency
with I/O (`ReplicaLog`, which `PartitionLog` implements); `tests/sim` drives this class
over real logs with a seeded scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from raftmq.broker.partition_log import AppendResult
from raftmq.broker.replication import UNKNOWN_OFFSET, LeaderState, truncation_offset
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.metadata import NO_LEADER, PartitionRecord
from raftmq.record_batch import validate_batch
from raftmq.topic_config import TopicConfig

ROLE_LEADER = "leader"
ROLE_FOLLOWER = "follower"
ROLE_NONE = "none"


class ReplicaLog(Protocol):
    """What a replica needs of its log (`raftmq.broker.partition_log.PartitionLog`)."""

    @property
    def log_start_offset(self) -> int: ...
    @property
    def log_end_offset(self) -> int: ...
    @property
    def high_watermark(self) -> int: ...
    def latest_epoch(self) -> int: ...
    def assign_epoch(self, epoch: int, start_offset: int) -> None: ...
    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]: ...
    def append_as_leader(self, batch: bytes, *, leader_epoch: int) -> AppendResult: ...
    def append_as_follower(self, records: bytes, *, allow_gaps: bool = False) -> int: ...
    def read_with_end(
        self, fetch_offset: int, *, max_bytes: int, upper_offset: int
    ) -> tuple[bytes, int]: ...
    def maybe_advance_high_watermark(self, high_watermark: int) -> bool: ...
    def set_high_watermark_as_follower(self, leader_high_watermark: int) -> bool: ...
    def truncate_to(self, offset: int) -> bool: ...
    def truncate_fully_and_start_at(self, offset: int) -> None: ...
    def offset_for_timestamp(
        self, ts_ms: int, *, upper_offset: int | None = None
    ) -> tuple[int, int] | None: ...


@dataclass(frozen=True, slots=True)
class Transition:
    """What applying metadata did. `role_changed`: leader, or the leader we follow, or our
    epoch changed (fetching must be re-routed; waiting produce requests re-checked)."""

    role_changed: bool = False
    high_watermark_advanced: bool = False
    isr_changed: bool = False


@dataclass(frozen=True, slots=True)
class LeaderAppend:
    """A produce batch on the leader: [base_offset, next_offset) in `leader_epoch`."""

    base_offset: int
    next_offset: int
    leader_epoch: int
    duplicate: bool
    high_watermark_advanced: bool


@dataclass(frozen=True, slots=True)
class ReadResult:
    records: bytes
    high_watermark: int
    log_start_offset: int
    log_end_offset: int
    # The offset after the last batch in `records` (the fetch offset when there is none).
    end_offset: int
    diverging_epoch: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class FollowerFetch:
    """A follower's fetch as the leader served it."""

    read: ReadResult
    high_watermark_advanced: bool


@dataclass(frozen=True, slots=True)
class FetchReply:
    """One partition of the leader's answer to our replica fetch (the follower side)."""

    error: ErrorCode = ErrorCode.NONE
    records: bytes = b""
    high_watermark: int = 0
    log_start_offset: int = 0
    log_end_offset: int = -1
    diverging_epoch: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    """What a follower did with one fetch reply. `appended`: records were stored (the
    shell makes them durable per the flush policy before reporting the new position);
    `retry_after_error`: the leader answered an error, fetch again after a backoff."""

    appended: bool = False
    truncated: bool = False
    retry_after_error: bool = False


LogT = TypeVar("LogT", bound=ReplicaLog)


class PartitionReplica(Generic[LogT]):
    """Generic over its log type, so that the shell keeps the full `PartitionLog` API
    (retention, checkpoints, deletion) while the core uses only `ReplicaLog`."""

    def __init__(
        self,
        *,
        broker_id: int,
        topic: str,
        topic_id: bytes,
        index: int,
        log: LogT,
        config: TopicConfig,
        leader_state_type: type[LeaderState] = LeaderState,
    ) -> None:
        """`leader_state_type`: a seam for the seeded simulation, which checks that a
        deliberately broken LeaderState is caught (tests/sim)."""
        self.leader_state_type = leader_state_type
        self.broker_id = broker_id
        self.topic = topic
        self.topic_id = topic_id
        self.index = index
        self.log = log
        self.config = config
        self.role = ROLE_NONE
        # The partition state from the latest metadata this broker applied.
        self.leader_id = NO_LEADER
        # Invariant: never decreases.
        self.leader_epoch = -1
        self.partition_epoch = -1
        self.ar: tuple[int, ...] = ()
        self.isr: tuple[int, ...] = ()
        # Set exactly while role == ROLE_LEADER.
        self.leader_state: LeaderState | None = None

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.index}"

    @property
    def key(self) -> tuple[bytes, int]:
        return self.topic_id, self.index

    # ------------------------------------------------------------ role changes

    def apply_metadata(
        self, state: PartitionRecord, config: TopicConfig, *, now_ms: int
    ) -> Transition:
        """Apply the partition's latest metadata (in version order)."""
        self.config = config
        isr_changed = state.isr != self.isr
        self.ar, self.isr = state.ar, state.isr
        if state.leader == self.broker_id:
            if self.role == ROLE_LEADER and self.leader_epoch == state.leader_epoch:
                advanced = False
                if state.partition_epoch > self.partition_epoch:
                    self.partition_epoch = state.partition_epoch
                    assert self.leader_state is not None
                    self.leader_state.on_isr_committed(state.isr, state.partition_epoch)
                    advanced = self._maybe_advance_high_watermark()
                return Transition(high_watermark_advanced=advanced, isr_changed=isr_changed)
            advanced = self._become_leader(state, now_ms=now_ms)
            return Transition(role_changed=True, high_watermark_advanced=advanced)
        changed = (
            self.role == ROLE_LEADER
            or self.leader_id != state.leader
            or self.leader_epoch != state.leader_epoch
            or (self.role == ROLE_NONE and state.leader != NO_LEADER)
        )
        self.partition_epoch = state.partition_epoch
        if changed:
            self._become_follower(state)
        return Transition(role_changed=changed, isr_changed=isr_changed)

    def _become_leader(self, state: PartitionRecord, *, now_ms: int) -> bool:
        assert state.leader_epoch >= self.leader_epoch
        if self.log.latest_epoch() < state.leader_epoch:
            # Kafka assigns the new epoch at the LEO when becoming leader, so followers'
            # epoch queries see where this epoch starts even before the first append.
            self.log.assign_epoch(state.leader_epoch, self.log.log_end_offset)
        self.role = ROLE_LEADER
        self.leader_id = self.broker_id
        self.leader_epoch = state.leader_epoch
        self.partition_epoch = state.partition_epoch
        self.leader_state = self.leader_state_type(
            broker_id=self.broker_id,
            ar=state.ar,
            isr=state.isr,
            leader_epoch=state.leader_epoch,
            partition_epoch=state.partition_epoch,
            leader_epoch_start_offset=self.log.log_end_offset,
            now_ms=now_ms,
        )
        return self._maybe_advance_high_watermark()

    def _become_follower(self, state: PartitionRecord) -> None:
        assert state.leader_epoch >= self.leader_epoch
        self.role = ROLE_FOLLOWER if state.leader != NO_LEADER else ROLE_NONE
        self.leader_id = state.leader
        self.leader_epoch = state.leader_epoch
        self.leader_state = None

    def stop(self) -> None:
        """The partition is no longer served here (deleted, unassigned, broker stopping)."""
        self.role = ROLE_NONE
        self.leader_state = None

    # ------------------------------------------------------------ leader: produce

    def check_leader(self, current_leader_epoch: int) -> LeaderState:
        if self.role != ROLE_LEADER or self.leader_state is None:
            raise RaftmqError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"broker {self.broker_id} does not lead {self.name} (leader: {self.leader_id})",
                leader_id=self.leader_id,
            )
        if current_leader_epoch >= 0:
            if current_leader_epoch < self.leader_epoch:
                raise RaftmqError(
                    ErrorCode.FENCED_LEADER_EPOCH,
                    f"leader epoch {current_leader_epoch} is older than {self.leader_epoch}",
                )
            if current_leader_epoch > self.leader_epoch:
                raise RaftmqError(
                    ErrorCode.UNKNOWN_LEADER_EPOCH,
                    f"leader epoch {current_leader_epoch} is newer than {self.leader_epoch}",
                )
        return self.leader_state

    def append_as_leader(
        self, batch: bytes, *, acks: int, current_leader_epoch: int
    ) -> LeaderAppend:
        """Validate and append one producer batch as leader. Raises RaftmqError; a rejected
        batch stores nothing. A retried batch of an idempotent producer is answered with
        its original offsets (`duplicate`) and not stored again."""
        validate_batch(batch, max_bytes=self.config.max_message_bytes)
        self.check_leader(current_leader_epoch)
        if acks == -1 and len(self.isr) < self.config.min_insync_replicas:
            raise RaftmqError(
                ErrorCode.NOT_ENOUGH_REPLICAS,
                f"{self.name} has {len(self.isr)} in-sync replica(s) {list(self.isr)}; "
                f"min.insync.replicas is {self.config.min_insync_replicas}",
            )
        result = self.log.append_as_leader(batch, leader_epoch=self.leader_epoch)
        advanced = False if result.duplicate else self._maybe_advance_high_watermark()
        return LeaderAppend(
            result.base_offset,
            result.next_offset,
            self.leader_epoch,
            duplicate=result.duplicate,
            high_watermark_advanced=advanced,
        )

    def acks_reached(self, required_offset: int, *, leader_epoch: int) -> bool:
        """acks=all: has the write ending at `required_offset` (the offset after the batch)
        reached every member of the ISR? False while it has not. Raises
        NOT_LEADER_OR_FOLLOWER (leadership moved) or NOT_ENOUGH_REPLICAS_AFTER_APPEND (the
        ISR shrank below min.insync.replicas); in both the write may still survive."""
        if self.role != ROLE_LEADER or self.leader_epoch != leader_epoch:
            raise RaftmqError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"leadership of {self.name} moved to {self.leader_id} before the "
                "write was replicated; it may or may not survive",
                leader_id=self.leader_id,
            )
        assert self.leader_state is not None
        in_sync = len(self.leader_state.maximal_isr())
        if in_sync < self.config.min_insync_replicas:
            # Kafka's checkEnoughReplicasReachOffset: the HW passing the write counts only
            # if at least min.insync.replicas members had it.
            raise RaftmqError(
                ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                f"{self.name}'s ISR shrank to {sorted(self.leader_state.maximal_isr())} "
                f"before the write reached min.insync.replicas="
                f"{self.config.min_insync_replicas}",
            )
        return self.log.high_watermark >= required_offset

    def _maybe_advance_high_watermark(self) -> bool:
        """Leader only."""
        assert self.leader_state is not None
        candidate = self.leader_state.high_watermark(self.log.log_end_offset)
        return candidate != UNKNOWN_OFFSET and self.log.maybe_advance_high_watermark(candidate)

    # ------------------------------------------------------------ leader: ISR changes

    def isr_proposal(
        self,
        *,
        now_ms: int,
        lag_time_max_ms: int,
        eligible_replicas: frozenset[int],
        waiting_followers: frozenset[int] = frozenset(),
    ) -> frozenset[int] | None:
        """The ISR change to propose to the controller now (it is then pending), or None.
        `eligible_replicas`: brokers that may join an ISR (unfenced, not shutting down);
        `waiting_followers`: followers whose fetch session waits for news of this
        partition (they are caught up if their position is our log end)."""
        state = self.leader_state
        if self.role != ROLE_LEADER or state is None:
            return None
        state.on_followers_waiting(
            waiting_followers, leader_log_end_offset=self.log.log_end_offset, now_ms=now_ms
        )
        proposal = state.next_isr_proposal(
            now_ms=now_ms,
            lag_time_max_ms=lag_time_max_ms,
            high_watermark=self.log.high_watermark,
            eligible_replicas=eligible_replicas,
        )
        if proposal is not None:
            state.pending_isr = proposal
        return proposal

    def proposal_pending(self, isr: frozenset[int], partition_epoch: int) -> bool:
        """Is this exact proposal still waiting for the controller's answer?"""
        state = self.leader_state
        return (
            state is not None
            and state.pending_isr == isr
            and state.partition_epoch == partition_epoch
        )

    def on_isr_proposal_failed(self, partition_epoch: int) -> None:
        state = self.leader_state
        if state is not None and state.partition_epoch == partition_epoch:
            state.pending_isr = None

    def on_isr_proposal_committed(self, state: PartitionRecord) -> bool:
        """The controller committed our proposal; True if the HW advanced."""
        leader = self.leader_state
        if (
            leader is None
            or self.leader_epoch != state.leader_epoch
            or state.partition_epoch <= leader.partition_epoch
        ):
            return False
        self.isr = state.isr
        self.partition_epoch = state.partition_epoch
        leader.on_isr_committed(state.isr, state.partition_epoch)
        return self._maybe_advance_high_watermark()

    # ------------------------------------------------------------ leader: fetch

    def read_for_consumer(
        self, fetch_offset: int, *, max_bytes: int, current_leader_epoch: int
    ) -> ReadResult:
        self.check_leader(current_leader_epoch)
        log = self.log
        records, end = log.read_with_end(
            fetch_offset, max_bytes=max_bytes, upper_offset=log.high_watermark
        )
        return ReadResult(
            records, log.high_watermark, log.log_start_offset, log.log_end_offset, end
        )

    def read_for_follower(
        self,
        replica_id: int,
        fetch_offset: int,
        *,
        last_fetched_epoch: int,
        current_leader_epoch: int,
        max_bytes: int,
        now_ms: int,
    ) -> FollowerFetch:
        """Serve a follower's fetch: record its progress (the HW may advance), report a
        diverging epoch if its tail disagrees with ours (KIP-320), else return records."""
        state = self.check_leader(current_leader_epoch)
        log = self.log
        if replica_id not in state.followers:
            raise RaftmqError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"broker {replica_id} is not a replica of {self.name}",
            )
        if last_fetched_epoch >= 0:
            epoch, end_offset = log.end_offset_for_epoch(last_fetched_epoch)
            if epoch < 0:
                # We know no epoch <= theirs (empty cache, or their epoch is newer than
                # ours, which the epoch check above makes near-impossible): restart them at
                # our log start rather than guess a common prefix.
                return FollowerFetch(self._diverging(fetch_offset, -1, log.log_start_offset), False)
            if epoch < last_fetched_epoch or end_offset < fetch_offset:
                return FollowerFetch(self._diverging(fetch_offset, epoch, end_offset), False)
        if fetch_offset > log.log_end_offset or fetch_offset < log.log_start_offset:
            raise RaftmqError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"fetch offset {fetch_offset} outside [{log.log_start_offset}, "
                f"{log.log_end_offset}] of {self.name}",
            )
        state.on_follower_fetch(
            replica_id,
            fetch_offset=fetch_offset,
            leader_log_end_offset=log.log_end_offset,
            now_ms=now_ms,
        )
        advanced = self._maybe_advance_high_watermark()
        records, end = log.read_with_end(
            fetch_offset, max_bytes=max_bytes, upper_offset=log.log_end_offset
        )
        read = ReadResult(
            records, log.high_watermark, log.log_start_offset, log.log_end_offset, end
        )
        return FollowerFetch(read, advanced)

    def _diverging(self, fetch_offset: int, epoch: int, end_offset: int) -> ReadResult:
        log = self.log
        return ReadResult(
            b"",
            log.high_watermark,
            log.log_start_offset,
            log.log_end_offset,
            fetch_offset,
            (epoch, end_offset),
        )

    # ------------------------------------------------------------ follower side

    def follower_position(self) -> tuple[int, int]:
        """(fetch offset, epoch of our last batch) for the next replica fetch."""
        return self.log.log_end_offset, self.log.latest_epoch()

    def on_fetch_reply(self, reply: FetchReply, *, leader_epoch: int) -> ReplyOutcome:
        """Apply one partition's answer to a fetch sent while following `leader_epoch`:
        append, truncate by leader epoch, restart past the leader's log start, or report an
        error to retry. A reply for another role or epoch (it was in flight while metadata
        moved us) is ignored. Raises what the log raises (storage error, corrupt batch):
        nothing was stored then."""
        if self.role != ROLE_FOLLOWER or self.leader_epoch != leader_epoch:
            return ReplyOutcome()
        log = self.log
        if reply.error == ErrorCode.NONE:
            if reply.diverging_epoch is not None:
                epoch, end_offset = reply.diverging_epoch
                if epoch < 0:
                    log.truncate_fully_and_start_at(end_offset)
                    return ReplyOutcome(truncated=True)
                own_epoch, own_end = log.end_offset_for_epoch(epoch)
                offset = truncation_offset(
                    diverging_epoch=epoch,
                    diverging_end_offset=end_offset,
                    follower_epoch=own_epoch,
                    follower_epoch_end_offset=own_end,
                    log_end_offset=log.log_end_offset,
                )
                log.truncate_to(offset)
                return ReplyOutcome(truncated=True)
            if reply.records:
                # A compacted leader's log has holes (where whole batches were compacted
                # away): its next batch may start past our log end.
                log.append_as_follower(reply.records, allow_gaps=self.config.compacted)
            log.set_high_watermark_as_follower(reply.high_watermark)
            return ReplyOutcome(appended=bool(reply.records))
        if reply.error == ErrorCode.OFFSET_OUT_OF_RANGE:
            fetch_offset = log.log_end_offset
            if fetch_offset < reply.log_start_offset:
                log.truncate_fully_and_start_at(reply.log_start_offset)
                return ReplyOutcome(truncated=True, retry_after_error=True)
            if fetch_offset > reply.log_end_offset >= 0:
                log.truncate_to(reply.log_end_offset)
                return ReplyOutcome(truncated=True, retry_after_error=True)
        # Not leader (yet), an epoch mismatch, an unknown partition: metadata will move us.
        return ReplyOutcome(retry_after_error=True)
