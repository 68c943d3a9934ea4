"""The broker's view of cluster metadata: an immutable image replaced as a whole on every
update from the controllers' watch stream (snapshot, then deltas). Readers take
`cache.image` once and use it without locks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc
import structlog
from raftmq import wire
from raftmq.client.controller_client import EndpointPool
from raftmq.lifecycle import guarded_thread
from raftmq.metadata import BrokerRegistration, ControllerRecord, TopicRecord
from raftmq.v1 import controller_pb2 as pb

RECONNECT_BACKOFF_MS_MAX = 1_000
# A watch that delivers nothing (not even a keepalive) for this long is abandoned.
WATCH_IDLE_TIMEOUT_MS = 5_000


@dataclass(frozen=True, slots=True)
class MetadataImage:
    version: int = 0
    controller_epoch: int = 0
    brokers: dict[int, BrokerRegistration] = field(default_factory=dict)
    topics: dict[str, TopicRecord] = field(default_factory=dict)
    controllers: dict[int, ControllerRecord] = field(default_factory=dict)

    def topic_by_id(self, topic_id: bytes) -> TopicRecord | None:
        for topic in self.topics.values():
            if topic.topic_id == topic_id:
                return topic
        return None

    def endpoint(self, broker_id: int) -> str | None:
        broker = self.brokers.get(broker_id)
        return None if broker is None else f"{broker.host}:{broker.port}"

    def apply(self, update: pb.MetadataUpdate) -> MetadataImage:
        """The next image after one watch-stream message."""
        if update.snapshot:
            return MetadataImage(
                version=update.version,
                controller_epoch=update.controller_epoch,
                brokers={b.id: wire.broker_from_pb(b) for b in update.brokers},
                topics={t.name: wire.topic_from_pb(t) for t in update.topics},
                controllers={
                    c.id: ControllerRecord(c.id, c.endpoint.host, c.endpoint.port)
                    for c in update.controllers
                },
            )
        brokers = dict(self.brokers)
        brokers.update({b.id: wire.broker_from_pb(b) for b in update.brokers})
        topics = dict(self.topics)
        for name in update.deleted_topics:
            topics.pop(name, None)
        topics.update({t.name: wire.topic_from_pb(t) for t in update.topics})
        controllers = dict(self.controllers)
        controllers.update(
            {
                c.id: ControllerRecord(c.id, c.endpoint.host, c.endpoint.port)
                for c in update.controllers
            }
        )
        return replace(
            self,
            version=update.version,
            controller_epoch=update.controller_epoch,
            brokers=brokers,
            topics=topics,
            controllers=controllers,
        )


class MetadataCache:
    """Follows the controllers' watch stream on its own thread and calls `listener` with
    every new image (on that thread, in version order).

    A broken stream is retried on another controller. A listener that fails to apply an
    image ends the process (`on_fatal`): metadata frozen at an old version while heartbeats
    still report the broker caught up would make a node that looks healthy and is not."""

    def __init__(
        self,
        pool: EndpointPool,
        *,
        watcher_name: str,
        listener: Callable[[MetadataImage], None],
        on_fatal: Callable[[str], None],
    ) -> None:
        self.pool = pool
        self.watcher_name = watcher_name
        self.listener = listener
        self.on_fatal = on_fatal
        self.image = MetadataImage()
        self._updated = threading.Condition()
        self._stopping = threading.Event()
        self.log = structlog.get_logger("raftmq.broker").bind(watcher=watcher_name)
        self._thread = guarded_thread(
            self._run,
            name="metadata-watch",
            stopping=self._stopping,
            on_fatal=on_fatal,
            log=self.log,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=3)

    def wait_for_version(self, version: int, timeout_s: float) -> bool:
        with self._updated:
            return self._updated.wait_for(lambda: self.image.version >= version, timeout=timeout_s)

    def _run(self) -> None:
        backoff_ms = 50
        while not self._stopping.is_set():
            for endpoint in self.pool.order():
                if self._stopping.is_set():
                    return
                try:
                    self._follow(endpoint)
                    backoff_ms = 50
                except grpc.RpcError as e:
                    code = wire.rpc_status(e)
                    self.log.info("metadata.watch_broken", endpoint=endpoint, code=str(code))
                except ListenerError as e:
                    self.on_fatal(str(e))
                    return
            self._stopping.wait(backoff_ms / 1000)
            backoff_ms = min(RECONNECT_BACKOFF_MS_MAX, backoff_ms * 2)

    def _follow(self, endpoint: str) -> None:
        stub = self.pool.stub(endpoint)
        stream = stub.WatchMetadata(
            pb.WatchMetadataRequest(from_version=self.image.version, watcher=self.watcher_name),
            timeout=None,
        )
        # The server sends a keepalive every second; silence means a dead or partitioned
        # controller, so the stream is cancelled and another controller is tried.
        timer = _idle_timer(stream.cancel)
        try:
            for update in stream:
                timer.cancel()
                if self._stopping.is_set():
                    return
                # Keepalives repeat the current version; the server never sends an older one.
                if update.snapshot or update.version > self.image.version:
                    self._apply(update)
                timer = _idle_timer(stream.cancel)
        finally:
            timer.cancel()
            stream.cancel()

    def _apply(self, update: pb.MetadataUpdate) -> None:
        image = self.image.apply(update)
        try:
            self.listener(image)
        except Exception as e:
            self.log.exception("metadata.apply_failed", version=image.version)
            raise ListenerError(f"applying metadata version {image.version} failed: {e!r}") from e
        # Published only once applied: heartbeats report this version as caught up.
        with self._updated:
            self.image = image
            self._updated.notify_all()


class ListenerError(Exception):
    """The broker could not apply a metadata image."""


def _idle_timer(cancel: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(WATCH_IDLE_TIMEOUT_MS / 1000, cancel)
    timer.daemon = True
    timer.start()
    return timer
