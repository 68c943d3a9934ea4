"""The broker process: data dir check, log store, controller session (register +
heartbeat), metadata watch, replica manager and the gRPC server, started and stopped in
that order."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from raftmq import node_meta, ports, wire
from raftmq.broker.log_store import FlushPolicy, LogStore
from raftmq.broker.metadata_cache import MetadataCache, MetadataImage
from raftmq.broker.producer_ids import ProducerIdManager
from raftmq.broker.replica_manager import ReplicaManager
from raftmq.broker.server import BrokerServicer, TopicDefaults
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.lifecycle import NodeLifecycle, guarded_thread
from raftmq.node_meta import DataDirError, NodeMeta
from raftmq.v1 import broker_pb2_grpc
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as ctl

HEARTBEAT_INTERVAL_MS = 500
WORKER_THREADS_MAX = 64
CONCURRENT_RPCS_MAX = 512
CONTROLLED_SHUTDOWN_TIMEOUT_MS = 10_000


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    node_id: int
    listen: tuple[str, int]
    advertise: tuple[str, int]
    controllers: list[str]
    data_dir: Path
    rack: str = ""
    flush_policy: str = "interval"
    replica_lag_time_max_ms: int = 10_000
    # The cluster this broker must join ("" : whichever its data dir or the quorum says).
    cluster_id: str = ""
    topic_defaults: TopicDefaults = field(default_factory=TopicDefaults)


class ControllerSession:
    """Registration and heartbeats. The broker asks to stay fenced (`want_fence`) until
    its metadata has caught up with its own registration.

    Registration carries the cluster id of the data dir (or `--cluster-id`): a quorum of
    another cluster refuses it with INCONSISTENT_CLUSTER_ID, which ends the broker. A new
    data dir is stamped with the quorum's cluster id at the first registration."""

    def __init__(
        self,
        options: BrokerOptions,
        pool: EndpointPool,
        metadata: MetadataCache,
        *,
        meta: NodeMeta,
        on_fatal: Callable[[str], None],
        node_stopping: threading.Event,
    ) -> None:
        self.options = options
        # The whole node is stopping (e.g. SIGTERM while the quorum is unreachable at start).
        self.node_stopping = node_stopping
        self.pool = pool
        self.metadata = metadata
        self.meta = meta
        self.on_fatal = on_fatal
        self.incarnation_id = uuid.uuid4().hex
        self.broker_epoch = -1
        self.fenced = True
        self._stopping = threading.Event()
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=options.node_id)
        self._thread = guarded_thread(
            self._run,
            name="controller-session",
            stopping=self._stopping,
            on_fatal=on_fatal,
            log=self.log,
        )

    @property
    def cluster_id(self) -> str:
        return self.meta.cluster_id or self.options.cluster_id

    def register(self) -> None:
        """Register this incarnation; retries until it succeeds or the broker stops.
        Raises DataDirError when the quorum belongs to another cluster."""
        request_id = uuid.uuid4().hex
        while not self._stopping.is_set() and not self.node_stopping.is_set():
            try:
                response = call_with_failover(
                    self.pool,
                    "RegisterBroker",
                    ctl.RegisterBrokerRequest(
                        broker_id=self.options.node_id,
                        endpoint=cpb.Endpoint(
                            host=self.options.advertise[0], port=self.options.advertise[1]
                        ),
                        rack=self.options.rack,
                        incarnation_id=self.incarnation_id,
                        request_id=request_id,
                        cluster_id=self.cluster_id,
                    ),
                    timeout_ms=10_000,
                )
                wire.raise_for(response.error)
            except RaftmqError as e:
                if e.code == ErrorCode.INCONSISTENT_CLUSTER_ID:
                    raise DataDirError(
                        f"broker {self.options.node_id} (data dir {self.options.data_dir}) "
                        f"cannot join: {e.message}"
                    ) from e
                self.log.info("broker.registration_failed", error=str(e))
                self._stopping.wait(0.5)
                continue
            self.broker_epoch = response.broker_epoch
            if not self.meta.cluster_id and response.cluster_id:
                self.meta = node_meta.record_cluster_id(
                    self.options.data_dir, self.meta, response.cluster_id
                )
                self.log.info("broker.data_dir_stamped", cluster_id=response.cluster_id)
            self.log.info(
                "broker.registered", broker_epoch=self.broker_epoch, cluster_id=self.cluster_id
            )
            return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        while not self._stopping.wait(HEARTBEAT_INTERVAL_MS / 1000):
            self._heartbeat()

    def _heartbeat(self) -> None:
        version = self.metadata.image.version
        try:
            response = call_with_failover(
                self.pool,
                "BrokerHeartbeat",
                ctl.BrokerHeartbeatRequest(
                    broker_id=self.options.node_id,
                    broker_epoch=self.broker_epoch,
                    metadata_version=version,
                    want_fence=version < self.broker_epoch,
                ),
                timeout_ms=2_000,
                rpc_timeout_ms=1_000,
            )
        except RaftmqError as e:
            self.log.info("broker.heartbeat_failed", error=str(e))
            return
        error = wire.error_from_pb(response.error)
        if error is not None and error.code == ErrorCode.STALE_BROKER_EPOCH:
            self.log.warning("broker.registration_lost", error=error.message)
            try:
                self.register()
            except DataDirError as e:
                self.on_fatal(str(e))
        elif error is None and response.fenced != self.fenced:
            self.fenced = response.fenced
            self.log.info("broker.fence_changed", fenced=self.fenced)

    def controlled_shutdown(self) -> None:
        try:
            response = call_with_failover(
                self.pool,
                "ControlledShutdown",
                ctl.ControlledShutdownRequest(
                    broker_id=self.options.node_id,
                    broker_epoch=self.broker_epoch,
                    request_id=uuid.uuid4().hex,
                ),
                timeout_ms=CONTROLLED_SHUTDOWN_TIMEOUT_MS,
            )
            wire.raise_for(response.error)
            self.log.info("broker.shutdown_controlled")
        except RaftmqError as e:
            self.log.warning("broker.controlled_shutdown_failed", error=str(e))


