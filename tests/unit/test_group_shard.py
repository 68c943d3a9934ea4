"""The pure consumer-group state machine (`raftmq.broker.group_shard`): membership and
incremental rebalances (KIP-848), commits fenced by member epoch and ownership, timers,
and replay (records in, the same state out). Each test names the rule it checks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.broker import group_records
from raftmq.broker.assignors import assign
from raftmq.broker.group_records import GroupRecord
from raftmq.broker.group_shard import (
    HEARTBEAT_INTERVAL_MS,
    LEAVE_EPOCH,
    STATE_EMPTY,
    STATE_RECONCILING,
    STATE_STABLE,
    STATIC_LEAVE_EPOCH,
    CommitOffset,
    CommitRequest,
    GroupShard,
    HeartbeatRequest,
    HeartbeatResponse,
    mapping_catalog,
)
from raftmq.errors import ErrorCode

T0 = 1_000_000
WALL = 1_700_000_000_000
TP = tuple[str, int]


class Harness:
    """A shard whose records go through encode/decode and replay, as in the log; `log`
    keeps every record so a second shard can replay them."""

    def __init__(self, topics: dict[str, int] | None = None) -> None:
        self.shard = GroupShard(offsets_retention_ms=60_000)
        self.catalog_counts = dict(topics or {"t": 6})
        self.catalog = mapping_catalog(self.catalog_counts)
        self.log: list[tuple[bytes, bytes | None]] = []
        self.now = T0
        self.wall = WALL

    def write(self, records: list[GroupRecord]) -> None:
        for record in records:
            key, value = group_records.encode(record)
            self.log.append((key, value))
            self.shard.replay(group_records.decode(key, value))

    def beat(
        self,
        member: str,
        epoch: int,
        owned: set[TP] | frozenset[TP] = frozenset(),
        *,
        group: str = "g",
        topics: tuple[str, ...] = (),
        **kwargs: object,
    ) -> HeartbeatResponse:
        request = HeartbeatRequest(
            group,
            member,
            epoch,
            subscribed_topics=topics,
            owned=frozenset(owned),
            **kwargs,  # type: ignore[arg-type]
        )
        records, response = self.shard.heartbeat(
            request, now_ms=self.now, wall_ms=self.wall, catalog=self.catalog
        )
        self.write(records)
        return response

    def tick(self) -> None:
        self.write(self.shard.tick(now_ms=self.now, wall_ms=self.wall, catalog=self.catalog))

    def commit(self, member: str, epoch: int, *offsets: tuple[str, int, int], group: str = "g"):  # type: ignore[no-untyped-def]
        records, response = self.shard.commit(
            CommitRequest(
                group, member, epoch, tuple(CommitOffset(t, p, o) for t, p, o in offsets)
            ),
            wall_ms=self.wall,
            catalog=self.catalog,
        )
        self.write(records)
        return response


class Consumers:
    """Well-behaved members: each heartbeats with what it owns, and releases what it is
    told to revoke on its next heartbeat."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.epochs: dict[str, int] = {}
        self.owned: dict[str, set[TP]] = {}

    def join(self, member: str, **kwargs: object) -> HeartbeatResponse:
        kwargs.setdefault("topics", ("t",))
        response = self.h.beat(member, 0, **kwargs)  # type: ignore[arg-type]
        assert response.error is None, response.error
        self.epochs[member] = response.member_epoch
        self.owned[member] = set(response.assignment)
        return response

    def round(self) -> None:
        for member in sorted(self.epochs):
            response = self.h.beat(member, self.epochs[member], self.owned[member])
            assert response.error is None, response.error
            self.epochs[member] = response.member_epoch
            # Partitions not in the answer are revoked (released by the next heartbeat);
            # new ones are taken.
            self.owned[member] = set(response.assignment)

    def settle(self, rounds: int = 10) -> None:
        for _ in range(rounds):
            self.round()
        description = self.h.shard.describe("g")
        assert description is not None and description.state == STATE_STABLE, description

    def assert_disjoint_and_complete(self, partitions: int = 6) -> None:
        seen: list[TP] = [tp for owned in self.owned.values() for tp in owned]
        assert len(seen) == len(set(seen)), self.owned
        assert set(seen) == {("t", p) for p in range(partitions)}


