"""PartitionLog and LogStore on a real RocksDB in a temporary directory."""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import crc32c
import pytest
import structlog
import structlog.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from raftmq.broker import log_store
from raftmq.broker.log_store import FlushPolicy, LogStore, meta_key, partition_prefix
from raftmq.broker.partition_log import (
    POINT_READS_MAX,
    PartitionLog,
    UnexpectedAppendOffsetError,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import (
    HEADER_SIZE,
    BatchHeader,
    decode_batch,
    encode_batch,
    iter_batches,
    read_header,
    stamp_batch,
)
from rocksdict import Options, Rdict

TOPIC = bytes(range(16))
OTHER_TOPIC = bytes(range(16, 32))


def make_batch(count: int, *, ts_ms: int = 1000, tag: bytes = b"v") -> bytes:
    return encode_batch(
        [Message(tag + b"%d" % i, b"k%d" % i, timestamp_ms=ts_ms) for i in range(count)]
    )


def follower_chunk(base_offset: int, sizes: list[int], *, epoch: int) -> bytes:
    """Stamped batches as a leader would send them, starting at base_offset."""
    chunks = []
    for count in sizes:
        chunks.append(
            stamp_batch(make_batch(count), base_offset=base_offset, partition_leader_epoch=epoch)
        )
        base_offset += count
    return b"".join(chunks)


def headers(data: bytes) -> list[BatchHeader]:
    return [h for h, _ in iter_batches(data)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    s = LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE)
    yield s
    s.close()


@pytest.fixture
def log(store: LogStore) -> PartitionLog:
    return store.open_partition(TOPIC, 0)


def fill(log: PartitionLog, sizes: list[int], *, epoch: int = 0, ts_ms: int = 1000) -> None:
    for count in sizes:
        log.append_as_leader(make_batch(count, ts_ms=ts_ms), leader_epoch=epoch)


def reopen(store: LogStore, tmp_path: Path) -> tuple[LogStore, PartitionLog]:
    store.close()
    return reopen_closed(tmp_path)


def reopen_closed(tmp_path: Path) -> tuple[LogStore, PartitionLog]:
    reopened = LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE)
    return reopened, reopened.open_partition(TOPIC, 0)


def test_a_store_whose_blocks_rocksdb_compressed_reopens_with_every_batch(
    store: LogStore, log: PartitionLog, tmp_path: Path
) -> None:
    """Stores made before batches were kept uncompressed hold snappy blocks: a broker
    upgraded onto them reads them all, and appends after them."""
    fill(log, [3, 1, 4])
    store.close()
    snappy = Rdict(str(tmp_path / "store"), Options(raw_mode=True))  # RocksDB's default
    snappy.compact_range(None, None)  # every batch into snappy-compressed SST blocks
    snappy.close()
    reopened, log = reopen_closed(tmp_path)
    try:
        log.append_as_leader(make_batch(2), leader_epoch=0)
        data = log.read(0, max_bytes=1 << 20, upper_offset=10)
        assert [h.record_count for h in headers(data)] == [3, 1, 4, 2]
        assert log.log_end_offset == 10
    finally:
        reopened.close()


# --- appends and reads ---------------------------------------------------------------------


def test_leader_appends_are_stamped_contiguously(log: PartitionLog) -> None:
    first = log.append_as_leader(make_batch(3), leader_epoch=5)
    second = log.append_as_leader(make_batch(2), leader_epoch=5)
    assert (first.base_offset, first.next_offset, first.duplicate) == (0, 3, False)
    assert (second.base_offset, second.next_offset) == (3, 5)
    assert log.log_end_offset == 5
    data = log.read(0, max_bytes=1 << 20, upper_offset=5)
    assert [h.partition_leader_epoch for h in headers(data)] == [5, 5]
    assert log.size_bytes == sum(h.size_bytes for h in headers(data))
    assert log.epoch_entries == ((5, 0),)
    assert [r.offset for h in headers(data) for r in decode_batch(_one(data, h))] == list(range(5))


def _one(data: bytes, header: BatchHeader) -> bytes:
    for h, batch in iter_batches(data):
        if h == header:
            return batch
    raise AssertionError("batch not found")


def test_read_starts_with_the_batch_containing_the_fetch_offset(log: PartitionLog) -> None:
    fill(log, [3, 3, 3])
    for fetch_offset, first_base in [(0, 0), (2, 0), (3, 3), (4, 3), (8, 6)]:
        data = log.read(fetch_offset, max_bytes=1, upper_offset=9)
        assert [h.base_offset for h in headers(data)] == [first_base]


def test_read_max_bytes_returns_whole_batches_and_at_least_one(log: PartitionLog) -> None:
    fill(log, [3, 3, 3, 3])
    size = read_header(log.read(0, max_bytes=1, upper_offset=12)).size_bytes
    cases = [(1, 1), (size, 1), (2 * size - 1, 1), (2 * size, 2), (3 * size + 1, 3), (10**6, 4)]
    for max_bytes, batches in cases:
        data = log.read(0, max_bytes=max_bytes, upper_offset=12)
        assert len(headers(data)) == batches, max_bytes
    big = log.append_as_leader(make_batch(200), leader_epoch=0)
    data = log.read(12, max_bytes=10, upper_offset=log.log_end_offset)
    assert [h.base_offset for h in headers(data)] == [big.base_offset]


def test_read_only_returns_batches_below_the_upper_offset(log: PartitionLog) -> None:
    fill(log, [3, 3, 3])
    log.maybe_advance_high_watermark(6)
    data = log.read(0, max_bytes=1 << 20, upper_offset=log.high_watermark)
    assert [h.base_offset for h in headers(data)] == [0, 3]
    # A batch that starts below the bound is returned whole.
    data = log.read(0, max_bytes=1 << 20, upper_offset=7)
    assert [h.base_offset for h in headers(data)] == [0, 3, 6]
    assert log.read(6, max_bytes=1 << 20, upper_offset=6) == b""
    assert log.read(8, max_bytes=1 << 20, upper_offset=6) == b""  # between HW and LEO
    assert log.read(9, max_bytes=1 << 20, upper_offset=9) == b""  # at the log end


