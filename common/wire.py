"""Conversions between domain types and the raftmq.v1 protobuf messages.

Servicers and clients are the only callers: domain code never sees protobuf types."""

from __future__ import annotations

import grpc
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.metadata import (
    PROTOCOL_GRPC,
    BrokerRegistration,
    ControllerRecord,
    Listener,
    PartitionRecord,
    TopicRecord,
)
from raftmq.topic_config import DEFAULT_CLEANUP_POLICY, DEFAULT_DELETE_RETENTION_MS, TopicConfig
from raftmq.v1 import common_pb2 as pb

# What a grpc.aio stream's read() returns at the end of the stream (not in grpc's stubs).
AIO_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]

GRPC_MESSAGE_BYTES_MAX = 64 << 20
# Both servers and channels: the 4 MiB default is smaller than a fetch response may be.
GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
]
# Channels of the client library (and of tools watching a cluster): a failed connection is
# tried again after 50 ms, the wait growing (x1.6) to 1 s, and each attempt gets at least
# 1 s. gRPC's defaults (1 s growing to 120 s, at least 20 s per attempt) are for clients
# of a service across the internet: after SIGKILL of every node of a `raftmq up` cluster,
# a Writer on iomgr sockets acknowledged its first write 23 s later (an attempt started
# while the nodes came back ran into the 20 s), against 7.2-7.4 s with these (7.2 s on the
# EventEngine, whose attempts ended sooner). Kafka's clients: reconnect.backoff.ms 50,
# reconnect.backoff.max.ms 1000.
RECONNECT_BACKOFF_MS_FIRST = 50
RECONNECT_BACKOFF_MS_MAX = 1_000
CONNECT_ATTEMPT_MS_MIN = 1_000
GRPC_CLIENT_OPTIONS: list[tuple[str, int]] = [
    *GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_FIRST),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MAX),
    # gRPC's name for the shortest connection attempt (MIN_CONNECT_TIMEOUT).
    ("grpc.min_reconnect_backoff_ms", CONNECT_ATTEMPT_MS_MIN),
]


def error_to_pb(
    code: ErrorCode,
    message: str = "",
    *,
    leader_id: int = -1,
    leader_endpoint: tuple[str, int] | None = None,
) -> pb.Error:
    error = pb.Error(code=int(code), message=message, retriable=code.retriable, leader_id=leader_id)  # type: ignore[arg-type]
    if leader_endpoint is not None:
        error.leader_endpoint.host, error.leader_endpoint.port = leader_endpoint
    return error


def ok_pb() -> pb.Error:
    return pb.Error(code=pb.NONE, leader_id=-1)


def exception_to_pb(e: RaftmqError) -> pb.Error:
    return error_to_pb(e.code, e.message, leader_id=e.leader_id)


def error_from_pb(error: pb.Error) -> RaftmqError | None:
    """None when the error is NONE; an unknown code maps to UNKNOWN_SERVER_ERROR."""
    if error.code == pb.NONE:
        return None
    try:
        code = ErrorCode(error.code)
    except ValueError:
        code = ErrorCode.UNKNOWN_SERVER_ERROR
    leader_id = error.leader_id if error.HasField("leader_endpoint") or error.leader_id else -1
    return RaftmqError(code, error.message, leader_id=leader_id)


def raise_for(error: pb.Error) -> None:
    exc = error_from_pb(error)
    if exc is not None:
        raise exc


def config_to_pb(config: TopicConfig) -> pb.TopicConfig:
    return pb.TopicConfig(
        min_insync_replicas=config.min_insync_replicas,
        retention_ms=config.retention_ms,
        retention_bytes=config.retention_bytes,
        max_message_bytes=config.max_message_bytes,
        unclean_leader_election_enable=config.unclean_leader_election_enable,
        cleanup_policy=config.cleanup_policy,
        delete_retention_ms=config.delete_retention_ms,
    )


