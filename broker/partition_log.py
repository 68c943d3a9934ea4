"""The log of one partition replica, stored in the broker's `LogStore`.

A log is a contiguous run of stamped record batches [log_start_offset, log_end_offset),
stored as opaque blobs keyed by base offset, plus the high watermark and the leader-epoch
cache (epoch -> first offset written in that epoch) used to truncate a divergent tail after
a leader change (Kafka KIP-101 / KIP-279). Records are never decoded here, except the one
batch `offset_for_timestamp` lands in.

On-disk format version (`_FORMAT_VERSION`, stored per partition): 1 held raftmq's
columnar look-alike records under a v2 header; 2 holds Kafka's RecordBatch v2 exactly. A
version 1 log is refused when it is opened (never misread as Kafka records).

Every change is staged in one RocksDB WriteBatch (data, epoch cache, meta) and applied to
the in-memory fields only after the write succeeded, so a failed write (raised as
KAFKA_STORAGE_ERROR) leaves both the store and the object unchanged.

High watermark persistence: the HW is a lower bound that is recomputed from followers
after a restart, so it need not be durable on every change. It is written (1) in every
WriteBatch this log makes anyway (appends, truncations, retention: one extra small key),
and (2) by `checkpoint_high_watermark()`, which the broker calls periodically (Kafka:
every 5 s) and `close()` calls; that covers partitions whose HW moves while nothing is
appended. `maybe_advance_high_watermark` itself never writes: it runs on every follower
fetch and must stay a field update.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog
from raftmq.broker.log_store import (
    data_key,
    data_key_offset,
    data_range,
    epoch_key,
    epoch_key_epoch,
    epoch_range,
    meta_key,
    meta_range,
    partition_prefix,
    producer_key,
    producer_key_id,
    producer_range,
)
from raftmq.broker.producer_state import (
    NO_PRODUCER_ID,
    AppendInfo,
    ProducerEntry,
    ProducerStates,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.record_batch import (
    HEADER_SIZE,
    MAGIC,
    BatchHeader,
    decode_batch,
    iter_batches,
    read_header,
    stamp_batch,
)

if TYPE_CHECKING:
    from rocksdict import WriteBatch

__all__ = ["AppendResult", "PartitionLog", "PartitionStorage", "UnexpectedAppendOffsetError"]

_log = structlog.get_logger(__name__)

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_META_LOG_START_OFFSET = b"log_start_offset"
_META_HIGH_WATERMARK = b"high_watermark"
_META_SIZE_BYTES = b"size_bytes"
_META_FORMAT_VERSION = b"format_version"
_FORMAT_VERSION = 2
# The columnar record format of raftmq before Kafka's real v2 records (see the docstring).
_FORMAT_VERSION_COLUMNAR = 1

UNDEFINED_EPOCH = -1
UNDEFINED_EPOCH_OFFSET = -1

# Retention does bounded work per call so produce/fetch on the partition (same lock) never
# wait long: at most this many batches and this many bytes read per call.
RETENTION_BATCHES_MAX = 1000
RETENTION_SCAN_BYTES_MAX = 64 * 1024 * 1024
# A read looks up at most this many batches by key before it takes an iterator: enough
# for what a follower or consumer that keeps up finds new at the end of the log.
POINT_READS_MAX = 8

EpochEntry = tuple[int, int]  # (leader_epoch, start_offset)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where a leader append landed: [base_offset, next_offset). `duplicate`: a retry of an
    idempotent producer's batch already in the log, not written again."""

    base_offset: int
    next_offset: int
    duplicate: bool


def _joined(chunks: list[bytes]) -> bytes:
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _append_info(header: BatchHeader) -> AppendInfo:
    return AppendInfo(
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        header.record_count,
        header.base_offset,
        header.last_offset,
        header.max_timestamp,
    )


class KeyIterator(Protocol):
    """A raw iterator over keys below an upper bound (`raftmq.broker.log_store.StoreIterator`)."""

    def valid(self) -> bool: ...
    def seek(self, key: bytes) -> None: ...
    def seek_for_prev(self, key: bytes) -> None: ...
    def seek_to_last(self) -> None: ...
    def next(self) -> None: ...
    def key(self) -> bytes: ...
    def value(self) -> bytes: ...


class PartitionStorage(Protocol):
    """What a PartitionLog needs from its store; `LogStore` implements it.

    Keys follow the layout documented in `raftmq.broker.log_store`.
    """

    def new_write_batch(self) -> WriteBatch: ...

    def write(self, batch: WriteBatch) -> None:
        """Apply `batch` atomically; raise RaftmqError KAFKA_STORAGE_ERROR on failure."""
        ...

    def get(self, key: bytes) -> bytes | None:
        """The value stored at `key` (None: none); raise RaftmqError KAFKA_STORAGE_ERROR
        on failure."""
        ...

    def iterator(self, *, upper_bound: bytes) -> KeyIterator:
        """An iterator over raw keys < upper_bound."""
        ...

    def release_partition(self, topic_id: bytes, partition: int) -> None:
        """The partition log was closed or deleted: forget it."""
        ...


class UnexpectedAppendOffsetError(RaftmqError):
    """A follower append whose first batch does not start at the log end offset.

    The replica fetcher must truncate (by leader epoch) or re-fetch from log_end_offset;
    nothing was stored.
    """

    def __init__(self, *, expected_offset: int, actual_offset: int) -> None:
        super().__init__(
            ErrorCode.CORRUPT_MESSAGE,
            f"follower append at offset {actual_offset}, log end offset is {expected_offset}",
        )
        self.expected_offset = expected_offset
        self.actual_offset = actual_offset