def test_a_read_past_the_batches_looked_up_by_key_goes_on_with_an_iterator(
    log: PartitionLog,
) -> None:
    """The first POINT_READS_MAX batches of a read are looked up by key, the rest come from
    an iterator: one read returns the same whole batches either way, within max_bytes and
    past the holes a compaction left (inside the looked-up part and past it)."""
    count = 2 * POINT_READS_MAX + 3
    fill(log, [2] * count)
    end = log.log_end_offset
    log.maybe_advance_high_watermark(end)
    size = read_header(log.read(0, max_bytes=1, upper_offset=end)).size_bytes

    def bases(fetch_offset: int, max_bytes: int = 1 << 20) -> list[int]:
        return [
            h.base_offset
            for h in headers(log.read(fetch_offset, max_bytes=max_bytes, upper_offset=end))
        ]

    assert bases(0) == list(range(0, end, 2))
    assert bases(0, max_bytes=3 * size) == [0, 2, 4]  # stops among the lookups
    assert bases(0, max_bytes=(POINT_READS_MAX + 2) * size) == list(
        range(0, 2 * (POINT_READS_MAX + 2), 2)
    )  # stops in the iterated part
    holes = [6, 2 * POINT_READS_MAX + 2]
    for hole in holes:
        batch = log.read(hole, max_bytes=1, upper_offset=end)
        assert log.replace_batches([(hole, batch, None)]) == 1
    kept = [b for b in range(0, end, 2) if b not in holes]
    assert bases(0) == kept
    assert bases(6) == [b for b in kept if b > 6]  # fetched in a hole: the next batch on
    assert bases(7) == [b for b in kept if b > 6]  # inside the hole
    assert bases(3) == [b for b in kept if b >= 2]  # inside a batch: that batch first


def test_read_outside_the_log_is_offset_out_of_range(log: PartitionLog) -> None:
    fill(log, [3, 3, 3])
    log.maybe_advance_high_watermark(9)
    assert log.enforce_retention(now_ms=0, retention_ms=-1, retention_bytes=0, batches_max=1) == 3
    for fetch_offset in (0, 2, 10, 100):
        with pytest.raises(RaftmqError) as excinfo:
            log.read(fetch_offset, max_bytes=100, upper_offset=9)
        assert excinfo.value.code is ErrorCode.OFFSET_OUT_OF_RANGE
        assert "[3, 9]" in excinfo.value.message
    assert headers(log.read(3, max_bytes=1, upper_offset=9))[0].base_offset == 3


def test_partitions_do_not_see_each_other(store: LogStore) -> None:
    logs = [store.open_partition(TOPIC, 0), store.open_partition(TOPIC, 1)]
    logs.append(store.open_partition(OTHER_TOPIC, 0))
    for i, log in enumerate(logs):
        fill(log, [i + 1] * (i + 1))
    for i, log in enumerate(logs):
        data = log.read(0, max_bytes=1 << 20, upper_offset=log.log_end_offset)
        assert [h.record_count for h in headers(data)] == [i + 1] * (i + 1)
    assert store.list_partitions() == [(TOPIC, 0), (TOPIC, 1), (OTHER_TOPIC, 0)]
    logs[1].delete()
    assert store.list_partitions() == [(TOPIC, 0), (OTHER_TOPIC, 0)]
    again = store.open_partition(TOPIC, 1)
    assert (again.log_end_offset, again.size_bytes, again.epoch_entries) == (0, 0, ())
    assert logs[0].log_end_offset == 1 and logs[2].log_end_offset == 9


def test_a_partition_cannot_be_opened_twice(store: LogStore, log: PartitionLog) -> None:
    with pytest.raises(AssertionError):
        store.open_partition(TOPIC, 0)
    log.close()
    store.open_partition(TOPIC, 0)


def test_offset_for_timestamp(log: PartitionLog) -> None:
    log.append_as_leader(
        encode_batch([Message(b"a", timestamp_ms=100), Message(b"b", timestamp_ms=300)]),
        leader_epoch=0,
    )
    log.append_as_leader(
        encode_batch([Message(b"c", timestamp_ms=200), Message(b"d", timestamp_ms=500)]),
        leader_epoch=0,
    )
    log.append_as_leader(encode_batch([Message(b"e", timestamp_ms=900)]), leader_epoch=0)
    log.maybe_advance_high_watermark(4)
    assert log.offset_for_timestamp(0) == (0, 100)
    assert log.offset_for_timestamp(150) == (1, 300)
    assert log.offset_for_timestamp(300) == (1, 300)
    assert log.offset_for_timestamp(301) == (3, 500)
    assert log.offset_for_timestamp(600) is None  # offset 4 is above the HW
    assert log.offset_for_timestamp(600, upper_offset=5) == (4, 900)


def test_offset_for_timestamp_answers_per_batch_when_records_cannot_be_decoded(
    log: PartitionLog,
) -> None:
    """The broker stores records unread: garbage behind a valid header is answered at batch
    granularity rather than failing the lookup."""
    fill(log, [2], ts_ms=100)
    good = bytearray(make_batch(3, ts_ms=500))
    good[HEADER_SIZE:] = b"\xff" * (len(good) - HEADER_SIZE)
    struct.pack_into(">I", good, 17, crc32c.crc32c(bytes(good[21:])))
    log.append_as_leader(bytes(good), leader_epoch=0)
    log.maybe_advance_high_watermark(5)
    assert log.offset_for_timestamp(100) == (0, 100)
    assert log.offset_for_timestamp(200) == (2, 500)


