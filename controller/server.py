"""The controller process: a gRPC `ControllerService` adapter over `ControllerQuorum`.

The servicer converts protobuf <-> domain types and maps results to error codes; all
decisions live in `MetadataState` (replicated) and `ControllerQuorum` (leader duties).
Writes are planned only on the Raft leader: on a follower they answer NOT_CONTROLLER with
the leader's endpoint, which the callers' `call_with_failover` follows. Reads are local,
after a read index on followers (`read_index`), so a write is visible on every controller
once answered."""

from __future__ import annotations

import functools
import itertools
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from raftmq import metrics, node_meta, ports, wire
from raftmq.controller import metadata_commands as mc
from raftmq.controller import metadata_state as ms
from raftmq.controller.controller_metrics import ControllerMetrics
from raftmq.controller.quorum import ControllerQuorum, QuorumConfig
from raftmq.controller.read_index import ReadIndex, is_version_probe
from raftmq.errors import ErrorCode
from raftmq.health import NodeHealth, add_standard_services
from raftmq.heap import freeze_startup_heap, record_gc_pauses
from raftmq.lifecycle import NodeLifecycle
from raftmq.metadata import PartitionRecord
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc as rpc

# Watch streams hold a worker thread each: bound both so a flood of watchers is refused
# (RESOURCE_EXHAUSTED) instead of starving admin requests.
WORKER_THREADS_MAX = 64
CONCURRENT_RPCS_MAX = 256
# A watcher with nothing new still gets a keepalive this often (and notices a dead peer).
WATCH_KEEPALIVE_MS = 1_000
# A controller that has known no Raft leader for this long (cut off in a minority) ends
# its watch streams, so watchers move to a controller whose metadata is current.
WATCH_LEADERLESS_MS_MAX = 3_000
CONTROLLER_SERVICE = "raftmq.v1.ControllerService"
# --cluster-id: Kafka's are 22 base64url characters; operators may pick readable ones.
_CLUSTER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _now_leader_hint(quorum: ControllerQuorum) -> cpb.Error:
    leader_id = quorum.leader_id()
    endpoint = quorum.read(
        lambda s: (
            (s.controllers[leader_id].host, s.controllers[leader_id].port)
            if leader_id in s.controllers
            else None
        )
    )
    return wire.error_to_pb(
        ErrorCode.NOT_CONTROLLER,
        f"controller {quorum.config.node_id} is not the Raft leader (leader: {leader_id})",
        leader_id=leader_id,
        leader_endpoint=endpoint,
    )


def _result_error(quorum: ControllerQuorum, result: mc.CommandResult) -> cpb.Error:
    if result.ok:
        return wire.ok_pb()
    if result.error == ErrorCode.NOT_CONTROLLER:
        return _now_leader_hint(quorum)
    return wire.error_to_pb(result.error, result.message)


def snapshot_update(state: ms.MetadataState) -> pb.MetadataUpdate:
    return pb.MetadataUpdate(
        version=state.version,
        snapshot=True,
        brokers=[wire.broker_to_pb(b) for b in state.brokers.values()],
        topics=[wire.topic_to_pb(t) for t in state.topics.values()],
        controllers=[wire.controller_to_pb(c) for c in state.controllers.values()],
        controller_epoch=state.controller_epoch,
    )


def delta_update(state: ms.MetadataState, changes: ms.ChangeSet) -> pb.MetadataUpdate:
    update = pb.MetadataUpdate(version=state.version, controller_epoch=state.controller_epoch)
    for broker_id in sorted(changes.brokers):
        if broker_id in state.brokers:
            update.brokers.append(wire.broker_to_pb(state.brokers[broker_id]))
    for name in sorted(changes.topics):
        if name in state.topics:
            update.topics.append(wire.topic_to_pb(state.topics[name]))
        else:
            update.deleted_topics.append(name)
    for name, index in sorted(changes.partitions):
        topic = state.topics.get(name)
        if name in changes.topics or topic is None:
            continue  # sent whole above, or deleted
        update.partitions.append(
            pb.PartitionDelta(
                topic=name,
                topic_id=topic.topic_id,
                state=wire.partition_to_pb(index, topic.partitions[index]),
            )
        )
    for controller_id in sorted(changes.controllers):
        update.controllers.append(wire.controller_to_pb(state.controllers[controller_id]))
    return update