# --- membership --------------------------------------------------------------------------


def test_three_members_share_six_partitions_without_overlap() -> None:
    h = Harness()
    c = Consumers(h)
    for m in ("a", "b", "c"):
        c.join(m)
        c.round()
    c.settle()
    c.assert_disjoint_and_complete()
    assert sorted(len(o) for o in c.owned.values()) == [2, 2, 2]


def test_a_partition_moves_only_after_its_old_owner_released_it() -> None:
    # KIP-848 reconciliation: revoke first, assign after release; never two owners.
    h = Harness()
    c = Consumers(h)
    c.join("a")
    c.settle()
    assert len(c.owned["a"]) == 6
    response = c.join("b")
    assert response.assignment == frozenset()  # a still holds everything
    # b asks again before a heard of the rebalance: still nothing.
    assert h.beat("b", c.epochs["b"], set()).assignment == frozenset()
    answer_a = h.beat("a", c.epochs["a"], c.owned["a"])
    kept = set(answer_a.assignment)
    assert len(kept) == 3  # a keeps three and must revoke three
    revoked = c.owned["a"] - kept
    # a has not released them yet (it lists them as owned): b still gets nothing.
    assert h.beat("b", c.epochs["b"], set()).assignment == frozenset()
    # a releases, then b gets exactly what a revoked.
    h.beat("a", answer_a.member_epoch, kept)
    assert set(h.beat("b", c.epochs["b"], set()).assignment) == revoked


def test_the_uniform_assignor_moves_as_little_as_possible() -> None:
    previous = {
        "a": frozenset(("t", p) for p in range(3)),
        "b": frozenset(("t", p) for p in range(3, 6)),
    }
    subs = {"a": frozenset({"t"}), "b": frozenset({"t"}), "c": frozenset({"t"})}
    target = assign("uniform", subs, {"t": 6}, previous)
    assert target["a"] <= previous["a"] and target["b"] <= previous["b"]
    assert sorted(len(v) for v in target.values()) == [2, 2, 2]


def test_range_gives_contiguous_ranges_per_topic() -> None:
    subs = {"a": frozenset({"t"}), "b": frozenset({"t"})}
    target = assign("range", subs, {"t": 5}, {})
    assert target == {
        "a": frozenset(("t", p) for p in (0, 1, 2)),
        "b": frozenset(("t", p) for p in (3, 4)),
    }


def test_a_leaving_member_frees_its_partitions_at_once() -> None:
    h = Harness()
    c = Consumers(h)
    for m in ("a", "b"):
        c.join(m)
    c.settle()
    assert h.beat("b", LEAVE_EPOCH).member_epoch == LEAVE_EPOCH
    del c.epochs["b"], c.owned["b"]
    c.round()
    assert len(c.owned["a"]) == 6


def test_a_member_whose_session_ends_is_evicted() -> None:
    h = Harness()
    c = Consumers(h)
    for m in ("a", "b"):
        c.join(m, session_timeout_ms=3_000)
    c.settle()
    for _ in range(15):  # a keeps heartbeating, b went silent
        h.now += 250
        response = h.beat("a", c.epochs["a"], c.owned["a"])
        c.epochs["a"], c.owned["a"] = response.member_epoch, set(response.assignment)
        h.tick()
    description = h.shard.describe("g")
    assert description is not None and [m.member_id for m in description.members] == ["a"]
    assert len(c.owned["a"]) == 6
    assert h.beat("b", c.epochs["b"], c.owned["b"]).error.code == ErrorCode.UNKNOWN_MEMBER_ID  # type: ignore[union-attr]


