"""The consumer groups of one `__consumer_offsets` partition: a pure state machine, as the
controller's is.

Requests and `now_ms` in, records and responses out; the state changes only in
`replay(record)`, the same path on the coordinator that wrote a record and on the one that
loads it after a failover. Planning works on a scratch copy of the group and never
touches the state (the shell replays the records once they are in the log). What is not
replicated is liveness: when each member last heartbeated, when it started revoking, which
static members left for a restart — a new coordinator starts those clocks at its load, as
the controller does for broker sessions.

Membership follows KIP-848. The group epoch counts changes of membership and
subscriptions; when it is ahead of the assignment epoch, the assignor computes every
member's *target*. Each member reconciles towards its target on its heartbeats: it keeps
what stays, is told to revoke what moves (and may still commit it), and is given a
partition only once no other member holds it — so a partition is never consumed by two
members at once, and no stop-the-world round exists. Commits are fenced by member epoch
*and* ownership: a member may commit only partitions it holds (assigned or revoking).

A group is of one of two kinds: "consumer" (the above) or "classic" (Kafka's JoinGroup /
SyncGroup protocol with client-side assignment, `raftmq.broker.classic_group`, whose
state is `Group.classic`). Offsets, retention and deletion are the same for both; a
request of the other kind on a group with members is refused (as Kafka does:
INCONSISTENT_GROUP_PROTOCOL for a classic join, GROUP_ID_NOT_FOUND for a native
heartbeat); an empty group changes kind with the first member of the other kind.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from raftmq.broker import assignors, classic_group
from raftmq.broker.classic_group import (
    BeatRequest,
    ClassicGroup,
    Delivery,
    Effects,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    LeaveResponse,
    SyncRequest,
    SyncResponse,
)
from raftmq.broker.consumer_protocol import decode_subscription_topics, encode_assignment
from raftmq.broker.group_records import (
    AssignmentKey,
    AssignmentValue,
    ClassicGroupKey,
    ClassicGroupValue,
    CurrentKey,
    CurrentValue,
    GroupKey,
    GroupRecord,
    GroupValue,
    Key,
    MemberKey,
    MemberValue,
    OffsetKey,
    OffsetValue,
    TargetKey,
    TargetValue,
    TopicPartition,
    Value,
)
from raftmq.errors import ErrorCode, RaftmqError

GROUP_ID_LENGTH_MAX = 255
GROUP_MEMBERS_MAX = 1_000
COMMIT_METADATA_BYTES_MAX = 4_096
SESSION_TIMEOUT_MS_MIN = 1_000
SESSION_TIMEOUT_MS_MAX = 300_000
SESSION_TIMEOUT_MS_DEFAULT = 10_000
REBALANCE_TIMEOUT_MS_DEFAULT = 30_000
REBALANCE_TIMEOUT_MS_MAX = 600_000
# How often members heartbeat: short, so that a rebalance takes a few of them (< 1 s).
HEARTBEAT_INTERVAL_MS = 250
OFFSETS_RETENTION_MS_DEFAULT = 7 * 24 * 3600 * 1000  # Kafka's offsets.retention.minutes
SUBSCRIPTION_TOPICS_MAX = 10_000

JOIN_EPOCH = 0
LEAVE_EPOCH = -1
STATIC_LEAVE_EPOCH = -2

STATE_EMPTY = "empty"
STATE_ASSIGNING = "assigning"
STATE_RECONCILING = "reconciling"
STATE_STABLE = "stable"


class TopicCatalog(Protocol):
    """The cluster's topics as the coordinator's broker knows them."""

    def partition_count(self, topic: str) -> int | None:
        """None when the topic does not exist."""
        ...

    def topic_names(self) -> Iterable[str]:
        """Every user topic (internal ones excluded)."""
        ...


# ------------------------------------------------------------------ requests, responses


@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str = ""
    # 0 / "" / empty: unchanged on a regular heartbeat (the coordinator's default when
    # joining), as KIP-848's null fields.
    rebalance_timeout_ms: int = 0
    session_timeout_ms: int = 0
    subscribed_topics: tuple[str, ...] = ()
    subscribed_pattern: str = ""
    assignor: str = ""
    owned: frozenset[TopicPartition] = frozenset()
    client_id: str = ""


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    error: RaftmqError | None = None
    member_id: str = ""
    member_epoch: int = -1
    heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS
    assignment: frozenset[TopicPartition] = frozenset()


@dataclass(frozen=True, slots=True)
class CommitOffset:
    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str = ""


@dataclass(frozen=True, slots=True)
class CommitRequest:
    group_id: str
    member_id: str  # "" with member_epoch -1: an admin commit (empty groups only)
    member_epoch: int
    offsets: tuple[CommitOffset, ...]


@dataclass(frozen=True, slots=True)
class ClassicCommitRequest:
    """An OffsetCommit of Kafka's protocol: fenced by generation and member id (and, for
    a "consumer" protocol group, by the synced assignment); generation -1 with no member
    is an admin commit (groups without members only)."""

    group_id: str
    member_id: str
    generation_id: int
    offsets: tuple[CommitOffset, ...]
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class CommitResponse:
    error: RaftmqError | None = None
    # (topic, partition) -> its error, None when committed.
    partitions: dict[TopicPartition, RaftmqError | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    instance_id: str
    client_id: str
    member_epoch: int
    assigned: frozenset[TopicPartition]
    revoking: frozenset[TopicPartition]
    target: frozenset[TopicPartition]
    subscribed_topics: tuple[str, ...]
    subscribed_pattern: str


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str
    group_epoch: int
    assignment_epoch: int
    assignor: str
    members: tuple[MemberDescription, ...]


@dataclass(frozen=True, slots=True)
class KafkaMemberDescription:
    member_id: str
    instance_id: str
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class KafkaGroupDescription:
    """A group as Kafka's DescribeGroups shows it (either kind)."""

    group_id: str
    state: str  # Kafka's names: Empty, PreparingRebalance, ..., Stable
    protocol_type: str
    protocol_name: str
    members: tuple[KafkaMemberDescription, ...]


@dataclass(frozen=True, slots=True)
class GroupListing:
    group_id: str
    protocol_type: str
    state: str  # Kafka's names
    group_type: str  # "classic" or "consumer"


