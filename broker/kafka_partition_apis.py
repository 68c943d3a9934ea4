"""Kafka's data-plane APIs on the broker's `RequestHandler`: Produce, Fetch, ListOffsets
and OffsetForLeaderEpoch. An adapter: kio entities <-> the handler's domain types, our
error codes -> Kafka's, nothing more.

Produced v2 batches go to the log as they arrived, fetched bytes are served as stored.
The one exception is the legacy versions (Produce v2, Fetch v2/v3, kafka-go 0.2's), whose
message sets are converted to and from v2 batches here (`kafka_legacy`): at this listener,
for those clients only.

Not served: transactions (a transactional produce is refused with
TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which Kafka clients report as fatal at once),
fetch sessions (KIP-227: every answer has session id 0, which clients accept as "no
session"), follower fetches (replicas replicate over the gRPC API).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

from kio.schema.errors import ErrorCode as KafkaErrorCode
from raftmq.broker import kafka_codec, kafka_legacy
from raftmq.broker.kafka_api import KafkaApi, RequestContext
from raftmq.broker.kafka_errors import kafka_error
from raftmq.broker.request_handler import (
    FetchPartition,
    FetchPartitionResult,
    ListOffsetsPartition,
    PartitionError,
    ProducePartition,
    ProducePartitionResult,
    RequestHandler,
)
from raftmq.errors import ErrorCode, RaftmqError

PRODUCE, FETCH, LIST_OFFSETS, OFFSET_FOR_LEADER_EPOCH = 0, 1, 2, 23
# Versions served: kio has Produce >= 3 and Fetch >= 4; kafka_legacy adds Produce 2 and
# Fetch 2-3. Higher versions need topic ids in requests (Fetch 13+, Produce 13) or KIP-951
# leader hints we do not send yet.
PRODUCE_VERSIONS = (2, 9)
FETCH_VERSIONS = (2, 12)
LIST_OFFSETS_VERSIONS = (1, 7)
OFFSET_FOR_LEADER_EPOCH_VERSIONS = (2, 4)
# ListOffsets' special timestamps (KIP-734 adds -3, the offset of the largest timestamp).
MAX_TIMESTAMP = -3
NO_TIMESTAMP = -1
# Kafka's "authorized operations were not asked for".
AUTHORIZED_OPERATIONS_OMITTED = -(2**31)

_ZERO = timedelta(0)


def response_module(ctx: RequestContext) -> Any:
    """The kio module of this request's response version (its nested entity classes)."""
    schema = kafka_codec.response_schema(ctx.api_key, ctx.api_version)
    assert schema is not None, (ctx.api_key, ctx.api_version)
    return sys.modules[schema.__module__]


def ms_of(value: timedelta) -> int:
    return int(value.total_seconds() * 1000)


def error_message(error: PartitionError | None) -> str | None:
    return None if error is None or not error.message else error.message


def code_of(error: PartitionError | None) -> KafkaErrorCode:
    return KafkaErrorCode.none if error is None else kafka_error(error.code)


