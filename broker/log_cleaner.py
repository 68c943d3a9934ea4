"""Log compaction (`cleanup.policy=compact`): keep the latest record per key.

For every compacted partition replica of this broker (leader or follower: each replica
compacts its own copy, as in Kafka), a pass

1. maps each key to the offset of its latest record below the high watermark;
2. rewrites every batch before the last one below the high watermark, keeping only the
   records that are the latest of their key — and a key's tombstone (null value) only
   until `delete.retention.ms` after it was written; keyless records are kept. A batch
   keeps its base offset and its last offset delta, so offsets stay offsets: compaction
   leaves holes, which readers skip; a batch left with no record is deleted.

Never touched: the tail at and above the high watermark, and the last batch below it (so a
log never ends in a hole). The producers' state lives beside the log and does not change.

Work is bounded: a pass yields to the event loop every `batches_per_slice` batches, and
rewrites are written in slices of as many batches, so produce and fetch never wait long; a
partition is cleaned again only once enough was appended since its last pass
(`dirty_bytes_min`), or every `interval_ms` when something was. Runs on the broker's event
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from raftmq.broker.partition_log import PartitionLog
from raftmq.broker.partition_replica import PartitionReplica
from raftmq.errors import RaftmqError
from raftmq.lifecycle import run_guarded_async
from raftmq.record_batch import RecordSlice, read_header, rebuild_batch, record_slices

CLEANER_INTERVAL_MS = 10_000
DIRTY_BYTES_MIN = 1 << 20
BATCHES_PER_SLICE = 64
# Keys mapped in one pass; a partition with more is cleaned up to where the map filled.
KEYS_MAX = 1_000_000

_log = structlog.get_logger("raftmq.broker")

Replica = PartitionReplica[PartitionLog]


@dataclass(slots=True)
class CleanResult:
    batches_rewritten: int = 0
    batches_deleted: int = 0
    records_removed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


@dataclass(slots=True)
class _Cleaned:
    high_watermark: int
    size_bytes: int
    at_ms: int


class LogCleaner:
    def __init__(
        self,
        replicas: Callable[[], list[Replica]],
        *,
        is_current: Callable[[Replica], bool],
        on_fatal: Callable[[str], None],
        interval_ms: int = CLEANER_INTERVAL_MS,
        dirty_bytes_min: int = DIRTY_BYTES_MIN,
        batches_per_slice: int = BATCHES_PER_SLICE,
    ) -> None:
        self.replicas = replicas
        # Whether a replica is still hosted here (a dropped one's log is gone).
        self.is_current = is_current
        self.on_fatal = on_fatal
        self.interval_ms = interval_ms
        self.dirty_bytes_min = dirty_bytes_min
        self.batches_per_slice = batches_per_slice
        self._cleaned: dict[tuple[bytes, int], _Cleaned] = {}
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            run_guarded_async(
                self._run,
                name="log-cleaner",
                stopping=lambda: self._stopping,
                on_fatal=self.on_fatal,
                log=_log,
            ),
            name="log-cleaner",
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval_ms / 1000)
            for replica in self.replicas():
                if replica.config.compacted and self._due(replica):
                    try:
                        await self.clean(replica)
                    except RaftmqError as e:
                        _log.error("log.compaction_failed", partition=replica.name, error=str(e))

    def _due(self, replica: Replica) -> bool:
        log = replica.log
        last = self._cleaned.get(replica.key)
        if last is None:
            return log.high_watermark > log.log_start_offset
        if log.high_watermark <= last.high_watermark:
            return False
        grown = log.size_bytes - last.size_bytes
        elapsed = time.monotonic() * 1000 - last.at_ms
        return grown >= self.dirty_bytes_min or elapsed >= self.interval_ms

    async def clean(self, replica: Replica, *, wall_ms: int | None = None) -> CleanResult:
        """One compaction pass over a replica's log (see the module docstring)."""
        log = replica.log
        wall_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        high_watermark = log.high_watermark
        result = CleanResult(bytes_before=log.size_bytes)
        latest: dict[bytes, int] = {}
        last_base = -1  # base offset of the last batch below the high watermark
        complete = True
        for scanned, (base_offset, batch) in enumerate(log.stored_batches(high_watermark), 1):
            if read_header(batch).next_offset > high_watermark:
                break
            last_base = base_offset
            for record in record_slices(batch)[1]:
                if record.key is not None:
                    latest[record.key] = record.offset
            if len(latest) > KEYS_MAX:
                complete = False
                break
            if scanned % self.batches_per_slice == 0:
                await asyncio.sleep(0)
                if not self.is_current(replica):
                    return result
        if not complete:
            _log.warning("log.compaction_partial", partition=replica.name, keys_max=KEYS_MAX)
        retention_ms = replica.config.delete_retention_ms
        changes: list[tuple[int, bytes, bytes | None]] = []
        # Up to the last batch scanned (not included): a partial map only drops records
        # superseded within it, which is safe.
        for base_offset, batch in log.stored_batches(last_base):
            header, records = record_slices(batch)
            kept = [r for r in records if _keep(r, latest, wall_ms, retention_ms)]
            if len(kept) == len(records):
                continue
            result.records_removed += len(records) - len(kept)
            if kept:
                changes.append((base_offset, batch, rebuild_batch(header, kept)))
                result.batches_rewritten += 1
            else:
                changes.append((base_offset, batch, None))
                result.batches_deleted += 1
            if len(changes) >= self.batches_per_slice:
                if not await self._write(replica, changes):
                    return result
                changes = []
        if changes:
            await self._write(replica, changes)
        result.bytes_after = log.size_bytes
        self._cleaned[replica.key] = _Cleaned(
            log.high_watermark, log.size_bytes, int(time.monotonic() * 1000)
        )
        self.passes += 1
        if result.records_removed:
            _log.info(
                "log.compacted",
                topic=replica.topic,
                partition=replica.index,
                records_removed=result.records_removed,
                batches_rewritten=result.batches_rewritten,
                batches_deleted=result.batches_deleted,
                bytes_before=result.bytes_before,
                bytes_after=result.bytes_after,
            )
        return result

    async def _write(
        self, replica: Replica, changes: list[tuple[int, bytes, bytes | None]]
    ) -> bool:
        """Apply one slice, then yield. False when the replica is gone."""
        if not self.is_current(replica):
            return False
        replica.log.replace_batches(changes)
        await asyncio.sleep(0)
        return self.is_current(replica)


def _keep(record: RecordSlice, latest: dict[bytes, int], wall_ms: int, retention_ms: int) -> bool:
    if record.key is None:
        return True  # keyless records cannot be compacted
    if latest.get(record.key, record.offset) != record.offset:
        return False  # a later record of the key exists
    return not (record.tombstone and wall_ms - record.timestamp_ms > retention_ms)
