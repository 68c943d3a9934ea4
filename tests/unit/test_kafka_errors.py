"""raftmq's error codes on the Kafka wire: every code maps, to the number Kafka publishes,
with Kafka's retriable flag agreeing with ours except where a reason is written down."""

from __future__ import annotations

import pytest
from raftmq.broker.kafka_errors import RETRIABLE_DIFFERS, kafka_error, kafka_error_code
from raftmq.errors import ErrorCode

# Kafka's protocol_errors.html (4.x), the numbers a Kafka client switches on.
PUBLISHED = {
    ErrorCode.NONE: 0,
    ErrorCode.UNKNOWN_SERVER_ERROR: -1,
    ErrorCode.OFFSET_OUT_OF_RANGE: 1,
    ErrorCode.CORRUPT_MESSAGE: 2,
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: 3,
    ErrorCode.LEADER_NOT_AVAILABLE: 5,
    ErrorCode.NOT_LEADER_OR_FOLLOWER: 6,
    ErrorCode.REQUEST_TIMED_OUT: 7,
    ErrorCode.MESSAGE_TOO_LARGE: 10,
    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: 14,
    ErrorCode.COORDINATOR_NOT_AVAILABLE: 15,
    ErrorCode.NOT_COORDINATOR: 16,
    ErrorCode.INVALID_TOPIC_NAME: 17,
    ErrorCode.NOT_ENOUGH_REPLICAS: 19,
    ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND: 20,
    ErrorCode.INVALID_REQUIRED_ACKS: 21,
    ErrorCode.ILLEGAL_GENERATION: 22,
    ErrorCode.INCONSISTENT_GROUP_PROTOCOL: 23,
    ErrorCode.INVALID_GROUP_ID: 24,
    ErrorCode.UNKNOWN_MEMBER_ID: 25,
    ErrorCode.INVALID_SESSION_TIMEOUT: 26,
    ErrorCode.REBALANCE_IN_PROGRESS: 27,
    ErrorCode.TOPIC_ALREADY_EXISTS: 36,
    ErrorCode.INVALID_PARTITIONS: 37,
    ErrorCode.INVALID_REPLICATION_FACTOR: 38,
    ErrorCode.INVALID_CONFIG: 40,
    ErrorCode.NOT_CONTROLLER: 41,
    ErrorCode.INVALID_REQUEST: 42,
    ErrorCode.POLICY_VIOLATION: 44,
    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER: 45,
    ErrorCode.INVALID_PRODUCER_EPOCH: 47,
    ErrorCode.KAFKA_STORAGE_ERROR: 56,
    ErrorCode.UNKNOWN_PRODUCER_ID: 59,
    ErrorCode.NON_EMPTY_GROUP: 68,
    ErrorCode.GROUP_ID_NOT_FOUND: 69,
    ErrorCode.FENCED_LEADER_EPOCH: 74,
    ErrorCode.UNKNOWN_LEADER_EPOCH: 75,
    ErrorCode.MEMBER_ID_REQUIRED: 79,
    ErrorCode.GROUP_MAX_SIZE_REACHED: 81,
    ErrorCode.FENCED_INSTANCE_ID: 82,
    ErrorCode.UNSTABLE_OFFSET_COMMIT: 88,
    ErrorCode.FENCED_MEMBER_EPOCH: 110,
    ErrorCode.UNRELEASED_INSTANCE_ID: 111,
    ErrorCode.UNSUPPORTED_ASSIGNOR: 112,
    ErrorCode.STALE_MEMBER_EPOCH: 113,
}


@pytest.mark.parametrize("code", list(PUBLISHED))
def test_published_numbers(code: ErrorCode) -> None:
    assert kafka_error_code(code) == PUBLISHED[code]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_maps_and_keeps_its_retriable_flag(code: ErrorCode) -> None:
    kafka = kafka_error(code)
    assert kafka_error_code(code) == int(kafka)
    if code in RETRIABLE_DIFFERS:
        assert kafka.retriable != code.retriable, f"{code.name} agrees now: drop it from the list"
    else:
        assert kafka.retriable == code.retriable, code.name
