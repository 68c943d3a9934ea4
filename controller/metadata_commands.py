"""What callers ask the controller quorum to do (commands) and what they get back (results).

A command is planned once, on the Raft leader, against the committed metadata
(`MetadataState.plan`); the log holds the resulting records and the result, never the
command. Commands therefore need no stable encoding: they live in memory only, between a
gRPC handler (or a leader duty) and the leader's planner.

Commands carry a `request_id`: pysyncobj may commit an entry whose caller saw a timeout, so
a retry with the same id is answered with the first result and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from raftmq.errors import ErrorCode
from raftmq.metadata import Listener, PartitionRecord

# Producer ids are handed to brokers in blocks of this many (Kafka's ProducerIdManager).
PRODUCER_ID_BLOCK_SIZE = 1_000


@dataclass(frozen=True, slots=True)
class InitializeCluster:
    """The quorum's first leader commits this before any other duty: the cluster id."""

    request_id: str
    cluster_id: str


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
    # The cluster the broker's data dir belongs to; "" on the broker's first start.
    cluster_id: str = ""
    listeners: tuple[Listener, ...] = ()


@dataclass(frozen=True, slots=True)
class FenceBroker:
    """Issued by the controller leader when a broker's session expired."""

    request_id: str
    controller_epoch: int
    broker_id: int
    broker_epoch: int


@dataclass(frozen=True, slots=True)
class UnfenceBroker:
    """Issued by the controller leader when a fenced broker heartbeats without asking to
    stay fenced. `metadata_version` is the broker's applied metadata version: it must have
    reached the broker's own registration (its broker epoch)."""

    request_id: str
    controller_epoch: int
    broker_id: int
    broker_epoch: int
    metadata_version: int


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
    # Names starting with "__" are reserved for the cluster's own topics, which only the
    # controller creates (internal=True); a client's request for one is refused.
    internal: bool = False


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


@dataclass(frozen=True, slots=True)
class AllocateProducerIds:
    request_id: str
    broker_id: int
    broker_epoch: int


Command: TypeAlias = (
    InitializeCluster
    | BeginControllerEpoch
    | RegisterController
    | RegisterBroker
    | FenceBroker
    | UnfenceBroker
    | ControlledShutdown
    | CreateTopic
    | DeleteTopic
    | AlterPartition
    | ElectLeaders
    | AllocateProducerIds
)


@dataclass(frozen=True, slots=True)
class ProducerIdBlock:
    """Producer ids [first_producer_id, first_producer_id + count)."""

    first_producer_id: int
    count: int


# What a successful command returns besides its error code: a broker epoch, a controller
# epoch or a count (int), a topic name (str), a partition's new state, a producer id block.
ResultValue: TypeAlias = int | str | PartitionRecord | ProducerIdBlock | None


@dataclass(frozen=True, slots=True)
class CommandResult:
    error: ErrorCode = ErrorCode.NONE
    message: str = ""
    value: ResultValue = None

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.NONE