def test_a_log_of_the_columnar_format_1_is_refused(store: LogStore) -> None:
    old = store.open_partition(TOPIC, 0)
    fill(old, [2])
    old.close()
    store.open_partition(TOPIC, 1).close()
    write = store.new_write_batch()
    write.put(meta_key(partition_prefix(TOPIC, 0), b"format_version"), struct.pack(">I", 1))
    store.write(write)
    with pytest.raises(RaftmqError) as excinfo:
        store.open_partition(TOPIC, 0)
    assert excinfo.value.code is ErrorCode.KAFKA_STORAGE_ERROR
    assert "written by an older raftmq with the columnar record format" in excinfo.value.message
    assert store.open_partition(TOPIC, 1).log_end_offset == 0  # other partitions still open


# --- follower appends ----------------------------------------------------------------------


def test_follower_append_stores_identical_bytes_and_tracks_epochs(log: PartitionLog) -> None:
    chunk = follower_chunk(0, [2, 3], epoch=1) + follower_chunk(5, [1], epoch=4)
    assert log.append_as_follower(chunk) == 6
    assert log.read(0, max_bytes=1 << 20, upper_offset=6) == chunk
    assert log.epoch_entries == ((1, 0), (4, 5))
    assert log.append_as_follower(b"") == 6
    assert log.set_high_watermark_as_follower(100)
    assert log.high_watermark == 6
    assert not log.set_high_watermark_as_follower(3)
    assert log.high_watermark == 6


@pytest.mark.parametrize("base_offset", [0, 4, 7])
def test_follower_append_must_start_at_the_log_end(log: PartitionLog, base_offset: int) -> None:
    log.append_as_follower(follower_chunk(0, [3, 3], epoch=0))
    size_bytes = log.size_bytes
    with pytest.raises(UnexpectedAppendOffsetError) as excinfo:
        log.append_as_follower(follower_chunk(base_offset, [2], epoch=1))
    assert (excinfo.value.expected_offset, excinfo.value.actual_offset) == (6, base_offset)
    assert (log.log_end_offset, log.size_bytes, log.epoch_entries) == (6, size_bytes, ((0, 0),))


def test_follower_append_with_a_gap_or_bad_tail_stores_nothing(
    store: LogStore, tmp_path: Path, log: PartitionLog
) -> None:
    good = follower_chunk(0, [2], epoch=3)
    gap = follower_chunk(3, [2], epoch=3)
    with pytest.raises(UnexpectedAppendOffsetError):
        log.append_as_follower(good + gap)
    with pytest.raises(RaftmqError) as excinfo:
        log.append_as_follower(good + good[:-5])
    assert excinfo.value.code is ErrorCode.CORRUPT_MESSAGE
    assert (log.log_end_offset, log.size_bytes, log.epoch_entries) == (0, 0, ())
    _, log = reopen(store, tmp_path)
    assert (log.log_end_offset, log.size_bytes, log.epoch_entries) == (0, 0, ())


# --- truncation ----------------------------------------------------------------------------


def test_truncate_to_a_batch_boundary(log: PartitionLog) -> None:
    fill(log, [2, 2], epoch=1)
    fill(log, [2, 2], epoch=3)
    log.maybe_advance_high_watermark(7)
    size_of_two = len(log.read(0, max_bytes=10**6, upper_offset=4))
    assert log.truncate_to(4)
    assert (log.log_end_offset, log.high_watermark, log.size_bytes) == (4, 4, size_of_two)
    assert log.epoch_entries == ((1, 0),)
    assert not log.truncate_to(4)
    assert not log.truncate_to(10)
    data = log.read(0, max_bytes=10**6, upper_offset=4)
    assert [h.base_offset for h in headers(data)] == [0, 2]
    # The log continues from the truncation point.
    assert log.append_as_leader(make_batch(1), leader_epoch=5).base_offset == 4
    assert tuple(log.epoch_entries) == ((1, 0), (5, 4))  # tuple(): mypy narrowed the property


def test_truncate_inside_a_batch_removes_the_whole_batch(log: PartitionLog) -> None:
    fill(log, [3, 3])
    log.maybe_advance_high_watermark(6)
    assert log.truncate_to(4)
    assert (log.log_end_offset, log.high_watermark) == (3, 3)


def test_truncate_below_the_log_start_restarts_the_log(log: PartitionLog) -> None:
    fill(log, [3, 3, 3])
    log.maybe_advance_high_watermark(9)
    log.enforce_retention(now_ms=0, retention_ms=-1, retention_bytes=0, batches_max=2)
    assert log.log_start_offset == 6
    assert log.truncate_to(2)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (2, 2, 2)
    assert (log.size_bytes, log.epoch_entries) == (0, ())


def test_truncate_fully_and_start_at(store: LogStore, tmp_path: Path, log: PartitionLog) -> None:
    fill(log, [3, 3], epoch=2)
    log.maybe_advance_high_watermark(6)
    log.truncate_fully_and_start_at(100)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (100, 100, 100)
    assert (log.size_bytes, log.epoch_entries) == (0, ())
    assert log.read(100, max_bytes=10, upper_offset=100) == b""
    assert log.append_as_follower(follower_chunk(100, [2], epoch=3)) == 102
    _, log = reopen(store, tmp_path)
    assert (log.log_start_offset, log.log_end_offset, log.epoch_entries) == (100, 102, ((3, 100),))


# --- leader epochs (KIP-101 / KIP-279) -------------------------------------------------------