def test_a_member_that_does_not_revoke_in_time_is_evicted() -> None:
    h = Harness()
    c = Consumers(h)
    c.join("a", rebalance_timeout_ms=2_000)
    c.settle()
    c.join("b")
    answer = h.beat("a", c.epochs["a"], c.owned["a"])
    assert len(answer.assignment) == 3  # a is revoking three, and never releases them
    for _ in range(12):
        h.now += 250
        h.beat("a", answer.member_epoch, c.owned["a"])  # still lists all six
        h.beat("b", c.epochs["b"], set())
        h.tick()
    assert h.beat("a", answer.member_epoch, c.owned["a"]).error.code == ErrorCode.UNKNOWN_MEMBER_ID  # type: ignore[union-attr]
    assert len(h.beat("b", c.epochs["b"], set()).assignment) == 6


def test_a_static_member_restarting_keeps_its_partitions_without_a_rebalance() -> None:
    # KIP-345 / KIP-848: leave with -2, rejoin with the same instance id and a new member
    # id: same partitions, group epoch unchanged.
    h = Harness()
    c = Consumers(h)
    c.join("a", instance_id="host-a")
    c.join("b", instance_id="host-b")
    c.settle()
    before = h.shard.describe("g")
    assert before is not None
    assert h.beat("a", STATIC_LEAVE_EPOCH, instance_id="host-a").member_epoch == STATIC_LEAVE_EPOCH
    response = h.beat("a2", 0, topics=("t",), instance_id="host-a")
    after = h.shard.describe("g")
    assert after is not None and after.group_epoch == before.group_epoch
    assert set(response.assignment) == c.owned["a"]
    assert {m.member_id for m in after.members} == {"a2", "b"}
    # The old incarnation is fenced.
    assert h.beat("a", c.epochs["a"], c.owned["a"]).error.code == ErrorCode.UNKNOWN_MEMBER_ID  # type: ignore[union-attr]


def test_a_static_member_killed_and_restarted_takes_over_at_once() -> None:
    # A kill -9 sends no -2; the next incarnation with the same instance id still takes
    # the place (the instance id is the member's identity), with no rebalance.
    h = Harness()
    c = Consumers(h)
    c.join("a", instance_id="host-a")
    c.join("b")
    c.settle()
    epoch = h.shard.describe("g").group_epoch  # type: ignore[union-attr]
    response = h.beat("a-new", 0, topics=("t",), instance_id="host-a")
    assert set(response.assignment) == c.owned["a"]
    assert h.shard.describe("g").group_epoch == epoch  # type: ignore[union-attr]


def test_a_lost_answer_is_resent_for_the_previous_epoch() -> None:
    h = Harness()
    c = Consumers(h)
    c.join("a")
    c.settle()
    c.join("b")
    first = h.beat("a", c.epochs["a"], c.owned["a"])  # this answer is "lost"
    again = h.beat("a", c.epochs["a"], c.owned["a"])  # same old epoch
    assert again.error is None and again.member_epoch == first.member_epoch
    assert again.assignment == first.assignment
    assert h.beat("a", first.member_epoch + 5, set()).error.code == ErrorCode.FENCED_MEMBER_EPOCH  # type: ignore[union-attr]


def test_rejoining_with_epoch_zero_gives_up_what_it_held() -> None:
    h = Harness()
    c = Consumers(h)
    for m in ("a", "b"):
        c.join(m)
    c.settle()
    response = h.beat("a", 0, topics=("t",))  # a was fenced on its side, lost its partitions
    assert response.assignment <= frozenset(c.owned["a"])
    description = h.shard.describe("g")
    assert description is not None


def test_new_matching_topics_and_partitions_are_picked_up() -> None:
    h = Harness({"orders-eu": 2})
    c = Consumers(h)
    c.join("a", topics=(), subscribed_pattern="orders-.*")
    c.settle()
    assert c.owned["a"] == {("orders-eu", 0), ("orders-eu", 1)}
    h.catalog_counts["orders-us"] = 3
    h.catalog_counts["unrelated"] = 1
    h.tick()
    c.round()
    c.round()
    assert c.owned["a"] == {("orders-eu", 0), ("orders-eu", 1)} | {
        ("orders-us", p) for p in range(3)
    }


