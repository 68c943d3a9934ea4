"""Kafka's classic group protocol on the pure shard (`raftmq.broker.classic_group` inside
`GroupShard`): join rounds, leader election, protocol selection, the rebalance timeout,
static members (KIP-345), member ids (KIP-394), commits fenced by generation and by the
synced assignment, and replay/load of the classic snapshot. Each test names the rule it
checks; the behaviour follows Kafka's GroupCoordinator / ClassicGroup."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.broker import group_records
from raftmq.broker.classic_group import (
    JOIN,
    STATE_COMPLETING_REBALANCE,
    STATE_EMPTY,
    STATE_PREPARING_REBALANCE,
    STATE_STABLE,
    BeatRequest,
    JoinRequest,
    JoinResponse,
    LeaveMember,
    LeaveRequest,
    SyncRequest,
    SyncResponse,
)
from raftmq.broker.consumer_protocol import (
    decode_assignment,
    decode_subscription_topics,
    encode_assignment,
)
from raftmq.broker.group_records import ClassicGroupKey, GroupRecord
from raftmq.broker.group_shard import (
    ClassicCommitRequest,
    ClassicResult,
    CommitOffset,
    CommitResponse,
    GroupShard,
    HeartbeatRequest,
    mapping_catalog,
)
from raftmq.errors import ErrorCode, RaftmqError

T0 = 1_000_000
WALL = 1_700_000_000_000
DELAY_MS = 300
TP = tuple[str, int]


def subscription(*topics: str) -> bytes:
    """A ConsumerProtocolSubscription v0 (what kafka-python sends)."""
    out = struct.pack(">hi", 0, len(topics))
    for t in topics:
        out += struct.pack(">h", len(t)) + t.encode()
    return out + struct.pack(">i", -1)


def range_assign(members: list[str], partitions: int, topic: str = "t") -> dict[str, bytes]:
    """The client-side leader's job: a range assignment, encoded."""
    ordered = sorted(members)
    per, extra = divmod(partitions, len(ordered))
    out, start = {}, 0
    for i, m in enumerate(ordered):
        n = per + (1 if i < extra else 0)
        out[m] = encode_assignment(frozenset((topic, p) for p in range(start, start + n)))
        start += n
    return out


