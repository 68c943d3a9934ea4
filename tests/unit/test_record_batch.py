"""The batch codec: round trips, stamping, and rejection of every malformed input."""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.record_batch import (
    HEADER_SIZE,
    MAGIC,
    Record,
    decode_records,
    encode_batch,
    iter_batches,
    read_header,
    stamp_batch,
    validate_batch,
)

MAX_BYTES = 1 << 20
# Bytes [0, 8) and [12, 16): the fields the leader stamps, outside the CRC.
STAMPED_POSITIONS = frozenset(range(8)) | frozenset(range(12, 16))

records_st = st.lists(
    st.builds(
        Record,
        key=st.none() | st.binary(max_size=20),
        value=st.none() | st.binary(max_size=40),
        timestamp_ms=st.integers(min_value=-(2**40), max_value=2**40),
    ),
    min_size=1,
    max_size=12,
)


def with_fixed_crc(data: bytes | bytearray) -> bytes:
    """`data` with its CRC recomputed, so that checks behind the CRC can be reached."""
    fixed = bytearray(data)
    if len(fixed) >= HEADER_SIZE:
        struct.pack_into(">I", fixed, 17, crc32c.crc32c(bytes(fixed[21:])))
    return bytes(fixed)


def patch(data: bytes, fmt: str, pos: int, value: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, pos, value)
    return with_fixed_crc(patched)


def assert_corrupt(data: bytes) -> RaftmqError:
    with pytest.raises(RaftmqError) as excinfo:
        validate_batch(data, max_bytes=MAX_BYTES)
    assert excinfo.value.code is ErrorCode.CORRUPT_MESSAGE
    return excinfo.value


SAMPLE = encode_batch(
    [Record(b"k1", b"v1", 1000), Record(None, b"", 1002), Record(b"", None, 1001)],
    producer_id=7,
    producer_epoch=1,
    base_sequence=40,
)


@given(records_st, st.integers(-1, 2**40), st.integers(-1, 100), st.integers(-1, 2**31 - 1))
@settings(max_examples=150)
def test_round_trip_keeps_every_record(
    records: list[Record], producer_id: int, producer_epoch: int, base_sequence: int
) -> None:
    data = encode_batch(
        records, producer_id=producer_id, producer_epoch=producer_epoch, base_sequence=base_sequence
    )
    header = validate_batch(data, max_bytes=MAX_BYTES)
    assert header.size_bytes == len(data)
    assert header.magic == MAGIC
    assert header.base_offset == 0
    assert header.partition_leader_epoch == -1
    assert header.record_count == len(records)
    assert header.last_offset_delta == len(records) - 1
    assert header.base_timestamp == min(r.timestamp_ms for r in records)
    assert header.max_timestamp == max(r.timestamp_ms for r in records)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (
        producer_id,
        producer_epoch,
        base_sequence,
    )
    decoded = decode_records(data)
    assert decoded == [
        Record(r.key, r.value, r.timestamp_ms, offset=i) for i, r in enumerate(records)
    ]


@given(records_st, st.integers(0, 2**62), st.integers(-1, 2**31 - 1))
@settings(max_examples=50)
def test_stamping_keeps_the_crc_valid_and_shows_in_decode(
    records: list[Record], base_offset: int, leader_epoch: int
) -> None:
    data = encode_batch(records)
    stamped = stamp_batch(data, base_offset=base_offset, partition_leader_epoch=leader_epoch)
    assert len(stamped) == len(data)
    assert stamped[16:] == data[16:]
    header = validate_batch(stamped, max_bytes=MAX_BYTES)
    assert header.base_offset == base_offset
    assert header.partition_leader_epoch == leader_epoch
    assert header.crc == read_header(data).crc
    assert header.last_offset == base_offset + len(records) - 1
    assert header.next_offset == base_offset + len(records)
    assert [r.offset for r in decode_records(stamped)] == [
        base_offset + i for i in range(len(records))
    ]


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_flip_is_rejected_unless_in_a_stamped_field(mask: int) -> None:
    for pos in range(len(SAMPLE)):
        flipped = bytearray(SAMPLE)
        flipped[pos] ^= mask
        if pos in STAMPED_POSITIONS:
            header = validate_batch(bytes(flipped), max_bytes=MAX_BYTES)
            assert header.record_count == 3
        else:
            assert_corrupt(bytes(flipped))


@given(records_st, st.data())
@settings(max_examples=50)
def test_random_single_byte_flips(records: list[Record], data: st.DataObject) -> None:
    batch = encode_batch(records)
    pos = data.draw(st.integers(0, len(batch) - 1))
    mask = data.draw(st.integers(1, 255))
    flipped = bytearray(batch)
    flipped[pos] ^= mask
    if pos in STAMPED_POSITIONS:
        validate_batch(bytes(flipped), max_bytes=MAX_BYTES)
    else:
        assert_corrupt(bytes(flipped))


