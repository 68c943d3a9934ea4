"""The cluster metadata state machine replicated by the controller quorum.

Pure: no sockets, threads or clocks. Following Kafka's KRaft controllers, an operation is
validated once, on the Raft leader: `plan(command)` returns `(records, result)` and changes
nothing. The leader appends the records (with the result, under the command's request id)
to the Raft log, and every node, the leader included, changes its state only by
`apply_entry`, which replays those records. Replay never validates a command again, so a
later change to validation code cannot replay an old log into another state.

Deduplication: commands carry a `request_id`, because pysyncobj can commit an entry whose
caller saw a timeout. `plan` answers a known id with its first result and no records; the
results live in the replicated state (bounded), so every leader knows them.

Fencing: commands that a controller leader issues on its own (fencing a broker whose
session expired, automatic leader balancing) carry the Raft term they were proposed in,
the controller epoch. A new leader first commits `BeginControllerEpoch`; afterwards any
command from an older epoch is refused with STALE_CONTROLLER_EPOCH. Entries are applied
only at the metadata version they were planned against (`expected_version`), so a plan
made by a deposed leader against older metadata is skipped as well.

Large changes: the records of every plan are ordered so that each prefix of them leaves a
valid state (partition moves before the broker fence that requires them, an unfence
before the elections that need it). The planner may therefore apply a plan too large for
one Raft entry in parts, planning the command again after each part.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
    RegisterController,
    UnfenceBroker,
)
from raftmq.controller.metadata_entry import (
    EntryOutcome,
    MetadataEntry,
    MetadataItem,
    result_from_dict,
    result_to_dict,
)
from raftmq.controller.metadata_records import (
    BrokerFenceChanged,
    BrokerRegistered,
    ClusterInitialized,
    ControllerEpochBegan,
    ControllerRegistered,
    MetadataFormatError,
    PartitionChanged,
    ProducerIdsAllocated,
    Record,
    TopicCreated,
    TopicDeleted,
    broker_from_dict,
    broker_to_dict,
    controller_from_dict,
    controller_to_dict,
    mapping,
    sequence,
    topic_from_dict,
    topic_to_dict,
)
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
# Topic names with this prefix belong to the cluster itself (`__consumer_offsets`, ...).
INTERNAL_TOPIC_PREFIX = "__"
# The internal topics brokers may ask the controller to create (CreateTopic internal=true).
INTERNAL_TOPICS = frozenset({"__consumer_offsets"})


@dataclass(slots=True)
class ChangeSet:
    """Which entities changed; watchers send the current state of each (or a deletion).

    `topics`: topics created or deleted (sent whole, or as a deletion); `partitions`:
    (topic, index) whose state changed, sent one by one (an ISR change ships one
    partition, not its topic), unless their topic is in `topics` anyway."""

    brokers: set[int] = field(default_factory=set)
    topics: set[str] = field(default_factory=set)
    partitions: set[tuple[str, int]] = field(default_factory=set)
    controllers: set[int] = field(default_factory=set)

    def merge(self, other: ChangeSet) -> None:
        self.brokers |= other.brokers
        self.topics |= other.topics
        self.partitions |= other.partitions
        self.controllers |= other.controllers

    def __bool__(self) -> bool:
        return bool(self.brokers or self.topics or self.partitions or self.controllers)


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
    """The whole cluster metadata. Changed only by `apply_entry` (which replays records).

    Not thread-safe: the quorum shell applies entries on pysyncobj's tick thread and
    guards readers with its lock; the planner plans against a `scratch_copy`."""

    def __init__(self) -> None:
        # Invariant: increases by exactly one per applied item that had records.
        self.version = 0
        # Invariant: never decreases; commands from an older controller epoch are refused.
        self.controller_epoch = 0
        # Invariant: "" until ClusterInitialized is replayed, then never changes.
        self.cluster_id = ""
        # Invariant: only grows; every producer id below it was handed out exactly once.
        self.next_producer_id = 0
        self.brokers: dict[int, BrokerRegistration] = {}
        self.topics: dict[str, TopicRecord] = {}
        self.controllers: dict[int, ControllerRecord] = {}
        # request id -> result, oldest first; bounded by REQUEST_IDS_MAX.
        self._results: OrderedDict[str, CommandResult] = OrderedDict()
        # (version, what changed at that version), oldest first; bounded by CHANGE_SETS_MAX.
        # Not part of snapshots: it only spares reconnecting watchers a full snapshot.
        self._changes: deque[tuple[int, ChangeSet]] = deque(maxlen=CHANGE_SETS_MAX)
        self._pending_changes = ChangeSet()

    # ---------------------------------------------------------------- applying entries

    def apply_entry(self, entry: MetadataEntry) -> EntryOutcome:
        """Apply one committed Raft entry. Deterministic: the same entries in the same order
        give the same state. An entry planned against another version is skipped whole."""
        if entry.expected_version is not None and entry.expected_version != self.version:
            skipped = CommandResult(
                ErrorCode.CONTROLLER_UNAVAILABLE,
                f"not applied: planned against metadata version {entry.expected_version}, "
                f"but the log had reached version {self.version}",
            )
            return EntryOutcome(False, tuple(skipped for _ in entry.items))
        for item in entry.items:
            self.apply_item(item)
        return EntryOutcome(True, tuple(item.result for item in entry.items))

    def apply_item(self, item: MetadataItem) -> None:
        """Replay one item's records and remember its result under its request id. Also
        used by the planner on its scratch copy, so that later commands of a batch see
        the effect of earlier ones."""
        for record in item.records:
            self.replay(record)
        if item.records:
            self.version += 1
            self._changes.append((self.version, self._pending_changes))
            self._pending_changes = ChangeSet()
        if item.request_id:
            # A known id can come back when a deposed leader's plan and the retry's
            # both commit with nothing to replay: same state, same plan, same result.
            self._results.pop(item.request_id, None)
            self._results[item.request_id] = item.result
            while len(self._results) > REQUEST_IDS_MAX:
                self._results.popitem(last=False)

    def replay(self, record: Record) -> None:
        """The only place where the state changes. Asserts what the record promises."""
        changes = self._pending_changes
        if isinstance(record, ClusterInitialized):
            assert record.cluster_id, record
            assert self.cluster_id in ("", record.cluster_id), (
                f"the quorum is cluster {self.cluster_id}; refusing a second cluster id "
                f"{record.cluster_id}"
            )
            self.cluster_id = record.cluster_id
        elif isinstance(record, ControllerEpochBegan):
            assert record.controller_epoch >= self.controller_epoch, record
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
            assert record.name not in self.topics, record.name
            assert record.assignment, record
            self.topics[record.name] = TopicRecord(
                name=record.name,
                topic_id=record.topic_id,
                config=record.config,
                # A new partition: ISR = AR, the preferred replica leads, epochs start at 0.
                partitions=tuple(
                    PartitionRecord(ar=ar, isr=ar, leader=ar[0], leader_epoch=0, partition_epoch=0)
                    for ar in record.assignment
                ),
            )
            for p in self.topics[record.name].partitions:
                assert_partition_invariants(p)
            changes.topics.add(record.name)
        elif isinstance(record, TopicDeleted):
            del self.topics[record.name]
            changes.topics.add(record.name)
        elif isinstance(record, PartitionChanged):
            topic = self.topics[record.topic]
            old = topic.partitions[record.partition]
            new = PartitionRecord(
                ar=old.ar,
                isr=record.isr,
                leader=record.leader,
                leader_epoch=record.leader_epoch,
                partition_epoch=record.partition_epoch,
            )
            assert new.leader_epoch >= old.leader_epoch, (old, new)
            assert new.partition_epoch > old.partition_epoch, (old, new)
            assert_partition_invariants(new)
            partitions = list(topic.partitions)
            partitions[record.partition] = new
            self.topics[record.topic] = replace(topic, partitions=tuple(partitions))
            changes.partitions.add((record.topic, record.partition))
        elif isinstance(record, ProducerIdsAllocated):
            assert record.next_producer_id > self.next_producer_id, (
                record,
                self.next_producer_id,
            )
            self.next_producer_id = record.next_producer_id
        else:  # pragma: no cover - exhaustive
            raise AssertionError(f"unknown record {record!r}")

    def scratch_copy(self) -> MetadataState:
        """A copy the planner may apply planned items to without touching this state.
        Shallow: entities are immutable and replay replaces them, never mutates them."""
        copy = MetadataState()
        copy.version = self.version
        copy.controller_epoch = self.controller_epoch
        copy.cluster_id = self.cluster_id
        copy.next_producer_id = self.next_producer_id
        copy.brokers = dict(self.brokers)
        copy.topics = dict(self.topics)
        copy.controllers = dict(self.controllers)
        copy._results = OrderedDict(self._results)
        return copy

    # ---------------------------------------------------------------- snapshots

    def to_dict(self) -> dict[str, Any]:
        """The replicated state as JSON-able data (the `state` of a snapshot)."""
        return {
            "version": self.version,
            "controller_epoch": self.controller_epoch,
            "cluster_id": self.cluster_id,
            "next_producer_id": self.next_producer_id,
            "brokers": [broker_to_dict(b) for _, b in sorted(self.brokers.items())],
            "controllers": [controller_to_dict(c) for _, c in sorted(self.controllers.items())],
            "topics": [topic_to_dict(t) for _, t in sorted(self.topics.items())],
            "results": [[rid, result_to_dict(r)] for rid, r in self._results.items()],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> MetadataState:
        """The inverse of `to_dict`; MetadataFormatError if `raw` is malformed or breaks
        an invariant (a snapshot is never half-believed)."""
        state = cls()
        try:
            state.version = int(raw["version"])
            state.controller_epoch = int(raw["controller_epoch"])
            state.cluster_id = str(raw["cluster_id"])
            state.next_producer_id = int(raw["next_producer_id"])
            for b in sequence(raw["brokers"], "brokers"):
                broker = broker_from_dict(mapping(b, "broker"))
                state.brokers[broker.broker_id] = broker
            for c in sequence(raw["controllers"], "controllers"):
                controller = controller_from_dict(mapping(c, "controller"))
                state.controllers[controller.controller_id] = controller
            for t in sequence(raw["topics"], "topics"):
                topic = topic_from_dict(mapping(t, "topic"))
                state.topics[topic.name] = topic
            for rid, result in sequence(raw["results"], "results"):
                state._results[str(rid)] = result_from_dict(mapping(result, "result"))
        except (KeyError, TypeError, ValueError) as e:
            raise MetadataFormatError(f"malformed metadata state: {e!r}") from e
        try:
            state.check_invariants()
        except AssertionError as e:
            raise MetadataFormatError(f"the metadata state breaks an invariant: {e}") from e
        return state

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
        assert self.version >= 0 and self.controller_epoch >= 0, self.version
        assert self.next_producer_id >= 0, self.next_producer_id
        # Brokers register only once the cluster id is committed.
        assert self.cluster_id or not self.brokers, self.brokers
        assert len(self._results) <= REQUEST_IDS_MAX
        for _, _, p in self.partitions():
            assert_partition_invariants(p)
            for r in p.isr:
                broker = self.brokers.get(r)
                # A fenced broker stays only as the last member of an offline partition's ISR.
                if broker is not None and broker.fenced:
                    assert p.isr == (r,) and p.leader == NO_LEADER, (r, p)
            if p.leader != NO_LEADER:
                assert not self.brokers[p.leader].fenced, p

    # ---------------------------------------------------------------- planning

    def plan(self, command: Command) -> tuple[list[Record], CommandResult]:
        """Validate `command` against this state: the records that carry it out (in an
        order whose every prefix is a valid state) and its result. Pure: changes nothing.
        A request id seen before gets its first result and no records."""
        cached = self._results.get(command.request_id) if command.request_id else None
        if cached is not None:
            return [], cached
        try:
            return self._plan(command)
        except RaftmqError as e:
            return [], CommandResult(e.code, e.message)

    def _plan(self, command: Command) -> tuple[list[Record], CommandResult]:
        if isinstance(command, InitializeCluster):
            return self._initialize_cluster(command)
        if isinstance(command, BeginControllerEpoch):
            if command.controller_epoch <= self.controller_epoch:
                return [], CommandResult(value=self.controller_epoch)
            return [ControllerEpochBegan(command.controller_epoch)], CommandResult(
                value=command.controller_epoch
            )
        if isinstance(command, RegisterController):
            record = ControllerRecord(command.controller_id, command.host, command.port)
            if self.controllers.get(command.controller_id) == record:
                return [], CommandResult()
            return [ControllerRegistered(record)], CommandResult()
        if isinstance(command, RegisterBroker):
            return self._register_broker(command)
        if isinstance(command, FenceBroker):
            self._check_controller_epoch(command.controller_epoch)
            broker = self._broker(command.broker_id, command.broker_epoch)
            if broker.fenced:
                return [], CommandResult()
            return self._fence(broker.broker_id, shutting_down=False), CommandResult()
        if isinstance(command, UnfenceBroker):
            return self._unfence(command)
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
            if command.name.startswith(INTERNAL_TOPIC_PREFIX):
                raise RaftmqError(
                    ErrorCode.POLICY_VIOLATION,
                    f"topic {command.name!r} is internal to the cluster and cannot be deleted",
                )
            return [TopicDeleted(command.name)], CommandResult()
        if isinstance(command, AlterPartition):
            return self._alter_partition(command)
        if isinstance(command, ElectLeaders):
            return self._elect_leaders(command)
        if isinstance(command, AllocateProducerIds):
            self._broker(command.broker_id, command.broker_epoch)
            first = self.next_producer_id
            block = ProducerIdBlock(first, PRODUCER_ID_BLOCK_SIZE)
            allocated = ProducerIdsAllocated(
                first + PRODUCER_ID_BLOCK_SIZE, command.broker_id, command.broker_epoch
            )
            return [allocated], CommandResult(value=block)
        raise AssertionError(f"unknown command {command!r}")  # pragma: no cover

    def _initialize_cluster(self, command: InitializeCluster) -> tuple[list[Record], CommandResult]:
        assert command.cluster_id, command
        if not self.cluster_id:
            return [ClusterInitialized(command.cluster_id)], CommandResult(value=command.cluster_id)
        if self.cluster_id != command.cluster_id:
            raise RaftmqError(
                ErrorCode.INCONSISTENT_CLUSTER_ID,
                f"the quorum is cluster {self.cluster_id}, not {command.cluster_id}",
            )
        return [], CommandResult(value=self.cluster_id)

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
        if not self.cluster_id:
            raise RaftmqError(
                ErrorCode.CONTROLLER_UNAVAILABLE,
                "the controller quorum is not initialized yet (no cluster id committed)",
            )
        if command.cluster_id and command.cluster_id != self.cluster_id:
            raise RaftmqError(
                ErrorCode.INCONSISTENT_CLUSTER_ID,
                f"broker {command.broker_id} belongs to cluster {command.cluster_id}, "
                f"this quorum is cluster {self.cluster_id}",
            )
        existing = self.brokers.get(command.broker_id)
        if existing is not None and existing.incarnation_id == command.incarnation_id:
            return [], CommandResult(value=existing.broker_epoch)
        records: list[Record] = []
        if existing is not None and not existing.fenced:
            # A new incarnation of a broker replaces the old one at once (it restarted, maybe
            # after kill -9, and may have lost an unflushed tail): the old incarnation leaves
            # every ISR and leadership first, exactly as if its session had expired.
            records += self._fence(existing.broker_id, shutting_down=False)
        # The version this item will bring the state to (one bump per item with records).
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
                    listeners=command.listeners,
                )
            )
        )
        return records, CommandResult(value=broker_epoch)

    def _fence(self, broker_id: int, *, shutting_down: bool) -> list[Record]:
        """Records that fence a broker: it leaves every ISR (unless it is the last member)
        and every leadership moves to another live ISR member, or the partition goes
        offline (or to an out-of-sync replica, if the topic allows unclean election).
        The fence itself comes last, so every prefix leaves a valid state."""
        records: list[Record] = []
        live = self.live_broker_ids() - {broker_id}
        for name, index, p in self.partitions():
            if broker_id not in p.isr and p.leader != broker_id:
                continue
            isr = tuple(r for r in p.isr if r != broker_id) or p.isr
            leader = p.leader
            if leader in (broker_id, NO_LEADER):
                unclean = self.topics[name].config.unclean_leader_election_enable
                leader, isr = elect_leader(p.ar, isr, live, unclean=unclean)
            new = changed_partition(p, leader=leader, isr=isr)
            if new is not None:
                records.append(_partition_changed(name, index, new))
        records.append(BrokerFenceChanged(broker_id, True, shutting_down))
        return records

    def _unfence(self, command: UnfenceBroker) -> tuple[list[Record], CommandResult]:
        """Unfence a broker that caught up, then elect it where a partition is offline and
        it may lead. The unfence comes first (a leader must be unfenced); planned again
        after a prefix, the remaining elections follow."""
        self._check_controller_epoch(command.controller_epoch)
        broker = self._broker(command.broker_id, command.broker_epoch)
        if command.metadata_version < broker.broker_epoch:
            raise RaftmqError(
                ErrorCode.BROKER_NOT_AVAILABLE,
                f"broker {broker.broker_id} has applied metadata version "
                f"{command.metadata_version}, older than its own registration "
                f"({broker.broker_epoch}); it stays fenced until it catches up",
            )
        records: list[Record] = []
        if broker.fenced:
            records.append(BrokerFenceChanged(broker.broker_id, False, False))
        live = self.live_broker_ids() | {broker.broker_id}
        for name, index, p in self.partitions():
            if p.leader != NO_LEADER or broker.broker_id not in p.ar:
                continue
            unclean = self.topics[name].config.unclean_leader_election_enable
            leader, isr = elect_leader(p.ar, p.isr, live, unclean=unclean)
            new = changed_partition(p, leader=leader, isr=isr)
            if new is not None:
                records.append(_partition_changed(name, index, new))
        return records, CommandResult()

    def _create_topic(self, command: CreateTopic) -> tuple[list[Record], CommandResult]:
        validate_topic_name(command.name)
        if command.internal and command.name not in INTERNAL_TOPICS:
            raise RaftmqError(
                ErrorCode.INVALID_TOPIC_NAME,
                f"{command.name!r} is not an internal topic (those are "
                f"{', '.join(sorted(INTERNAL_TOPICS))})",
            )
        if command.name.startswith(INTERNAL_TOPIC_PREFIX) and not command.internal:
            raise RaftmqError(
                ErrorCode.INVALID_TOPIC_NAME,
                f"topic name {command.name!r} starts with {INTERNAL_TOPIC_PREFIX!r}: such "
                "names are reserved for the cluster's internal topics (e.g. __consumer_offsets)",
            )
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
        record = TopicCreated(command.name, command.topic_id, config, tuple(assignment))
        return [record], CommandResult(value=command.name)

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
        record = _partition_changed(command.topic, command.partition, new)
        return [record], CommandResult(value=new)

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
                records.append(_partition_changed(name, index, new))
        return records, CommandResult(value=len(records))


def _partition_changed(topic: str, index: int, p: PartitionRecord) -> PartitionChanged:
    return PartitionChanged(topic, index, p.isr, p.leader, p.leader_epoch, p.partition_epoch)


def assert_partition_invariants(p: PartitionRecord) -> None:
    assert len(set(p.ar)) == len(p.ar), p
    assert p.isr, p
    assert set(p.isr) <= set(p.ar), p
    assert p.leader == NO_LEADER or p.leader in p.isr, p
    assert p.leader_epoch >= 0 and p.partition_epoch >= 0, p