def test_end_offset_for_epoch(log: PartitionLog) -> None:
    assert log.end_offset_for_epoch(0) == (-1, -1)  # empty cache: UNDEFINED
    fill(log, [5, 5], epoch=1)  # [0, 10)
    fill(log, [5], epoch=2)  # [10, 15)
    fill(log, [5], epoch=5)  # [15, 20)
    assert log.epoch_entries == ((1, 0), (2, 10), (5, 15))
    assert log.end_offset_for_epoch(5) == (5, 20)  # the latest epoch ends at the LEO
    assert log.end_offset_for_epoch(2) == (2, 15)
    assert log.end_offset_for_epoch(1) == (1, 10)
    # Epochs 3 and 4 never wrote here: the answer is the largest epoch below and its end.
    assert log.end_offset_for_epoch(3) == (2, 15)
    assert log.end_offset_for_epoch(4) == (2, 15)
    # Below the first known epoch: nothing of it here, so "it ends where we begin" (Kafka 2.0+).
    assert log.end_offset_for_epoch(0) == (0, 0)
    assert log.end_offset_for_epoch(6) == (-1, -1)  # above the latest: UNDEFINED
    assert log.end_offset_for_epoch(-1) == (-1, -1)


def test_assign_epoch_on_becoming_leader(log: PartitionLog) -> None:
    fill(log, [3], epoch=1)
    log.assign_epoch(2, log.log_end_offset)
    assert log.epoch_entries == ((1, 0), (2, 3))
    assert log.end_offset_for_epoch(1) == (1, 3)
    # Becoming leader again without writing replaces the empty epoch (Kafka's assign).
    log.assign_epoch(3, log.log_end_offset)
    assert log.epoch_entries == ((1, 0), (3, 3))
    log.assign_epoch(3, log.log_end_offset)  # idempotent
    appended = log.append_as_leader(make_batch(1), leader_epoch=3)
    stored = log.read(appended.base_offset, max_bytes=1 << 20, upper_offset=log.log_end_offset)
    assert headers(stored)[-1].partition_leader_epoch == 3
    assert log.epoch_entries == ((1, 0), (3, 3))
    with pytest.raises(AssertionError):
        log.append_as_leader(make_batch(1), leader_epoch=2)


def _reconcile(follower: PartitionLog, leader: PartitionLog) -> None:
    """What the replica fetcher does before fetching: truncate by the leader's epochs."""
    epoch, end_offset = leader.end_offset_for_epoch(follower.latest_epoch())
    assert end_offset >= 0
    if epoch == follower.latest_epoch():
        truncation_offset = min(end_offset, follower.log_end_offset)
    else:
        _, own_end = follower.end_offset_for_epoch(epoch)
        truncation_offset = min(end_offset, own_end)
    follower.truncate_to(truncation_offset)
    follower.append_as_follower(
        leader.read(follower.log_end_offset, max_bytes=1 << 20, upper_offset=leader.log_end_offset)
    )


def test_kip101_divergent_logs_converge_without_losing_committed_data(store: LogStore) -> None:
    """KIP-101 scenario 2: A leads epoch 0 and writes m1 (committed) and m2 (only on A).

    B, which only has m1, becomes leader in epoch 1 and writes m3 at offset 1. When A
    comes back as a follower it must replace m2 by m3, not keep it (truncating to its own
    HW would be correct here too, but not in scenario 1; the epoch rule covers both).
    """
    a = store.open_partition(TOPIC, 0)
    b = store.open_partition(TOPIC, 1)
    a.append_as_leader(make_batch(1, tag=b"m1-"), leader_epoch=0)
    b.append_as_follower(a.read(0, max_bytes=1 << 20, upper_offset=1))
    a.append_as_leader(make_batch(1, tag=b"m2-"), leader_epoch=0)  # unreplicated
    b.assign_epoch(1, b.log_end_offset)  # B becomes leader in epoch 1
    b.append_as_leader(make_batch(1, tag=b"m3-"), leader_epoch=1)
    _reconcile(a, b)
    data = a.read(0, max_bytes=1 << 20, upper_offset=a.log_end_offset)
    assert data == b.read(0, max_bytes=1 << 20, upper_offset=b.log_end_offset)
    values = [r.value for h in headers(data) for r in decode_batch(_one(data, h))]
    assert values == [b"m1-0", b"m3-0"]
    assert a.epoch_entries == b.epoch_entries == ((0, 0), (1, 1))


def test_kip101_scenario_1_keeps_data_above_the_followers_high_watermark(
    store: LogStore,
) -> None:
    """KIP-101 scenario 1: follower B has fetched m2 but not yet learned HW 2, and restarts.

    The old rule (truncate to its own HW, 1) would drop m2, which leader A acknowledged;
    were A to fail next, B would lead without it. The epoch rule asks A where epoch 0 ends
    (its LEO, 2) and keeps m2.
    """
    a = store.open_partition(TOPIC, 0)
    b = store.open_partition(TOPIC, 1)
    fill(a, [1, 1], epoch=0)
    b.append_as_follower(a.read(0, max_bytes=1 << 20, upper_offset=2))
    a.maybe_advance_high_watermark(2)  # m2 acknowledged; B has not learned HW 2 yet
    b.set_high_watermark_as_follower(1)
    _reconcile(b, a)
    assert (b.log_end_offset, b.high_watermark) == (2, 1)


# --- retention -----------------------------------------------------------------------------


def test_retention_by_time_never_removes_above_the_high_watermark(log: PartitionLog) -> None:
    for i in range(6):
        fill(log, [2], ts_ms=1000 + i * 100)  # batch i: offsets [2i, 2i + 2), ts 1000 + 100 i
    log.maybe_advance_high_watermark(7)  # batch 3 straddles the HW: it must stay
    removed = log.enforce_retention(now_ms=10**9, retention_ms=0, retention_bytes=-1)
    assert removed == 6
    assert log.log_start_offset == 6
    log.maybe_advance_high_watermark(12)
    # Only batches with max_timestamp < now - retention = 1400: batch 3 (1300), not 4 (1400).
    assert log.enforce_retention(now_ms=1450, retention_ms=50, retention_bytes=-1) == 2
    assert log.log_start_offset == 8
    assert log.enforce_retention(now_ms=1450, retention_ms=50, retention_bytes=-1) == 0
    assert log.enforce_retention(now_ms=0, retention_ms=-1, retention_bytes=-1) == 0


