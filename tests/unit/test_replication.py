"""The pure replication core, rule by rule: `LeaderState` (follower progress, high watermark
over the maximal ISR, ISR shrink/expand proposals) and `truncation_offset` (follower
truncation by diverging epoch).

Each test names the rule it checks and where the rule comes from (Kafka's Partition /
ReplicaState / AbstractFetcherThread, KIP-101, KIP-279, KIP-320, KIP-497, KIP-841).
Times are plain integers (`now_ms`); nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.broker.log_store import FlushPolicy, LogStore
from raftmq.broker.partition_log import PartitionLog
from raftmq.broker.partition_replica import FetchReply, PartitionReplica
from raftmq.broker.replication import UNKNOWN_OFFSET, LeaderState, truncation_offset
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.metadata import PartitionRecord
from raftmq.record_batch import encode_batch, stamp_batch
from raftmq.topic_config import TopicConfig

LEADER = 1
LAG_MS = 10_000
T0_MS = 1_000_000


def leader_state(
    *,
    isr: tuple[int, ...] = (1, 2, 3),
    ar: tuple[int, ...] = (1, 2, 3),
    leader_epoch_start_offset: int = 0,
    now_ms: int = T0_MS,
) -> LeaderState:
    return LeaderState(
        broker_id=LEADER,
        ar=ar,
        isr=isr,
        leader_epoch=5,
        partition_epoch=7,
        leader_epoch_start_offset=leader_epoch_start_offset,
        now_ms=now_ms,
    )


def mark_pending(state: LeaderState, isr: set[int] | frozenset[int]) -> None:
    """What PartitionReplica.isr_proposal does with a proposal before it is sent."""
    state.pending_isr = frozenset(isr)


def fetch(state: LeaderState, replica: int, offset: int, leo: int, now_ms: int = T0_MS) -> None:
    state.on_follower_fetch(replica, fetch_offset=offset, leader_log_end_offset=leo, now_ms=now_ms)


# --- high watermark = min LEO over the ISR ------------------------------------------------


def test_high_watermark_is_min_log_end_offset_over_isr() -> None:
    # Kafka Partition.maybeIncrementLeaderHW: HW = min LEO over the (maximal) ISR, the
    # leader's own LEO included.
    state = leader_state()
    fetch(state, 2, 7, 10)
    fetch(state, 3, 9, 10)
    assert state.high_watermark(10) == 7
    fetch(state, 2, 10, 10)
    assert state.high_watermark(10) == 9
    fetch(state, 3, 10, 10)
    assert state.high_watermark(10) == 10
    # The leader's own LEO is one of the terms: appending moves it, not the HW.
    assert state.high_watermark(13) == 10


def test_unknown_follower_log_end_offset_blocks_high_watermark() -> None:
    # A new leader does not know its followers' LEOs until they fetch (Kafka resets them to
    # UnknownOffset): until then no HW may be computed, or it would count a member whose
    # log it has never seen.
    state = leader_state()
    assert state.high_watermark(10) == UNKNOWN_OFFSET
    fetch(state, 2, 10, 10)
    assert state.high_watermark(10) == UNKNOWN_OFFSET
    fetch(state, 3, 4, 10)
    assert state.high_watermark(10) == 4


def test_follower_outside_isr_does_not_hold_back_high_watermark() -> None:
    # Only ISR members count: a lagging out-of-sync replica must not block acks=all.
    state = leader_state(isr=(1, 2))
    fetch(state, 2, 10, 10)
    assert state.high_watermark(10) == 10
    fetch(state, 3, 1, 10)
    assert state.high_watermark(10) == 10


def test_leader_alone_in_isr_has_high_watermark_at_its_log_end() -> None:
    state = leader_state(isr=(1,))
    assert state.high_watermark(12) == 12


def test_pending_shrink_keeps_the_larger_set_for_high_watermark() -> None:
    # KIP-497 / KIP-841 "maximal ISR": while a shrink is in flight the controller may still
    # hold the old ISR and elect a dropped member, so the HW stays over the larger set. A
    # paused zombie leader that proposed {1} cannot acknowledge writes alone.
    state = leader_state()
    fetch(state, 2, 4, 10)
    fetch(state, 3, 4, 10)
    mark_pending(state, {LEADER})
    assert state.maximal_isr() == {1, 2, 3}
    assert state.high_watermark(20) == 4
    # Once committed, the smaller ISR is the one that counts.
    state.on_isr_committed((LEADER,), partition_epoch=8)
    assert state.maximal_isr() == {LEADER}
    assert state.high_watermark(20) == 20


def test_pending_expand_counts_the_joining_replica() -> None:
    # KIP-497: while an expansion is in flight the controller may already have committed
    # it (and could elect the joiner), so the joiner's LEO bounds the HW from the moment
    # it is proposed.
    state = leader_state(isr=(1, 2))
    fetch(state, 2, 20, 20)
    fetch(state, 3, 15, 20)
    assert state.high_watermark(20) == 20
    mark_pending(state, {1, 2, 3})
    assert state.maximal_isr() == {1, 2, 3}
    assert state.high_watermark(20) == 15


# --- last caught up time --------------------------------------------------------------------


def test_fetch_at_leader_log_end_marks_follower_caught_up_now() -> None:
    # Kafka ReplicaState.updateFetchState, first rule: fetch offset >= leader LEO.
    state = leader_state()
    fetch(state, 2, 10, 10, now_ms=T0_MS + 500)
    assert state.followers[2].last_caught_up_ms == T0_MS + 500


def test_fetch_at_previous_fetch_leader_log_end_marks_caught_up_at_previous_fetch() -> None:
    # Kafka ReplicaState.updateFetchState, second rule: a follower whose fetch offset
    # reaches the leader's LEO as of its previous fetch was caught up at that fetch's time,
    # even though the leader appended in between (a busy partition is never "at the LEO").
    state = leader_state()
    fetch(state, 2, 5, 10, now_ms=T0_MS + 100)  # behind: leader LEO 10 at this fetch
    assert state.followers[2].last_caught_up_ms == T0_MS
    fetch(state, 2, 10, 14, now_ms=T0_MS + 200)  # got to 10, leader moved on to 14
    assert state.followers[2].last_caught_up_ms == T0_MS + 100


def test_fetch_behind_both_leader_log_ends_does_not_mark_caught_up() -> None:
    state = leader_state()
    fetch(state, 2, 5, 10, now_ms=T0_MS + 100)
    fetch(state, 2, 8, 14, now_ms=T0_MS + 200)
    assert state.followers[2].last_caught_up_ms == T0_MS
    # The follower's LEO is still learnt from every fetch.
    assert state.followers[2].log_end_offset == 8


def test_first_fetch_behind_keeps_initial_caught_up_time() -> None:
    # No previous fetch in this leader epoch: only the first rule can apply.
    state = leader_state()
    fetch(state, 2, 0, 10, now_ms=T0_MS + 100)
    assert state.followers[2].last_caught_up_ms == T0_MS


# --- ISR shrink -----------------------------------------------------------------------------


def test_new_leader_starts_followers_caught_up() -> None:
    # A new leader must not shrink the ISR before followers had a chance to fetch from it.
    state = leader_state(now_ms=T0_MS)
    assert (
        state.next_isr_proposal(now_ms=T0_MS + LAG_MS, lag_time_max_ms=LAG_MS, high_watermark=0)
        is None
    )


def test_shrink_only_after_lag_time_max_ms() -> None:
    # Kafka Partition.getOutOfSyncReplicas: out of sync once now - lastCaughtUpTime >
    # replica.lag.time.max.ms (strictly).
    state = leader_state()
    fetch(state, 2, 10, 10, now_ms=T0_MS)
    fetch(state, 3, 10, 10, now_ms=T0_MS)
    for now in (T0_MS + LAG_MS // 2, T0_MS + LAG_MS):
        fetch(state, 2, 10, 10, now_ms=now)
        assert (
            state.next_isr_proposal(now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10) is None
        )
    now = T0_MS + LAG_MS + 1
    fetch(state, 2, 10, 10, now_ms=now)
    assert state.out_of_sync_replicas(now_ms=now, lag_time_max_ms=LAG_MS) == {3}
    assert state.next_isr_proposal(
        now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10
    ) == frozenset({1, 2})


def test_follower_that_keeps_up_with_a_busy_leader_is_never_shrunk() -> None:
    # The second caught-up rule in action: the leader appends between every pair of
    # fetches, so the follower is never at the LEO, yet it never falls out of the ISR.
    state = leader_state(isr=(1, 2), ar=(1, 2))
    leader_leo = 0
    previous_fetch_leader_leo = 0
    for tick in range(1, 200):
        now = T0_MS + tick * (LAG_MS // 2)
        leader_leo += 3  # appended since the follower's previous fetch
        fetch(state, 2, previous_fetch_leader_leo, leader_leo, now_ms=now)
        previous_fetch_leader_leo = leader_leo
        hw = state.high_watermark(leader_leo)
        assert (
            state.next_isr_proposal(now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=hw) is None
        )


def test_leader_never_proposes_to_remove_itself() -> None:
    state = leader_state()
    now = T0_MS + 10 * LAG_MS
    proposal = state.next_isr_proposal(now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=0)
    assert proposal == frozenset({LEADER})
    assert LEADER not in state.out_of_sync_replicas(now_ms=now, lag_time_max_ms=LAG_MS)


# --- ISR expand -----------------------------------------------------------------------------


def test_expand_only_when_follower_reaches_high_watermark_and_epoch_start() -> None:
    # Kafka Partition.isFollowerInSync: followerLEO >= HW and >= leader epoch start offset
    # (the follower then holds every record of earlier epochs that this leader holds).
    state = leader_state(isr=(1, 2), leader_epoch_start_offset=12)
    now = T0_MS + 1
    fetch(state, 2, 20, 20, now_ms=now)
    fetch(state, 3, 9, 20, now_ms=now)
    assert state.next_isr_proposal(now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10) is None
    fetch(state, 3, 11, 20, now_ms=now)  # past HW 10, short of the epoch start 12
    assert state.caught_up_replicas(10, now_ms=now, lag_time_max_ms=LAG_MS) == set()
    assert state.next_isr_proposal(now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10) is None
    fetch(state, 3, 12, 20, now_ms=now)
    assert state.caught_up_replicas(10, now_ms=now, lag_time_max_ms=LAG_MS) == {3}
    assert state.next_isr_proposal(
        now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10
    ) == frozenset({1, 2, 3})
    # With the HW above the epoch start, the HW is the bar.
    assert state.caught_up_replicas(13, now_ms=now, lag_time_max_ms=LAG_MS) == set()


def test_only_eligible_followers_join_the_isr() -> None:
    # KIP-841: a fenced (or shutting down) broker that keeps fetching is caught up, but the
    # controller refuses it (INELIGIBLE_REPLICA); proposing it anyway sent one doomed
    # AlterPartition per tick per partition until it was unfenced (seen in chaos runs).
    state = leader_state(isr=(1,), leader_epoch_start_offset=0)
    now = T0_MS + 1
    fetch(state, 2, 10, 10, now_ms=now)
    fetch(state, 3, 10, 10, now_ms=now)
    assert (
        state.next_isr_proposal(
            now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10, eligible_replicas=frozenset({1})
        )
        is None
    )
    assert state.next_isr_proposal(
        now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10, eligible_replicas=frozenset({1, 3})
    ) == frozenset({1, 3})
    # Eligibility never holds back a shrink.
    state = leader_state(isr=(1, 2))
    assert state.next_isr_proposal(
        now_ms=T0_MS + LAG_MS + 1,
        lag_time_max_ms=LAG_MS,
        high_watermark=0,
        eligible_replicas=frozenset({1, 2}),
    ) == frozenset({1})


def test_follower_with_unknown_log_end_offset_never_joins() -> None:
    state = leader_state(isr=(1, 2), leader_epoch_start_offset=0)
    assert state.caught_up_replicas(0, now_ms=T0_MS, lag_time_max_ms=LAG_MS) == set()


def test_shrink_takes_precedence_over_expand() -> None:
    state = leader_state(isr=(1, 2))
    now = T0_MS + LAG_MS + 1
    fetch(state, 3, 10, 10, now_ms=now)  # 3 may join; 2 never fetched and lags
    assert state.next_isr_proposal(
        now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10
    ) == frozenset({1})


def test_follower_that_stopped_fetching_is_not_readded_from_its_stale_log_end() -> None:
    # Kafka evaluates ISR expansion in Partition.updateFollowerFetchState, i.e. on a fetch
    # from the follower; a replica removed for lagging (it stopped fetching) must not be
    # proposed back from the LEO it reported before it went silent. On an idle partition
    # that LEO equals the HW, so the scan proposes it on the very next tick; once
    # committed, its old last_caught_up_ms makes the next tick shrink it again.
    state = leader_state()
    fetch(state, 2, 10, 10, now_ms=T0_MS)
    fetch(state, 3, 10, 10, now_ms=T0_MS)  # broker 3's last fetch: it is then paused
    now = T0_MS + LAG_MS + 1
    fetch(state, 2, 10, 10, now_ms=now)
    assert state.next_isr_proposal(
        now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=10
    ) == frozenset({1, 2})
    mark_pending(state, {1, 2})
    state.on_isr_committed((1, 2), partition_epoch=8)
    now += 100
    fetch(state, 2, 10, 10, now_ms=now)
    hw = state.high_watermark(10)
    assert hw == 10
    # Broker 3 has not fetched for more than lag_time_max_ms: it must not be proposed.
    assert state.next_isr_proposal(now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=hw) is None


# --- proposals: one at a time ---------------------------------------------------------------


def test_no_new_proposal_while_one_is_pending() -> None:
    # KIP-497: at most one AlterPartition in flight per partition.
    state = leader_state()
    now = T0_MS + LAG_MS + 1
    proposal = state.next_isr_proposal(now_ms=now, lag_time_max_ms=LAG_MS, high_watermark=0)
    assert proposal == frozenset({LEADER})
    assert proposal is not None
    mark_pending(state, proposal)
    assert (
        state.next_isr_proposal(now_ms=now + LAG_MS, lag_time_max_ms=LAG_MS, high_watermark=0)
        is None
    )


def test_on_isr_committed_clears_pending_and_adopts_controller_state() -> None:
    state = leader_state()
    mark_pending(state, {1, 2})
    state.on_isr_committed((1, 2), partition_epoch=8)
    assert state.pending_isr is None
    assert state.isr == {1, 2}
    assert state.partition_epoch == 8
    assert state.maximal_isr() == {1, 2}


def test_controller_initiated_change_also_clears_pending() -> None:
    # The controller may change the ISR on its own (fencing a broker): our proposal was
    # based on the old partition epoch and will be rejected, so it is no longer pending.
    state = leader_state()
    mark_pending(state, {1, 2})
    state.on_isr_committed((1, 3), partition_epoch=9)
    assert state.pending_isr is None
    assert state.isr == {1, 3}
    assert state.partition_epoch == 9


# --- truncation_offset (KIP-320 follower side) -----------------------------------------------


@pytest.mark.parametrize(
    ("leader", "follower", "leo", "expected"),
    [
        # Matching epoch: logs agree up to the smaller end of that epoch (KIP-101).
        ((3, 12), (3, 15), 15, 12),
        ((3, 15), (3, 12), 15, 12),
        ((3, 12), (3, 12), 12, 12),
        # Matching epoch, follower shorter than both: nothing to cut.
        ((3, 20), (3, 18), 10, 10),
        # Follower's epoch is older than the leader's: cut at the end of its own epoch and
        # ask again (KIP-279: one round per divergent epoch).
        ((3, 12), (2, 10), 15, 10),
        ((3, 12), (2, 10), 8, 8),
        # Follower has no epoch <= the leader's: trust the leader's end offset.
        ((3, 12), (-1, -1), 15, 12),
        ((3, 12), (-1, -1), 5, 5),
        ((0, 0), (-1, -1), 5, 0),
    ],
)
def test_truncation_offset_branches(
    leader: tuple[int, int], follower: tuple[int, int], leo: int, expected: int
) -> None:
    offset = truncation_offset(
        diverging_epoch=leader[0],
        diverging_end_offset=leader[1],
        follower_epoch=follower[0],
        follower_epoch_end_offset=follower[1],
        log_end_offset=leo,
    )
    assert offset == expected
    # Truncation never grows the log and never goes below 0.
    assert 0 <= offset <= leo


@settings(derandomize=True)
@given(
    diverging_epoch=st.integers(0, 20),
    diverging_end_offset=st.integers(0, 1000),
    follower=st.one_of(st.just((-1, -1)), st.tuples(st.integers(0, 20), st.integers(0, 1000))),
    log_end_offset=st.integers(0, 1000),
)
def test_truncation_offset_bounds(
    diverging_epoch: int,
    diverging_end_offset: int,
    follower: tuple[int, int],
    log_end_offset: int,
) -> None:
    # KIP-320: truncation only ever removes a suffix, and when both sides know the epoch
    # nothing past the leader's end of it survives.
    follower_epoch, follower_end = follower
    offset = truncation_offset(
        diverging_epoch=diverging_epoch,
        diverging_end_offset=diverging_end_offset,
        follower_epoch=follower_epoch,
        follower_epoch_end_offset=follower_end,
        log_end_offset=log_end_offset,
    )
    assert 0 <= offset <= log_end_offset
    if follower_epoch == diverging_epoch:
        assert offset <= diverging_end_offset
    if follower_epoch < 0:
        assert offset == min(diverging_end_offset, log_end_offset)


@settings(derandomize=True)
@given(
    isr=st.frozensets(st.sampled_from((2, 3, 4)), max_size=3),
    pending=st.none() | st.frozensets(st.sampled_from((2, 3, 4)), max_size=3),
    follower_leos=st.tuples(*[st.integers(-1, 50)] * 3),
    leader_leo=st.integers(50, 60),
)
def test_high_watermark_is_min_over_maximal_isr(
    isr: frozenset[int],
    pending: frozenset[int] | None,
    follower_leos: tuple[int, int, int],
    leader_leo: int,
) -> None:
    # KIP-497: HW = min LEO over ISR | pending ISR (leader included); unknown (-1) blocks.
    state = leader_state(isr=(LEADER, *sorted(isr)), ar=(1, 2, 3, 4))
    for replica, leo in zip((2, 3, 4), follower_leos, strict=True):
        state.followers[replica].log_end_offset = leo
    if pending is not None:
        mark_pending(state, pending | {LEADER})
    members = isr | (pending or frozenset())
    expected = min([leader_leo, *(follower_leos[r - 2] for r in members)])
    assert state.high_watermark(leader_leo) == expected


# The multi-round example (KIP-279): follower epochs [0@0, 2@10] LEO 15, leader epochs
# [0@0, 1@8, 3@12]. Each round the leader answers from its epoch cache, the follower from
# its own; the rounds move strictly down until the leader sees no divergence.

TOPIC = bytes(range(16))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    s = LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE)
    yield s
    s.close()


def one_record(tag: bytes) -> bytes:
    return encode_batch([Message(tag, b"k", timestamp_ms=1000)])


def build_log(
    store: LogStore, partition: int, epochs: list[tuple[int, int]], leo: int
) -> PartitionLog:
    """A follower-style log with single-record batches; epoch e covers [start_e, start_next)."""
    log = store.open_partition(TOPIC, partition)
    bounds = [*epochs[1:], (-1, leo)]
    for (epoch, start), (_, end) in zip(epochs, bounds, strict=True):
        for offset in range(start, end):
            log.append_as_follower(
                stamp_batch(
                    one_record(b"e%d-%d" % (epoch, offset)),
                    base_offset=offset,
                    partition_leader_epoch=epoch,
                )
            )
    assert log.epoch_entries == tuple(epochs)
    return log


def replica_of(
    log: PartitionLog, *, broker_id: int, leader: int, leader_epoch: int
) -> PartitionReplica[PartitionLog]:
    """The real replica core over `log`, as leader or follower of brokers 1 and 2."""
    replica = PartitionReplica(
        broker_id=broker_id,
        topic="t",
        topic_id=log.topic_id,
        index=log.partition,
        log=log,
        config=TopicConfig(),
    )
    replica.apply_metadata(
        PartitionRecord(
            ar=(1, 2), isr=(1, 2), leader=leader, leader_epoch=leader_epoch, partition_epoch=0
        ),
        TopicConfig(),
        now_ms=T0_MS,
    )
    return replica


def leader_diverging_epoch(
    leader: PartitionReplica[PartitionLog], follower: PartitionReplica[PartitionLog]
) -> tuple[int, int] | None:
    """The leader core's answer to the follower's position (KIP-320)."""
    fetch_offset, last_epoch = follower.follower_position()
    read = leader.read_for_follower(
        2,
        fetch_offset,
        last_fetched_epoch=last_epoch,
        current_leader_epoch=leader.leader_epoch,
        max_bytes=1 << 20,
        now_ms=T0_MS,
    ).read
    return read.diverging_epoch


def truncate_by_reply(follower: PartitionReplica[PartitionLog], diverging: tuple[int, int]) -> None:
    """The follower core's handling of a diverging-epoch answer."""
    outcome = follower.on_fetch_reply(
        FetchReply(diverging_epoch=diverging), leader_epoch=follower.leader_epoch
    )
    assert outcome.truncated