def test_bad_requests_get_clear_errors() -> None:
    h = Harness()
    assert h.beat("a", 0, topics=()).error.code == ErrorCode.INVALID_REQUEST  # type: ignore[union-attr]
    assert (
        h.beat("a", 0, topics=("t",), assignor="nope").error.code == ErrorCode.UNSUPPORTED_ASSIGNOR
    )  # type: ignore[union-attr]
    assert h.beat("a", 0, topics=("t",), group="").error.code == ErrorCode.INVALID_GROUP_ID  # type: ignore[union-attr]
    assert (
        h.beat("a", 0, topics=("t",), session_timeout_ms=10).error.code == ErrorCode.INVALID_REQUEST
    )  # type: ignore[union-attr]
    assert h.beat("a", 0, topics=(), subscribed_pattern="(").error.code == ErrorCode.INVALID_REQUEST  # type: ignore[union-attr]
    assert h.beat("x", 7).error.code == ErrorCode.UNKNOWN_MEMBER_ID  # type: ignore[union-attr]
    assert h.shard.groups == {}  # nothing was written


# --- commits ---------------------------------------------------------------------------


def test_commits_are_fenced_by_epoch_and_by_ownership() -> None:
    h = Harness()
    c = Consumers(h)
    for m in ("a", "b"):
        c.join(m)
    c.settle()
    mine = sorted(c.owned["a"])[0]
    theirs = sorted(c.owned["b"])[0]
    ok = h.commit("a", c.epochs["a"], (mine[0], mine[1], 10))
    assert ok.error is None and ok.partitions == {mine: None}
    zombie = h.commit("a", c.epochs["a"], (theirs[0], theirs[1], 99))
    assert zombie.partitions[theirs].code == ErrorCode.NOT_PARTITION_OWNER  # type: ignore[union-attr]
    assert (
        h.commit("a", c.epochs["a"] + 1, (mine[0], mine[1], 11)).error.code
        == ErrorCode.FENCED_MEMBER_EPOCH
    )  # type: ignore[union-attr]
    assert h.commit("nobody", 1, (mine[0], mine[1], 11)).error.code == ErrorCode.UNKNOWN_MEMBER_ID  # type: ignore[union-attr]
    assert h.shard.fetch_offsets("g", [mine, theirs]) == {
        mine: h.shard.groups["g"].offsets[mine],
        theirs: None,
    }
    assert h.shard.groups["g"].offsets[mine].offset == 10


def test_a_revoking_member_may_commit_until_it_released() -> None:
    h = Harness()
    c = Consumers(h)
    c.join("a")
    c.settle()
    c.join("b")
    answer = h.beat("a", c.epochs["a"], c.owned["a"])
    revoking = sorted(c.owned["a"] - set(answer.assignment))[0]
    assert (
        h.commit("a", answer.member_epoch, (revoking[0], revoking[1], 5)).partitions[revoking]
        is None
    )
    h.beat("a", answer.member_epoch, set(answer.assignment))  # released
    late = h.commit("a", answer.member_epoch, (revoking[0], revoking[1], 6))
    assert late.partitions[revoking].code == ErrorCode.NOT_PARTITION_OWNER  # type: ignore[union-attr]
    assert h.shard.groups["g"].offsets[revoking].offset == 5  # never moved by the late commit


def test_a_stale_commit_never_moves_an_offset_back() -> None:
    # kafka-go #1308: a commit of an old generation moved the offset backwards.
    h = Harness()
    c = Consumers(h)
    c.join("a")
    c.settle()
    tp = sorted(c.owned["a"])[0]
    old_epoch = c.epochs["a"]
    h.commit("a", old_epoch, (tp[0], tp[1], 50))
    for newcomer in ("b", "c"):  # two rebalances: a's old epoch is not even the previous
        c.join(newcomer)
        c.settle()
    assert c.epochs["a"] > old_epoch + 1 and tp in c.owned["a"]
    stale = h.commit("a", old_epoch, (tp[0], tp[1], 10))
    assert stale.error is not None and stale.error.code == ErrorCode.STALE_MEMBER_EPOCH
    assert h.shard.groups["g"].offsets[tp].offset == 50


