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
    COORDINATOR_NOT_AVAILABLE = 34
    NOT_COORDINATOR = 35
    COORDINATOR_LOAD_IN_PROGRESS = 36
    INVALID_GROUP_ID = 37
    UNKNOWN_MEMBER_ID = 38
    FENCED_MEMBER_EPOCH = 39
    STALE_MEMBER_EPOCH = 40
    UNRELEASED_INSTANCE_ID = 41
    GROUP_ID_NOT_FOUND = 42
    NON_EMPTY_GROUP = 43
    UNSUPPORTED_ASSIGNOR = 44
    NOT_PARTITION_OWNER = 45
    GROUP_MAX_SIZE_REACHED = 46
    OFFSET_METADATA_TOO_LARGE = 47
    INVALID_COMMIT_OFFSET = 48
    ILLEGAL_GENERATION = 49
    REBALANCE_IN_PROGRESS = 50
    INCONSISTENT_GROUP_PROTOCOL = 51
    MEMBER_ID_REQUIRED = 52
    FENCED_INSTANCE_ID = 53
    INVALID_SESSION_TIMEOUT = 54
    UNSTABLE_OFFSET_COMMIT = 55

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
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode.STALE_MEMBER_EPOCH,
        ErrorCode.UNRELEASED_INSTANCE_ID,
        ErrorCode.MEMBER_ID_REQUIRED,
        ErrorCode.UNSTABLE_OFFSET_COMMIT,
    }
)


# Codes a broker returns only for a produce it refused before appending anything (the
# proto documents each). NOT_LEADER_OR_FOLLOWER is not here: a broker also returns it when
# leadership moved after the append, and the write may survive.
NOTHING_APPENDED_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.CORRUPT_MESSAGE,
        ErrorCode.INVALID_REQUIRED_ACKS,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.LEADER_NOT_AVAILABLE,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode.UNKNOWN_PRODUCER_ID,
        ErrorCode.INVALID_PRODUCER_EPOCH,
    }
)


class RaftmqError(Exception):
    """An operating error with a wire error code. Programmer errors are assertions instead.

    `RaftmqError(code, message)` builds the subclass for that code (`NotLeaderOrFollowerError`
    for NOT_LEADER_OR_FOLLOWER, ...), so callers catch the precise type while every raise
    site keeps one constructor. `str(e)` says what happened and, for client-facing codes,
    what to do about it."""

    code: ErrorCode

    def __new__(cls, *args: object, **kwargs: object) -> RaftmqError:
        if cls is not RaftmqError:
            return super().__new__(cls)
        code = args[0] if args else kwargs["code"]
        assert isinstance(code, ErrorCode)
        return super().__new__(_BY_CODE.get(code, RaftmqError))

    def __init__(self, code: ErrorCode, message: str = "", leader_id: int = -1) -> None:
        hint = _HINTS.get(code)
        text = f"{code.name}: {message}" if message else code.name
        # Once: a message that quotes another error of the same code carries it already.
        super().__init__(f"{text} ({hint})" if hint and hint not in message else text)
        self.code = code
        self.message = message
        # With NOT_CONTROLLER / NOT_LEADER_OR_FOLLOWER: the node to ask instead, -1 if unknown.
        self.leader_id = leader_id

    def __reduce__(self) -> tuple[object, ...]:
        return (RaftmqError, (self.code, self.message, self.leader_id))

    @property
    def retriable(self) -> bool:
        return self.code.retriable


class OutcomeUnknownError(RaftmqError):
    """A request that may or may not have taken effect: it was sent, and then timed out, lost
    its connection or lost its leader before the answer came. "Maybe written", as opposed
    to every other error, which means "not written". `cause` is the last error seen."""

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(ErrorCode.REQUEST_TIMED_OUT, message)
        self.cause = cause

    def __reduce__(self) -> tuple[object, ...]:
        return (OutcomeUnknownError, (self.message,))


