"""The broker's session with the controller quorum: registration, then heartbeats on one
long-lived `BrokerSession` stream to the Raft leader.

The broker asks to stay fenced (`want_fence`) until its metadata has caught up with its own
registration. When this process dies the kernel closes the stream's connection and the
leader fences the broker at once; when the broker leaves a stream on purpose (another
controller leads, or the broker stops) it says goodbye first, so that is never taken for a
death.

Registration carries the cluster id of the data dir (or `--cluster-id`): a quorum of
another cluster refuses it with INCONSISTENT_CLUSTER_ID, which ends the broker. A new data
dir is stamped with the quorum's cluster id at the first registration.

Runs on the broker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from raftmq import node_meta, wire
from raftmq.broker.controller_link import ControllerLink
from raftmq.broker.metadata_cache import MetadataCache
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.lifecycle import run_guarded_async
from raftmq.metadata import Listener
from raftmq.node_meta import DataDirError, NodeMeta
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as ctl

HEARTBEAT_INTERVAL_MS = 500
# A heartbeat answer slower than this means a stuck controller: the stream is dropped and
# the next controller tried (the session timeout on the leader is several times longer).
HEARTBEAT_ANSWER_TIMEOUT_MS = 1_500
RECONNECT_BACKOFF_MS_MAX = 500
CONTROLLED_SHUTDOWN_TIMEOUT_MS = 10_000


class ControllerSession:
    def __init__(
        self,
        *,
        node_id: int,
        advertise: tuple[str, int],
        listeners: tuple[Listener, ...],
        rack: str,
        data_dir: Path,
        cluster_id: str,
        link: ControllerLink,
        metadata: MetadataCache,
        meta: NodeMeta,
        on_fatal: Callable[[str], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.node_id = node_id
        self.advertise = advertise
        self.listeners = listeners
        # Called after every heartbeat answer with whether the broker serves (registered,
        # caught up with the metadata, unfenced): the health service follows it.
        self.on_serving: Callable[[bool], Awaitable[None]] | None = None
        self.rack = rack
        self.data_dir = data_dir
        self._cluster_id = cluster_id
        self.link = link
        self.metadata = metadata
        self.meta = meta
        self.on_fatal = on_fatal
        # The whole node is stopping (e.g. SIGTERM while the quorum is unreachable at start).
        self.node_stopping = stopping
        self.incarnation_id = uuid.uuid4().hex
        self.broker_epoch = -1
        self.fenced = True
        self.streams_opened = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=node_id)

    @property
    def cluster_id(self) -> str:
        return self.meta.cluster_id or self._cluster_id

    def _done(self) -> bool:
        return self._stopping or self.node_stopping()

    async def register(self) -> None:
        """Register this incarnation; retries until it succeeds or the broker stops.
        Raises DataDirError when the quorum belongs to another cluster."""
        request_id = uuid.uuid4().hex
        while not self._done():
            try:
                response = await self.link.call(
                    "RegisterBroker",
                    ctl.RegisterBrokerRequest(
                        broker_id=self.node_id,
                        endpoint=cpb.Endpoint(host=self.advertise[0], port=self.advertise[1]),
                        rack=self.rack,
                        incarnation_id=self.incarnation_id,
                        request_id=request_id,
                        cluster_id=self.cluster_id,
                        listeners=[wire.listener_to_pb(x) for x in self.listeners],
                    ),
                    timeout_ms=10_000,
                )
                wire.raise_for(response.error)
            except RaftmqError as e:
                if e.code == ErrorCode.INCONSISTENT_CLUSTER_ID:
                    raise DataDirError(
                        f"broker {self.node_id} (data dir {self.data_dir}) cannot join: {e.message}"
                    ) from e
                self.log.info("broker.registration_failed", error=str(e))
                await asyncio.sleep(0.5)
                continue
            self.broker_epoch = response.broker_epoch
            if not self.meta.cluster_id and response.cluster_id:
                self.meta = node_meta.record_cluster_id(
                    self.data_dir, self.meta, response.cluster_id
                )
                self.log.info("broker.data_dir_stamped", cluster_id=response.cluster_id)
            self.log.info(
                "broker.registered", broker_epoch=self.broker_epoch, cluster_id=self.cluster_id
            )
            return

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            run_guarded_async(
                self._run,
                name="controller-session",
                stopping=self._done,
                on_fatal=self.on_fatal,
                log=self.log,
            ),
            name="controller-session",
        )

    async def stop(self) -> None:
        """End the session stream with a goodbye (not a death), then stop."""
        self._stopping = True
        call = self._call
        if call is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.write(self._request(goodbye=True)), 1.0)
                await asyncio.wait_for(call.done_writing(), 1.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _request(self, *, goodbye: bool = False) -> ctl.BrokerHeartbeatRequest:
        version = self.metadata.image.version
        return ctl.BrokerHeartbeatRequest(
            broker_id=self.node_id,
            broker_epoch=self.broker_epoch,
            metadata_version=version,
            want_fence=version < self.broker_epoch,
            goodbye=goodbye,
        )

    async def _run(self) -> None:
        backoff_ms = 20
        # Bound: one stream per round, until stop().
        while not self._done():
            endpoint = self.link.order()[0]
            moved = await self._stream(endpoint)
            if self._done():
                return
            if not moved:
                self.link.demote(endpoint)
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = min(RECONNECT_BACKOFF_MS_MAX, backoff_ms * 2)
            else:
                backoff_ms = 20

    async def _stream(self, endpoint: str) -> bool:
        """Heartbeat on one stream until it breaks or another controller leads. True if
        we left for a hinted leader (redial at once)."""
        call = self.link.stub(endpoint).BrokerSession()
        self._call = call
        self.streams_opened += 1
        try:
            while not self._done():
                await call.write(self._request())
                response = await asyncio.wait_for(call.read(), HEARTBEAT_ANSWER_TIMEOUT_MS / 1000)
                if response is wire.AIO_EOF:
                    return False
                if await self._on_answer(response, call):
                    return True
                await asyncio.sleep(HEARTBEAT_INTERVAL_MS / 1000)
            return False
        except TimeoutError:
            # A slow controller, not a dead broker: leave the stream with a goodbye so
            # that its end is not taken for this process's death.
            self.log.info("broker.heartbeat_timed_out", endpoint=endpoint)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.write(self._request(goodbye=True)), 0.2)
            return False
        except grpc.RpcError as e:
            self.log.info(
                "broker.heartbeat_failed", endpoint=endpoint, code=str(wire.rpc_status(e))
            )
            return False
        except asyncio.InvalidStateError:
            # grpc.aio: a write after the controller ended the call ("RPC already
            # finished"), e.g. when it stopped leading: a broken stream, not a crash.
            self.log.info("broker.heartbeat_failed", endpoint=endpoint, code="finished")
            return False
        finally:
            self._call = None
            call.cancel()

    async def _on_answer(self, response: ctl.BrokerHeartbeatResponse, call: Any) -> bool:
        """True when this stream must be left for the controller the answer names."""
        error = wire.error_from_pb(response.error)
        if error is None:
            if response.fenced != self.fenced:
                self.fenced = response.fenced
                self.log.info("broker.fence_changed", fenced=self.fenced)
            if self.on_serving is not None:
                caught_up = self.metadata.image.version >= self.broker_epoch >= 0
                await self.on_serving(caught_up and not self.fenced)
            return False
        if error.code == ErrorCode.NOT_CONTROLLER:
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await call.write(self._request(goodbye=True))
            hint = response.error.leader_endpoint
            if response.error.HasField("leader_endpoint"):
                self.link.prefer(f"{hint.host}:{hint.port}")
                return True
            self.link.demote(self.link.order()[0])
            await asyncio.sleep(0.1)  # no leader known yet: an election is under way
            return True
        if error.code == ErrorCode.STALE_BROKER_EPOCH:
            self.log.warning("broker.registration_lost", error=error.message)
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await call.write(self._request(goodbye=True))
            try:
                await self.register()
            except DataDirError as e:
                self.on_fatal(str(e))
            return True
        self.log.info("broker.heartbeat_refused", error=str(error))
        return False

    async def controlled_shutdown(self) -> None:
        try:
            response = await self.link.call(
                "ControlledShutdown",
                ctl.ControlledShutdownRequest(
                    broker_id=self.node_id,
                    broker_epoch=self.broker_epoch,
                    request_id=uuid.uuid4().hex,
                ),
                timeout_ms=CONTROLLED_SHUTDOWN_TIMEOUT_MS,
            )
            wire.raise_for(response.error)
            self.log.info("broker.shutdown_controlled")
        except RaftmqError as e:
            self.log.warning("broker.controlled_shutdown_failed", error=str(e))
