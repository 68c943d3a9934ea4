from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NONE: _ClassVar[ErrorCode]
    UNKNOWN_SERVER_ERROR: _ClassVar[ErrorCode]
    INVALID_REQUEST: _ClassVar[ErrorCode]
    NOT_CONTROLLER: _ClassVar[ErrorCode]
    CONTROLLER_UNAVAILABLE: _ClassVar[ErrorCode]
    STALE_CONTROLLER_EPOCH: _ClassVar[ErrorCode]
    UNKNOWN_TOPIC_OR_PARTITION: _ClassVar[ErrorCode]
    TOPIC_ALREADY_EXISTS: _ClassVar[ErrorCode]
    INVALID_TOPIC_NAME: _ClassVar[ErrorCode]
    INVALID_PARTITIONS: _ClassVar[ErrorCode]
    INVALID_REPLICATION_FACTOR: _ClassVar[ErrorCode]
    INVALID_CONFIG: _ClassVar[ErrorCode]
    BROKER_NOT_AVAILABLE: _ClassVar[ErrorCode]
    STALE_BROKER_EPOCH: _ClassVar[ErrorCode]
    INVALID_UPDATE_VERSION: _ClassVar[ErrorCode]
    INELIGIBLE_REPLICA: _ClassVar[ErrorCode]
    NOT_LEADER_OR_FOLLOWER: _ClassVar[ErrorCode]
    LEADER_NOT_AVAILABLE: _ClassVar[ErrorCode]
    FENCED_LEADER_EPOCH: _ClassVar[ErrorCode]
    UNKNOWN_LEADER_EPOCH: _ClassVar[ErrorCode]
    NOT_ENOUGH_REPLICAS: _ClassVar[ErrorCode]
    NOT_ENOUGH_REPLICAS_AFTER_APPEND: _ClassVar[ErrorCode]
    REQUEST_TIMED_OUT: _ClassVar[ErrorCode]
    MESSAGE_TOO_LARGE: _ClassVar[ErrorCode]
    CORRUPT_MESSAGE: _ClassVar[ErrorCode]
    OFFSET_OUT_OF_RANGE: _ClassVar[ErrorCode]
    INVALID_REQUIRED_ACKS: _ClassVar[ErrorCode]
    POLICY_VIOLATION: _ClassVar[ErrorCode]
    KAFKA_STORAGE_ERROR: _ClassVar[ErrorCode]
    DUPLICATE_BROKER_REGISTRATION: _ClassVar[ErrorCode]
    INCONSISTENT_CLUSTER_ID: _ClassVar[ErrorCode]
    OUT_OF_ORDER_SEQUENCE_NUMBER: _ClassVar[ErrorCode]
    UNKNOWN_PRODUCER_ID: _ClassVar[ErrorCode]
    INVALID_PRODUCER_EPOCH: _ClassVar[ErrorCode]
    COORDINATOR_NOT_AVAILABLE: _ClassVar[ErrorCode]
    NOT_COORDINATOR: _ClassVar[ErrorCode]
    COORDINATOR_LOAD_IN_PROGRESS: _ClassVar[ErrorCode]
    INVALID_GROUP_ID: _ClassVar[ErrorCode]
    UNKNOWN_MEMBER_ID: _ClassVar[ErrorCode]
    FENCED_MEMBER_EPOCH: _ClassVar[ErrorCode]
    STALE_MEMBER_EPOCH: _ClassVar[ErrorCode]
    UNRELEASED_INSTANCE_ID: _ClassVar[ErrorCode]
    GROUP_ID_NOT_FOUND: _ClassVar[ErrorCode]
    NON_EMPTY_GROUP: _ClassVar[ErrorCode]
    UNSUPPORTED_ASSIGNOR: _ClassVar[ErrorCode]
    NOT_PARTITION_OWNER: _ClassVar[ErrorCode]
    GROUP_MAX_SIZE_REACHED: _ClassVar[ErrorCode]
    OFFSET_METADATA_TOO_LARGE: _ClassVar[ErrorCode]
    INVALID_COMMIT_OFFSET: _ClassVar[ErrorCode]
    ILLEGAL_GENERATION: _ClassVar[ErrorCode]
    REBALANCE_IN_PROGRESS: _ClassVar[ErrorCode]
    INCONSISTENT_GROUP_PROTOCOL: _ClassVar[ErrorCode]
    MEMBER_ID_REQUIRED: _ClassVar[ErrorCode]
    FENCED_INSTANCE_ID: _ClassVar[ErrorCode]
    INVALID_SESSION_TIMEOUT: _ClassVar[ErrorCode]
    UNSTABLE_OFFSET_COMMIT: _ClassVar[ErrorCode]
