"""The client's side of the raftmq.v1 contract: typed results and the conversions between
them and protobuf messages. Pure; shared by the sync and the asyncio shells (`Conn` /
`AsyncConn`, `Writer` / `AsyncWriter`, ...), so each conversion exists once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raftmq import wire
from raftmq.errors import RaftmqError
from raftmq.metadata import NO_LEADER, BrokerRegistration, TopicRecord
from raftmq.v1 import broker_pb2 as pb

ACKS_ALL = -1
EARLIEST = -2  # ListOffsets: the log start offset
LATEST = -1  # ListOffsets: the high watermark (the next offset to be written)


@dataclass(frozen=True, slots=True)
class ClusterMetadata:
    """What a broker's Metadata call returns: brokers and topics at one metadata version."""

    version: int
    brokers: dict[int, BrokerRegistration]
    topics: dict[str, TopicRecord]
    # Asked topics the brokers refused to create for good (a bad or reserved name).
    topic_errors: dict[str, RaftmqError] = field(default_factory=dict)

    def endpoint(self, broker_id: int) -> str | None:
        broker = self.brokers.get(broker_id)
        return None if broker is None else f"{broker.host}:{broker.port}"

    def merged(self, update: ClusterMetadata, topics: Sequence[str]) -> ClusterMetadata:
        """This view updated with the answer to a metadata request for `topics` (all topics
        when empty): brokers from the answer; the asked topics as answered (missing: gone);
        other topics kept."""
        if not topics:
            return update
        kept = {n: t for n, t in self.topics.items() if n not in topics}
        errors = {n: e for n, e in self.topic_errors.items() if n not in topics}
        return ClusterMetadata(
            max(self.version, update.version),
            dict(update.brokers),
            {**kept, **update.topics},
            {**errors, **update.topic_errors},
        )

    def leader(self, topic: str, partition: int) -> tuple[str | None, int]:
        """(leader endpoint or None, leader epoch or -1) of one partition."""
        known = self.topics.get(topic)
        if known is None or not 0 <= partition < len(known.partitions):
            return None, -1
        state = known.partitions[partition]
        if state.leader == NO_LEADER:
            return None, state.leader_epoch
        return self.endpoint(state.leader), state.leader_epoch


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
class OffsetResult:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    leader_epoch: int
    error: RaftmqError | None


def error_and_hint(error: Any) -> tuple[RaftmqError | None, str | None]:
    """A response's Error as an exception (None for NONE) and its leader hint, if any."""
    exc = wire.error_from_pb(error)
    hint = None
    if exc is not None and error.HasField("leader_endpoint") and error.leader_endpoint.host:
        hint = f"{error.leader_endpoint.host}:{error.leader_endpoint.port}"
    return exc, hint


def produce_request(
    batches: Sequence[tuple[str, int, int, bytes]], *, acks: int, timeout_ms: int
) -> pb.ProduceRequest:
    """(topic, partition, leader epoch or -1, one encoded batch) each."""
    return pb.ProduceRequest(
        acks=acks,
        timeout_ms=timeout_ms,
        partitions=[
            pb.PartitionProduceData(
                topic=topic, partition=partition, records=records, current_leader_epoch=epoch
            )
            for topic, partition, epoch, records in batches
        ],
    )


def produce_results(response: pb.ProduceResponse) -> list[ProduceResult]:
    results = []
    for r in response.partitions:
        error, hint = error_and_hint(r.error)
        results.append(ProduceResult(r.topic, r.partition, r.base_offset, error, hint))
    return results


def fetch_request(
    partitions: Sequence[tuple[str, int, int, int]],
    *,
    max_wait_ms: int,
    min_bytes: int,
    max_bytes: int,
    partition_max_bytes: int,
) -> pb.FetchRequest:
    """A consumer fetch of (topic, partition, offset, current leader epoch or -1) each."""
    return pb.FetchRequest(
        replica_id=-1,
        max_wait_ms=max_wait_ms,
        min_bytes=min_bytes,
        max_bytes=max_bytes,
        partitions=[
            pb.PartitionFetchData(
                topic=topic,
                partition=partition,
                fetch_offset=offset,
                current_leader_epoch=epoch,
                last_fetched_epoch=-1,
                partition_max_bytes=partition_max_bytes,
            )
            for topic, partition, offset, epoch in partitions
        ],
    )


def fetch_results(response: pb.FetchResponse) -> list[FetchResult]:
    results = []
    for r in response.partitions:
        error, hint = error_and_hint(r.error)
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


def list_offsets_request(partitions: Sequence[tuple[str, int, int]]) -> pb.ListOffsetsRequest:
    """(topic, partition, timestamp ms | EARLIEST | LATEST) each."""
    return pb.ListOffsetsRequest(
        partitions=[
            pb.ListOffsetsPartition(topic=t, partition=p, timestamp=ts) for t, p, ts in partitions
        ]
    )


def offset_results(response: pb.ListOffsetsResponse) -> list[OffsetResult]:
    return [
        OffsetResult(
            r.topic, r.partition, r.offset, r.timestamp, r.leader_epoch, error_and_hint(r.error)[0]
        )
        for r in response.partitions
    ]


def cluster_metadata(response: pb.MetadataResponse) -> ClusterMetadata:
    return ClusterMetadata(
        version=response.metadata_version,
        brokers={b.id: wire.broker_from_pb(b) for b in response.brokers},
        topics={t.name: wire.topic_from_pb(t) for t in response.topics},
        topic_errors={
            e.topic: error
            for e in response.topic_errors
            if (error := wire.error_from_pb(e.error)) is not None
        },
    )