R = TypeVar("R")


@dataclass(slots=True)
class ClassicResult(Generic[R]):
    """A classic operation's outcome: records to write; the request's own response, or
    None when it waits (it is answered by a later Delivery to (group, `wait_member_id`,
    its kind)); and the answers to other members' waiting requests. The shell writes the
    records, then sends every response (a failed write answers them with its error)."""

    records: list[GroupRecord]
    response: R | None
    wait_member_id: str = ""
    deliveries: list[Delivery] = field(default_factory=list)


# Kafka's names of native group states (ConsumerGroup.State).
_NATIVE_KAFKA_STATES = {
    STATE_EMPTY: "Empty",
    STATE_ASSIGNING: "Assigning",
    STATE_RECONCILING: "Reconciling",
    STATE_STABLE: "Stable",
}


# ------------------------------------------------------------------ state


@dataclass(slots=True)
class Member:
    member_id: str
    spec: MemberValue
    target: frozenset[TopicPartition] = frozenset()
    current: CurrentValue = field(default_factory=lambda: CurrentValue(0, 0))

    @property
    def held(self) -> frozenset[TopicPartition]:
        """What it holds: assigned, and revoking until it says it let them go."""
        return self.current.assigned | self.current.revoking


@dataclass(slots=True)
class Group:
    group_id: str
    # Invariant: group_epoch >= assignment_epoch; both only grow.
    group_epoch: int = 0
    assignment_epoch: int = 0
    empty_since_ms: int = -1
    members: dict[str, Member] = field(default_factory=dict)
    offsets: dict[TopicPartition, OffsetValue] = field(default_factory=dict)
    # topic -> partitions, as of the last target computation.
    target_inputs: dict[str, int] = field(default_factory=dict)
    # A classic group's state; None for a native one.
    # Invariant: classic is None or not members (a group is of one kind).
    classic: ClassicGroup | None = None

    def scratch(self) -> Group:
        """A copy planning may change: members copied, offsets shared (planning that
        touches offsets does not use a scratch group)."""
        return Group(
            self.group_id,
            self.group_epoch,
            self.assignment_epoch,
            self.empty_since_ms,
            {m: replace(member) for m, member in self.members.items()},
            self.offsets,
            self.target_inputs,
            self.classic,
        )

    def is_empty(self) -> bool:
        """No member of either kind."""
        return not self.members and (self.classic is None or not self.classic.members)

    def retention_since_ms(self) -> int:
        """Wall-clock ms since when the group has been empty; -1 while it has members."""
        if self.classic is not None:
            return self.classic.empty_since_ms if not self.classic.members else -1
        return self.empty_since_ms

    def assignor(self) -> str:
        votes = Counter(m.spec.assignor for m in self.members.values())
        if not votes:
            return "uniform"
        best = max(votes.values())
        return min(a for a, n in votes.items() if n == best)

    def state(self) -> str:
        if self.classic is not None:
            return self.classic.state
        if not self.members:
            return STATE_EMPTY
        if self.group_epoch > self.assignment_epoch:
            return STATE_ASSIGNING
        for m in self.members.values():
            if m.current.revoking or m.current.assigned != m.target:
                return STATE_RECONCILING
        return STATE_STABLE

    def check_invariants(self) -> None:
        assert self.group_epoch >= self.assignment_epoch, self
        if self.classic is not None:
            assert not self.members, f"group {self.group_id} has members of both kinds"
            self.classic.check_invariants()
        held: dict[TopicPartition, str] = {}
        for m in self.members.values():
            assert not (m.current.assigned & m.current.revoking), m
            for tp in m.held:
                # The invariant everything rests on: no partition held by two members.
                assert tp not in held, f"{tp} held by {held.get(tp)} and {m.member_id}"
                held[tp] = m.member_id


def apply_record(groups: dict[str, Group], record: GroupRecord) -> None:
    """The one place group state changes (on `GroupShard` state and on scratch copies)."""
    key, value = record.key, record.value
    group = groups.get(key.group)
    if group is None:
        if value is None:
            return
        group = groups[key.group] = Group(key.group)
    if isinstance(key, OffsetKey):
        tp = (key.topic, key.partition)
        if value is None:
            group.offsets.pop(tp, None)
        else:
            assert isinstance(value, OffsetValue)
            group.offsets[tp] = value
    elif isinstance(key, GroupKey):
        if value is None:
            del groups[key.group]
            return
        assert isinstance(value, GroupValue)
        group.group_epoch = max(group.group_epoch, value.group_epoch)
        group.empty_since_ms = value.empty_since_ms
    elif isinstance(key, MemberKey):
        if value is None:
            group.members.pop(key.member_id, None)
        else:
            assert isinstance(value, MemberValue)
            member = group.members.get(key.member_id)
            if member is None:
                group.members[key.member_id] = Member(key.member_id, value)
            else:
                member.spec = value
    elif isinstance(key, AssignmentKey):
        if value is not None:
            assert isinstance(value, AssignmentValue)
            group.assignment_epoch = max(group.assignment_epoch, value.assignment_epoch)
            group.target_inputs = dict(value.topic_partitions)
    elif isinstance(key, TargetKey):
        member = group.members.get(key.member_id)
        if member is not None:
            member.target = frozenset() if value is None else _target(value)
    elif isinstance(key, ClassicGroupKey):
        if value is None:
            group.classic = None
        else:
            assert isinstance(value, ClassicGroupValue)
            if group.classic is None:
                group.classic = ClassicGroup(
                    key.group,
                    initial_rebalance_delay_ms=classic_group.INITIAL_REBALANCE_DELAY_MS_DEFAULT,
                )
            group.classic.restore(value)
    else:
        member = group.members.get(key.member_id)
        if member is not None:
            if value is None:
                member.current = CurrentValue(0, 0)
            else:
                assert isinstance(value, CurrentValue)
                member.current = value


def _target(value: object) -> frozenset[TopicPartition]:
    assert isinstance(value, TargetValue)
    return value.partitions


@dataclass(slots=True)
class _Liveness:
    """Per member, not replicated: started afresh on every load."""

    last_heartbeat_ms: int
    session_timeout_ms: int
    revoking_since_ms: int = -1
    # A static member that left for a restart (epoch -2): kept until its session ends.
    left_static: bool = False