NONE: ErrorCode
UNKNOWN_SERVER_ERROR: ErrorCode
INVALID_REQUEST: ErrorCode
NOT_CONTROLLER: ErrorCode
CONTROLLER_UNAVAILABLE: ErrorCode
STALE_CONTROLLER_EPOCH: ErrorCode
UNKNOWN_TOPIC_OR_PARTITION: ErrorCode
TOPIC_ALREADY_EXISTS: ErrorCode
INVALID_TOPIC_NAME: ErrorCode
INVALID_PARTITIONS: ErrorCode
INVALID_REPLICATION_FACTOR: ErrorCode
INVALID_CONFIG: ErrorCode
BROKER_NOT_AVAILABLE: ErrorCode
STALE_BROKER_EPOCH: ErrorCode
INVALID_UPDATE_VERSION: ErrorCode
INELIGIBLE_REPLICA: ErrorCode
NOT_LEADER_OR_FOLLOWER: ErrorCode
LEADER_NOT_AVAILABLE: ErrorCode
FENCED_LEADER_EPOCH: ErrorCode
UNKNOWN_LEADER_EPOCH: ErrorCode
NOT_ENOUGH_REPLICAS: ErrorCode
NOT_ENOUGH_REPLICAS_AFTER_APPEND: ErrorCode
REQUEST_TIMED_OUT: ErrorCode
MESSAGE_TOO_LARGE: ErrorCode
CORRUPT_MESSAGE: ErrorCode
OFFSET_OUT_OF_RANGE: ErrorCode
INVALID_REQUIRED_ACKS: ErrorCode
POLICY_VIOLATION: ErrorCode
KAFKA_STORAGE_ERROR: ErrorCode
DUPLICATE_BROKER_REGISTRATION: ErrorCode
INCONSISTENT_CLUSTER_ID: ErrorCode
OUT_OF_ORDER_SEQUENCE_NUMBER: ErrorCode
UNKNOWN_PRODUCER_ID: ErrorCode
INVALID_PRODUCER_EPOCH: ErrorCode
COORDINATOR_NOT_AVAILABLE: ErrorCode
NOT_COORDINATOR: ErrorCode
COORDINATOR_LOAD_IN_PROGRESS: ErrorCode
INVALID_GROUP_ID: ErrorCode
UNKNOWN_MEMBER_ID: ErrorCode
FENCED_MEMBER_EPOCH: ErrorCode
STALE_MEMBER_EPOCH: ErrorCode
UNRELEASED_INSTANCE_ID: ErrorCode
GROUP_ID_NOT_FOUND: ErrorCode
NON_EMPTY_GROUP: ErrorCode
UNSUPPORTED_ASSIGNOR: ErrorCode
NOT_PARTITION_OWNER: ErrorCode
GROUP_MAX_SIZE_REACHED: ErrorCode
OFFSET_METADATA_TOO_LARGE: ErrorCode
INVALID_COMMIT_OFFSET: ErrorCode
ILLEGAL_GENERATION: ErrorCode
REBALANCE_IN_PROGRESS: ErrorCode
INCONSISTENT_GROUP_PROTOCOL: ErrorCode
MEMBER_ID_REQUIRED: ErrorCode
FENCED_INSTANCE_ID: ErrorCode
INVALID_SESSION_TIMEOUT: ErrorCode
UNSTABLE_OFFSET_COMMIT: ErrorCode

