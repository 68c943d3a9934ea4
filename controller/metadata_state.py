"""The cluster metadata state machine replicated by the controller quorum.

Pure: no sockets, threads or clocks. Every node of the quorum applies the same commands in
the same (Raft log) order and so reaches the same state. Following Kafka's KRaft
controllers, an operation first validates the command against the current state and
returns `(records, result)`; the state changes only in `replay(record)`, which is the one
path for every node. Commands carry a `request_id`: pysyncobj may commit a command whose
caller saw a timeout, so a retried command with the same id returns the first result and
changes nothing.

Fencing: commands that a controller leader issues on its own (fencing a broker whose
session expired, automatic leader balancing) carry the Raft term they were proposed in,
the controller epoch. A new leader first commits `BeginControllerEpoch`; afterwards any
command from an older epoch is refused with STALE_CONTROLLER_EPOCH, so a deposed leader
that still believes it leads cannot change anything.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

from raftmq.errors import ErrorCode, RaftmqError
from raftmq.metadata import (
    NO_LEADER,
    BrokerRegistration,
    ControllerRecord,
    PartitionRecord,
    TopicRecord,
)
from raftmq.topic_config import (
    MAX_PARTITIONS,
    collision_key,
    parse_topic_config,
    validate_topic_name,
)

# How many request ids (and their results) are remembered for deduplication. A client
# retries within seconds; thousands of commands later its id is long gone.
REQUEST_IDS_MAX = 10_000
# How many versions of change sets are kept for watchers that reconnect; older watchers
# get a snapshot.
CHANGE_SETS_MAX = 2_000


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class BeginControllerEpoch:
    request_id: str
    controller_epoch: int


@dataclass(frozen=True, slots=True)
class RegisterController:
    request_id: str
    controller_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class RegisterBroker:
    request_id: str
    broker_id: int
    host: str
    port: int
    rack: str
    incarnation_id: str


@dataclass(frozen=True, slots=True)
class FenceBroker:
    """Issued by the controller leader when a broker's session expired."""

    request_id: str
    controller_epoch: int
    broker_id: int
    broker_epoch: int


@dataclass(frozen=True, slots=True)
class UnfenceBroker:
    """Issued by the controller leader when a fenced broker heartbeats, caught up."""

    request_id: str
    controller_epoch: int
    broker_id: int
    broker_epoch: int


@dataclass(frozen=True, slots=True)
class ControlledShutdown:
    request_id: str
    broker_id: int
    broker_epoch: int


@dataclass(frozen=True, slots=True)
class CreateTopic:
    request_id: str
    name: str
    topic_id: bytes
    partitions: int
    replication_factor: int
    configs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    request_id: str
    name: str


@dataclass(frozen=True, slots=True)
class AlterPartition:
    request_id: str
    broker_id: int
    broker_epoch: int
    topic: str
    topic_id: bytes
    partition: int
    leader_epoch: int
    partition_epoch: int
    new_isr: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ElectLeaders:
    request_id: str
    # -1 for an operator's request (no fencing needed), else the proposing leader's epoch.
    controller_epoch: int
    preferred: bool  # False: unclean election for offline partitions
    partitions: tuple[tuple[str, int], ...] = ()  # empty: all


