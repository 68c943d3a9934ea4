"""Metadata records: the state changes the Raft log holds, and their versioned encoding.

Following Kafka's KRaft, the leader validates a command once and appends the resulting
records; every node (and every restart) only replays them. A record says exactly what
changes, so a later change to validation code can never replay an old log into another
state. Each record type has an explicit JSON form (`{"type": ..., ...}`), defined here and
nowhere else; `RECORD_SCHEMA_VERSION` names that form. Nothing of ours is pickled.

Schema versions (bump on any change of a record's or entity's JSON form, and keep reading
the old form for as long as data of that version may exist):
  1: the first versioned form.

Decoding checks every field's type: a malformed or foreign record raises
`MetadataFormatError`, it is never guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from raftmq.metadata import (
    BrokerRegistration,
    ControllerRecord,
    Listener,
    PartitionRecord,
    TopicRecord,
)
from raftmq.topic_config import DEFAULT_CLEANUP_POLICY, DEFAULT_DELETE_RETENTION_MS, TopicConfig

RECORD_SCHEMA_VERSION = 1


class MetadataFormatError(Exception):
    """Encoded metadata (a Raft entry, a record, a snapshot) that this version cannot read."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ClusterInitialized:
    cluster_id: str


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
    """A new topic. Compact: only each partition's assigned replicas are stored; a new
    partition starts with ISR = AR, the first replica leading and both epochs 0."""

    name: str
    topic_id: bytes
    config: TopicConfig
    assignment: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class TopicDeleted:
    name: str


@dataclass(frozen=True, slots=True)
class PartitionChanged:
    """A partition's new leader and ISR with their epochs (no operation changes AR)."""

    topic: str
    partition: int
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int
    partition_epoch: int


@dataclass(frozen=True, slots=True)
class ProducerIdsAllocated:
    """The ids below `next_producer_id` are handed out (to `broker_id`, in one block)."""

    next_producer_id: int
    broker_id: int
    broker_epoch: int


Record: TypeAlias = (
    ClusterInitialized
    | ControllerEpochBegan
    | ControllerRegistered
    | BrokerRegistered
    | BrokerFenceChanged
    | TopicCreated
    | TopicDeleted
    | PartitionChanged
    | ProducerIdsAllocated
)


# --------------------------------------------------------------------------- field checks


