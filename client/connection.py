"""The low-level connection to one broker: the raw RPCs, typed (kafka-go's `Conn`).

No retries and no routing here: a `Connection` talks to exactly one broker. The
`ClusterClient` (and later the Reader/Writer) build routing and retries on top."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from raftmq import wire
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.metadata import BrokerRegistration, TopicRecord
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc

ACKS_ALL = -1


@dataclass(frozen=True, slots=True)
class ProduceResult:
    topic: str
    partition: int
    base_offset: int
    error: RaftmqError | None
    leader_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class FetchResult:
    topic: str
    partition: int
    error: RaftmqError | None
    records: bytes
    high_watermark: int
    log_start_offset: int
    log_end_offset: int
    leader_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterMetadata:
    version: int
    brokers: dict[int, BrokerRegistration]
    topics: dict[str, TopicRecord]

    def endpoint(self, broker_id: int) -> str | None:
        broker = self.brokers.get(broker_id)
        return None if broker is None else f"{broker.host}:{broker.port}"


def _error(error: Any) -> tuple[RaftmqError | None, str | None]:
    exc = wire.error_from_pb(error)
    hint = None
    if exc is not None and error.HasField("leader_endpoint") and error.leader_endpoint.host:
        hint = f"{error.leader_endpoint.host}:{error.leader_endpoint.port}"
    return exc, hint


class Connection:
    """One gRPC channel to one broker. Thread-safe (gRPC channels are)."""

    def __init__(self, endpoint: str) -> None:
        wire.parse_host_port(endpoint)
        self.endpoint = endpoint
        self._channel = grpc.insecure_channel(endpoint, options=wire.GRPC_OPTIONS)
        self._stub: Any = broker_pb2_grpc.BrokerServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout_s: float) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout_s)
        except grpc.RpcError as e:
            code = wire.rpc_status(e)
            raise RaftmqError(
                ErrorCode.BROKER_NOT_AVAILABLE,
                f"{self.endpoint} {method} failed: {code.name if code else e}",
            ) from e

    def produce(
        self,
        batches: Sequence[tuple[str, int, bytes]],
        *,
        acks: int = ACKS_ALL,
        timeout_ms: int = 30_000,
        leader_epoch: int = -1,
    ) -> list[ProduceResult]:
        """Send (topic, partition, batch bytes) triples in one request."""
        request = pb.ProduceRequest(
            acks=acks,
            timeout_ms=timeout_ms,
            partitions=[
                pb.PartitionProduceData(
                    topic=t, partition=p, records=b, current_leader_epoch=leader_epoch
                )
                for t, p, b in batches
            ],
        )
        response = self._call("Produce", request, timeout_ms / 1000 + 5)
        results = []
        for r in response.partitions:
            error, hint = _error(r.error)
            results.append(ProduceResult(r.topic, r.partition, r.base_offset, error, hint))
        return results

    def fetch(
        self,
        partitions: Sequence[tuple[str, int, int]],
        *,
        max_wait_ms: int = 500,
        min_bytes: int = 1,
        max_bytes: int = 16 << 20,
        partition_max_bytes: int = 4 << 20,
    ) -> list[FetchResult]:
        """Fetch (topic, partition, offset) as a consumer (only data below the high
        watermark; long poll up to `max_wait_ms` until `min_bytes` are available)."""
        request = pb.FetchRequest(
            replica_id=-1,
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            partitions=[
                pb.PartitionFetchData(
                    topic=t,
                    partition=p,
                    fetch_offset=o,
                    current_leader_epoch=-1,
                    last_fetched_epoch=-1,
                    partition_max_bytes=partition_max_bytes,
                )
                for t, p, o in partitions
            ],
        )
        response = self._call("Fetch", request, max_wait_ms / 1000 + 10)
        results = []
        for r in response.partitions:
            error, hint = _error(r.error)
            results.append(
                FetchResult(
                    r.topic,
                    r.partition,
                    error,
                    bytes(r.records),
                    r.high_watermark,
                    r.log_start_offset,
                    r.log_end_offset,
                    hint,
                )
            )
        return results

    def list_offsets(
        self, partitions: Sequence[tuple[str, int, int]], *, timeout_ms: int = 10_000
    ) -> list[tuple[str, int, int, RaftmqError | None]]:
        """(topic, partition, timestamp) with -2 earliest / -1 latest -> (topic, partition,
        offset, error)."""
        request = pb.ListOffsetsRequest(
            partitions=[
                pb.ListOffsetsPartition(topic=t, partition=p, timestamp=ts)
                for t, p, ts in partitions
            ]
        )
        response = self._call("ListOffsets", request, timeout_ms / 1000)
        return [(r.topic, r.partition, r.offset, _error(r.error)[0]) for r in response.partitions]

    def metadata(self, topics: Sequence[str] = (), *, timeout_ms: int = 10_000) -> ClusterMetadata:
        response = self._call(
            "Metadata", pb.MetadataRequest(topics=list(topics)), timeout_ms / 1000
        )
        return ClusterMetadata(
            version=response.metadata_version,
            brokers={b.id: wire.broker_from_pb(b) for b in response.brokers},
            topics={t.name: wire.topic_from_pb(t) for t in response.topics},
        )

    def admin(self, method: str, request: Any, *, timeout_ms: int = 15_000) -> Any:
        """CreateTopic / DeleteTopic / DescribeTopics / DescribeCluster, forwarded by the
        broker to the controller quorum. Raises the response's error."""
        response = self._call(method, request, timeout_ms / 1000)
        wire.raise_for(response.error)
        return response