def test_retention_by_bytes_and_bounded_work(store: LogStore, tmp_path: Path) -> None:
    log = store.open_partition(TOPIC, 0)
    fill(log, [1] * 10, epoch=0)
    fill(log, [1] * 10, epoch=1)
    batch_size = log.size_bytes // 20
    log.maybe_advance_high_watermark(15)
    assert log.enforce_retention(now_ms=0, retention_ms=-1, retention_bytes=0, batches_max=4) == 4
    assert log.enforce_retention(now_ms=0, retention_ms=-1, retention_bytes=0) == 11
    assert log.log_start_offset == 15  # nothing at or above the HW goes
    assert log.size_bytes == 5 * batch_size
    assert log.epoch_entries == ((1, 15),)  # truncated from the start, as Kafka
    log.maybe_advance_high_watermark(20)
    assert log.enforce_retention(now_ms=0, retention_ms=-1, retention_bytes=2 * batch_size) == 3
    assert log.size_bytes == 2 * batch_size
    store, log = reopen(store, tmp_path)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (18, 20, 20)
    assert (log.size_bytes, log.epoch_entries) == (2 * batch_size, ((1, 18),))
    # Everything below the HW may go: an empty log keeps its offsets.
    assert log.enforce_retention(now_ms=0, retention_ms=-1, retention_bytes=0) == 2
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (20, 20, 0)
    assert log.read(20, max_bytes=100, upper_offset=20) == b""
    store, log = reopen(store, tmp_path)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (20, 20, 20)
    assert log.append_as_leader(make_batch(1), leader_epoch=2).base_offset == 20
    store.close()


# --- recovery and durability ---------------------------------------------------------------


def test_recovery_after_close_and_reopen(store: LogStore, tmp_path: Path) -> None:
    log = store.open_partition(TOPIC, 3)
    fill(log, [2, 3], epoch=1)
    fill(log, [4], epoch=4)
    log.maybe_advance_high_watermark(7)
    log.enforce_retention(now_ms=0, retention_ms=-1, retention_bytes=0, batches_max=1)
    log.maybe_advance_high_watermark(8)  # not written: close() checkpoints it
    state = (log.log_start_offset, log.log_end_offset, log.size_bytes, log.epoch_entries)
    data = log.read(2, max_bytes=10**6, upper_offset=9)
    store.close()
    store = LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE)
    log = store.open_partition(TOPIC, 3)
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes, log.epoch_entries) == state
    assert log.high_watermark == 8
    assert log.read(2, max_bytes=10**6, upper_offset=9) == data
    assert store.list_partitions() == [(TOPIC, 3)]
    store.close()


def test_high_watermark_checkpoint(log: PartitionLog) -> None:
    fill(log, [3])
    assert not log.checkpoint_high_watermark()
    assert log.maybe_advance_high_watermark(2)
    assert not log.maybe_advance_high_watermark(1)  # never backwards
    assert log.checkpoint_high_watermark()
    assert not log.checkpoint_high_watermark()


_CRASHING_WRITER = """
import os, sys
from raftmq.broker.log_store import FlushPolicy, LogStore
from raftmq.message import Message
from raftmq.record_batch import encode_batch
store = LogStore(sys.argv[1], flush_policy=FlushPolicy.NONE, direct_io=sys.argv[2] == "flush")
log = store.open_partition(bytes(range(16)), 0)
for i in range(5):
    log.append_as_leader(encode_batch([Message(b"x", timestamp_ms=0)] * 2), leader_epoch=i // 2)
    if i == 2 and sys.argv[2] == "flush":
        assert store.direct_io
        store._db.flush()  # the first three batches into an SST file written with O_DIRECT
log.maybe_advance_high_watermark(6)
log.append_as_leader(encode_batch([Message(b"y", timestamp_ms=0)]), leader_epoch=2)  # carries HW 6
log.maybe_advance_high_watermark(11)  # never written
os._exit(0)  # no close(), no WAL fsync: like kill -9
"""


@pytest.mark.parametrize("flush", ["flush", "no-flush"])
def test_a_killed_process_loses_nothing_written_with_flush_policy_none(
    flush: str, tmp_path: Path
) -> None:
    """Also when part of the log was flushed to an SST file with direct I/O before the
    crash and the rest lives only in the WAL."""
    path = tmp_path / "crashed"
    subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(path), flush], check=True, timeout=60
    )
    assert bool(list(path.glob("*.sst"))) == (flush == "flush")
    store = LogStore(path, flush_policy=FlushPolicy.NONE)
    log = store.open_partition(TOPIC, 0)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (0, 11, 6)
    assert log.epoch_entries == ((0, 0), (1, 4), (2, 8))
    assert len(headers(log.read(0, max_bytes=10**6, upper_offset=11))) == 6
    store.close()


def test_batch_policy_wait_durable_from_many_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogStore(tmp_path / "store", flush_policy=FlushPolicy.BATCH)
    clock = itertools.count()  # a logical clock; next() is atomic under the GIL
    syncs: list[tuple[int, int]] = []  # (started, finished) ticks
    real_sync = store._sync_wal

    def traced_sync() -> None:
        started = next(clock)
        real_sync()
        syncs.append((started, next(clock)))

    monkeypatch.setattr(store, "_sync_wal", traced_sync)
    threads, writes_per_thread = 6, 15

    def writer(partition: int) -> list[tuple[int, int]]:
        log = store.open_partition(TOPIC, partition)
        waits = []
        for _ in range(writes_per_thread):
            log.append_as_leader(make_batch(2), leader_epoch=0)
            wrote = next(clock)
            store.wait_durable()
            waits.append((wrote, next(clock)))
        return waits

    with ThreadPoolExecutor(threads) as pool:
        waits = [w for ws in pool.map(writer, range(threads)) for w in ws]
    # Every writer saw a sync that started after its write and ended before it returned.
    for wrote, returned in waits:
        assert any(wrote < started and finished < returned for started, finished in syncs)
    assert 1 <= len(syncs) <= len(waits)
    assert store.wal_syncs_total == len(syncs)
    store.close()