class Harness:
    """A shard whose records go through encode/decode and replay, as in the log; parked
    requests' answers land in `inbox`."""

    def __init__(self, partitions: int = 4) -> None:
        self.shard = GroupShard(offsets_retention_ms=60_000, initial_rebalance_delay_ms=DELAY_MS)
        self.partitions = partitions
        self.catalog = mapping_catalog({"t": partitions})
        self.log: list[tuple[bytes, bytes | None]] = []
        self.now = T0
        self.wall = WALL
        self.inbox: dict[tuple[str, str], JoinResponse | SyncResponse] = {}
        self._ids = 0

    def write(self, records: list[GroupRecord]) -> None:
        for record in records:
            key, value = group_records.encode(record)
            self.log.append((key, value))
            self.shard.replay(group_records.decode(key, value))

    def take(self, result: ClassicResult) -> ClassicResult:  # type: ignore[type-arg]
        self.write(result.records)
        for d in result.deliveries:
            self.inbox[(d.member_id, d.kind)] = d.response
        return result

    def join(
        self,
        member_id: str = "",
        *,
        instance: str = "",
        protocols: tuple[tuple[str, bytes], ...] = (("range", subscription("t")),),
        v4: bool = True,
        session_ms: int = 10_000,
        rebalance_ms: int = 5_000,
        protocol_type: str = "consumer",
    ) -> ClassicResult[JoinResponse]:
        self._ids += 1
        request = JoinRequest(
            "g",
            member_id,
            protocol_type,
            protocols,
            session_ms,
            rebalance_ms,
            instance_id=instance,
            client_id="cli",
            require_known_member_id=v4,
            new_member_id="" if member_id else f"m{self._ids}",
        )
        return self.take(self.shard.classic_join(request, now_ms=self.now, wall_ms=self.wall))

    def join_new(self, **kwargs: object) -> str:
        """A new member through KIP-394's two steps (one for a static member, which
        KIP-394 exempts); returns its (parked) member id."""
        if kwargs.get("instance"):
            result = self.join(**kwargs)  # type: ignore[arg-type]
            assert result.response is None
            return result.wait_member_id
        first = self.join(**kwargs).response  # type: ignore[arg-type]
        assert first is not None and first.error is not None
        assert first.error.code == ErrorCode.MEMBER_ID_REQUIRED
        second = self.join(first.member_id, **kwargs)  # type: ignore[arg-type]
        assert second.response is None and second.wait_member_id == first.member_id
        return first.member_id

    def sync(
        self, member: str, generation: int, assignments: dict[str, bytes] | None = None
    ) -> ClassicResult[SyncResponse]:
        request = SyncRequest(
            "g", member, generation, assignments=tuple((assignments or {}).items())
        )
        return self.take(self.shard.classic_sync(request, now_ms=self.now))

    def beat(self, member: str, generation: int, instance: str = "") -> RaftmqError | None:
        return self.shard.classic_heartbeat(
            BeatRequest("g", member, generation, instance), now_ms=self.now
        )

    def leave(self, *members: LeaveMember) -> ClassicResult:  # type: ignore[type-arg]
        return self.take(
            self.shard.classic_leave(LeaveRequest("g", members), now_ms=self.now, wall_ms=self.wall)
        )

    def commit(
        self, member: str, generation: int, *offsets: tuple[str, int, int], instance: str = ""
    ) -> CommitResponse:
        records, response = self.shard.classic_commit(
            ClassicCommitRequest(
                "g",
                member,
                generation,
                tuple(CommitOffset(t, p, o) for t, p, o in offsets),
                instance,
            ),
            now_ms=self.now,
            wall_ms=self.wall,
            catalog=self.catalog,
        )
        self.write(records)
        return response

    def advance(self, ms: int) -> None:
        self.now += ms
        self.wall += ms
        self.take(self.shard.classic_tick(now_ms=self.now, wall_ms=self.wall))
        self.write(self.shard.tick(now_ms=self.now, wall_ms=self.wall, catalog=self.catalog))

    def joined(self, member: str) -> JoinResponse:
        response = self.inbox.pop((member, JOIN))
        assert isinstance(response, JoinResponse)
        assert response.error is None, response.error
        return response

    def group(self):  # type: ignore[no-untyped-def]
        group = self.shard.groups["g"].classic
        assert group is not None
        return group


def wait_initial_join(h: Harness) -> None:
    """Members that came together: the first delay ends with new members added, so one
    more (Kafka's InitialDelayedJoin) before the round completes."""
    h.advance(DELAY_MS)
    h.advance(DELAY_MS)


def stable_group(h: Harness, n: int) -> tuple[list[str], int, dict[str, bytes]]:
    """n members joined, synced by the leader with a range assignment."""
    members = [h.join_new() for _ in range(n)]
    wait_initial_join(h)
    answers = {m: h.joined(m) for m in members}
    generation = answers[members[0]].generation_id
    leader = answers[members[0]].leader_id
    assert answers[leader].members, "the leader gets every member's metadata"
    assignments = range_assign([j.member_id for j in answers[leader].members], h.partitions)
    for m in members:
        if m != leader:
            assert h.sync(m, generation).response is None  # waits for the leader
    result = h.sync(leader, generation, assignments)
    assert result.response is not None and result.response.error is None
    for m in members:
        if m != leader:
            delivered = h.inbox.pop((m, "sync"))
            assert isinstance(delivered, SyncResponse) and delivered.assignment == assignments[m]
    assert h.group().state == STATE_STABLE
    return members, generation, assignments


# ------------------------------------------------------------------ joins