# --- the leader-epoch cache, as pure functions over a sorted list --------------------------
# Same rules as Kafka's LeaderEpochFileCache; entries have strictly increasing epochs and
# strictly increasing start offsets.


def _epochs_assign(entries: list[EpochEntry], epoch: int, start_offset: int) -> list[EpochEntry]:
    """Kafka's assign(): drop trailing entries not below (epoch, start_offset), append it."""
    if entries:
        last_epoch, last_start = entries[-1]
        if epoch == last_epoch and start_offset >= last_start:
            return entries
    kept = list(entries)
    # Bound: len(entries) pops.
    while kept and (kept[-1][0] >= epoch or kept[-1][1] >= start_offset):
        kept.pop()
    kept.append((epoch, start_offset))
    return kept


def _epochs_truncate_from_end(entries: list[EpochEntry], end_offset: int) -> list[EpochEntry]:
    """Drop the entries that start at or after end_offset (the new log end)."""
    return [e for e in entries if e[1] < end_offset]


def _epochs_truncate_from_start(entries: list[EpochEntry], start_offset: int) -> list[EpochEntry]:
    """Kafka's truncateFromStart(): entries starting at or before the new log start collapse
    into the last of them, moved to start_offset."""
    removed = [e for e in entries if e[1] <= start_offset]
    if not removed:
        return entries
    return [(removed[-1][0], start_offset), *(e for e in entries if e[1] > start_offset)]


def _epochs_end_offset_for(
    entries: list[EpochEntry], requested_epoch: int, log_end_offset: int
) -> tuple[int, int]:
    """Kafka's LeaderEpochFileCache.endOffsetFor (3.x)."""
    if requested_epoch == UNDEFINED_EPOCH or not entries:
        return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
    if entries[-1][0] == requested_epoch:
        # The current epoch of a leader is still being written: its end is the LEO.
        return requested_epoch, log_end_offset
    higher = bisect.bisect_right(entries, requested_epoch, key=lambda e: e[0])
    if higher == len(entries):
        # Requested epoch is above every known epoch.
        return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
    if higher == 0:
        # Below the first entry: this log has no data of that epoch or earlier (or it was
        # removed by retention); everything before the first entry's start is "its" end.
        return requested_epoch, entries[0][1]
    return entries[higher - 1][0], entries[higher][1]


def _epochs_valid(entries: list[EpochEntry], log_end_offset: int) -> bool:
    return all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(entries)) and all(
        e[0] >= 0 and 0 <= e[1] <= log_end_offset for e in entries
    )


