"""The broker's gRPC `BrokerService` adapter (grpc.aio): protobuf <-> domain, errors ->
codes, nothing more.

Produce, fetch and list offsets go to the `RequestHandler`; follower streams to a
`ReplicaSession`; metadata is served from the broker's cache; admin requests are forwarded
to the controller quorum, so that clients only ever need broker addresses. Every handler
is a coroutine on the broker's event loop: a waiting request holds no thread."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
import structlog
from raftmq import wire
from raftmq.broker.broker_metrics import BrokerMetrics
from raftmq.broker.controller_link import ControllerLink
from raftmq.broker.group_coordinator import GroupCoordinator
from raftmq.broker.group_shard import CommitOffset, CommitRequest, HeartbeatRequest
from raftmq.broker.metadata_cache import MetadataCache
from raftmq.broker.producer_ids import ProducerIdManager
from raftmq.broker.replica_manager import ReplicaManager
from raftmq.broker.replica_session import (
    ReplicaHooks,
    ReplicaPosition,
    ReplicaSession,
    SessionResult,
)
from raftmq.broker.request_handler import (
    FetchPartition,
    ListOffsetsPartition,
    PartitionError,
    ProducePartition,
    RequestHandler,
)
from raftmq.broker.topic_admin import TopicAdmin, TopicDefaults
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.record_batch import HEADER_SIZE, read_header, record_count
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc as rpc
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as ctl

__all__ = ["BrokerServicer", "TopicDefaults"]

# Auto-creation refusals that no retry can change (the name itself): Metadata answers them.
# Others (e.g. too few live brokers for the default RF) leave the topic missing for now.
TOPIC_REFUSED_FOR_GOOD = frozenset({ErrorCode.INVALID_TOPIC_NAME, ErrorCode.POLICY_VIOLATION})


_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])
_Response = TypeVar("_Response")

# The most requests one ProduceStream has read and not yet answered. Past it the broker
# reads no more: the client's next requests wait in the stream's flow control. (A Writer
# keeps at most 5 batches in flight per partition.)
PRODUCE_STREAM_INFLIGHT_MAX = 128
# The same for a FetchStream. (A Reader keeps one fetch in flight; a group's Reader one per
# broker, for all its partitions there.)
FETCH_STREAM_INFLIGHT_MAX = 128

_StreamRequest = TypeVar("_StreamRequest")
_StreamResponse = TypeVar("_StreamResponse")


async def pipelined(
    request_iterator: AsyncIterator[_StreamRequest],
    handle: Callable[[_StreamRequest], Awaitable[_StreamResponse | None]],
    inflight_max: int,
    log: Any,
    log_noun: str,
) -> AsyncGenerator[_StreamResponse, None]:
    """The body of a pipelined stream RPC (ProduceStream, FetchStream): each request is
    handled as soon as it is read, at most `inflight_max` at a time, and its answer
    (`handle`'s result; None: it gets none) written when it completes, in completion
    order. A request that fails with an exception (a bug) ends the stream with it, like a
    unary call's failure: the client then fails everything it had in flight on this
    stream and retries it."""
    # Items: an answer to write, an exception to end the stream with, or None (the client
    # closed its side and every request was answered).
    # Invariant: a request holds one of `slots` from before it is handled until its answer
    # is written (or, unanswered, until it completed), so at most `inflight_max` requests
    # are in progress and `answers` never holds more items than that plus two.
    answers: asyncio.Queue[_StreamResponse | Exception | None] = asyncio.Queue()
    slots = asyncio.Semaphore(inflight_max)
    handling: set[asyncio.Task[None]] = set()

    async def run(item: _StreamRequest) -> None:
        try:
            answer = await handle(item)
        except Exception as e:
            log.exception(f"{log_noun}.request_failed")
            answers.put_nowait(e)
            return
        if answer is None:
            slots.release()
            return
        answers.put_nowait(answer)

    async def read_requests() -> None:
        try:
            # Bound: one iteration per request, until the client closes its side.
            async for item in request_iterator:
                await slots.acquire()
                task = asyncio.create_task(run(item))
                handling.add(task)
                task.add_done_callback(handling.discard)
            if handling:
                await asyncio.wait(set(handling))
            answers.put_nowait(None)
        except Exception as e:  # the stream broke while reading (not a cancellation)
            answers.put_nowait(e)

    reader = asyncio.create_task(read_requests())
    try:
        # Bound: one iteration per answer, until the reader ends the stream.
        while True:
            answer = await answers.get()
            if answer is None:
                return
            if isinstance(answer, Exception):
                raise answer
            yield answer
            slots.release()
    finally:
        reader.cancel()
        for task in list(handling):
            task.cancel()


async def observed(
    metrics: BrokerMetrics | None, api: str, context: Any, call: Awaitable[_Response]
) -> _Response:
    """Await one request's answer, counting, timing and recording its errors (Prometheus,
    when the broker has metrics): the request-level error and every partition's."""
    if metrics is None:
        return await call
    metrics.seen_client(context.peer())
    started = time.perf_counter()
    metrics.request_started()
    try:
        response = await call
    finally:
        metrics.request_done(api, time.perf_counter() - started)
    for code in _error_codes(response):
        metrics.request_errors.labels(api, code).inc()
    return response