def test_batch_policy_a_failed_fsync_is_raised_and_later_waiters_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogStore(tmp_path / "store", flush_policy=FlushPolicy.BATCH)
    real_sync = store._sync_wal
    failures = [RaftmqError(ErrorCode.KAFKA_STORAGE_ERROR, "disk on fire")]

    def flaky_sync() -> None:
        if failures:
            raise failures.pop()
        real_sync()

    monkeypatch.setattr(store, "_sync_wal", flaky_sync)
    with pytest.raises(RaftmqError) as excinfo:
        store.wait_durable()
    assert excinfo.value.code is ErrorCode.KAFKA_STORAGE_ERROR
    store.wait_durable()
    assert store.wal_syncs_total == 2  # sync 1 failed, sync 2 covered the retry
    store.close()


def test_interval_policy_fsyncs_in_the_background(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "store", flush_policy=FlushPolicy.INTERVAL, flush_interval_ms=5)
    deadline = time.monotonic() + 10
    while store.wal_syncs_total < 2:
        assert time.monotonic() < deadline, "interval flusher never ran"
        threading.Event().wait(0.005)
    store.close()
    assert store._flusher is not None and not store._flusher.is_alive()


def test_closed_store_raises_storage_errors(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE)
    store.close()
    store.close()  # idempotent
    with pytest.raises(RaftmqError) as excinfo:
        store.open_partition(TOPIC, 0)
    assert excinfo.value.code is ErrorCode.KAFKA_STORAGE_ERROR


