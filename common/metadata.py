"""Immutable metadata entities: what the controller quorum replicates and what brokers
and clients see through the metadata watch stream. Shared by controller, broker and client."""

from __future__ import annotations

from dataclasses import dataclass

from raftmq.topic_config import TopicConfig

NO_LEADER = -1
PROTOCOL_GRPC = "grpc"
PROTOCOL_KAFKA = "kafka"


@dataclass(frozen=True, slots=True)
class Listener:
    """One advertised listener of a broker (Kafka's named listeners)."""

    name: str
    host: str
    port: int
    protocol: str = PROTOCOL_GRPC


@dataclass(frozen=True, slots=True)
class BrokerRegistration:
    broker_id: int
    host: str
    port: int
    rack: str
    incarnation_id: str
    # Metadata version at which this incarnation registered; heartbeats and AlterPartition
    # must carry it, so a request from a previous incarnation is recognised and refused.
    broker_epoch: int
    # Invariant: a fenced broker leads no partition and is in no ISR, except as the last
    # ISR member of an offline partition (kept so that the data's owner is remembered).
    fenced: bool
    shutting_down: bool = False
    # Every advertised listener; host/port above is the inter-broker one. Empty for a
    # broker registered before named listeners (it has only host/port).
    listeners: tuple[Listener, ...] = ()

    def endpoint_for(
        self, listener: str | None, *, protocol: str = PROTOCOL_GRPC
    ) -> tuple[str, int] | None:
        """The address to give a client of `listener` (None: the inter-broker one). None
        when this broker has no such listener."""
        if listener is None:
            return (self.host, self.port) if protocol == PROTOCOL_GRPC else None
        for item in self.listeners:
            if item.name == listener and item.protocol == protocol:
                return item.host, item.port
        if not self.listeners and protocol == PROTOCOL_GRPC:
            return self.host, self.port
        return None


@dataclass(frozen=True, slots=True)
class PartitionRecord:
    # Assigned replicas; ar[0] is the preferred leader. Invariant: no duplicates.
    ar: tuple[int, ...]
    # In-sync replicas. Invariant: non-empty, a subset of ar, in ar order.
    isr: tuple[int, ...]
    # Invariant: leader == NO_LEADER or leader in isr.
    leader: int
    # Invariant: never decreases; bumped on every leader change.
    leader_epoch: int
    # Invariant: never decreases; bumped on every change of leader or ISR.
    partition_epoch: int

    @property
    def osr(self) -> tuple[int, ...]:
        """Out-of-sync replicas, derived: AR - ISR, in AR order."""
        return tuple(r for r in self.ar if r not in self.isr)


@dataclass(frozen=True, slots=True)
class TopicRecord:
    name: str
    topic_id: bytes
    config: TopicConfig
    partitions: tuple[PartitionRecord, ...]

    @property
    def replication_factor(self) -> int:
        return len(self.partitions[0].ar)


@dataclass(frozen=True, slots=True)
class ControllerRecord:
    controller_id: int
    host: str
    port: int