class KafkaPartitionApis:
    """Registered on a KafkaApi by the broker; every handler runs on the broker's loop."""

    def __init__(self, *, handler: RequestHandler) -> None:
        self.handler = handler

    def register(self, api: KafkaApi) -> None:
        api.register(PRODUCE, *PRODUCE_VERSIONS, self.produce)
        api.register(FETCH, *FETCH_VERSIONS, self.fetch)
        api.register(LIST_OFFSETS, *LIST_OFFSETS_VERSIONS, self.list_offsets)
        api.register(
            OFFSET_FOR_LEADER_EPOCH, *OFFSET_FOR_LEADER_EPOCH_VERSIONS, self.offset_for_leader_epoch
        )

    # ------------------------------------------------------------ produce

    async def produce(self, ctx: RequestContext, request: Any) -> Any:
        """Append each partition's batch (acks 0, 1 or -1 as Kafka defines them). acks=0:
        no response at all, as Kafka clients expect (they do not read one)."""
        acks = int(request.acks)
        keys = [(t.name, int(d.index)) for t in request.topic_data for d in t.partition_data]
        results: dict[tuple[str, int], ProducePartitionResult] = {}
        if request.transactional_id is not None:
            for key in keys:
                results[key] = ProducePartitionResult(*key)
            return (
                None
                if acks == 0
                else self._produce_response(
                    ctx, keys, results, refused=KafkaErrorCode.transactional_id_authorization_failed
                )
            )
        wanted: list[ProducePartition] = []
        for topic in request.topic_data:
            for data in topic.partition_data:
                key = (topic.name, int(data.index))
                records = self._records_of(ctx, data.records)
                if isinstance(records, PartitionError):
                    results[key] = ProducePartitionResult(*key, error=records)
                else:
                    wanted.append(ProducePartition(*key, records))
        appended = await self.handler.produce(wanted, acks=acks, timeout_ms=ms_of(request.timeout))
        for result in appended:
            results[(result.topic, result.partition)] = result
        return None if acks == 0 else self._produce_response(ctx, keys, results)

    @staticmethod
    def _produce_response(
        ctx: RequestContext,
        keys: list[tuple[str, int]],
        results: dict[tuple[str, int], ProducePartitionResult],
        *,
        refused: KafkaErrorCode | None = None,
    ) -> Any:
        m = response_module(ctx)
        answers: dict[str, list[Any]] = {}
        for key in keys:
            result = results[key]
            answers.setdefault(key[0], []).append(
                kafka_codec.entity(
                    m.PartitionProduceResponse,
                    index=key[1],
                    error_code=refused if refused is not None else code_of(result.error),
                    base_offset=result.base_offset if result.error is None else -1,
                    log_append_time=None,
                    log_start_offset=result.log_start_offset,
                    record_errors=(),
                    error_message=error_message(result.error),
                )
            )
        return kafka_codec.entity(
            m.ProduceResponse,
            responses=tuple(
                m.TopicProduceResponse(name=name, partition_responses=tuple(items))
                for name, items in answers.items()
            ),
            throttle_time=_ZERO,
        )

    @staticmethod
    def _records_of(ctx: RequestContext, records: bytes | None) -> bytes | PartitionError:
        if not records:
            return PartitionError(ErrorCode.CORRUPT_MESSAGE, "no records for the partition")
        if ctx.api_version >= 3:
            return bytes(records)  # one v2 batch, stored as it is (checked by the log)
        try:
            return kafka_legacy.batch_from_message_set(bytes(records))
        except kafka_legacy.MessageSetError as e:
            return PartitionError(ErrorCode.CORRUPT_MESSAGE, f"message set: {e}")

    # ------------------------------------------------------------ fetch

    async def fetch(self, ctx: RequestContext, request: Any) -> Any:
        """A consumer fetch: long-polls in the fetch purgatory up to max_wait for min_bytes;
        at least one batch even above max_bytes. No fetch sessions: an incremental fetch
        (a session id we never gave) is FETCH_SESSION_ID_NOT_FOUND, every answer has
        session id 0."""
        m = response_module(ctx)
        if getattr(request, "session_id", 0) != 0:
            return kafka_codec.entity(
                m.FetchResponse,
                throttle_time=_ZERO,
                error_code=KafkaErrorCode.fetch_session_id_not_found,
                session_id=0,
                responses=(),
            )
        partitions = [
            FetchPartition(
                topic.topic,
                int(p.partition),
                int(p.fetch_offset),
                int(getattr(p, "current_leader_epoch", -1)),
                max(int(p.partition_max_bytes), 1),
            )
            for topic in request.topics
            for p in topic.partitions
        ]
        if int(request.replica_id) >= 0:
            refusal = PartitionError(
                ErrorCode.INVALID_REQUEST, "followers replicate over the gRPC API"
            )
            results = [_fetch_error(p, refusal) for p in partitions]
        else:
            results = await self.handler.fetch(
                partitions,
                max_wait_ms=ms_of(request.max_wait),
                min_bytes=int(request.min_bytes),
                max_bytes=max(int(getattr(request, "max_bytes", 0)), 1),
            )
        answers: dict[str, list[Any]] = {}
        for data, result in zip(partitions, results, strict=True):
            records = result.records
            error = result.error
            if ctx.api_version < 4 and records:
                try:
                    records = kafka_legacy.message_set_from_batches(
                        records, min_offset=data.fetch_offset
                    )
                except RaftmqError as e:
                    error, records = PartitionError(e.code, e.message), b""
            answers.setdefault(data.topic, []).append(
                kafka_codec.entity(
                    m.PartitionData,
                    partition_index=data.partition,
                    error_code=code_of(error),
                    high_watermark=result.high_watermark,
                    # No transactions: everything below the HW is stable.
                    last_stable_offset=result.high_watermark,
                    log_start_offset=result.log_start_offset,
                    aborted_transactions=(),
                    preferred_read_replica=-1,
                    records=records if error is None else b"",
                )
            )
        return kafka_codec.entity(
            m.FetchResponse,
            throttle_time=_ZERO,
            error_code=KafkaErrorCode.none,
            session_id=0,
            responses=tuple(
                m.FetchableTopicResponse(topic=name, partitions=tuple(items))
                for name, items in answers.items()
            ),
        )

    # ------------------------------------------------------------ list offsets

    async def list_offsets(self, ctx: RequestContext, request: Any) -> Any:
        m = response_module(ctx)
        items: list[ListOffsetsPartition] = []
        unsupported: set[tuple[str, int]] = set()
        for topic in request.topics:
            for p in topic.partitions:
                if int(p.timestamp) == MAX_TIMESTAMP:
                    unsupported.add((topic.name, int(p.partition_index)))
                items.append(ListOffsetsPartition(topic.name, int(p.partition_index), p.timestamp))
        results = self.handler.list_offsets(
            [i for i in items if (i.topic, i.partition) not in unsupported]
        )
        by_key = {(r.topic, r.partition): r for r in results}
        answers: dict[str, list[Any]] = {}
        for item in items:
            key = (item.topic, item.partition)
            result = by_key.get(key)
            if result is None:
                code, timestamp, offset, epoch = KafkaErrorCode.unsupported_version, -1, -1, -1
            else:
                code = code_of(result.error)
                timestamp, offset, epoch = result.timestamp, result.offset, result.leader_epoch
            answers.setdefault(item.topic, []).append(
                kafka_codec.entity(
                    m.ListOffsetsPartitionResponse,
                    partition_index=item.partition,
                    error_code=code,
                    timestamp=timestamp,
                    offset=offset,
                    leader_epoch=epoch,
                )
            )
        return kafka_codec.entity(
            m.ListOffsetsResponse,
            throttle_time=_ZERO,
            topics=tuple(
                m.ListOffsetsTopicResponse(name=name, partitions=tuple(ps))
                for name, ps in answers.items()
            ),
        )

    # ------------------------------------------------------------ offset for leader epoch

    async def offset_for_leader_epoch(self, ctx: RequestContext, request: Any) -> Any:
        """The end offset of a leader epoch on the leader (KIP-320: a consumer that saw a
        leader change checks whether its position is still on the log)."""
        m = response_module(ctx)
        topics = []
        for topic in request.topics:
            results = []
            for p in topic.partitions:
                index = int(p.partition)
                error: PartitionError | None = None
                epoch, end_offset = -1, -1
                try:
                    replica = self.handler.replicas.replica(topic.topic, index)
                    replica.check_leader(int(p.current_leader_epoch))
                    epoch, end_offset = replica.log.end_offset_for_epoch(int(p.leader_epoch))
                except RaftmqError as e:
                    error = self.handler.error_of(e, topic.topic, index)
                results.append(
                    m.EpochEndOffset(
                        error_code=code_of(error),
                        partition=index,
                        leader_epoch=epoch,
                        end_offset=end_offset,
                    )
                )
            topics.append(
                m.OffsetForLeaderTopicResult(topic=topic.topic, partitions=tuple(results))
            )
        return kafka_codec.entity(
            m.OffsetForLeaderEpochResponse, throttle_time=_ZERO, topics=tuple(topics)
        )


def _fetch_error(partition: FetchPartition, error: PartitionError) -> FetchPartitionResult:
    return FetchPartitionResult(partition.topic, partition.partition, error=error)
