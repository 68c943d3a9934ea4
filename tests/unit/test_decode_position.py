"""Decoding for a consumer: topic and partition filled in by the codec, records below the
fetch position skipped without being built, and whole fetch responses decoded in place.

Every case runs against both records codecs (`impl`), as in test_record_batch.py, and the
fuzz cases check that the two agree."""

from __future__ import annotations

import sys
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raftmq.client.conn import decode_from
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import (
    HEADER_SIZE,
    decode_batch,
    decode_batches,
    encode_batch,
    stamp_batch,
)

from tests.unit.test_record_batch import (
    CODECS,
    GOOD_RECORD,
    IMPLEMENTATIONS,
    NOW_MS,
    _codec,
    _codec_py,
    messages_st,
    record,
    using,
    with_fixed_crc,
    with_records,
)

TOPIC = "orders"


def stored(messages: list[Message], base_offset: int, compression: int = 0) -> bytes:
    """A batch as a fetch returns it: encoded, then stamped by the leader."""
    batch = encode_batch(messages, compression=compression, now_ms=NOW_MS)
    return stamp_batch(batch, base_offset=base_offset, partition_leader_epoch=3)


def located(messages: list[Message], partition: int, min_offset: int) -> list[Message]:
    """What a position-aware decode must give: the plain decode, filtered and labelled."""
    out = []
    for m in messages:
        if m.offset >= min_offset:
            m.topic, m.partition = TOPIC, partition
            out.append(m)
    return out


def corrupt_or(impl: ModuleType, data: bytes, min_offset: int) -> list[Message] | str:
    with using(impl):
        try:
            return decode_batch(data, topic=TOPIC, partition=1, min_offset=min_offset)
        except RaftmqError as e:
            assert e.code is ErrorCode.CORRUPT_MESSAGE
            return "corrupt"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(messages_st, st.sampled_from(CODECS), st.integers(0, 2**40), st.data())
