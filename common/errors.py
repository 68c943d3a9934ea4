"""The one error vocabulary of raftmq, shared by domain code, servers and clients.

`ErrorCode` mirrors the `raftmq.v1.ErrorCode` protobuf enum value for value (a unit test
keeps them equal), so that domain code never imports generated protobuf modules.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    NONE = 0
    UNKNOWN_SERVER_ERROR = 1
    INVALID_REQUEST = 2
    NOT_CONTROLLER = 3
    CONTROLLER_UNAVAILABLE = 4
    STALE_CONTROLLER_EPOCH = 5
    UNKNOWN_TOPIC_OR_PARTITION = 6
    TOPIC_ALREADY_EXISTS = 7
    INVALID_TOPIC_NAME = 8
    INVALID_PARTITIONS = 9
    INVALID_REPLICATION_FACTOR = 10
    INVALID_CONFIG = 11
    BROKER_NOT_AVAILABLE = 12
    STALE_BROKER_EPOCH = 13
    INVALID_UPDATE_VERSION = 14
    INELIGIBLE_REPLICA = 15
    NOT_LEADER_OR_FOLLOWER = 16
    LEADER_NOT_AVAILABLE = 17
    FENCED_LEADER_EPOCH = 18
    UNKNOWN_LEADER_EPOCH = 19
    NOT_ENOUGH_REPLICAS = 20
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 21
    REQUEST_TIMED_OUT = 22
    MESSAGE_TOO_LARGE = 23
    CORRUPT_MESSAGE = 24
    OFFSET_OUT_OF_RANGE = 25
    INVALID_REQUIRED_ACKS = 26
    POLICY_VIOLATION = 27
    KAFKA_STORAGE_ERROR = 28
    DUPLICATE_BROKER_REGISTRATION = 29
    INCONSISTENT_CLUSTER_ID = 30
    OUT_OF_ORDER_SEQUENCE_NUMBER = 31
    UNKNOWN_PRODUCER_ID = 32
    INVALID_PRODUCER_EPOCH = 33

    @property
    def retriable(self) -> bool:
        """True when the same request may succeed after a metadata refresh and a backoff."""
        return self in _RETRIABLE


_RETRIABLE = frozenset(
    {
        ErrorCode.NOT_CONTROLLER,
        ErrorCode.CONTROLLER_UNAVAILABLE,
        ErrorCode.STALE_CONTROLLER_EPOCH,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.BROKER_NOT_AVAILABLE,
        ErrorCode.INVALID_UPDATE_VERSION,
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.LEADER_NOT_AVAILABLE,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ErrorCode.REQUEST_TIMED_OUT,
        ErrorCode.KAFKA_STORAGE_ERROR,
        ErrorCode.DUPLICATE_BROKER_REGISTRATION,
    }
)


class RaftmqError(Exception):
    """An operating error with a wire error code. Programmer errors are assertions instead."""

    def __init__(self, code: ErrorCode, message: str = "", leader_id: int = -1) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message
        # With NOT_CONTROLLER / NOT_LEADER_OR_FOLLOWER: the node to ask instead, -1 if unknown.
        self.leader_id = leader_id

    @property
    def retriable(self) -> bool:
        return self.code.retriable
