"""Kafka's classic group protocol (JoinGroup / SyncGroup / Heartbeat / LeaveGroup,
client-side assignment) for one group: a pure state machine, as Kafka's `ClassicGroup`
and its part of `GroupMetadataManager` are.

Requests and `now_ms` in; out come the request's own response (or "wait": the shell
parks it), responses to deliver to *other* members' parked requests, and whether the
group's snapshot must be written. No I/O, no clock, no threads.

A round: members send JoinGroup; the coordinator waits until every known member rejoined
(or the rebalance timeout, when the laggards are removed), bumps the generation, picks a
protocol every member supports, elects a leader and answers all joins — the leader's
answer carries every member's metadata. The leader computes the assignment and sends it
in its SyncGroup; every member's SyncGroup is answered with its part. Heartbeats keep the
session and tell members of a new round (REBALANCE_IN_PROGRESS).

States (Kafka's): empty -> preparing_rebalance -> completing_rebalance -> stable, and
back to preparing_rebalance on any membership change. "dead" is what a group that does
not exist is described as.

What is replicated: a snapshot of the group (`ClassicGroupValue`) written when a join
round completes, when the leader's assignment arrives, when the group becomes empty, and
when a static member's new incarnation takes its place — each time the generation's
facts changed. A rebalance in progress (who rejoined, new members not in a generation
yet, parked requests) is volatile, as in Kafka: a new coordinator loads the last
snapshot and members rejoin. The coordinator that planned a snapshot already holds the
state it describes, so replaying it there changes nothing; on a new coordinator the load
of it is the state.

Static membership (KIP-345): a member with a `group.instance.id` that restarts (joins
with no member id) takes its old member id's place — its assignment, its leadership — at
the same generation and without a rebalance, unless the protocol it asks for changed;
requests with the old member id are fenced (FENCED_INSTANCE_ID). KIP-394: a JoinGroup
v4+ with no member id is told its id (MEMBER_ID_REQUIRED) and must join again with it;
v0-v3 get it assigned directly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from raftmq.broker.consumer_protocol import decode_assignment
from raftmq.broker.group_records import ClassicGroupValue, ClassicMemberValue, TopicPartition
from raftmq.errors import ErrorCode, RaftmqError

STATE_EMPTY = "empty"
STATE_PREPARING_REBALANCE = "preparing_rebalance"
STATE_COMPLETING_REBALANCE = "completing_rebalance"
STATE_STABLE = "stable"
STATE_DEAD = "dead"
# The states a snapshot is written in.
PERSISTED_STATES = frozenset({STATE_EMPTY, STATE_COMPLETING_REBALANCE, STATE_STABLE})
KAFKA_STATE_NAMES = {
    STATE_EMPTY: "Empty",
    STATE_PREPARING_REBALANCE: "PreparingRebalance",
    STATE_COMPLETING_REBALANCE: "CompletingRebalance",
    STATE_STABLE: "Stable",
    STATE_DEAD: "Dead",
}

CONSUMER_PROTOCOL_TYPE = "consumer"
# Kafka's group.min/max.session.timeout.ms are 6 s and 30 min; the minimum is lower here
# so that tests and short-lived tools may use short sessions.
SESSION_TIMEOUT_MS_MIN = 1_000
SESSION_TIMEOUT_MS_MAX = 1_800_000
# A longer rebalance timeout (max.poll.interval.ms) is clamped to this.
REBALANCE_TIMEOUT_MS_MAX = 1_800_000
INITIAL_REBALANCE_DELAY_MS_DEFAULT = 300
MEMBERS_MAX = 1_000
PROTOCOLS_MAX = 32
PROTOCOL_NAME_LENGTH_MAX = 255
MEMBER_METADATA_BYTES_MAX = 64 << 10  # the sum over a member's protocols
ASSIGNMENT_BYTES_MAX = 256 << 10
# The protocol bytes of one group's snapshot (well under the offsets topic's 16 MiB
# message limit once base64 and JSON are added).
GROUP_BYTES_MAX = 8 << 20

JOIN = "join"
SYNC = "sync"

Protocols = tuple[tuple[str, bytes], ...]


# ------------------------------------------------------------------ requests, responses


@dataclass(frozen=True, slots=True)
class JoinRequest:
    group_id: str
    member_id: str  # "" for a member that has none yet
    protocol_type: str
    protocols: Protocols
    session_timeout_ms: int
    rebalance_timeout_ms: int
    instance_id: str = ""
    client_id: str = ""
    client_host: str = ""
    # JoinGroup v4+ (KIP-394): a member with no id is told one and joins again with it.
    require_known_member_id: bool = True
    # The id given to a member that has none (the shell makes it unique; pure code does
    # not draw random numbers).
    new_member_id: str = ""


@dataclass(frozen=True, slots=True)
class JoinMember:
    member_id: str
    instance_id: str
    metadata: bytes


@dataclass(frozen=True, slots=True)
class JoinResponse:
    error: RaftmqError | None = None
    generation_id: int = -1
    protocol_type: str = ""
    protocol_name: str = ""
    leader_id: str = ""
    member_id: str = ""
    # Every member's metadata for the chosen protocol: for the leader only.
    members: tuple[JoinMember, ...] = ()
    # The leader's assignment stands (a static leader restarted): it need not compute one.
    skip_assignment: bool = False


@dataclass(frozen=True, slots=True)
class SyncRequest:
    group_id: str
    member_id: str
    generation_id: int
    instance_id: str = ""
    # SyncGroup v5+; "" when not sent.
    protocol_type: str = ""
    protocol_name: str = ""
    # The leader's: (member id, assignment); others send none.
    assignments: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class SyncResponse:
    error: RaftmqError | None = None
    protocol_type: str = ""
    protocol_name: str = ""
    assignment: bytes = b""


@dataclass(frozen=True, slots=True)
class BeatRequest:
    group_id: str
    member_id: str
    generation_id: int
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class LeaveMember:
    member_id: str
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class LeaveRequest:
    group_id: str
    members: tuple[LeaveMember, ...]


@dataclass(frozen=True, slots=True)
class LeaveResponse:
    error: RaftmqError | None = None
    # Per member, in request order: None when it left.
    results: tuple[tuple[LeaveMember, RaftmqError | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """The answer to a parked JoinGroup (`kind` JOIN) or SyncGroup (SYNC) of a member."""

    group_id: str
    member_id: str
    kind: str
    response: JoinResponse | SyncResponse


@dataclass(slots=True)
class Effects:
    """What an operation asks of the shell besides its own response."""

    deliveries: list[Delivery] = field(default_factory=list)
    # The group's snapshot changed: write it (before any response is sent).
    write: bool = False


def _error(code: ErrorCode, message: str) -> RaftmqError:
    return RaftmqError(code, message)


# ------------------------------------------------------------------ state


@dataclass(slots=True)
class ClassicMember:
    member_id: str
    instance_id: str
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: Protocols
    assignment: bytes = b""
    previous_owned: frozenset[TopicPartition] = frozenset()
    # Derived from `assignment` for a "consumer" group; None when the bytes are not a
    # ConsumerProtocolAssignment (commits are then fenced by generation only).
    owned: frozenset[TopicPartition] | None = frozenset()
    # Volatile. Invariant: awaiting_join only while preparing_rebalance, awaiting_sync
    # only while completing_rebalance: a parked request of that kind exists (or its
    # answer is lost with its connection).
    awaiting_join: bool = False
    awaiting_sync: bool = False
    # -1: not known yet (replayed, not planned here); the next tick starts the session.
    last_heartbeat_ms: int = -1

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata(self, protocol: str) -> bytes:
        for name, data in self.protocols:
            if name == protocol:
                return data
        raise AssertionError(f"member {self.member_id} does not support {protocol!r}")

    def value(self) -> ClassicMemberValue:
        return ClassicMemberValue(
            self.member_id,
            self.instance_id,
            self.client_id,
            self.client_host,
            self.session_timeout_ms,
            self.rebalance_timeout_ms,
            self.protocols,
            self.assignment,
            self.previous_owned,
        )


class ClassicGroup:
    """One classic group. The shard's `Group.classic`; methods are called by the shard
    with validated requests."""

    def __init__(self, group_id: str, *, initial_rebalance_delay_ms: int) -> None:
        self.group_id = group_id
        self.initial_rebalance_delay_ms = initial_rebalance_delay_ms
        # Replicated (the snapshot's fields).
        self.protocol_type = ""
        # Invariant: only grows; bumped by every completed join round.
        self.generation_id = 0
        # Invariant: "" iff state is empty; else every member supports it.
        self.protocol_name = ""
        # Invariant: a member while completing_rebalance or stable.
        self.leader_id = ""
        self.state = STATE_EMPTY
        # A snapshot of it was replayed (it exists in the log).
        self.persisted = False
        # In join order (the leader is elected among the first to rejoin).
        self.members: dict[str, ClassicMember] = {}
        self.empty_since_ms = -1
        # Volatile. Member ids told by MEMBER_ID_REQUIRED -> until when they may join.
        self.pending_members: dict[str, int] = {}
        # preparing_rebalance: when the join round ends anyway.
        self.join_deadline_ms = -1
        # The first round of an empty group waits initial_rebalance_delay_ms for more
        # members, again while new ones come, up to the rebalance timeout in all.
        self.initial_join = False
        self.new_member_added = False
        self.initial_remaining_ms = 0
        # Members of this generation that have not sent their SyncGroup yet, and until
        # when they may (then they are removed and a new round starts).
        # Invariant: pending_sync <= members.
        self.pending_sync: set[str] = set()
        self.sync_deadline_ms = -1

    # ------------------------------------------------------------ snapshot

    def snapshot(self) -> ClassicGroupValue:
        assert self.state in PERSISTED_STATES, self.state
        return ClassicGroupValue(
            self.protocol_type,
            self.generation_id,
            self.protocol_name,
            self.leader_id,
            self.state,
            tuple(m.value() for m in self.members.values()),
            self.empty_since_ms,
        )

    def restore(self, value: ClassicGroupValue) -> None:
        """Replay of a snapshot: the replicated fields become the record's; the volatile
        state of members that stay is kept (on the coordinator that planned the record,
        this changes nothing)."""
        assert value.state in PERSISTED_STATES, value
        self.persisted = True
        self.protocol_type = value.protocol_type
        self.generation_id = value.generation_id
        self.protocol_name = value.protocol_name
        self.leader_id = value.leader_id
        self.state = value.state
        self.empty_since_ms = value.empty_since_ms
        members: dict[str, ClassicMember] = {}
        for v in value.members:
            old = self.members.get(v.member_id)
            member = ClassicMember(
                v.member_id,
                v.instance_id,
                v.client_id,
                v.client_host,
                v.session_timeout_ms,
                v.rebalance_timeout_ms,
                v.protocols,
                v.assignment,
                v.previous_owned,
            )
            member.owned = self._owned(v.assignment)
            if old is not None:
                member.awaiting_join = old.awaiting_join and self.state == STATE_PREPARING_REBALANCE
                member.awaiting_sync = (
                    old.awaiting_sync and self.state == STATE_COMPLETING_REBALANCE
                )
                member.last_heartbeat_ms = old.last_heartbeat_ms
            members[v.member_id] = member
        self.members = members
        self.pending_sync &= set(members)
        if self.state != STATE_PREPARING_REBALANCE:
            self.join_deadline_ms = -1
            self.initial_join = False

    def loaded(self, *, now_ms: int) -> None:
        """A new coordinator loaded this group: every session starts now; a generation
        waiting for its assignment waits one rebalance timeout more."""
        for member in self.members.values():
            member.last_heartbeat_ms = now_ms
        if self.state == STATE_COMPLETING_REBALANCE:
            self.pending_sync = set(self.members)
            self.sync_deadline_ms = now_ms + self.rebalance_timeout_ms()

    def check_invariants(self) -> None:
        assert self.generation_id >= 0, self.generation_id
        assert len(self.members) + len(self.pending_members) <= MEMBERS_MAX
        if self.state == STATE_EMPTY:
            assert not self.members, self.members
            assert not self.protocol_name and not self.leader_id
        if self.state in (STATE_COMPLETING_REBALANCE, STATE_STABLE):
            assert self.leader_id in self.members, (self.leader_id, list(self.members))
            for m in self.members.values():
                assert self.protocol_name in m.protocol_names(), (self.protocol_name, m)
        assert self.pending_sync <= set(self.members)
        instances = [m.instance_id for m in self.members.values() if m.instance_id]
        assert len(instances) == len(set(instances)), instances
        for m in self.members.values():
            assert not m.awaiting_join or self.state == STATE_PREPARING_REBALANCE, m
            assert not m.awaiting_sync or self.state == STATE_COMPLETING_REBALANCE, m

    # ------------------------------------------------------------ queries

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def static_member_id(self, instance_id: str) -> str | None:
        for member in self.members.values():
            if member.instance_id == instance_id:
                return member.member_id
        return None

    def supports(self, protocol_type: str, protocols: Protocols) -> bool:
        """Whether a member with these protocols may join (Kafka's supportsProtocols)."""
        if not self.members:
            return bool(protocol_type) and bool(protocols)
        if protocol_type != self.protocol_type:
            return False
        candidates = self._candidates()
        return any(name in candidates for name, _ in protocols)

    def _candidates(self) -> set[str]:
        names: set[str] | None = None
        for member in self.members.values():
            mine = set(member.protocol_names())
            names = mine if names is None else names & mine
        return names or set()

    def select_protocol(self) -> str:
        """The protocol every member supports that most members prefer (ties: the
        first by name, so that every coordinator picks the same)."""
        candidates = self._candidates()
        assert candidates, f"group {self.group_id}: no protocol every member supports"
        votes: Counter[str] = Counter()
        for member in self.members.values():
            votes[next(n for n in member.protocol_names() if n in candidates)] += 1
        best = max(votes.values())
        return min(name for name, n in votes.items() if n == best)

    def _owned(self, assignment: bytes) -> frozenset[TopicPartition] | None:
        if self.protocol_type != CONSUMER_PROTOCOL_TYPE:
            return None
        return decode_assignment(assignment)

    def group_bytes(self) -> int:
        return sum(
            len(m.assignment) + sum(len(d) for _, d in m.protocols) for m in self.members.values()
        )

    # ------------------------------------------------------------ join

    def join(
        self, request: JoinRequest, *, now_ms: int, wall_ms: int, effects: Effects
    ) -> JoinResponse | None:
        """None: the member waits; its answer comes as a JOIN Delivery to
        `request.member_id or request.new_member_id`."""
        if not self.supports(request.protocol_type, request.protocols):
            return JoinResponse(
                error=_error(
                    ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
                    f"group {self.group_id} runs protocol type {self.protocol_type!r} with "
                    f"{sorted(self._candidates())}; the member offers "
                    f"{request.protocol_type!r} with {[n for n, _ in request.protocols]}",
                ),
                member_id=request.member_id,
            )
        if request.member_id:
            return self._join_known(request, now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        return self._join_unknown(request, now_ms=now_ms, wall_ms=wall_ms, effects=effects)

    def _join_unknown(
        self, request: JoinRequest, *, now_ms: int, wall_ms: int, effects: Effects
    ) -> JoinResponse | None:
        new_id = request.new_member_id
        assert new_id, "the shell gives every joining member without an id a new one"
        if request.instance_id:
            old_id = self.static_member_id(request.instance_id)
            if old_id is not None:
                return self._replace_static(
                    old_id, new_id, request, now_ms=now_ms, wall_ms=wall_ms, effects=effects
                )
        if len(self.members) + len(self.pending_members) >= MEMBERS_MAX:
            return JoinResponse(
                error=_error(
                    ErrorCode.GROUP_MAX_SIZE_REACHED,
                    f"group {self.group_id} has {MEMBERS_MAX} members, the most it may",
                )
            )
        if request.require_known_member_id and not request.instance_id:
            # KIP-394: a member id exists only once the member shows it knows it, so
            # that a client retrying a lost answer does not leave a ghost member behind.
            self.pending_members[new_id] = now_ms + request.session_timeout_ms
            return JoinResponse(
                error=_error(
                    ErrorCode.MEMBER_ID_REQUIRED, f"join group {self.group_id} as {new_id}"
                ),
                member_id=new_id,
            )
        return self._add_member(new_id, request, now_ms=now_ms, wall_ms=wall_ms, effects=effects)

    def _join_known(
        self, request: JoinRequest, *, now_ms: int, wall_ms: int, effects: Effects
    ) -> JoinResponse | None:
        member_id = request.member_id
        if member_id in self.pending_members:
            del self.pending_members[member_id]
            return self._add_member(
                member_id, request, now_ms=now_ms, wall_ms=wall_ms, effects=effects
            )
        fenced = self._fenced(member_id, request.instance_id)
        if fenced is not None:
            return JoinResponse(error=fenced, member_id=member_id)
        member = self.members.get(member_id)
        if member is None:
            return JoinResponse(
                error=_error(
                    ErrorCode.UNKNOWN_MEMBER_ID,
                    f"member {member_id} is not in group {self.group_id} (it left or was evicted)",
                ),
                member_id=member_id,
            )
        member.last_heartbeat_ms = now_ms
        if self.state == STATE_PREPARING_REBALANCE:
            self._update_member(member, request)
            self._maybe_complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)
            return None
        if self.state == STATE_COMPLETING_REBALANCE and member.protocols == request.protocols:
            # It lost the answer of the round that just completed: the same again.
            return self._join_response(member)
        if (
            self.state == STATE_STABLE
            and member_id != self.leader_id
            and member.protocols == request.protocols
        ):
            # Nothing changed: the generation stands (its SyncGroup gets its assignment).
            return JoinResponse(
                generation_id=self.generation_id,
                protocol_type=self.protocol_type,
                protocol_name=self.protocol_name,
                leader_id=self.leader_id,
                member_id=member_id,
            )
        # The leader rejoining (it wants a new assignment: a topic changed) or new
        # protocols: a new round.
        self._update_member(member, request)
        self._prepare_rebalance(now_ms=now_ms, effects=effects)
        self._maybe_complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        return None

    def _update_member(self, member: ClassicMember, request: JoinRequest) -> None:
        member.protocols = request.protocols
        member.session_timeout_ms = request.session_timeout_ms
        member.rebalance_timeout_ms = request.rebalance_timeout_ms
        member.client_id = request.client_id or member.client_id
        member.client_host = request.client_host or member.client_host
        member.awaiting_join = True

    def _add_member(
        self, member_id: str, request: JoinRequest, *, now_ms: int, wall_ms: int, effects: Effects
    ) -> JoinResponse | None:
        assert member_id not in self.members
        if self.group_bytes() + sum(len(d) for _, d in request.protocols) > GROUP_BYTES_MAX:
            return JoinResponse(
                error=_error(
                    ErrorCode.GROUP_MAX_SIZE_REACHED,
                    f"group {self.group_id}'s members' metadata would exceed "
                    f"{GROUP_BYTES_MAX} bytes",
                ),
                member_id=member_id,
            )
        if not self.members:
            self.protocol_type = request.protocol_type
        self.members[member_id] = ClassicMember(
            member_id,
            request.instance_id,
            request.client_id,
            request.client_host,
            request.session_timeout_ms,
            request.rebalance_timeout_ms,
            request.protocols,
            awaiting_join=True,
            last_heartbeat_ms=now_ms,
        )
        if self.state == STATE_PREPARING_REBALANCE and self.initial_join:
            self.new_member_added = True
        self._prepare_rebalance(now_ms=now_ms, effects=effects)
        self._maybe_complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        return None

    def _replace_static(
        self,
        old_id: str,
        new_id: str,
        request: JoinRequest,
        *,
        now_ms: int,
        wall_ms: int,
        effects: Effects,
    ) -> JoinResponse | None:
        """A static member's new incarnation (it joined with its instance id and no
        member id) takes the old one's place."""
        old = self.members.pop(old_id)
        fenced = _error(
            ErrorCode.FENCED_INSTANCE_ID,
            f"instance {old.instance_id} of group {self.group_id} restarted as {new_id}",
        )
        if old.awaiting_join:
            effects.deliveries.append(
                Delivery(self.group_id, old_id, JOIN, JoinResponse(error=fenced, member_id=old_id))
            )
        if old.awaiting_sync:
            effects.deliveries.append(
                Delivery(self.group_id, old_id, SYNC, SyncResponse(error=fenced))
            )
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        member = ClassicMember(
            new_id,
            old.instance_id,
            request.client_id or old.client_id,
            request.client_host or old.client_host,
            request.session_timeout_ms,
            request.rebalance_timeout_ms,
            request.protocols,
            old.assignment,
            old.previous_owned,
            old.owned,
            last_heartbeat_ms=now_ms,
        )
        self.members[new_id] = member
        if self.leader_id == old_id:
            self.leader_id = new_id
        if self.state == STATE_STABLE:
            unchanged = self.select_protocol() == self.protocol_name and old.metadata(
                self.protocol_name
            ) == member.metadata(self.protocol_name)
            if unchanged:
                # KIP-345: no rebalance. The snapshot records the new member id (so a
                # new coordinator fences the old one too).
                effects.write = True
                is_leader = new_id == self.leader_id
                return JoinResponse(
                    generation_id=self.generation_id,
                    protocol_type=self.protocol_type,
                    protocol_name=self.protocol_name,
                    leader_id=self.leader_id,
                    member_id=new_id,
                    members=self._join_members() if is_leader else (),
                    skip_assignment=is_leader,
                )
        member.awaiting_join = True
        # Stable with a changed protocol, or completing (its assignment is not known yet):
        # a new round. Preparing: it joins the round in progress.
        self._prepare_rebalance(now_ms=now_ms, effects=effects)
        self._maybe_complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        return None

    def _fenced(self, member_id: str, instance_id: str) -> RaftmqError | None:
        if not instance_id:
            return None
        holder = self.static_member_id(instance_id)
        if holder is not None and holder != member_id:
            return _error(
                ErrorCode.FENCED_INSTANCE_ID,
                f"instance {instance_id} of group {self.group_id} is member {holder} now, "
                f"not {member_id}",
            )
        return None

    def _join_members(self) -> tuple[JoinMember, ...]:
        return tuple(
            JoinMember(m.member_id, m.instance_id, m.metadata(self.protocol_name))
            for m in self.members.values()
        )

    def _join_response(self, member: ClassicMember) -> JoinResponse:
        is_leader = member.member_id == self.leader_id
        return JoinResponse(
            generation_id=self.generation_id,
            protocol_type=self.protocol_type,
            protocol_name=self.protocol_name,
            leader_id=self.leader_id,
            member_id=member.member_id,
            members=self._join_members() if is_leader else (),
        )

    def _prepare_rebalance(self, *, now_ms: int, effects: Effects) -> None:
        """A new round, unless one is being prepared."""
        if self.state == STATE_PREPARING_REBALANCE:
            return
        if self.state == STATE_COMPLETING_REBALANCE:
            for member in self.members.values():
                if member.awaiting_sync:
                    member.awaiting_sync = False
                    effects.deliveries.append(
                        Delivery(
                            self.group_id,
                            member.member_id,
                            SYNC,
                            SyncResponse(
                                error=_error(
                                    ErrorCode.REBALANCE_IN_PROGRESS,
                                    f"group {self.group_id} started a new round; join again",
                                )
                            ),
                        )
                    )
        self.pending_sync.clear()
        self.sync_deadline_ms = -1
        was_empty = self.state == STATE_EMPTY
        self.state = STATE_PREPARING_REBALANCE
        if was_empty:
            delay = min(self.initial_rebalance_delay_ms, self.rebalance_timeout_ms())
            self.initial_join = True
            self.new_member_added = False
            self.initial_remaining_ms = max(self.rebalance_timeout_ms() - delay, 0)
            self.join_deadline_ms = now_ms + delay
        else:
            self.initial_join = False
            self.join_deadline_ms = now_ms + self.rebalance_timeout_ms()

    def _maybe_complete_join(self, *, now_ms: int, wall_ms: int, effects: Effects) -> None:
        if self.state != STATE_PREPARING_REBALANCE or self.initial_join:
            return
        if self.pending_members or not all(m.awaiting_join for m in self.members.values()):
            return
        self._complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)

    def _complete_join(self, *, now_ms: int, wall_ms: int, effects: Effects) -> None:
        assert self.state == STATE_PREPARING_REBALANCE
        # Dynamic members that did not rejoin in time are gone; a static one stays (its
        # session decides), so that its restart causes no second round.
        for member in list(self.members.values()):
            if not member.awaiting_join and not member.instance_id:
                del self.members[member.member_id]
        self.initial_join = False
        self.join_deadline_ms = -1
        self.generation_id += 1
        effects.write = True
        if not self.members:
            self.state = STATE_EMPTY
            self.protocol_name = ""
            self.leader_id = ""
            self.empty_since_ms = wall_ms
            return
        self.state = STATE_COMPLETING_REBALANCE
        self.protocol_name = self.select_protocol()
        self.empty_since_ms = -1
        leader = self.members.get(self.leader_id)
        if leader is None or not leader.awaiting_join:
            # The leader must be one that waits for this answer: it gets the metadata.
            self.leader_id = next(
                (m.member_id for m in self.members.values() if m.awaiting_join),
                next(iter(self.members)),
            )
        for member in self.members.values():
            member.previous_owned = member.owned or frozenset()
            member.assignment = b""
            member.owned = self._owned(b"")
        self.pending_sync = set(self.members)
        self.sync_deadline_ms = now_ms + self.rebalance_timeout_ms()
        for member in self.members.values():
            if member.awaiting_join:
                member.awaiting_join = False
                member.last_heartbeat_ms = now_ms
                effects.deliveries.append(
                    Delivery(self.group_id, member.member_id, JOIN, self._join_response(member))
                )

    # ------------------------------------------------------------ sync

    def sync(self, request: SyncRequest, *, now_ms: int, effects: Effects) -> SyncResponse | None:
        """None: the member waits for the leader's assignment."""
        error = self._check_member(request.member_id, request.instance_id, request.generation_id)
        if error is not None:
            return SyncResponse(error=error)
        if (request.protocol_type and request.protocol_type != self.protocol_type) or (
            request.protocol_name and request.protocol_name != self.protocol_name
        ):
            return SyncResponse(
                error=_error(
                    ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
                    f"group {self.group_id} runs {self.protocol_type}/{self.protocol_name}, "
                    f"not {request.protocol_type}/{request.protocol_name}",
                )
            )
        if self.state == STATE_PREPARING_REBALANCE:
            return SyncResponse(
                error=_error(
                    ErrorCode.REBALANCE_IN_PROGRESS, f"group {self.group_id} is rebalancing"
                )
            )
        member = self.members[request.member_id]
        member.last_heartbeat_ms = now_ms
        self.pending_sync.discard(member.member_id)
        if self.state == STATE_STABLE:
            if not self.pending_sync:
                self.sync_deadline_ms = -1
            return self._sync_response(member)
        assert self.state == STATE_COMPLETING_REBALANCE
        if member.member_id != self.leader_id:
            member.awaiting_sync = True
            return None
        given = dict(request.assignments)
        if any(len(a) > ASSIGNMENT_BYTES_MAX for a in given.values()):
            return SyncResponse(
                error=_error(
                    ErrorCode.INVALID_REQUEST,
                    f"an assignment is over {ASSIGNMENT_BYTES_MAX} bytes",
                )
            )
        total = sum(len(given.get(m, b"")) for m in self.members) + sum(
            len(d) for m in self.members.values() for _, d in m.protocols
        )
        if total > GROUP_BYTES_MAX:
            return SyncResponse(
                error=_error(
                    ErrorCode.INVALID_REQUEST,
                    f"group {self.group_id}'s assignment would exceed {GROUP_BYTES_MAX} bytes",
                )
            )
        # Members the leader did not assign get an empty assignment (Kafka's rule);
        # assignments to ids not in the group are dropped.
        for m in self.members.values():
            m.assignment = given.get(m.member_id, b"")
            m.owned = self._owned(m.assignment)
        self.state = STATE_STABLE
        effects.write = True
        if not self.pending_sync:
            self.sync_deadline_ms = -1
        for m in self.members.values():
            if m.awaiting_sync:
                m.awaiting_sync = False
                effects.deliveries.append(
                    Delivery(self.group_id, m.member_id, SYNC, self._sync_response(m))
                )
        return self._sync_response(member)

    def _sync_response(self, member: ClassicMember) -> SyncResponse:
        return SyncResponse(
            protocol_type=self.protocol_type,
            protocol_name=self.protocol_name,
            assignment=member.assignment,
        )

    def _check_member(
        self, member_id: str, instance_id: str, generation_id: int
    ) -> RaftmqError | None:
        fenced = self._fenced(member_id, instance_id)
        if fenced is not None:
            return fenced
        if member_id not in self.members:
            return _error(
                ErrorCode.UNKNOWN_MEMBER_ID,
                f"member {member_id!r} is not in group {self.group_id} (it left or was evicted)",
            )
        if generation_id != self.generation_id:
            return _error(
                ErrorCode.ILLEGAL_GENERATION,
                f"generation {generation_id}; group {self.group_id} is at {self.generation_id}",
            )
        return None

    # ------------------------------------------------------------ heartbeat, leave

    def heartbeat(self, request: BeatRequest, *, now_ms: int) -> RaftmqError | None:
        error = self._check_member(request.member_id, request.instance_id, request.generation_id)
        if error is not None:
            return error
        self.members[request.member_id].last_heartbeat_ms = now_ms
        if self.state == STATE_PREPARING_REBALANCE:
            return _error(
                ErrorCode.REBALANCE_IN_PROGRESS,
                f"group {self.group_id} is rebalancing; join again",
            )
        return None

    def leave(
        self, request: LeaveRequest, *, now_ms: int, wall_ms: int, effects: Effects
    ) -> LeaveResponse:
        results: list[tuple[LeaveMember, RaftmqError | None]] = []
        for who in request.members:
            results.append(
                (who, self._leave_one(who, now_ms=now_ms, wall_ms=wall_ms, effects=effects))
            )
        return LeaveResponse(results=tuple(results))

    def _leave_one(
        self, who: LeaveMember, *, now_ms: int, wall_ms: int, effects: Effects
    ) -> RaftmqError | None:
        member_id = who.member_id
        if who.instance_id:
            holder = self.static_member_id(who.instance_id)
            if holder is None:
                return _error(
                    ErrorCode.UNKNOWN_MEMBER_ID,
                    f"no member of group {self.group_id} has instance id {who.instance_id}",
                )
            if member_id and holder != member_id:
                return self._fenced(member_id, who.instance_id)
            member_id = holder
        elif member_id in self.pending_members:
            del self.pending_members[member_id]
            self._maybe_complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)
            return None
        if member_id not in self.members:
            return _error(
                ErrorCode.UNKNOWN_MEMBER_ID,
                f"member {member_id!r} is not in group {self.group_id}",
            )
        self.remove_member(member_id, now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        return None

    def remove_member(self, member_id: str, *, now_ms: int, wall_ms: int, effects: Effects) -> None:
        member = self.members.pop(member_id)
        gone = _error(ErrorCode.UNKNOWN_MEMBER_ID, f"member {member_id} left group {self.group_id}")
        if member.awaiting_join:
            effects.deliveries.append(
                Delivery(
                    self.group_id, member_id, JOIN, JoinResponse(error=gone, member_id=member_id)
                )
            )
        if member.awaiting_sync:
            effects.deliveries.append(
                Delivery(self.group_id, member_id, SYNC, SyncResponse(error=gone))
            )
        self.pending_sync.discard(member_id)
        if self.state in (STATE_STABLE, STATE_COMPLETING_REBALANCE):
            self._prepare_rebalance(now_ms=now_ms, effects=effects)
        self._maybe_complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)

    # ------------------------------------------------------------ commits

    def commit_fence(
        self, member_id: str, generation_id: int, instance_id: str, *, now_ms: int
    ) -> tuple[RaftmqError | None, ClassicMember | None]:
        """Whether a member may commit now: (error, None), or (None, the member), or
        (None, None) for an admin commit (generation -1, only while the group has no
        member; with members it is refused as from an unknown member, as Kafka does)."""
        if generation_id < 0 and not self.members:
            return None, None
        error = self._check_member(member_id, instance_id, generation_id)
        if error is not None:
            return error, None
        if self.state == STATE_COMPLETING_REBALANCE:
            return (
                _error(
                    ErrorCode.REBALANCE_IN_PROGRESS,
                    f"group {self.group_id} is waiting for its assignment",
                ),
                None,
            )
        member = self.members[member_id]
        member.last_heartbeat_ms = now_ms
        return None, member

    def may_commit(self, member: ClassicMember, tp: TopicPartition) -> bool:
        """Ownership: a partition of the member's assignment at this generation, or one it
        had at the generation before that no member has now (a revoked partition's last
        commit). Generation-only where the assignment is not a consumer one."""
        if member.owned is None:
            return True
        if tp in member.owned:
            return True
        if tp not in member.previous_owned:
            return False
        return not any(m.owned is not None and tp in m.owned for m in self.members.values())

    # ------------------------------------------------------------ timers

    def tick(self, *, now_ms: int, wall_ms: int, effects: Effects) -> None:
        """Sessions, pending member ids, and the join and sync deadlines."""
        for member_id, until in list(self.pending_members.items()):
            if now_ms > until:
                del self.pending_members[member_id]
                self._maybe_complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        for member in list(self.members.values()):
            if member.member_id not in self.members:
                continue
            if member.last_heartbeat_ms < 0:
                member.last_heartbeat_ms = now_ms
            # A member waiting for our answer is alive; the round's deadline bounds it.
            if member.awaiting_join or member.awaiting_sync:
                continue
            if now_ms - member.last_heartbeat_ms > member.session_timeout_ms:
                self.remove_member(
                    member.member_id, now_ms=now_ms, wall_ms=wall_ms, effects=effects
                )
        if self.state == STATE_PREPARING_REBALANCE and now_ms >= self.join_deadline_ms:
            if self.initial_join and self.new_member_added and self.initial_remaining_ms > 0:
                delay = min(self.initial_rebalance_delay_ms, self.initial_remaining_ms)
                self.initial_remaining_ms -= delay
                self.new_member_added = False
                self.join_deadline_ms = now_ms + delay
            else:
                self._complete_join(now_ms=now_ms, wall_ms=wall_ms, effects=effects)
        if (
            self.state in (STATE_COMPLETING_REBALANCE, STATE_STABLE)
            and self.sync_deadline_ms >= 0
            and now_ms >= self.sync_deadline_ms
        ):
            self.sync_deadline_ms = -1
            laggards = sorted(self.pending_sync)
            self.pending_sync.clear()
            for member_id in laggards:
                if member_id in self.members:
                    self.remove_member(member_id, now_ms=now_ms, wall_ms=wall_ms, effects=effects)