def test_truncation_multi_round_example(store: LogStore) -> None:
    follower_log = build_log(store, 0, [(0, 0), (2, 10)], 15)
    leader_log = build_log(store, 1, [(0, 0), (1, 8), (3, 12)], 14)
    leader = replica_of(leader_log, broker_id=1, leader=1, leader_epoch=3)
    follower = replica_of(follower_log, broker_id=2, leader=1, leader_epoch=3)
    cuts = []
    for _ in range(10):  # bound: one round per divergent epoch
        diverging = leader_diverging_epoch(leader, follower)
        if diverging is None:
            break
        own = follower_log.end_offset_for_epoch(diverging[0])
        truncate_by_reply(follower, diverging)
        cuts.append((diverging, own, follower_log.log_end_offset))
    assert cuts == [
        # Leader: epoch 2 unknown, largest below is 1, ending where 3 starts (12). Follower:
        # largest epoch <= 1 is 0, ending where its 2 starts (10): intermediate cut.
        ((1, 12), (0, 10), 10),
        # Leader: epoch 0 ends at 8 < fetch offset 10. Follower: epoch 0 is its latest,
        # ending at its LEO 10: same epoch, cut at min(8, 10).
        ((0, 8), (0, 10), 8),
    ]
    assert follower_log.epoch_entries == ((0, 0),)
    # Third round: no divergence, the follower fetches from 8.
    assert follower.follower_position() == (8, 0)
    assert leader_diverging_epoch(leader, follower) is None


