"""The broker process: log store, controller session (register + heartbeat), metadata
watch, replica manager and the gRPC server, started and stopped in that order."""

from __future__ import annotations

import signal
import threading
import uuid
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from raftmq import wire
from raftmq.broker.log_store import FlushPolicy, LogStore
from raftmq.broker.metadata_cache import MetadataCache, MetadataImage
from raftmq.broker.replica_manager import ReplicaManager
from raftmq.broker.server import BrokerServicer
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
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


class ControllerSession:
    """Registration and heartbeats. The broker asks to stay fenced (`want_fence`) until
    its metadata has caught up with its own registration."""

    def __init__(self, options: BrokerOptions, pool: EndpointPool, metadata: MetadataCache) -> None:
        self.options = options
        self.pool = pool
        self.metadata = metadata
        self.incarnation_id = uuid.uuid4().hex
        self.broker_epoch = -1
        self.fenced = True
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="controller-session", daemon=True)
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=options.node_id)

    def register(self) -> None:
        """Register this incarnation; retries until it succeeds or the broker stops."""
        request_id = uuid.uuid4().hex
        while not self._stopping.is_set():
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
                    ),
                    timeout_ms=10_000,
                )
                wire.raise_for(response.error)
            except RaftmqError as e:
                self.log.info("broker.registration_failed", error=str(e))
                self._stopping.wait(0.5)
                continue
            self.broker_epoch = response.broker_epoch
            self.log.info("broker.registered", broker_epoch=self.broker_epoch)
            return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        while not self._stopping.wait(HEARTBEAT_INTERVAL_MS / 1000):
            caught_up = self.metadata.image.version >= self.broker_epoch
            try:
                response = call_with_failover(
                    self.pool,
                    "BrokerHeartbeat",
                    ctl.BrokerHeartbeatRequest(
                        broker_id=self.options.node_id,
                        broker_epoch=self.broker_epoch,
                        metadata_version=self.metadata.image.version,
                        want_fence=not caught_up,
                    ),
                    timeout_ms=2_000,
                    rpc_timeout_ms=1_000,
                )
            except RaftmqError as e:
                self.log.info("broker.heartbeat_failed", error=str(e))
                continue
            error = wire.error_from_pb(response.error)
            if error is not None and error.code == ErrorCode.STALE_BROKER_EPOCH:
                self.log.warning("broker.registration_lost", error=error.message)
                self.register()
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


def run_broker(options: BrokerOptions) -> None:
    """Run one broker until SIGTERM/SIGINT, then shut down in a controlled way."""
    log = structlog.get_logger("raftmq.broker").bind(node_id=options.node_id)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    store = LogStore(options.data_dir / "log", flush_policy=FlushPolicy(options.flush_policy))
    pool = EndpointPool(options.controllers, service="controller")
    replicas: ReplicaManager | None = None

    def on_image(image: MetadataImage) -> None:
        if replicas is not None:
            replicas.apply_image(image)

    metadata = MetadataCache(pool, watcher_name=f"broker-{options.node_id}", listener=on_image)
    session = ControllerSession(options, pool, metadata)
    replicas = ReplicaManager(
        broker_id=options.node_id,
        store=store,
        controllers=pool,
        broker_epoch=lambda: session.broker_epoch,
        replica_lag_time_max_ms=options.replica_lag_time_max_ms,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKER_THREADS_MAX, thread_name_prefix="grpc"),
        options=wire.GRPC_OPTIONS,
        maximum_concurrent_rpcs=CONCURRENT_RPCS_MAX,
    )
    broker_pb2_grpc.add_BrokerServiceServicer_to_server(
        BrokerServicer(
            broker_id=options.node_id,
            replicas=replicas,
            metadata=metadata,
            controllers=pool,
            wait_durable=store.wait_durable,
        ),
        server,
    )
    address = f"{options.listen[0]}:{options.listen[1]}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the gRPC listener {address}")

    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    replicas.start()
    session.register()
    metadata.start()
    session.start()
    log.info(
        "broker.started",
        listen=address,
        advertise=options.advertise,
        broker_epoch=session.broker_epoch,
    )
    while not stopping.wait(0.5):
        pass
    log.info("broker.stopping")
    session.controlled_shutdown()
    session.stop()
    metadata.stop()
    server.stop(grace=1.0).wait(timeout=3)
    replicas.stop()
    store.close()
    pool.close()
    log.info("broker.stopped")