def _never_raises_other_errors(data: bytes) -> None:
    """validate / iter / decode either succeed or raise RaftmqError CORRUPT_MESSAGE."""
    try:
        header = validate_batch(data, max_bytes=MAX_BYTES)
    except RaftmqError as e:
        assert e.code is ErrorCode.CORRUPT_MESSAGE
    else:
        # Whatever validate accepts, the client can decode.
        assert len(decode_records(data)) == header.record_count
    try:
        for _header, _batch in iter_batches(data):
            pass
    except RaftmqError as e:
        assert e.code is ErrorCode.CORRUPT_MESSAGE
    try:
        decode_records(data)
    except RaftmqError as e:
        assert e.code is ErrorCode.CORRUPT_MESSAGE


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_raftmq_errors(data: bytes) -> None:
    _never_raises_other_errors(data)


@given(records_st, st.data())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_mutations_behind_a_valid_crc_only_raise_raftmq_errors(
    records: list[Record], data: st.DataObject
) -> None:
    """Mutate a valid batch and fix its CRC, so the checks after the CRC are exercised."""
    batch = bytearray(encode_batch(records))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(batch) - 1))
        width = data.draw(st.sampled_from([1, 2, 4]))
        batch[pos : pos + width] = data.draw(st.binary(min_size=width, max_size=width))
    if data.draw(st.booleans()):
        batch = batch[: data.draw(st.integers(0, len(batch)))]
    _never_raises_other_errors(with_fixed_crc(batch))


def test_oversized_batch_is_message_too_large() -> None:
    with pytest.raises(RaftmqError) as excinfo:
        validate_batch(SAMPLE, max_bytes=len(SAMPLE) - 1)
    assert excinfo.value.code is ErrorCode.MESSAGE_TOO_LARGE
    validate_batch(SAMPLE, max_bytes=len(SAMPLE))


def test_two_concatenated_batches_are_rejected_by_validate_but_split_by_iter() -> None:
    first = stamp_batch(SAMPLE, base_offset=10, partition_leader_epoch=2)
    second = stamp_batch(
        encode_batch([Record(b"x", b"y", 5)]), base_offset=13, partition_leader_epoch=3
    )
    error = assert_corrupt(first + second)
    assert "exactly one batch" in error.message
    split = list(iter_batches(first + second))
    assert [(h.base_offset, h.partition_leader_epoch) for h, _ in split] == [(10, 2), (13, 3)]
    assert [b for _, b in split] == [first, second]
    assert list(iter_batches(b"")) == []


def test_iter_batches_raises_on_a_truncated_or_garbage_tail_after_the_good_batches() -> None:
    for tail in (SAMPLE[:-1], SAMPLE[:30], b"\x00" * 70, with_fixed_crc(b"\x00" * 70)):
        seen: list[int] = []
        with pytest.raises(RaftmqError) as excinfo:
            for header, _ in iter_batches(SAMPLE + tail):
                seen.append(header.record_count)
        assert excinfo.value.code is ErrorCode.CORRUPT_MESSAGE
        assert seen == [3]


@pytest.mark.parametrize(
    ("fmt", "pos", "value", "reason"),
    [
        (">b", 16, 1, "magic"),
        (">h", 21, 1, "compression codec"),
        (">h", 21, 4, "compression codec"),
        (">h", 21, 8, "attributes"),
        (">i", 57, 0, "record_count"),
        (">i", 57, -3, "record_count"),
        (">i", 23, 5, "last_offset_delta"),
        (">q", 35, 999, "max_timestamp"),  # below base_timestamp
        (">q", 35, 1001, "outside"),  # a record (1002) above max_timestamp
        (">q", 27, 1001, "outside"),  # a record (1000) below base_timestamp
        (">i", HEADER_SIZE, -2, "below -1"),  # key length
        (">i", HEADER_SIZE + 12, 3, "payload"),  # value length: sum no longer matches
    ],
)
def test_specific_corruptions_are_rejected_with_a_clear_message(
    fmt: str, pos: int, value: int, reason: str
) -> None:
    error = assert_corrupt(patch(SAMPLE, fmt, pos, value))
    assert reason in error.message


def test_huge_record_count_does_not_allocate_and_is_rejected() -> None:
    patched = patch(SAMPLE, ">i", 57, 2**31 - 1)
    error = assert_corrupt(patch(patched, ">i", 23, 2**31 - 2))
    assert "columns" in error.message


def test_short_and_misframed_input_is_corrupt() -> None:
    assert "shorter" in assert_corrupt(SAMPLE[: HEADER_SIZE - 1]).message
    assert "batch_length" in assert_corrupt(SAMPLE + b"\x00").message
    assert "batch_length" in assert_corrupt(SAMPLE[:-1]).message


def test_header_properties() -> None:
    header = read_header(stamp_batch(SAMPLE, base_offset=100, partition_leader_epoch=0))
    assert (header.last_offset, header.next_offset, header.size_bytes) == (102, 103, len(SAMPLE))
    assert header.compression_codec == 0
    assert header.last_sequence == 42
    wrapping = read_header(
        encode_batch([Record(None, b"", 0)] * 3, producer_id=1, base_sequence=2**31 - 2)
    )
    assert wrapping.last_sequence == 0
    assert read_header(encode_batch([Record(None, b"", 0)])).last_sequence == -1


def test_encode_requires_records() -> None:
    with pytest.raises(AssertionError):
        encode_batch([])
