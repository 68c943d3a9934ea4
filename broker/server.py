"""The broker's gRPC `BrokerService` adapter: protobuf <-> domain, errors -> codes.

Produce, fetch and list offsets call into the replica manager's partitions; metadata is
served from the broker's cache; admin requests are forwarded to the controller quorum so
that clients only ever need broker addresses."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from raftmq import wire
from raftmq.broker.metadata_cache import MetadataCache
from raftmq.broker.partition import Partition, ReadResult
from raftmq.broker.producer_ids import ProducerIdManager
from raftmq.broker.replica_manager import ReplicaManager
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc as rpc
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as ctl

PRODUCE_PARTITIONS_MAX = 10_000
FETCH_WAIT_MS_MAX = 30_000
ACKS_TIMEOUT_MS_MAX = 120_000
ADMIN_TIMEOUT_MS = 15_000
EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1


@dataclass(frozen=True, slots=True)
class TopicDefaults:
    """What an automatically created topic gets (`raftmq broker --default-partitions`, ...)."""

    auto_create: bool = True
    partitions: int = 1
    replication_factor: int = 1


class BrokerServicer(rpc.BrokerServiceServicer):
    def __init__(
        self,
        *,
        broker_id: int,
        replicas: ReplicaManager,
        metadata: MetadataCache,
        controllers: EndpointPool,
        wait_durable: Callable[[], None],
        producer_ids: ProducerIdManager,
        topic_defaults: TopicDefaults,
    ) -> None:
        self.broker_id = broker_id
        self.replicas = replicas
        self.metadata = metadata
        self.controllers = controllers
        self.wait_durable = wait_durable
        self.producer_ids = producer_ids
        self.topic_defaults = topic_defaults
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=broker_id)

    # ------------------------------------------------------------ helpers

    def _error(self, e: RaftmqError, topic: str, partition: int) -> cpb.Error:
        """Add the leader hint to NOT_LEADER / unknown-partition errors from our cache."""
        image = self.metadata.image
        known = image.topics.get(topic)
        if (
            e.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            and known is not None
            and (0 <= partition < len(known.partitions))
        ):
            e = RaftmqError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"broker {self.broker_id} does not host {topic}-{partition}",
                leader_id=known.partitions[partition].leader,
            )
        if e.code == ErrorCode.NOT_LEADER_OR_FOLLOWER and known is not None:
            leader = e.leader_id
            if leader < 0 and 0 <= partition < len(known.partitions):
                leader = known.partitions[partition].leader
            if leader < 0:
                return wire.error_to_pb(
                    ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no leader right now"
                )
            broker = image.brokers.get(leader)
            endpoint = (broker.host, broker.port) if broker is not None else None
            return wire.error_to_pb(e.code, e.message, leader_id=leader, leader_endpoint=endpoint)
        return wire.exception_to_pb(e)

    # ------------------------------------------------------------ produce

    def Produce(
        self, request: pb.ProduceRequest, context: grpc.ServicerContext
    ) -> pb.ProduceResponse:
        response = pb.ProduceResponse()
        if len(request.partitions) > PRODUCE_PARTITIONS_MAX:
            error = wire.error_to_pb(
                ErrorCode.INVALID_REQUEST, "too many partitions in one request"
            )
            for data in request.partitions:
                response.partitions.append(
                    pb.PartitionProduceResult(
                        topic=data.topic, partition=data.partition, error=error, base_offset=-1
                    )
                )
            return response
        if request.acks not in (-1, 0, 1):
            error = wire.error_to_pb(
                ErrorCode.INVALID_REQUIRED_ACKS,
                f"acks must be -1 (all), 0 or 1, got {request.acks}",
            )
            for data in request.partitions:
                response.partitions.append(
                    pb.PartitionProduceResult(
                        topic=data.topic, partition=data.partition, error=error, base_offset=-1
                    )
                )
            return response
        timeout_ms = (
            min(max(request.timeout_ms, 1), ACKS_TIMEOUT_MS_MAX) if request.timeout_ms else 30_000
        )
        appended: list[tuple[pb.PartitionProduceResult, Partition, int, int]] = []
        for data in request.partitions:
            # .add() returns the stored message; append() would store a copy.
            result = response.partitions.add(
                topic=data.topic, partition=data.partition, base_offset=-1
            )
            try:
                partition = self.replicas.partition(data.topic, data.partition)
                appended_at = partition.append(
                    bytes(data.records),
                    acks=request.acks,
                    current_leader_epoch=data.current_leader_epoch,
                )
            except RaftmqError as e:
                result.error.CopyFrom(self._error(e, data.topic, data.partition))
                continue
            result.base_offset = appended_at.base_offset
            result.leader_epoch = appended_at.leader_epoch
            result.log_start_offset = partition.log.log_start_offset
            result.error.CopyFrom(wire.ok_pb())
            appended.append((result, partition, appended_at.next_offset, appended_at.leader_epoch))
        if request.acks != 0 and appended:
            # The leader's own copy is durable per the flush policy before anyone is told.
            self.wait_durable()
        if request.acks == -1:
            deadline_ms = time.monotonic() * 1000 + timeout_ms
            for result, partition, next_offset, leader_epoch in appended:
                remaining_ms = max(1, int(deadline_ms - time.monotonic() * 1000))
                try:
                    partition.wait_for_ack(
                        next_offset, leader_epoch=leader_epoch, timeout_ms=remaining_ms
                    )
                except RaftmqError as e:
                    result.error.CopyFrom(self._error(e, result.topic, result.partition))
        return response

    # ------------------------------------------------------------ fetch

    def Fetch(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> pb.FetchResponse:
        if request.replica_id >= 0:
            stale = self._stale_replica(request.replica_id, request.replica_broker_epoch)
            if stale is not None:
                return pb.FetchResponse(
                    partitions=[
                        pb.PartitionFetchResult(
                            topic=d.topic, topic_id=d.topic_id, partition=d.partition, error=stale
                        )
                        for d in request.partitions
                    ]
                )
        max_wait_ms = min(max(request.max_wait_ms, 0), FETCH_WAIT_MS_MAX)
        deadline_s = time.monotonic() + max_wait_ms / 1000
        max_bytes = request.max_bytes if request.max_bytes > 0 else 16 << 20
        signals = self.replicas.signals
        while True:
            generation = signals.generation
            response, total_bytes, must_answer = self._collect(request, max_bytes)
            remaining_s = deadline_s - time.monotonic()
            if must_answer or total_bytes >= max(request.min_bytes, 1) or remaining_s <= 0:
                return response
            if not context.is_active():
                return response
            signals.wait_for_change(generation, min(remaining_s, 1.0))

    def _stale_replica(self, replica_id: int, replica_broker_epoch: int) -> cpb.Error | None:
        """A follower fetching as an older incarnation than our metadata shows is refused:
        its fetch offsets must not count toward the high watermark (a newer incarnation may
        have lost an unflushed tail). A newer epoch than ours means our metadata lags."""
        known = self.metadata.image.brokers.get(replica_id)
        if known is None or replica_broker_epoch >= known.broker_epoch:
            return None
        return wire.error_to_pb(
            ErrorCode.STALE_BROKER_EPOCH,
            f"broker {replica_id} fetched with broker epoch {replica_broker_epoch}; its "
            f"current registration has epoch {known.broker_epoch}",
        )

    def _partition(self, data: pb.PartitionFetchData) -> Partition:
        """Replica fetchers name the partition by topic id (a topic deleted and re-created
        under the same name is another partition); consumers by name."""
        if data.topic_id:
            return self.replicas.partition_by_id(bytes(data.topic_id), data.partition)
        return self.replicas.partition(data.topic, data.partition)

    def _collect(
        self, request: pb.FetchRequest, max_bytes: int
    ) -> tuple[pb.FetchResponse, int, bool]:
        response = pb.FetchResponse()
        total_bytes = 0
        must_answer = False
        for data in request.partitions:
            result = response.partitions.add(
                topic=data.topic, topic_id=data.topic_id, partition=data.partition
            )
            budget = max_bytes - total_bytes
            partition_max = data.partition_max_bytes if data.partition_max_bytes > 0 else 1 << 20
            # Past the request's budget, still read with a tiny budget: one batch at most is
            # returned only for the first partition, so skip the others.
            budget = max(0, budget)
            try:
                partition = self._partition(data)
                if request.replica_id >= 0:
                    read: ReadResult = partition.read_for_follower(
                        request.replica_id,
                        data.fetch_offset,
                        last_fetched_epoch=data.last_fetched_epoch,
                        current_leader_epoch=data.current_leader_epoch,
                        max_bytes=min(partition_max, budget) if budget else 1,
                    )
                else:
                    read = partition.read_for_consumer(
                        data.fetch_offset,
                        max_bytes=min(partition_max, budget) if budget else 1,
                        current_leader_epoch=data.current_leader_epoch,
                    )
            except RaftmqError as e:
                result.error.CopyFrom(self._error(e, data.topic, data.partition))
                must_answer = True
                if e.code == ErrorCode.OFFSET_OUT_OF_RANGE:
                    try:
                        p = self._partition(data)
                        with p.lock:
                            result.log_start_offset = p.log.log_start_offset
                            result.log_end_offset = p.log.log_end_offset
                            result.high_watermark = p.log.high_watermark
                    except RaftmqError:
                        pass
                continue
            if budget == 0 and total_bytes > 0:
                read = ReadResult(
                    b"",
                    read.high_watermark,
                    read.log_start_offset,
                    read.log_end_offset,
                    read.diverging_epoch,
                )
            result.error.CopyFrom(wire.ok_pb())
            result.high_watermark = read.high_watermark
            result.log_start_offset = read.log_start_offset
            result.log_end_offset = read.log_end_offset
            result.records = read.records
            total_bytes += len(read.records)
            if read.diverging_epoch is not None:
                result.has_diverging_epoch = True
                result.diverging_epoch.epoch, result.diverging_epoch.end_offset = (
                    read.diverging_epoch
                )
                must_answer = True
        return response, total_bytes, must_answer

    # ------------------------------------------------------------ offsets and metadata

    def ListOffsets(
        self, request: pb.ListOffsetsRequest, context: grpc.ServicerContext
    ) -> pb.ListOffsetsResponse:
        response = pb.ListOffsetsResponse()
        for item in request.partitions:
            result = response.partitions.add(
                topic=item.topic, partition=item.partition, offset=-1, timestamp=-1
            )
            try:
                partition = self.replicas.partition(item.topic, item.partition)
                with partition.lock:
                    partition.check_leader(-1)
                    log = partition.log
                    result.leader_epoch = partition.leader_epoch
                    if item.timestamp == EARLIEST_TIMESTAMP:
                        result.offset = log.log_start_offset
                    elif item.timestamp == LATEST_TIMESTAMP:
                        result.offset = log.high_watermark
                    elif item.timestamp >= 0:
                        found = log.offset_for_timestamp(item.timestamp)
                        if found is not None and found[0] < log.high_watermark:
                            result.offset, result.timestamp = found
                    else:
                        raise RaftmqError(
                            ErrorCode.INVALID_REQUEST,
                            "timestamp must be -2 (earliest), -1 (latest) or >= 0, "
                            f"got {item.timestamp}",
                        )
                result.error.CopyFrom(wire.ok_pb())
            except RaftmqError as e:
                result.error.CopyFrom(self._error(e, item.topic, item.partition))
        return response

    def Metadata(
        self, request: pb.MetadataRequest, context: grpc.ServicerContext
    ) -> pb.MetadataResponse:
        image = self.metadata.image
        if request.allow_auto_topic_creation and self.topic_defaults.auto_create:
            for name in request.topics:
                if name not in image.topics:
                    self._auto_create(name)
        names = list(request.topics) or sorted(image.topics)
        return pb.MetadataResponse(
            brokers=[wire.broker_to_pb(b) for _, b in sorted(image.brokers.items())],
            topics=[wire.topic_to_pb(image.topics[n]) for n in names if n in image.topics],
            controllers=[wire.controller_to_pb(c) for _, c in sorted(image.controllers.items())],
            metadata_version=image.version,
        )

    def _auto_create(self, name: str) -> None:
        """Create a missing topic with the cluster's defaults (Kafka's
        auto.create.topics.enable). It shows in a later Metadata answer, once the broker's
        metadata has it. A failure (a bad name, a reserved one) is logged: the topic then
        stays missing and the client reports UNKNOWN_TOPIC_OR_PARTITION."""
        response = self._forward(
            "CreateTopic",
            ctl.CreateTopicRequest(
                name=name,
                partitions=self.topic_defaults.partitions,
                replication_factor=self.topic_defaults.replication_factor,
                request_id=f"auto-create-{name}",
            ),
            ctl.CreateTopicResponse,
        )
        error = wire.error_from_pb(response.error)
        if error is None:
            self.log.info("topic.auto_created", topic=name)
        elif error.code != ErrorCode.TOPIC_ALREADY_EXISTS:
            self.log.info("topic.auto_create_failed", topic=name, error=str(error))

    def InitProducerId(
        self, request: pb.InitProducerIdRequest, context: grpc.ServicerContext
    ) -> pb.InitProducerIdResponse:
        try:
            producer_id, epoch = self.producer_ids.init_producer_id(
                request.producer_id, request.producer_epoch
            )
        except RaftmqError as e:
            return pb.InitProducerIdResponse(error=wire.exception_to_pb(e), producer_id=-1)
        return pb.InitProducerIdResponse(
            error=wire.ok_pb(), producer_id=producer_id, producer_epoch=epoch
        )

    # ------------------------------------------------------------ admin, forwarded

    def _forward(self, method: str, request: Any, response_type: Callable[[], Any]) -> Any:
        """Relay an admin request to the controller quorum (any controller; writes are
        replicated through the Raft leader). Quorum unavailability becomes an error."""
        try:
            return call_with_failover(
                self.controllers, method, request, timeout_ms=ADMIN_TIMEOUT_MS
            )
        except RaftmqError as e:
            response = response_type()
            response.error.CopyFrom(wire.exception_to_pb(e))
            return response

    def CreateTopic(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._forward("CreateTopic", request, ctl.CreateTopicResponse)

    def DeleteTopic(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._forward("DeleteTopic", request, ctl.DeleteTopicResponse)

    def DescribeTopics(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._forward("DescribeTopics", request, ctl.DescribeTopicsResponse)

    def DescribeCluster(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._forward("DescribeCluster", request, ctl.DescribeClusterResponse)
