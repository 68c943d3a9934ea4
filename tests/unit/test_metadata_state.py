"""The controller's metadata state machine, tested directly (no Raft, no sockets).

Every command goes the way the planner sends it: `plan` on the leader, then the encoded
entry decoded and applied (`apply_entry`), with the invariants checked after each step."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.controller.metadata_commands import (
    PRODUCER_ID_BLOCK_SIZE,
    AllocateProducerIds,
    AlterPartition,
    BeginControllerEpoch,
    Command,
    CommandResult,
    ControlledShutdown,
    CreateTopic,
    DeleteTopic,
    ElectLeaders,
    FenceBroker,
    InitializeCluster,
    ProducerIdBlock,
    RegisterBroker,
    UnfenceBroker,
)
from raftmq.controller.metadata_entry import (
    MetadataEntry,
    MetadataItem,
    decode_entry,
    encode_entry,
)
from raftmq.controller.metadata_records import ClusterInitialized, ProducerIdsAllocated
from raftmq.controller.metadata_state import NO_LEADER, MetadataState
from raftmq.errors import ErrorCode

_ids = itertools.count()
CLUSTER_ID = "golden-cluster"


def rid() -> str:
    return f"req-{next(_ids)}"


def commit(state: MetadataState, command: Command) -> CommandResult:
    """What the leader's planner and every node do with one command: plan it, encode the
    entry, decode it and apply it at the version it was planned against."""
    before = canonical(state)
    records, result = state.plan(command)
    assert canonical(state) == before, "plan must not change the state"
    entry = MetadataEntry(
        state.version, (MetadataItem(command.request_id, tuple(records), result),)
    )
    outcome = state.apply_entry(decode_entry(encode_entry(entry)))
    assert outcome.applied
    state.check_invariants()
    return outcome.results[0]


def canonical(state: MetadataState) -> str:
    return json.dumps(state.to_dict(), sort_keys=True)


def cluster(brokers: int = 3, racks: tuple[str, ...] = ()) -> MetadataState:
    state = MetadataState()
    assert commit(state, InitializeCluster(rid(), CLUSTER_ID)).ok
    commit(state, BeginControllerEpoch(rid(), 1))
    for b in range(1, brokers + 1):
        rack = racks[(b - 1) % len(racks)] if racks else ""
        result = commit(state, RegisterBroker(rid(), b, "127.0.0.1", 9091 + b, rack, f"inc-{b}"))
        assert result.ok and isinstance(result.value, int)
        assert commit(state, UnfenceBroker(rid(), 1, b, result.value, result.value)).ok
    return state


def create(state: MetadataState, name: str = "t", partitions: int = 3, rf: int = 3, **configs: str):
    return commit(
        state,
        CreateTopic(
            rid(),
            name,
            name.encode().ljust(16, b"\0")[:16],
            partitions,
            rf,
            tuple((k.replace("_", "."), v) for k, v in configs.items()),
        ),
    )


def epoch_of(state: MetadataState, broker_id: int) -> int:
    return state.brokers[broker_id].broker_epoch


def test_create_topic_balances_leaders_and_replicas() -> None:
    state = cluster(3)
    assert create(state, partitions=6).ok
    topic = state.topics["t"]
    leaders = [p.leader for p in topic.partitions]
    assert sorted(leaders) == [1, 1, 2, 2, 3, 3]
    replica_counts = {b: sum(b in p.ar for p in topic.partitions) for b in (1, 2, 3)}
    assert set(replica_counts.values()) == {6}
    for p in topic.partitions:
        assert p.isr == p.ar and p.osr == () and p.leader == p.ar[0]
    state.check_invariants()


def test_rack_aware_assignment_spreads_replicas_over_racks() -> None:
    state = cluster(6, racks=("a", "b", "c"))
    assert create(state, partitions=12, rf=3).ok
    for p in state.topics["t"].partitions:
        assert len({state.brokers[r].rack for r in p.ar}) == 3


@pytest.mark.parametrize(
    ("name", "partitions", "rf", "configs", "code"),
    [
        ("bad name!", 1, 1, {}, ErrorCode.INVALID_TOPIC_NAME),
        ("..", 1, 1, {}, ErrorCode.INVALID_TOPIC_NAME),
        ("x" * 250, 1, 1, {}, ErrorCode.INVALID_TOPIC_NAME),
        ("ok", 0, 1, {}, ErrorCode.INVALID_PARTITIONS),
        ("ok", 1, 4, {}, ErrorCode.INVALID_REPLICATION_FACTOR),
        ("ok", 1, 0, {}, ErrorCode.INVALID_REPLICATION_FACTOR),
        ("ok", 1, 1, {"min_insync_replicas": "2"}, ErrorCode.INVALID_CONFIG),
        ("ok", 1, 1, {"retention_ms": "soon"}, ErrorCode.INVALID_CONFIG),
        ("ok", 1, 1, {"no_such_key": "1"}, ErrorCode.INVALID_CONFIG),
    ],
)
def test_create_topic_rejects_bad_input(name, partitions, rf, configs, code) -> None:
    state = cluster(3)
    before = state.version
    result = create(state, name, partitions, rf, **configs)
    assert result.error == code
    assert result.message
    assert state.version == before and not state.topics


def test_existing_and_colliding_topics_are_rejected() -> None:
    state = cluster(3)
    assert create(state, "a.b").ok
    assert create(state, "a.b").error == ErrorCode.TOPIC_ALREADY_EXISTS
    assert create(state, "a_b").error == ErrorCode.INVALID_TOPIC_NAME


def test_retried_command_is_applied_once() -> None:
    state = cluster(3)
    command = CreateTopic(rid(), "t", b"t" * 16, 1, 3)
    first = commit(state, command)
    version = state.version
    assert commit(state, command) == first
    assert state.version == version


def test_fencing_moves_leadership_within_isr_and_shrinks_isr() -> None:
    state = cluster(3)
    create(state, partitions=3)
    led_by_1 = [i for i, p in enumerate(state.topics["t"].partitions) if p.leader == 1]
    before = {i: state.topics["t"].partitions[i] for i in led_by_1}
    assert commit(state, FenceBroker(rid(), 1, 1, epoch_of(state, 1))).ok
    for i, p in enumerate(state.topics["t"].partitions):
        assert 1 not in p.isr and p.leader != 1
        assert p.osr == (1,)
        if i in led_by_1:
            assert p.leader in before[i].isr
            assert p.leader_epoch == before[i].leader_epoch + 1
    state.check_invariants()


def test_last_isr_member_fenced_takes_partition_offline_and_back() -> None:
    state = cluster(3)
    create(state, partitions=1, rf=1)
    owner = state.topics["t"].partitions[0].leader
    epoch = epoch_of(state, owner)
    commit(state, FenceBroker(rid(), 1, owner, epoch))
    p = state.topics["t"].partitions[0]
    assert p.leader == NO_LEADER and p.isr == (owner,)
    state.check_invariants()
    assert commit(state, UnfenceBroker(rid(), 1, owner, epoch, state.version)).ok
    p = state.topics["t"].partitions[0]
    assert p.leader == owner


def test_no_unclean_election_unless_enabled() -> None:
    for unclean in (False, True):
        state = cluster(3)
        create(state, partitions=1, rf=2, unclean_leader_election_enable=str(unclean).lower())
        p = state.topics["t"].partitions[0]
        leader, follower = p.ar
        commit(
            state,
            AlterPartition(
                rid(),
                leader,
                epoch_of(state, leader),
                "t",
                b"t".ljust(16, b"\0"),
                0,
                p.leader_epoch,
                p.partition_epoch,
                (leader,),
            ),
        )
        commit(state, FenceBroker(rid(), 1, leader, epoch_of(state, leader)))
        p = state.topics["t"].partitions[0]
        if unclean:
            assert p.leader == follower and p.isr == (follower,)
        else:
            assert p.leader == NO_LEADER and p.isr == (leader,)
        state.check_invariants()


def test_alter_partition_needs_current_partition_epoch() -> None:
    state = cluster(3)
    create(state, partitions=1)
    p = state.topics["t"].partitions[0]
    tid = b"t".ljust(16, b"\0")
    shrink = (p.leader,)
    ok = commit(
        state,
        AlterPartition(
            rid(),
            p.leader,
            epoch_of(state, p.leader),
            "t",
            tid,
            0,
            p.leader_epoch,
            p.partition_epoch,
            shrink,
        ),
    )
    assert ok.ok and ok.value.isr == shrink
    stale = commit(
        state,
        AlterPartition(
            rid(),
            p.leader,
            epoch_of(state, p.leader),
            "t",
            tid,
            0,
            p.leader_epoch,
            p.partition_epoch,
            p.ar,
        ),
    )
    assert stale.error == ErrorCode.INVALID_UPDATE_VERSION
    follower = p.ar[1]
    not_leader = commit(
        state,
        AlterPartition(
            rid(),
            follower,
            epoch_of(state, follower),
            "t",
            tid,
            0,
            p.leader_epoch,
            p.partition_epoch + 1,
            p.ar,
        ),
    )
    assert not_leader.error == ErrorCode.NOT_LEADER_OR_FOLLOWER


def test_alter_partition_refuses_fenced_replica_joining() -> None:
    state = cluster(3)
    create(state, partitions=1)
    p = state.topics["t"].partitions[0]
    follower = p.ar[1]
    commit(state, FenceBroker(rid(), 1, follower, epoch_of(state, follower)))
    p = state.topics["t"].partitions[0]
    result = commit(
        state,
        AlterPartition(
            rid(),
            p.leader,
            epoch_of(state, p.leader),
            "t",
            b"t".ljust(16, b"\0"),
            0,
            p.leader_epoch,
            p.partition_epoch,
            p.ar,
        ),
    )
    assert result.error == ErrorCode.INELIGIBLE_REPLICA


def test_stale_controller_epoch_is_fenced() -> None:
    state = cluster(3)
    commit(state, BeginControllerEpoch(rid(), 5))
    result = commit(state, FenceBroker(rid(), 4, 1, epoch_of(state, 1)))
    assert result.error == ErrorCode.STALE_CONTROLLER_EPOCH
    assert not state.brokers[1].fenced


def test_controlled_shutdown_moves_leadership_and_preferred_election_moves_it_back() -> None:
    state = cluster(3)
    create(state, partitions=3)
    assert commit(state, ControlledShutdown(rid(), 1, epoch_of(state, 1))).ok
    assert all(p.leader != 1 for p in state.topics["t"].partitions)
    assert state.brokers[1].shutting_down
    # broker 1 restarts: new incarnation, unfenced, rejoins the ISRs, preferred election.
    epoch = commit(state, RegisterBroker(rid(), 1, "127.0.0.1", 9092, "", "inc-1b")).value
    assert commit(state, UnfenceBroker(rid(), 1, 1, epoch, epoch)).ok
    tid = b"t".ljust(16, b"\0")
    for i, p in enumerate(state.topics["t"].partitions):
        r = commit(
            state,
            AlterPartition(
                rid(),
                p.leader,
                epoch_of(state, p.leader),
                "t",
                tid,
                i,
                p.leader_epoch,
                p.partition_epoch,
                p.ar,
            ),
        )
        assert r.ok, r
    elected = commit(state, ElectLeaders(rid(), -1, True))
    assert elected.value == 1
    assert [p.leader for p in state.topics["t"].partitions] == [
        p.ar[0] for p in state.topics["t"].partitions
    ]
    state.check_invariants()


def test_new_incarnation_replaces_old_one_and_leaves_isrs() -> None:
    state = cluster(3)
    create(state, partitions=3)
    old_epoch = epoch_of(state, 2)
    new_epoch = commit(state, RegisterBroker(rid(), 2, "127.0.0.1", 9093, "", "inc-2b")).value
    assert new_epoch > old_epoch
    assert state.brokers[2].fenced
    assert all(2 not in p.isr for p in state.topics["t"].partitions)
    heartbeat_old = commit(state, UnfenceBroker(rid(), 1, 2, old_epoch, state.version))
    assert heartbeat_old.error == ErrorCode.STALE_BROKER_EPOCH


def test_delete_topic_and_change_sets() -> None:
    state = cluster(3)
    v0 = state.version
    create(state, "a")
    create(state, "b")
    assert state.changes_since(v0).topics == {"a", "b"}
    assert commit(state, DeleteTopic(rid(), "a")).ok
    assert "a" not in state.topics
    assert commit(state, DeleteTopic(rid(), "a")).error == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert state.changes_since(state.version) is not None
    assert not state.changes_since(state.version)


def test_plan_changes_nothing_and_a_stale_plan_is_skipped_everywhere() -> None:
    state = cluster(3)
    before = canonical(state)
    records, result = state.plan(CreateTopic(rid(), "t", b"t" * 16, 2, 3))
    assert records and result.ok
    assert canonical(state) == before
    # Planned against the current version, but another entry got in first.
    stale = MetadataEntry(state.version, (MetadataItem("late", tuple(records), result),))
    assert create(state, "other").ok
    after_other = canonical(state)
    outcome = state.apply_entry(decode_entry(encode_entry(stale)))
    assert not outcome.applied
    assert outcome.results[0].error == ErrorCode.CONTROLLER_UNAVAILABLE
    assert "not applied" in outcome.results[0].message
    assert canonical(state) == after_other  # not even its request id is remembered
    assert "t" not in state.topics


def test_version_counts_items_with_records_and_broker_epoch_is_that_version() -> None:
    state = cluster(1)
    version = state.version
    assert create(state, "t", partitions=1, rf=1).ok
    assert state.version == version + 1
    assert create(state, "t", partitions=1, rf=1).error == ErrorCode.TOPIC_ALREADY_EXISTS
    assert state.version == version + 1  # no records, no new version
    epoch = commit(state, RegisterBroker(rid(), 7, "h", 1, "", "inc-7")).value
    assert epoch == state.version == version + 2
    assert state.brokers[7].broker_epoch == epoch


def test_topic_names_starting_with_two_underscores_are_reserved() -> None:
    state = cluster(3)
    refused = create(state, "__consumer_offsets", partitions=1, rf=1)
    assert refused.error == ErrorCode.INVALID_TOPIC_NAME
    assert "reserved" in refused.message and "internal" in refused.message
    internal = CreateTopic(rid(), "__consumer_offsets", b"c" * 16, 1, 3, internal=True)
    assert commit(state, internal).ok
    assert create(state, "_single_underscore", partitions=1, rf=1).ok


def test_unfence_needs_metadata_caught_up_with_the_registration() -> None:
    state = cluster(3)
    epoch = commit(state, RegisterBroker(rid(), 4, "h", 9095, "", "inc-4")).value
    assert isinstance(epoch, int)
    lagging = commit(state, UnfenceBroker(rid(), 1, 4, epoch, epoch - 1))
    assert lagging.error == ErrorCode.BROKER_NOT_AVAILABLE
    assert "catches up" in lagging.message and state.brokers[4].fenced
    assert commit(state, UnfenceBroker(rid(), 1, 4, epoch, epoch)).ok
    assert not state.brokers[4].fenced


def test_cluster_id_is_set_once_and_brokers_of_other_clusters_are_refused() -> None:
    state = MetadataState()
    early = commit(state, RegisterBroker(rid(), 1, "h", 9092, "", "inc-1"))
    assert early.error == ErrorCode.CONTROLLER_UNAVAILABLE and early.error.retriable
    assert "not initialized" in early.message
    assert commit(state, InitializeCluster(rid(), "cluster-a")).ok
    assert state.cluster_id == "cluster-a"
    again = commit(state, InitializeCluster(rid(), "cluster-a"))
    assert again.ok and state.cluster_id == "cluster-a"
    other = commit(state, InitializeCluster(rid(), "cluster-b"))
    assert other.error == ErrorCode.INCONSISTENT_CLUSTER_ID and state.cluster_id == "cluster-a"
    foreign = commit(state, RegisterBroker(rid(), 2, "h", 9093, "", "inc-2", "cluster-b"))
    assert foreign.error == ErrorCode.INCONSISTENT_CLUSTER_ID
    assert (
        foreign.message == "broker 2 belongs to cluster cluster-b, this quorum is cluster cluster-a"
    )
    assert not foreign.error.retriable and 2 not in state.brokers
    assert commit(state, RegisterBroker(rid(), 2, "h", 9093, "", "inc-2", "cluster-a")).ok
    assert commit(state, RegisterBroker(rid(), 3, "h", 9094, "", "inc-3", "")).ok


def test_replay_refuses_a_second_cluster_id() -> None:
    state = MetadataState()
    commit(state, InitializeCluster(rid(), "cluster-a"))
    forged = MetadataItem("", (ClusterInitialized("cluster-b"),), CommandResult())
    with pytest.raises(AssertionError, match="cluster-b"):
        state.apply_item(forged)


def test_producer_id_blocks_are_disjoint_and_need_the_current_broker_epoch() -> None:
    state = cluster(2)
    first = commit(state, AllocateProducerIds(rid(), 1, epoch_of(state, 1)))
    second = commit(state, AllocateProducerIds(rid(), 2, epoch_of(state, 2)))
    assert first.value == ProducerIdBlock(0, PRODUCER_ID_BLOCK_SIZE)
    assert second.value == ProducerIdBlock(PRODUCER_ID_BLOCK_SIZE, PRODUCER_ID_BLOCK_SIZE)
    assert state.next_producer_id == 2 * PRODUCER_ID_BLOCK_SIZE
    stale = commit(state, AllocateProducerIds(rid(), 1, epoch_of(state, 1) - 1))
    assert stale.error == ErrorCode.STALE_BROKER_EPOCH
    unknown = commit(state, AllocateProducerIds(rid(), 9, 1))
    assert unknown.error == ErrorCode.BROKER_NOT_AVAILABLE
    # The same request id again: the same block, nothing new handed out.
    command = AllocateProducerIds(rid(), 1, epoch_of(state, 1))
    block = commit(state, command).value
    assert commit(state, command).value == block
    assert state.next_producer_id == 3 * PRODUCER_ID_BLOCK_SIZE
    going_back = MetadataItem("", (ProducerIdsAllocated(1_000, 1, 1),), CommandResult())
    with pytest.raises(AssertionError):
        state.apply_item(going_back)


def test_a_fence_too_large_for_one_entry_applied_in_parts_converges() -> None:
    """The planner applies a leading part and plans again: same end state as at once."""
    whole, parts = cluster(3), cluster(3)
    for state in (whole, parts):
        create(state, "a", partitions=40)
        create(state, "b", partitions=40)
    fence = FenceBroker(rid(), 1, 2, epoch_of(whole, 2))
    assert commit(whole, fence).ok
    for _ in range(100):
        records, result = parts.plan(fence)
        assert result.ok
        if len(records) <= 7:
            parts.apply_item(MetadataItem(fence.request_id, tuple(records), result))
            break
        parts.apply_item(MetadataItem("", tuple(records[:7]), CommandResult()))
        parts.check_invariants()
    for state in (whole, parts):
        assert state.brokers[2].fenced
        assert all(2 not in p.isr and p.leader != 2 for _, _, p in state.partitions())
    assert {k: v.partitions for k, v in whole.topics.items()} == {
        k: v.partitions for k, v in parts.topics.items()
    }


# ------------------------------------------------------------------ properties

broker_ids = st.integers(min_value=1, max_value=5)

command_strategy = st.one_of(
    st.tuples(st.just("init"), st.integers(0, 1), st.just(0)),
    st.tuples(st.just("register"), broker_ids, st.integers(0, 3)),
    st.tuples(st.just("fence"), broker_ids, st.just(0)),
    st.tuples(st.just("unfence"), broker_ids, st.integers(-1, 0)),
    st.tuples(st.just("shutdown"), broker_ids, st.just(0)),
    st.tuples(st.just("create"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("delete"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("shrink"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("expand"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("preferred"), st.just(0), st.just(0)),
    st.tuples(st.just("unclean"), st.just(0), st.just(0)),
    st.tuples(st.just("epoch"), st.integers(1, 4), st.just(0)),
    st.tuples(st.just("producer_ids"), broker_ids, st.just(0)),
    st.tuples(st.just("retry"), st.integers(0, 1000), st.just(0)),
)


def to_command(
    state: MetadataState, step: tuple[str, int, int], n: int, sent: Sequence[Command]
) -> Command | None:
    kind, a, b = step
    if kind == "init":
        return InitializeCluster(f"c{n}", f"cluster-{a}")
    if kind == "register":
        return RegisterBroker(f"c{n}", a, "h", 9000 + a, f"r{a % 2}", f"inc-{a}-{b}")
    if kind == "retry":  # a caller retrying an earlier request (same request id)
        return sent[a % len(sent)] if sent else None
    if kind in ("fence", "unfence", "shutdown", "producer_ids"):
        broker = state.brokers.get(a)
        if broker is None:
            return None
        if kind == "shutdown":
            return ControlledShutdown(f"c{n}", a, broker.broker_epoch)
        if kind == "producer_ids":
            return AllocateProducerIds(f"c{n}", a, broker.broker_epoch)
        if kind == "fence":
            return FenceBroker(f"c{n}", state.controller_epoch, a, broker.broker_epoch)
        # b == -1: a broker whose metadata has not reached its own registration yet.
        return UnfenceBroker(
            f"c{n}", state.controller_epoch, a, broker.broker_epoch, broker.broker_epoch + b
        )
    if kind == "create":
        unclean = "true" if a % 2 else "false"
        return CreateTopic(
            f"c{n}",
            f"t{a}",
            f"t{a}-{n}".encode()[:16].ljust(16, b"\0"),
            2,
            b,
            (("unclean.leader.election.enable", unclean),),
        )
    if kind == "delete":
        return DeleteTopic(f"c{n}", f"t{a}")
    if kind in ("shrink", "expand"):
        topic = state.topics.get(f"t{a}")
        if topic is None:
            return None
        p = topic.partitions[b % len(topic.partitions)]
        if p.leader == NO_LEADER:
            return None
        isr = (p.leader,) if kind == "shrink" else p.ar
        return AlterPartition(
            f"c{n}",
            p.leader,
            state.brokers[p.leader].broker_epoch,
            topic.name,
            topic.topic_id,
            b % len(topic.partitions),
            p.leader_epoch,
            p.partition_epoch,
            isr,
        )
    if kind in ("preferred", "unclean"):
        return ElectLeaders(f"c{n}", -1, kind == "preferred")
    return BeginControllerEpoch(f"c{n}", state.controller_epoch + a)


def assert_transition(before: MetadataState, after: MetadataState) -> None:
    """What one applied entry may do to the partitions it changes."""
    for name, index, p in after.partitions():
        assert set(p.osr) == set(p.ar) - set(p.isr)
        old_topic = before.topics.get(name)
        if old_topic is None or old_topic.topic_id != after.topics[name].topic_id:
            continue
        prev = old_topic.partitions[index]
        # Epochs never decrease.
        assert p.leader_epoch >= prev.leader_epoch
        assert p.partition_epoch >= prev.partition_epoch
        # Every change bumps the partition epoch; a leader change bumps the leader epoch.
        if p != prev:
            assert p.partition_epoch > prev.partition_epoch
        if p.leader != prev.leader:
            assert p.leader_epoch > prev.leader_epoch
        # No election outside the (previous) ISR unless unclean election is enabled.
        unclean = after.topics[name].config.unclean_leader_election_enable
        if p.leader not in (prev.leader, NO_LEADER) and not unclean:
            assert p.leader in prev.isr, (prev, p)


def assert_every_prefix_valid(state: MetadataState, item: MetadataItem) -> None:
    """The planner may apply a plan in parts: each prefix of its records is a valid state."""
    for end in range(1, len(item.records)):
        partial = state.scratch_copy()
        partial.apply_item(MetadataItem("", item.records[:end], CommandResult()))
        partial.check_invariants()


@settings(max_examples=150, deadline=None)
@given(st.lists(command_strategy, max_size=60), st.integers(1, 4))
def test_random_commands_keep_invariants_and_replay_deterministically(steps, batch_size) -> None:
    """Commands planned in batches against a scratch copy, as the planner does; the
    encoded entries replayed on a fresh state give the same state, and so does a
    snapshot of it."""
    state = MetadataState()
    sent: list[Command] = []
    log: list[bytes] = []
    for start in range(0, len(steps), batch_size):
        scratch = state.scratch_copy()
        items = []
        for n, step in enumerate(steps[start : start + batch_size], start):
            command = to_command(scratch, step, n, sent)
            if command is None:
                continue
            sent.append(command)
            records, result = scratch.plan(command)
            item = MetadataItem(command.request_id, tuple(records), result)
            assert_every_prefix_valid(scratch, item)
            scratch.apply_item(item)
            scratch.check_invariants()
            items.append(item)
        blob = encode_entry(MetadataEntry(state.version, tuple(items)))
        before = state.scratch_copy()
        outcome = state.apply_entry(decode_entry(blob))
        assert outcome.applied and outcome.results == tuple(i.result for i in items)
        assert canonical(state) == canonical(scratch)
        state.check_invariants()
        assert_transition(before, state)
        log.append(blob)
    # Replaying the same entries on a fresh state gives the same state.
    replica = MetadataState()
    for blob in log:
        assert replica.apply_entry(decode_entry(blob)).applied
    assert canonical(replica) == canonical(state)
    # A snapshot (JSON, no pickle) restores the same state.
    restored = MetadataState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert canonical(restored) == canonical(state)