def test_admin_commits_only_while_the_group_is_empty() -> None:
    h = Harness()
    fresh = h.commit("", -1, ("t", 0, 3), group="new")
    assert fresh.error is None and h.shard.groups["new"].offsets[("t", 0)].offset == 3
    c = Consumers(h)
    c.join("a")
    assert h.commit("", -1, ("t", 0, 3)).error.code == ErrorCode.NON_EMPTY_GROUP  # type: ignore[union-attr]
    bad = h.commit("", -1, ("t", 0, -5), ("nope", 0, 1), group="new")
    assert bad.partitions[("t", 0)].code == ErrorCode.INVALID_COMMIT_OFFSET  # type: ignore[union-attr]
    assert bad.partitions[("nope", 0)].code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION  # type: ignore[union-attr]


def test_offsets_expire_after_the_group_was_empty_for_the_retention() -> None:
    h = Harness()
    c = Consumers(h)
    c.join("a")
    c.settle()
    tp = sorted(c.owned["a"])[0]
    h.commit("a", c.epochs["a"], (tp[0], tp[1], 7))
    h.beat("a", LEAVE_EPOCH)
    assert h.shard.describe("g").state == STATE_EMPTY  # type: ignore[union-attr]
    h.wall += 30_000
    h.tick()
    assert "g" in h.shard.groups
    h.wall += 31_000
    h.tick()
    assert "g" not in h.shard.groups


def test_only_empty_groups_are_deleted() -> None:
    h = Harness()
    c = Consumers(h)
    c.join("a")
    records, error = h.shard.delete("g")
    assert records == [] and error is not None and error.code == ErrorCode.NON_EMPTY_GROUP
    h.beat("a", LEAVE_EPOCH)
    records, error = h.shard.delete("g")
    assert error is None
    h.write(records)
    assert "g" not in h.shard.groups
    assert h.shard.delete("g")[1].code == ErrorCode.GROUP_ID_NOT_FOUND  # type: ignore[union-attr]


# --- replay -------------------------------------------------------------------------------


def replayed(h: Harness) -> GroupShard:
    other = GroupShard()
    for key, value in h.log:
        other.replay(group_records.decode(key, value))
    return other


def loaded(log: list[tuple[bytes, bytes | None]]) -> GroupShard:
    """A new coordinator's shard built from `log` as its load reads it."""
    other = GroupShard()
    for key, value in log:
        other.load(group_records.decode(key, value))
    other.loaded(now_ms=T0)
    return other


def compacted(
    log: list[tuple[bytes, bytes | None]], *, drop_tombstones: bool
) -> list[tuple[bytes, bytes | None]]:
    """What the log cleaner leaves of `log`: the latest record of each key in offset
    order, tombstones too until `delete.retention.ms` has passed."""
    last = {key: i for i, (key, _) in enumerate(log)}
    return [
        (key, value)
        for i, (key, value) in enumerate(log)
        if last[key] == i and not (drop_tombstones and value is None)
    ]


def test_a_compacted_empty_group_loads() -> None:
    """The order compaction leaves is no history: the leave's GroupValue comes after the
    group's last AssignmentValue once the older GroupValue is gone (a load that checked
    the invariants per record tripped on it and never finished)."""
    h = Harness()
    c = Consumers(h)
    c.join("a")
    c.join("b")
    c.settle()
    h.commit("a", c.epochs["a"], ("t", sorted(c.owned["a"])[0][1], 7))
    h.beat("a", LEAVE_EPOCH)
    h.beat("b", LEAVE_EPOCH)
    assert h.shard.describe("g") is not None  # empty, with its offsets
    for drop in (False, True):
        assert_same(h.shard, loaded(compacted(h.log, drop_tombstones=drop)))