class Error(_message.Message):
    __slots__ = ("code", "message", "retriable", "leader_id", "leader_endpoint")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRIABLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    retriable: bool
    leader_id: int
    leader_endpoint: Endpoint
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., retriable: _Optional[bool] = ..., leader_id: _Optional[int] = ..., leader_endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("host", "port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class BrokerInfo(_message.Message):
    __slots__ = ("id", "endpoint", "rack", "incarnation_id", "broker_epoch", "fenced", "shutting_down", "listeners")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RACK_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_ID_FIELD_NUMBER: _ClassVar[int]
    BROKER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    SHUTTING_DOWN_FIELD_NUMBER: _ClassVar[int]
    LISTENERS_FIELD_NUMBER: _ClassVar[int]
    id: int
    endpoint: Endpoint
    rack: str
    incarnation_id: str
    broker_epoch: int
    fenced: bool
    shutting_down: bool
    listeners: _containers.RepeatedCompositeFieldContainer[Listener]
    def __init__(self, id: _Optional[int] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., rack: _Optional[str] = ..., incarnation_id: _Optional[str] = ..., broker_epoch: _Optional[int] = ..., fenced: _Optional[bool] = ..., shutting_down: _Optional[bool] = ..., listeners: _Optional[_Iterable[_Union[Listener, _Mapping]]] = ...) -> None: ...

class Listener(_message.Message):
    __slots__ = ("name", "endpoint", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    endpoint: Endpoint
    protocol: str
    def __init__(self, name: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., protocol: _Optional[str] = ...) -> None: ...

class PartitionState(_message.Message):
    __slots__ = ("partition", "ar", "isr", "osr", "leader", "leader_epoch", "partition_epoch")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    AR_FIELD_NUMBER: _ClassVar[int]
    ISR_FIELD_NUMBER: _ClassVar[int]
    OSR_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PARTITION_EPOCH_FIELD_NUMBER: _ClassVar[int]
    partition: int
    ar: _containers.RepeatedScalarFieldContainer[int]
    isr: _containers.RepeatedScalarFieldContainer[int]
    osr: _containers.RepeatedScalarFieldContainer[int]
    leader: int
    leader_epoch: int
    partition_epoch: int
    def __init__(self, partition: _Optional[int] = ..., ar: _Optional[_Iterable[int]] = ..., isr: _Optional[_Iterable[int]] = ..., osr: _Optional[_Iterable[int]] = ..., leader: _Optional[int] = ..., leader_epoch: _Optional[int] = ..., partition_epoch: _Optional[int] = ...) -> None: ...

class TopicConfig(_message.Message):
    __slots__ = ("min_insync_replicas", "retention_ms", "retention_bytes", "max_message_bytes", "unclean_leader_election_enable", "cleanup_policy", "delete_retention_ms")
    MIN_INSYNC_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNCLEAN_LEADER_ELECTION_ENABLE_FIELD_NUMBER: _ClassVar[int]
    CLEANUP_POLICY_FIELD_NUMBER: _ClassVar[int]
    DELETE_RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    min_insync_replicas: int
    retention_ms: int
    retention_bytes: int
    max_message_bytes: int
    unclean_leader_election_enable: bool
    cleanup_policy: str
    delete_retention_ms: int
    def __init__(self, min_insync_replicas: _Optional[int] = ..., retention_ms: _Optional[int] = ..., retention_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., unclean_leader_election_enable: _Optional[bool] = ..., cleanup_policy: _Optional[str] = ..., delete_retention_ms: _Optional[int] = ...) -> None: ...

class Topic(_message.Message):
    __slots__ = ("name", "topic_id", "config", "partitions", "replication_factor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPIC_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    topic_id: bytes
    config: TopicConfig
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionState]
    replication_factor: int
    def __init__(self, name: _Optional[str] = ..., topic_id: _Optional[bytes] = ..., config: _Optional[_Union[TopicConfig, _Mapping]] = ..., partitions: _Optional[_Iterable[_Union[PartitionState, _Mapping]]] = ..., replication_factor: _Optional[int] = ...) -> None: ...

class ControllerInfo(_message.Message):
    __slots__ = ("id", "raft_address", "endpoint")
    ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    id: int
    raft_address: str
    endpoint: Endpoint
    def __init__(self, id: _Optional[int] = ..., raft_address: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...