def _get(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    value = raw.get(key)
    # bool is an int in Python; keep the two apart.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MetadataFormatError(f"field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _int(raw: Mapping[str, Any], key: str) -> int:
    value: int = _get(raw, key, int)
    return value


def _str(raw: Mapping[str, Any], key: str) -> str:
    value: str = _get(raw, key, str)
    return value


def _bool(raw: Mapping[str, Any], key: str) -> bool:
    value: bool = _get(raw, key, bool)
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise MetadataFormatError(f"{what} must be a list of integers, got {value!r}")
    return tuple(value)


def _hex_bytes(raw: Mapping[str, Any], key: str) -> bytes:
    try:
        return bytes.fromhex(_str(raw, key))
    except ValueError as e:
        raise MetadataFormatError(f"field {key!r} is not hex: {e}") from e


def mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MetadataFormatError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def sequence(value: Any, what: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise MetadataFormatError(f"{what} must be a JSON list, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- entities


def config_to_dict(config: TopicConfig) -> dict[str, Any]:
    return {
        "min_insync_replicas": config.min_insync_replicas,
        "retention_ms": config.retention_ms,
        "retention_bytes": config.retention_bytes,
        "max_message_bytes": config.max_message_bytes,
        "unclean_leader_election_enable": config.unclean_leader_election_enable,
        "cleanup_policy": config.cleanup_policy,
        "delete_retention_ms": config.delete_retention_ms,
    }


def config_from_dict(raw: Mapping[str, Any]) -> TopicConfig:
    # Field by field, not through parse_topic_config: a stored config is not re-validated.
    return TopicConfig(
        min_insync_replicas=_int(raw, "min_insync_replicas"),
        retention_ms=_int(raw, "retention_ms"),
        retention_bytes=_int(raw, "retention_bytes"),
        max_message_bytes=_int(raw, "max_message_bytes"),
        unclean_leader_election_enable=_bool(raw, "unclean_leader_election_enable"),
        # Added in schema 1 after its first release: absent in older entries, which are
        # topics of the default policy.
        cleanup_policy=str(raw.get("cleanup_policy", DEFAULT_CLEANUP_POLICY)),
        delete_retention_ms=int(raw.get("delete_retention_ms", DEFAULT_DELETE_RETENTION_MS)),
    )


def broker_to_dict(b: BrokerRegistration) -> dict[str, Any]:
    return {
        "broker_id": b.broker_id,
        "host": b.host,
        "port": b.port,
        "rack": b.rack,
        "incarnation_id": b.incarnation_id,
        "broker_epoch": b.broker_epoch,
        "fenced": b.fenced,
        "shutting_down": b.shutting_down,
        "listeners": [[x.name, x.host, x.port, x.protocol] for x in b.listeners],
    }


def broker_from_dict(raw: Mapping[str, Any]) -> BrokerRegistration:
    return BrokerRegistration(
        broker_id=_int(raw, "broker_id"),
        host=_str(raw, "host"),
        port=_int(raw, "port"),
        rack=_str(raw, "rack"),
        incarnation_id=_str(raw, "incarnation_id"),
        broker_epoch=_int(raw, "broker_epoch"),
        fenced=_bool(raw, "fenced"),
        shutting_down=_bool(raw, "shutting_down"),
        # Added in schema 1 after its first release: absent in older entries.
        listeners=tuple(
            Listener(str(n), str(h), int(p), str(proto))
            for n, h, p, proto in raw.get("listeners", [])
        ),
    )


def controller_to_dict(c: ControllerRecord) -> dict[str, Any]:
    return {"controller_id": c.controller_id, "host": c.host, "port": c.port}


def controller_from_dict(raw: Mapping[str, Any]) -> ControllerRecord:
    return ControllerRecord(_int(raw, "controller_id"), _str(raw, "host"), _int(raw, "port"))


def partition_to_dict(p: PartitionRecord) -> dict[str, Any]:
    return {
        "ar": list(p.ar),
        "isr": list(p.isr),
        "leader": p.leader,
        "leader_epoch": p.leader_epoch,
        "partition_epoch": p.partition_epoch,
    }


def partition_from_dict(raw: Mapping[str, Any]) -> PartitionRecord:
    return PartitionRecord(
        ar=_ints(raw.get("ar"), "ar"),
        isr=_ints(raw.get("isr"), "isr"),
        leader=_int(raw, "leader"),
        leader_epoch=_int(raw, "leader_epoch"),
        partition_epoch=_int(raw, "partition_epoch"),
    )


def topic_to_dict(t: TopicRecord) -> dict[str, Any]:
    return {
        "name": t.name,
        "topic_id": t.topic_id.hex(),
        "config": config_to_dict(t.config),
        "partitions": [partition_to_dict(p) for p in t.partitions],
    }


def topic_from_dict(raw: Mapping[str, Any]) -> TopicRecord:
    return TopicRecord(
        name=_str(raw, "name"),
        topic_id=_hex_bytes(raw, "topic_id"),
        config=config_from_dict(mapping(raw.get("config"), "config")),
        partitions=tuple(
            partition_from_dict(mapping(p, "partition"))
            for p in sequence(raw.get("partitions"), "partitions")
        ),
    )


# --------------------------------------------------------------------------- records


def record_to_dict(record: Record) -> dict[str, Any]:
    """The record's JSON form (schema RECORD_SCHEMA_VERSION)."""
    if isinstance(record, ClusterInitialized):
        return {"type": "ClusterInitialized", "cluster_id": record.cluster_id}
    if isinstance(record, ControllerEpochBegan):
        return {"type": "ControllerEpochBegan", "controller_epoch": record.controller_epoch}
    if isinstance(record, ControllerRegistered):
        return {"type": "ControllerRegistered", **controller_to_dict(record.controller)}
    if isinstance(record, BrokerRegistered):
        return {"type": "BrokerRegistered", **broker_to_dict(record.broker)}
    if isinstance(record, BrokerFenceChanged):
        return {
            "type": "BrokerFenceChanged",
            "broker_id": record.broker_id,
            "fenced": record.fenced,
            "shutting_down": record.shutting_down,
        }
    if isinstance(record, TopicCreated):
        return {
            "type": "TopicCreated",
            "name": record.name,
            "topic_id": record.topic_id.hex(),
            "config": config_to_dict(record.config),
            "assignment": [list(ar) for ar in record.assignment],
        }
    if isinstance(record, TopicDeleted):
        return {"type": "TopicDeleted", "name": record.name}
    if isinstance(record, PartitionChanged):
        return {
            "type": "PartitionChanged",
            "topic": record.topic,
            "partition": record.partition,
            "isr": list(record.isr),
            "leader": record.leader,
            "leader_epoch": record.leader_epoch,
            "partition_epoch": record.partition_epoch,
        }
    if isinstance(record, ProducerIdsAllocated):
        return {
            "type": "ProducerIdsAllocated",
            "next_producer_id": record.next_producer_id,
            "broker_id": record.broker_id,
            "broker_epoch": record.broker_epoch,
        }
    raise AssertionError(f"unknown record {record!r}")  # pragma: no cover - exhaustive


def record_from_dict(raw: Mapping[str, Any]) -> Record:
    """Decode one record of schema RECORD_SCHEMA_VERSION; MetadataFormatError otherwise."""
    kind = raw.get("type")
    if kind == "ClusterInitialized":
        return ClusterInitialized(_str(raw, "cluster_id"))
    if kind == "ControllerEpochBegan":
        return ControllerEpochBegan(_int(raw, "controller_epoch"))
    if kind == "ControllerRegistered":
        return ControllerRegistered(controller_from_dict(raw))
    if kind == "BrokerRegistered":
        return BrokerRegistered(broker_from_dict(raw))
    if kind == "BrokerFenceChanged":
        return BrokerFenceChanged(
            _int(raw, "broker_id"), _bool(raw, "fenced"), _bool(raw, "shutting_down")
        )
    if kind == "TopicCreated":
        return TopicCreated(
            name=_str(raw, "name"),
            topic_id=_hex_bytes(raw, "topic_id"),
            config=config_from_dict(mapping(raw.get("config"), "config")),
            assignment=tuple(
                _ints(ar, "assignment") for ar in sequence(raw.get("assignment"), "assignment")
            ),
        )
    if kind == "TopicDeleted":
        return TopicDeleted(_str(raw, "name"))
    if kind == "PartitionChanged":
        return PartitionChanged(
            topic=_str(raw, "topic"),
            partition=_int(raw, "partition"),
            isr=_ints(raw.get("isr"), "isr"),
            leader=_int(raw, "leader"),
            leader_epoch=_int(raw, "leader_epoch"),
            partition_epoch=_int(raw, "partition_epoch"),
        )
    if kind == "ProducerIdsAllocated":
        return ProducerIdsAllocated(
            _int(raw, "next_producer_id"), _int(raw, "broker_id"), _int(raw, "broker_epoch")
        )
    raise MetadataFormatError(f"unknown record type {kind!r}")
