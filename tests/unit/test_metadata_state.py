"""The controller's metadata state machine, tested directly (no Raft, no sockets)."""

from __future__ import annotations

import itertools
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.controller.metadata_state import (
    NO_LEADER,
    AlterPartition,
    BeginControllerEpoch,
    Command,
    ControlledShutdown,
    CreateTopic,
    DeleteTopic,
    ElectLeaders,
    FenceBroker,
    MetadataState,
    RegisterBroker,
    UnfenceBroker,
)
from raftmq.errors import ErrorCode

_ids = itertools.count()


def rid() -> str:
    return f"req-{next(_ids)}"


def cluster(brokers: int = 3, racks: tuple[str, ...] = ()) -> MetadataState:
    state = MetadataState()
    state.apply(BeginControllerEpoch(rid(), 1))
    for b in range(1, brokers + 1):
        rack = racks[(b - 1) % len(racks)] if racks else ""
        result = state.apply(RegisterBroker(rid(), b, "127.0.0.1", 9091 + b, rack, f"inc-{b}"))
        assert result.ok
        state.apply(UnfenceBroker(rid(), 1, b, result.value))
    return state


def create(state: MetadataState, name: str = "t", partitions: int = 3, rf: int = 3, **configs: str):
    return state.apply(
        CreateTopic(
            rid(),
            name,
            name.encode().ljust(16, b"\0")[:16],
            partitions,
            rf,
            tuple((k.replace("_", "."), v) for k, v in configs.items()),
        )
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
    first = state.apply(command)
    version = state.version
    assert state.apply(command) == first
    assert state.version == version


def test_fencing_moves_leadership_within_isr_and_shrinks_isr() -> None:
    state = cluster(3)
    create(state, partitions=3)
    led_by_1 = [i for i, p in enumerate(state.topics["t"].partitions) if p.leader == 1]
    before = {i: state.topics["t"].partitions[i] for i in led_by_1}
    assert state.apply(FenceBroker(rid(), 1, 1, epoch_of(state, 1))).ok
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
    state.apply(FenceBroker(rid(), 1, owner, epoch))
    p = state.topics["t"].partitions[0]
    assert p.leader == NO_LEADER and p.isr == (owner,)
    state.check_invariants()
    state.apply(UnfenceBroker(rid(), 1, owner, epoch))
    p = state.topics["t"].partitions[0]
    assert p.leader == owner


def test_no_unclean_election_unless_enabled() -> None:
    for unclean in (False, True):
        state = cluster(3)
        create(state, partitions=1, rf=2, unclean_leader_election_enable=str(unclean).lower())
        p = state.topics["t"].partitions[0]
        leader, follower = p.ar
        state.apply(
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
            )
        )
        state.apply(FenceBroker(rid(), 1, leader, epoch_of(state, leader)))
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
    ok = state.apply(
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
        )
    )
    assert ok.ok and ok.value.isr == shrink
    stale = state.apply(
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
        )
    )
    assert stale.error == ErrorCode.INVALID_UPDATE_VERSION
    follower = p.ar[1]
    not_leader = state.apply(
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
        )
    )
    assert not_leader.error == ErrorCode.NOT_LEADER_OR_FOLLOWER


def test_alter_partition_refuses_fenced_replica_joining() -> None:
    state = cluster(3)
    create(state, partitions=1)
    p = state.topics["t"].partitions[0]
    follower = p.ar[1]
    state.apply(FenceBroker(rid(), 1, follower, epoch_of(state, follower)))
    p = state.topics["t"].partitions[0]
    result = state.apply(
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
        )
    )
    assert result.error == ErrorCode.INELIGIBLE_REPLICA


def test_stale_controller_epoch_is_fenced() -> None:
    state = cluster(3)
    state.apply(BeginControllerEpoch(rid(), 5))
    result = state.apply(FenceBroker(rid(), 4, 1, epoch_of(state, 1)))
    assert result.error == ErrorCode.STALE_CONTROLLER_EPOCH
    assert not state.brokers[1].fenced


def test_controlled_shutdown_moves_leadership_and_preferred_election_moves_it_back() -> None:
    state = cluster(3)
    create(state, partitions=3)
    assert state.apply(ControlledShutdown(rid(), 1, epoch_of(state, 1))).ok
    assert all(p.leader != 1 for p in state.topics["t"].partitions)
    assert state.brokers[1].shutting_down
    # broker 1 restarts: new incarnation, unfenced, rejoins the ISRs, preferred election.
    epoch = state.apply(RegisterBroker(rid(), 1, "127.0.0.1", 9092, "", "inc-1b")).value
    state.apply(UnfenceBroker(rid(), 1, 1, epoch))
    tid = b"t".ljust(16, b"\0")
    for i, p in enumerate(state.topics["t"].partitions):
        r = state.apply(
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
            )
        )
        assert r.ok, r
    elected = state.apply(ElectLeaders(rid(), -1, True))
    assert elected.value == 1
    assert [p.leader for p in state.topics["t"].partitions] == [
        p.ar[0] for p in state.topics["t"].partitions
    ]
    state.check_invariants()


