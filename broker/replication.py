"""The pure core of partition replication: no I/O, no threads, time passed in as `now_ms`.

Leader side (`LeaderState`): what each follower has (its log end offset, learnt from the
offset it fetches at), when it was last caught up, the ISR the controller committed and
the change proposed to it, and from those the high watermark and the ISR changes to
propose. Follower side (`truncation_offset`): where to cut a divergent tail, by leader
epoch (Kafka KIP-101 / KIP-320), never merely at the high watermark.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

UNKNOWN_OFFSET = -1


@dataclass(slots=True)
class FollowerProgress:
    # Learnt from the follower's fetch offset; UNKNOWN_OFFSET until its first fetch in
    # this leader epoch. Invariant: <= the leader's log end offset.
    log_end_offset: int
    # Last time the follower had fetched everything the leader had (Kafka's rule: its
    # fetch offset reached the leader's LEO as of that fetch or of the one before).
    last_caught_up_ms: int
    # The leader's LEO when this follower last fetched, and when that was.
    last_fetch_leader_leo: int = UNKNOWN_OFFSET
    last_fetch_ms: int = 0


class LeaderState:
    """Replication bookkeeping of one partition while this broker leads it."""

    def __init__(
        self,
        *,
        broker_id: int,
        ar: Iterable[int],
        isr: Iterable[int],
        leader_epoch: int,
        partition_epoch: int,
        leader_epoch_start_offset: int,
        now_ms: int,
    ) -> None:
        self.broker_id = broker_id
        self.ar = tuple(ar)
        # The ISR as committed by the controller. Invariant: contains broker_id.
        self.isr: frozenset[int] = frozenset(isr)
        assert broker_id in self.isr
        # An ISR proposed to the controller and not yet answered (at most one at a time).
        self.pending_isr: frozenset[int] | None = None
        self.leader_epoch = leader_epoch
        self.partition_epoch = partition_epoch
        # First offset written in this leader epoch: a follower joins the ISR only once
        # it has reached it (it then holds everything of earlier epochs that we hold).
        self.leader_epoch_start_offset = leader_epoch_start_offset
        # Followers start "caught up" now: a new leader must not shrink the ISR before a
        # follower had the chance to fetch from it.
        self.followers = {
            r: FollowerProgress(UNKNOWN_OFFSET, now_ms) for r in self.ar if r != broker_id
        }

    def maximal_isr(self) -> frozenset[int]:
        """The ISR used for the high watermark: while a change is pending, the larger of
        the committed and proposed sets (KIP-497/KIP-841), so that a shrink not yet
        committed never lets this leader acknowledge writes alone."""
        if self.pending_isr is None:
            return self.isr
        return self.isr | self.pending_isr

    def on_follower_fetch(
        self, replica_id: int, *, fetch_offset: int, leader_log_end_offset: int, now_ms: int
    ) -> None:
        progress = self.followers.get(replica_id)
        assert progress is not None, f"replica {replica_id} is not assigned"
        assert fetch_offset <= leader_log_end_offset
        if fetch_offset >= leader_log_end_offset:
            progress.last_caught_up_ms = now_ms
        elif fetch_offset >= progress.last_fetch_leader_leo >= 0:
            progress.last_caught_up_ms = max(progress.last_caught_up_ms, progress.last_fetch_ms)
        progress.log_end_offset = fetch_offset
        progress.last_fetch_leader_leo = leader_log_end_offset
        progress.last_fetch_ms = now_ms

    def on_followers_waiting(
        self, replica_ids: Iterable[int], *, leader_log_end_offset: int, now_ms: int
    ) -> None:
        """Followers whose fetch session waits for data at our log end are caught up now.

        With push replication an idle partition gets no fetches: a follower that holds
        everything and waits sends nothing until there is more. Without this it would look
        as if it had stopped fetching and be shrunk out of an idle partition's ISR."""
        for replica_id in replica_ids:
            progress = self.followers.get(replica_id)
            if progress is not None and progress.log_end_offset >= leader_log_end_offset:
                progress.last_caught_up_ms = now_ms

    def high_watermark(self, leader_log_end_offset: int) -> int:
        """min LEO over the maximal ISR; UNKNOWN_OFFSET while some member's LEO is unknown."""
        offsets = [leader_log_end_offset]
        for replica in self.maximal_isr():
            if replica != self.broker_id:
                offsets.append(self.followers[replica].log_end_offset)
        return min(offsets)

    def out_of_sync_replicas(self, *, now_ms: int, lag_time_max_ms: int) -> set[int]:
        """ISR followers that have not caught up within `lag_time_max_ms`."""
        return {
            r
            for r in self.isr
            if r != self.broker_id
            and now_ms - self.followers[r].last_caught_up_ms > lag_time_max_ms
        }

    def caught_up_replicas(
        self, high_watermark: int, *, now_ms: int, lag_time_max_ms: int
    ) -> set[int]:
        """Followers outside the ISR that may join it: at or past the high watermark and
        past the start of this leader epoch, and caught up recently (a follower that stopped
        fetching keeps its last LEO, which must not bring a dead replica back; Kafka
        expands only on a fetch)."""
        return {
            r
            for r, progress in self.followers.items()
            if r not in self.isr
            and progress.log_end_offset >= max(high_watermark, self.leader_epoch_start_offset)
            and progress.log_end_offset >= 0
            and now_ms - progress.last_caught_up_ms <= lag_time_max_ms
        }

    def next_isr_proposal(
        self,
        *,
        now_ms: int,
        lag_time_max_ms: int,
        high_watermark: int,
        eligible_replicas: frozenset[int] | None = None,
    ) -> frozenset[int] | None:
        """The ISR to propose now, or None (nothing to change, or a proposal is pending).
        Shrinks take precedence: a lagging member blocks acks=all for everyone.

        `eligible_replicas`: the brokers the leader's metadata shows unfenced and not
        shutting down (None: every broker). Only those may join: the controller refuses a
        fenced one (INELIGIBLE_REPLICA), and a fenced follower that keeps fetching would
        otherwise be proposed again on every tick until it is unfenced (KIP-841)."""
        if self.pending_isr is not None:
            return None
        lagging = self.out_of_sync_replicas(now_ms=now_ms, lag_time_max_ms=lag_time_max_ms)
        if lagging:
            return self.isr - lagging
        joining = self.caught_up_replicas(
            high_watermark, now_ms=now_ms, lag_time_max_ms=lag_time_max_ms
        )
        if eligible_replicas is not None:
            joining &= eligible_replicas
        if joining:
            return self.isr | joining
        return None

    def on_isr_committed(self, isr: Iterable[int], partition_epoch: int) -> None:
        """The controller committed a new ISR (our proposal or its own, e.g. fencing)."""
        assert partition_epoch >= self.partition_epoch
        self.isr = frozenset(isr)
        self.partition_epoch = partition_epoch
        self.pending_isr = None


def truncation_offset(
    *,
    diverging_epoch: int,
    diverging_end_offset: int,
    follower_epoch: int,
    follower_epoch_end_offset: int,
    log_end_offset: int,
) -> int:
    """Where a follower truncates when the leader reports a diverging epoch (KIP-320).

    `follower_epoch`/`follower_epoch_end_offset` are the follower's own answer to
    `end_offset_for_epoch(diverging_epoch)`: its largest epoch <= the leader's, and where
    that epoch ends in its log. If the epochs match, the logs agree up to the smaller end
    offset. If the follower's epoch is older, it cuts at the end of that epoch and asks
    again on its next fetch (a round per divergent epoch, each moving strictly down).
    """
    if follower_epoch < 0:
        target = diverging_end_offset
    elif follower_epoch == diverging_epoch:
        target = min(diverging_end_offset, follower_epoch_end_offset)
    else:
        target = follower_epoch_end_offset
    return max(0, min(target, log_end_offset))