def test_kip394_v4_joins_need_a_member_id_and_v3_gets_one_directly() -> None:
    h = Harness()
    first = h.join().response
    assert first is not None and first.error is not None
    assert first.error.code == ErrorCode.MEMBER_ID_REQUIRED and first.member_id
    # v0-v3: assigned and parked in one step.
    result = h.join(v4=False)
    assert result.response is None and result.wait_member_id
    assert result.wait_member_id in h.group().members


def test_the_first_round_waits_the_initial_delay_then_elects_a_leader() -> None:
    """group.initial.rebalance.delay.ms: a new group waits for more members."""
    h = Harness()
    a = h.join_new()
    h.advance(DELAY_MS // 2)
    b = h.join_new()
    assert h.group().state == STATE_PREPARING_REBALANCE and not h.inbox
    h.advance(DELAY_MS)  # a member came during the delay: one more delay
    h.advance(DELAY_MS)
    ja, jb = h.joined(a), h.joined(b)
    assert ja.generation_id == jb.generation_id == 1
    assert ja.leader_id == jb.leader_id == a
    assert {m.member_id for m in ja.members} == {a, b} and jb.members == ()
    assert ja.protocol_name == "range"
    assert h.group().state == STATE_COMPLETING_REBALANCE


def test_the_protocol_is_one_every_member_supports_and_most_prefer() -> None:
    h = Harness()
    meta = subscription("t")
    a = h.join_new(protocols=(("roundrobin", meta), ("range", meta)))
    b = h.join_new(protocols=(("range", meta), ("roundrobin", meta)))
    c = h.join_new(protocols=(("range", meta),))
    wait_initial_join(h)
    assert {h.joined(m).protocol_name for m in (a, b, c)} == {"range"}
    # A member that supports none of the group's protocols is refused.
    refused = h.join(protocols=(("sticky", meta),)).response
    assert refused is not None and refused.error is not None
    assert refused.error.code == ErrorCode.INCONSISTENT_GROUP_PROTOCOL


def test_two_members_split_the_partitions_and_heartbeat() -> None:
    h = Harness()
    members, generation, assignments = stable_group(h, 2)
    owned = [decode_assignment(assignments[m]) for m in members]
    assert owned[0] is not None and owned[1] is not None
    assert not owned[0] & owned[1] and len(owned[0] | owned[1]) == 4
    for m in members:
        assert h.beat(m, generation) is None
    error = h.beat(members[0], generation - 1)
    assert error is not None and error.code == ErrorCode.ILLEGAL_GENERATION
    error = h.beat("nobody", generation)
    assert error is not None and error.code == ErrorCode.UNKNOWN_MEMBER_ID


def test_a_new_member_starts_a_round_that_heartbeats_report() -> None:
    h = Harness()
    (a, b), generation, _ = stable_group(h, 2)
    c = h.join_new()
    error = h.beat(a, generation)
    assert error is not None and error.code == ErrorCode.REBALANCE_IN_PROGRESS
    # The others rejoin; the round completes once all did, without waiting.
    assert h.join(a).response is None
    last = h.join(b).response  # the last to rejoin is answered at once
    assert last is not None and last.error is None
    answers = {m: h.joined(m) for m in (a, c)}
    assert {j.generation_id for j in (*answers.values(), last)} == {generation + 1}


def test_the_rebalance_timeout_removes_a_member_that_did_not_rejoin() -> None:
    h = Harness()
    (a, b), generation, _ = stable_group(h, 2)
    h.leave(LeaveMember("nobody"))  # unknown: nothing changes
    assert h.join(a, protocols=(("range", subscription("t", "u")),)).response is None
    h.advance(4_000)
    assert (a, JOIN) not in h.inbox  # b's session still runs: the round waits
    assert h.beat(b, generation) is not None  # REBALANCE_IN_PROGRESS; b does not rejoin
    h.advance(1_500)  # past a's rebalance timeout of 5 s
    ja = h.joined(a)
    assert ja.generation_id == generation + 1 and ja.leader_id == a
    assert [m.member_id for m in ja.members] == [a]
    error = h.beat(b, generation)
    assert error is not None and error.code == ErrorCode.UNKNOWN_MEMBER_ID


def test_a_silent_member_is_evicted_after_its_session() -> None:
    h = Harness()
    (a, b), generation, _ = stable_group(h, 2)
    for _ in range(12):
        h.advance(1_000)
        assert h.beat(a, generation) in (None,) or h.group().state != STATE_STABLE
    assert b not in h.group().members
    assert h.group().state == STATE_PREPARING_REBALANCE


def test_a_member_that_never_syncs_is_removed_after_the_rebalance_timeout() -> None:
    h = Harness()
    a, b = h.join_new(), h.join_new()
    wait_initial_join(h)
    ja, _ = h.joined(a), h.joined(b)
    assert h.sync(b, ja.generation_id).response is None  # b waits; the leader a never syncs
    h.advance(5_001)
    waiting = h.inbox.pop((b, "sync"))
    assert waiting.error is not None and waiting.error.code == ErrorCode.REBALANCE_IN_PROGRESS
    assert a not in h.group().members


def test_the_last_member_leaving_empties_the_group_at_a_new_generation() -> None:
    h = Harness()
    (a, b), generation, _ = stable_group(h, 2)
    h.leave(LeaveMember(a))
    h.leave(LeaveMember(b))
    group = h.group()
    assert group.state == STATE_EMPTY and group.generation_id == generation + 1
    assert group.empty_since_ms == h.wall


# ------------------------------------------------------------------ static members


def test_a_static_member_restarting_keeps_its_assignment_without_a_rebalance() -> None:
    """KIP-345: a known instance id joining with no member id replaces its old id."""
    h = Harness()
    a = h.join_new(instance="i-a")
    b = h.join_new(instance="i-b")
    wait_initial_join(h)
    ja, _ = h.joined(a), h.joined(b)
    gen = ja.generation_id
    assignments = range_assign([a, b], 4)
    h.sync(b, gen)
    h.sync(a, gen, assignments)
    h.inbox.clear()
    restarted = h.join(instance="i-b").response  # static: no MEMBER_ID_REQUIRED
    assert restarted is not None and restarted.error is None
    new_b = restarted.member_id
    assert new_b != b and restarted.generation_id == gen and restarted.leader_id == a
    assert h.group().state == STATE_STABLE  # no rebalance
    synced = h.sync(new_b, gen).response
    assert synced is not None and synced.assignment == assignments[b]
    # The old incarnation is fenced.
    error = h.beat(b, gen, instance="i-b")
    assert error is not None and error.code == ErrorCode.FENCED_INSTANCE_ID
    response = h.commit(b, gen, ("t", 2, 5), instance="i-b")
    assert response.error is not None and response.error.code == ErrorCode.FENCED_INSTANCE_ID
    # The snapshot names the new member id: a new coordinator fences the old one too.
    other = loaded(h.log)
    assert set(other.groups["g"].classic.members) == {a, new_b}  # type: ignore[union-attr]


def test_a_static_leader_restarting_is_told_to_skip_the_assignment() -> None:
    h = Harness()
    a = h.join_new(instance="i-a")
    wait_initial_join(h)
    gen = h.joined(a).generation_id
    h.sync(a, gen, range_assign([a], 4))
    restarted = h.join(instance="i-a").response
    assert restarted is not None and restarted.skip_assignment
    assert restarted.leader_id == restarted.member_id and restarted.members


# ------------------------------------------------------------------ commits


def test_commits_are_fenced_by_generation_member_and_ownership() -> None:
    h = Harness()
    (a, b), gen, assignments = stable_group(h, 2)
    mine = sorted(decode_assignment(assignments[a]) or ())
    theirs = sorted(decode_assignment(assignments[b]) or ())
    ok = h.commit(a, gen, (mine[0][0], mine[0][1], 10))
    assert ok.error is None and ok.partitions[mine[0]] is None
    zombie = h.commit(a, gen, (theirs[0][0], theirs[0][1], 99))
    assert zombie.partitions[theirs[0]].code == ErrorCode.NOT_PARTITION_OWNER  # type: ignore[union-attr]
    stale = h.commit(a, gen - 1, (mine[0][0], mine[0][1], 11))
    assert stale.error is not None and stale.error.code == ErrorCode.ILLEGAL_GENERATION
    unknown = h.commit("ghost", gen, (mine[0][0], mine[0][1], 11))
    assert unknown.error is not None and unknown.error.code == ErrorCode.UNKNOWN_MEMBER_ID
    admin = h.commit("", -1, ("t", 0, 1))
    assert admin.error is not None and admin.error.code == ErrorCode.UNKNOWN_MEMBER_ID
    assert h.shard.fetch_offsets("g", None)[mine[0]].offset == 10  # type: ignore[union-attr]
    assert theirs[0] not in h.shard.fetch_offsets("g", None)


def test_commits_wait_out_the_sync_but_pass_while_preparing() -> None:
    """Kafka: REBALANCE_IN_PROGRESS while completing; an eager member commits what it
    is about to give up while the next round is being prepared."""
    h = Harness()
    (a, b), gen, assignments = stable_group(h, 2)
    tp = sorted(decode_assignment(assignments[a]) or ())[0]
    h.join_new()  # preparing: a commits at its generation
    assert h.commit(a, gen, (tp[0], tp[1], 3)).error is None
    h.join(a)
    h.join(b)
    assert h.group().state == STATE_COMPLETING_REBALANCE
    error = h.commit(a, gen + 1, (tp[0], tp[1], 4)).error
    assert error is not None and error.code == ErrorCode.REBALANCE_IN_PROGRESS


def test_a_revoked_partition_no_one_owns_yet_may_still_be_committed() -> None:
    """Cooperative rebalancing commits what it revokes after the sync that revoked it."""
    h = Harness()
    (a, b), gen, assignments = stable_group(h, 2)
    tp = sorted(decode_assignment(assignments[a]) or ())[0]
    h.join(a)
    h.join(b)
    ja = h.joined(a)
    leader = ja.leader_id
    other = b if leader == a else a
    everything = frozenset(("t", p) for p in range(4))
    # The new assignment gives a's partition to nobody (cooperative first round).
    h.sync(other, gen + 1)
    h.sync(leader, gen + 1, {a: b"", b: encode_assignment(everything - {tp})})
    assert h.commit(a, gen + 1, (tp[0], tp[1], 8)).error is None
    assert h.shard.fetch_offsets("g", [tp])[tp].offset == 8  # type: ignore[union-attr]


def test_an_admin_commit_is_allowed_only_without_members() -> None:
    h = Harness()
    assert h.commit("", -1, ("t", 1, 7)).partitions[("t", 1)] is None
    stale = h.commit("someone", 3, ("t", 1, 7))
    assert stale.error is not None and stale.error.code == ErrorCode.UNKNOWN_MEMBER_ID


# ------------------------------------------------------------------ kinds


def test_a_group_is_of_one_kind_while_it_has_members() -> None:
    h = Harness()
    stable_group(h, 1)
    records, native = h.shard.heartbeat(
        HeartbeatRequest("g", "n1", 0, subscribed_topics=("t",)),
        now_ms=h.now,
        wall_ms=h.wall,
        catalog=h.catalog,
    )
    assert native.error is not None and native.error.code == ErrorCode.GROUP_ID_NOT_FOUND
    assert records == []
    # A native group with members refuses a classic join.
    h2 = Harness()
    records, _ = h2.shard.heartbeat(
        HeartbeatRequest("g", "n1", 0, subscribed_topics=("t",)),
        now_ms=h2.now,
        wall_ms=h2.wall,
        catalog=h2.catalog,
    )
    h2.write(records)
    refused = h2.join(v4=False).response
    assert refused is not None and refused.error is not None
    assert refused.error.code == ErrorCode.INCONSISTENT_GROUP_PROTOCOL


def test_an_empty_classic_group_becomes_a_consumer_group() -> None:
    h = Harness()
    (a,), gen, _ = stable_group(h, 1)
    h.commit(a, gen, ("t", 0, 5))
    h.leave(LeaveMember(a))
    records, response = h.shard.heartbeat(
        HeartbeatRequest("g", "n1", 0, subscribed_topics=("t",)),
        now_ms=h.now,
        wall_ms=h.wall,
        catalog=h.catalog,
    )
    assert response.error is None
    assert GroupRecord(ClassicGroupKey("g"), None) in records
    h.write(records)
    assert h.shard.groups["g"].classic is None
    assert h.shard.fetch_offsets("g", [("t", 0)])[("t", 0)].offset == 5  # type: ignore[union-attr]
    assert_same(h.shard, loaded(h.log))


def test_describe_and_list_show_the_classic_group() -> None:
    h = Harness()
    (a, b), gen, assignments = stable_group(h, 2)
    d = h.shard.describe("g")
    assert d is not None and d.state == STATE_STABLE and d.assignor == "classic:range"
    assert d.group_epoch == gen
    assert {m.member_id: m.assigned for m in d.members} == {
        m: decode_assignment(assignments[m]) for m in (a, b)
    }
    assert all(m.subscribed_topics == ("t",) for m in d.members)
    k = h.shard.kafka_describe("g")
    assert k is not None and k.state == "Stable" and k.protocol_type == "consumer"
    assert {m.member_id: m.assignment for m in k.members} == assignments
    [listing] = h.shard.group_listings()
    assert (listing.state, listing.group_type, listing.protocol_type) == (
        "Stable",
        "classic",
        "consumer",
    )


def test_a_member_id_never_used_leaves_no_group_behind() -> None:
    h = Harness()
    h.join()  # MEMBER_ID_REQUIRED, never followed up
    assert "g" in h.shard.groups
    h.advance(10_001)
    h.advance(100)
    assert "g" not in h.shard.groups


# ------------------------------------------------------------------ records, load


def loaded(log: list[tuple[bytes, bytes | None]]) -> GroupShard:
    other = GroupShard(initial_rebalance_delay_ms=DELAY_MS)
    for key, value in log:
        other.load(group_records.decode(key, value))
    other.loaded(now_ms=T0)
    return other


def compacted(
    log: list[tuple[bytes, bytes | None]], *, drop: bool
) -> list[tuple[bytes, bytes | None]]:
    last = {key: i for i, (key, _) in enumerate(log)}
    return [(k, v) for i, (k, v) in enumerate(log) if last[k] == i and not (drop and v is None)]


def assert_same(a: GroupShard, b: GroupShard) -> None:
    def view(s: GroupShard) -> dict[str, object]:
        out: dict[str, object] = {}
        for g, group in s.groups.items():
            snap = group.classic.snapshot() if group.classic is not None else None
            out[g] = (s.describe(g), snap, s.fetch_offsets(g, None))
        return out

    assert view(a) == view(b)


def test_old_records_decode_unchanged_and_the_classic_record_round_trips() -> None:
    """Existing keys and values (as written before classic groups) read the same."""
    old = [
        (
            b'{"g":"g","t":"o","tp":["t",0],"v":1}',
            b'{"leader_epoch":-1,"metadata":"","offset":3,"ts":5,"v":1}',
        ),
        (b'{"g":"g","t":"g","v":1}', b'{"empty_since":-1,"epoch":2,"v":1}'),
        (
            b'{"g":"g","m":"a","t":"c","v":1}',
            b'{"assigned":{"t":[0,1]},"epoch":3,"previous_epoch":2,"revoking":{},"v":1}',
        ),
    ]
    for key, value in old:
        assert group_records.encode(group_records.decode(key, value)) == (key, value)
    h = Harness()
    stable_group(h, 2)
    classic = [(k, v) for k, v in h.log if b'"t":"k"' in k]
    assert classic
    for key, value in classic:
        assert group_records.encode(group_records.decode(key, value)) == (key, value)


def test_a_new_coordinator_continues_at_the_same_generation() -> None:
    h = Harness()
    (a, _), gen, assignments = stable_group(h, 2)
    tp = sorted(decode_assignment(assignments[a]) or ())[0]
    h.commit(a, gen, (tp[0], tp[1], 42))
    other = loaded(compacted(h.log, drop=True))
    assert_same(h.shard, other)
    assert other.classic_heartbeat(BeatRequest("g", a, gen), now_ms=T0) is None
    records, response = other.classic_commit(
        ClassicCommitRequest("g", a, gen, (CommitOffset(tp[0], tp[1], 43),)),
        now_ms=T0,
        wall_ms=WALL,
        catalog=h.catalog,
    )
    assert response.error is None and records


def test_helpers_decode_the_consumer_protocol() -> None:
    assert decode_subscription_topics(subscription("b", "a")) == ("a", "b")
    parts = frozenset({("t", 0), ("t", 3), ("u", 1)})
    for version in range(4):
        assert decode_assignment(encode_assignment(parts, version=version)) == parts
    assert decode_assignment(b"") == frozenset()
    assert decode_assignment(b"\x00\x00\x7f\xff\xff\xff") is None  # a count past its bytes
    assert decode_subscription_topics(b"\x00") is None


# ------------------------------------------------------------------ random members


class Client:
    """A well-behaved classic consumer: joins (KIP-394), syncs, heartbeats, commits what
    it owns; the leader assigns by range. `owned`/`generation` are what it was told."""

    def __init__(self, h: Harness, name: str) -> None:
        self.h = h
        self.name = name
        self.member_id = ""
        self.generation = -1
        self.owned: frozenset[TP] = frozenset()
        self.phase = "out"  # out, joining, syncing, stable

    def step(self) -> None:
        h = self.h
        if self.phase == "out":
            r = h.join(self.member_id, instance=self.name if self.name < "c" else "")
            resp = r.response
            if resp is not None and resp.error is not None:
                if resp.error.code == ErrorCode.MEMBER_ID_REQUIRED:
                    self.member_id = resp.member_id
                else:
                    self.member_id = ""
                return
            if resp is not None:
                self._joined(resp)
            else:
                self.member_id = r.wait_member_id
                self.phase = "joining"
        elif self.phase == "joining":
            got = h.inbox.pop((self.member_id, JOIN), None)
            if isinstance(got, JoinResponse):
                if got.error is not None:
                    self._reset(got.error)
                else:
                    self._joined(got)
        elif self.phase == "syncing":
            got = h.inbox.pop((self.member_id, "sync"), None)
            if isinstance(got, SyncResponse):
                self._synced(got)
        else:
            error = h.beat(self.member_id, self.generation, self._instance())
            if error is not None:
                self._reset(error)

    def _instance(self) -> str:
        return self.name if self.name < "c" else ""

    def _reset(self, error: RaftmqError) -> None:
        self.owned = frozenset()
        self.phase = "out"
        if error.code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.FENCED_INSTANCE_ID):
            self.member_id = ""

    def _joined(self, resp: JoinResponse) -> None:
        self.member_id = resp.member_id
        self.generation = resp.generation_id
        self.owned = frozenset()
        assignments = None
        if resp.members and not resp.skip_assignment:
            assignments = range_assign([m.member_id for m in resp.members], self.h.partitions)
        r = self.h.sync(self.member_id, self.generation, assignments)
        if r.response is None:
            self.phase = "syncing"
        else:
            self._synced(r.response)

    def _synced(self, resp: SyncResponse) -> None:
        if resp.error is not None:
            self._reset(resp.error)
            return
        self.owned = decode_assignment(resp.assignment) or frozenset()
        self.phase = "stable"


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_random_members_never_commit_what_another_owns_and_loads_match(seed: int) -> None:
    """Whatever members do (join, leave, go silent, restart static, zombies committing),
    an accepted commit is from a member at the group's generation that owns the
    partition per the synced assignment; a failover's load equals the live state
    whenever that is a written one; and well-behaved members converge."""
    rng = random.Random(seed)
    h = Harness(partitions=rng.randint(1, 6))
    clients = {n: Client(h, n) for n in "abcde"}
    active = set(rng.sample(sorted(clients), rng.randint(1, 5)))
    zombies: list[tuple[str, int, frozenset[TP]]] = []
    for _ in range(120):
        roll = rng.random()
        name = rng.choice(sorted(clients))
        c = clients[name]
        if roll < 0.5 and name in active:
            c.step()
        elif roll < 0.6:
            h.advance(rng.choice((50, 300, 1_000, 6_000, 11_000)))
        elif roll < 0.68 and name in active:
            active.discard(name)  # goes silent (crash); static ones restart later
            zombies.append((c.member_id, c.generation, c.owned))
            clients[name] = Client(h, name)
        elif roll < 0.74 and name not in active:
            active.add(name)
        elif roll < 0.8 and name in active and c.phase == "stable":
            h.leave(LeaveMember(c.member_id, c._instance()))
            zombies.append((c.member_id, c.generation, c.owned))
            clients[name] = Client(h, name)
        elif c.phase == "stable" or zombies:
            if zombies and rng.random() < 0.5:
                member, generation, owned = rng.choice(zombies)
            else:
                member, generation, owned = c.member_id, c.generation, c.owned
            tp = ("t", rng.randrange(h.partitions))
            group = h.shard.groups.get("g")
            classic = group.classic if group is not None else None
            before = classic.generation_id if classic is not None else None
            holders = (
                {m.member_id for m in classic.members.values() if m.owned and tp in m.owned}
                if classic is not None
                else set()
            )
            response = h.commit(member, generation, (tp[0], tp[1], rng.randint(0, 100)))
            accepted = response.error is None and response.partitions.get(tp) is None
            if accepted and generation < 0:
                # An admin commit: only while the group has no member.
                assert classic is None or not classic.members
            elif accepted:
                assert classic is not None and generation == before
                assert member in classic.members
                assert holders <= {member}, (tp, member, holders)
        group = h.shard.groups.get("g")
        classic = group.classic if group is not None else None
        if (
            classic is not None
            and classic.state in (STATE_STABLE, STATE_EMPTY, STATE_COMPLETING_REBALANCE)
            and not classic.pending_members
            and not any(m.awaiting_sync for m in classic.members.values())
        ):
            assert_same(h.shard, loaded(h.log))
    for drop in (False, True):
        other = loaded(compacted(h.log, drop=drop))
        for g, group in other.groups.items():
            if group.classic is not None:
                live = h.shard.groups[g].classic
                assert live is not None and live.generation_id >= group.classic.generation_id
    # Liveness: faults over, the active clients converge to a stable group that owns
    # every partition exactly once.
    for name in sorted(clients):
        if name not in active:
            clients[name] = Client(h, name)
    for _ in range(80):
        for name in sorted(active):
            clients[name].step()
        h.advance(rng.choice((50, 300, 1_000)))
    if active:
        for _ in range(30):
            for name in sorted(active):
                clients[name].step()
            h.advance(1_000)
        owned = [tp for n in active for tp in clients[n].owned]
        assert h.group().state == STATE_STABLE, h.group().state
        assert sorted(owned) == sorted(("t", p) for p in range(h.partitions))
