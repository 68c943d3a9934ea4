"""The group coordinator: the shell around `GroupShard`, one per partition of
`__consumer_offsets` that this broker leads.

- A group belongs to partition `abs(java_hash(group_id)) % partitions` (Kafka's rule), and
  its coordinator is that partition's leader. `find_coordinator` answers from metadata;
  the first one creates the internal topic (compacted, RF 3 by default) through the
  controller.
- When this broker becomes the partition's leader it replays the partition from its log
  start to its log end (in bounded slices on the loop), answering
  COORDINATOR_LOAD_IN_PROGRESS meanwhile; when it stops leading, the shard is dropped and
  waiting requests answer NOT_COORDINATOR. The next leader replays the same records into
  the same state and continues where the old one stopped.
- A request is planned on the shard (pure), its records appended to the partition as
  leader and replayed, and the answer sent only once the high watermark passed them
  (acks=all). Reads wait likewise for the last write before them, so nothing uncommitted
  is ever shown.
- A timer ticks every shard: session and rebalance timeouts, re-targeting after topic
  changes, offset retention.

Runs on the broker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from raftmq.broker.controller_link import ControllerLink
from raftmq.broker.group_records import (
    GroupRecord,
    GroupRecordError,
    OffsetValue,
    decode,
    encode,
)
from raftmq.broker.group_shard import (
    CommitRequest,
    CommitResponse,
    GroupDescription,
    GroupShard,
    HeartbeatRequest,
    HeartbeatResponse,
    TopicCatalog,
)
from raftmq.broker.metadata_cache import MetadataImage
from raftmq.broker.partition_log import PartitionLog
from raftmq.broker.partition_replica import ROLE_LEADER, PartitionReplica
from raftmq.broker.request_handler import RequestHandler
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.lifecycle import run_guarded_async
from raftmq.message import Message
from raftmq.metadata import NO_LEADER
from raftmq.record_batch import decode_batch, encode_batch
from raftmq.v1 import controller_pb2 as ctl

OFFSETS_TOPIC = "__consumer_offsets"
TICK_INTERVAL_MS = 100
LOAD_BATCHES_PER_SLICE = 64
# A failed load is tried again after this long, doubling up to the max.
LOAD_RETRY_BACKOFF_S_MIN = 1.0
LOAD_RETRY_BACKOFF_S_MAX = 30.0
WRITE_TIMEOUT_MS = 10_000
CREATE_RETRY_MS = 1_000
# Large groups write large assignment records in one batch.
OFFSETS_TOPIC_MAX_MESSAGE_BYTES = 16 << 20

_log = structlog.get_logger("raftmq.broker")

Replica = PartitionReplica[PartitionLog]


@dataclass(frozen=True, slots=True)
class GroupConfig:
    offsets_topic_partitions: int = 12
    offsets_topic_replication_factor: int = 3
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000


def java_string_hash(text: str) -> int:
    """Java's String.hashCode (UTF-16 code units), as Kafka partitions groups by it."""
    data = text.encode("utf-16-be")
    h = 0
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def partition_for(group_id: str, partitions: int) -> int:
    return (java_string_hash(group_id) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class CoordinatorInfo:
    group_id: str
    error: RaftmqError | None = None
    node_id: int = NO_LEADER
    endpoint: tuple[str, int] | None = None
    partition: int = -1


@dataclass(slots=True)
class _Shard:
    replica: Replica
    leader_epoch: int
    state: GroupShard
    loading: bool = True
    # The end offset of the last write: reads wait for the HW to pass it.
    written_upto: int = 0
    task: asyncio.Task[None] | None = None


class _ImageCatalog:
    """The broker's metadata as a group shard sees topics."""

    def __init__(self, image: MetadataImage) -> None:
        self.image = image

    def partition_count(self, topic: str) -> int | None:
        record = self.image.topics.get(topic)
        return None if record is None else len(record.partitions)

    def topic_names(self) -> Iterable[str]:
        return [name for name in self.image.topics if not name.startswith("__")]


class GroupCoordinator:
    def __init__(
        self,
        *,
        broker_id: int,
        handler: RequestHandler,
        metadata: Callable[[], MetadataImage],
        controllers: ControllerLink,
        on_fatal: Callable[[str], None],
        config: GroupConfig = GroupConfig(),
    ) -> None:
        self.broker_id = broker_id
        self.handler = handler
        self.metadata = metadata
        self.controllers = controllers
        self.on_fatal = on_fatal
        self.config = config
        # Partition index -> the shard this broker runs for it (only while it leads it).
        self._shards: dict[int, _Shard] = {}
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._last_create_ms = -CREATE_RETRY_MS
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=broker_id)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            run_guarded_async(
                self._tick_loop,
                name="group-coordinator",
                stopping=lambda: self._stopping,
                on_fatal=self.on_fatal,
                log=self.log,
            ),
            name="group-coordinator",
        )

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._task, *(s.task for s in self._shards.values())) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._shards.clear()

    def on_replica_role(self, replica: Replica) -> None:
        """Replica manager hook: load a shard when we start leading a partition of the
        offsets topic, drop it when we stop."""
        if replica.topic != OFFSETS_TOPIC:
            return
        shard = self._shards.get(replica.index)
        leads = replica.role == ROLE_LEADER
        if shard is not None and (not leads or shard.leader_epoch != replica.leader_epoch):
            self._unload(replica.index, shard)
            shard = None
        if leads and shard is None and not self._stopping:
            shard = _Shard(
                replica,
                replica.leader_epoch,
                GroupShard(offsets_retention_ms=self.config.offsets_retention_ms),
            )
            self._shards[replica.index] = shard
            shard.task = asyncio.get_running_loop().create_task(
                self._load(replica.index, shard), name=f"group-load-{replica.index}"
            )

    def _unload(self, index: int, shard: _Shard) -> None:
        del self._shards[index]
        if shard.task is not None and not shard.task.done():
            shard.task.cancel()
        self.log.info("group_coordinator.unloaded", partition=index, groups=len(shard.state.groups))

    async def _load(self, index: int, shard: _Shard) -> None:
        """Load the shard; a load that fails (a bug: the partition's records do not build
        a valid state) is logged and tried again with backoff, never dropped silently —
        the partition answers COORDINATOR_LOAD_IN_PROGRESS meanwhile."""
        backoff_s = LOAD_RETRY_BACKOFF_S_MIN
        while self._shards.get(index) is shard:
            try:
                await self._load_once(index, shard)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception(
                    "group_coordinator.load_failed", partition=index, retry_in_s=backoff_s
                )
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, LOAD_RETRY_BACKOFF_S_MAX)
            shard.state = GroupShard(offsets_retention_ms=self.config.offsets_retention_ms)

    async def _load_once(self, index: int, shard: _Shard) -> None:
        started = time.monotonic()
        log = shard.replica.log
        end = log.log_end_offset
        records = 0
        for count, (_, batch) in enumerate(log.stored_batches(end), 1):
            for message in decode_batch(batch):
                if message.key is None:
                    continue
                try:
                    record = decode(message.key, message.value)
                except GroupRecordError as e:
                    # A record of a later version: this coordinator cannot serve the
                    # partition correctly, so it must not serve it at all.
                    self.on_fatal(f"{OFFSETS_TOPIC}-{index} at offset {message.offset}: {e}")
                    return
                shard.state.load(record)
                records += 1
            if count % LOAD_BATCHES_PER_SLICE == 0:
                await asyncio.sleep(0)
                if self._shards.get(index) is not shard:
                    return
        shard.written_upto = end
        shard.state.loaded(now_ms=_now_ms())
        shard.loading = False
        self.log.info(
            "group_coordinator.loaded",
            partition=index,
            leader_epoch=shard.leader_epoch,
            groups=len(shard.state.groups),
            records=records,
            load_ms=int((time.monotonic() - started) * 1000),
        )

    # ------------------------------------------------------------ routing

    def _partitions(self) -> int | None:
        topic = self.metadata().topics.get(OFFSETS_TOPIC)
        return None if topic is None else len(topic.partitions)

    def _shard_for(self, group_id: str) -> _Shard:
        """The loaded shard of `group_id`, or the error to answer."""
        partitions = self._partitions()
        if partitions is None:
            raise RaftmqError(
                ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{OFFSETS_TOPIC} does not exist yet"
            )
        shard = self._shards.get(partition_for(group_id, partitions))
        if shard is None or shard.replica.role != ROLE_LEADER:
            raise RaftmqError(
                ErrorCode.NOT_COORDINATOR,
                f"broker {self.broker_id} is not the coordinator of group {group_id!r}",
            )
        if shard.loading:
            raise RaftmqError(
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
                f"broker {self.broker_id} is loading group {group_id!r}'s partition",
            )
        return shard

    async def find_coordinator(
        self, group_ids: Iterable[str], *, listener: str | None = None
    ) -> list[CoordinatorInfo]:
        """Each group's coordinator, with its address on `listener` (None: inter-broker)."""
        image = self.metadata()
        topic = image.topics.get(OFFSETS_TOPIC)
        if topic is None:
            await self._create_offsets_topic(image)
            return [
                CoordinatorInfo(
                    g,
                    RaftmqError(
                        ErrorCode.COORDINATOR_NOT_AVAILABLE,
                        f"{OFFSETS_TOPIC} is being created; retry shortly",
                    ),
                )
                for g in group_ids
            ]
        answers = []
        for group_id in group_ids:
            index = partition_for(group_id, len(topic.partitions))
            leader = topic.partitions[index].leader
            broker = image.brokers.get(leader)
            endpoint = broker.endpoint_for(listener) if broker is not None else None
            if leader == NO_LEADER or endpoint is None:
                answers.append(
                    CoordinatorInfo(
                        group_id,
                        RaftmqError(
                            ErrorCode.COORDINATOR_NOT_AVAILABLE,
                            f"{OFFSETS_TOPIC}-{index} has no leader right now",
                        ),
                        partition=index,
                    )
                )
            else:
                answers.append(CoordinatorInfo(group_id, None, leader, endpoint, index))
        return answers

    async def _create_offsets_topic(self, image: MetadataImage) -> None:
        now = _now_ms()
        if now - self._last_create_ms < CREATE_RETRY_MS:
            return
        self._last_create_ms = now
        live = sum(1 for b in image.brokers.values() if not b.fenced)
        rf = max(1, min(self.config.offsets_topic_replication_factor, live))
        try:
            response = await self.controllers.call(
                "CreateTopic",
                ctl.CreateTopicRequest(
                    name=OFFSETS_TOPIC,
                    partitions=self.config.offsets_topic_partitions,
                    replication_factor=rf,
                    configs={
                        "cleanup.policy": "compact",
                        "min.insync.replicas": str(min(2, rf)),
                        "max.message.bytes": str(OFFSETS_TOPIC_MAX_MESSAGE_BYTES),
                    },
                    request_id=uuid.uuid4().hex,
                    internal=True,
                ),
                timeout_ms=5_000,
            )
        except RaftmqError as e:
            self.log.info("group_coordinator.offsets_topic_create_failed", error=str(e))
            return
        if response.error.code not in (ErrorCode.NONE, ErrorCode.TOPIC_ALREADY_EXISTS):
            self.log.info(
                "group_coordinator.offsets_topic_create_failed", error=response.error.message
            )
        else:
            self.log.info("group_coordinator.offsets_topic_created", replication_factor=rf)

    # ------------------------------------------------------------ requests

    async def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        try:
            shard = self._shard_for(request.group_id)
        except RaftmqError as e:
            return HeartbeatResponse(error=e, member_id=request.member_id)
        records, response = shard.state.heartbeat(
            request, now_ms=_now_ms(), wall_ms=_wall_ms(), catalog=self._catalog()
        )
        error = await self._write_and_wait(shard, records)
        if error is not None:
            return HeartbeatResponse(error=error, member_id=request.member_id)
        return response

    async def commit(self, request: CommitRequest) -> CommitResponse:
        try:
            shard = self._shard_for(request.group_id)
        except RaftmqError as e:
            return CommitResponse(error=e)
        records, response = shard.state.commit(request, wall_ms=_wall_ms(), catalog=self._catalog())
        error = await self._write_and_wait(shard, records)
        return response if error is None else CommitResponse(error=error)

    async def fetch_offsets(
        self, group_id: str, partitions: list[tuple[str, int]] | None
    ) -> tuple[RaftmqError | None, dict[tuple[str, int], OffsetValue | None]]:
        try:
            shard = self._shard_for(group_id)
        except RaftmqError as e:
            return e, {}
        error = await self._write_and_wait(shard, [])
        if error is not None:
            return error, {}
        return None, dict(shard.state.fetch_offsets(group_id, partitions))

    async def describe(self, group_id: str) -> tuple[RaftmqError | None, GroupDescription | None]:
        try:
            shard = self._shard_for(group_id)
        except RaftmqError as e:
            return e, None
        error = await self._write_and_wait(shard, [])
        if error is not None:
            return error, None
        description = shard.state.describe(group_id)
        if description is None:
            return RaftmqError(ErrorCode.GROUP_ID_NOT_FOUND, f"no group {group_id!r}"), None
        return None, description

    def metrics_inputs(self) -> list[tuple[str, int, dict[tuple[str, int], int]]]:
        """(group, members, committed offset per partition) of every loaded group."""
        found = []
        for shard in self._shards.values():
            if shard.loading:
                continue
            for group in shard.state.groups.values():
                offsets = {tp: v.offset for tp, v in group.offsets.items()}
                found.append((group.group_id, len(group.members), offsets))
        return found

    def list_groups(self) -> list[tuple[str, str]]:
        groups: list[tuple[str, str]] = []
        for shard in self._shards.values():
            if not shard.loading:
                groups.extend(shard.state.list_groups())
        return sorted(groups)

    async def delete(self, group_id: str) -> RaftmqError | None:
        try:
            shard = self._shard_for(group_id)
        except RaftmqError as e:
            return e
        records, error = shard.state.delete(group_id)
        if error is not None:
            return error
        return await self._write_and_wait(shard, records)

    # ------------------------------------------------------------ writes

    def _catalog(self) -> TopicCatalog:
        return _ImageCatalog(self.metadata())

    async def _write_and_wait(
        self, shard: _Shard, records: list[GroupRecord]
    ) -> RaftmqError | None:
        """Append `records` to the shard's partition and replay them, then wait until the
        high watermark passed them (or passed the last earlier write, with no records)."""
        if records:
            try:
                self._append(shard, records)
            except RaftmqError as e:
                return self._coordinator_error(e)
        replica = shard.replica
        if replica.log.high_watermark >= shard.written_upto:
            return None
        error = await self.handler.wait_replicated(
            replica,
            shard.written_upto,
            leader_epoch=shard.leader_epoch,
            timeout_ms=WRITE_TIMEOUT_MS,
        )
        if error is None:
            return None
        return self._coordinator_error(RaftmqError(error.code, error.message))

    def _append(self, shard: _Shard, records: list[GroupRecord]) -> None:
        replica = shard.replica
        messages = []
        for record in records:
            key, value = encode(record)
            messages.append(Message(value, key))
        batch = encode_batch(messages)
        appended = replica.append_as_leader(batch, acks=-1, current_leader_epoch=shard.leader_epoch)
        # In the log now: the state follows (the same replay a new coordinator will do).
        for record in records:
            shard.state.replay(record)
        shard.written_upto = appended.next_offset
        self.handler.replicas.on_appended(
            replica, high_watermark_advanced=appended.high_watermark_advanced
        )

    def _coordinator_error(self, e: RaftmqError) -> RaftmqError:
        if e.code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.FENCED_LEADER_EPOCH):
            return RaftmqError(ErrorCode.NOT_COORDINATOR, f"the coordinator moved: {e.message}")
        if e.code in (
            ErrorCode.NOT_ENOUGH_REPLICAS,
            ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            ErrorCode.REQUEST_TIMED_OUT,
            ErrorCode.KAFKA_STORAGE_ERROR,
        ):
            return RaftmqError(
                ErrorCode.COORDINATOR_NOT_AVAILABLE,
                f"the group's records could not be replicated: {e.message}",
            )
        return e

    # ------------------------------------------------------------ timers

    async def _tick_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(TICK_INTERVAL_MS / 1000)
            catalog = self._catalog()
            for shard in list(self._shards.values()):
                if shard.loading or shard.replica.role != ROLE_LEADER:
                    continue
                records = shard.state.tick(now_ms=_now_ms(), wall_ms=_wall_ms(), catalog=catalog)
                if records:
                    try:
                        self._append(shard, records)
                    except RaftmqError as e:
                        self.log.info("group_coordinator.tick_write_failed", error=str(e))


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def _wall_ms() -> int:
    return int(time.time() * 1000)
