"""One RocksDB per broker holding the logs of all its partitions, and its flush policy.

Key layout (raw mode: keys and values are plain bytes, so `ldb` and other RocksDB tools can
read the store; all integers big-endian so that byte order is numeric order)::

    b"D" + topic_id (16 bytes) + >I partition + >Q base_offset -> the stamped batch bytes
    b"E" + topic_id (16 bytes) + >I partition + >I leader_epoch -> >Q start_offset
    b"M" + topic_id (16 bytes) + >I partition + name            -> value (see below)
    b"P" + topic_id (16 bytes) + >I partition + >q producer_id  -> the producer's state
                                                     (`raftmq.broker.producer_state`)

Meta names: `log_start_offset` (>Q), `high_watermark` (>Q, a checkpoint: a lower bound of
the real HW), `size_bytes` (>Q, sum of the stored batch sizes, updated in the same
WriteBatch as every append and delete so that opening a partition never reads every batch),
`format_version` (>I). Every logical change of a partition is one WriteBatch (puts,
deletes and `delete_range`s together), so a crash leaves either all of it or none of it.
Data keys of one partition are contiguous, so truncation, retention and partition
deletion are a single range tombstone each, whatever the number of batches.

Flush policy (what survives what):

- `NONE`: every write goes to the RocksDB WAL, i.e. into the OS page cache. Survives a
  process crash (kill -9), not a power loss or kernel crash. Fastest.
- `INTERVAL` (default): as NONE, plus a background thread fsyncs the WAL
  (`flush_wal(True)`) every `flush_interval_ms`. A power loss loses at most about the last
  interval of writes, including acknowledged ones when a single replica holds them.
- `BATCH`: group commit. Writers write without sync, then call `wait_durable()`, which
  returns once an fsync of the WAL has *started after* their write and completed. One
  waiting thread at a time performs the fsync, on behalf of everyone who wrote before it
  started; no lock is held during the fsync (rocksdict releases the GIL in
  `flush_wal(True)`, unlike in put/write with sync=True, which stall every thread).
  Survives power loss for every write whose `wait_durable()` returned.

Why not sync=True writes: rocksdict holds the GIL during `write`, so a synced write stalls
the whole broker for the duration of the fsync (measured ~250 ms on a slow disk).

Batches are stored as the producer sent them, as a Kafka broker does with its default
`compression.type=producer`: RocksDB's own block compression (snappy by default) is off. A
producer that compresses (`compression=lz4`, `zstd`, ...) sends batches snappy cannot
shrink, and snappy ran on every flushed and every compacted block: 7 % of a partition
leader's CPU under `bench produce --message-bytes 100`, whose values it could not shrink
either (211 MB on disk for 2M messages with it, as without). Compress in the producer.

Flushes and compactions can write their SST files with direct I/O (O_DIRECT): the broker's
`--log-direct-io`, off by default. The store then probes the data folder (logged as
`direct_io` in `log_store.opened`) and falls back to buffered writes where its file system
refuses the flag. A flushed batch is copied from the memtable to the disk without first
being copied into page-cache pages. The WAL stays buffered (it is what survives a kill -9
before an fsync), and so do reads. Whether that pays depends on the disk, so it is a choice,
not a default: under `bench produce --message-bytes 1024` on this project's VM, one day's
host wrote 77 instead of 70 MiB/s with it (medians of eight alternating runs of 1M
messages; each page-cache page a broker had not touched before cost a fault from the
host), another day's 18-25 instead of 32-37 MiB/s (six alternating runs each): there a
direct write waited for the disk (a `dd` with O_DIRECT of 1 MiB blocks: 63-453 MB/s from
one run to the next), while buffered flushes let the kernel queue the writeback. Kafka
itself writes through the page cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from raftmq.errors import ErrorCode, RaftmqError
from rocksdict import DBCompressionType, Options, Rdict, RdictIter, ReadOptions, WriteBatch

if TYPE_CHECKING:
    from raftmq.broker.partition_log import PartitionLog

__all__ = [
    "PARTITION_PREFIX_SIZE",
    "TOPIC_ID_SIZE",
    "FlushPolicy",
    "LogStore",
    "StoreIterator",
    "data_key",
    "data_key_offset",
    "data_range",
    "epoch_key",
    "epoch_key_epoch",
    "epoch_range",
    "meta_key",
    "meta_range",
    "partition_prefix",
    "producer_key",
    "producer_key_id",
    "producer_range",
    "supports_direct_io",
]

_log = structlog.get_logger(__name__)

TOPIC_ID_SIZE = 16
_PARTITION = struct.Struct(">I")
_OFFSET = struct.Struct(">Q")
_EPOCH = struct.Struct(">I")
_DATA_TAG = b"D"
_EPOCH_TAG = b"E"
_META_TAG = b"M"
_PRODUCER_TAG = b"P"
_PRODUCER_ID = struct.Struct(">q")
# topic_id + partition: the part of every key that names the partition.
PARTITION_PREFIX_SIZE = TOPIC_ID_SIZE + _PARTITION.size
_DATA_KEY_SIZE = 1 + PARTITION_PREFIX_SIZE + _OFFSET.size
# Bounded join on close: a flush in progress finishes well within this on a healthy disk.
_FLUSHER_JOIN_TIMEOUT_S = 10.0


class FlushPolicy(enum.Enum):
    """When the WAL is fsynced; see the module docstring for what each one promises."""

    NONE = "none"
    INTERVAL = "interval"
    BATCH = "batch"


# --- key layout helpers (used by PartitionLog) -------------------------------------------


def partition_prefix(topic_id: bytes, partition: int) -> bytes:
    """topic_id + >I partition: names one partition inside every key kind."""
    assert len(topic_id) == TOPIC_ID_SIZE, "topic ids are 16-byte UUIDs"
    assert 0 <= partition < 2**32
    return topic_id + _PARTITION.pack(partition)


def data_key(prefix: bytes, base_offset: int) -> bytes:
    return _DATA_TAG + prefix + _OFFSET.pack(base_offset)


def data_key_offset(key: bytes) -> int:
    """The base offset encoded in a data key."""
    assert len(key) == _DATA_KEY_SIZE
    return int(_OFFSET.unpack_from(key, 1 + PARTITION_PREFIX_SIZE)[0])


def data_range(prefix: bytes) -> tuple[bytes, bytes]:
    """[begin, end) of every data key of the partition."""
    return _DATA_TAG + prefix, _DATA_TAG + _successor(prefix)


def epoch_key(prefix: bytes, epoch: int) -> bytes:
    return _EPOCH_TAG + prefix + _EPOCH.pack(epoch)


def epoch_key_epoch(key: bytes) -> int:
    return int(_EPOCH.unpack_from(key, 1 + PARTITION_PREFIX_SIZE)[0])


def epoch_range(prefix: bytes) -> tuple[bytes, bytes]:
    return _EPOCH_TAG + prefix, _EPOCH_TAG + _successor(prefix)


def meta_key(prefix: bytes, name: bytes) -> bytes:
    return _META_TAG + prefix + name


def meta_range(prefix: bytes) -> tuple[bytes, bytes]:
    return _META_TAG + prefix, _META_TAG + _successor(prefix)


def producer_key(prefix: bytes, producer_id: int) -> bytes:
    return _PRODUCER_TAG + prefix + _PRODUCER_ID.pack(producer_id)


def producer_key_id(key: bytes) -> int:
    return int(_PRODUCER_ID.unpack_from(key, 1 + PARTITION_PREFIX_SIZE)[0])


def producer_range(prefix: bytes) -> tuple[bytes, bytes]:
    return _PRODUCER_TAG + prefix, _PRODUCER_TAG + _successor(prefix)


def _successor(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    assert stripped, "a prefix of only 0xff bytes has no successor"
    return stripped[:-1] + bytes([stripped[-1] + 1])


# Direct I/O needs buffers, offsets and lengths aligned to the device's logical block; a
# page is a multiple of every common one (512 B, 4 KiB).
_DIRECT_IO_PROBE_BYTES = mmap.PAGESIZE
_DIRECT_IO_PROBE_NAME = ".direct-io-probe"


def supports_direct_io(folder: Path) -> bool:
    """Whether files in `folder` can be written with O_DIRECT (see the module doc).

    Opens a probe file with O_DIRECT and writes one aligned block (an anonymous mmap is
    page-aligned), as RocksDB's SST writer would: some file systems refuse the flag at
    open, others only at the first write (EINVAL). The probe file is removed again.
    """
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False  # not Linux
    probe = folder / _DIRECT_IO_PROBE_NAME
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o600)
        try:
            with mmap.mmap(-1, _DIRECT_IO_PROBE_BYTES) as block:
                return os.write(fd, block) == _DIRECT_IO_PROBE_BYTES
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


# --- the store ------------------------------------------------------------------------------


class StoreIterator:
    """A raw RocksDB iterator over keys < upper_bound.

    Exists because of two rocksdict 0.3.29 bugs: the iterator points into its ReadOptions'
    upper-bound buffer without keeping the ReadOptions alive (dropping it leaves a dangling
    bound: iteration silently stops early), so we hold it here; and
    ReadOptions.set_iterate_lower_bound sets the *upper* bound, so only upper bounds are
    used and callers check lower limits themselves. Values and keys are bytes copies.
    """

    __slots__ = ("_it", "_read_options")

    def __init__(self, db: Rdict, upper_bound: bytes) -> None:
        self._read_options = ReadOptions()
        self._read_options.set_iterate_upper_bound(upper_bound)
        self._it: RdictIter = db.iter(self._read_options)

    def valid(self) -> bool:
        return bool(self._it.valid())

    def seek(self, key: bytes) -> None:
        """Position at the first key >= key."""
        self._it.seek(key)

    def seek_for_prev(self, key: bytes) -> None:
        """Position at the last key <= key (key must be < the upper bound)."""
        self._it.seek_for_prev(key)

    def seek_to_last(self) -> None:
        """Position at the last key < the upper bound (of any partition: check the prefix)."""
        self._it.seek_to_last()

    def next(self) -> None:
        self._it.next()

    def key(self) -> bytes:
        key: bytes = self._it.key()
        return key

    def value(self) -> bytes:
        value: bytes = self._it.value()
        return value


class LogStore:
    """The broker's single RocksDB, shared by all its partition logs.

    Thread-safety: the store itself may be used from any thread (RocksDB is thread-safe;
    rocksdict holds the GIL inside each call). Each `PartitionLog` is not thread-safe and
    must be called under its partition's lock. `wait_durable()` must be called *without*
    holding a partition lock, so that other writers can join the same group commit.
    `close()` must be called after request handling has stopped.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_policy: FlushPolicy = FlushPolicy.INTERVAL,
        flush_interval_ms: int = 1000,
        direct_io: bool = False,
    ) -> None:
        """`direct_io`: write SST files with O_DIRECT where the folder allows it (see the
        module doc); `self.direct_io` says whether it does."""
        assert flush_interval_ms > 0
        self.path = Path(path)
        self.flush_policy = flush_policy
        self.flush_interval_ms = flush_interval_ms
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_compression_type(DBCompressionType.none())  # see the module doc
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # After mkdir: the probe writes a file in the folder the SST files go to.
            self.direct_io = direct_io and supports_direct_io(self.path)
            if direct_io and not self.direct_io:
                _log.warning(
                    "log_store.direct_io_refused",
                    path=str(self.path),
                    detail="the data folder's file system refuses O_DIRECT: buffered flushes",
                )
            options.set_use_direct_io_for_flush_and_compaction(self.direct_io)
            self._db = Rdict(str(self.path), options)
        except Exception as e:  # rocksdict raises bare Exception for RocksDB errors
            raise RaftmqError(
                ErrorCode.KAFKA_STORAGE_ERROR, f"cannot open log store at {self.path}: {e}"
            ) from e
        self._closed = False
        # Partitions opened through this store, so that one is never opened twice and
        # close() can checkpoint their high watermarks.
        self._open_logs: dict[tuple[bytes, int], PartitionLog] = {}
        self._open_logs_lock = threading.Lock()

        # Group commit state (BATCH), guarded by _flush_cond.
        # Invariants: at most one fsync in progress (_wal_sync_in_progress); syncs are
        # numbered in start order and _wal_syncs_completed <= _wal_syncs_started; the sync
        # numbered n covers every write made before it started. A failed sync's number is
        # never completed; the next successful one (n + 1) covers its waiters.
        self._flush_cond = threading.Condition(threading.Lock())
        self._wal_syncs_started = 0
        self._wal_syncs_completed = 0
        self._wal_sync_in_progress = False

        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None
        if flush_policy is FlushPolicy.INTERVAL:
            self._flusher = threading.Thread(
                target=self._run_interval_flusher, name="log-store-flusher", daemon=True
            )
            self._flusher.start()
        _log.info(
            "log_store.opened",
            path=str(self.path),
            flush_policy=flush_policy.value,
            flush_interval_ms=flush_interval_ms,
            direct_io=self.direct_io,
        )

    # --- partitions -----------------------------------------------------------------------

    def open_partition(self, topic_id: bytes, partition: int) -> PartitionLog:
        """Open (creating if absent) the log of one partition and recover its state.

        Cost: a few point reads and seeks plus the epoch cache keys; batches are not read
        except the header of the last one. A partition may be open only once at a time.
        """
        # Imported here: partition_log imports this module's key helpers at load time.
        from raftmq.broker.partition_log import PartitionLog

        self._check_open()
        key = (topic_id, partition)
        with self._open_logs_lock:
            assert key not in self._open_logs, "partition log opened twice"
            log = PartitionLog(self, topic_id, partition)
            self._open_logs[key] = log
        return log

    def list_partitions(self) -> list[tuple[bytes, int]]:
        """Every (topic_id, partition) with a log on disk, in key order.

        Cost: one seek per partition (it skips over each partition's meta keys).
        """
        self._check_open()
        found: list[tuple[bytes, int]] = []
        it = self.iterator(upper_bound=_successor(_META_TAG))
        it.seek(_META_TAG)
        # Bound: one iteration per partition on disk.
        while it.valid():
            key: bytes = it.key()
            prefix = key[1 : 1 + PARTITION_PREFIX_SIZE]
            found.append(
                (prefix[:TOPIC_ID_SIZE], int(_PARTITION.unpack_from(prefix, TOPIC_ID_SIZE)[0]))
            )
            it.seek(_META_TAG + _successor(prefix))
        return found

    def release_partition(self, topic_id: bytes, partition: int) -> None:
        """Called by PartitionLog.close() and delete(): the partition may be opened again."""
        with self._open_logs_lock:
            self._open_logs.pop((topic_id, partition), None)

    # --- low-level access for PartitionLog -----------------------------------------------

    def new_write_batch(self) -> WriteBatch:
        return WriteBatch(raw_mode=True)

    def write(self, batch: WriteBatch) -> None:
        """Apply `batch` atomically, without fsync (the flush policy decides durability)."""
        self._check_open()
        try:
            self._db.write(batch)
        except Exception as e:
            raise RaftmqError(ErrorCode.KAFKA_STORAGE_ERROR, f"write failed: {e}") from e

    def get(self, key: bytes) -> bytes | None:
        """The value stored at `key` (None: none). A point lookup: a few µs where an
        iterator, which positions itself in the memtable and every SST file, costs ~100."""
        self._check_open()
        try:
            value: bytes | None = self._db.get(key)
        except Exception as e:
            raise RaftmqError(ErrorCode.KAFKA_STORAGE_ERROR, f"read failed: {e}") from e
        return value

    def iterator(self, *, upper_bound: bytes) -> StoreIterator:
        """An iterator over raw keys < upper_bound; position it with seek/seek_for_prev."""
        self._check_open()
        return StoreIterator(self._db, upper_bound)

    # --- durability -------------------------------------------------------------------------

    @property
    def wal_syncs_total(self) -> int:
        """Number of the last completed WAL fsync (about how many ran), for metrics and tests."""
        with self._flush_cond:
            return self._wal_syncs_completed

    def wait_durable(self) -> None:
        """Return once everything written (by any thread) before the call is fsynced (BATCH).

        A no-op for NONE and INTERVAL. Under BATCH, the calling thread may itself perform
        the fsync for every waiter (group commit). Must not be called while holding a
        partition lock. Raises KAFKA_STORAGE_ERROR when the fsync fails.
        """
        if self.flush_policy is not FlushPolicy.BATCH:
            return
        self._check_open()
        with self._flush_cond:
            # Any sync that starts from now on covers our write; one running now may not.
            target = self._wal_syncs_started + 1
        self._sync_wal_until(target)

    def _sync_wal_until(self, target: int) -> None:
        """Return once the sync numbered `target` or a later one has completed.

        Performs the sync itself when none is in progress, else waits for the running one
        (which started too early for us, or is ours). Bound: each pass either returns,
        waits for a running sync to end, or performs one; a failed sync is raised to the
        thread that performed it, and the others retry with the next number.
        """
        with self._flush_cond:
            while self._wal_syncs_completed < target:
                if self._wal_sync_in_progress:
                    self._flush_cond.wait()
                    continue
                self._wal_sync_in_progress = True
                self._wal_syncs_started += 1
                number = self._wal_syncs_started
                ok = False
                # No lock is held during the fsync: writers keep writing and queue up
                # behind it for the next group.
                self._flush_cond.release()
                try:
                    self._sync_wal()
                    ok = True
                finally:
                    self._flush_cond.acquire()
                    self._wal_sync_in_progress = False
                    if ok:
                        self._wal_syncs_completed = number
                    self._flush_cond.notify_all()

    def _sync_wal_now(self) -> None:
        """Perform (or join) one fsync that starts after this call (interval flusher, close)."""
        with self._flush_cond:
            target = self._wal_syncs_started + 1
        self._sync_wal_until(target)

    def _sync_wal(self) -> None:
        """fsync the WAL. rocksdict releases the GIL here. No lock may be held."""
        try:
            self._db.flush_wal(True)
        except Exception as e:
            raise RaftmqError(ErrorCode.KAFKA_STORAGE_ERROR, f"WAL fsync failed: {e}") from e

    def _run_interval_flusher(self) -> None:
        interval_s = self.flush_interval_ms / 1000
        # Bound: one fsync per interval until close() sets _stopping.
        while not self._stopping.wait(interval_s):
            try:
                self._sync_wal_now()
            except Exception as e:
                # Keep trying: a transient error must not silently end periodic fsyncs.
                _log.error(
                    "log_store.flush_failed",
                    path=str(self.path),
                    error=str(e),
                    exc_info=not isinstance(e, RaftmqError),
                )

    # --- lifecycle --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RaftmqError(ErrorCode.KAFKA_STORAGE_ERROR, f"log store {self.path} is closed")

    def close(self) -> None:
        """Checkpoint open partitions' high watermarks, fsync the WAL, close the DB.

        Stops the interval flusher (bounded join). Call after request handling stopped:
        partition logs are touched here without their locks. Idempotent.
        """
        if self._closed:
            return
        self._stopping.set()
        if self._flusher is not None:
            self._flusher.join(timeout=_FLUSHER_JOIN_TIMEOUT_S)
            if self._flusher.is_alive():
                _log.warning("log_store.flusher_join_timed_out", path=str(self.path))
        with self._open_logs_lock:
            open_logs = list(self._open_logs.values())
        for log in open_logs:
            log.close()
        try:
            self._sync_wal_now()
        finally:
            self._closed = True
            self._db.close()
        _log.info("log_store.closed", path=str(self.path))

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncGroupCommit:
    """`LogStore.wait_durable` for code on an event loop (the broker's request handler
    and replica fetchers), holding no thread per waiter.

    Under BATCH, waiters are futures: one fsync runs at a time (in `executor`, since
    rocksdict releases the GIL in `flush_wal(True)`), and it completes every waiter that
    arrived before it started; waiters arriving meanwhile are served by the next one. A
    no-op for NONE and INTERVAL. Loop-only (not thread-safe)."""

    def __init__(self, store: LogStore, executor: concurrent.futures.Executor) -> None:
        self.store = store
        self.executor = executor
        # Waiters for the next fsync to start. Bounded by the requests in flight.
        self._waiting: list[asyncio.Future[None]] = []
        self._syncing = False

    async def wait(self) -> None:
        if self.store.flush_policy is not FlushPolicy.BATCH:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if not self._syncing:
            self._start()
        await future

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        batch, self._waiting = self._waiting, []
        self._syncing = True
        sync = loop.run_in_executor(self.executor, self.store._sync_wal_now)

        def done(finished: asyncio.Future[None]) -> None:
            self._syncing = False
            error = finished.exception()
            for future in batch:
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
            if self._waiting:
                self._start()

        sync.add_done_callback(done)