def test_truncation_multi_round_example_numbers_alone() -> None:
    # The same rounds with the epoch-cache answers spelled out, so the rule itself is
    # pinned independently of the log implementation.
    assert (
        truncation_offset(
            diverging_epoch=1,
            diverging_end_offset=12,
            follower_epoch=0,
            follower_epoch_end_offset=10,
            log_end_offset=15,
        )
        == 10
    )
    assert (
        truncation_offset(
            diverging_epoch=0,
            diverging_end_offset=8,
            follower_epoch=0,
            follower_epoch_end_offset=10,
            log_end_offset=10,
        )
        == 8
    )


def test_truncation_drops_an_empty_epoch_left_by_a_leader_that_never_wrote(
    store: LogStore,
) -> None:
    # Broker A leads epoch 1 and writes 0..5, replicated to B. A is elected for epoch 3
    # (becoming leader assigns (3, 5) at its LEO) and is deposed before any write;
    # B leads epoch 4 and writes one record. A now follows B. KIP-101/KIP-279: A's epoch-3
    # entry covers no data, so truncating "to 5" at LEO 5 must still remove it, as Kafka's
    # UnifiedLog.truncateTo does ("we may have a conflicting epoch entry at the end of the
    # log from the leader").
    a = build_log(store, 0, [(1, 0)], 5)
    b = build_log(store, 1, [(1, 0)], 5)
    a.assign_epoch(3, a.log_end_offset)
    b_leader = replica_of(b, broker_id=1, leader=1, leader_epoch=4)
    b_leader.append_as_leader(one_record(b"b4"), acks=1, current_leader_epoch=4)
    a_follower = replica_of(a, broker_id=2, leader=1, leader_epoch=4)
    for _ in range(5):  # bound: a follower converges in a round per divergent epoch
        diverging = leader_diverging_epoch(b_leader, a_follower)
        if diverging is None:
            break
        truncate_by_reply(a_follower, diverging)
    assert leader_diverging_epoch(b_leader, a_follower) is None
    assert a.epoch_entries == ((1, 0),)


