"""The broker's request handler: produce, fetch and list offsets in domain terms, for every
front door (the gRPC servicer today, the Kafka-protocol listener later).

It knows nothing of gRPC or protobuf: requests are dataclasses, answers are dataclasses
or coroutines. A request that must wait — acks=all until the high watermark passes its
batches, a fetch until `min_bytes` are there — becomes a delayed operation watched on the
partitions it waits for (`raftmq.broker.purgatory`) and completed by the replica
manager's hooks (append, high watermark advance, role change); no thread is held.

Single-threaded: everything runs on the broker's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from raftmq.broker.metadata_cache import MetadataImage
from raftmq.broker.partition_replica import PartitionReplica
from raftmq.broker.purgatory import DelayedOperation, Purgatory
from raftmq.errors import ErrorCode, RaftmqError

PRODUCE_PARTITIONS_MAX = 10_000
FETCH_PARTITIONS_MAX = 10_000
FETCH_WAIT_MS_MAX = 30_000
ACKS_TIMEOUT_MS_MAX = 120_000
ACKS_TIMEOUT_MS_DEFAULT = 30_000
FETCH_BYTES_MAX_DEFAULT = 16 << 20
PARTITION_FETCH_BYTES_DEFAULT = 1 << 20
EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1

PartitionKey = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class PartitionError:
    """An error for one partition, with the current leader when we know it (so that a
    client can go there without asking for metadata first: each front door gives the
    leader's address on the listener the client came in on)."""

    code: ErrorCode
    message: str = ""
    leader_id: int = -1


@dataclass(frozen=True, slots=True)
class ProducePartition:
    topic: str
    partition: int
    records: bytes  # exactly one Kafka RecordBatch v2
    current_leader_epoch: int = -1


@dataclass(slots=True)
class ProducePartitionResult:
    topic: str
    partition: int
    error: PartitionError | None = None
    base_offset: int = -1
    log_start_offset: int = -1
    leader_epoch: int = -1


@dataclass(frozen=True, slots=True)
class FetchPartition:
    topic: str
    partition: int
    fetch_offset: int
    current_leader_epoch: int = -1
    partition_max_bytes: int = 0  # 0: PARTITION_FETCH_BYTES_DEFAULT
    topic_id: bytes = b""  # optional; when set, the partition is looked up by id


@dataclass(slots=True)
class FetchPartitionResult:
    topic: str
    partition: int
    topic_id: bytes = b""
    error: PartitionError | None = None
    high_watermark: int = -1
    log_start_offset: int = -1
    log_end_offset: int = -1
    records: bytes = b""


@dataclass(frozen=True, slots=True)
class ListOffsetsPartition:
    topic: str
    partition: int
    timestamp: int  # EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, or ms: first offset at/after it


@dataclass(slots=True)
class ListOffsetsPartitionResult:
    topic: str
    partition: int
    error: PartitionError | None = None
    offset: int = -1
    timestamp: int = -1
    leader_epoch: int = -1


class ReplicaDirectory(Protocol):
    """What the handler needs of the replica manager (`ReplicaManager` implements it)."""

    def replica(self, topic: str, index: int) -> PartitionReplica[Any]:
        """Raises UNKNOWN_TOPIC_OR_PARTITION when not hosted here."""
        ...

    def replica_by_id(self, topic_id: bytes, index: int) -> PartitionReplica[Any]: ...

    def on_appended(self, replica: PartitionReplica[Any], *, high_watermark_advanced: bool) -> None:
        """A leader append: wakes follower sessions and, with the HW, waiting requests."""
        ...


# ------------------------------------------------------------------ delayed operations


@dataclass(slots=True)
class _AckWait:
    replica: PartitionReplica[Any]
    result: ProducePartitionResult
    required_offset: int
    leader_epoch: int
    done: bool = False


class DelayedProduce(DelayedOperation):
    """acks=all: completes when every appended batch is below its partition's HW (on its
    min.insync.replicas), or failed (leadership moved, ISR shrank), or at the timeout."""

    def __init__(
        self,
        waits: list[_AckWait],
        *,
        timeout_ms: int,
        error_of: Callable[[RaftmqError, str, int], PartitionError],
    ) -> None:
        super().__init__(timeout_ms)
        self.waits = waits
        self.error_of = error_of
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def try_complete(self) -> bool:
        pending = False
        for wait in self.waits:
            if wait.done:
                continue
            try:
                reached = wait.replica.acks_reached(
                    wait.required_offset, leader_epoch=wait.leader_epoch
                )
            except RaftmqError as e:
                wait.result.error = self.error_of(e, wait.result.topic, wait.result.partition)
                wait.done = True
                continue
            if reached:
                wait.done = True
            else:
                pending = True
        return not pending and self.force_complete()

    def on_expire(self) -> None:
        for wait in self.waits:
            if not wait.done:
                wait.done = True
                wait.result.error = PartitionError(
                    ErrorCode.REQUEST_TIMED_OUT,
                    f"acks=all not reached on {wait.replica.name} within {self.delay_ms} ms; "
                    "the write may still be committed",
                )

    def on_complete(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


@dataclass(slots=True)
class _FetchRead:
    """One partition of a waiting consumer fetch. Invariant: `read_upto` only grows, and
    `chunks` hold exactly the batches of [the batch holding the fetch offset, read_upto)."""

    request: FetchPartition
    result: FetchPartitionResult
    replica: PartitionReplica[Any] | None
    bytes_max: int
    read_upto: int
    chunks: list[bytes] = field(default_factory=list)
    size_bytes: int = 0
    # The first check ran (it validates the fetch offset against the log).
    checked: bool = False
    # Its budget is used up: nothing more is read for it.
    full: bool = False


class DelayedFetch(DelayedOperation):
    """A consumer fetch: completes once `min_bytes` are readable below the high
    watermarks, at once on an error, or at `max_wait_ms` with what there is. Each check
    reads only what became visible since the last one, and never past the budgets
    (`max_bytes` for the fetch, `partition_max_bytes` each), except that the fetch's
    first batch is returned whole however large (Kafka's rule)."""

    def __init__(
        self,
        reads: list[_FetchRead],
        *,
        max_wait_ms: int,
        min_bytes: int,
        max_bytes: int,
        error_of: Callable[[RaftmqError, str, int], PartitionError],
    ) -> None:
        super().__init__(max_wait_ms)
        self.reads = reads
        self.min_bytes = max(1, min_bytes)
        self.max_bytes = max_bytes
        self.error_of = error_of
        # Invariant: the sum of every read's size_bytes.
        self.total_bytes = 0
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def try_complete(self) -> bool:
        must_answer = False
        for read in self.reads:
            if read.result.error is not None or (not read.full and self._check(read)):
                must_answer = True
        if must_answer or self.total_bytes >= self.min_bytes:
            return self.force_complete()
        return False

    def _check(self, read: _FetchRead) -> bool:
        """Read what became visible for one partition; True if it failed."""
        replica = read.replica
        assert replica is not None
        epoch = read.request.current_leader_epoch
        try:
            if read.checked and replica.log.high_watermark <= read.read_upto:
                replica.check_leader(epoch)  # still ours? else answer now
                return False
            read.checked = True
            budget = min(read.bytes_max - read.size_bytes, self.max_bytes - self.total_bytes)
            if budget <= 0:
                if self.total_bytes > 0:
                    read.full = True
                    return False
                budget = 1  # the fetch's first batch, whole
            got = replica.read_for_consumer(
                read.read_upto, max_bytes=budget, current_leader_epoch=epoch
            )
        except RaftmqError as e:
            read.result.error = self.error_of(e, read.request.topic, read.request.partition)
            return True
        if got.records:
            read.chunks.append(got.records)
            read.size_bytes += len(got.records)
            self.total_bytes += len(got.records)
            read.read_upto = got.end_offset
        return False

    def on_complete(self) -> None:
        for read in self.reads:
            if read.chunks:
                read.result.records = (
                    read.chunks[0] if len(read.chunks) == 1 else b"".join(read.chunks)
                )
            if read.replica is not None:
                # The watermarks as of the answer (consumers compute their lag from them).
                log = read.replica.log
                read.result.high_watermark = log.high_watermark
                read.result.log_start_offset = log.log_start_offset
                read.result.log_end_offset = log.log_end_offset
        if not self.future.done():
            self.future.set_result(None)


# ------------------------------------------------------------------ the handler


class RequestHandler:
    def __init__(
        self,
        *,
        broker_id: int,
        replicas: ReplicaDirectory,
        metadata: Callable[[], MetadataImage],
        produce_purgatory: Purgatory,
        fetch_purgatory: Purgatory,
        wait_durable: Callable[[], Awaitable[None]],
    ) -> None:
        self.broker_id = broker_id
        self.replicas = replicas
        self.metadata = metadata
        self.produce_purgatory = produce_purgatory
        self.fetch_purgatory = fetch_purgatory
        self.wait_durable = wait_durable

    # ------------------------------------------------------------ errors

    def error_of(self, e: RaftmqError, topic: str, partition: int) -> PartitionError:
        """A partition error with the leader hint of our metadata (NOT_LEADER, and a
        partition the cluster has but this broker does not host)."""
        image = self.metadata()
        known = image.topics.get(topic)
        code, message, leader = e.code, e.message, e.leader_id
        hosted_elsewhere = known is not None and 0 <= partition < len(known.partitions)
        if code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION and hosted_elsewhere:
            code = ErrorCode.NOT_LEADER_OR_FOLLOWER
            message = f"broker {self.broker_id} does not host {topic}-{partition}"
        if code != ErrorCode.NOT_LEADER_OR_FOLLOWER or not hosted_elsewhere:
            return PartitionError(code, message, leader)
        assert known is not None
        if leader < 0:
            leader = known.partitions[partition].leader
        if leader < 0:
            return PartitionError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no leader right now"
            )
        return PartitionError(code, message, leader)

    # ------------------------------------------------------------ produce

    async def produce(
        self, partitions: Sequence[ProducePartition], *, acks: int, timeout_ms: int
    ) -> list[ProducePartitionResult]:
        """Append each batch as leader, then answer per `acks` (0 and 1: once appended and,
        unless 0, durable per the flush policy; -1: once the HW passed every batch)."""
        results = [ProducePartitionResult(p.topic, p.partition) for p in partitions]
        refusal = self._refuse_produce(len(partitions), acks)
        if refusal is not None:
            for result in results:
                result.error = refusal
            return results
        timeout_ms = (
            min(max(timeout_ms, 1), ACKS_TIMEOUT_MS_MAX) if timeout_ms else ACKS_TIMEOUT_MS_DEFAULT
        )
        waits: list[_AckWait] = []
        for data, result in zip(partitions, results, strict=True):
            try:
                replica = self.replicas.replica(data.topic, data.partition)
                appended = replica.append_as_leader(
                    data.records, acks=acks, current_leader_epoch=data.current_leader_epoch
                )
            except RaftmqError as e:
                result.error = self.error_of(e, data.topic, data.partition)
                continue
            result.base_offset = appended.base_offset
            result.leader_epoch = appended.leader_epoch
            result.log_start_offset = replica.log.log_start_offset
            if not appended.duplicate:
                self.replicas.on_appended(
                    replica, high_watermark_advanced=appended.high_watermark_advanced
                )
            waits.append(_AckWait(replica, result, appended.next_offset, appended.leader_epoch))
        if acks != 0 and waits:
            # The leader's own copy is durable per the flush policy before anyone is told.
            await self.wait_durable()
        if acks == -1 and waits:
            await self._wait_acks(waits, timeout_ms)
        return results

    async def _wait_acks(self, waits: list[_AckWait], timeout_ms: int) -> None:
        operation = DelayedProduce(waits, timeout_ms=timeout_ms, error_of=self.error_of)
        keys = [w.replica.key for w in waits]
        if not self.produce_purgatory.try_complete_else_watch(operation, keys):
            await operation.future

    async def wait_replicated(
        self, replica: PartitionReplica[Any], end_offset: int, *, leader_epoch: int, timeout_ms: int
    ) -> PartitionError | None:
        """Wait until `replica`'s high watermark reaches `end_offset` as acks=all defines
        it (for the broker's own writes, e.g. the group coordinator's): None once there, or
        the error (leadership moved, ISR too small, timeout)."""
        result = ProducePartitionResult(replica.topic, replica.index)
        await self._wait_acks([_AckWait(replica, result, end_offset, leader_epoch)], timeout_ms)
        return result.error

    @staticmethod
    def _refuse_produce(count: int, acks: int) -> PartitionError | None:
        if count > PRODUCE_PARTITIONS_MAX:
            return PartitionError(
                ErrorCode.INVALID_REQUEST,
                f"{count} partitions in one request; at most {PRODUCE_PARTITIONS_MAX}",
            )
        if acks not in (-1, 0, 1):
            return PartitionError(
                ErrorCode.INVALID_REQUIRED_ACKS, f"acks must be -1 (all), 0 or 1, got {acks}"
            )
        return None

    # ------------------------------------------------------------ fetch

    async def fetch(
        self,
        partitions: Sequence[FetchPartition],
        *,
        max_wait_ms: int,
        min_bytes: int,
        max_bytes: int,
    ) -> list[FetchPartitionResult]:
        """A consumer fetch: records below each partition's high watermark, waiting up to
        `max_wait_ms` for `min_bytes`. The first batch is returned whole even above the
        budgets (a large batch never blocks a consumer)."""
        max_wait_ms = min(max(max_wait_ms, 0), FETCH_WAIT_MS_MAX)
        max_bytes = max_bytes if max_bytes > 0 else FETCH_BYTES_MAX_DEFAULT
        reads: list[_FetchRead] = []
        for data in partitions[:FETCH_PARTITIONS_MAX]:
            result = FetchPartitionResult(data.topic, data.partition, data.topic_id)
            replica: PartitionReplica[Any] | None = None
            try:
                replica = (
                    self.replicas.replica_by_id(data.topic_id, data.partition)
                    if data.topic_id
                    else self.replicas.replica(data.topic, data.partition)
                )
            except RaftmqError as e:
                result.error = self.error_of(e, data.topic, data.partition)
            partition_max = (
                data.partition_max_bytes
                if data.partition_max_bytes > 0
                else PARTITION_FETCH_BYTES_DEFAULT
            )
            reads.append(_FetchRead(data, result, replica, partition_max, data.fetch_offset))
        if len(partitions) > FETCH_PARTITIONS_MAX:
            for data in partitions[FETCH_PARTITIONS_MAX:]:
                error = PartitionError(
                    ErrorCode.INVALID_REQUEST,
                    f"more than {FETCH_PARTITIONS_MAX} partitions in one fetch",
                )
                result = FetchPartitionResult(data.topic, data.partition, data.topic_id, error)
                reads.append(_FetchRead(data, result, None, 0, data.fetch_offset))
        operation = DelayedFetch(
            reads,
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            error_of=self.error_of,
        )
        keys = [r.replica.key for r in reads if r.replica is not None]
        if not self.fetch_purgatory.try_complete_else_watch(operation, keys):
            await operation.future
        return [r.result for r in reads]

    # ------------------------------------------------------------ list offsets

    def list_offsets(
        self, partitions: Sequence[ListOffsetsPartition]
    ) -> list[ListOffsetsPartitionResult]:
        results = []
        for item in partitions:
            result = ListOffsetsPartitionResult(item.topic, item.partition)
            results.append(result)
            try:
                replica = self.replicas.replica(item.topic, item.partition)
                replica.check_leader(-1)
                log = replica.log
                result.leader_epoch = replica.leader_epoch
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
            except RaftmqError as e:
                result.error = self.error_of(e, item.topic, item.partition)
        return results
