"""Log compaction on a real RocksDB log (`raftmq.broker.log_cleaner`): the latest record
per key survives, offsets stay offsets (holes), tombstones go after delete.retention.ms,
the tail at and above the high watermark is never touched, and a compacted log replicates
to a new follower (which accepts the holes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftmq.broker.log_cleaner import LogCleaner
from raftmq.broker.log_store import FlushPolicy, LogStore
from raftmq.broker.partition_log import PartitionLog
from raftmq.broker.partition_replica import FetchReply, PartitionReplica
from raftmq.compression import CODEC_GZIP, CODEC_NONE
from raftmq.message import Message
from raftmq.metadata import PartitionRecord
from raftmq.record_batch import decode_batches, encode_batch
from raftmq.topic_config import TopicConfig

TOPIC = bytes(range(16))
WALL = 1_700_000_000_000
COMPACT = TopicConfig(cleanup_policy="compact", delete_retention_ms=60_000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    s = LogStore(tmp_path / "store", flush_policy=FlushPolicy.NONE)
    yield s
    s.close()


def leader(
    store: LogStore, index: int = 0, config: TopicConfig = COMPACT
) -> PartitionReplica[PartitionLog]:
    replica = PartitionReplica(
        broker_id=1,
        topic="c",
        topic_id=TOPIC,
        index=index,
        log=store.open_partition(TOPIC, index),
        config=config,
    )
    # Alone in its ISR: the HW follows the log end.
    replica.apply_metadata(
        PartitionRecord(ar=(1,), isr=(1,), leader=1, leader_epoch=0, partition_epoch=0),
        config,
        now_ms=0,
    )
    return replica


def write(
    replica: PartitionReplica[PartitionLog],
    *records: tuple[bytes | None, bytes | None],
    codec: int = CODEC_NONE,
    ts: int = WALL,
) -> None:
    batch = encode_batch(
        [Message(value, key, timestamp_ms=ts) for key, value in records], compression=codec
    )
    replica.append_as_leader(batch, acks=1, current_leader_epoch=0)


def read(
    log: PartitionLog, upper: int | None = None
) -> list[tuple[int, bytes | None, bytes | None]]:
    end = log.high_watermark if upper is None else upper
    out = []
    offset = log.log_start_offset
    while offset < end:
        records, offset_after = log.read_with_end(offset, max_bytes=1 << 20, upper_offset=end)
        if not records:
            break
        out.extend((m.offset, m.key, m.value) for m in decode_batches(records, min_offset=offset))
        offset = offset_after
    return out


def clean(replica: PartitionReplica[PartitionLog], wall_ms: int = WALL) -> None:
    cleaner = LogCleaner(lambda: [replica], is_current=lambda r: True, on_fatal=pytest.fail)
    asyncio.run(cleaner.clean(replica, wall_ms=wall_ms))


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_GZIP])
def test_the_latest_record_per_key_survives_at_its_offset(store: LogStore, codec: int) -> None:
    r = leader(store)
    write(r, (b"a", b"a0"), (b"b", b"b0"), codec=codec)  # 0, 1
    write(r, (b"a", b"a1"), (None, b"keyless"), codec=codec)  # 2, 3
    write(r, (b"b", b"b1"), codec=codec)  # 4
    write(r, (b"a", b"a2"), codec=codec)  # 5: the last batch, never touched
    before = r.log.size_bytes
    clean(r)
    # a1 is superseded by a2 (in the last batch, which is read but never rewritten).
    assert read(r.log) == [(3, None, b"keyless"), (4, b"b", b"b1"), (5, b"a", b"a2")]
    # The first batch held only superseded records: it is gone and the log starts after.
    assert r.log.log_start_offset == 2 and r.log.log_end_offset == 6
    assert r.log.size_bytes < before
    # A second pass over the same log changes nothing; new writes are compacted later.
    clean(r)
    assert [o for o, _, _ in read(r.log)] == [3, 4, 5]
    write(r, (b"b", b"b2"))
    clean(r)
    assert read(r.log) == [(3, None, b"keyless"), (5, b"a", b"a2"), (6, b"b", b"b2")]


def test_tombstones_go_after_the_retention_and_not_before(store: LogStore) -> None:
    r = leader(store)
    write(r, (b"a", b"a0"))
    write(r, (b"a", None))  # the deletion of a, at WALL
    write(r, (b"z", b"tail"))
    clean(r, wall_ms=WALL + 1_000)
    assert read(r.log) == [(1, b"a", None), (2, b"z", b"tail")]
    clean(r, wall_ms=WALL + 61_000)
    assert read(r.log) == [(2, b"z", b"tail")]


def test_the_tail_above_the_high_watermark_is_never_touched(store: LogStore) -> None:
    r = PartitionReplica(
        broker_id=1,
        topic="c",
        topic_id=TOPIC,
        index=1,
        log=store.open_partition(TOPIC, 1),
        config=COMPACT,
    )
    # A follower of ISR {1, 2}: the HW stays where broker 2 is (nowhere yet).
    r.apply_metadata(
        PartitionRecord(ar=(1, 2), isr=(1, 2), leader=1, leader_epoch=0, partition_epoch=0),
        COMPACT,
        now_ms=0,
    )
    for i in range(5):
        write(r, (b"k", b"v%d" % i))
    assert r.log.high_watermark == 0
    clean(r)
    assert len(read(r.log, upper=r.log.log_end_offset)) == 5


def test_a_compacted_log_replicates_to_a_new_follower(store: LogStore) -> None:
    r = leader(store)
    for i in range(6):
        write(r, (b"k%d" % (i % 2), b"v%d" % i))
    clean(r)
    assert [o for o, _, _ in read(r.log)] == [4, 5]
    follower = PartitionReplica(
        broker_id=2,
        topic="c",
        topic_id=TOPIC,
        index=7,
        log=store.open_partition(TOPIC, 7),
        config=COMPACT,
    )
    follower.apply_metadata(
        PartitionRecord(ar=(1, 2), isr=(1,), leader=1, leader_epoch=0, partition_epoch=0),
        COMPACT,
        now_ms=0,
    )
    # The follower starts at the leader's log start (the diverging-epoch answer for an
    # empty follower), then fetches the batches with their holes.
    follower.log.truncate_fully_and_start_at(r.log.log_start_offset)
    for _ in range(5):
        offset = follower.log.log_end_offset
        if offset >= r.log.log_end_offset:
            break
        records, _ = r.log.read_with_end(
            offset, max_bytes=1 << 20, upper_offset=r.log.log_end_offset
        )
        follower.on_fetch_reply(
            FetchReply(records=records, high_watermark=r.log.high_watermark), leader_epoch=0
        )
    assert follower.log.log_end_offset == r.log.log_end_offset
    assert read(follower.log) == read(r.log)


def follower_of(store: LogStore, index: int) -> PartitionReplica[PartitionLog]:
    follower = PartitionReplica(
        broker_id=2,
        topic="c",
        topic_id=TOPIC,
        index=index,
        log=store.open_partition(TOPIC, index),
        config=COMPACT,
    )
    follower.apply_metadata(
        PartitionRecord(ar=(1, 2), isr=(1,), leader=1, leader_epoch=0, partition_epoch=0),
        COMPACT,
        now_ms=0,
    )
    return follower


def replicate(
    leader_log: PartitionLog, follower: PartitionReplica[PartitionLog], fetch_bytes_max: int
) -> None:
    """Fetch from the leader's log end to end, as the replica fetcher does."""
    for _ in range(100):  # bound: far more fetches than the log has batches
        offset = follower.log.log_end_offset
        if offset >= leader_log.log_end_offset:
            return
        records, _ = leader_log.read_with_end(
            offset, max_bytes=fetch_bytes_max, upper_offset=leader_log.log_end_offset
        )
        follower.on_fetch_reply(
            FetchReply(records=records, high_watermark=leader_log.high_watermark),
            leader_epoch=0,
        )


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_GZIP])
@pytest.mark.parametrize("fetch_bytes_max", [1, 1 << 20])
def test_a_follower_behind_the_cleaner_replicates_the_batches_it_rewrote(
    store: LogStore, codec: int, fetch_bytes_max: int
) -> None:
    """The chaos run seed 6002 (consumer group g0 never rejoined): followers of
    __consumer_offsets-1 cut off by a partition came back behind batches the leader's
    cleaner had rewritten (some records superseded). A rewritten batch keeps its
    last_offset_delta (offsets stay offsets) with fewer records, and the follower's append
    refused it as CORRUPT_MESSAGE on every fetch: the ISR stayed {leader}, below
    min.insync.replicas, so every group write (each join) failed for good."""
    r = leader(store)
    write(r, (b"a", b"a0"), (b"b", b"b0"), codec=codec)  # 0, 1
    write(r, (b"z", b"tail"), codec=codec)  # 2
    follower = follower_of(store, 8)
    replicate(r.log, follower, fetch_bytes_max)  # caught up, then cut off
    write(r, (b"a", b"a1"), (b"c", b"c0"), (b"e", b"e0"), codec=codec)  # 3, 4, 5
    write(r, (b"a", b"a2"), (b"c", b"c1"), codec=codec)  # 6, 7
    write(r, (b"g", b"g0"), (b"h", b"h0"), (b"i", b"i0"), codec=codec)  # 8, 9, 10
    write(r, (b"g", b"g1"), (b"i", b"i1"), codec=codec)  # 11, 12
    write(r, (b"z", b"tail2"), codec=codec)  # 13: the last batch, never touched
    clean(r)
    # Batch 3-5 keeps e0 at 5 only, batch 8-10 keeps h0 at 9 only: both rewritten, with
    # their last_offset_delta (2) and one record each.
    expected = [
        (1, b"b", b"b0"),
        (5, b"e", b"e0"),
        (6, b"a", b"a2"),
        (7, b"c", b"c1"),
        (9, b"h", b"h0"),
        (11, b"g", b"g1"),
        (12, b"i", b"i1"),
        (13, b"z", b"tail2"),
    ]
    assert read(r.log) == expected
    replicate(r.log, follower, fetch_bytes_max)
    assert follower.log.log_end_offset == r.log.log_end_offset == 14
    assert [m for m in read(follower.log, upper=14) if m[0] >= 3] == expected[1:]
    # A new follower (from the leader's log start) as well.
    fresh = follower_of(store, 9)
    fresh.log.truncate_fully_and_start_at(r.log.log_start_offset)
    replicate(r.log, fresh, fetch_bytes_max)
    assert read(fresh.log, upper=14) == expected


def test_the_cleaner_compacts_only_compacted_topics(store: LogStore) -> None:
    kept = leader(store, index=3, config=TopicConfig())
    compacted = leader(store, index=4)
    for r in (kept, compacted):
        for i in range(4):
            write(r, (b"k", b"v%d" % i))

    async def run() -> None:
        cleaner = LogCleaner(
            lambda: [kept, compacted],
            is_current=lambda r: True,
            on_fatal=pytest.fail,
            interval_ms=10,
        )
        cleaner.start()
        try:
            for _ in range(500):  # bound: 5 s
                if cleaner.passes:
                    break
                await asyncio.sleep(0.01)
        finally:
            await cleaner.stop()
        assert cleaner.passes >= 1

    asyncio.run(run())
    assert len(read(kept.log)) == 4
    assert [v for _, _, v in read(compacted.log)] == [b"v3"]