def test_new_incarnation_replaces_old_one_and_leaves_isrs() -> None:
    state = cluster(3)
    create(state, partitions=3)
    old_epoch = epoch_of(state, 2)
    new_epoch = state.apply(RegisterBroker(rid(), 2, "127.0.0.1", 9093, "", "inc-2b")).value
    assert new_epoch > old_epoch
    assert state.brokers[2].fenced
    assert all(2 not in p.isr for p in state.topics["t"].partitions)
    heartbeat_old = state.apply(UnfenceBroker(rid(), 1, 2, old_epoch))
    assert heartbeat_old.error == ErrorCode.STALE_BROKER_EPOCH


def test_delete_topic_and_change_sets() -> None:
    state = cluster(3)
    v0 = state.version
    create(state, "a")
    create(state, "b")
    assert state.changes_since(v0).topics == {"a", "b"}
    assert state.apply(DeleteTopic(rid(), "a")).ok
    assert "a" not in state.topics
    assert state.apply(DeleteTopic(rid(), "a")).error == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert state.changes_since(state.version) is not None
    assert not state.changes_since(state.version)


# ------------------------------------------------------------------ properties

broker_ids = st.integers(min_value=1, max_value=5)

command_strategy = st.one_of(
    st.tuples(st.just("register"), broker_ids, st.integers(0, 3)),
    st.tuples(st.just("fence"), broker_ids, st.just(0)),
    st.tuples(st.just("unfence"), broker_ids, st.just(0)),
    st.tuples(st.just("shutdown"), broker_ids, st.just(0)),
    st.tuples(st.just("create"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("delete"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("shrink"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("expand"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("preferred"), st.just(0), st.just(0)),
    st.tuples(st.just("epoch"), st.integers(1, 4), st.just(0)),
)


def to_command(state: MetadataState, step: tuple[str, int, int], n: int) -> Command | None:
    kind, a, b = step
    if kind == "register":
        return RegisterBroker(f"c{n}", a, "h", 9000 + a, f"r{a % 2}", f"inc-{a}-{b}")
    if kind in ("fence", "unfence", "shutdown"):
        broker = state.brokers.get(a)
        if broker is None:
            return None
        if kind == "shutdown":
            return ControlledShutdown(f"c{n}", a, broker.broker_epoch)
        cls = FenceBroker if kind == "fence" else UnfenceBroker
        return cls(f"c{n}", state.controller_epoch, a, broker.broker_epoch)
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
    if kind == "preferred":
        return ElectLeaders(f"c{n}", -1, True)
    return BeginControllerEpoch(f"c{n}", state.controller_epoch + a)


@settings(max_examples=150, deadline=None)
@given(st.lists(command_strategy, max_size=60))
def test_random_commands_keep_invariants_and_replay_deterministically(steps) -> None:
    state = MetadataState()
    commands: list[Command] = []
    for n, step in enumerate(steps):
        command = to_command(state, step, n)
        if command is None:
            continue
        commands.append(command)
        before = {(name, i): p for name, i, p in state.partitions()}
        topic_ids = {name: t.topic_id for name, t in state.topics.items()}
        state.apply(command)
        state.check_invariants()
        for name, index, p in state.partitions():
            assert set(p.osr) == set(p.ar) - set(p.isr)
            assert p.leader == NO_LEADER or p.leader in p.isr
            prev = before.get((name, index))
            if prev is None or topic_ids.get(name) != state.topics[name].topic_id:
                continue
            # Epochs never decrease.
            assert p.leader_epoch >= prev.leader_epoch
            assert p.partition_epoch >= prev.partition_epoch
            # Every change bumps the partition epoch; a leader change bumps the leader epoch.
            if p != prev:
                assert p.partition_epoch > prev.partition_epoch
            if p.leader != prev.leader:
                assert p.leader_epoch > prev.leader_epoch
            # No election outside the (previous) ISR unless unclean election is enabled.
            unclean = state.topics[name].config.unclean_leader_election_enable
            if p.leader not in (prev.leader, NO_LEADER) and not unclean:
                assert p.leader in prev.isr, (prev, p)
    # Replaying the same commands on a fresh state gives the same state.
    replica = MetadataState()
    for command in commands:
        replica.apply(command)
    assert replica.__dict__ == state.__dict__
    # The state survives pickling (pysyncobj snapshots) unchanged.
    restored = pickle.loads(pickle.dumps(state))
    assert restored.__dict__ == state.__dict__