# The order a load applies the latest records in: a group before its members, a member
# before its target and current assignment.
_LOAD_ORDER: tuple[type, ...] = (
    GroupKey,
    ClassicGroupKey,
    MemberKey,
    AssignmentKey,
    TargetKey,
    CurrentKey,
    OffsetKey,
)


class GroupShard:
    def __init__(
        self,
        *,
        offsets_retention_ms: int = OFFSETS_RETENTION_MS_DEFAULT,
        initial_rebalance_delay_ms: int = classic_group.INITIAL_REBALANCE_DELAY_MS_DEFAULT,
    ) -> None:
        self.offsets_retention_ms = offsets_retention_ms
        # Kafka's group.initial.rebalance.delay.ms (3 s there): how long the first round of
        # an empty classic group waits for more members.
        self.initial_rebalance_delay_ms = initial_rebalance_delay_ms
        self.groups: dict[str, Group] = {}
        # Classic groups created by a join and not written yet (a member told
        # MEMBER_ID_REQUIRED that never came back leaves one): dropped by the tick.
        self._unwritten: set[str] = set()
        self._liveness: dict[tuple[str, str], _Liveness] = {}
        # Between `load` and `loaded`: the latest record of each key read back.
        self._loading: dict[Key, GroupRecord] = {}

    # ------------------------------------------------------------ replay

    def replay(self, record: GroupRecord) -> None:
        """A record this coordinator just wrote (or a follower's next record, in order)."""
        self._unwritten.discard(record.key.group)
        apply_record(self.groups, record)
        group = self.groups.get(record.key.group)
        if group is not None:
            group.check_invariants()

    def load(self, record: GroupRecord) -> None:
        """A record read back from the partition by a new coordinator, in offset order.

        Compaction keeps only the latest record of each key, so what survives is not a
        history any prefix of which was a valid state: a group's AssignmentValue may come
        before the GroupValue that raised its epoch, or a member's TargetValue before
        its MemberValue. So a load keeps the latest record per key and `loaded` applies
        them in dependency order; the invariants are checked on the end state only.
        """
        self._loading[record.key] = record

    def loaded(self, *, now_ms: int) -> None:
        """After `load`ing the partition: the state built, every member's session starts
        now."""
        pending, self._loading = self._loading, {}
        for kind in _LOAD_ORDER:
            for key, record in pending.items():
                if type(key) is kind:
                    apply_record(self.groups, record)
        for group in self.groups.values():
            if group.classic is not None:
                group.classic.initial_rebalance_delay_ms = self.initial_rebalance_delay_ms
                group.classic.loaded(now_ms=now_ms)
            group.check_invariants()
        self._liveness = {
            (g.group_id, m.member_id): _Liveness(now_ms, m.spec.session_timeout_ms)
            for g in self.groups.values()
            for m in g.members.values()
        }

    # ------------------------------------------------------------ heartbeat

    def heartbeat(
        self, request: HeartbeatRequest, *, now_ms: int, wall_ms: int, catalog: TopicCatalog
    ) -> tuple[list[GroupRecord], HeartbeatResponse]:
        try:
            return self._heartbeat(request, now_ms=now_ms, wall_ms=wall_ms, catalog=catalog)
        except RaftmqError as e:
            return [], HeartbeatResponse(error=e, member_id=request.member_id)

    def _heartbeat(
        self, request: HeartbeatRequest, *, now_ms: int, wall_ms: int, catalog: TopicCatalog
    ) -> tuple[list[GroupRecord], HeartbeatResponse]:
        _check_group_id(request.group_id)
        if not request.member_id:
            raise RaftmqError(ErrorCode.UNKNOWN_MEMBER_ID, "the member id is missing")
        existing = self.groups.get(request.group_id)
        if existing is not None and existing.classic is not None and existing.classic.members:
            raise RaftmqError(
                ErrorCode.GROUP_ID_NOT_FOUND,
                f"group {request.group_id} is a classic group (Kafka's JoinGroup protocol) "
                f"with {len(existing.classic.members)} member(s), not a consumer group",
            )
        group = existing.scratch() if existing is not None else Group(request.group_id)
        plan = _Plan(group)
        member_id = request.member_id
        epoch = request.member_epoch
        if epoch in (LEAVE_EPOCH, STATIC_LEAVE_EPOCH):
            return self._leave(plan, request, now_ms=now_ms, wall_ms=wall_ms)
        if epoch == JOIN_EPOCH:
            if group.classic is not None:
                # An empty classic group becomes a consumer group.
                plan.emit(ClassicGroupKey(group.group_id), None)
            self._join(plan, request, wall_ms=wall_ms)
        else:
            member = group.members.get(member_id)
            if member is None:
                raise RaftmqError(
                    ErrorCode.UNKNOWN_MEMBER_ID,
                    f"member {member_id} is not in group {request.group_id} (it left or was "
                    "evicted)",
                )
            if epoch not in (member.current.member_epoch, member.current.previous_member_epoch):
                raise RaftmqError(
                    ErrorCode.FENCED_MEMBER_EPOCH,
                    f"member {member_id} sent epoch {epoch}; its epoch is "
                    f"{member.current.member_epoch}",
                )
            spec = _spec(request, member.spec)
            if spec != member.spec:
                _validate_subscription(spec)
                plan.emit(MemberKey(group.group_id, member_id), spec)
                plan.bump_group_epoch()
        if group.group_epoch > group.assignment_epoch:
            self._compute_target(plan, catalog)
        member = group.members[member_id]
        self._reconcile(plan, member, request.owned)
        liveness = self._liveness.get((group.group_id, member_id))
        if liveness is None or epoch == JOIN_EPOCH:
            liveness = _Liveness(now_ms, member.spec.session_timeout_ms)
            self._liveness[(group.group_id, member_id)] = liveness
        liveness.last_heartbeat_ms = now_ms
        liveness.session_timeout_ms = member.spec.session_timeout_ms
        liveness.left_static = False
        response = HeartbeatResponse(
            member_id=member_id,
            member_epoch=member.current.member_epoch,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            assignment=member.current.assigned,
        )
        return plan.records, response

    def _join(self, plan: _Plan, request: HeartbeatRequest, *, wall_ms: int) -> None:
        group = plan.group
        spec = _spec(request, None)
        _validate_subscription(spec)
        member_id = request.member_id
        static = (
            next(
                (
                    m
                    for m in group.members.values()
                    if spec.instance_id and m.spec.instance_id == spec.instance_id
                ),
                None,
            )
            if spec.instance_id
            else None
        )
        if static is not None and static.member_id != member_id:
            # A static member restarted (KIP-345): the new incarnation takes the old one's
            # place, its target and what it held, at a new member epoch; the old member id
            # is fenced. No rebalance: the group epoch does not change.
            old = static
            plan.emit(MemberKey(group.group_id, old.member_id), None)
            plan.emit(TargetKey(group.group_id, old.member_id), None)
            plan.emit(CurrentKey(group.group_id, old.member_id), None)
            self._liveness.pop((group.group_id, old.member_id), None)
            plan.emit(MemberKey(group.group_id, member_id), spec)
            plan.emit(TargetKey(group.group_id, member_id), TargetValue(old.target))
            epoch = old.current.member_epoch + 1
            plan.emit(
                CurrentKey(group.group_id, member_id),
                CurrentValue(epoch, epoch, old.current.assigned, old.current.revoking),
            )
            if spec != replace(old.spec, client_id=spec.client_id):
                plan.bump_group_epoch()
            return
        existing = group.members.get(member_id)
        if existing is not None:
            # A member rejoining with epoch 0 lost its partitions (it was fenced, or it
            # restarted with the same id): they are free again at once.
            plan.emit(
                CurrentKey(group.group_id, member_id),
                CurrentValue(existing.current.member_epoch + 1, existing.current.member_epoch + 1),
            )
            if spec != existing.spec:
                plan.emit(MemberKey(group.group_id, member_id), spec)
                plan.bump_group_epoch()
            return
        if len(group.members) >= GROUP_MEMBERS_MAX:
            raise RaftmqError(
                ErrorCode.GROUP_MAX_SIZE_REACHED,
                f"group {group.group_id} has {GROUP_MEMBERS_MAX} members, the most it may",
            )
        plan.emit(MemberKey(group.group_id, member_id), spec)
        plan.emit(CurrentKey(group.group_id, member_id), CurrentValue(1, 1))
        plan.bump_group_epoch(empty_since_ms=-1)

    def _leave(
        self, plan: _Plan, request: HeartbeatRequest, *, now_ms: int, wall_ms: int
    ) -> tuple[list[GroupRecord], HeartbeatResponse]:
        group = plan.group
        member = group.members.get(request.member_id)
        if member is None:
            return [], HeartbeatResponse(
                member_id=request.member_id, member_epoch=request.member_epoch
            )
        if request.member_epoch == STATIC_LEAVE_EPOCH and member.spec.instance_id:
            # Kept, with what it holds, until its session ends or its next incarnation
            # joins with the same instance id.
            liveness = self._liveness.setdefault(
                (group.group_id, member.member_id),
                _Liveness(now_ms, member.spec.session_timeout_ms),
            )
            liveness.left_static = True
            liveness.last_heartbeat_ms = now_ms
            return [], HeartbeatResponse(
                member_id=member.member_id, member_epoch=STATIC_LEAVE_EPOCH
            )
        self._remove_member(plan, member.member_id, wall_ms=wall_ms)
        return plan.records, HeartbeatResponse(member_id=member.member_id, member_epoch=LEAVE_EPOCH)

    def _remove_member(self, plan: _Plan, member_id: str, *, wall_ms: int) -> None:
        group = plan.group
        plan.emit(MemberKey(group.group_id, member_id), None)
        plan.emit(TargetKey(group.group_id, member_id), None)
        plan.emit(CurrentKey(group.group_id, member_id), None)
        self._liveness.pop((group.group_id, member_id), None)
        plan.bump_group_epoch(empty_since_ms=wall_ms if not group.members else -1)

    def _compute_target(self, plan: _Plan, catalog: TopicCatalog) -> None:
        group = plan.group
        subscriptions, counts = _resolve(group, catalog)
        targets = assignors.assign(
            group.assignor(),
            subscriptions,
            counts,
            {m: member.target for m, member in group.members.items()},
        )
        for member_id, member in sorted(group.members.items()):
            target = targets.get(member_id, frozenset())
            if target != member.target:
                plan.emit(TargetKey(group.group_id, member_id), TargetValue(target))
        plan.emit(
            AssignmentKey(group.group_id),
            AssignmentValue(group.group_epoch, tuple(sorted(counts.items()))),
        )

    def _reconcile(self, plan: _Plan, member: Member, owned: frozenset[TopicPartition]) -> None:
        """Move one member towards its target: keep, revoke, and give only what no one
        else holds. The member epoch moves whenever its assignment does."""
        group = plan.group
        current = member.current
        assigned = set(current.assigned)
        # Revoked partitions the member no longer lists are released.
        revoking = set(current.revoking) & owned
        to_revoke = assigned - member.target
        assigned -= to_revoke
        revoking |= to_revoke
        if not revoking:
            held_by_others: set[TopicPartition] = set()
            for other in group.members.values():
                if other.member_id != member.member_id:
                    held_by_others |= other.held
            assigned |= {tp for tp in member.target if tp not in held_by_others}
        new_assigned, new_revoking = frozenset(assigned), frozenset(revoking)
        if (new_assigned, new_revoking) == (current.assigned, current.revoking):
            return
        epoch, previous = current.member_epoch, current.previous_member_epoch
        if new_assigned != current.assigned:
            epoch, previous = current.member_epoch + 1, current.member_epoch
        plan.emit(
            CurrentKey(group.group_id, member.member_id),
            CurrentValue(epoch, previous, new_assigned, new_revoking),
        )

    # ------------------------------------------------------------ offsets

    def commit(
        self, request: CommitRequest, *, wall_ms: int, catalog: TopicCatalog
    ) -> tuple[list[GroupRecord], CommitResponse]:
        try:
            _check_group_id(request.group_id)
        except RaftmqError as e:
            return [], CommitResponse(error=e)
        group = self.groups.get(request.group_id)
        held: frozenset[TopicPartition] | None = None  # None: an admin commit
        if request.member_id or request.member_epoch != -1:
            member = group.members.get(request.member_id) if group is not None else None
            if member is None:
                return [], CommitResponse(
                    error=RaftmqError(
                        ErrorCode.UNKNOWN_MEMBER_ID,
                        f"member {request.member_id} is not in group {request.group_id}",
                    )
                )
            current = member.current
            if request.member_epoch > current.member_epoch:
                return [], CommitResponse(
                    error=RaftmqError(
                        ErrorCode.FENCED_MEMBER_EPOCH,
                        f"commit at epoch {request.member_epoch}; the member is at "
                        f"{current.member_epoch}",
                    )
                )
            if request.member_epoch not in (current.member_epoch, current.previous_member_epoch):
                return [], CommitResponse(
                    error=RaftmqError(
                        ErrorCode.STALE_MEMBER_EPOCH,
                        f"commit at epoch {request.member_epoch}; the member is at "
                        f"{current.member_epoch}: heartbeat, then commit what it still owns",
                    )
                )
            held = member.held
        elif group is not None and not group.is_empty():
            return [], CommitResponse(
                error=RaftmqError(
                    ErrorCode.NON_EMPTY_GROUP,
                    f"group {request.group_id} has members: offsets are reset only while it "
                    "is empty",
                )
            )
        owns = None if held is None else held.__contains__
        return _commit_offsets(
            request.group_id,
            group,
            request.offsets,
            owns,
            f"member {request.member_id} at epoch {request.member_epoch}",
            wall_ms=wall_ms,
            catalog=catalog,
        )

    def classic_commit(
        self, request: ClassicCommitRequest, *, now_ms: int, wall_ms: int, catalog: TopicCatalog
    ) -> tuple[list[GroupRecord], CommitResponse]:
        """Kafka's OffsetCommit: fenced by member id and generation, as Kafka does, and
        by ownership of the synced assignment, which Kafka does not (a zombie that still
        has its generation cannot move a partition it no longer owns)."""
        try:
            _check_group_id(request.group_id)
        except RaftmqError as e:
            return [], CommitResponse(error=e)
        group = self.groups.get(request.group_id)
        owns = None
        if group is not None and group.classic is not None:
            classic = group.classic
            error, member = classic.commit_fence(
                request.member_id, request.generation_id, request.instance_id, now_ms=now_ms
            )
            if error is not None:
                return [], CommitResponse(error=error)
            if member is not None:
                owns = lambda tp: classic.may_commit(member, tp)  # noqa: E731
        elif request.generation_id >= 0 or (group is not None and not group.is_empty()):
            # No classic group: only an admin commit (generation -1) of a memberless one.
            code = ErrorCode.ILLEGAL_GENERATION if group is None else ErrorCode.UNKNOWN_MEMBER_ID
            return [], CommitResponse(
                error=RaftmqError(
                    code,
                    f"member {request.member_id!r} at generation {request.generation_id} is "
                    f"not in a classic group {request.group_id}",
                )
            )
        return _commit_offsets(
            request.group_id,
            group,
            request.offsets,
            owns,
            f"member {request.member_id} at generation {request.generation_id}",
            wall_ms=wall_ms,
            catalog=catalog,
        )

    def fetch_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition] | None
    ) -> dict[TopicPartition, OffsetValue | None]:
        group = self.groups.get(group_id)
        offsets = group.offsets if group is not None else {}
        if partitions is None:
            return dict(sorted(offsets.items()))
        return {tp: offsets.get(tp) for tp in partitions}

    # ------------------------------------------------------------ admin

    def describe(self, group_id: str) -> GroupDescription | None:
        group = self.groups.get(group_id)
        if group is None:
            return None
        if group.classic is not None:
            return _describe_classic(group.classic)
        members = tuple(
            MemberDescription(
                m.member_id,
                m.spec.instance_id,
                m.spec.client_id,
                m.current.member_epoch,
                m.current.assigned,
                m.current.revoking,
                m.target,
                m.spec.subscribed_topics,
                m.spec.subscribed_pattern,
            )
            for m in sorted(group.members.values(), key=lambda m: m.member_id)
        )
        return GroupDescription(
            group.group_id,
            group.state(),
            group.group_epoch,
            group.assignment_epoch,
            group.assignor(),
            members,
        )

    def list_groups(self) -> list[tuple[str, str]]:
        return [
            (g.group_id, g.state()) for g in sorted(self.groups.values(), key=lambda g: g.group_id)
        ]

    def kafka_describe(self, group_id: str) -> KafkaGroupDescription | None:
        """Kafka's DescribeGroups view (metadata and assignments only while stable, as
        Kafka shows them)."""
        group = self.groups.get(group_id)
        if group is None:
            return None
        classic = group.classic
        if classic is None:
            return KafkaGroupDescription(
                group_id,
                _NATIVE_KAFKA_STATES[group.state()],
                "consumer",
                group.assignor() if group.members else "",
                tuple(
                    KafkaMemberDescription(
                        m.member_id,
                        m.spec.instance_id,
                        m.spec.client_id,
                        "",
                        b"",
                        encode_assignment(m.current.assigned),
                    )
                    for m in sorted(group.members.values(), key=lambda m: m.member_id)
                ),
            )
        stable = classic.state == classic_group.STATE_STABLE
        return KafkaGroupDescription(
            group_id,
            classic_group.KAFKA_STATE_NAMES[classic.state],
            classic.protocol_type,
            classic.protocol_name,
            tuple(
                KafkaMemberDescription(
                    m.member_id,
                    m.instance_id,
                    m.client_id,
                    m.client_host,
                    m.metadata(classic.protocol_name) if stable else b"",
                    m.assignment if stable else b"",
                )
                for m in classic.members.values()
            ),
        )

    def group_listings(self) -> list[GroupListing]:
        """Every group as Kafka's ListGroups shows it."""
        found = []
        for group in sorted(self.groups.values(), key=lambda g: g.group_id):
            classic = group.classic
            if classic is None:
                found.append(
                    GroupListing(
                        group.group_id, "consumer", _NATIVE_KAFKA_STATES[group.state()], "consumer"
                    )
                )
            else:
                found.append(
                    GroupListing(
                        group.group_id,
                        classic.protocol_type,
                        classic_group.KAFKA_STATE_NAMES[classic.state],
                        "classic",
                    )
                )
        return found

    def delete(self, group_id: str) -> tuple[list[GroupRecord], RaftmqError | None]:
        group = self.groups.get(group_id)
        if group is None:
            return [], RaftmqError(ErrorCode.GROUP_ID_NOT_FOUND, f"no group {group_id!r}")
        if not group.is_empty():
            return [], RaftmqError(
                ErrorCode.NON_EMPTY_GROUP, f"group {group_id} has members; stop them first"
            )
        return _tombstones(group), None

    # ------------------------------------------------------------ timers and metadata

    def tick(self, *, now_ms: int, wall_ms: int, catalog: TopicCatalog) -> list[GroupRecord]:
        """Called periodically by the shell: evict members whose session ended or that did
        not revoke in time, re-target groups whose subscribed topics changed, and expire
        the offsets of groups empty for longer than the retention."""
        records: list[GroupRecord] = []
        for group_id in sorted(self.groups):
            group = self.groups[group_id]
            plan: _Plan | None = None
            for member in sorted(group.members.values(), key=lambda m: m.member_id):
                liveness = self._liveness.setdefault(
                    (group_id, member.member_id), _Liveness(now_ms, member.spec.session_timeout_ms)
                )
                if member.current.revoking:
                    if liveness.revoking_since_ms < 0:
                        liveness.revoking_since_ms = now_ms
                else:
                    liveness.revoking_since_ms = -1
                expired = now_ms - liveness.last_heartbeat_ms > liveness.session_timeout_ms
                stuck = (
                    liveness.revoking_since_ms >= 0
                    and now_ms - liveness.revoking_since_ms > member.spec.rebalance_timeout_ms
                )
                if expired or stuck:
                    plan = plan or _Plan(group.scratch())
                    self._remove_member(plan, member.member_id, wall_ms=wall_ms)
            if group.members and group.assignment_epoch > 0:
                _, counts = _resolve(group, catalog)
                if counts != group.target_inputs:
                    plan = plan or _Plan(group.scratch())
                    plan.bump_group_epoch()
            if (
                plan is not None
                and plan.group.members
                and plan.group.group_epoch > plan.group.assignment_epoch
            ):
                self._compute_target(plan, catalog)
            if plan is not None:
                records.extend(plan.records)
            elif (
                group.is_empty()
                and group.retention_since_ms() >= 0
                and wall_ms - group.retention_since_ms() > self.offsets_retention_ms
            ):
                records.extend(_tombstones(group))
        return records

    # ------------------------------------------------------------ classic groups

    def _classic_for(self, group_id: str) -> ClassicGroup | None:
        group = self.groups.get(group_id)
        if group is None or group.classic is None:
            return None
        group.classic.initial_rebalance_delay_ms = self.initial_rebalance_delay_ms
        return group.classic

    def _result(
        self,
        classic: ClassicGroup,
        response: R | None,
        wait_member_id: str,
        kind: str,
        effects: Effects,
    ) -> ClassicResult[R]:
        records = (
            [GroupRecord(ClassicGroupKey(classic.group_id), classic.snapshot())]
            if effects.write
            else []
        )
        deliveries = effects.deliveries
        if response is None:
            # A request that completed its own round is answered directly.
            for i, d in enumerate(deliveries):
                if d.member_id == wait_member_id and d.kind == kind:
                    response = d.response  # type: ignore[assignment]
                    del deliveries[i]
                    break
        return ClassicResult(
            records, response, wait_member_id if response is None else "", deliveries
        )

    def classic_join(
        self, request: JoinRequest, *, now_ms: int, wall_ms: int
    ) -> ClassicResult[JoinResponse]:
        """JoinGroup. The shell sets `new_member_id` when `member_id` is empty."""
        try:
            rebalance_timeout_ms = _check_join(request)
        except RaftmqError as e:
            return ClassicResult([], JoinResponse(error=e, member_id=request.member_id))
        request = replace(request, rebalance_timeout_ms=rebalance_timeout_ms)
        group_id = request.group_id
        group = self.groups.get(group_id)
        if group is not None and group.classic is None and not group.is_empty():
            return ClassicResult(
                [],
                JoinResponse(
                    error=RaftmqError(
                        ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
                        f"group {group_id} is a consumer group (KIP-848) with "
                        f"{len(group.members)} member(s); a classic member cannot join it",
                    ),
                    member_id=request.member_id,
                ),
            )
        if request.member_id and (group is None or group.classic is None):
            return ClassicResult(
                [],
                JoinResponse(
                    error=RaftmqError(
                        ErrorCode.UNKNOWN_MEMBER_ID,
                        f"member {request.member_id} is not in group {group_id}",
                    ),
                    member_id=request.member_id,
                ),
            )
        if group is None:
            group = self.groups[group_id] = Group(group_id)
            self._unwritten.add(group_id)
        if group.classic is None:
            group.classic = ClassicGroup(
                group_id, initial_rebalance_delay_ms=self.initial_rebalance_delay_ms
            )
        classic = group.classic
        classic.initial_rebalance_delay_ms = self.initial_rebalance_delay_ms
        effects = Effects()
        response = classic.join(request, now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        group.check_invariants()
        wait = request.member_id or request.new_member_id
        return self._result(classic, response, wait, classic_group.JOIN, effects)

    def classic_sync(self, request: SyncRequest, *, now_ms: int) -> ClassicResult[SyncResponse]:
        classic = self._classic_for(request.group_id)
        if classic is None:
            return ClassicResult(
                [], SyncResponse(error=_not_classic(request.group_id, request.member_id))
            )
        effects = Effects()
        response = classic.sync(request, now_ms=now_ms, effects=effects)
        classic.check_invariants()
        return self._result(classic, response, request.member_id, classic_group.SYNC, effects)

    def classic_heartbeat(self, request: BeatRequest, *, now_ms: int) -> RaftmqError | None:
        classic = self._classic_for(request.group_id)
        if classic is None:
            return _not_classic(request.group_id, request.member_id)
        return classic.heartbeat(request, now_ms=now_ms)

    def classic_leave(
        self, request: LeaveRequest, *, now_ms: int, wall_ms: int
    ) -> ClassicResult[LeaveResponse]:
        classic = self._classic_for(request.group_id)
        if classic is None:
            return ClassicResult(
                [],
                LeaveResponse(
                    results=tuple(
                        (m, _not_classic(request.group_id, m.member_id)) for m in request.members
                    )
                ),
            )
        effects = Effects()
        response = classic.leave(request, now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        classic.check_invariants()
        return self._result(classic, response, "", "", effects)

    def classic_tick(self, *, now_ms: int, wall_ms: int) -> ClassicResult[None]:
        """Called with `tick`: classic sessions and round deadlines. Its records and
        deliveries are written and sent as an operation's are."""
        records: list[GroupRecord] = []
        deliveries: list[Delivery] = []
        for group_id in sorted(self.groups):
            group = self.groups[group_id]
            classic = self._classic_for(group_id)
            if classic is None:
                continue
            effects = Effects()
            classic.tick(now_ms=now_ms, wall_ms=wall_ms, effects=effects)
            classic.check_invariants()
            if effects.write:
                records.append(GroupRecord(ClassicGroupKey(group_id), classic.snapshot()))
            deliveries.extend(effects.deliveries)
            if (
                not effects.write
                and not classic.members
                and not classic.pending_members
                and classic.state == classic_group.STATE_EMPTY
                and classic.generation_id == 0
            ):
                # Never written (only members told MEMBER_ID_REQUIRED, gone since).
                if group_id in self._unwritten:
                    del self.groups[group_id]
                    self._unwritten.discard(group_id)
                elif not classic.persisted:
                    group.classic = None
        return ClassicResult(records, None, "", deliveries)


class _Plan:
    """Records planned on a scratch group, applied to it as they are emitted."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.records: list[GroupRecord] = []
        self._groups = {group.group_id: group}

    def emit(self, key: Key, value: Value | None) -> None:
        assert not (isinstance(key, GroupKey) and value is None), "plans never delete a group"
        record = GroupRecord(key, value)
        self.records.append(record)
        apply_record(self._groups, record)

    def bump_group_epoch(self, *, empty_since_ms: int | None = None) -> None:
        group = self.group
        since = group.empty_since_ms if empty_since_ms is None else empty_since_ms
        self.emit(GroupKey(group.group_id), GroupValue(group.group_epoch + 1, since))


def _tombstones(group: Group) -> list[GroupRecord]:
    records = [GroupRecord(OffsetKey(group.group_id, t, p), None) for t, p in sorted(group.offsets)]
    if group.classic is not None:
        records.append(GroupRecord(ClassicGroupKey(group.group_id), None))
    records.append(GroupRecord(AssignmentKey(group.group_id), None))
    records.append(GroupRecord(GroupKey(group.group_id), None))
    return records


def _commit_offsets(
    group_id: str,
    group: Group | None,
    offsets: tuple[CommitOffset, ...],
    owns: Callable[[TopicPartition], bool] | None,
    committer: str,
    *,
    wall_ms: int,
    catalog: TopicCatalog,
) -> tuple[list[GroupRecord], CommitResponse]:
    """The records of a commit that passed its group's fencing; `owns` None: an admin
    commit (no ownership)."""
    records: list[GroupRecord] = []
    results: dict[TopicPartition, RaftmqError | None] = {}
    for item in offsets:
        tp = (item.topic, item.partition)
        error = _check_commit(item, catalog)
        if error is None and owns is not None and not owns(tp):
            error = RaftmqError(
                ErrorCode.NOT_PARTITION_OWNER,
                f"{committer} does not own {item.topic}-{item.partition}",
            )
        results[tp] = error
        if error is None:
            records.append(
                GroupRecord(
                    OffsetKey(group_id, item.topic, item.partition),
                    OffsetValue(item.offset, item.leader_epoch, item.metadata, wall_ms),
                )
            )
    if records and group is None:
        # Offsets of a group nobody joined (an admin reset, a Kafka simple consumer).
        records.insert(0, GroupRecord(GroupKey(group_id), GroupValue(0, wall_ms)))
    return records, CommitResponse(partitions=results)


def _not_classic(group_id: str, member_id: str) -> RaftmqError:
    return RaftmqError(
        ErrorCode.UNKNOWN_MEMBER_ID,
        f"member {member_id!r} is not in group {group_id} (no classic group by that id)",
    )


def _check_join(request: JoinRequest) -> int:
    """Raises for a malformed JoinGroup; returns its rebalance timeout (v0 has none: the
    session timeout; a longer one than the max is clamped)."""
    _check_group_id(request.group_id)
    if not request.protocol_type or not request.protocols:
        raise RaftmqError(
            ErrorCode.INCONSISTENT_GROUP_PROTOCOL, "a join needs a protocol type and protocols"
        )
    if len(request.protocols) > classic_group.PROTOCOLS_MAX:
        raise RaftmqError(
            ErrorCode.INVALID_REQUEST, f"at most {classic_group.PROTOCOLS_MAX} protocols"
        )
    for name, _ in request.protocols:
        if not name or len(name) > classic_group.PROTOCOL_NAME_LENGTH_MAX:
            raise RaftmqError(ErrorCode.INVALID_REQUEST, f"bad protocol name {name!r}")
    if sum(len(data) for _, data in request.protocols) > classic_group.MEMBER_METADATA_BYTES_MAX:
        raise RaftmqError(
            ErrorCode.INVALID_REQUEST,
            f"the protocols' metadata is over {classic_group.MEMBER_METADATA_BYTES_MAX} bytes",
        )
    if len(request.instance_id) > GROUP_ID_LENGTH_MAX:
        raise RaftmqError(ErrorCode.INVALID_REQUEST, "the group instance id is too long")
    low, high = classic_group.SESSION_TIMEOUT_MS_MIN, classic_group.SESSION_TIMEOUT_MS_MAX
    if not low <= request.session_timeout_ms <= high:
        raise RaftmqError(
            ErrorCode.INVALID_SESSION_TIMEOUT,
            f"session timeout must be in [{low}, {high}] ms, got {request.session_timeout_ms}",
        )
    timeout = request.rebalance_timeout_ms
    if timeout <= 0:
        timeout = request.session_timeout_ms
    return min(timeout, classic_group.REBALANCE_TIMEOUT_MS_MAX)


def _describe_classic(classic: ClassicGroup) -> GroupDescription:
    """A classic group in the native description's terms: epochs are the generation, the
    assignor names the clients' protocol, assignments are the synced ones (decoded for a
    "consumer" group)."""
    members = []
    for m in sorted(classic.members.values(), key=lambda m: m.member_id):
        owned = m.owned or frozenset()
        topics: tuple[str, ...] = ()
        if classic.protocol_type == classic_group.CONSUMER_PROTOCOL_TYPE and m.protocols:
            chosen = classic.protocol_name or m.protocols[0][0]
            names = m.protocol_names()
            data = m.metadata(chosen) if chosen in names else m.protocols[0][1]
            topics = decode_subscription_topics(data) or ()
        members.append(
            MemberDescription(
                m.member_id,
                m.instance_id,
                m.client_id,
                classic.generation_id,
                owned,
                frozenset(),
                owned,
                topics,
                "",
            )
        )
    protocol = classic.protocol_name or "-"
    return GroupDescription(
        classic.group_id,
        classic.state,
        classic.generation_id,
        classic.generation_id,
        f"classic:{protocol}",
        tuple(members),
    )


def _check_group_id(group_id: str) -> None:
    if not group_id or len(group_id) > GROUP_ID_LENGTH_MAX:
        raise RaftmqError(
            ErrorCode.INVALID_GROUP_ID,
            f"a group id must have 1 to {GROUP_ID_LENGTH_MAX} characters, got {len(group_id)}",
        )


def _spec(request: HeartbeatRequest, previous: MemberValue | None) -> MemberValue:
    """The member's spec after this heartbeat: what it sends, the rest unchanged."""
    base = previous or MemberValue(
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS_DEFAULT,
        session_timeout_ms=SESSION_TIMEOUT_MS_DEFAULT,
    )
    subscribed = bool(request.subscribed_topics or request.subscribed_pattern)
    return MemberValue(
        instance_id=request.instance_id or base.instance_id,
        client_id=request.client_id or base.client_id,
        subscribed_topics=(
            tuple(sorted(set(request.subscribed_topics))) if subscribed else base.subscribed_topics
        ),
        subscribed_pattern=request.subscribed_pattern if subscribed else base.subscribed_pattern,
        assignor=request.assignor or base.assignor,
        rebalance_timeout_ms=request.rebalance_timeout_ms or base.rebalance_timeout_ms,
        session_timeout_ms=request.session_timeout_ms or base.session_timeout_ms,
    )


def _validate_subscription(spec: MemberValue) -> None:
    if spec.assignor not in assignors.ASSIGNORS:
        raise RaftmqError(
            ErrorCode.UNSUPPORTED_ASSIGNOR,
            f"assignor {spec.assignor!r} is not one of {', '.join(assignors.ASSIGNORS)}",
        )
    if not spec.subscribed_topics and not spec.subscribed_pattern:
        raise RaftmqError(ErrorCode.INVALID_REQUEST, "subscribe to at least a topic or a pattern")
    if len(spec.subscribed_topics) > SUBSCRIPTION_TOPICS_MAX:
        raise RaftmqError(
            ErrorCode.INVALID_REQUEST, f"at most {SUBSCRIPTION_TOPICS_MAX} subscribed topics"
        )
    if spec.subscribed_pattern:
        try:
            re.compile(spec.subscribed_pattern)
        except re.error as e:
            raise RaftmqError(
                ErrorCode.INVALID_REQUEST, f"subscribed pattern {spec.subscribed_pattern!r}: {e}"
            ) from None
    if not SESSION_TIMEOUT_MS_MIN <= spec.session_timeout_ms <= SESSION_TIMEOUT_MS_MAX:
        raise RaftmqError(
            ErrorCode.INVALID_REQUEST,
            f"session_timeout_ms must be in [{SESSION_TIMEOUT_MS_MIN}, "
            f"{SESSION_TIMEOUT_MS_MAX}], got {spec.session_timeout_ms}",
        )
    if not 0 < spec.rebalance_timeout_ms <= REBALANCE_TIMEOUT_MS_MAX:
        raise RaftmqError(
            ErrorCode.INVALID_REQUEST,
            f"rebalance_timeout_ms must be in (0, {REBALANCE_TIMEOUT_MS_MAX}], got "
            f"{spec.rebalance_timeout_ms}",
        )


def _resolve(
    group: Group, catalog: TopicCatalog
) -> tuple[dict[str, frozenset[str]], dict[str, int]]:
    """Each member's subscribed topics that exist, and their partition counts."""
    names: list[str] | None = None
    subscriptions: dict[str, frozenset[str]] = {}
    counts: dict[str, int] = {}
    for member_id, member in group.members.items():
        topics = {t for t in member.spec.subscribed_topics if catalog.partition_count(t)}
        if member.spec.subscribed_pattern:
            if names is None:
                names = sorted(catalog.topic_names())
            pattern = re.compile(member.spec.subscribed_pattern)
            topics |= {t for t in names if pattern.fullmatch(t)}
        subscriptions[member_id] = frozenset(topics)
        for topic in topics:
            count = catalog.partition_count(topic)
            if count:
                counts[topic] = count
    return subscriptions, counts


def _check_commit(item: CommitOffset, catalog: TopicCatalog) -> RaftmqError | None:
    if item.offset < 0:
        return RaftmqError(ErrorCode.INVALID_COMMIT_OFFSET, f"offset {item.offset} is negative")
    if len(item.metadata.encode()) > COMMIT_METADATA_BYTES_MAX:
        return RaftmqError(
            ErrorCode.OFFSET_METADATA_TOO_LARGE,
            f"commit metadata is over {COMMIT_METADATA_BYTES_MAX} bytes",
        )
    count = catalog.partition_count(item.topic)
    if count is None or not 0 <= item.partition < count:
        return RaftmqError(
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{item.topic}-{item.partition} does not exist"
        )
    return None


def mapping_catalog(counts: Mapping[str, int]) -> TopicCatalog:
    """A catalog over a fixed mapping (tests, and the shell's metadata image adapter)."""

    class _Catalog:
        def partition_count(self, topic: str) -> int | None:
            return counts.get(topic)

        def topic_names(self) -> Iterable[str]:
            return [t for t in counts if not t.startswith("__")]

    return _Catalog()
