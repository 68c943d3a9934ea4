"""One partition on this broker: its log, its role (leader / follower / offline) and the
leader-side replication state. Thread-safe: every method takes `lock`; `data_changed`
(shared by all partitions of the broker) is notified on every append and high watermark
move, which wakes long-polling fetches and acks=all produce requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from raftmq.broker.partition_log import PartitionLog
from raftmq.broker.replication import UNKNOWN_OFFSET, LeaderState
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.metadata import NO_LEADER, PartitionRecord
from raftmq.record_batch import validate_batch
from raftmq.topic_config import TopicConfig

ROLE_LEADER = "leader"
ROLE_FOLLOWER = "follower"
ROLE_NONE = "none"


def now_ms() -> int:
    return int(time.monotonic() * 1000)


@dataclass(frozen=True, slots=True)
class ReadResult:
    records: bytes
    high_watermark: int
    log_start_offset: int
    log_end_offset: int
    diverging_epoch: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class LeaderAppend:
    """A produce batch on the leader: [base_offset, next_offset) in `leader_epoch`."""

    base_offset: int
    next_offset: int
    leader_epoch: int
    duplicate: bool


class BrokerSignals:
    """One condition for the whole broker: any append or high watermark move bumps
    `generation` and wakes every waiting fetch / produce, which then rechecks."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        # Invariant: only increases.
        self.generation = 0

    def notify(self) -> None:
        with self.condition:
            self.generation += 1
            self.condition.notify_all()

    def wait_for_change(self, seen_generation: int, timeout_s: float) -> int:
        with self.condition:
            if self.generation == seen_generation and timeout_s > 0:
                self.condition.wait(timeout_s)
            return self.generation