def _rocksdb_option(path: Path, name: str) -> str:
    """The value RocksDB wrote for option `name` in the newest OPTIONS file of the store."""
    newest = max(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    values = [
        line.split("=", 1)[1].strip()
        for line in newest.read_text().splitlines()
        if line.strip().startswith(name + "=")
    ]
    assert values, f"{name} not in {newest}"
    return values[0]


def _record_counts(log: PartitionLog, upper_offset: int) -> list[int]:
    return [
        h.record_count for h in headers(log.read(0, max_bytes=1 << 20, upper_offset=upper_offset))
    ]


def test_flushes_are_buffered_unless_direct_io_is_asked_for(
    store: LogStore, tmp_path: Path
) -> None:
    """By default (the broker's `--no-log-direct-io`) nothing is probed and SST files go
    through the page cache."""
    assert not store.direct_io
    assert _rocksdb_option(tmp_path / "store", "use_direct_io_for_flush_and_compaction") == "false"


@pytest.mark.parametrize("first_direct_io", [True, False])
def test_flushed_batches_are_written_with_direct_io_and_read_back(
    first_direct_io: bool, tmp_path: Path
) -> None:
    """Where the folder takes O_DIRECT (this machine's file systems do), a store asked for
    direct I/O writes SST files around the page cache; what they hold reads back, also
    after a reopen with the setting switched (either way round)."""
    path = tmp_path / "store"
    store = LogStore(path, flush_policy=FlushPolicy.NONE, direct_io=first_direct_io)
    assert store.direct_io is first_direct_io, "the probe found no O_DIRECT on a local disk"
    direct = "true" if first_direct_io else "false"
    assert _rocksdb_option(path, "use_direct_io_for_flush_and_compaction") == direct
    assert _rocksdb_option(path, "use_direct_reads") == "false"
    assert not (path / ".direct-io-probe").exists(), "the probe file is removed"
    log = store.open_partition(TOPIC, 0)
    fill(log, [3, 1, 4])
    store._db.flush()  # the memtable into an SST file
    assert list(path.glob("*.sst")), "the flush wrote no SST file"
    fill(log, [2])
    assert _record_counts(log, 10) == [3, 1, 4, 2]
    store.close()
    reopened = LogStore(path, flush_policy=FlushPolicy.NONE, direct_io=not first_direct_io)
    try:
        assert reopened.direct_io is not first_direct_io
        log = reopened.open_partition(TOPIC, 0)
        assert _record_counts(log, 10) == [3, 1, 4, 2]
        fill(log, [5])
        reopened._db.flush()
        assert _record_counts(log, 15) == [3, 1, 4, 2, 5]
    finally:
        reopened.close()


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_folder_without_direct_io_keeps_buffered_writes(
    refused_at: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses O_DIRECT, at open or at the first write, makes the probe
    answer False (and leaves no probe file), and a store asked for direct I/O flushes
    through the page cache instead."""
    real_open, real_write = os.open, os.write
    direct_fds: set[int] = set()

    def open_(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT and refused_at == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, mode)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def write(fd: int, data: bytes | memoryview | mmap.mmap) -> int:
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(log_store.os, "open", open_)
    monkeypatch.setattr(log_store.os, "write", write)
    assert not log_store.supports_direct_io(tmp_path)
    assert not list(tmp_path.iterdir()), "the probe file is removed"
    with structlog.testing.capture_logs() as logged:
        store = LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE, direct_io=True)
    try:
        assert not store.direct_io
        refused = [e for e in logged if e["event"] == "log_store.direct_io_refused"]
        assert [e["log_level"] for e in refused] == ["warning"]
        opened = [e for e in logged if e["event"] == "log_store.opened"]
        assert [e["direct_io"] for e in opened] == [False]
        path = tmp_path / "store"
        assert _rocksdb_option(path, "use_direct_io_for_flush_and_compaction") == "false"
        log = store.open_partition(TOPIC, 0)
        fill(log, [5])
        store._db.flush()
        assert _record_counts(log, 5) == [5]
    finally:
        store.close()


def test_a_store_directory_in_use_is_a_storage_error(store: LogStore, tmp_path: Path) -> None:
    with pytest.raises(RaftmqError) as excinfo:
        LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE)
    assert excinfo.value.code is ErrorCode.KAFKA_STORAGE_ERROR


# --- model-based test ------------------------------------------------------------------------


class ModelLog:
    """The obvious in-memory log: a list of stamped batches and the same rules, naively."""

    def __init__(self) -> None:
        self.batches: list[tuple[BatchHeader, bytes]] = []
        self.log_start_offset = 0
        self.high_watermark = 0
        self.end_offset = 0
        self.epochs: list[tuple[int, int]] = []

    @property
    def size_bytes(self) -> int:
        return sum(len(b) for _, b in self.batches)

    def latest_epoch(self) -> int:
        return self.epochs[-1][0] if self.epochs else -1

    def assign(self, epoch: int, start_offset: int) -> None:
        if self.epochs and self.epochs[-1][0] == epoch and start_offset >= self.epochs[-1][1]:
            return
        self.epochs = [e for e in self.epochs if e[0] < epoch and e[1] < start_offset]
        self.epochs.append((epoch, start_offset))

    def append(self, batch: bytes) -> None:
        header = read_header(batch)
        assert header.base_offset == self.end_offset
        if header.partition_leader_epoch >= 0:
            self.assign(header.partition_leader_epoch, header.base_offset)
        self.batches.append((header, batch))
        self.end_offset = header.next_offset

    def truncate_to(self, offset: int) -> None:
        if offset >= self.end_offset:
            # Kafka's UnifiedLog.truncateTo: the epoch cache is truncated at the log end
            # even then (an epoch a leader assigned but never wrote in must go).
            self.epochs = [e for e in self.epochs if e[1] < self.end_offset]
            return
        if offset < self.log_start_offset:
            self.truncate_fully(offset)
            return
        cut = next(h.base_offset for h, _ in self.batches if offset < h.next_offset)
        self.batches = [(h, b) for h, b in self.batches if h.base_offset < cut]
        self.end_offset = cut
        self.high_watermark = min(self.high_watermark, cut)
        self.epochs = [e for e in self.epochs if e[1] < cut]

    def truncate_fully(self, offset: int) -> None:
        self.batches = []
        self.epochs = []
        self.log_start_offset = self.high_watermark = self.end_offset = offset

    def retention(self, now_ms: int, retention_ms: int, retention_bytes: int, limit: int) -> int:
        removed = 0
        while self.batches and removed < limit:
            header, _batch = self.batches[0]
            expired = retention_ms >= 0 and header.max_timestamp < now_ms - retention_ms
            oversize = retention_bytes >= 0 and self.size_bytes > retention_bytes
            if header.next_offset > self.high_watermark or not (expired or oversize):
                break
            self.batches.pop(0)
            removed += 1
        if removed == 0:
            return 0
        old_start = self.log_start_offset
        self.log_start_offset = self.batches[0][0].base_offset if self.batches else self.end_offset
        before = [e for e in self.epochs if e[1] <= self.log_start_offset]
        if before:
            self.epochs = [(before[-1][0], self.log_start_offset)] + [
                e for e in self.epochs if e[1] > self.log_start_offset
            ]
        return self.log_start_offset - old_start

    def read(self, fetch_offset: int, max_bytes: int, upper_offset: int) -> bytes:
        chosen: list[bytes] = []
        for header, batch in self.batches:
            if header.next_offset <= fetch_offset or header.base_offset >= upper_offset:
                continue
            if chosen and sum(map(len, chosen)) + len(batch) > max_bytes:
                break
            chosen.append(batch)
        return b"".join(chosen)

    def end_offset_for(self, epoch: int) -> tuple[int, int]:
        if epoch == -1 or not self.epochs:
            return -1, -1
        if self.epochs[-1][0] == epoch:
            return epoch, self.end_offset
        higher = [e for e in self.epochs if e[0] > epoch]
        lower = [e for e in self.epochs if e[0] <= epoch]
        if not higher:
            return -1, -1
        if not lower:
            return epoch, higher[0][1]
        return lower[-1][0], higher[0][1]


class PartitionLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "store"
        self.store = LogStore(self.path, flush_policy=FlushPolicy.NONE)
        self.log = self.store.open_partition(TOPIC, 7)
        self.model = ModelLog()
        self.clock_ms = 0

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    @rule(count=st.integers(1, 4), bump=st.booleans(), ts_step_ms=st.integers(0, 50))
    def append_as_leader(self, count: int, bump: bool, ts_step_ms: int) -> None:
        self.clock_ms += ts_step_ms
        epoch = max(0, self.model.latest_epoch() + (1 if bump else 0))
        header = self.log.append_as_leader(
            make_batch(count, ts_ms=self.clock_ms), leader_epoch=epoch
        )
        self.model.append(
            self.log.read(header.base_offset, max_bytes=1, upper_offset=header.next_offset)
        )

    @rule(sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3), epoch_delta=st.integers(-1, 2))
    def append_as_follower(self, sizes: list[int], epoch_delta: int) -> None:
        epoch = max(0, self.model.latest_epoch() + epoch_delta)
        chunk = follower_chunk(self.model.end_offset, sizes, epoch=epoch)
        assert self.log.append_as_follower(chunk) == self.model.end_offset + sum(sizes)
        for _, batch in iter_batches(chunk):
            self.model.append(batch)

    @rule()
    def become_leader(self) -> None:
        epoch = self.model.latest_epoch() + 1
        self.log.assign_epoch(epoch, self.model.end_offset)
        self.model.assign(epoch, self.model.end_offset)

    @rule(data=st.data())
    def advance_high_watermark(self, data: st.DataObject) -> None:
        hw = data.draw(st.integers(self.model.high_watermark, self.model.end_offset))
        self.log.maybe_advance_high_watermark(hw)
        self.model.high_watermark = hw

    @rule(data=st.data())
    def truncate_to(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(0, self.model.end_offset + 2))
        self.log.truncate_to(offset)
        self.model.truncate_to(offset)

    @rule(extra=st.integers(0, 10))
    def truncate_fully(self, extra: int) -> None:
        offset = self.model.end_offset + extra
        self.log.truncate_fully_and_start_at(offset)
        self.model.truncate_fully(offset)

    @rule(
        retention_ms=st.integers(-1, 100),
        retention_bytes=st.integers(-1, 1500),
        batches_max=st.integers(1, 4),
    )
    def retention(self, retention_ms: int, retention_bytes: int, batches_max: int) -> None:
        removed = self.log.enforce_retention(
            now_ms=self.clock_ms,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            batches_max=batches_max,
        )
        assert removed == self.model.retention(
            self.clock_ms, retention_ms, retention_bytes, batches_max
        )

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = LogStore(self.path, flush_policy=FlushPolicy.NONE)
        self.log = self.store.open_partition(TOPIC, 7)

    @precondition(lambda self: self.model.end_offset > self.model.log_start_offset)
    @rule(data=st.data(), max_bytes=st.integers(1, 600), to_high_watermark=st.booleans())
    def read(self, data: st.DataObject, max_bytes: int, to_high_watermark: bool) -> None:
        upper = self.model.high_watermark if to_high_watermark else self.model.end_offset
        fetch = data.draw(st.integers(self.model.log_start_offset, self.model.end_offset))
        expected = b"" if fetch >= upper else self.model.read(fetch, max_bytes, upper)
        assert self.log.read(fetch, max_bytes=max_bytes, upper_offset=upper) == expected

    @invariant()
    def same_state(self) -> None:
        model = self.model
        assert self.log.log_start_offset == model.log_start_offset
        assert self.log.log_end_offset == model.end_offset
        assert self.log.high_watermark == model.high_watermark
        assert self.log.size_bytes == model.size_bytes
        assert list(self.log.epoch_entries) == model.epochs
        for epoch in range(-1, model.latest_epoch() + 2):
            assert self.log.end_offset_for_epoch(epoch) == model.end_offset_for(epoch)
        everything = self.log.read(
            model.log_start_offset, max_bytes=10**9, upper_offset=model.end_offset
        )
        assert everything == b"".join(b for _, b in model.batches)


PartitionLogMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=30, deadline=None
)
TestPartitionLogAgainstModel = PartitionLogMachine.TestCase


# --- idempotent producers ------------------------------------------------------------------


def idempotent_batch(seq: int, count: int, *, producer_id: int = 7, epoch: int = 0) -> bytes:
    return encode_batch(
        [Message(f"p{seq + i}", timestamp_ms=1_000) for i in range(count)],
        producer_id=producer_id,
        producer_epoch=epoch,
        base_sequence=seq,
    )


def test_a_retried_batch_is_answered_with_its_original_offsets_and_not_stored(
    log: PartitionLog,
) -> None:
    first = log.append_as_leader(idempotent_batch(0, 3), leader_epoch=0)
    log.append_as_leader(idempotent_batch(3, 2), leader_epoch=0)
    retry = log.append_as_leader(idempotent_batch(0, 3), leader_epoch=0)
    assert (retry.base_offset, retry.next_offset, retry.duplicate) == (0, 3, True)
    assert not first.duplicate and log.log_end_offset == 5
    with pytest.raises(RaftmqError) as e:
        log.append_as_leader(idempotent_batch(9, 1), leader_epoch=0)
    assert e.value.code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert log.log_end_offset == 5


def test_producer_state_survives_a_restart_whole(tmp_path: Path) -> None:
    with LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE) as store:
        log = store.open_partition(TOPIC, 0)
        for i in range(6):
            log.append_as_leader(idempotent_batch(2 * i, 2), leader_epoch=0)
    with LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE) as store:
        log = store.open_partition(TOPIC, 0)
        # All five batches of the window are known again, not just the last.
        for i in range(1, 6):
            assert log.append_as_leader(idempotent_batch(2 * i, 2), leader_epoch=0).duplicate
        assert log.append_as_leader(idempotent_batch(12, 1), leader_epoch=0).base_offset == 12


def test_a_follower_builds_the_same_state_and_truncation_cuts_it(tmp_path: Path) -> None:
    with (
        LogStore(tmp_path / "a", flush_policy=FlushPolicy.NONE) as leader_store,
        LogStore(tmp_path / "b", flush_policy=FlushPolicy.NONE) as follower_store,
    ):
        leader = leader_store.open_partition(TOPIC, 0)
        follower = follower_store.open_partition(TOPIC, 0)
        for i in range(3):
            leader.append_as_leader(idempotent_batch(2 * i, 2), leader_epoch=0)
        follower.append_as_follower(leader.read(0, max_bytes=1 << 20, upper_offset=6))
        entry = follower.producers.get(7)
        assert entry is not None and [b.base_offset for b in entry.batches] == [0, 2, 4]
        # As a new leader it recognises the retry of the last batch.
        assert follower.append_as_leader(idempotent_batch(4, 2), leader_epoch=1).duplicate
        follower.truncate_to(2)
        entry = follower.producers.get(7)
        assert entry is not None and [b.base_offset for b in entry.batches] == [0]
        # The truncated batch is written again when retried, not answered as a duplicate.
        assert not follower.append_as_leader(idempotent_batch(2, 2), leader_epoch=2).duplicate
