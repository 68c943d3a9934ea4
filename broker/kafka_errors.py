"""raftmq's error codes as Kafka's numeric protocol error codes, for the Kafka listener.

Kafka's side of the table is `kio.schema.errors.ErrorCode` (generated from Kafka's
`Errors.java`, numbers and retriable flags as Kafka 4.x publishes them in
`protocol_errors.html`). Each raftmq code maps to the Kafka code of the same meaning, so
that a Kafka client reacts to it as it would to Apache Kafka: it refreshes metadata on
NOT_LEADER_OR_FOLLOWER, rejoins on ILLEGAL_GENERATION, gives up on MESSAGE_TOO_LARGE.

Retriable flags agree on both sides except for the codes in `RETRIABLE_DIFFERS`, each
with the reason Kafka's flag is the right one for a Kafka client (a unit test holds both
sides to that list). Codes that exist only on the Kafka wire (UNSUPPORTED_VERSION,
DUPLICATE_SEQUENCE_NUMBER, UNKNOWN_TOPIC_ID, ...) are used directly as `KafkaErrorCode`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from kio.schema.errors import ErrorCode as KafkaErrorCode
from raftmq.errors import ErrorCode

__all__ = ["RETRIABLE_DIFFERS", "KafkaErrorCode", "kafka_error", "kafka_error_code"]

_K = KafkaErrorCode

_TO_KAFKA: Final = MappingProxyType(
    {
        ErrorCode.NONE: _K.none,
        ErrorCode.UNKNOWN_SERVER_ERROR: _K.unknown_server_error,
        ErrorCode.INVALID_REQUEST: _K.invalid_request,
        ErrorCode.NOT_CONTROLLER: _K.not_controller,
        # A Kafka admin client retries NOT_CONTROLLER after a metadata refresh, which is
        # what a caller of ours should do when no controller answered or one moved on.
        ErrorCode.CONTROLLER_UNAVAILABLE: _K.not_controller,
        ErrorCode.STALE_CONTROLLER_EPOCH: _K.not_controller,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: _K.unknown_topic_or_partition,
        ErrorCode.TOPIC_ALREADY_EXISTS: _K.topic_already_exists,
        ErrorCode.INVALID_TOPIC_NAME: _K.invalid_topic_exception,
        ErrorCode.INVALID_PARTITIONS: _K.invalid_partitions,
        ErrorCode.INVALID_REPLICATION_FACTOR: _K.invalid_replication_factor,
        ErrorCode.INVALID_CONFIG: _K.invalid_config,
        ErrorCode.BROKER_NOT_AVAILABLE: _K.broker_not_available,
        ErrorCode.STALE_BROKER_EPOCH: _K.stale_broker_epoch,
        ErrorCode.INVALID_UPDATE_VERSION: _K.invalid_update_version,
        ErrorCode.INELIGIBLE_REPLICA: _K.ineligible_replica,
        ErrorCode.NOT_LEADER_OR_FOLLOWER: _K.not_leader_or_follower,
        ErrorCode.LEADER_NOT_AVAILABLE: _K.leader_not_available,
        ErrorCode.FENCED_LEADER_EPOCH: _K.fenced_leader_epoch,
        ErrorCode.UNKNOWN_LEADER_EPOCH: _K.unknown_leader_epoch,
        ErrorCode.NOT_ENOUGH_REPLICAS: _K.not_enough_replicas,
        ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND: _K.not_enough_replicas_after_append,
        ErrorCode.REQUEST_TIMED_OUT: _K.request_timed_out,
        ErrorCode.MESSAGE_TOO_LARGE: _K.message_too_large,
        ErrorCode.CORRUPT_MESSAGE: _K.corrupt_message,
        ErrorCode.OFFSET_OUT_OF_RANGE: _K.offset_out_of_range,
        ErrorCode.INVALID_REQUIRED_ACKS: _K.invalid_required_acks,
        ErrorCode.POLICY_VIOLATION: _K.policy_violation,
        ErrorCode.KAFKA_STORAGE_ERROR: _K.kafka_storage_error,
        ErrorCode.DUPLICATE_BROKER_REGISTRATION: _K.duplicate_broker_registration,
        ErrorCode.INCONSISTENT_CLUSTER_ID: _K.inconsistent_cluster_id,
        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER: _K.out_of_order_sequence_number,
        ErrorCode.UNKNOWN_PRODUCER_ID: _K.unknown_producer_id,
        ErrorCode.INVALID_PRODUCER_EPOCH: _K.invalid_producer_epoch,
        ErrorCode.COORDINATOR_NOT_AVAILABLE: _K.coordinator_not_available,
        ErrorCode.NOT_COORDINATOR: _K.not_coordinator,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: _K.coordinator_load_in_progress,
        ErrorCode.INVALID_GROUP_ID: _K.invalid_group_id,
        ErrorCode.UNKNOWN_MEMBER_ID: _K.unknown_member_id,
        ErrorCode.FENCED_MEMBER_EPOCH: _K.fenced_member_epoch,
        ErrorCode.STALE_MEMBER_EPOCH: _K.stale_member_epoch,
        ErrorCode.UNRELEASED_INSTANCE_ID: _K.unreleased_instance_id,
        ErrorCode.GROUP_ID_NOT_FOUND: _K.group_id_not_found,
        ErrorCode.NON_EMPTY_GROUP: _K.non_empty_group,
        ErrorCode.UNSUPPORTED_ASSIGNOR: _K.unsupported_assignor,
        # Kafka has no "not the owner" code: a classic member whose commit is refused for
        # ownership is behind the group's generation, and ILLEGAL_GENERATION makes every
        # Kafka client rejoin, which is the cure.
        ErrorCode.NOT_PARTITION_OWNER: _K.illegal_generation,
        ErrorCode.GROUP_MAX_SIZE_REACHED: _K.group_max_size_reached,
        ErrorCode.OFFSET_METADATA_TOO_LARGE: _K.offset_metadata_too_large,
        ErrorCode.INVALID_COMMIT_OFFSET: _K.invalid_commit_offset_size,
        ErrorCode.ILLEGAL_GENERATION: _K.illegal_generation,
        ErrorCode.REBALANCE_IN_PROGRESS: _K.rebalance_in_progress,
        ErrorCode.INCONSISTENT_GROUP_PROTOCOL: _K.inconsistent_group_protocol,
        ErrorCode.MEMBER_ID_REQUIRED: _K.member_id_required,
        ErrorCode.FENCED_INSTANCE_ID: _K.fenced_instance_id,
        ErrorCode.INVALID_SESSION_TIMEOUT: _K.invalid_session_timeout,
        ErrorCode.UNSTABLE_OFFSET_COMMIT: _K.unstable_offset_commit,
    }
)
assert set(_TO_KAFKA) == set(ErrorCode), "every raftmq code needs its Kafka code"

# Where raftmq's retriable flag and Kafka's differ, and why Kafka's flag is kept.
RETRIABLE_DIFFERS: Final = MappingProxyType(
    {
        # Kafka retries a CRC failure (it assumes corruption in transit); raftmq refuses the
        # batch for good. A Kafka producer resends the same bytes and gets the same answer
        # until its delivery timeout; nothing is stored either way.
        ErrorCode.CORRUPT_MESSAGE: "Kafka producers retry CRC failures (transit corruption)",
        # A Kafka client sees these only from the broker's own calls, never on its path.
        ErrorCode.BROKER_NOT_AVAILABLE: "raised by our clients' transports, not by a broker",
        ErrorCode.INVALID_UPDATE_VERSION: "broker-to-controller only",
        ErrorCode.DUPLICATE_BROKER_REGISTRATION: "broker-to-controller only",
        # Kafka clients handle these group codes by name (rejoin with the member id the
        # response carries; heartbeat for the new epoch; wait for the old instance), not
        # by the generic retry loop, so Kafka's flag is what they expect.
        ErrorCode.MEMBER_ID_REQUIRED: "Kafka clients rejoin with the given member id",
        ErrorCode.STALE_MEMBER_EPOCH: "Kafka clients handle it by name (KIP-848)",
        ErrorCode.UNRELEASED_INSTANCE_ID: "Kafka clients handle it by name (KIP-848)",
    }
)


def kafka_error(code: ErrorCode) -> KafkaErrorCode:
    """The Kafka error of raftmq's `code`, as the enum kio's response fields take."""
    return _TO_KAFKA[code]


def kafka_error_code(code: ErrorCode) -> int:
    """Kafka's numeric protocol error code for raftmq's `code` (NOT_LEADER_OR_FOLLOWER → 6)."""
    return int(_TO_KAFKA[code])