class PartitionLog:
    """The log of one partition replica. Created by `LogStore.open_partition`.

    Not thread-safe: the broker holds a per-partition lock around every call. Calls cost
    one RocksDB write at most (appends: plus one copy of the batch for stamping), except
    where a docstring says otherwise. Durability is the store's flush policy: after an
    append, call `store.wait_durable()` outside the partition lock before acknowledging.
    """

    def __init__(self, store: PartitionStorage, topic_id: bytes, partition: int) -> None:
        self.store = store
        self.topic_id = topic_id
        self.partition = partition
        self._prefix = partition_prefix(topic_id, partition)
        self._log = _log.bind(topic_id=topic_id.hex(), partition=partition)
        self._closed = False

        # Invariant: 0 <= log_start_offset <= high_watermark; when batches are stored, the
        # first one's base offset == log_start_offset.
        self._log_start_offset = 0
        # Invariant: log_start_offset <= high_watermark <= log_end_offset; moves backwards
        # only in truncate_to / truncate_fully_and_start_at.
        self._high_watermark = 0
        # Invariant: == next_offset of the last stored batch, or log_start_offset when none.
        self._log_end_offset = 0
        # Invariant: == sum of the sizes of the stored batches (also in meta, same writes).
        self._size_bytes = 0
        # Invariant: strictly increasing epochs, strictly increasing start offsets (so
        # non-decreasing too), every start_offset <= log_end_offset.
        self._epochs: list[EpochEntry] = []
        # The high watermark value last written to the store.
        self._checkpointed_high_watermark = 0
        # Idempotent producers (persisted under "P" keys in the same writes as the batches).
        self._producers = ProducerStates()
        self._recover()

    # --- state ---------------------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._log_end_offset

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

    @property
    def size_bytes(self) -> int:
        """Sum of the stored batch sizes (headers included; RocksDB overhead excluded)."""
        return self._size_bytes

    @property
    def epoch_entries(self) -> tuple[EpochEntry, ...]:
        """The leader-epoch cache as (epoch, start_offset) pairs, oldest first."""
        return tuple(self._epochs)

    def _check_invariants(self) -> None:
        assert 0 <= self._log_start_offset <= self._high_watermark <= self._log_end_offset, (
            self._log_start_offset,
            self._high_watermark,
            self._log_end_offset,
        )
        assert self._size_bytes >= 0
        assert (self._size_bytes == 0) == (self._log_start_offset == self._log_end_offset)
        assert _epochs_valid(self._epochs, self._log_end_offset), self._epochs

    def _check_open(self) -> None:
        assert not self._closed, "partition log used after close() or delete()"

    # --- recovery --------------------------------------------------------------------------

    def _recover(self) -> None:
        """Load the state from the store, creating an empty log when there is none."""
        meta = self._read_meta()
        data_begin, data_end = data_range(self._prefix)
        it = self.store.iterator(upper_bound=data_end)
        it.seek(data_begin)
        first_key: bytes | None = it.key() if it.valid() else None

        if not meta:
            if first_key is not None:
                raise self._storage_error("batches stored without partition metadata")
            wb = self.store.new_write_batch()
            wb.put(meta_key(self._prefix, _META_FORMAT_VERSION), _U32.pack(_FORMAT_VERSION))
            self._stage_meta(wb, log_start_offset=0, size_bytes=0)
            wb.put(meta_key(self._prefix, _META_HIGH_WATERMARK), _U64.pack(0))
            self.store.write(wb)
            self._check_invariants()
            self._log.debug("log.created")
            return

        try:
            version = _U32.unpack(meta[_META_FORMAT_VERSION])[0]
            log_start_offset = _U64.unpack(meta[_META_LOG_START_OFFSET])[0]
            size_bytes = _U64.unpack(meta[_META_SIZE_BYTES])[0]
            checkpointed_hw = _U64.unpack(meta[_META_HIGH_WATERMARK])[0]
        except (KeyError, struct.error) as e:
            raise self._storage_error(f"bad partition metadata: {e!r}") from e
        if version == _FORMAT_VERSION_COLUMNAR:
            raise self._storage_error(
                f"log format version {version} was written by an older raftmq with the "
                "columnar record format, which this raftmq cannot read (it stores Kafka "
                f"RecordBatch v2 records, format {_FORMAT_VERSION}); move this data dir "
                "away, or read it with the raftmq that wrote it"
            )
        if version != _FORMAT_VERSION:
            raise self._storage_error(f"unsupported log format version {version}")

        if first_key is None:
            log_end_offset = log_start_offset
            if size_bytes != 0:
                raise self._storage_error(f"no batches stored but size_bytes is {size_bytes}")
        else:
            if size_bytes <= 0:
                raise self._storage_error("batches stored but size_bytes is 0")
            if data_key_offset(first_key) != log_start_offset:
                raise self._storage_error(
                    f"first batch at {data_key_offset(first_key)}, "
                    f"log start offset is {log_start_offset}"
                )
            # Only the last batch is read, for its header (the LEO is its next offset).
            it.seek_to_last()
            last_key: bytes = it.key()
            last = read_header(it.value())
            assert data_key_offset(last_key) == last.base_offset
            log_end_offset = last.next_offset

        producers = self._read_producers()
        epochs = self._read_epochs()
        # Defensive, as Kafka on load: an epoch entry past the log end cannot be used.
        clamped = [e for e in epochs if e[1] <= log_end_offset]
        if not _epochs_valid(clamped, log_end_offset):
            raise self._storage_error(f"leader-epoch cache is not monotonic: {epochs}")

        self._log_start_offset = log_start_offset
        self._log_end_offset = log_end_offset
        self._size_bytes = size_bytes
        self._high_watermark = min(max(checkpointed_hw, log_start_offset), log_end_offset)
        self._checkpointed_high_watermark = checkpointed_hw
        self._epochs = epochs
        self._producers = producers
        if clamped != epochs:
            self._log.warning("log.epoch_cache_clamped", before=epochs, after=clamped)
            wb = self.store.new_write_batch()
            self._stage_epochs(wb, clamped)
            self.store.write(wb)
            self._epochs = clamped
        self._check_invariants()
        self._log.debug(
            "log.recovered",
            log_start_offset=self._log_start_offset,
            log_end_offset=self._log_end_offset,
            high_watermark=self._high_watermark,
            size_bytes=self._size_bytes,
            epochs=len(self._epochs),
        )

    def _read_meta(self) -> dict[bytes, bytes]:
        begin, end = meta_range(self._prefix)
        it = self.store.iterator(upper_bound=end)
        it.seek(begin)
        meta: dict[bytes, bytes] = {}
        # Bound: the handful of meta names this module writes.
        while it.valid():
            key: bytes = it.key()
            meta[key[len(begin) :]] = it.value()
            it.next()
        return meta

    def _read_producers(self) -> ProducerStates:
        begin, end = producer_range(self._prefix)
        it = self.store.iterator(upper_bound=end)
        it.seek(begin)
        entries: list[ProducerEntry] = []
        # Bound: one entry per idempotent producer of this partition (expiry prunes them).
        while it.valid():
            producer_id = producer_key_id(it.key())
            try:
                entries.append(ProducerEntry.decode(producer_id, it.value()))
            except ValueError as e:
                raise self._storage_error(f"producer {producer_id}'s state: {e}") from e
            it.next()
        return ProducerStates(entries)

    def _read_epochs(self) -> list[EpochEntry]:
        begin, end = epoch_range(self._prefix)
        it = self.store.iterator(upper_bound=end)
        it.seek(begin)
        epochs: list[EpochEntry] = []
        # Bound: one entry per leader change still in the log (retention prunes the rest).
        while it.valid():
            epochs.append((epoch_key_epoch(it.key()), _U64.unpack(it.value())[0]))
            it.next()
        return epochs

    def _storage_error(self, message: str) -> RaftmqError:
        return RaftmqError(
            ErrorCode.KAFKA_STORAGE_ERROR,
            f"partition {self.topic_id.hex()}/{self.partition}: {message}",
        )

    # --- staging helpers (one WriteBatch per logical change) ------------------------------

    def _stage_meta(
        self,
        wb: WriteBatch,
        *,
        log_start_offset: int | None = None,
        size_bytes: int | None = None,
        high_watermark: int | None = None,
    ) -> None:
        """Stage meta updates; the HW checkpoint rides along whenever it is stale."""
        if log_start_offset is not None:
            wb.put(meta_key(self._prefix, _META_LOG_START_OFFSET), _U64.pack(log_start_offset))
        if size_bytes is not None:
            wb.put(meta_key(self._prefix, _META_SIZE_BYTES), _U64.pack(size_bytes))
        hw = self._high_watermark if high_watermark is None else high_watermark
        if hw != self._checkpointed_high_watermark:
            wb.put(meta_key(self._prefix, _META_HIGH_WATERMARK), _U64.pack(hw))

    def _stage_epochs(self, wb: WriteBatch, new: list[EpochEntry]) -> None:
        """Stage the key changes turning the stored epoch cache into `new`."""
        if new is self._epochs:
            return
        old_by_epoch = dict(self._epochs)
        new_by_epoch = dict(new)
        for epoch in old_by_epoch.keys() - new_by_epoch.keys():
            wb.delete(epoch_key(self._prefix, epoch))
        for epoch, start_offset in new_by_epoch.items():
            if old_by_epoch.get(epoch) != start_offset:
                wb.put(epoch_key(self._prefix, epoch), _U64.pack(start_offset))

    def _stage_producers(
        self, wb: WriteBatch, changed: dict[int, ProducerEntry], removed: Iterable[int] = ()
    ) -> None:
        for producer_id, entry in changed.items():
            wb.put(producer_key(self._prefix, producer_id), entry.encode())
        for producer_id in removed:
            wb.delete(producer_key(self._prefix, producer_id))

    def _write(self, wb: WriteBatch, *, high_watermark: int | None = None) -> None:
        """Write `wb`; afterwards the stored HW checkpoint is the one staged (if any)."""
        self.store.write(wb)
        self._checkpointed_high_watermark = (
            self._high_watermark if high_watermark is None else high_watermark
        )

    # --- appends -------------------------------------------------------------------------

    def append_as_leader(self, batch: bytes, *, leader_epoch: int) -> AppendResult:
        """Stamp a validated producer batch at the log end and store it (leader only).

        `batch` must have passed `validate_batch`. The batch gets base_offset = log end
        offset and partition_leader_epoch = leader_epoch; a leader_epoch above the cache's
        latest is assigned starting at the old log end. An idempotent producer's batch is
        checked against its state first: a retry of one of its last 5 batches is not
        written again and the result carries the original offsets (`duplicate`); a gap or
        an old epoch raises OUT_OF_ORDER_SEQUENCE_NUMBER / INVALID_PRODUCER_EPOCH and
        nothing is stored. Cost: one copy of the batch, one write.
        """
        self._check_open()
        assert len(batch) >= HEADER_SIZE and batch[16] == MAGIC, "batch was not validated"
        assert leader_epoch >= 0
        assert leader_epoch >= self.latest_epoch(), "a leader never writes an older epoch"
        unstamped = read_header(batch)
        original = self._producers.check_append(
            unstamped.producer_id,
            unstamped.producer_epoch,
            unstamped.base_sequence,
            unstamped.record_count,
        )
        if original is not None:
            return AppendResult(original.base_offset, original.last_offset + 1, duplicate=True)
        base_offset = self._log_end_offset
        stamped = stamp_batch(batch, base_offset=base_offset, partition_leader_epoch=leader_epoch)
        header = read_header(stamped)
        assert header.size_bytes == len(stamped)
        epochs = _epochs_assign(self._epochs, leader_epoch, base_offset)
        size_bytes = self._size_bytes + len(stamped)
        producers = self._producers.updated([_append_info(header)])

        wb = self.store.new_write_batch()
        wb.put(data_key(self._prefix, base_offset), stamped)
        self._stage_epochs(wb, epochs)
        self._stage_producers(wb, producers)
        self._stage_meta(wb, size_bytes=size_bytes)
        self._write(wb)

        self._epochs = epochs
        self._size_bytes = size_bytes
        self._log_end_offset = header.next_offset
        self._producers.commit(producers)
        self._check_invariants()
        return AppendResult(base_offset, header.next_offset, duplicate=False)

    def append_as_follower(self, records: bytes, *, allow_gaps: bool = False) -> int:
        """Store whole stamped batches copied from the leader; return the new log end offset.

        `records` is a concatenation of batches (a fetch response's records). The first must
        start exactly at log_end_offset and each next one where the previous ended (or, with
        `allow_gaps` — a compacted topic — anywhere after it), else
        UnexpectedAppendOffsetError; framing/CRC problems raise CORRUPT_MESSAGE. In both
        cases nothing is stored. The caller truncates (by leader epoch) before appending.
        Each batch's partition_leader_epoch updates the epoch cache. Cost: one CRC pass and
        one copy per batch, one write for all of them.
        """
        self._check_open()
        if not records:
            return self._log_end_offset
        next_offset = self._log_end_offset
        epochs = self._epochs
        added_bytes = 0
        appended: list[AppendInfo] = []
        wb = self.store.new_write_batch()
        # Bound: len(records) // 61 batches (iter_batches stops at the end of the buffer).
        for header, batch in iter_batches(records):
            # A compacted leader's log has holes: its next batch may start after our end.
            gap_allowed = allow_gaps and header.base_offset > next_offset
            if header.base_offset != next_offset and not gap_allowed:
                raise UnexpectedAppendOffsetError(
                    expected_offset=next_offset, actual_offset=header.base_offset
                )
            if header.partition_leader_epoch >= 0:
                epochs = self._assign_checked(
                    epochs, header.partition_leader_epoch, header.base_offset
                )
            wb.put(data_key(self._prefix, header.base_offset), batch)
            added_bytes += len(batch)
            next_offset = header.next_offset
            if header.producer_id != NO_PRODUCER_ID:
                appended.append(_append_info(header))

        size_bytes = self._size_bytes + added_bytes
        # Followers record producers exactly as the leader did, so a new leader knows them.
        producers = self._producers.updated(appended)
        self._stage_epochs(wb, epochs)
        self._stage_producers(wb, producers)
        self._stage_meta(wb, size_bytes=size_bytes)
        self._write(wb)

        self._epochs = epochs
        self._size_bytes = size_bytes
        self._log_end_offset = next_offset
        self._producers.commit(producers)
        self._check_invariants()
        return next_offset

    # --- reads ---------------------------------------------------------------------------

    def read(self, fetch_offset: int, *, max_bytes: int, upper_offset: int) -> bytes:
        """Concatenated stored batches from the one containing fetch_offset
        (`read_with_end` without the end offset)."""
        return self.read_with_end(fetch_offset, max_bytes=max_bytes, upper_offset=upper_offset)[0]

    def read_with_end(
        self, fetch_offset: int, *, max_bytes: int, upper_offset: int
    ) -> tuple[bytes, int]:
        """Concatenated stored batches from the one containing fetch_offset, and the offset
        after the last batch returned (fetch_offset when none).

        Only batches with base_offset < upper_offset are returned (the high watermark for
        consumers, the log end offset for followers). Batches are added while the total
        stays <= max_bytes, but the first qualifying batch is always returned whole, however
        large (Kafka semantics: a big batch never blocks a consumer). The first batch may
        start before fetch_offset; the client skips those records.

        Returns (b"", fetch_offset) when fetch_offset >= upper_offset. Raises
        OFFSET_OUT_OF_RANGE when fetch_offset is outside [log_start_offset, log_end_offset].

        Cost: a follower or consumer that reads on asks at a batch boundary near the end
        of the log, so the first `POINT_READS_MAX` batches are looked up by key (~2 µs
        each). Past them, or when `fetch_offset` is not where a batch starts (inside a
        batch, or in a hole a compaction left), one seek (~100 µs once the partition has
        SST files: it grows with them) and then one value copy per batch (+1 that did not
        fit).
        """
        self._check_open()
        assert max_bytes >= 0
        assert upper_offset <= self._log_end_offset, "upper offset beyond the log end"
        if not self._log_start_offset <= fetch_offset <= self._log_end_offset:
            raise RaftmqError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"fetch offset {fetch_offset} is outside the log range "
                f"[{self._log_start_offset}, {self._log_end_offset}]",
            )
        if fetch_offset >= upper_offset:
            return b"", fetch_offset
        # Invariant of both loops below: `chunks` are whole consecutive batches, the first
        # one holding fetch_offset (or the first after it, past a hole), `end_offset` is
        # the offset after the last of them and `total_bytes` their size.
        chunks: list[bytes] = []
        total_bytes = 0
        end_offset = fetch_offset
        # Bound: POINT_READS_MAX lookups.
        for _ in range(POINT_READS_MAX):
            if end_offset >= upper_offset or (chunks and total_bytes >= max_bytes):
                return _joined(chunks), end_offset
            value = self.store.get(data_key(self._prefix, end_offset))
            if value is None:
                break  # no batch starts here: the iterator finds the one that holds it
            if chunks and total_bytes + len(value) > max_bytes:
                return _joined(chunks), end_offset
            chunks.append(value)
            total_bytes += len(value)
            next_offset = read_header(value).next_offset
            assert next_offset > end_offset
            end_offset = next_offset
        it = self.store.iterator(upper_bound=data_key(self._prefix, upper_offset))
        if chunks:
            # More to read past the looked-up batches: on from the next one stored.
            it.seek(data_key(self._prefix, end_offset))
        else:
            begin, _ = data_range(self._prefix)
            it.seek_for_prev(data_key(self._prefix, fetch_offset))
            first = it.value() if it.valid() and it.key().startswith(begin) else None
            if first is None or read_header(first).next_offset <= fetch_offset:
                # fetch_offset is in a hole a compaction left: the next batch after it. (An
                # uncompacted log is contiguous, and some batch holds every offset.)
                it.seek(data_key(self._prefix, fetch_offset))
                if not it.valid():
                    return b"", fetch_offset
                first = it.value()
            assert first is not None
            end_offset = read_header(first).next_offset
            assert end_offset > fetch_offset
            chunks.append(first)
            total_bytes = len(first)
            it.next()
        # Bound: every batch adds >= 61 bytes, so at most max_bytes // 61 more iterations.
        while total_bytes < max_bytes and it.valid():
            value = it.value()
            if total_bytes + len(value) > max_bytes:
                break
            chunks.append(value)
            total_bytes += len(value)
            end_offset = read_header(value).next_offset
            it.next()
        return _joined(chunks), end_offset

    def replace_batches(self, changes: list[tuple[int, bytes, bytes | None]]) -> int:
        """Compaction: replace stored batches (base offset, the bytes read, the new bytes or
        None to delete it) in one write, below the high watermark only. A batch whose stored
        bytes are no longer the ones read (retention removed it meanwhile) is left alone.
        The log's offsets do not move: a deleted batch leaves a hole. Returns how many
        were replaced."""
        self._check_open()
        wb = self.store.new_write_batch()
        size_bytes = self._size_bytes
        done = 0
        for base_offset, expected, new in changes:
            assert new is None or read_header(new).next_offset == read_header(expected).next_offset
            key = data_key(self._prefix, base_offset)
            if read_header(expected).next_offset > self._high_watermark:
                continue  # never the tail above the high watermark
            it = self.store.iterator(upper_bound=data_key(self._prefix, base_offset + 1))
            it.seek(key)
            if not it.valid() or it.key() != key or it.value() != expected:
                continue
            if new is None:
                wb.delete(key)
                size_bytes -= len(expected)
            else:
                wb.put(key, new)
                size_bytes += len(new) - len(expected)
            done += 1
        if not done:
            return 0
        # The first batches gone: the log starts at the first one left (offsets below it
        # held only superseded records), so that a log always starts with a batch.
        new_start = self._log_start_offset
        if any(new is None and base == new_start for base, _, new in changes):
            deleted = {base for base, _, new in changes if new is None}
            it = self.store.iterator(upper_bound=data_range(self._prefix)[1])
            it.seek(data_key(self._prefix, new_start))
            # Bound: one step per deleted batch at the start of the log.
            while it.valid() and data_key_offset(it.key()) in deleted:
                it.next()
            assert it.valid(), "compaction never removes the last batch of a log"
            new_start = data_key_offset(it.key())
        epochs = _epochs_truncate_from_start(self._epochs, new_start)
        self._stage_epochs(wb, epochs)
        self._stage_meta(wb, log_start_offset=new_start, size_bytes=size_bytes)
        self._write(wb)
        self._size_bytes = size_bytes
        self._log_start_offset = new_start
        self._epochs = epochs
        self._check_invariants()
        return done

    def stored_batches(self, upper_offset: int) -> Iterator[tuple[int, bytes]]:
        """(base_offset, stored bytes) of every batch whose base offset is below
        `upper_offset`, in offset order, exactly as stored: for comparing replicas byte for
        byte and for tools. Not for the fetch path (`read` bounds its bytes). The caller
        must not write to this log while iterating."""
        self._check_open()
        begin, _ = data_range(self._prefix)
        it = self.store.iterator(upper_bound=data_key(self._prefix, max(upper_offset, 0)))
        it.seek(begin)
        # Bound: one step per stored batch below upper_offset.
        while it.valid():
            yield data_key_offset(it.key()), it.value()
            it.next()

    def offset_for_timestamp(
        self, ts_ms: int, *, upper_offset: int | None = None
    ) -> tuple[int, int] | None:
        """The first (offset, timestamp_ms) in log order whose timestamp >= ts_ms, or None.

        Only offsets below upper_offset count (default: the high watermark, what consumers
        may see). Batches are skipped by their max_timestamp; only the matching batch is
        decoded (and decompressed). A batch whose records cannot be decoded (the broker
        stores records unread, so a client may have sent garbage behind a valid header)
        answers at batch granularity: its base offset and max_timestamp, which skips no
        record at or after ts_ms. Cost: O(batches before the match) value reads (there is
        no time index).
        """
        self._check_open()
        upper = self._high_watermark if upper_offset is None else upper_offset
        assert upper <= self._log_end_offset
        if upper <= self._log_start_offset:
            return None
        it = self.store.iterator(upper_bound=data_key(self._prefix, upper))
        it.seek(data_key(self._prefix, self._log_start_offset))
        # Bound: the number of stored batches below upper.
        while it.valid():
            value: bytes = it.value()
            header = read_header(value)
            if header.max_timestamp >= ts_ms:
                try:
                    messages = decode_batch(value)
                except RaftmqError as e:
                    self._log.warning(
                        "log.batch_undecodable", base_offset=header.base_offset, error=e.message
                    )
                    return header.base_offset, header.max_timestamp
                for message in messages:
                    if message.offset >= upper:
                        return None
                    if message.timestamp_ms >= ts_ms:
                        return message.offset, message.timestamp_ms
            it.next()
        return None

    # --- high watermark ------------------------------------------------------------------

    def maybe_advance_high_watermark(self, high_watermark: int) -> bool:
        """Leader: raise the HW (min LEO over the ISR, computed by the caller); True if moved.

        Never moves it backwards. Writes nothing (see the module docstring).
        """
        self._check_open()
        assert high_watermark <= self._log_end_offset, "HW beyond the leader's log end"
        if high_watermark <= self._high_watermark:
            return False
        self._high_watermark = high_watermark
        self._check_invariants()
        return True

    def set_high_watermark_as_follower(self, leader_high_watermark: int) -> bool:
        """Follower: HW = min(leader's HW, own LEO), never backwards; True if it moved."""
        self._check_open()
        high_watermark = min(leader_high_watermark, self._log_end_offset)
        if high_watermark <= self._high_watermark:
            return False
        self._high_watermark = high_watermark
        self._check_invariants()
        return True

    def checkpoint_high_watermark(self) -> bool:
        """Persist the HW if it changed since the last write; True if it wrote.

        Called periodically by the broker (and by close()). Cost: one small write or none.
        """
        self._check_open()
        if self._high_watermark == self._checkpointed_high_watermark:
            return False
        wb = self.store.new_write_batch()
        self._stage_meta(wb)
        self._write(wb)
        return True

    # --- leader-epoch cache ---------------------------------------------------------------

    def latest_epoch(self) -> int:
        """The latest leader epoch in the cache, -1 when empty."""
        return self._epochs[-1][0] if self._epochs else UNDEFINED_EPOCH

    def assign_epoch(self, epoch: int, start_offset: int) -> None:
        """Record that `epoch` starts at `start_offset` (Kafka's assign, with its rules).

        The broker calls this on becoming leader with start_offset = log_end_offset. Trailing
        entries with an epoch >= epoch or a start >= start_offset are replaced.
        """
        self._check_open()
        assert epoch >= 0
        assert 0 <= start_offset <= self._log_end_offset
        epochs = self._assign_checked(self._epochs, epoch, start_offset)
        if epochs is self._epochs:
            return
        wb = self.store.new_write_batch()
        self._stage_epochs(wb, epochs)
        self._stage_meta(wb)
        self._write(wb)
        self._epochs = epochs
        self._check_invariants()

    def _assign_checked(
        self, epochs: list[EpochEntry], epoch: int, start_offset: int
    ) -> list[EpochEntry]:
        """_epochs_assign, warning (as Kafka) when it drops an entry that covered data."""
        assigned = _epochs_assign(epochs, epoch, start_offset)
        if assigned is not epochs:
            removed = epochs[len(assigned) - 1 :]
            if len(removed) > 1 or (removed and removed[0][1] != start_offset):
                self._log.warning(
                    "log.epoch_cache_non_monotonic",
                    epoch=epoch,
                    start_offset=start_offset,
                    removed=removed,
                )
        return assigned

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """(epoch, end offset) as Kafka's LeaderEpochFileCache.endOffsetFor (3.x).

        - epoch == latest: (epoch, log_end_offset);
        - between entries: (largest cached epoch <= epoch, start of the next larger epoch);
        - below the first entry: (epoch, first entry's start offset): this log holds nothing
          of that epoch, so a follower truncates to where our oldest known epoch begins;
        - above the latest, -1, or an empty cache: (-1, -1) (UNDEFINED).
        """
        self._check_open()
        return _epochs_end_offset_for(self._epochs, epoch, self._log_end_offset)

    # --- truncation ------------------------------------------------------------------------

    def truncate_to(self, offset: int) -> bool:
        """Remove every batch with base_offset >= offset; True if anything changed.

        Follower only, after leader-epoch reconciliation. If offset falls inside a batch,
        that whole batch goes too (the new log end is its base offset; logged). If offset is
        below log_start_offset, the log is emptied and restarts at offset (as Kafka). Clamps
        the HW, drops epoch entries starting at or after the new log end. One WriteBatch.
        Cost: reads the removed batches once, to account their size.
        """
        self._check_open()
        assert offset >= 0
        if offset >= self._log_end_offset:
            # No batch to remove, but an epoch assigned at the log end by a leadership in
            # which nothing was written must go (Kafka's UnifiedLog.truncateTo does the
            # same); otherwise the follower reports that epoch forever and never converges.
            epochs = _epochs_truncate_from_end(self._epochs, self._log_end_offset)
            if epochs == self._epochs:
                return False
            wb = self.store.new_write_batch()
            self._stage_epochs(wb, epochs)
            self._stage_meta(wb)  # the HW checkpoint rides along, as with every write
            self._write(wb)
            self._epochs = epochs
            self._check_invariants()
            return True
        if offset < self._log_start_offset:
            self.truncate_fully_and_start_at(offset)
            return True
        begin, end = data_range(self._prefix)
        it = self.store.iterator(upper_bound=end)
        it.seek_for_prev(data_key(self._prefix, offset))
        assert it.valid() and it.key().startswith(begin)
        containing = read_header(it.value())
        assert containing.base_offset <= offset < containing.next_offset
        new_end_offset = containing.base_offset
        removed_bytes = 0
        removed_batches = 0
        # Bound: the batches at or after new_end_offset (the divergent tail).
        while it.valid():
            removed_bytes += len(it.value())
            removed_batches += 1
            it.next()

        epochs = _epochs_truncate_from_end(self._epochs, new_end_offset)
        high_watermark = min(self._high_watermark, new_end_offset)
        size_bytes = self._size_bytes - removed_bytes
        producers, gone = self._producers.truncated(new_end_offset)
        wb = self.store.new_write_batch()
        wb.delete_range(data_key(self._prefix, new_end_offset), end)
        self._stage_epochs(wb, epochs)
        self._stage_producers(wb, producers, gone)
        self._stage_meta(wb, size_bytes=size_bytes, high_watermark=high_watermark)
        self._write(wb, high_watermark=high_watermark)

        old_end_offset = self._log_end_offset
        self._producers.commit(producers, gone)
        self._epochs = epochs
        self._size_bytes = size_bytes
        self._high_watermark = high_watermark
        self._log_end_offset = new_end_offset
        self._check_invariants()
        log_event = self._log.warning if new_end_offset != offset else self._log.info
        log_event(
            "log.truncated",
            requested_offset=offset,
            log_end_offset=new_end_offset,
            previous_log_end_offset=old_end_offset,
            removed_batches=removed_batches,
            removed_bytes=removed_bytes,
            mid_batch=new_end_offset != offset,
        )
        return True

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Remove everything; log_start = log_end = HW = offset; clear the epoch cache.

        For a follower whose fetch offset fell below the leader's log start. One WriteBatch.
        """
        self._check_open()
        assert offset >= 0
        wb = self.store.new_write_batch()
        wb.delete_range(*data_range(self._prefix))
        wb.delete_range(*epoch_range(self._prefix))
        wb.delete_range(*producer_range(self._prefix))
        self._stage_meta(wb, log_start_offset=offset, size_bytes=0, high_watermark=offset)
        self._write(wb, high_watermark=offset)
        previous = (self._log_start_offset, self._log_end_offset)
        self._producers = ProducerStates()
        self._epochs = []
        self._size_bytes = 0
        self._log_start_offset = offset
        self._high_watermark = offset
        self._log_end_offset = offset
        self._check_invariants()
        self._log.info(
            "log.truncated_fully",
            log_start_offset=offset,
            previous_log_start_offset=previous[0],
            previous_log_end_offset=previous[1],
        )

    # --- retention -------------------------------------------------------------------------

    def enforce_retention(
        self,
        *,
        now_ms: int,
        retention_ms: int,
        retention_bytes: int,
        batches_max: int = RETENTION_BATCHES_MAX,
    ) -> int:
        """Delete old batches from the log start; return how many offsets were removed.

        Only whole batches entirely below the high watermark are removed, oldest first,
        stopping at the first one that is kept: by time, a batch goes when
        max_timestamp < now_ms - retention_ms (if retention_ms >= 0); by size, while
        size_bytes > retention_bytes (if retention_bytes >= 0). log_start_offset advances.
        Bounded work per call (batches_max batches, RETENTION_SCAN_BYTES_MAX bytes read):
        call again while it returns > 0. One WriteBatch with one range tombstone.
        """
        self._check_open()
        assert batches_max > 0
        if retention_ms < 0 and retention_bytes < 0:
            return 0
        time_limit_ms = now_ms - retention_ms
        upper = self._high_watermark
        if upper <= self._log_start_offset:
            return 0
        it = self.store.iterator(upper_bound=data_key(self._prefix, upper))
        it.seek(data_key(self._prefix, self._log_start_offset))
        new_start_offset = self._log_start_offset
        removed_bytes = 0
        removed_batches = 0
        # Bound: batches_max batches and about RETENTION_SCAN_BYTES_MAX bytes.
        while it.valid() and removed_batches < batches_max:
            if removed_bytes >= RETENTION_SCAN_BYTES_MAX:
                break
            header = read_header(it.value())
            if header.next_offset > upper:
                break
            expired = retention_ms >= 0 and header.max_timestamp < time_limit_ms
            oversize = retention_bytes >= 0 and self._size_bytes - removed_bytes > retention_bytes
            if not (expired or oversize):
                break
            removed_bytes += header.size_bytes
            removed_batches += 1
            new_start_offset = header.next_offset
            it.next()
        if removed_batches == 0:
            return 0

        epochs = _epochs_truncate_from_start(self._epochs, new_start_offset)
        size_bytes = self._size_bytes - removed_bytes
        wb = self.store.new_write_batch()
        wb.delete_range(
            data_key(self._prefix, self._log_start_offset),
            data_key(self._prefix, new_start_offset),
        )
        self._stage_epochs(wb, epochs)
        self._stage_meta(wb, log_start_offset=new_start_offset, size_bytes=size_bytes)
        self._write(wb)

        removed_offsets = new_start_offset - self._log_start_offset
        self._epochs = epochs
        self._size_bytes = size_bytes
        self._log_start_offset = new_start_offset
        self._check_invariants()
        self._log.info(
            "log.retention_applied",
            log_start_offset=new_start_offset,
            removed_offsets=removed_offsets,
            removed_batches=removed_batches,
            removed_bytes=removed_bytes,
            size_bytes=size_bytes,
        )
        return removed_offsets

    # --- producers ------------------------------------------------------------------------

    @property
    def producers(self) -> ProducerStates:
        """The idempotent producers' state (read-only for callers)."""
        return self._producers

    def expire_producers(self, *, now_ms: int, expiration_ms: int) -> int:
        """Forget producers idle for longer than `expiration_ms`; return how many."""
        self._check_open()
        expired = self._producers.expired(now_ms=now_ms, expiration_ms=expiration_ms)
        if not expired:
            return 0
        wb = self.store.new_write_batch()
        self._stage_producers(wb, {}, expired)
        self._stage_meta(wb)
        self._write(wb)
        self._producers.commit({}, expired)
        return len(expired)

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint the HW and release the partition (the store stays open). Idempotent."""
        if self._closed:
            return
        self.checkpoint_high_watermark()
        self._closed = True
        self.store.release_partition(self.topic_id, self.partition)

    def delete(self) -> None:
        """Remove every key of the partition (data, epochs, meta) in one WriteBatch.

        The object is unusable afterwards; opening the partition again creates it empty.
        """
        self._check_open()
        wb = self.store.new_write_batch()
        wb.delete_range(*data_range(self._prefix))
        wb.delete_range(*epoch_range(self._prefix))
        wb.delete_range(*meta_range(self._prefix))
        wb.delete_range(*producer_range(self._prefix))
        self.store.write(wb)
        self._closed = True
        self.store.release_partition(self.topic_id, self.partition)
        self._log.info("log.deleted", size_bytes=self._size_bytes)