def run_broker(options: BrokerOptions) -> int:
    """Run one broker until SIGTERM/SIGINT (or its launcher's death, or a fatal error),
    then shut down in a controlled way. Returns the process exit status. Raises
    DataDirError / PortInUseError before serving anything when it must not start."""
    log = structlog.get_logger("raftmq.broker").bind(node_id=options.node_id)
    lifecycle = NodeLifecycle()
    lifecycle.install_signal_handlers()
    lifecycle.watch_launcher()
    meta = node_meta.claim(
        options.data_dir, role="broker", node_id=options.node_id, cluster_id=options.cluster_id
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKER_THREADS_MAX, thread_name_prefix="grpc"),
        options=ports.GRPC_SERVER_OPTIONS,
        maximum_concurrent_rpcs=CONCURRENT_RPCS_MAX,
    )
    # Bound before anything else starts: a taken port is an error, never a shared one.
    ports.bind_grpc(server, *options.listen)
    store = LogStore(options.data_dir / "log", flush_policy=FlushPolicy(options.flush_policy))
    pool = EndpointPool(options.controllers, service="controller")
    replicas: ReplicaManager | None = None

    def on_image(image: MetadataImage) -> None:
        if replicas is not None:
            replicas.apply_image(image)

    metadata = MetadataCache(
        pool,
        watcher_name=f"broker-{options.node_id}",
        listener=on_image,
        on_fatal=lifecycle.fatal,
    )
    session = ControllerSession(
        options,
        pool,
        metadata,
        meta=meta,
        on_fatal=lifecycle.fatal,
        node_stopping=lifecycle.stopping,
    )
    replicas = ReplicaManager(
        broker_id=options.node_id,
        store=store,
        controllers=pool,
        broker_epoch=lambda: session.broker_epoch,
        replica_lag_time_max_ms=options.replica_lag_time_max_ms,
        on_fatal=lifecycle.fatal,
    )
    broker_pb2_grpc.add_BrokerServiceServicer_to_server(
        BrokerServicer(
            broker_id=options.node_id,
            replicas=replicas,
            metadata=metadata,
            controllers=pool,
            wait_durable=store.wait_durable,
            producer_ids=ProducerIdManager(
                broker_id=options.node_id,
                broker_epoch=lambda: session.broker_epoch,
                controllers=pool,
            ),
            topic_defaults=options.topic_defaults,
        ),
        server,
    )
    server.start()
    replicas.start()
    try:
        session.register()
    except DataDirError:
        server.stop(grace=None)
        replicas.stop()
        store.close()
        pool.close()
        raise
    metadata.start()
    session.start()
    log.info(
        "broker.started",
        listen=f"{options.listen[0]}:{options.listen[1]}",
        advertise=options.advertise,
        broker_epoch=session.broker_epoch,
        cluster_id=session.cluster_id,
    )
    while not lifecycle.stopping.wait(0.5):
        pass
    log.info("broker.stopping", reason=lifecycle.reason)
    session.controlled_shutdown()
    session.stop()
    metadata.stop()
    server.stop(grace=1.0).wait(timeout=3)
    replicas.stop()
    store.close()
    pool.close()
    log.info("broker.stopped", exit_code=lifecycle.exit_code)
    return lifecycle.exit_code