class Partition:
    def __init__(
        self,
        *,
        broker_id: int,
        topic: str,
        topic_id: bytes,
        index: int,
        log: PartitionLog,
        config: TopicConfig,
        signals: BrokerSignals,
        propose_isr: Callable[[Partition, frozenset[int], int, int], None],
    ) -> None:
        self.broker_id = broker_id
        self.topic = topic
        self.topic_id = topic_id
        self.index = index
        self.log = log
        self.config = config
        self.signals = signals
        self._propose_isr = propose_isr
        self.lock = threading.RLock()
        self.role = ROLE_NONE
        # The partition state from the latest metadata this broker applied.
        self.leader_id = NO_LEADER
        self.leader_epoch = -1
        self.partition_epoch = -1
        self.ar: tuple[int, ...] = ()
        self.isr: tuple[int, ...] = ()
        # Set only while this broker leads the partition.
        self.leader_state: LeaderState | None = None
        self.log_ctx = structlog.get_logger("raftmq.broker").bind(
            node_id=broker_id, topic=topic, partition=index
        )

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.index}"

    # ------------------------------------------------------------ role changes

    def apply_metadata(self, state: PartitionRecord, config: TopicConfig) -> str | None:
        """Apply the partition's latest metadata. Returns the new role if it changed
        (or the leader/epoch we follow changed), else None. Called by the replica
        manager's metadata thread."""
        with self.lock:
            self.config = config
            self.ar, self.isr = state.ar, state.isr
            if state.leader == self.broker_id:
                if self.role == ROLE_LEADER and self.leader_epoch == state.leader_epoch:
                    if state.partition_epoch > self.partition_epoch:
                        self.partition_epoch = state.partition_epoch
                        assert self.leader_state is not None
                        self.leader_state.on_isr_committed(state.isr, state.partition_epoch)
                        self._maybe_advance_high_watermark()
                    return None
                self._become_leader(state)
                return ROLE_LEADER
            changed = (
                self.role != ROLE_FOLLOWER
                or self.leader_id != state.leader
                or self.leader_epoch != state.leader_epoch
            )
            self.partition_epoch = state.partition_epoch
            if changed:
                self._become_follower(state)
                return ROLE_FOLLOWER
            return None

    def _become_leader(self, state: PartitionRecord) -> None:
        assert state.leader_epoch >= self.leader_epoch
        if self.log.latest_epoch() < state.leader_epoch:
            # Kafka assigns the new epoch at the LEO when becoming leader, so followers'
            # epoch queries see where this epoch starts even before the first append.
            self.log.assign_epoch(state.leader_epoch, self.log.log_end_offset)
        self.role = ROLE_LEADER
        self.leader_id = self.broker_id
        self.leader_epoch = state.leader_epoch
        self.partition_epoch = state.partition_epoch
        self.leader_state = LeaderState(
            broker_id=self.broker_id,
            ar=state.ar,
            isr=state.isr,
            leader_epoch=state.leader_epoch,
            partition_epoch=state.partition_epoch,
            leader_epoch_start_offset=self.log.log_end_offset,
            now_ms=now_ms(),
        )
        self.log_ctx.info(
            "partition.became_leader",
            leader_epoch=state.leader_epoch,
            isr=list(state.isr),
            log_end_offset=self.log.log_end_offset,
            high_watermark=self.log.high_watermark,
        )
        self._maybe_advance_high_watermark()
        self.signals.notify()

    def _become_follower(self, state: PartitionRecord) -> None:
        self.role = ROLE_FOLLOWER if state.leader != NO_LEADER else ROLE_NONE
        self.leader_id = state.leader
        self.leader_epoch = state.leader_epoch
        self.leader_state = None
        self.log_ctx.info(
            "partition.became_follower",
            leader=state.leader,
            leader_epoch=state.leader_epoch,
            log_end_offset=self.log.log_end_offset,
        )
        # Wake produce requests waiting on acks=all: they now fail as NOT_LEADER.
        self.signals.notify()

    def stop(self) -> None:
        with self.lock:
            self.role = ROLE_NONE
            self.leader_state = None
        self.signals.notify()

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

    def append(self, batch: bytes, *, acks: int, current_leader_epoch: int) -> LeaderAppend:
        """Validate and append one producer batch as leader. Raises RaftmqError; a rejected
        batch stores nothing. A retried batch of an idempotent producer is answered with
        its original offsets (`duplicate`) and not stored again."""
        validate_batch(batch, max_bytes=self.config.max_message_bytes)
        with self.lock:
            self.check_leader(current_leader_epoch)
            if acks == -1 and len(self.isr) < self.config.min_insync_replicas:
                raise RaftmqError(
                    ErrorCode.NOT_ENOUGH_REPLICAS,
                    f"{self.name} has {len(self.isr)} in-sync replica(s) {list(self.isr)}; "
                    f"min.insync.replicas is {self.config.min_insync_replicas}",
                )
            result = self.log.append_as_leader(batch, leader_epoch=self.leader_epoch)
            if result.duplicate:
                return LeaderAppend(
                    result.base_offset, result.next_offset, self.leader_epoch, duplicate=True
                )
            self._maybe_advance_high_watermark()
            leader_epoch = self.leader_epoch
        self.signals.notify()
        return LeaderAppend(result.base_offset, result.next_offset, leader_epoch, duplicate=False)

    def wait_for_ack(self, required_offset: int, *, leader_epoch: int, timeout_ms: int) -> None:
        """acks=all: block until the high watermark reaches `required_offset` (the offset
        after the batch). Raises REQUEST_TIMED_OUT / NOT_LEADER_OR_FOLLOWER /
        NOT_ENOUGH_REPLICAS_AFTER_APPEND; in all three the write may still be committed."""
        deadline_ms = now_ms() + timeout_ms
        generation = -1
        while True:
            with self.lock:
                if self.role != ROLE_LEADER or self.leader_epoch != leader_epoch:
                    raise RaftmqError(
                        ErrorCode.NOT_LEADER_OR_FOLLOWER,
                        f"leadership of {self.name} moved to {self.leader_id} before the "
                        "write was replicated; it may or may not survive",
                        leader_id=self.leader_id,
                    )
                assert self.leader_state is not None
                in_sync = len(self.leader_state.maximal_isr())
                if self.log.high_watermark >= required_offset:
                    # The HW passed the write, but it counts only if at least
                    # min.insync.replicas members had it (Kafka's checkEnoughReplicasReachOffset).
                    if in_sync >= self.config.min_insync_replicas:
                        return
                    raise RaftmqError(
                        ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                        f"{self.name}'s ISR shrank to {in_sync} member(s) before the write "
                        f"reached min.insync.replicas={self.config.min_insync_replicas}",
                    )
                if in_sync < self.config.min_insync_replicas:
                    raise RaftmqError(
                        ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                        f"{self.name}'s ISR shrank to {list(self.isr)} before the write "
                        f"reached min.insync.replicas={self.config.min_insync_replicas}",
                    )
            remaining_ms = deadline_ms - now_ms()
            if remaining_ms <= 0:
                raise RaftmqError(
                    ErrorCode.REQUEST_TIMED_OUT,
                    f"acks=all not reached on {self.name} within {timeout_ms} ms",
                )
            generation = self.signals.wait_for_change(generation, min(remaining_ms, 200) / 1000)

    def _maybe_advance_high_watermark(self) -> None:
        """Leader only, under `lock`."""
        assert self.leader_state is not None
        candidate = self.leader_state.high_watermark(self.log.log_end_offset)
        if candidate != UNKNOWN_OFFSET and self.log.maybe_advance_high_watermark(candidate):
            self.signals.notify()

    def maybe_change_isr(
        self, *, now: int, lag_time_max_ms: int, eligible_replicas: frozenset[int]
    ) -> None:
        """Periodic (replica manager thread): propose an ISR shrink/expand when due.
        `eligible_replicas`: brokers that may join an ISR (unfenced, not shutting down)."""
        with self.lock:
            state = self.leader_state
            if self.role != ROLE_LEADER or state is None:
                return
            proposal = state.next_isr_proposal(
                now_ms=now,
                lag_time_max_ms=lag_time_max_ms,
                high_watermark=self.log.high_watermark,
                eligible_replicas=eligible_replicas,
            )
            if proposal is None:
                return
            state.pending_isr = proposal
            self.log_ctx.info(
                "partition.isr_change_proposed",
                isr=sorted(state.isr),
                proposed=sorted(proposal),
                partition_epoch=state.partition_epoch,
            )
            leader_epoch, partition_epoch = self.leader_epoch, state.partition_epoch
        self._propose_isr(self, proposal, leader_epoch, partition_epoch)

    def proposal_pending(self, isr: frozenset[int], partition_epoch: int) -> bool:
        """Is this exact proposal still waiting for the controller's answer?"""
        with self.lock:
            state = self.leader_state
            return (
                state is not None
                and state.pending_isr == isr
                and state.partition_epoch == partition_epoch
            )

    def on_isr_proposal_failed(self, partition_epoch: int) -> None:
        with self.lock:
            state = self.leader_state
            if state is not None and state.partition_epoch == partition_epoch:
                state.pending_isr = None

    def on_isr_proposal_committed(self, state: PartitionRecord) -> None:
        with self.lock:
            leader = self.leader_state
            if (
                leader is not None
                and self.leader_epoch == state.leader_epoch
                and state.partition_epoch > leader.partition_epoch
            ):
                self.isr = state.isr
                self.partition_epoch = state.partition_epoch
                leader.on_isr_committed(state.isr, state.partition_epoch)
                self._maybe_advance_high_watermark()
                self.log_ctx.info("partition.isr_changed", isr=list(state.isr))

    # ------------------------------------------------------------ leader: fetch

    def read_for_consumer(
        self, fetch_offset: int, *, max_bytes: int, current_leader_epoch: int
    ) -> ReadResult:
        with self.lock:
            self.check_leader(current_leader_epoch)
            log = self.log
            records = log.read(fetch_offset, max_bytes=max_bytes, upper_offset=log.high_watermark)
            return ReadResult(records, log.high_watermark, log.log_start_offset, log.log_end_offset)

    def read_for_follower(
        self,
        replica_id: int,
        fetch_offset: int,
        *,
        last_fetched_epoch: int,
        current_leader_epoch: int,
        max_bytes: int,
    ) -> ReadResult:
        """Serve a follower's fetch: record its progress (HW may advance), report a
        diverging epoch if its tail disagrees with ours, else return records."""
        with self.lock:
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
                    # ours, which the epoch check above makes near-impossible): restart
                    # them at our log start rather than guess a common prefix.
                    return ReadResult(
                        b"",
                        log.high_watermark,
                        log.log_start_offset,
                        log.log_end_offset,
                        (-1, log.log_start_offset),
                    )
                if epoch < last_fetched_epoch or end_offset < fetch_offset:
                    return ReadResult(
                        b"",
                        log.high_watermark,
                        log.log_start_offset,
                        log.log_end_offset,
                        (epoch, end_offset),
                    )
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
                now_ms=now_ms(),
            )
            self._maybe_advance_high_watermark()
            records = log.read(fetch_offset, max_bytes=max_bytes, upper_offset=log.log_end_offset)
            return ReadResult(records, log.high_watermark, log.log_start_offset, log.log_end_offset)

    # ------------------------------------------------------------ follower side

    def follower_fetch_position(self) -> tuple[int, int]:
        """(fetch offset, epoch of our last batch) for the next replica fetch."""
        with self.lock:
            return self.log.log_end_offset, self.log.latest_epoch()

    def follower_truncation_input(self, epoch: int) -> tuple[int, int, int]:
        """(our epoch <= `epoch`, where it ends in our log, our LEO)."""
        with self.lock:
            own_epoch, end_offset = self.log.end_offset_for_epoch(epoch)
            return own_epoch, end_offset, self.log.log_end_offset

    def append_from_leader(
        self, records: bytes, *, leader_epoch: int, leader_high_watermark: int
    ) -> None:
        """Append batches fetched from the leader (the replica fetcher's thread)."""
        with self.lock:
            if self.role != ROLE_FOLLOWER or self.leader_epoch != leader_epoch:
                return  # our role changed while the fetch was in flight
            if records:
                self.log.append_as_follower(records)
            self.log.set_high_watermark_as_follower(leader_high_watermark)
        self.signals.notify()

    def truncate(self, offset: int, *, leader_epoch: int, reason: str) -> None:
        with self.lock:
            if self.role != ROLE_FOLLOWER or self.leader_epoch != leader_epoch:
                return
            before = self.log.log_end_offset
            self.log.truncate_to(offset)
            self.log_ctx.info(
                "partition.truncated",
                reason=reason,
                log_end_offset_before=before,
                log_end_offset=self.log.log_end_offset,
            )

    def restart_at(self, offset: int, *, leader_epoch: int) -> None:
        with self.lock:
            if self.role != ROLE_FOLLOWER or self.leader_epoch != leader_epoch:
                return
            self.log.truncate_fully_and_start_at(offset)
            self.log_ctx.info("partition.restarted_at", offset=offset)
