"""The broker's view of cluster metadata: an immutable image, replaced on every update
from the controllers' watch stream (a snapshot, then deltas). A delta names only what
changed — brokers, whole topics created or deleted, single partitions — and applying it
costs time in proportion to its size (plus one copy of the touched topics' partition
tuples), not to the size of the cluster.

Readers take `cache.image` and use it as it is: it never changes under them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc
import structlog
from raftmq import wire
from raftmq.broker.controller_link import ControllerLink
from raftmq.lifecycle import run_guarded_async
from raftmq.metadata import BrokerRegistration, ControllerRecord, PartitionRecord, TopicRecord
from raftmq.v1 import controller_pb2 as pb

RECONNECT_BACKOFF_MS_MAX = 1_000
# A watch that delivers nothing (not even a keepalive) for this long is abandoned.
WATCH_IDLE_TIMEOUT_MS = 5_000


@dataclass(frozen=True, slots=True)
class MetadataDelta:
    """One watch-stream message in domain terms."""

    version: int
    controller_epoch: int
    snapshot: bool
    brokers: tuple[BrokerRegistration, ...] = ()
    # Whole topics: every topic of a snapshot; created (or re-created) ones of a delta.
    topics: tuple[TopicRecord, ...] = ()
    deleted_topics: tuple[str, ...] = ()
    # (topic, topic id, index, state): changed partitions of topics not in `topics`.
    partitions: tuple[tuple[str, bytes, int, PartitionRecord], ...] = ()
    controllers: tuple[ControllerRecord, ...] = ()

    @classmethod
    def from_pb(cls, update: pb.MetadataUpdate) -> MetadataDelta:
        return cls(
            version=update.version,
            controller_epoch=update.controller_epoch,
            snapshot=update.snapshot,
            brokers=tuple(wire.broker_from_pb(b) for b in update.brokers),
            topics=tuple(wire.topic_from_pb(t) for t in update.topics),
            deleted_topics=tuple(update.deleted_topics),
            partitions=tuple(
                (d.topic, bytes(d.topic_id), d.state.partition, wire.partition_from_pb(d.state))
                for d in update.partitions
            ),
            controllers=tuple(
                ControllerRecord(c.id, c.endpoint.host, c.endpoint.port) for c in update.controllers
            ),
        )

    @property
    def size(self) -> int:
        return (
            len(self.brokers)
            + len(self.topics)
            + len(self.deleted_topics)
            + len(self.partitions)
            + len(self.controllers)
        )


@dataclass(frozen=True, slots=True)
class MetadataImage:
    version: int = 0
    controller_epoch: int = 0
    brokers: dict[int, BrokerRegistration] = field(default_factory=dict)
    topics: dict[str, TopicRecord] = field(default_factory=dict)
    controllers: dict[int, ControllerRecord] = field(default_factory=dict)
    # Invariant: topic_names[t.topic_id] == t.name for every t in topics.values().
    topic_names: dict[bytes, str] = field(default_factory=dict)

    def topic_by_id(self, topic_id: bytes) -> TopicRecord | None:
        name = self.topic_names.get(topic_id)
        return None if name is None else self.topics.get(name)

    def endpoint(self, broker_id: int) -> str | None:
        broker = self.brokers.get(broker_id)
        return None if broker is None else f"{broker.host}:{broker.port}"

    def apply(self, delta: MetadataDelta) -> MetadataImage:
        """The next image after `delta`."""
        if delta.snapshot:
            topics = {t.name: t for t in delta.topics}
            return MetadataImage(
                version=delta.version,
                controller_epoch=delta.controller_epoch,
                brokers={b.broker_id: b for b in delta.brokers},
                topics=topics,
                controllers={c.controller_id: c for c in delta.controllers},
                topic_names={t.topic_id: t.name for t in topics.values()},
            )
        brokers = self.brokers
        if delta.brokers:
            brokers = dict(brokers)
            brokers.update({b.broker_id: b for b in delta.brokers})
        controllers = self.controllers
        if delta.controllers:
            controllers = dict(controllers)
            controllers.update({c.controller_id: c for c in delta.controllers})
        topics, topic_names = self.topics, self.topic_names
        if delta.topics or delta.deleted_topics or delta.partitions:
            topics, topic_names = dict(topics), dict(topic_names)
            for name in delta.deleted_topics:
                gone = topics.pop(name, None)
                if gone is not None:
                    topic_names.pop(gone.topic_id, None)
            for topic in delta.topics:
                old = topics.get(topic.name)
                if old is not None:
                    topic_names.pop(old.topic_id, None)
                topics[topic.name] = topic
                topic_names[topic.topic_id] = topic.name
            changed: dict[str, list[PartitionRecord]] = {}
            for name, topic_id, index, state in delta.partitions:
                known = topics.get(name)
                if known is None or known.topic_id != topic_id:
                    continue  # of a topic deleted meanwhile
                partitions = changed.get(name)
                if partitions is None:
                    partitions = changed[name] = list(known.partitions)
                partitions[index] = state
            for name, partitions in changed.items():
                topics[name] = replace(topics[name], partitions=tuple(partitions))
        return MetadataImage(
            version=delta.version,
            controller_epoch=delta.controller_epoch,
            brokers=brokers,
            topics=topics,
            controllers=controllers,
            topic_names=topic_names,
        )


MetadataListener = Callable[[MetadataImage, MetadataImage, MetadataDelta], None]


class MetadataCache:
    """Follows the controllers' watch stream (an asyncio task) and calls `listener` with
    (previous image, new image, delta) for every update, in version order, on the loop.

    A broken stream is retried on another controller. A listener that fails to apply an
    image ends the process (`on_fatal`): metadata frozen at an old version while heartbeats
    still report the broker caught up would make a node that looks healthy and is not."""

    def __init__(
        self,
        link: ControllerLink,
        *,
        watcher_name: str,
        listener: MetadataListener,
        on_fatal: Callable[[str], None],
    ) -> None:
        self.link = link
        self.watcher_name = watcher_name
        self.listener = listener
        self.on_fatal = on_fatal
        self.image = MetadataImage()
        self._updated = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.log = structlog.get_logger("raftmq.broker").bind(watcher=watcher_name)

    def _is_stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            run_guarded_async(
                self._run,
                name="metadata-watch",
                stopping=self._is_stopping,
                on_fatal=self.on_fatal,
                log=self.log,
            ),
            name="metadata-watch",
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for_version(self, version: int, timeout_s: float) -> bool:
        """True once the applied image has reached `version` (False at the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.image.version < version:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._updated.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._updated.wait(), remaining)
        return True

    async def _run(self) -> None:
        backoff_ms = 50
        while not self._stopping:
            for endpoint in self.link.order():
                if self._is_stopping():
                    return
                try:
                    await self._follow(endpoint)
                    backoff_ms = 50
                except grpc.RpcError as e:
                    self.log.info(
                        "metadata.watch_broken", endpoint=endpoint, code=str(wire.rpc_status(e))
                    )
                except TimeoutError:
                    self.log.info("metadata.watch_idle", endpoint=endpoint)
                except ListenerError as e:
                    self.on_fatal(str(e))
                    return
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(RECONNECT_BACKOFF_MS_MAX, backoff_ms * 2)

    async def _follow(self, endpoint: str) -> None:
        stream = self.link.stub(endpoint).WatchMetadata(
            pb.WatchMetadataRequest(from_version=self.image.version, watcher=self.watcher_name)
        )
        try:
            # Bound: one iteration per update until the stream ends. The server sends a
            # keepalive every second; silence means a dead or partitioned controller.
            while not self._stopping:
                update = await asyncio.wait_for(stream.read(), WATCH_IDLE_TIMEOUT_MS / 1000)
                if update is wire.AIO_EOF:
                    return
                # Keepalives repeat the current version; the server never sends an older one.
                if update.snapshot or update.version > self.image.version:
                    self.apply(MetadataDelta.from_pb(update))
        finally:
            stream.cancel()

    def apply(self, delta: MetadataDelta) -> None:
        """Apply one update (from the watch stream; tests feed their own). Raises
        ListenerError when the listener fails; the image is then not published."""
        previous = self.image
        image = previous.apply(delta)
        try:
            self.listener(previous, image, delta)
        except Exception as e:
            self.log.exception("metadata.apply_failed", version=image.version)
            raise ListenerError(f"applying metadata version {image.version} failed: {e!r}") from e
        # Published only once applied: heartbeats report this version as caught up.
        self.image = image
        self._updated.set()


class ListenerError(Exception):
    """The broker could not apply a metadata image."""