def config_from_pb(config: pb.TopicConfig) -> TopicConfig:
    return TopicConfig(
        min_insync_replicas=config.min_insync_replicas,
        retention_ms=config.retention_ms,
        retention_bytes=config.retention_bytes,
        max_message_bytes=config.max_message_bytes,
        unclean_leader_election_enable=config.unclean_leader_election_enable,
        cleanup_policy=config.cleanup_policy or DEFAULT_CLEANUP_POLICY,
        delete_retention_ms=config.delete_retention_ms
        if config.cleanup_policy
        else DEFAULT_DELETE_RETENTION_MS,
    )


def partition_to_pb(index: int, p: PartitionRecord) -> pb.PartitionState:
    return pb.PartitionState(
        partition=index,
        ar=p.ar,
        isr=p.isr,
        osr=p.osr,
        leader=p.leader,
        leader_epoch=p.leader_epoch,
        partition_epoch=p.partition_epoch,
    )


def partition_from_pb(p: pb.PartitionState) -> PartitionRecord:
    return PartitionRecord(
        ar=tuple(p.ar),
        isr=tuple(p.isr),
        leader=p.leader,
        leader_epoch=p.leader_epoch,
        partition_epoch=p.partition_epoch,
    )


def topic_to_pb(topic: TopicRecord) -> pb.Topic:
    return pb.Topic(
        name=topic.name,
        topic_id=topic.topic_id,
        config=config_to_pb(topic.config),
        partitions=[partition_to_pb(i, p) for i, p in enumerate(topic.partitions)],
        replication_factor=topic.replication_factor,
    )


def topic_from_pb(topic: pb.Topic) -> TopicRecord:
    partitions = sorted(topic.partitions, key=lambda p: p.partition)
    return TopicRecord(
        name=topic.name,
        topic_id=bytes(topic.topic_id),
        config=config_from_pb(topic.config),
        partitions=tuple(partition_from_pb(p) for p in partitions),
    )


def broker_to_pb(b: BrokerRegistration) -> pb.BrokerInfo:
    return pb.BrokerInfo(
        id=b.broker_id,
        endpoint=pb.Endpoint(host=b.host, port=b.port),
        rack=b.rack,
        incarnation_id=b.incarnation_id,
        broker_epoch=b.broker_epoch,
        fenced=b.fenced,
        shutting_down=b.shutting_down,
        listeners=[listener_to_pb(item) for item in b.listeners],
    )


def listener_to_pb(item: Listener) -> pb.Listener:
    return pb.Listener(
        name=item.name, endpoint=pb.Endpoint(host=item.host, port=item.port), protocol=item.protocol
    )


def listener_from_pb(item: pb.Listener) -> Listener:
    return Listener(
        item.name, item.endpoint.host, item.endpoint.port, item.protocol or PROTOCOL_GRPC
    )


def broker_from_pb(b: pb.BrokerInfo) -> BrokerRegistration:
    return BrokerRegistration(
        broker_id=b.id,
        host=b.endpoint.host,
        port=b.endpoint.port,
        rack=b.rack,
        incarnation_id=b.incarnation_id,
        broker_epoch=b.broker_epoch,
        fenced=b.fenced,
        shutting_down=b.shutting_down,
        listeners=tuple(listener_from_pb(item) for item in b.listeners),
    )


def controller_to_pb(c: ControllerRecord) -> pb.ControllerInfo:
    return pb.ControllerInfo(id=c.controller_id, endpoint=pb.Endpoint(host=c.host, port=c.port))


def rpc_status(e: Exception) -> grpc.StatusCode | None:
    """The status code of a failed gRPC call (RpcError instances are also grpc.Call)."""
    code = getattr(e, "code", None)
    status = code() if callable(code) else None
    return status if isinstance(status, grpc.StatusCode) else None


def parse_host_port(text: str) -> tuple[str, int]:
    """'host:port' -> (host, port), with a clear error for anything else."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)