def assert_same(a: GroupShard, b: GroupShard) -> None:
    assert {g: a.describe(g) for g in a.groups} == {g: b.describe(g) for g in b.groups}
    assert {g: a.fetch_offsets(g, None) for g in a.groups} == {
        g: b.fetch_offsets(g, None) for g in b.groups
    }


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_random_membership_keeps_one_owner_per_partition_and_replays_identically(seed: int) -> None:
    rng = random.Random(seed)
    h = Harness({"t": rng.randint(1, 8), "u": rng.randint(1, 4)})
    epochs: dict[str, int] = {}
    owned: dict[str, set[TP]] = {}
    for _ in range(60):
        action = rng.random()
        member = rng.choice("abcde")
        if action < 0.2 and member not in epochs:
            r = h.beat(member, 0, topics=tuple(rng.sample(["t", "u"], rng.randint(1, 2))))
            if r.error is None:
                epochs[member], owned[member] = r.member_epoch, set(r.assignment)
        elif action < 0.3 and member in epochs:
            h.beat(member, LEAVE_EPOCH)
            del epochs[member], owned[member]
        elif action < 0.85 and member in epochs:
            r = h.beat(member, epochs[member], owned[member])
            if r.error is None:
                epochs[member], owned[member] = r.member_epoch, set(r.assignment)
            else:
                del epochs[member], owned[member]
        elif member in epochs and owned[member]:
            tp = rng.choice(sorted(owned[member]))
            h.commit(member, epochs[member], (tp[0], tp[1], rng.randint(0, 100)))
        else:
            h.now += rng.choice((100, 2_000, 11_000))
            h.tick()
            for gone in [m for m in epochs if m not in h.shard.groups.get("g", _EMPTY).members]:
                del epochs[gone], owned[gone]
        # What the members believe they own never overlaps (the shard asserts its own
        # view on every replay).
        claimed = [tp for o in owned.values() for tp in o]
        assert len(claimed) == len(set(claimed))
    assert_same(h.shard, replayed(h))
    assert_same(h.shard, loaded(h.log))
    for drop in (False, True):
        assert_same(h.shard, loaded(compacted(h.log, drop_tombstones=drop)))
    # Liveness: with the faults over, well-behaved members converge to a stable group
    # that owns every partition of what they subscribe to (a rebalance never loops).
    for _ in range(2 * len(epochs) + 4):
        for member in sorted(epochs):
            r = h.beat(member, epochs[member], owned[member])
            assert r.error is None, r.error
            epochs[member], owned[member] = r.member_epoch, set(r.assignment)
    group = h.shard.groups.get("g")
    if epochs and group is not None:
        assert group.state() == STATE_STABLE
        subscribed = {t for m in group.members.values() for t in m.spec.subscribed_topics}
        expected = {(t, p) for t in subscribed for p in range(h.catalog_counts[t])}
        assert {tp for o in owned.values() for tp in o} == expected


class _NoGroup:
    members: dict[str, object] = {}


_EMPTY = _NoGroup()


def test_records_round_trip_and_unknown_versions_are_refused() -> None:
    h = Harness()
    c = Consumers(h)
    c.join("a", instance_id="i", client_id="cli")
    c.settle()
    h.commit("a", c.epochs["a"], ("t", 0, 3))
    for key, value in h.log:
        record = group_records.decode(key, value)
        assert group_records.encode(record) == (key, value)
    with pytest.raises(group_records.GroupRecordError):
        group_records.decode(b'{"t":"o","g":"g","tp":["t",0],"v":2}', b"{}")
    with pytest.raises(group_records.GroupRecordError):
        group_records.decode(b"not json", None)


def test_heartbeat_interval_and_states() -> None:
    h = Harness()
    c = Consumers(h)
    response = c.join("a")
    assert response.heartbeat_interval_ms == HEARTBEAT_INTERVAL_MS
    c.join("b")
    assert h.shard.describe("g").state == STATE_RECONCILING  # type: ignore[union-attr]
    c.settle()
    assert h.shard.describe("g").state == STATE_STABLE  # type: ignore[union-attr]