@settings(max_examples=150)
def test_the_position_skips_exactly_the_records_before_it(
    impl: ModuleType,
    messages: list[Message],
    compression: int,
    base_offset: int,
    data: st.DataObject,
) -> None:
    batch = stored(messages, base_offset, compression)
    min_offset = data.draw(st.integers(base_offset - 2, base_offset + len(messages) + 1))
    partition = data.draw(st.integers(0, 2**31 - 1))
    with using(impl):
        got = decode_batch(batch, topic=TOPIC, partition=partition, min_offset=min_offset)
        everything = decode_batch(batch)
    assert got == located(everything, partition, min_offset)
    assert all(m.topic is None and m.partition is None for m in decode_batch(batch))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_negative_position_skips_nothing(impl: ModuleType) -> None:
    """Even records at negative offsets (a forged base offset) are kept by the default."""
    batch = stamp_batch(
        encode_batch([Message(b"a"), Message(b"b")]), base_offset=0, partition_leader_epoch=0
    )
    with using(impl):
        assert [m.value for m in decode_batch(batch, min_offset=-1)] == [b"a", b"b"]
        raw = impl.decode_records(
            batch, HEADER_SIZE, 2, base_offset=-5, base_timestamp_ms=0, log_append_time_ms=None
        )
    assert [m.offset for m in raw] == [-5, -4]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_batch_wholly_before_the_position_is_not_even_decompressed(impl: ModuleType) -> None:
    """Garbage gzip behind a valid CRC: refused when read, ignored when already read."""
    garbage = with_records(b"\x1f\x8b not gzip", count=1, attributes=1)
    with using(impl):
        assert decode_batch(garbage, min_offset=1) == []
        with pytest.raises(RaftmqError):
            decode_batch(garbage, min_offset=0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_skipped_records_are_still_checked_but_their_header_keys_not_decoded(
    impl: ModuleType,
) -> None:
    # Record 0 has a value that overruns it; record 1 is good.
    overrun = record(b"\x00\x00\x00\x01\x40v\x00") + record(b"\x00\x00\x02\x01\x02w\x00")
    # Record 0 has a header key that is not UTF-8; record 1 is good.
    bad_key = record(b"\x00\x00\x00\x01\x02v\x02\x02\xff\x00") + record(
        b"\x00\x00\x02\x01\x02w\x00"
    )
    with using(impl):
        for min_offset in (0, 1):
            with pytest.raises(RaftmqError, match="overruns"):
                decode_batch(with_records(overrun, count=2), min_offset=min_offset)
        with pytest.raises(RaftmqError, match="utf-8"):
            decode_batch(with_records(bad_key, count=2), min_offset=0)
        [kept] = decode_batch(with_records(bad_key, count=2), min_offset=1)
    assert (kept.offset, kept.value) == (1, b"w")


@given(messages_st, st.sampled_from(CODECS), st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_both_codecs_agree_on_mutated_batches_at_any_position(
    messages: list[Message], compression: int, data: st.DataObject
) -> None:
    if _codec is None:
        pytest.skip("raftmq._codec is not built")
    batch = bytearray(stored(messages, 0, compression))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(HEADER_SIZE, len(batch) - 1))
        batch[pos] = data.draw(st.integers(0, 255))
    min_offset = data.draw(st.integers(-1, len(messages)))
    mutated = with_fixed_crc(batch)
    assert corrupt_or(_codec, mutated, min_offset) == corrupt_or(_codec_py, mutated, min_offset)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_topic_and_partition_must_be_str_and_int(impl: ModuleType) -> None:
    batch = stored([Message(b"v")], 0)
    with using(impl):
        with pytest.raises(TypeError, match="topic"):
            decode_batch(batch, topic=b"orders")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="partition"):
            decode_batch(batch, partition="0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="base_offset"):
        impl.decode_records(batch, HEADER_SIZE, 1, base_timestamp_ms=0, log_append_time_ms=None)


@pytest.mark.skipif(_codec is None, reason="not built")
def test_the_compiled_codec_keeps_no_reference_it_should_not() -> None:
    """Each message holds one reference to the topic and partition objects, and the records
    skipped leave nothing behind (checked by reference counts)."""
    topic = "".join(["ord", "ers"])  # a fresh str, not an interned constant
    partition = int("1" * 30)  # a fresh int, not a small-int singleton
    batch = stored([Message(bytes([i])) for i in range(10)], 100)
    before = sys.getrefcount(topic), sys.getrefcount(partition)
    with using(_codec):
        kept = decode_batch(batch, topic=topic, partition=partition, min_offset=104)
    assert len(kept) == 6
    assert sys.getrefcount(topic) == before[0] + 6
    assert sys.getrefcount(partition) == before[1] + 6
    del kept
    assert (sys.getrefcount(topic), sys.getrefcount(partition)) == before


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_fetch_response_is_decoded_from_the_position_on(impl: ModuleType) -> None:
    batches = [
        stored([Message(f"{o}".encode()) for o in range(start, start + 4)], start)
        for start in (10, 14, 18)
    ]
    records = b"".join(batches)
    with using(impl):
        got = decode_from(records, TOPIC, 2, 15)
        assert decode_batches(memoryview(records)) == decode_batches(records)
        assert decode_batches(b"") == []
    assert [m.offset for m in got] == list(range(15, 22))
    assert [m.value for m in got] == [f"{o}".encode() for o in range(15, 22)]
    assert {(m.topic, m.partition) for m in got} == {(TOPIC, 2)}


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\x00" * 20, id="shorter-than-a-header"),
        pytest.param(GOOD_RECORD * 10, id="garbage-length"),
    ],
)
def test_a_truncated_or_garbage_fetch_response_is_corrupt(tail: bytes) -> None:
    whole = stored([Message(b"v")], 0)
    for records in (whole + tail, whole[:-1], whole[: HEADER_SIZE - 1]):
        with pytest.raises(RaftmqError) as excinfo:
            decode_batches(records)
        assert excinfo.value.code is ErrorCode.CORRUPT_MESSAGE