Command: TypeAlias = (
    BeginControllerEpoch
    | RegisterController
    | RegisterBroker
    | FenceBroker
    | UnfenceBroker
    | ControlledShutdown
    | CreateTopic
    | DeleteTopic
    | AlterPartition
    | ElectLeaders
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ControllerEpochBegan:
    controller_epoch: int


@dataclass(frozen=True, slots=True)
class ControllerRegistered:
    controller: ControllerRecord


@dataclass(frozen=True, slots=True)
class BrokerRegistered:
    broker: BrokerRegistration


@dataclass(frozen=True, slots=True)
class BrokerFenceChanged:
    broker_id: int
    fenced: bool
    shutting_down: bool


@dataclass(frozen=True, slots=True)
class TopicCreated:
    topic: TopicRecord


@dataclass(frozen=True, slots=True)
class TopicDeleted:
    name: str


@dataclass(frozen=True, slots=True)
class PartitionChanged:
    topic: str
    partition: int
    state: PartitionRecord


Record: TypeAlias = (
    ControllerEpochBegan
    | ControllerRegistered
    | BrokerRegistered
    | BrokerFenceChanged
    | TopicCreated
    | TopicDeleted
    | PartitionChanged
)


@dataclass(frozen=True, slots=True)
class CommandResult:
    error: ErrorCode = ErrorCode.NONE
    message: str = ""
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.NONE


@dataclass(slots=True)
class ChangeSet:
    """Which entities changed; watchers send the current state of each (or a deletion)."""

    brokers: set[int] = field(default_factory=set)
    topics: set[str] = field(default_factory=set)
    controllers: set[int] = field(default_factory=set)

    def merge(self, other: ChangeSet) -> None:
        self.brokers |= other.brokers
        self.topics |= other.topics
        self.controllers |= other.controllers

    def __bool__(self) -> bool:
        return bool(self.brokers or self.topics or self.controllers)


# --------------------------------------------------------------------------- elections


def elect_leader(
    ar: Sequence[int], isr: Sequence[int], live: set[int], *, unclean: bool
) -> tuple[int, tuple[int, ...]]:
    """Choose a leader: the first live replica of AR that is in the ISR. Outside the ISR
    only if unclean election is allowed (then the ISR restarts as the new leader alone).
    Returns (leader or NO_LEADER, isr)."""
    for replica in ar:
        if replica in isr and replica in live:
            return replica, tuple(isr)
    if unclean:
        for replica in ar:
            if replica in live:
                return replica, (replica,)
    return NO_LEADER, tuple(isr)


def changed_partition(
    old: PartitionRecord, *, leader: int, isr: Sequence[int]
) -> PartitionRecord | None:
    """The next state of a partition, with its epochs bumped, or None if nothing changes."""
    new_isr = tuple(r for r in old.ar if r in isr)
    if leader == old.leader and new_isr == old.isr:
        return None
    return PartitionRecord(
        ar=old.ar,
        isr=new_isr,
        leader=leader,
        leader_epoch=old.leader_epoch + (1 if leader != old.leader else 0),
        partition_epoch=old.partition_epoch + 1,
    )


def assign_replicas(
    brokers: Sequence[BrokerRegistration],
    existing: Iterable[PartitionRecord],
    *,
    partitions: int,
    replication_factor: int,
) -> list[tuple[int, ...]]:
    """Spread replicas so that leaders and replicas stay balanced across brokers (counting
    what existing topics already place on each), and, when racks are known, so that the
    replicas of a partition sit on as many different racks as possible. Deterministic."""
    assert 1 <= replication_factor <= len(brokers)
    leaders: dict[int, int] = {b.broker_id: 0 for b in brokers}
    replicas: dict[int, int] = {b.broker_id: 0 for b in brokers}
    rack_of = {b.broker_id: b.rack for b in brokers}
    for p in existing:
        for r in p.ar:
            if r in replicas:
                replicas[r] += 1
        if p.ar and p.ar[0] in leaders:
            leaders[p.ar[0]] += 1
    assignment: list[tuple[int, ...]] = []
    for _ in range(partitions):
        leader = min(leaders, key=lambda b: (leaders[b], replicas[b], b))
        chosen = [leader]
        racks_used = {rack_of[leader]}
        while len(chosen) < replication_factor:
            candidates = [b for b in replicas if b not in chosen]
            follower = min(
                candidates,
                key=lambda b: (
                    bool(rack_of[b]) and rack_of[b] in racks_used,
                    replicas[b],
                    (b - leader) % (max(replicas) + 1),
                ),
            )
            chosen.append(follower)
            racks_used.add(rack_of[follower])
        leaders[leader] += 1
        for r in chosen:
            replicas[r] += 1
        assignment.append(tuple(chosen))
    return assignment


# --------------------------------------------------------------------------- state


class MetadataState:
    """The whole cluster metadata. Mutated only by `apply` (which calls `replay`)."""

    def __init__(self) -> None:
        # Invariant: increases by exactly one per applied command that changed something.
        self.version = 0
        # Invariant: never decreases; commands from an older controller epoch are refused.
        self.controller_epoch = 0
        self.brokers: dict[int, BrokerRegistration] = {}
        self.topics: dict[str, TopicRecord] = {}
        self.controllers: dict[int, ControllerRecord] = {}
        # request id -> result, oldest first; bounded by REQUEST_IDS_MAX.
        self._results: OrderedDict[str, CommandResult] = OrderedDict()
        # (version, what changed at that version), oldest first; bounded by CHANGE_SETS_MAX.
        self._changes: deque[tuple[int, ChangeSet]] = deque(maxlen=CHANGE_SETS_MAX)
        self._pending_changes = ChangeSet()

    # ---------------------------------------------------------------- entry point

    def apply(self, command: Command) -> CommandResult:
        """Apply one committed command. Deterministic: same commands, same state."""
        cached = self._results.get(command.request_id)
        if cached is not None:
            return cached
        try:
            records, result = self._handle(command)
        except RaftmqError as e:
            records, result = [], CommandResult(e.code, e.message)
        for record in records:
            self.replay(record)
        if self._pending_changes:
            self.version += 1
            self._changes.append((self.version, self._pending_changes))
            self._pending_changes = ChangeSet()
        if command.request_id:
            self._results[command.request_id] = result
            while len(self._results) > REQUEST_IDS_MAX:
                self._results.popitem(last=False)
        return result

    def replay(self, record: Record) -> None:
        """The only place where the state changes."""
        changes = self._pending_changes
        if isinstance(record, ControllerEpochBegan):
            assert record.controller_epoch >= self.controller_epoch
            self.controller_epoch = record.controller_epoch
        elif isinstance(record, ControllerRegistered):
            self.controllers[record.controller.controller_id] = record.controller
            changes.controllers.add(record.controller.controller_id)
        elif isinstance(record, BrokerRegistered):
            self.brokers[record.broker.broker_id] = record.broker
            changes.brokers.add(record.broker.broker_id)
        elif isinstance(record, BrokerFenceChanged):
            broker = self.brokers[record.broker_id]
            self.brokers[record.broker_id] = replace(
                broker, fenced=record.fenced, shutting_down=record.shutting_down
            )
            changes.brokers.add(record.broker_id)
        elif isinstance(record, TopicCreated):
            assert record.topic.name not in self.topics
            self.topics[record.topic.name] = record.topic
            changes.topics.add(record.topic.name)
        elif isinstance(record, TopicDeleted):
            del self.topics[record.name]
            changes.topics.add(record.name)
        elif isinstance(record, PartitionChanged):
            topic = self.topics[record.topic]
            old = topic.partitions[record.partition]
            new = record.state
            assert new.leader_epoch >= old.leader_epoch
            assert new.partition_epoch > old.partition_epoch
            assert_partition_invariants(new)
            partitions = list(topic.partitions)
            partitions[record.partition] = new
            self.topics[record.topic] = replace(topic, partitions=tuple(partitions))
            changes.topics.add(record.topic)
        else:  # pragma: no cover - exhaustive
            raise AssertionError(f"unknown record {record!r}")

    # ---------------------------------------------------------------- reads

    def changes_since(self, version: int) -> ChangeSet | None:
        """What changed after `version`, or None if that is older than the retained
        window (the watcher then needs a snapshot)."""
        assert version <= self.version
        merged = ChangeSet()
        if version == self.version:
            return merged
        if not self._changes or self._changes[0][0] > version + 1:
            return None
        for v, change in self._changes:
            if v > version:
                merged.merge(change)
        return merged

    def live_broker_ids(self) -> set[int]:
        return {b.broker_id for b in self.brokers.values() if not b.fenced}

    def partitions(self) -> Iterator[tuple[str, int, PartitionRecord]]:
        for topic in self.topics.values():
            for index, p in enumerate(topic.partitions):
                yield topic.name, index, p

    def check_invariants(self) -> None:
        """Assert every invariant of the whole state (tests call this after every step)."""
        for _, _, p in self.partitions():
            assert_partition_invariants(p)
            for r in p.isr:
                broker = self.brokers.get(r)
                # A fenced broker stays only as the last member of an offline partition's ISR.
                if broker is not None and broker.fenced:
                    assert p.isr == (r,) and p.leader == NO_LEADER, (r, p)
            if p.leader != NO_LEADER:
                assert not self.brokers[p.leader].fenced, p

    # ---------------------------------------------------------------- operations

    def _handle(self, command: Command) -> tuple[list[Record], CommandResult]:
        if isinstance(command, BeginControllerEpoch):
            if command.controller_epoch <= self.controller_epoch:
                return [], CommandResult(value=self.controller_epoch)
            return [ControllerEpochBegan(command.controller_epoch)], CommandResult(
                value=command.controller_epoch
            )
        if isinstance(command, RegisterController):
            existing = self.controllers.get(command.controller_id)
            record = ControllerRecord(command.controller_id, command.host, command.port)
            if existing == record:
                return [], CommandResult()
            return [ControllerRegistered(record)], CommandResult()
        if isinstance(command, RegisterBroker):
            return self._register_broker(command)
        if isinstance(command, FenceBroker | UnfenceBroker):
            self._check_controller_epoch(command.controller_epoch)
            broker = self._broker(command.broker_id, command.broker_epoch)
            if isinstance(command, FenceBroker):
                if broker.fenced:
                    return [], CommandResult()
                return self._fence(broker.broker_id, shutting_down=False), CommandResult()
            return self._unfence(broker), CommandResult()
        if isinstance(command, ControlledShutdown):
            broker = self._broker(command.broker_id, command.broker_epoch)
            records = self._fence(broker.broker_id, shutting_down=True)
            return records, CommandResult(value=0)
        if isinstance(command, CreateTopic):
            return self._create_topic(command)
        if isinstance(command, DeleteTopic):
            if command.name not in self.topics:
                raise RaftmqError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {command.name!r} does not exist"
                )
            return [TopicDeleted(command.name)], CommandResult()
        if isinstance(command, AlterPartition):
            return self._alter_partition(command)
        if isinstance(command, ElectLeaders):
            return self._elect_leaders(command)
        raise AssertionError(f"unknown command {command!r}")  # pragma: no cover

    def _check_controller_epoch(self, controller_epoch: int) -> None:
        if controller_epoch < self.controller_epoch:
            raise RaftmqError(
                ErrorCode.STALE_CONTROLLER_EPOCH,
                f"proposed in controller epoch {controller_epoch}, "
                f"the current epoch is {self.controller_epoch}",
            )

    def _broker(self, broker_id: int, broker_epoch: int) -> BrokerRegistration:
        broker = self.brokers.get(broker_id)
        if broker is None:
            raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, f"broker {broker_id} is unknown")
        if broker.broker_epoch != broker_epoch:
            raise RaftmqError(
                ErrorCode.STALE_BROKER_EPOCH,
                f"broker {broker_id} epoch {broker_epoch} is stale "
                f"(current incarnation has epoch {broker.broker_epoch}); register again",
            )
        return broker

    def _register_broker(self, command: RegisterBroker) -> tuple[list[Record], CommandResult]:
        existing = self.brokers.get(command.broker_id)
        if existing is not None and existing.incarnation_id == command.incarnation_id:
            return [], CommandResult(value=existing.broker_epoch)
        records: list[Record] = []
        if existing is not None and not existing.fenced:
            # A new incarnation of a broker replaces the old one at once (it restarted, maybe
            # after kill -9, and may have lost an unflushed tail): the old incarnation leaves
            # every ISR and leadership first, exactly as if its session had expired.
            records += self._fence(existing.broker_id, shutting_down=False)
        broker_epoch = self.version + 1
        records.append(
            BrokerRegistered(
                BrokerRegistration(
                    broker_id=command.broker_id,
                    host=command.host,
                    port=command.port,
                    rack=command.rack,
                    incarnation_id=command.incarnation_id,
                    broker_epoch=broker_epoch,
                    # Fenced until it heartbeats having caught up with the metadata.
                    fenced=True,
                )
            )
        )
        return records, CommandResult(value=broker_epoch)

    def _fence(self, broker_id: int, *, shutting_down: bool) -> list[Record]:
        """Records that fence a broker: it leaves every ISR (unless it is the last member)
        and every leadership moves to another live ISR member, or the partition goes
        offline (or to an out-of-sync replica, if the topic allows unclean election)."""
        records: list[Record] = [BrokerFenceChanged(broker_id, True, shutting_down)]
        live = self.live_broker_ids() - {broker_id}
        for name, index, p in list(self.partitions()):
            if broker_id not in p.isr and p.leader != broker_id:
                continue
            isr = tuple(r for r in p.isr if r != broker_id) or p.isr
            leader = p.leader
            if leader in (broker_id, NO_LEADER):
                unclean = self.topics[name].config.unclean_leader_election_enable
                leader, isr = elect_leader(p.ar, isr, live, unclean=unclean)
            new = changed_partition(p, leader=leader, isr=isr)
            if new is not None:
                records.append(PartitionChanged(name, index, new))
        return records

    def _unfence(self, broker: BrokerRegistration) -> list[Record]:
        if not broker.fenced:
            return []
        records: list[Record] = [BrokerFenceChanged(broker.broker_id, False, False)]
        live = self.live_broker_ids() | {broker.broker_id}
        for name, index, p in list(self.partitions()):
            if p.leader != NO_LEADER or broker.broker_id not in p.ar:
                continue
            unclean = self.topics[name].config.unclean_leader_election_enable
            leader, isr = elect_leader(p.ar, p.isr, live, unclean=unclean)
            new = changed_partition(p, leader=leader, isr=isr)
            if new is not None:
                records.append(PartitionChanged(name, index, new))
        return records

    def _create_topic(self, command: CreateTopic) -> tuple[list[Record], CommandResult]:
        validate_topic_name(command.name)
        if command.name in self.topics:
            raise RaftmqError(
                ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {command.name!r} already exists"
            )
        key = collision_key(command.name)
        for other in self.topics:
            if collision_key(other) == key:
                raise RaftmqError(
                    ErrorCode.INVALID_TOPIC_NAME,
                    f"topic {command.name!r} collides with existing topic {other!r} "
                    "('.' and '_' are interchangeable in metric names)",
                )
        if not 1 <= command.partitions <= MAX_PARTITIONS:
            raise RaftmqError(
                ErrorCode.INVALID_PARTITIONS,
                f"partitions must be in [1, {MAX_PARTITIONS}], got {command.partitions}",
            )
        live = sorted((b for b in self.brokers.values() if not b.fenced), key=lambda b: b.broker_id)
        if not 1 <= command.replication_factor <= len(live):
            raise RaftmqError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication factor {command.replication_factor} must be in [1, {len(live)}] "
                f"({len(live)} live brokers)",
            )
        config = parse_topic_config(
            dict(command.configs), replication_factor=command.replication_factor
        )
        existing = (p for _, _, p in self.partitions())
        assignment = assign_replicas(
            live,
            existing,
            partitions=command.partitions,
            replication_factor=command.replication_factor,
        )
        topic = TopicRecord(
            name=command.name,
            topic_id=command.topic_id,
            config=config,
            partitions=tuple(
                PartitionRecord(ar=ar, isr=ar, leader=ar[0], leader_epoch=0, partition_epoch=0)
                for ar in assignment
            ),
        )
        return [TopicCreated(topic)], CommandResult(value=command.name)

    def _alter_partition(self, command: AlterPartition) -> tuple[list[Record], CommandResult]:
        self._broker(command.broker_id, command.broker_epoch)
        topic = self.topics.get(command.topic)
        if topic is None or topic.topic_id != command.topic_id:
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {command.topic!r} does not exist"
            )
        if not 0 <= command.partition < len(topic.partitions):
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"{command.topic}-{command.partition} does not exist",
            )
        p = topic.partitions[command.partition]
        if p.leader != command.broker_id:
            raise RaftmqError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"broker {command.broker_id} does not lead {command.topic}-{command.partition}",
                leader_id=p.leader,
            )
        if command.leader_epoch != p.leader_epoch:
            raise RaftmqError(
                ErrorCode.FENCED_LEADER_EPOCH,
                f"leader epoch {command.leader_epoch} != current {p.leader_epoch}",
            )
        if command.partition_epoch != p.partition_epoch:
            raise RaftmqError(
                ErrorCode.INVALID_UPDATE_VERSION,
                f"partition epoch {command.partition_epoch} != current {p.partition_epoch}",
            )
        new_isr = command.new_isr
        if (
            command.broker_id not in new_isr
            or len(set(new_isr)) != len(new_isr)
            or not set(new_isr) <= set(p.ar)
        ):
            raise RaftmqError(
                ErrorCode.INVALID_REQUEST,
                f"ISR {list(new_isr)} must contain the leader, be unique and lie within "
                f"AR {list(p.ar)}",
            )
        for replica in new_isr:
            if replica not in p.isr and self.brokers[replica].fenced:
                raise RaftmqError(
                    ErrorCode.INELIGIBLE_REPLICA, f"replica {replica} is fenced; it cannot join"
                )
        new = changed_partition(p, leader=p.leader, isr=new_isr)
        if new is None:
            return [], CommandResult(value=p)
        return [PartitionChanged(command.topic, command.partition, new)], CommandResult(value=new)

    def _elect_leaders(self, command: ElectLeaders) -> tuple[list[Record], CommandResult]:
        if command.controller_epoch >= 0:
            self._check_controller_epoch(command.controller_epoch)
        wanted = set(command.partitions)
        live = self.live_broker_ids()
        records: list[Record] = []
        for name, index, p in self.partitions():
            if wanted and (name, index) not in wanted:
                continue
            if command.preferred:
                preferred = p.ar[0]
                if p.leader == preferred or preferred not in p.isr or preferred not in live:
                    continue
                new = changed_partition(p, leader=preferred, isr=p.isr)
            else:
                if p.leader != NO_LEADER:
                    continue
                leader, isr = elect_leader(p.ar, p.isr, live, unclean=True)
                new = changed_partition(p, leader=leader, isr=isr)
            if new is not None:
                records.append(PartitionChanged(name, index, new))
        return records, CommandResult(value=len(records))


def assert_partition_invariants(p: PartitionRecord) -> None:
    assert len(set(p.ar)) == len(p.ar), p
    assert p.isr, p
    assert set(p.isr) <= set(p.ar), p
    assert p.leader == NO_LEADER or p.leader in p.isr, p
    assert p.leader_epoch >= 0 and p.partition_epoch >= 0, p