# --- acks=all and min.insync.replicas (Kafka Partition.checkEnoughReplicasReachOffset) ------


def test_acks_all_fails_when_isr_shrank_below_min_insync_before_hw_passed(
    store: LogStore,
) -> None:
    # Kafka: when the HW reaches the write but the (maximal) ISR is smaller than
    # min.insync.replicas, the produce fails with NOT_ENOUGH_REPLICAS_AFTER_APPEND: an
    # acks=all success promises min.insync.replicas copies.
    replica = PartitionReplica(
        broker_id=1,
        topic="t",
        topic_id=TOPIC,
        index=0,
        log=store.open_partition(TOPIC, 0),
        config=TopicConfig(min_insync_replicas=2),
    )
    replica.apply_metadata(
        PartitionRecord(ar=(1, 2), isr=(1, 2), leader=1, leader_epoch=0, partition_epoch=0),
        TopicConfig(min_insync_replicas=2),
        now_ms=T0_MS,
    )
    appended = replica.append_as_leader(one_record(b"w"), acks=-1, current_leader_epoch=0)
    assert not replica.acks_reached(appended.next_offset, leader_epoch=0)
    # Follower 2 never fetches the write; the controller commits the shrink to {1}.
    replica.on_isr_proposal_committed(
        PartitionRecord(ar=(1, 2), isr=(1,), leader=1, leader_epoch=0, partition_epoch=1)
    )
    assert replica.log.high_watermark == appended.next_offset  # only broker 1 holds it
    with pytest.raises(RaftmqError) as raised:
        replica.acks_reached(appended.next_offset, leader_epoch=0)
    assert raised.value.code == ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