class WriterClosedError(RaftmqError):
    """Not written: the Writer was closed before the message was sent (its `close()`
    waited as long as its bound allows, then gave up on what was left). Nothing was sent,
    so nothing can appear later; not retriable on that Writer."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.REQUEST_TIMED_OUT, message)
        # Not REQUEST_TIMED_OUT's hint ("may or may not have been stored"): never sent.
        self.args = (f"WRITER_CLOSED: {message} (nothing was sent; write it with an open Writer)",)

    def __reduce__(self) -> tuple[object, ...]:
        return (WriterClosedError, (self.message,))

    @property
    def retriable(self) -> bool:
        return False


# What to do, for the codes a client application meets.
_HINTS: dict[ErrorCode, str] = {
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: "create the topic, or let the writer create it with "
    "allow_auto_topic_creation=True",
    ErrorCode.NOT_LEADER_OR_FOLLOWER: "refresh metadata and retry at the current leader",
    ErrorCode.LEADER_NOT_AVAILABLE: "the partition has no live in-sync leader right now; retry "
    "after a backoff",
    ErrorCode.NOT_ENOUGH_REPLICAS: "fewer in-sync replicas than min.insync.replicas; nothing "
    "was written; retry later",
    ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND: "the write may or may not survive; an "
    "idempotent writer may retry it safely",
    ErrorCode.REQUEST_TIMED_OUT: "the write may or may not have been stored; an idempotent "
    "writer may retry it safely",
    ErrorCode.MESSAGE_TOO_LARGE: "nothing was written; send smaller batches or raise the "
    "topic's max.message.bytes",
    ErrorCode.CORRUPT_MESSAGE: "nothing was written; the batch bytes are malformed",
    ErrorCode.OFFSET_OUT_OF_RANGE: "seek to an offset between the log start and the high watermark",
    ErrorCode.BROKER_NOT_AVAILABLE: "check the bootstrap addresses and that the brokers run",
    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER: "nothing was written; the producer lost track of "
    "its sequence and must re-initialise",
    ErrorCode.UNKNOWN_PRODUCER_ID: "nothing was written; re-initialise the producer id",
    ErrorCode.INVALID_PRODUCER_EPOCH: "nothing was written; a newer instance of this producer "
    "exists",
    ErrorCode.INCONSISTENT_CLUSTER_ID: "the node and the quorum belong to different clusters",
    ErrorCode.TOPIC_ALREADY_EXISTS: "pick another name or use the existing topic",
    ErrorCode.INVALID_TOPIC_NAME: "use [a-zA-Z0-9._-], at most 249 characters, not starting "
    "with '__'",
    ErrorCode.INVALID_REPLICATION_FACTOR: "use at most as many replicas as there are live brokers",
    ErrorCode.NOT_COORDINATOR: "find the group's coordinator again and retry there",
    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: "the coordinator is loading the group; retry shortly",
    ErrorCode.COORDINATOR_NOT_AVAILABLE: "the group's coordinator is not available yet; retry "
    "after a backoff",
    ErrorCode.UNKNOWN_MEMBER_ID: "the member left the group or was evicted; join again",
    ErrorCode.FENCED_MEMBER_EPOCH: "the member was fenced (a newer epoch exists); join again",
    ErrorCode.STALE_MEMBER_EPOCH: "heartbeat to learn the current member epoch, then retry",
    ErrorCode.NOT_PARTITION_OWNER: "the member does not own the partition at its epoch; its "
    "commit was refused so that a zombie cannot move the group's offset",
    ErrorCode.NON_EMPTY_GROUP: "stop the group's consumers first",
    ErrorCode.GROUP_ID_NOT_FOUND: "no such group",
    ErrorCode.ILLEGAL_GENERATION: "the group moved to a new generation; join again",
    ErrorCode.REBALANCE_IN_PROGRESS: "the group is rebalancing; join again",
    ErrorCode.MEMBER_ID_REQUIRED: "join again with the member id this response carries",
    ErrorCode.FENCED_INSTANCE_ID: "a newer member runs with this group.instance.id",
}


# One exception type per code (`RaftmqError(code, ...)` builds the right one).


class UnknownServerErrorError(RaftmqError):
    """UNKNOWN_SERVER_ERROR."""


class InvalidRequestError(RaftmqError):
    """INVALID_REQUEST."""


class NotControllerError(RaftmqError):
    """NOT_CONTROLLER."""


class ControllerUnavailableError(RaftmqError):
    """CONTROLLER_UNAVAILABLE."""


class StaleControllerEpochError(RaftmqError):
    """STALE_CONTROLLER_EPOCH."""


class UnknownTopicOrPartitionError(RaftmqError):
    """UNKNOWN_TOPIC_OR_PARTITION."""


class TopicAlreadyExistsError(RaftmqError):
    """TOPIC_ALREADY_EXISTS."""


class InvalidTopicNameError(RaftmqError):
    """INVALID_TOPIC_NAME."""


class InvalidPartitionsError(RaftmqError):
    """INVALID_PARTITIONS."""


class InvalidReplicationFactorError(RaftmqError):
    """INVALID_REPLICATION_FACTOR."""


class InvalidConfigError(RaftmqError):
    """INVALID_CONFIG."""


class BrokerNotAvailableError(RaftmqError):
    """BROKER_NOT_AVAILABLE."""


class StaleBrokerEpochError(RaftmqError):
    """STALE_BROKER_EPOCH."""


class InvalidUpdateVersionError(RaftmqError):
    """INVALID_UPDATE_VERSION."""


class IneligibleReplicaError(RaftmqError):
    """INELIGIBLE_REPLICA."""


class NotLeaderOrFollowerError(RaftmqError):
    """NOT_LEADER_OR_FOLLOWER."""


class LeaderNotAvailableError(RaftmqError):
    """LEADER_NOT_AVAILABLE."""


class FencedLeaderEpochError(RaftmqError):
    """FENCED_LEADER_EPOCH."""


class UnknownLeaderEpochError(RaftmqError):
    """UNKNOWN_LEADER_EPOCH."""


class NotEnoughReplicasError(RaftmqError):
    """NOT_ENOUGH_REPLICAS."""


class NotEnoughReplicasAfterAppendError(RaftmqError):
    """NOT_ENOUGH_REPLICAS_AFTER_APPEND."""


class RequestTimedOutError(RaftmqError):
    """REQUEST_TIMED_OUT."""


class MessageTooLargeError(RaftmqError):
    """MESSAGE_TOO_LARGE."""


class CorruptMessageError(RaftmqError):
    """CORRUPT_MESSAGE."""


class OffsetOutOfRangeError(RaftmqError):
    """OFFSET_OUT_OF_RANGE."""


class InvalidRequiredAcksError(RaftmqError):
    """INVALID_REQUIRED_ACKS."""


class PolicyViolationError(RaftmqError):
    """POLICY_VIOLATION."""


class KafkaStorageErrorError(RaftmqError):
    """KAFKA_STORAGE_ERROR."""


class DuplicateBrokerRegistrationError(RaftmqError):
    """DUPLICATE_BROKER_REGISTRATION."""


class InconsistentClusterIdError(RaftmqError):
    """INCONSISTENT_CLUSTER_ID."""


class OutOfOrderSequenceNumberError(RaftmqError):
    """OUT_OF_ORDER_SEQUENCE_NUMBER."""


class UnknownProducerIdError(RaftmqError):
    """UNKNOWN_PRODUCER_ID."""


class InvalidProducerEpochError(RaftmqError):
    """INVALID_PRODUCER_EPOCH."""


class CoordinatorNotAvailableError(RaftmqError):
    """COORDINATOR_NOT_AVAILABLE."""


class NotCoordinatorError(RaftmqError):
    """NOT_COORDINATOR."""


class CoordinatorLoadInProgressError(RaftmqError):
    """COORDINATOR_LOAD_IN_PROGRESS."""


class InvalidGroupIdError(RaftmqError):
    """INVALID_GROUP_ID."""


class UnknownMemberIdError(RaftmqError):
    """UNKNOWN_MEMBER_ID."""


class FencedMemberEpochError(RaftmqError):
    """FENCED_MEMBER_EPOCH."""


class StaleMemberEpochError(RaftmqError):
    """STALE_MEMBER_EPOCH."""


class UnreleasedInstanceIdError(RaftmqError):
    """UNRELEASED_INSTANCE_ID."""


class GroupIdNotFoundError(RaftmqError):
    """GROUP_ID_NOT_FOUND."""


class NonEmptyGroupError(RaftmqError):
    """NON_EMPTY_GROUP."""


class UnsupportedAssignorError(RaftmqError):
    """UNSUPPORTED_ASSIGNOR."""


class NotPartitionOwnerError(RaftmqError):
    """NOT_PARTITION_OWNER."""


class GroupMaxSizeReachedError(RaftmqError):
    """GROUP_MAX_SIZE_REACHED."""


class OffsetMetadataTooLargeError(RaftmqError):
    """OFFSET_METADATA_TOO_LARGE."""


class InvalidCommitOffsetError(RaftmqError):
    """INVALID_COMMIT_OFFSET."""


class IllegalGenerationError(RaftmqError):
    """ILLEGAL_GENERATION."""


class RebalanceInProgressError(RaftmqError):
    """REBALANCE_IN_PROGRESS."""


class InconsistentGroupProtocolError(RaftmqError):
    """INCONSISTENT_GROUP_PROTOCOL."""


class MemberIdRequiredError(RaftmqError):
    """MEMBER_ID_REQUIRED."""


class FencedInstanceIdError(RaftmqError):
    """FENCED_INSTANCE_ID."""


class InvalidSessionTimeoutError(RaftmqError):
    """INVALID_SESSION_TIMEOUT."""


class UnstableOffsetCommitError(RaftmqError):
    """UNSTABLE_OFFSET_COMMIT."""


_BY_CODE: dict[ErrorCode, type[RaftmqError]] = {
    ErrorCode.UNKNOWN_SERVER_ERROR: UnknownServerErrorError,
    ErrorCode.INVALID_REQUEST: InvalidRequestError,
    ErrorCode.NOT_CONTROLLER: NotControllerError,
    ErrorCode.CONTROLLER_UNAVAILABLE: ControllerUnavailableError,
    ErrorCode.STALE_CONTROLLER_EPOCH: StaleControllerEpochError,
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: UnknownTopicOrPartitionError,
    ErrorCode.TOPIC_ALREADY_EXISTS: TopicAlreadyExistsError,
    ErrorCode.INVALID_TOPIC_NAME: InvalidTopicNameError,
    ErrorCode.INVALID_PARTITIONS: InvalidPartitionsError,
    ErrorCode.INVALID_REPLICATION_FACTOR: InvalidReplicationFactorError,
    ErrorCode.INVALID_CONFIG: InvalidConfigError,
    ErrorCode.BROKER_NOT_AVAILABLE: BrokerNotAvailableError,
    ErrorCode.STALE_BROKER_EPOCH: StaleBrokerEpochError,
    ErrorCode.INVALID_UPDATE_VERSION: InvalidUpdateVersionError,
    ErrorCode.INELIGIBLE_REPLICA: IneligibleReplicaError,
    ErrorCode.NOT_LEADER_OR_FOLLOWER: NotLeaderOrFollowerError,
    ErrorCode.LEADER_NOT_AVAILABLE: LeaderNotAvailableError,
    ErrorCode.FENCED_LEADER_EPOCH: FencedLeaderEpochError,
    ErrorCode.UNKNOWN_LEADER_EPOCH: UnknownLeaderEpochError,
    ErrorCode.NOT_ENOUGH_REPLICAS: NotEnoughReplicasError,
    ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND: NotEnoughReplicasAfterAppendError,
    ErrorCode.REQUEST_TIMED_OUT: RequestTimedOutError,
    ErrorCode.MESSAGE_TOO_LARGE: MessageTooLargeError,
    ErrorCode.CORRUPT_MESSAGE: CorruptMessageError,
    ErrorCode.OFFSET_OUT_OF_RANGE: OffsetOutOfRangeError,
    ErrorCode.INVALID_REQUIRED_ACKS: InvalidRequiredAcksError,
    ErrorCode.POLICY_VIOLATION: PolicyViolationError,
    ErrorCode.KAFKA_STORAGE_ERROR: KafkaStorageErrorError,
    ErrorCode.DUPLICATE_BROKER_REGISTRATION: DuplicateBrokerRegistrationError,
    ErrorCode.INCONSISTENT_CLUSTER_ID: InconsistentClusterIdError,
    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER: OutOfOrderSequenceNumberError,
    ErrorCode.UNKNOWN_PRODUCER_ID: UnknownProducerIdError,
    ErrorCode.INVALID_PRODUCER_EPOCH: InvalidProducerEpochError,
    ErrorCode.COORDINATOR_NOT_AVAILABLE: CoordinatorNotAvailableError,
    ErrorCode.NOT_COORDINATOR: NotCoordinatorError,
    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: CoordinatorLoadInProgressError,
    ErrorCode.INVALID_GROUP_ID: InvalidGroupIdError,
    ErrorCode.UNKNOWN_MEMBER_ID: UnknownMemberIdError,
    ErrorCode.FENCED_MEMBER_EPOCH: FencedMemberEpochError,
    ErrorCode.STALE_MEMBER_EPOCH: StaleMemberEpochError,
    ErrorCode.UNRELEASED_INSTANCE_ID: UnreleasedInstanceIdError,
    ErrorCode.GROUP_ID_NOT_FOUND: GroupIdNotFoundError,
    ErrorCode.NON_EMPTY_GROUP: NonEmptyGroupError,
    ErrorCode.UNSUPPORTED_ASSIGNOR: UnsupportedAssignorError,
    ErrorCode.NOT_PARTITION_OWNER: NotPartitionOwnerError,
    ErrorCode.GROUP_MAX_SIZE_REACHED: GroupMaxSizeReachedError,
    ErrorCode.OFFSET_METADATA_TOO_LARGE: OffsetMetadataTooLargeError,
    ErrorCode.INVALID_COMMIT_OFFSET: InvalidCommitOffsetError,
    ErrorCode.ILLEGAL_GENERATION: IllegalGenerationError,
    ErrorCode.REBALANCE_IN_PROGRESS: RebalanceInProgressError,
    ErrorCode.INCONSISTENT_GROUP_PROTOCOL: InconsistentGroupProtocolError,
    ErrorCode.MEMBER_ID_REQUIRED: MemberIdRequiredError,
    ErrorCode.FENCED_INSTANCE_ID: FencedInstanceIdError,
    ErrorCode.INVALID_SESSION_TIMEOUT: InvalidSessionTimeoutError,
    ErrorCode.UNSTABLE_OFFSET_COMMIT: UnstableOffsetCommitError,
}
assert set(_BY_CODE) == set(ErrorCode) - {ErrorCode.NONE}
