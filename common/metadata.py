"""Immutable metadata entities: what the controller quorum replicates and what brokers
and clients see through the metadata watch stream. Shared by controller, broker and client."""

from __future__ import annotations

from dataclasses import dataclass

from raftmq.topic_config import TopicConfig

NO_LEADER = -1


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