class ControllerServicer(rpc.ControllerServiceServicer):
    def __init__(self, quorum: ControllerQuorum, stopping: threading.Event) -> None:
        self.quorum = quorum
        self.stopping = stopping
        self.read_index = ReadIndex(quorum, stopping)
        # One token per BrokerSession stream (itertools.count is atomic under the GIL).
        self._stream_tokens = itertools.count(1)
        self.log = structlog.get_logger("raftmq.controller").bind(node_id=quorum.config.node_id)

    # ------------------------------------------------------------ brokers

    def RegisterBroker(
        self, request: pb.RegisterBrokerRequest, context: grpc.ServicerContext
    ) -> pb.RegisterBrokerResponse:
        if request.broker_id < 0 or not request.endpoint.host or not request.incarnation_id:
            return pb.RegisterBrokerResponse(
                error=wire.error_to_pb(
                    ErrorCode.INVALID_REQUEST, "broker_id, endpoint and incarnation_id are required"
                )
            )
        result = self.quorum.submit(
            mc.RegisterBroker(
                request.request_id or uuid.uuid4().hex,
                request.broker_id,
                request.endpoint.host,
                request.endpoint.port,
                request.rack,
                request.incarnation_id,
                request.cluster_id,
                tuple(wire.listener_from_pb(item) for item in request.listeners),
            )
        )
        broker_epoch = result.value if result.ok and isinstance(result.value, int) else -1
        if result.ok:
            self.log.info(
                "broker.registered", broker_id=request.broker_id, broker_epoch=broker_epoch
            )
        return pb.RegisterBrokerResponse(
            error=_result_error(self.quorum, result),
            broker_epoch=broker_epoch,
            cluster_id=self.quorum.read(lambda s: s.cluster_id),
        )

    def BrokerHeartbeat(
        self, request: pb.BrokerHeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.BrokerHeartbeatResponse:
        return self._heartbeat(request, stream_token=None)

    def _heartbeat(
        self, request: pb.BrokerHeartbeatRequest, *, stream_token: int | None
    ) -> pb.BrokerHeartbeatResponse:
        if not self.quorum.is_leader():
            return pb.BrokerHeartbeatResponse(error=_now_leader_hint(self.quorum))
        broker = self.quorum.read(lambda s: s.brokers.get(request.broker_id))
        if broker is None or broker.broker_epoch != request.broker_epoch:
            return pb.BrokerHeartbeatResponse(
                error=wire.error_to_pb(
                    ErrorCode.STALE_BROKER_EPOCH,
                    f"broker {request.broker_id} epoch {request.broker_epoch} is not registered",
                )
            )
        self.quorum.on_heartbeat(
            request.broker_id,
            request.broker_epoch,
            metadata_version=request.metadata_version,
            want_fence=request.want_fence,
            stream_token=stream_token,
        )
        return pb.BrokerHeartbeatResponse(
            error=wire.ok_pb(),
            fenced=broker.fenced,
            controller_epoch=self.quorum.read(lambda s: s.controller_epoch),
        )

    def BrokerSession(
        self, request_iterator: Iterator[pb.BrokerHeartbeatRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.BrokerHeartbeatResponse]:
        """Heartbeats on one stream. Its end without a goodbye — the broker's process died,
        so the kernel closed its connection — lets the leader fence the broker at once
        (after a short grace) instead of after the session timeout. Holds one worker
        thread per broker (bounded by the number of brokers)."""
        token = next(self._stream_tokens)
        seen: dict[str, int] = {}
        said_goodbye = False

        def on_end() -> None:
            if not said_goodbye and seen:
                self.quorum.on_session_stream_lost(seen["broker_id"], seen["broker_epoch"], token)

        context.add_callback(on_end)
        for request in request_iterator:
            if request.goodbye:
                said_goodbye = True
                return
            response = self._heartbeat(request, stream_token=token)
            if response.error.code == cpb.NONE:
                seen["broker_id"], seen["broker_epoch"] = request.broker_id, request.broker_epoch
            yield response
        # The request stream ended without a goodbye. A broker that leaves on purpose (for
        # another controller, or to stop) says goodbye first; a killed broker's stream ends
        # just like this (measured: 3 ms after SIGKILL), so it counts as lost.

    def ControlledShutdown(
        self, request: pb.ControlledShutdownRequest, context: grpc.ServicerContext
    ) -> pb.ControlledShutdownResponse:
        result = self.quorum.submit(
            mc.ControlledShutdown(
                request.request_id or uuid.uuid4().hex, request.broker_id, request.broker_epoch
            )
        )
        if result.ok:
            self.log.info("broker.shutdown_controlled", broker_id=request.broker_id)
        return pb.ControlledShutdownResponse(error=_result_error(self.quorum, result))

    # ------------------------------------------------------------ metadata

    def WatchMetadata(
        self, request: pb.WatchMetadataRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.MetadataUpdate]:
        version = max(0, request.from_version)
        first = True
        leaderless_since: float | None = None
        self.log.info("watch.started", watcher=request.watcher, from_version=version)
        while context.is_active() and not self.stopping.is_set():
            if not self.quorum.has_reachable_leader():
                now = time.monotonic()
                leaderless_since = leaderless_since or now
                if (now - leaderless_since) * 1000 >= WATCH_LEADERLESS_MS_MAX:
                    self.log.info("watch.ended_leaderless", watcher=request.watcher)
                    context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        f"controller {self.quorum.config.node_id} has no Raft leader",
                    )
            else:
                leaderless_since = None
            update = self._next_update(version, wait=not first)
            if update is None:
                continue  # this controller lags behind what the watcher already saw
            version = update.version
            first = False
            yield update

    def _next_update(self, version: int, *, wait: bool) -> pb.MetadataUpdate | None:
        """The update that brings a watcher at `version` up to date: a snapshot, deltas, or
        (after a quiet keepalive interval) an empty delta. None while this controller is
        behind `version`. The state object is re-read after waiting: a snapshot load by
        pysyncobj replaces it."""
        quorum = self.quorum
        with quorum.lock:
            if wait or version > quorum.state_while_locked().version:
                quorum.changed.wait_for(
                    lambda: (
                        quorum.state_while_locked().version != version or self.stopping.is_set()
                    ),
                    timeout=WATCH_KEEPALIVE_MS / 1000,
                )
            state = quorum.state_while_locked()
            if version > state.version:
                return None
            changes = state.changes_since(version) if version > 0 else None
            return snapshot_update(state) if changes is None else delta_update(state, changes)

    def DescribeTopics(
        self, request: pb.DescribeTopicsRequest, context: grpc.ServicerContext
    ) -> pb.DescribeTopicsResponse:
        if not is_version_probe(request):
            self.read_index.wait_caught_up()

        def read(s: ms.MetadataState) -> pb.DescribeTopicsResponse:
            names = list(request.names) or sorted(s.topics)
            missing = [n for n in names if n not in s.topics]
            response = pb.DescribeTopicsResponse(
                topics=[wire.topic_to_pb(s.topics[n]) for n in names if n in s.topics],
                metadata_version=s.version,
                error=wire.ok_pb(),
            )
            if missing:
                response.error.CopyFrom(
                    wire.error_to_pb(
                        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                        f"unknown topic(s): {', '.join(missing)}",
                    )
                )
            return response

        return self.quorum.read(read)

    def DescribeCluster(
        self, request: pb.DescribeClusterRequest, context: grpc.ServicerContext
    ) -> pb.DescribeClusterResponse:
        self.read_index.wait_caught_up()
        status = self.quorum.status()

        def read(s: ms.MetadataState) -> pb.DescribeClusterResponse:
            voters = []
            for v in status.voters:
                c = s.controllers.get(v.node_id)
                voters.append(
                    pb.QuorumVoter(
                        id=v.node_id,
                        raft_address=v.raft_address,
                        endpoint=cpb.Endpoint(host=c.host, port=c.port) if c else None,
                        state=v.state,
                        match_index=v.match_index,
                        last_contact_ms=v.last_contact_ms,
                    )
                )
            return pb.DescribeClusterResponse(
                error=wire.ok_pb(),
                controller=pb.QuorumInfo(
                    leader_id=status.leader_id,
                    term=status.term,
                    voters=voters,
                    commit_index=status.commit_index,
                    last_applied=status.last_applied,
                ),
                brokers=[wire.broker_to_pb(b) for _, b in sorted(s.brokers.items())],
                topics=[wire.topic_to_pb(t) for _, t in sorted(s.topics.items())],
                metadata_version=s.version,
                cluster_id=s.cluster_id,
            )

        return self.quorum.read(read)

    # ------------------------------------------------------------ topics and partitions

    def CreateTopic(
        self, request: pb.CreateTopicRequest, context: grpc.ServicerContext
    ) -> pb.CreateTopicResponse:
        result = self.quorum.submit(
            mc.CreateTopic(
                request.request_id or uuid.uuid4().hex,
                request.name,
                uuid.uuid4().bytes,
                request.partitions,
                request.replication_factor,
                tuple(sorted(request.configs.items())),
                internal=request.internal,
            )
        )
        response = pb.CreateTopicResponse(error=_result_error(self.quorum, result))
        if result.ok:
            topic = self.quorum.read(lambda s: s.topics.get(request.name))
            if topic is not None:
                response.topic.CopyFrom(wire.topic_to_pb(topic))
            self.log.info("topic.created", topic=request.name, partitions=request.partitions)
        return response

    def DeleteTopic(
        self, request: pb.DeleteTopicRequest, context: grpc.ServicerContext
    ) -> pb.DeleteTopicResponse:
        result = self.quorum.submit(
            mc.DeleteTopic(request.request_id or uuid.uuid4().hex, request.name)
        )
        if result.ok:
            self.log.info("topic.deleted", topic=request.name)
        return pb.DeleteTopicResponse(error=_result_error(self.quorum, result))

    def AlterPartition(
        self, request: pb.AlterPartitionRequest, context: grpc.ServicerContext
    ) -> pb.AlterPartitionResponse:
        result = self.quorum.submit(
            mc.AlterPartition(
                request.request_id or uuid.uuid4().hex,
                request.broker_id,
                request.broker_epoch,
                request.topic,
                bytes(request.topic_id),
                request.partition,
                request.leader_epoch,
                request.partition_epoch,
                tuple(request.new_isr),
            )
        )
        response = pb.AlterPartitionResponse(error=_result_error(self.quorum, result))
        if result.ok and isinstance(result.value, PartitionRecord):
            response.partition.CopyFrom(wire.partition_to_pb(request.partition, result.value))
            self.log.info(
                "partition.isr_changed",
                topic=request.topic,
                partition=request.partition,
                isr=list(result.value.isr),
            )
        return response

    def ElectLeaders(
        self, request: pb.ElectLeadersRequest, context: grpc.ServicerContext
    ) -> pb.ElectLeadersResponse:
        result = self.quorum.submit(
            mc.ElectLeaders(
                request.request_id or uuid.uuid4().hex,
                -1,
                request.type == pb.PREFERRED,
                tuple((tp.topic, tp.partition) for tp in request.partitions),
            )
        )
        elected = result.value if result.ok and isinstance(result.value, int) else 0
        return pb.ElectLeadersResponse(error=_result_error(self.quorum, result), elected=elected)

    # ------------------------------------------------------------ producer ids

    def AllocateProducerIds(
        self, request: pb.AllocateProducerIdsRequest, context: grpc.ServicerContext
    ) -> pb.AllocateProducerIdsResponse:
        result = self.quorum.submit(
            mc.AllocateProducerIds(
                request.request_id or uuid.uuid4().hex, request.broker_id, request.broker_epoch
            )
        )
        response = pb.AllocateProducerIdsResponse(error=_result_error(self.quorum, result))
        if result.ok and isinstance(result.value, mc.ProducerIdBlock):
            response.first_producer_id = result.value.first_producer_id
            response.count = result.value.count
            self.log.info(
                "producer_ids.allocated",
                broker_id=request.broker_id,
                first_producer_id=result.value.first_producer_id,
                count=result.value.count,
            )
        return response


@dataclass(frozen=True, slots=True)
class ControllerOptions:
    node_id: int
    listen: tuple[str, int]
    advertise: tuple[str, int]
    raft_listen: str
    voters: dict[int, str]
    data_dir: Path
    raft_secret: str
    session_timeout_ms: int = 4_000
    cluster_id: str = ""  # --cluster-id; "" to take the data dir's or the quorum's
    metrics_listen: tuple[str, int] | None = None


def parse_voters(text: str) -> dict[int, str]:
    """'1@host:port,2@host:port' -> {1: 'host:port', 2: ...}."""
    voters: dict[int, str] = {}
    for item in text.split(","):
        node, sep, address = item.strip().partition("@")
        if not sep or not node.isdigit():
            raise ValueError(f"expected ID@HOST:PORT in --voters, got {item!r}")
        wire.parse_host_port(address)
        voters[int(node)] = address
    if len(voters) not in (1, 3, 5):
        raise ValueError(f"a quorum has 1, 3 or 5 voters, got {len(voters)}")
    return voters


def run_controller(options: ControllerOptions) -> NodeLifecycle:
    """Run one controller until SIGTERM/SIGINT, the launcher's death or a fatal error;
    returns the lifecycle (its `exit_code` and `reason`). Called on the main thread
    (pysyncobj's tick thread stops when the thread that created the SyncObj exits).

    Raises DataDirError (a data dir of another node, role, format or cluster) and
    PortInUseError (the gRPC or the Raft port is taken) before serving anything."""
    log = structlog.get_logger("raftmq.controller").bind(node_id=options.node_id)
    if options.node_id not in options.voters:
        raise ValueError(f"--node-id {options.node_id} is not among the voters")
    if options.cluster_id and not _CLUSTER_ID.match(options.cluster_id):
        raise ValueError(
            f"--cluster-id {options.cluster_id!r}: use 1-64 letters, digits, '-' or '_'"
        )
    lifecycle = NodeLifecycle()
    lifecycle.install_signal_handlers()
    lifecycle.watch_launcher()
    stamp = node_meta.claim(
        options.data_dir,
        role="controller",
        node_id=options.node_id,
        cluster_id=options.cluster_id,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKER_THREADS_MAX, thread_name_prefix="grpc"),
        options=ports.GRPC_SERVER_OPTIONS,
        maximum_concurrent_rpcs=CONCURRENT_RPCS_MAX,
    )
    ports.bind_grpc(server, *options.listen)
    node_metrics = ControllerMetrics(node_id=options.node_id)
    metrics_server = (
        metrics.serve(node_metrics.registry, *options.metrics_listen)
        if options.metrics_listen is not None
        else None
    )
    try:
        quorum = ControllerQuorum(
            QuorumConfig(
                node_id=options.node_id,
                raft_address=options.voters[options.node_id],
                raft_bind=options.raft_listen,
                voters=options.voters,
                data_dir=options.data_dir,
                password=options.raft_secret,
                grpc_host=options.advertise[0],
                grpc_port=options.advertise[1],
                cluster_id=options.cluster_id or stamp.cluster_id,
                session_timeout_ms=options.session_timeout_ms,
            ),
            stopping=lifecycle.stopping,
            on_fatal=lifecycle.fatal,
        )
    except BaseException:
        server.stop(grace=None)
        if metrics_server is not None:
            metrics_server.shutdown()
        raise
    rpc.add_ControllerServiceServicer_to_server(
        ControllerServicer(quorum, lifecycle.stopping), server
    )
    node_health = NodeHealth([CONTROLLER_SERVICE])
    add_standard_services(server, [CONTROLLER_SERVICE], node_health.servicer)
    node_health.set_serving(False)
    server.start()
    quorum.start()
    freeze_startup_heap("controller")
    record_gc_pauses()
    log.info(
        "controller.started",
        listen=f"{options.listen[0]}:{options.listen[1]}",
        raft=options.voters[options.node_id],
        voters=len(options.voters),
    )
    # The main thread only waits (pysyncobj's tick thread runs while it is alive) and
    # keeps the health status: SERVING while the quorum has a leader and a cluster id.
    while not lifecycle.stopping.wait(0.5):
        node_health.set_serving(
            quorum.has_reachable_leader() and bool(quorum.read(lambda s: s.cluster_id))
        )
        status = quorum.status()
        quorum.read(functools.partial(node_metrics.refresh, status))
    log.info("controller.stopping", reason=lifecycle.reason)
    node_health.shutting_down()
    if metrics_server is not None:
        metrics_server.shutdown()
    server.stop(grace=1.0).wait(timeout=3)
    quorum.stop()
    log.info("controller.stopped", exit_code=lifecycle.exit_code)
    return lifecycle
