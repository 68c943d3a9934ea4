"""Topic configuration: the keys raftmq understands, their defaults and validation.

Shared by the controller (validation at create time) and brokers (enforcement)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from raftmq.errors import ErrorCode, RaftmqError

MAX_PARTITIONS = 10_000
CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
DEFAULT_CLEANUP_POLICY = "delete"
DEFAULT_DELETE_RETENTION_MS = 24 * 3600 * 1000  # Kafka's delete.retention.ms
_MAX_TOPIC_NAME_LENGTH = 249
_LEGAL_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")


@dataclass(frozen=True, slots=True)
class TopicConfig:
    min_insync_replicas: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000  # -1: keep forever
    retention_bytes: int = -1  # -1: no size limit
    max_message_bytes: int = 1_048_588  # Kafka's default, one batch
    unclean_leader_election_enable: bool = False
    # "delete": retention by time and size; "compact": keep the latest record per key;
    # "compact,delete": both. Invariant: one of CLEANUP_POLICIES.
    cleanup_policy: str = DEFAULT_CLEANUP_POLICY
    # Compacted topics: a key's tombstone (null value) is kept this long after it was
    # written, so that consumers see the deletion.
    delete_retention_ms: int = DEFAULT_DELETE_RETENTION_MS

    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy

    @property
    def deletes_by_retention(self) -> bool:
        return "delete" in self.cleanup_policy

    def to_dict(self) -> dict[str, str]:
        return {
            "min.insync.replicas": str(self.min_insync_replicas),
            "retention.ms": str(self.retention_ms),
            "retention.bytes": str(self.retention_bytes),
            "max.message.bytes": str(self.max_message_bytes),
            "unclean.leader.election.enable": str(self.unclean_leader_election_enable).lower(),
            "cleanup.policy": self.cleanup_policy,
            "delete.retention.ms": str(self.delete_retention_ms),
        }


def _parse_int(key: str, value: str, *, minimum: int, maximum: int = 2**63 - 1) -> int:
    try:
        parsed = int(value.strip())
    except ValueError:
        raise RaftmqError(ErrorCode.INVALID_CONFIG, f"{key}={value!r} is not an integer") from None
    if not minimum <= parsed <= maximum:
        raise RaftmqError(
            ErrorCode.INVALID_CONFIG, f"{key}={parsed} is outside [{minimum}, {maximum}]"
        )
    return parsed


def _parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise RaftmqError(ErrorCode.INVALID_CONFIG, f"{key}={value!r} must be true or false")
    return lowered == "true"


def parse_topic_config(configs: Mapping[str, str], *, replication_factor: int) -> TopicConfig:
    """Validate user-supplied configs (unknown keys are errors, as a typo must not pass
    silently) and return the full config with defaults filled in."""
    default = TopicConfig()
    values: dict[str, object] = {}
    for key, value in configs.items():
        if key == "min.insync.replicas":
            values["min_insync_replicas"] = _parse_int(key, value, minimum=1, maximum=2**31 - 1)
        elif key == "retention.ms":
            values["retention_ms"] = _parse_int(key, value, minimum=-1)
        elif key == "retention.bytes":
            values["retention_bytes"] = _parse_int(key, value, minimum=-1)
        elif key == "max.message.bytes":
            values["max_message_bytes"] = _parse_int(key, value, minimum=64, maximum=64 << 20)
        elif key == "unclean.leader.election.enable":
            values["unclean_leader_election_enable"] = _parse_bool(key, value)
        elif key == "cleanup.policy":
            policy = ",".join(sorted(p.strip() for p in value.lower().split(",") if p.strip()))
            if policy not in CLEANUP_POLICIES:
                raise RaftmqError(
                    ErrorCode.INVALID_CONFIG,
                    f"cleanup.policy={value!r} must be delete, compact or compact,delete",
                )
            values["cleanup_policy"] = policy
        elif key == "delete.retention.ms":
            values["delete_retention_ms"] = _parse_int(key, value, minimum=0)
        else:
            known = ", ".join(sorted(default.to_dict()))
            raise RaftmqError(ErrorCode.INVALID_CONFIG, f"unknown config {key!r} (known: {known})")
    config = TopicConfig(**values)  # type: ignore[arg-type]
    if config.min_insync_replicas > replication_factor:
        # Kafka accepts this and then fails every acks=all produce; refusing it up front
        # is kinder.
        raise RaftmqError(
            ErrorCode.INVALID_CONFIG,
            f"min.insync.replicas={config.min_insync_replicas} exceeds the replication "
            f"factor {replication_factor}: acks=all produce could never succeed",
        )
    return config


def validate_topic_name(name: str) -> None:
    """Kafka's topic name rules."""
    if not name:
        raise RaftmqError(ErrorCode.INVALID_TOPIC_NAME, "topic name is empty")
    if name in (".", ".."):
        raise RaftmqError(ErrorCode.INVALID_TOPIC_NAME, f"topic name {name!r} is not allowed")
    if len(name) > _MAX_TOPIC_NAME_LENGTH:
        raise RaftmqError(
            ErrorCode.INVALID_TOPIC_NAME,
            f"topic name is {len(name)} characters long; the limit is {_MAX_TOPIC_NAME_LENGTH}",
        )
    if not _LEGAL_TOPIC_NAME.match(name):
        raise RaftmqError(
            ErrorCode.INVALID_TOPIC_NAME,
            f"topic name {name!r} may contain only ASCII letters, digits, '.', '_' and '-'",
        )


def collision_key(name: str) -> str:
    """Kafka rejects topics that differ only by '.' versus '_' (their metric names collide)."""
    return name.replace(".", "_")
