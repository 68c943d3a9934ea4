"""The records of consumer groups in `__consumer_offsets`: one Kafka record per fact, whose
key names the fact (so that compaction keeps the latest per key) and whose value is its
state; a null value (tombstone) deletes it.

Encoding: canonical JSON (sorted keys, no spaces) with a schema version in every key and
value, so that a later version can read — or knowingly refuse — what this one wrote.
Keys, by type `t`:

- `o`  offset commit        (group, topic, partition)  -> offset, leader epoch, metadata, time
- `g`  group metadata        (group)                    -> group epoch, empty-since time
- `m`  member metadata       (group, member)            -> subscription, timeouts, instance id
- `a`  target assignment     (group)                    -> assignment epoch
- `t`  member's target       (group, member)            -> partitions
- `c`  member's current      (group, member)            -> member epoch, assigned, revoking
- `k`  classic group         (group)                    -> generation, protocol, leader, members
                                                           with their metadata and assignment

A classic group (Kafka's JoinGroup / SyncGroup protocol, client-side assignment) is one
record, a snapshot of the group as of a generation, as Kafka's GroupMetadataValue is;
bytes (protocol metadata, assignments) are base64 in it. Adding a key type keeps every
earlier key and value readable unchanged; a reader older than a type refuses it.

Pure: bytes in, dataclasses out.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

TopicPartition = tuple[str, int]


class GroupRecordError(Exception):
    """A record of __consumer_offsets this version cannot read."""


@dataclass(frozen=True, slots=True)
class OffsetKey:
    group: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class OffsetValue:
    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp_ms: int


@dataclass(frozen=True, slots=True)
class GroupKey:
    group: str


@dataclass(frozen=True, slots=True)
class GroupValue:
    group_epoch: int
    # Wall-clock ms since when the group has had no member (offset retention counts from
    # it); -1 while it has members.
    empty_since_ms: int = -1


@dataclass(frozen=True, slots=True)
class MemberKey:
    group: str
    member_id: str


@dataclass(frozen=True, slots=True)
class MemberValue:
    instance_id: str = ""
    client_id: str = ""
    subscribed_topics: tuple[str, ...] = ()
    subscribed_pattern: str = ""
    assignor: str = "uniform"
    rebalance_timeout_ms: int = 30_000
    session_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class AssignmentKey:
    group: str


@dataclass(frozen=True, slots=True)
class AssignmentValue:
    assignment_epoch: int
    # The subscribed topics' partition counts the target was computed from: a change
    # (new partitions, a new topic matching a pattern) re-targets the group.
    topic_partitions: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class TargetKey:
    group: str
    member_id: str


@dataclass(frozen=True, slots=True)
class TargetValue:
    partitions: frozenset[TopicPartition] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class CurrentKey:
    group: str
    member_id: str


@dataclass(frozen=True, slots=True)
class CurrentValue:
    member_epoch: int
    previous_member_epoch: int
    assigned: frozenset[TopicPartition] = field(default_factory=frozenset)
    revoking: frozenset[TopicPartition] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class ClassicGroupKey:
    group: str


@dataclass(frozen=True, slots=True)
class ClassicMemberValue:
    member_id: str
    instance_id: str  # "" for a dynamic member
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    # (protocol name, metadata) in the member's order of preference.
    protocols: tuple[tuple[str, bytes], ...]
    # What the leader's SyncGroup gave it at this generation (b"" before the sync).
    assignment: bytes = b""
    # What it owned at the generation before, for a "consumer" group: a member may still
    # commit those no one owns now (a cooperative member commits what it revokes after
    # the sync that revoked it).
    previous_owned: frozenset[TopicPartition] = frozenset()


@dataclass(frozen=True, slots=True)
class ClassicGroupValue:
    protocol_type: str
    generation_id: int
    # "" while the group is empty.
    protocol_name: str
    leader_id: str
    # "empty", "completing_rebalance" or "stable": the states a generation is written in.
    state: str
    members: tuple[ClassicMemberValue, ...] = ()
    # Wall-clock ms since when the group has had no member (offset retention counts from
    # it); -1 while it has members.
    empty_since_ms: int = -1


Key = OffsetKey | GroupKey | MemberKey | AssignmentKey | TargetKey | CurrentKey | ClassicGroupKey
Value = (
    OffsetValue
    | GroupValue
    | MemberValue
    | AssignmentValue
    | TargetValue
    | CurrentValue
    | ClassicGroupValue
)


@dataclass(frozen=True, slots=True)
class GroupRecord:
    key: Key
    value: Value | None  # None: a tombstone


def _dumps(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _partitions_to(partitions: frozenset[TopicPartition]) -> dict[str, list[int]]:
    by_topic: dict[str, list[int]] = {}
    for topic, index in sorted(partitions):
        by_topic.setdefault(topic, []).append(index)
    return by_topic


def _partitions_from(raw: Any) -> frozenset[TopicPartition]:
    if not isinstance(raw, dict):
        raise GroupRecordError(f"partitions must be an object, got {raw!r}")
    return frozenset((str(t), int(p)) for t, ps in raw.items() for p in ps)


def encode_key(key: Key) -> bytes:
    if isinstance(key, OffsetKey):
        raw: dict[str, Any] = {"t": "o", "g": key.group, "tp": [key.topic, key.partition]}
    elif isinstance(key, GroupKey):
        raw = {"t": "g", "g": key.group}
    elif isinstance(key, MemberKey):
        raw = {"t": "m", "g": key.group, "m": key.member_id}
    elif isinstance(key, AssignmentKey):
        raw = {"t": "a", "g": key.group}
    elif isinstance(key, TargetKey):
        raw = {"t": "t", "g": key.group, "m": key.member_id}
    elif isinstance(key, CurrentKey):
        raw = {"t": "c", "g": key.group, "m": key.member_id}
    else:
        raw = {"t": "k", "g": key.group}
    raw["v"] = SCHEMA_VERSION
    return _dumps(raw)


def encode_value(value: Value | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, OffsetValue):
        raw: dict[str, Any] = {
            "offset": value.offset,
            "leader_epoch": value.leader_epoch,
            "metadata": value.metadata,
            "ts": value.commit_timestamp_ms,
        }
    elif isinstance(value, GroupValue):
        raw = {"epoch": value.group_epoch, "empty_since": value.empty_since_ms}
    elif isinstance(value, MemberValue):
        raw = {
            "instance": value.instance_id,
            "client": value.client_id,
            "topics": list(value.subscribed_topics),
            "pattern": value.subscribed_pattern,
            "assignor": value.assignor,
            "rebalance_timeout_ms": value.rebalance_timeout_ms,
            "session_timeout_ms": value.session_timeout_ms,
        }
    elif isinstance(value, AssignmentValue):
        raw = {"epoch": value.assignment_epoch, "topics": dict(value.topic_partitions)}
    elif isinstance(value, TargetValue):
        raw = {"partitions": _partitions_to(value.partitions)}
    elif isinstance(value, CurrentValue):
        raw = {
            "epoch": value.member_epoch,
            "previous_epoch": value.previous_member_epoch,
            "assigned": _partitions_to(value.assigned),
            "revoking": _partitions_to(value.revoking),
        }
    else:
        raw = {
            "protocol_type": value.protocol_type,
            "generation": value.generation_id,
            "protocol": value.protocol_name,
            "leader": value.leader_id,
            "state": value.state,
            "members": [_classic_member_to(m) for m in value.members],
            "empty_since": value.empty_since_ms,
        }
    raw["v"] = SCHEMA_VERSION
    return _dumps(raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise GroupRecordError(f"bytes must be base64 text, got {text!r}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise GroupRecordError(f"bad base64: {e}") from e


def _classic_member_to(m: ClassicMemberValue) -> dict[str, Any]:
    return {
        "member": m.member_id,
        "instance": m.instance_id,
        "client": m.client_id,
        "host": m.client_host,
        "session_timeout_ms": m.session_timeout_ms,
        "rebalance_timeout_ms": m.rebalance_timeout_ms,
        "protocols": [[name, _b64(metadata)] for name, metadata in m.protocols],
        "assignment": _b64(m.assignment),
        "previous_owned": _partitions_to(m.previous_owned),
    }


def _classic_member_from(raw: Any) -> ClassicMemberValue:
    return ClassicMemberValue(
        str(raw["member"]),
        str(raw["instance"]),
        str(raw["client"]),
        str(raw["host"]),
        int(raw["session_timeout_ms"]),
        int(raw["rebalance_timeout_ms"]),
        tuple((str(name), _unb64(metadata)) for name, metadata in raw["protocols"]),
        _unb64(raw["assignment"]),
        _partitions_from(raw["previous_owned"]),
    )


def encode(record: GroupRecord) -> tuple[bytes, bytes | None]:
    return encode_key(record.key), encode_value(record.value)


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise GroupRecordError(f"unreadable {what}: {e}") from e
    if not isinstance(raw, dict):
        raise GroupRecordError(f"{what} is not an object")
    version = raw.get("v")
    if version != SCHEMA_VERSION:
        raise GroupRecordError(f"{what} has schema version {version!r}; this version reads 1")
    return raw


def decode(key_bytes: bytes, value_bytes: bytes | None) -> GroupRecord:
    """Raises GroupRecordError for a record this version cannot read."""
    raw = _load(key_bytes, "key")
    try:
        kind = raw["t"]
        group = str(raw["g"])
        key: Key
        if kind == "o":
            topic, index = raw["tp"]
            key = OffsetKey(group, str(topic), int(index))
        elif kind == "g":
            key = GroupKey(group)
        elif kind == "m":
            key = MemberKey(group, str(raw["m"]))
        elif kind == "a":
            key = AssignmentKey(group)
        elif kind == "t":
            key = TargetKey(group, str(raw["m"]))
        elif kind == "c":
            key = CurrentKey(group, str(raw["m"]))
        elif kind == "k":
            key = ClassicGroupKey(group)
        else:
            raise GroupRecordError(f"unknown record type {kind!r}")
        if value_bytes is None:
            return GroupRecord(key, None)
        v = _load(value_bytes, "value")
        value: Value
        if isinstance(key, OffsetKey):
            value = OffsetValue(
                int(v["offset"]), int(v["leader_epoch"]), str(v["metadata"]), int(v["ts"])
            )
        elif isinstance(key, GroupKey):
            value = GroupValue(int(v["epoch"]), int(v["empty_since"]))
        elif isinstance(key, MemberKey):
            value = MemberValue(
                str(v["instance"]),
                str(v["client"]),
                tuple(str(t) for t in v["topics"]),
                str(v["pattern"]),
                str(v["assignor"]),
                int(v["rebalance_timeout_ms"]),
                int(v["session_timeout_ms"]),
            )
        elif isinstance(key, AssignmentKey):
            value = AssignmentValue(
                int(v["epoch"]),
                tuple(sorted((str(t), int(n)) for t, n in dict(v["topics"]).items())),
            )
        elif isinstance(key, TargetKey):
            value = TargetValue(_partitions_from(v["partitions"]))
        elif isinstance(key, CurrentKey):
            value = CurrentValue(
                int(v["epoch"]),
                int(v["previous_epoch"]),
                _partitions_from(v["assigned"]),
                _partitions_from(v["revoking"]),
            )
        else:
            value = ClassicGroupValue(
                str(v["protocol_type"]),
                int(v["generation"]),
                str(v["protocol"]),
                str(v["leader"]),
                str(v["state"]),
                tuple(_classic_member_from(m) for m in v["members"]),
                int(v["empty_since"]),
            )
    except (KeyError, TypeError, ValueError) as e:
        raise GroupRecordError(f"malformed record {key_bytes!r}: {e!r}") from e
    return GroupRecord(key, value)