def instrumented(api: str) -> Callable[[_Method], _Method]:
    """A unary RPC, `observed`."""

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        async def call(self: BrokerServicer, request: Any, context: Any) -> Any:
            return await observed(self.metrics, api, context, method(self, request, context))

        return call  # type: ignore[return-value]

    return wrap


def _error_codes(response: Any) -> list[str]:
    codes = []
    error = getattr(response, "error", None)
    if error is not None and error.code:
        codes.append(cpb.ErrorCode.Name(error.code))
    for item in getattr(response, "partitions", ()):
        item_error = getattr(item, "error", None)
        if item_error is not None and item_error.code:
            codes.append(cpb.ErrorCode.Name(item_error.code))
    return codes


class BrokerServicer(rpc.BrokerServiceServicer):
    def __init__(
        self,
        *,
        broker_id: int,
        handler: RequestHandler,
        replicas: ReplicaManager,
        metadata: MetadataCache,
        controllers: ControllerLink,
        producer_ids: ProducerIdManager,
        topic_defaults: TopicDefaults,
        groups: GroupCoordinator,
        listener: str | None = None,
        metrics: BrokerMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        # The listener this servicer serves (None: a broker without named listeners):
        # metadata and hints give addresses on it.
        self.listener = listener
        self.groups = groups
        self.broker_id = broker_id
        self.handler = handler
        self.replicas = replicas
        self.metadata = metadata
        self.controllers = controllers
        self.producer_ids = producer_ids
        self.topic_defaults = topic_defaults
        self.topics = TopicAdmin(
            broker_id=broker_id, controllers=controllers, defaults=topic_defaults
        )
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=broker_id)

    def _error_pb(self, error: PartitionError | None) -> cpb.Error:
        """The error with the leader's address on this listener."""
        if error is None:
            return wire.ok_pb()
        endpoint = None
        if error.leader_id >= 0:
            broker = self.metadata.image.brokers.get(error.leader_id)
            endpoint = broker.endpoint_for(self.listener) if broker is not None else None
        return wire.error_to_pb(
            error.code, error.message, leader_id=error.leader_id, leader_endpoint=endpoint
        )

    # ------------------------------------------------------------ produce

    @instrumented("Produce")
    async def Produce(
        self, request: pb.ProduceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProduceResponse:
        return await self._produce(request)

    async def ProduceStream(
        self,
        request_iterator: AsyncIterator[pb.ProduceStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ProduceStreamResponse]:
        """Pipelined produce (see broker.proto): acks=0 requests are not answered."""

        async def handle(item: pb.ProduceStreamRequest) -> pb.ProduceStreamResponse | None:
            response = await observed(self.metrics, "Produce", context, self._produce(item.request))
            if item.request.acks == 0:
                return None
            return pb.ProduceStreamResponse(correlation_id=item.correlation_id, response=response)

        # An async generator itself: grpc.aio runs any other stream handler on a thread;
        # aclosing: when grpc drops this one mid-stream, pipelined's tasks end now, not
        # when the garbage collector finalizes it.
        answers = pipelined(
            request_iterator, handle, PRODUCE_STREAM_INFLIGHT_MAX, self.log, "produce_stream"
        )
        async with contextlib.aclosing(answers):  # its tasks end with the call
            async for answer in answers:
                yield answer

    async def FetchStream(
        self,
        request_iterator: AsyncIterator[pb.FetchStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.FetchStreamResponse]:
        """Pipelined consumer fetches (see broker.proto), each answered as a unary Fetch."""

        async def handle(item: pb.FetchStreamRequest) -> pb.FetchStreamResponse:
            response = await observed(self.metrics, "Fetch", context, self._fetch(item.request))
            return pb.FetchStreamResponse(correlation_id=item.correlation_id, response=response)

        answers = pipelined(
            request_iterator, handle, FETCH_STREAM_INFLIGHT_MAX, self.log, "fetch_stream"
        )
        async with contextlib.aclosing(answers):  # its tasks end with the call
            async for answer in answers:
                yield answer

    async def _produce(self, request: pb.ProduceRequest) -> pb.ProduceResponse:
        results = await self.handler.produce(
            [
                ProducePartition(d.topic, d.partition, d.records, d.current_leader_epoch)
                for d in request.partitions
            ],
            acks=request.acks,
            timeout_ms=request.timeout_ms,
        )
        if self.metrics is not None:
            for data, result in zip(request.partitions, results, strict=True):
                if result.error is None and len(data.records) >= HEADER_SIZE:
                    self.metrics.produced(
                        data.topic, len(data.records), read_header(data.records).record_count
                    )
        return pb.ProduceResponse(
            partitions=[
                pb.PartitionProduceResult(
                    topic=r.topic,
                    partition=r.partition,
                    error=self._error_pb(r.error),
                    base_offset=r.base_offset if r.error is None else -1,
                    log_start_offset=r.log_start_offset,
                    leader_epoch=r.leader_epoch,
                )
                for r in results
            ]
        )

    # ------------------------------------------------------------ fetch (consumers)

    @instrumented("Fetch")
    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FetchResponse:
        return await self._fetch(request)

    async def _fetch(self, request: pb.FetchRequest) -> pb.FetchResponse:
        if request.replica_id >= 0:
            error = wire.error_to_pb(
                ErrorCode.INVALID_REQUEST,
                "followers replicate over ReplicaFetch; Fetch is for consumers (replica_id -1)",
            )
            return pb.FetchResponse(
                partitions=[
                    pb.PartitionFetchResult(
                        topic=d.topic, topic_id=d.topic_id, partition=d.partition, error=error
                    )
                    for d in request.partitions
                ]
            )
        results = await self.handler.fetch(
            [
                FetchPartition(
                    d.topic,
                    d.partition,
                    d.fetch_offset,
                    d.current_leader_epoch,
                    d.partition_max_bytes,
                    bytes(d.topic_id),
                )
                for d in request.partitions
            ],
            max_wait_ms=request.max_wait_ms,
            min_bytes=request.min_bytes,
            max_bytes=request.max_bytes,
        )
        if self.metrics is not None:
            for r in results:
                if r.records:
                    self.metrics.fetched(r.topic, len(r.records), record_count(r.records))
        return pb.FetchResponse(
            partitions=[
                pb.PartitionFetchResult(
                    topic=r.topic,
                    topic_id=r.topic_id,
                    partition=r.partition,
                    error=self._error_pb(r.error),
                    high_watermark=r.high_watermark,
                    log_start_offset=r.log_start_offset,
                    log_end_offset=r.log_end_offset,
                    records=r.records,
                )
                for r in results
            ]
        )

    # ------------------------------------------------------------ replication

    async def ReplicaFetch(
        self,
        request_iterator: AsyncIterator[pb.ReplicaFetchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ReplicaFetchResponse]:
        iterator = request_iterator.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        refusal = self._refuse_replica(first.replica_id, first.replica_broker_epoch)
        if refusal is not None:
            yield pb.ReplicaFetchResponse(error=refusal)
            return
        loop = asyncio.get_running_loop()
        outbox = _Outbox()
        replicas = self.replicas
        session = ReplicaSession(
            replica_id=first.replica_id,
            broker_epoch=first.replica_broker_epoch,
            hooks=ReplicaHooks(
                replicas.replica_by_id, replicas.on_high_watermark_advanced, replicas.now_ms
            ),
            scheduler=loop,
            send=outbox.put,
            call_soon=loop.call_soon,
        )
        replicas.sessions.open(session)
        log = self.log.bind(replica_id=first.replica_id)
        log.info("replica.session_opened")

        async def read_positions() -> None:
            request = first
            # Bound: one iteration per follower message, until its stream ends.
            while True:
                # Re-checked on every message: a newer registration of this broker may
                # have reached our metadata since the stream opened.
                refusal = self._refuse_replica(session.replica_id, session.broker_epoch)
                if refusal is not None:
                    raise _SessionRefusedError(refusal)
                replicas.sessions.update(
                    session,
                    [_position(p) for p in request.positions],
                    [(bytes(p.topic_id), p.partition) for p in request.removed],
                )
                try:
                    request = await iterator.__anext__()
                except StopAsyncIteration:
                    return

        reader = loop.create_task(read_positions())
        # The reader's end (the follower closed its stream, or was refused) ends the answers.
        reader.add_done_callback(lambda _: outbox.close())
        try:
            # Bound: one answer per flush, until the follower's stream ends.
            while (results := await outbox.take()) is not None:
                if results:
                    yield pb.ReplicaFetchResponse(partitions=[_result_pb(r) for r in results])
            if not reader.cancelled():
                error = reader.exception()
                if isinstance(error, _SessionRefusedError):
                    yield pb.ReplicaFetchResponse(error=error.error)
                elif error is not None:
                    raise error
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            replicas.sessions.close(session)
            log.info("replica.session_closed")

    def _refuse_replica(self, replica_id: int, replica_broker_epoch: int) -> cpb.Error | None:
        """A follower fetching as an older incarnation than our metadata shows is refused:
        its positions must not count toward the high watermark (a newer incarnation may
        have lost an unflushed tail). A newer epoch than ours means our metadata lags."""
        if replica_id < 0:
            return wire.error_to_pb(ErrorCode.INVALID_REQUEST, "replica_id must be >= 0")
        known = self.metadata.image.brokers.get(replica_id)
        if known is None or replica_broker_epoch >= known.broker_epoch:
            return None
        return wire.error_to_pb(
            ErrorCode.STALE_BROKER_EPOCH,
            f"broker {replica_id} fetched with broker epoch {replica_broker_epoch}; its "
            f"current registration has epoch {known.broker_epoch}",
        )

    # ------------------------------------------------------------ offsets and metadata

    @instrumented("ListOffsets")
    async def ListOffsets(
        self, request: pb.ListOffsetsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListOffsetsResponse:
        results = self.handler.list_offsets(
            [ListOffsetsPartition(p.topic, p.partition, p.timestamp) for p in request.partitions]
        )
        return pb.ListOffsetsResponse(
            partitions=[
                pb.ListOffsetsResult(
                    topic=r.topic,
                    partition=r.partition,
                    error=self._error_pb(r.error),
                    offset=r.offset,
                    timestamp=r.timestamp,
                    leader_epoch=r.leader_epoch,
                )
                for r in results
            ]
        )

    @instrumented("Metadata")
    async def Metadata(
        self, request: pb.MetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MetadataResponse:
        image = self.metadata.image
        refused: list[pb.TopicError] = []
        if request.allow_auto_topic_creation and self.topic_defaults.auto_create:
            missing = [name for name in request.topics if name not in image.topics]
            if missing:
                errors = await asyncio.gather(*(self.topics.auto_create(n) for n in missing))
                refused = [
                    pb.TopicError(topic=name, error=wire.exception_to_pb(error))
                    for name, error in zip(missing, errors, strict=True)
                    if error is not None and error.code in TOPIC_REFUSED_FOR_GOOD
                ]
        names = list(request.topics) or sorted(image.topics)
        brokers = []
        for _, b in sorted(image.brokers.items()):
            endpoint = b.endpoint_for(self.listener)
            if endpoint is None:
                continue  # not reachable on this listener (Kafka leaves such brokers out)
            info = wire.broker_to_pb(b)
            info.endpoint.host, info.endpoint.port = endpoint
            brokers.append(info)
        return pb.MetadataResponse(
            brokers=brokers,
            topics=[wire.topic_to_pb(image.topics[n]) for n in names if n in image.topics],
            controllers=[wire.controller_to_pb(c) for _, c in sorted(image.controllers.items())],
            metadata_version=image.version,
            topic_errors=refused,
        )

    @instrumented("InitProducerId")
    async def InitProducerId(
        self, request: pb.InitProducerIdRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InitProducerIdResponse:
        try:
            producer_id, epoch = await self.producer_ids.init_producer_id(
                request.producer_id, request.producer_epoch
            )
        except RaftmqError as e:
            return pb.InitProducerIdResponse(error=wire.exception_to_pb(e), producer_id=-1)
        return pb.InitProducerIdResponse(
            error=wire.ok_pb(), producer_id=producer_id, producer_epoch=epoch
        )

    # ------------------------------------------------------------ admin, forwarded

    async def _forward(self, method: str, request: Any, response_type: Callable[[], Any]) -> Any:
        return await self.topics.forward(method, request, response_type)

    # ------------------------------------------------------------ consumer groups

    @instrumented("FindCoordinator")
    async def FindCoordinator(self, request: pb.FindCoordinatorRequest, context: Any) -> Any:
        answers = await self.groups.find_coordinator(
            list(request.group_ids), listener=self.listener
        )
        response = pb.FindCoordinatorResponse()
        for info in answers:
            item = response.coordinators.add(
                group_id=info.group_id,
                error=_maybe_error_pb(info.error),
                node_id=info.node_id,
                partition=info.partition,
            )
            if info.endpoint is not None:
                item.endpoint.host, item.endpoint.port = info.endpoint
        return response

    @instrumented("ConsumerGroupHeartbeat")
    async def ConsumerGroupHeartbeat(
        self, request: pb.ConsumerGroupHeartbeatRequest, context: Any
    ) -> Any:
        answer = await self.groups.heartbeat(
            HeartbeatRequest(
                group_id=request.group_id,
                member_id=request.member_id,
                member_epoch=request.member_epoch,
                instance_id=request.instance_id,
                rebalance_timeout_ms=request.rebalance_timeout_ms,
                session_timeout_ms=request.session_timeout_ms,
                subscribed_topics=tuple(request.subscribed_topics),
                subscribed_pattern=request.subscribed_pattern,
                assignor=request.assignor,
                owned=_partitions_from_pb(request.owned),
                client_id=request.client_id,
            )
        )
        return pb.ConsumerGroupHeartbeatResponse(
            error=_maybe_error_pb(answer.error),
            member_id=answer.member_id,
            member_epoch=answer.member_epoch,
            heartbeat_interval_ms=answer.heartbeat_interval_ms,
            assignment=_partitions_pb(answer.assignment),
        )

    @instrumented("OffsetCommit")
    async def OffsetCommit(self, request: pb.OffsetCommitRequest, context: Any) -> Any:
        answer = await self.groups.commit(
            CommitRequest(
                request.group_id,
                request.member_id,
                request.member_epoch,
                tuple(
                    CommitOffset(p.topic, p.partition, p.offset, p.leader_epoch, p.metadata)
                    for p in request.partitions
                ),
            )
        )
        response = pb.OffsetCommitResponse(error=_maybe_error_pb(answer.error))
        for item in request.partitions:
            tp = (item.topic, item.partition)
            error = answer.error if answer.error is not None else answer.partitions.get(tp)
            response.partitions.add(
                topic=item.topic, partition=item.partition, error=_maybe_error_pb(error)
            )
        return response

    @instrumented("OffsetFetch")
    async def OffsetFetch(self, request: pb.OffsetFetchRequest, context: Any) -> Any:
        wanted = sorted(_partitions_from_pb(request.partitions)) or None
        error, offsets = await self.groups.fetch_offsets(request.group_id, wanted)
        response = pb.OffsetFetchResponse(error=_maybe_error_pb(error))
        for (topic, index), value in offsets.items():
            item = response.partitions.add(topic=topic, partition=index, offset=-1, leader_epoch=-1)
            if value is not None:
                item.offset = value.offset
                item.leader_epoch = value.leader_epoch
                item.metadata = value.metadata
                item.commit_timestamp_ms = value.commit_timestamp_ms
        return response

    @instrumented("ListGroups")
    async def ListGroups(self, request: pb.ListGroupsRequest, context: Any) -> Any:
        return pb.ListGroupsResponse(
            error=wire.ok_pb(),
            groups=[
                pb.GroupListing(group_id=g, state=state, coordinator_id=self.broker_id)
                for g, state in self.groups.list_groups()
            ],
        )

    @instrumented("DescribeGroups")
    async def DescribeGroups(self, request: pb.DescribeGroupsRequest, context: Any) -> Any:
        response = pb.DescribeGroupsResponse()
        for group_id in request.group_ids:
            error, description = await self.groups.describe(group_id)
            item = response.groups.add(
                group_id=group_id, error=_maybe_error_pb(error), coordinator_id=self.broker_id
            )
            if description is None:
                continue
            item.state = description.state
            item.group_epoch = description.group_epoch
            item.assignment_epoch = description.assignment_epoch
            item.assignor = description.assignor
            for m in description.members:
                item.members.add(
                    member_id=m.member_id,
                    instance_id=m.instance_id,
                    client_id=m.client_id,
                    member_epoch=m.member_epoch,
                    assignment=_partitions_pb(m.assigned),
                    revoking=_partitions_pb(m.revoking),
                    target=_partitions_pb(m.target),
                    subscribed_topics=list(m.subscribed_topics),
                    subscribed_pattern=m.subscribed_pattern,
                )
        return response

    @instrumented("DeleteGroups")
    async def DeleteGroups(self, request: pb.DeleteGroupsRequest, context: Any) -> Any:
        response = pb.DeleteGroupsResponse()
        for group_id in request.group_ids:
            error = await self.groups.delete(group_id)
            response.results.add(group_id=group_id, error=_maybe_error_pb(error))
        return response

    @instrumented("CreateTopic")
    async def CreateTopic(self, request: Any, context: Any) -> Any:
        request.internal = False  # only the cluster creates its internal topics
        # As Kafka's CreateTopics (KIP-464): -1 (or unset) asks for the cluster's defaults.
        if request.partitions <= 0:
            request.partitions = self.topic_defaults.partitions
        if request.replication_factor <= 0:
            request.replication_factor = self.topic_defaults.replication_factor
        return await self._forward("CreateTopic", request, ctl.CreateTopicResponse)

    @instrumented("DeleteTopic")
    async def DeleteTopic(self, request: Any, context: Any) -> Any:
        return await self._forward("DeleteTopic", request, ctl.DeleteTopicResponse)

    @instrumented("DescribeTopics")
    async def DescribeTopics(self, request: Any, context: Any) -> Any:
        return await self._forward("DescribeTopics", request, ctl.DescribeTopicsResponse)

    @instrumented("DescribeCluster")
    async def DescribeCluster(self, request: Any, context: Any) -> Any:
        return await self._forward("DescribeCluster", request, ctl.DescribeClusterResponse)


def _partitions_pb(partitions: Iterable[tuple[str, int]]) -> list[pb.TopicPartitions]:
    by_topic: dict[str, list[int]] = {}
    for topic, index in sorted(partitions):
        by_topic.setdefault(topic, []).append(index)
    return [pb.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]


def _partitions_from_pb(items: Iterable[pb.TopicPartitions]) -> frozenset[tuple[str, int]]:
    return frozenset((item.topic, p) for item in items for p in item.partitions)


def _maybe_error_pb(error: RaftmqError | None) -> cpb.Error:
    return wire.ok_pb() if error is None else wire.exception_to_pb(error)


class _Outbox:
    """Answers of one follower session not yet written to its stream, one per partition
    (a newer answer for a partition replaces an unsent one: the session sends records for
    a partition only after the follower acknowledged the previous ones, so what is replaced
    is only ever a high watermark). Bounded by the session's partitions."""

    def __init__(self) -> None:
        self._items: dict[tuple[bytes, int], SessionResult] = {}
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, results: list[SessionResult]) -> None:
        for result in results:
            self._items[(result.topic_id, result.partition)] = result
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def take(self) -> list[SessionResult] | None:
        """The answers queued so far; None once closed."""
        if not self._items and not self._closed:
            await self._ready.wait()
        self._ready.clear()
        if self._closed:
            return None
        items = list(self._items.values())
        self._items.clear()
        return items


class _SessionRefusedError(Exception):
    def __init__(self, error: cpb.Error) -> None:
        super().__init__(error.message)
        self.error = error


def _position(p: pb.ReplicaPosition) -> ReplicaPosition:
    return ReplicaPosition(
        bytes(p.topic_id), p.partition, p.fetch_offset, p.last_fetched_epoch, p.current_leader_epoch
    )


def _result_pb(r: SessionResult) -> pb.PartitionFetchResult:
    result = pb.PartitionFetchResult(topic=r.topic, topic_id=r.topic_id, partition=r.partition)
    if r.error is not None:
        result.error.CopyFrom(wire.exception_to_pb(r.error))
        result.log_start_offset = r.log_start_offset
        result.log_end_offset = r.log_end_offset
        return result
    read = r.read
    assert read is not None
    result.error.CopyFrom(wire.ok_pb())
    result.high_watermark = read.high_watermark
    result.log_start_offset = read.log_start_offset
    result.log_end_offset = read.log_end_offset
    result.records = read.records
    if read.diverging_epoch is not None:
        result.has_diverging_epoch = True
        result.diverging_epoch.epoch, result.diverging_epoch.end_offset = read.diverging_epoch
    return result
