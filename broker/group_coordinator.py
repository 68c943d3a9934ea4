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
  (acks=all). A read takes its view of the state when it arrives and is answered once
  the high watermark passed every record that view reflects, so nothing uncommitted is
  ever shown (the state is replayed at append, above the high watermark).
- A timer ticks every shard: session and rebalance timeouts, re-targeting after topic
  changes, offset retention.
- Kafka's classic JoinGroup and SyncGroup wait for other members: such a request is a
  future parked under (partition, group, member, kind), completed when the shard emits
  its answer — on another member's request, on the tick that ends a round, or with
  NOT_COORDINATOR when the shard is dropped. At most PENDING_RESPONSES_MAX are parked.

Runs on the broker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog
from raftmq.broker.classic_group import (
    INITIAL_REBALANCE_DELAY_MS_DEFAULT,
    JOIN,
    SYNC,
    BeatRequest,
    Delivery,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    LeaveResponse,
    SyncRequest,
    SyncResponse,
)
from raftmq.broker.controller_link import ControllerLink
from raftmq.broker.group_records import (
    GroupRecord,
    GroupRecordError,
    OffsetValue,
    decode,
    encode,
)
from raftmq.broker.group_shard import (
    ClassicCommitRequest,
    ClassicResult,
    CommitRequest,
    CommitResponse,
    GroupDescription,
    GroupListing,
    GroupShard,
    HeartbeatRequest,
    HeartbeatResponse,
    KafkaGroupDescription,
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
# Classic JoinGroup / SyncGroup requests waiting for other members, over all groups.
PENDING_RESPONSES_MAX = 10_000
# Writes of the tick's classic records whose answers wait for replication.
TICK_WRITES_MAX = 64

_R = TypeVar("_R")

_log = structlog.get_logger("raftmq.broker")

Replica = PartitionReplica[PartitionLog]


@dataclass(frozen=True, slots=True)
class GroupConfig:
    offsets_topic_partitions: int = 12
    offsets_topic_replication_factor: int = 3
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000
    # Kafka's group.initial.rebalance.delay.ms (3 s there): how long the first round of
    # an empty classic group waits for more members.
    initial_rebalance_delay_ms: int = INITIAL_REBALANCE_DELAY_MS_DEFAULT


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
        # (offsets partition, group, member, JOIN|SYNC) -> the parked classic request.
        # Invariant: len(_pending) <= PENDING_RESPONSES_MAX.
        self._pending: dict[tuple[int, str, str, str], asyncio.Future[Any]] = {}
        self._tick_writes: set[asyncio.Task[None]] = set()
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
        for index in list(self._shards):
            self._answer_pending(index, "the coordinator is stopping")
        tasks = [
            t
            for t in (self._task, *(s.task for s in self._shards.values()), *self._tick_writes)
            if t
        ]
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
            shard = _Shard(replica, replica.leader_epoch, self._new_state())
            self._shards[replica.index] = shard
            shard.task = asyncio.get_running_loop().create_task(
                self._load(replica.index, shard), name=f"group-load-{replica.index}"
            )

    def _new_state(self) -> GroupShard:
        return GroupShard(
            offsets_retention_ms=self.config.offsets_retention_ms,
            initial_rebalance_delay_ms=self.config.initial_rebalance_delay_ms,
        )

    def _unload(self, index: int, shard: _Shard) -> None:
        del self._shards[index]
        self._answer_pending(index, f"{OFFSETS_TOPIC}-{index} moved to another broker")
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
            shard.state = self._new_state()

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
            offsets = await self._read_committed(
                shard, lambda: shard.state.fetch_offsets(group_id, partitions)
            )
        except RaftmqError as e:
            return e, {}
        return None, offsets

    async def describe(self, group_id: str) -> tuple[RaftmqError | None, GroupDescription | None]:
        try:
            shard = self._shard_for(group_id)
            description = await self._read_committed(shard, lambda: shard.state.describe(group_id))
        except RaftmqError as e:
            return e, None
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
                members = len(group.members)
                if group.classic is not None:
                    members += len(group.classic.members)
                found.append((group.group_id, members, offsets))
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

    # ------------------------------------------------------------ classic groups

    async def classic_join(self, request: JoinRequest) -> JoinResponse:
        """Kafka's JoinGroup; may wait for the round to complete."""
        try:
            shard = self._shard_for(request.group_id)
        except RaftmqError as e:
            return JoinResponse(error=e, member_id=request.member_id)
        if len(self._pending) >= PENDING_RESPONSES_MAX:
            return JoinResponse(error=self._overloaded(), member_id=request.member_id)
        if not request.member_id:
            request = replace(
                request, new_member_id=f"{request.client_id or 'member'}-{uuid.uuid4()}"
            )
        result = shard.state.classic_join(request, now_ms=_now_ms(), wall_ms=_wall_ms())
        return await self._run_classic(
            shard,
            request.group_id,
            result,
            JOIN,
            lambda e: JoinResponse(error=e, member_id=request.member_id),
        )

    async def classic_sync(self, request: SyncRequest) -> SyncResponse:
        """Kafka's SyncGroup; a follower waits for the leader's assignment."""
        try:
            shard = self._shard_for(request.group_id)
        except RaftmqError as e:
            return SyncResponse(error=e)
        if len(self._pending) >= PENDING_RESPONSES_MAX:
            return SyncResponse(error=self._overloaded())
        result = shard.state.classic_sync(request, now_ms=_now_ms())
        return await self._run_classic(
            shard, request.group_id, result, SYNC, lambda e: SyncResponse(error=e)
        )

    async def classic_heartbeat(self, request: BeatRequest) -> RaftmqError | None:
        try:
            shard = self._shard_for(request.group_id)
        except RaftmqError as e:
            return e
        return shard.state.classic_heartbeat(request, now_ms=_now_ms())

    async def classic_leave(self, request: LeaveRequest) -> LeaveResponse:
        try:
            shard = self._shard_for(request.group_id)
        except RaftmqError as e:
            return LeaveResponse(error=e)
        result = shard.state.classic_leave(request, now_ms=_now_ms(), wall_ms=_wall_ms())
        return await self._run_classic(
            shard, request.group_id, result, "", lambda e: LeaveResponse(error=e)
        )

    async def classic_commit(self, request: ClassicCommitRequest) -> CommitResponse:
        try:
            shard = self._shard_for(request.group_id)
        except RaftmqError as e:
            return CommitResponse(error=e)
        records, response = shard.state.classic_commit(
            request, now_ms=_now_ms(), wall_ms=_wall_ms(), catalog=self._catalog()
        )
        error = await self._write_and_wait(shard, records)
        return response if error is None else CommitResponse(error=error)

    async def kafka_describe(
        self, group_id: str
    ) -> tuple[RaftmqError | None, KafkaGroupDescription | None]:
        """(error, description); (None, None) for a group that does not exist."""
        try:
            shard = self._shard_for(group_id)
            description = await self._read_committed(
                shard, lambda: shard.state.kafka_describe(group_id)
            )
        except RaftmqError as e:
            return e, None
        return None, description

    def group_listings(self) -> tuple[RaftmqError | None, list[GroupListing]]:
        """Every group this broker coordinates; an error while a partition loads (Kafka's
        ListGroups answers COORDINATOR_LOAD_IN_PROGRESS then)."""
        found: list[GroupListing] = []
        loading = False
        for shard in self._shards.values():
            if shard.loading:
                loading = True
            else:
                found.extend(shard.state.group_listings())
        error = (
            RaftmqError(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, "a group partition is loading")
            if loading
            else None
        )
        return error, sorted(found, key=lambda g: g.group_id)

    def _overloaded(self) -> RaftmqError:
        return RaftmqError(
            ErrorCode.COORDINATOR_NOT_AVAILABLE,
            f"broker {self.broker_id} has {PENDING_RESPONSES_MAX} group requests waiting",
        )

    async def _run_classic(
        self,
        shard: _Shard,
        group_id: str,
        result: ClassicResult[_R],
        kind: str,
        failed: Callable[[RaftmqError], _R],
    ) -> _R:
        """Write the result's records, then answer: the others' parked requests, and this
        one — at once, or when the shard delivers its answer."""
        index = shard.replica.index
        future: asyncio.Future[Any] | None = None
        key = None
        if result.response is None:
            assert result.wait_member_id and kind
            key = (index, group_id, result.wait_member_id, kind)
            future = self._park(key)
        error = await self._write_and_wait(shard, result.records)
        self._deliver(index, result.deliveries, error)
        if future is None:
            assert result.response is not None
            return result.response if error is None else failed(error)
        try:
            response: _R = await future
            return response
        finally:
            if key is not None and self._pending.get(key) is future:
                del self._pending[key]

    def _park(self, key: tuple[int, str, str, str]) -> asyncio.Future[Any]:
        old = self._pending.pop(key, None)
        if old is not None and not old.done():
            # The member sent the same request again (its connection dropped, or a retry):
            # the older one is superseded.
            old.set_result(
                _error_response(
                    key[3],
                    key[2],
                    RaftmqError(ErrorCode.REBALANCE_IN_PROGRESS, "superseded by a newer request"),
                )
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        assert len(self._pending) <= PENDING_RESPONSES_MAX + 1
        return future

    def _deliver(self, index: int, deliveries: list[Delivery], error: RaftmqError | None) -> None:
        for d in deliveries:
            future = self._pending.pop((index, d.group_id, d.member_id, d.kind), None)
            if future is None or future.done():
                continue  # its connection is gone
            future.set_result(
                d.response if error is None else _error_response(d.kind, d.member_id, error)
            )

    def _answer_pending(self, index: int, why: str) -> None:
        error = RaftmqError(ErrorCode.NOT_COORDINATOR, why)
        for key in [k for k in self._pending if k[0] == index]:
            future = self._pending.pop(key)
            if not future.done():
                future.set_result(_error_response(key[3], key[2], error))

    async def _write_then_deliver(
        self, shard: _Shard, records: list[GroupRecord], deliveries: list[Delivery]
    ) -> None:
        error = await self._write_and_wait(shard, records)
        self._deliver(shard.replica.index, deliveries, error)

    # ------------------------------------------------------------ writes

    def _catalog(self) -> TopicCatalog:
        return _ImageCatalog(self.metadata())

    async def _read_committed(self, shard: _Shard, view: Callable[[], _R]) -> _R:
        """A read: `view` of the shard's state as it is now, returned once the high
        watermark passed every record that state reflects; raises the RaftmqError to
        answer if it did not (the coordinator moved, replication stalled).

        The view is taken before the wait, not after it: the state is replayed at append
        (above the HW), so writes appended while the read waits would show in a view taken
        later, uncommitted — and a coordinator that loses its partition before they
        replicate takes them with it (its successor loads the followers' log). Kafka keeps
        pending commits out of OffsetFetch likewise. Seen in chaos seed 6104: an OffsetFetch
        showed two in-flight commits, the broker died, and the offsets went back by one."""
        upto = shard.written_upto
        value = view()
        error = await self._wait_committed(shard, upto)
        if error is not None:
            raise error
        return value

    async def _write_and_wait(
        self, shard: _Shard, records: list[GroupRecord]
    ) -> RaftmqError | None:
        """Append `records` to the shard's partition and replay them, then wait until the
        high watermark passed them and every earlier write.

        Answers planned on the state (heartbeats, commits, classic rounds) are computed
        before this and sent after it, so what they reflect is committed when they leave;
        a read must take its view before it waits (`_read_committed`)."""
        if records:
            try:
                self._append(shard, records)
            except RaftmqError as e:
                return self._coordinator_error(e)
        return await self._wait_committed(shard, shard.written_upto)

    async def _wait_committed(self, shard: _Shard, end_offset: int) -> RaftmqError | None:
        """Wait until the shard's high watermark reaches `end_offset` at its leader epoch."""
        replica = shard.replica
        if replica.log.high_watermark >= end_offset:
            return None
        error = await self.handler.wait_replicated(
            replica,
            end_offset,
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
                classic = shard.state.classic_tick(now_ms=_now_ms(), wall_ms=_wall_ms())
                if classic.records or classic.deliveries:
                    self._spawn_tick_write(shard, classic.records, classic.deliveries)

    def _spawn_tick_write(
        self, shard: _Shard, records: list[GroupRecord], deliveries: list[Delivery]
    ) -> None:
        """The tick's classic records are written at once (the state already moved); the
        answers they complete wait for replication in a task of their own, so that the
        tick never waits."""
        if len(self._tick_writes) >= TICK_WRITES_MAX:
            # Replication is stuck that far behind: answer now rather than queue more.
            error = self._overloaded()
            try:
                self._append(shard, records)
            except RaftmqError as e:
                error = self._coordinator_error(e)
            self._deliver(shard.replica.index, deliveries, error)
            return
        task = asyncio.get_running_loop().create_task(
            self._write_then_deliver(shard, records, deliveries), name="group-tick-write"
        )
        self._tick_writes.add(task)
        task.add_done_callback(self._tick_writes.discard)


def _error_response(kind: str, member_id: str, error: RaftmqError) -> JoinResponse | SyncResponse:
    if kind == JOIN:
        return JoinResponse(error=error, member_id=member_id)
    return SyncResponse(error=error)


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def _wall_ms() -> int:
    return int(time.time() * 1000)
