"""The batch codec: round trips, stamping, and rejection of every malformed input.

Every codec case runs against both records codecs, the compiled `raftmq._codec` and the
pure-Python `raftmq._codec_py` (parameter `impl`); fuzz cases also check that the two agree
on whatever bytes they are given.
"""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raftmq import _codec_py, record_batch
from raftmq.compression import CODEC_GZIP, CODEC_LZ4, CODEC_NAMES, CODEC_NONE, compress
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import (
    HEADER_SIZE,
    MAGIC,
    PURE_PYTHON_CODEC_ENV,
    codec_implementation,
    decode_batch,
    encode_batch,
    iter_batches,
    payload_bytes,
    read_header,
    stamp_batch,
    validate_batch,
)

try:
    from raftmq import _codec
except ImportError:  # test_the_compiled_codec_is_in_use says why that is a failure
    _codec = None

IMPLEMENTATIONS = [
    pytest.param(_codec, id="c", marks=pytest.mark.skipif(_codec is None, reason="not built")),
    pytest.param(_codec_py, id="python"),
]
CODECS = sorted(CODEC_NAMES)
MAX_BYTES = 1 << 20
NOW_MS = 1_700_000_000_000
# Bytes [0, 8) and [12, 16): the fields the leader stamps, outside the CRC.
STAMPED_POSITIONS = frozenset(range(8)) | frozenset(range(12, 16))


@contextmanager
def using(impl: ModuleType) -> Iterator[None]:
    """record_batch runs `impl` as its records codec inside the block."""
    saved = record_batch._records
    record_batch._records = impl
    try:
        yield
    finally:
        record_batch._records = saved


optional_bytes = st.none() | st.binary(max_size=40)
headers_st = st.lists(
    st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=12)), max_size=3
)
messages_st = st.lists(
    st.builds(
        Message,
        value=optional_bytes,
        key=optional_bytes,
        headers=headers_st,
        # Timestamps on both sides of the first one: deltas go negative.
        timestamp_ms=st.integers(-1, 2**45) | st.integers(2**63 - 2**20, 2**63 - 1),
    ),
    min_size=1,
    max_size=12,
)


def expected(messages: list[Message], *, base_offset: int = 0) -> list[Message]:
    """What decoding the batch of `messages` gives (encoded at NOW_MS)."""
    return [
        Message(
            m.value,
            m.key,
            headers=m.headers,
            offset=base_offset + i,
            timestamp_ms=NOW_MS if m.timestamp_ms == -1 else m.timestamp_ms,
        )
        for i, m in enumerate(messages)
    ]


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


def with_records(records: bytes, *, count: int, attributes: int = 0) -> bytes:
    """A batch whose header is right for `count` records and whose records are `records`."""
    header = bytearray(SAMPLE[:HEADER_SIZE])
    struct.pack_into(">i", header, 8, HEADER_SIZE - 12 + len(records))
    struct.pack_into(">h", header, 21, attributes)
    struct.pack_into(">i", header, 23, count - 1)
    struct.pack_into(">i", header, 57, count)
    return with_fixed_crc(bytes(header) + records)


def assert_corrupt(data: bytes) -> RaftmqError:
    with pytest.raises(RaftmqError) as excinfo:
        validate_batch(data, max_bytes=MAX_BYTES)
    assert excinfo.value.code is ErrorCode.CORRUPT_MESSAGE
    return excinfo.value


def assert_undecodable(data: bytes) -> RaftmqError:
    with pytest.raises(RaftmqError) as excinfo:
        decode_batch(data)
    assert excinfo.value.code is ErrorCode.CORRUPT_MESSAGE
    return excinfo.value


SAMPLE_MESSAGES = [
    Message(b"v1", b"k1", headers=[("h", b"x"), ("h", None)], timestamp_ms=1000),
    Message(b"", None, timestamp_ms=1002),
    Message(None, b"", timestamp_ms=999),
]
SAMPLE = encode_batch(SAMPLE_MESSAGES, producer_id=7, producer_epoch=1, base_sequence=40)


def test_the_compiled_codec_is_in_use() -> None:
    if os.environ.get(PURE_PYTHON_CODEC_ENV) == "1":
        assert codec_implementation() == "python"
    else:
        assert _codec is not None, "raftmq._codec did not build: is a C compiler installed?"
        assert codec_implementation() == "c"


def test_the_environment_forces_the_pure_python_codec() -> None:
    script = "from raftmq.record_batch import codec_implementation as c; print(c())"
    env = {**os.environ, PURE_PYTHON_CODEC_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "python"


producer_st = st.tuples(st.integers(-1, 2**40), st.integers(-1, 100), st.integers(-1, 2**31 - 1))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(messages_st, st.sampled_from(CODECS), producer_st)
@settings(max_examples=150)
def test_round_trip_keeps_every_message(
    impl: ModuleType,
    messages: list[Message],
    compression: int,
    producer: tuple[int, int, int],
) -> None:
    producer_id, producer_epoch, base_sequence = producer
    with using(impl):
        data = encode_batch(
            messages,
            compression=compression,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=base_sequence,
            now_ms=NOW_MS,
        )
        header = validate_batch(data, max_bytes=MAX_BYTES)
        assert header.size_bytes == len(data)
        assert (header.magic, header.attributes) == (MAGIC, compression)
        assert header.compression_codec == compression
        assert header.base_offset == 0
        assert header.partition_leader_epoch == -1
        assert header.record_count == len(messages)
        assert header.last_offset_delta == len(messages) - 1
        timestamps = [m.timestamp_ms for m in expected(messages)]
        assert header.base_timestamp == timestamps[0]  # Kafka v2: the first record's
        assert header.max_timestamp == max(timestamps)
        assert (header.producer_id, header.producer_epoch, header.base_sequence) == (
            producer_id,
            producer_epoch,
            base_sequence,
        )
        assert decode_batch(data) == expected(messages)


@given(messages_st, st.sampled_from(CODECS))
@settings(max_examples=100)
def test_both_codecs_write_the_same_bytes(messages: list[Message], compression: int) -> None:
    if _codec is None:
        pytest.skip("raftmq._codec is not built")
    batches = []
    for impl in (_codec, _codec_py):
        with using(impl):
            batches.append(encode_batch(messages, compression=compression, now_ms=NOW_MS))
    assert batches[0] == batches[1]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(messages_st, st.integers(0, 2**62), st.integers(-1, 2**31 - 1))
@settings(max_examples=50)
def test_stamping_keeps_the_crc_valid_and_shows_in_decode(
    impl: ModuleType, messages: list[Message], base_offset: int, leader_epoch: int
) -> None:
    with using(impl):
        data = encode_batch(messages, now_ms=NOW_MS)
        stamped = stamp_batch(data, base_offset=base_offset, partition_leader_epoch=leader_epoch)
        assert len(stamped) == len(data)
        assert stamped[16:] == data[16:]
        header = validate_batch(stamped, max_bytes=MAX_BYTES)
        assert header.base_offset == base_offset
        assert header.partition_leader_epoch == leader_epoch
        assert header.crc == read_header(data).crc
        assert header.last_offset == base_offset + len(messages) - 1
        assert header.next_offset == base_offset + len(messages)
        assert decode_batch(stamped) == expected(messages, base_offset=base_offset)


def test_compiled_decode_leaves_messages_to_refcounting_not_the_cycle_collector() -> None:
    """A decoded message holds only atomic values and tuples of them, so the C codec
    untracks it (a fetch's ~35,000 messages would otherwise be walked by every young
    collection); it is still freed when its last reference goes, and fully usable."""
    if _codec is None:
        pytest.skip("raftmq._codec is not built")
    with using(_codec):
        decoded = decode_batch(stamp_batch(SAMPLE, base_offset=5, partition_leader_epoch=0))
    assert decoded == expected(SAMPLE_MESSAGES, base_offset=5)
    assert not any(gc.is_tracked(m) for m in decoded)
    assert gc.is_tracked(Message(b"built by the application"))  # only the decoder untracks
    # Nothing but the list holds it (the other two: the subscript's result and
    # getrefcount's argument), so refcounting frees it with the list.
    assert sys.getrefcount(decoded[0]) == 3
    decoded[0].headers = (("k", b"v"),)  # the slots stay writable
    assert decoded[0].headers == (("k", b"v"),)


def test_compiled_untrack_takes_only_messages_no_cycle_can_go_through() -> None:
    """The messages a Writer accepts leave the cycle collector's lists when every field
    holds bytes, str, int, None or (str, bytes-or-None) headers; a message holding
    anything else (a cycle may go through it) or of a subclass (it may have a __dict__)
    stays tracked, and untracked ones are still freed by refcounting."""
    if _codec is None:
        pytest.skip("raftmq._codec is not built")

    class Subclass(Message):
        pass

    plain = [
        Message(b"v"),
        Message("text", b"key", topic="t", partition=2, headers=[("h", b"1"), ("n", None)]),
    ]
    cyclic = Message(b"v")
    cyclic.headers = [("me", cyclic)]  # type: ignore[assignment, list-item]
    odd = Message(b"v")
    odd.value = bytearray(b"not bytes")  # type: ignore[assignment]
    others = [cyclic, odd, Subclass(b"v")]
    assert _codec.untrack_messages([*plain, *others]) == 2
    assert [gc.is_tracked(m) for m in plain] == [False, False]
    assert all(gc.is_tracked(m) for m in others)
    assert _codec.untrack_messages(plain) == 0  # already untracked: left as they are
    assert sys.getrefcount(plain[0]) == 3  # the list, the subscript, getrefcount's argument
    assert _codec_py.untrack_messages(plain) == 0  # Python cannot untrack


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_payload_bytes_counts_keys_and_values(impl: ModuleType) -> None:
    with using(impl):
        decoded = decode_batch(SAMPLE)
        assert payload_bytes(decoded) == 2 + 2 + 0 + 0 + 0 + 0  # None counts 0
        assert payload_bytes([]) == 0
        decoded[1].value = bytearray(b"abc")  # what an application assigned since
        assert payload_bytes(decoded) == 7
        with pytest.raises(TypeError, match="takes a list"):
            payload_bytes(tuple(decoded))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="item 1 is bytes, not Message"):
            payload_bytes([decoded[0], b"x"])  # type: ignore[list-item]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_decoded_messages_have_every_field(impl: ModuleType) -> None:
    with using(impl):
        stamped = stamp_batch(SAMPLE, base_offset=100, partition_leader_epoch=3)
        first, second, third = decode_batch(stamped)
    assert first == Message(
        b"v1", b"k1", headers=[("h", b"x"), ("h", None)], offset=100, timestamp_ms=1000
    )
    assert (second.key, second.value, second.offset, second.timestamp_ms) == (None, b"", 101, 1002)
    assert (third.key, third.value, third.offset, third.timestamp_ms) == (b"", None, 102, 999)
    assert (third.topic, third.partition, third.headers) == (None, None, ())
    assert type(first.value) is bytes and type(first.headers) is tuple


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_unset_timestamps_get_now_and_the_default_is_the_current_time(impl: ModuleType) -> None:
    with using(impl):
        header = read_header(encode_batch([Message(b"a"), Message(b"b")], now_ms=NOW_MS))
        assert (header.base_timestamp, header.max_timestamp) == (NOW_MS, NOW_MS)
        before_ms = int(time.time() * 1000)
        [message] = decode_batch(encode_batch([Message(b"a")]))
    assert before_ms <= message.timestamp_ms <= before_ms + 60_000


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_str_values_and_keys_are_utf8(impl: ModuleType) -> None:
    message = Message(b"x", headers=[("h", b"y")])
    message.value = "välue"  # type: ignore[assignment]  # set after the constructor checked
    message.key = "kéy"  # type: ignore[assignment]
    with using(impl):
        [decoded] = decode_batch(encode_batch([message], now_ms=NOW_MS))
    assert (decoded.value, decoded.key) == ("välue".encode(), "kéy".encode())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("field", "bad", "error"),
    [
        ("value", 5, TypeError),
        ("key", bytearray(b"x"), TypeError),
        ("headers", {"h": b"x"}, TypeError),
        ("headers", [("h", b"x", b"y")], TypeError),
        ("headers", [(b"h", b"x")], TypeError),
        ("headers", [("h", 1)], TypeError),
        ("timestamp_ms", "5", TypeError),
        ("timestamp_ms", -2, ValueError),
        ("timestamp_ms", 2**63, ValueError),
    ],
)
def test_messages_that_cannot_be_encoded_are_refused(
    impl: ModuleType, field: str, bad: object, error: type[Exception]
) -> None:
    message = Message(b"v")
    setattr(message, field, bad)
    with using(impl), pytest.raises(error):
        encode_batch([Message(b"ok"), message])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_encode_refuses_an_empty_batch_an_unknown_codec_and_non_messages(impl: ModuleType) -> None:
    with using(impl):
        with pytest.raises(ValueError, match="at least one"):
            encode_batch([])
        with pytest.raises(ValueError, match="codec"):
            encode_batch([Message(b"v")], compression=5)
        with pytest.raises(TypeError, match="Message"):
            encode_batch([b"v"])  # type: ignore[list-item]


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
            assert_undecodable(bytes(flipped))


@given(messages_st, st.data())
@settings(max_examples=50)
def test_random_single_byte_flips(messages: list[Message], data: st.DataObject) -> None:
    batch = encode_batch(messages, now_ms=NOW_MS)
    pos = data.draw(st.integers(0, len(batch) - 1))
    mask = data.draw(st.integers(1, 255))
    flipped = bytearray(batch)
    flipped[pos] ^= mask
    if pos in STAMPED_POSITIONS:
        validate_batch(bytes(flipped), max_bytes=MAX_BYTES)
    else:
        assert_corrupt(bytes(flipped))


def _decode_or_error(impl: ModuleType, data: bytes) -> list[Message] | str:
    """What decode_batch gives with `impl`: messages, or "corrupt" (nothing else allowed)."""
    with using(impl):
        try:
            return decode_batch(data)
        except RaftmqError as e:
            assert e.code is ErrorCode.CORRUPT_MESSAGE
            return "corrupt"


def _only_corrupt_and_both_codecs_agree(data: bytes) -> None:
    """validate / iter / decode either succeed or raise RaftmqError CORRUPT_MESSAGE; the two
    records codecs give the same messages or both refuse."""
    try:
        validate_batch(data, max_bytes=MAX_BYTES)
    except RaftmqError as e:
        assert e.code is ErrorCode.CORRUPT_MESSAGE
    try:
        for _header, _batch in iter_batches(data):
            pass
    except RaftmqError as e:
        assert e.code is ErrorCode.CORRUPT_MESSAGE
    results = [_decode_or_error(impl, data) for impl in (_codec, _codec_py) if impl is not None]
    assert all(r == results[0] for r in results)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_corrupt_message(data: bytes) -> None:
    _only_corrupt_and_both_codecs_agree(data)


@given(messages_st, st.sampled_from(CODECS), st.data())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_mutations_behind_a_valid_crc_only_raise_corrupt_message(
    messages: list[Message], compression: int, data: st.DataObject
) -> None:
    """Mutate a valid batch and fix its CRC, so the checks after the CRC are exercised."""
    batch = bytearray(encode_batch(messages, compression=compression, now_ms=NOW_MS))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(batch) - 1))
        width = data.draw(st.sampled_from([1, 2, 4]))
        batch[pos : pos + width] = data.draw(st.binary(min_size=width, max_size=width))
    if data.draw(st.booleans()):
        batch = batch[: data.draw(st.integers(0, len(batch)))]
    if data.draw(st.booleans()):
        batch += data.draw(st.binary(max_size=8))
    _only_corrupt_and_both_codecs_agree(with_fixed_crc(batch))


@given(st.binary(min_size=0, max_size=200), st.integers(0, 40))
@settings(max_examples=300)
def test_random_records_behind_a_valid_header_only_raise_corrupt_message(
    records: bytes, count: int
) -> None:
    """Garbage where the records go, with a header that is right for its size and count."""
    _only_corrupt_and_both_codecs_agree(with_records(records, count=max(count, 1)))


def test_oversized_batch_is_message_too_large() -> None:
    with pytest.raises(RaftmqError) as excinfo:
        validate_batch(SAMPLE, max_bytes=len(SAMPLE) - 1)
    assert excinfo.value.code is ErrorCode.MESSAGE_TOO_LARGE
    validate_batch(SAMPLE, max_bytes=len(SAMPLE))


def test_two_concatenated_batches_are_rejected_by_validate_but_split_by_iter() -> None:
    first = stamp_batch(SAMPLE, base_offset=10, partition_leader_epoch=2)
    second = stamp_batch(
        encode_batch([Message(b"y", b"x", timestamp_ms=5)]),
        base_offset=13,
        partition_leader_epoch=3,
    )
    error = assert_corrupt(first + second)
    assert "exactly one batch" in error.message
    assert_undecodable(first + second)
    split = list(iter_batches(first + second))
    assert [(h.base_offset, h.partition_leader_epoch) for h, _ in split] == [(10, 2), (13, 3)]
    assert [b for _, b in split] == [first, second]
    assert list(iter_batches(b"")) == []


def test_a_batch_compaction_rewrote_is_split_by_iter_but_refused_from_a_producer() -> None:
    # The cleaner keeps the second record only: offsets 10..12 still, one record at 11.
    stored = stamp_batch(SAMPLE, base_offset=10, partition_leader_epoch=2)
    header, slices = record_batch.record_slices(stored)
    rewritten = record_batch.rebuild_batch(header, slices[1:2])
    [(split, batch)] = list(iter_batches(rewritten))
    assert (split.record_count, split.last_offset_delta, split.next_offset) == (1, 2, 13)
    assert batch == rewritten
    assert [m.offset for m in decode_batch(rewritten)] == [11]
    # From a producer it would not be one record per offset.
    assert "last_offset_delta 2 != record_count - 1" in assert_corrupt(rewritten).message
    # More records than offsets is corrupt wherever it comes from.
    with pytest.raises(RaftmqError) as excinfo:
        list(iter_batches(patch(SAMPLE, ">i", 23, 1)))
    assert "more records than offsets" in excinfo.value.message


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
        (">h", 21, 5, "compression codec"),
        (">h", 21, 7, "compression codec"),
        (">h", 21, 0x08, "LogAppendTime timestamps, transactional and control batches are not"),
        (">h", 21, 0x10, "not supported"),
        (">h", 21, 0x20, "not supported"),
        (">h", 21, 0x40, "not supported"),
        (">i", 57, 0, "record_count"),
        (">i", 57, -3, "record_count"),
        (">i", 23, 5, "last_offset_delta"),
        (">q", 35, 998, "max_timestamp"),  # below base_timestamp (1000)
    ],
)
def test_specific_header_corruptions_are_rejected_with_a_clear_message(
    fmt: str, pos: int, value: int, reason: str
) -> None:
    error = assert_corrupt(patch(SAMPLE, fmt, pos, value))
    assert reason in error.message


def test_validate_accepts_every_codec_and_never_looks_at_the_records() -> None:
    for codec in CODECS:
        batch = encode_batch(SAMPLE_MESSAGES, compression=codec)
        assert validate_batch(batch, max_bytes=MAX_BYTES).compression_codec == codec
    # Garbage records behind a valid CRC: the opaque broker stores them, readers refuse them.
    garbage = with_records(b"\xff" * 40, count=3)
    assert validate_batch(garbage, max_bytes=MAX_BYTES).record_count == 3
    assert_undecodable(garbage)
    garbage_gzip = with_records(b"\xff" * 40, count=1000, attributes=CODEC_GZIP)
    assert validate_batch(garbage_gzip, max_bytes=MAX_BYTES).record_count == 1000


def test_a_forged_record_count_cannot_move_offsets_far() -> None:
    """An uncompressed batch holds at most one record per 7 bytes: validate checks that."""
    patched = patch(SAMPLE, ">i", 57, 2**31 - 1)
    error = assert_corrupt(patch(patched, ">i", 23, 2**31 - 2))
    assert "cannot fit" in error.message


def test_short_and_misframed_input_is_corrupt() -> None:
    assert "shorter" in assert_corrupt(SAMPLE[: HEADER_SIZE - 1]).message
    assert "batch_length" in assert_corrupt(SAMPLE + b"\x00").message
    assert "batch_length" in assert_corrupt(SAMPLE[:-1]).message


def test_header_properties() -> None:
    header = read_header(stamp_batch(SAMPLE, base_offset=100, partition_leader_epoch=0))
    assert (header.last_offset, header.next_offset, header.size_bytes) == (102, 103, len(SAMPLE))
    assert header.compression_codec == 0
    assert header.last_sequence == 42
    wrapping = read_header(encode_batch([Message(b"")] * 3, producer_id=1, base_sequence=2**31 - 2))
    assert wrapping.last_sequence == 0
    assert read_header(encode_batch([Message(b"")])).last_sequence == -1


# --- records that only a reader checks ------------------------------------------------


def record(body: bytes) -> bytes:
    """One record: its zigzag length (< 64 bytes here) and `body`."""
    assert len(body) < 64
    return bytes([len(body) * 2]) + body


# attributes 0, timestamp delta 0, offset delta 0, key null, value b"v", no headers.
GOOD_RECORD = record(b"\x00\x00\x00\x01\x02v\x00")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("records", "count", "reason"),
    [
        pytest.param(GOOD_RECORD, 2, "cannot fit", id="fewer-records-than-the-count"),
        pytest.param(GOOD_RECORD * 2, 1, "follow the last", id="more-records-than-the-count"),
        pytest.param(GOOD_RECORD + b"\x00", 1, "follow the last", id="trailing-byte"),
        pytest.param(b"\x80\x80\x80\x80\x80\x01" + b"\x00" * 8, 1, "varint", id="overlong-length"),
        pytest.param(b"\xff\xff\xff\xff\x07" + b"\x00" * 8, 1, "", id="length-beyond-batch"),
        pytest.param(b"\x01" + b"\x00" * 8, 1, "", id="negative-length"),
        pytest.param(record(b"\x00\x00\x00\x03\x02v\x00"), 1, "below -1", id="key-length-minus-2"),
        pytest.param(record(b"\x00\x00\x00\x01\x40v\x00"), 1, "overruns", id="value-overruns"),
        pytest.param(record(b"\x00\x00\x00\x01\x02v\x02"), 1, "headers", id="header-count"),
        pytest.param(record(b"\x00\x00\x00\x01\x02v\x01"), 1, "headers", id="header-count-neg"),
        pytest.param(
            record(b"\x00\x00\x00\x01\x02v\x02\x01\x00\x00"), 1, "header key", id="null-header-key"
        ),
        pytest.param(
            record(b"\x00\x00\x00\x01\x02v\x02\x02\xff\x00"), 1, "utf-8", id="bad-utf8-header-key"
        ),
        pytest.param(record(b"\x00\x00\x00\x01\x02v\x00\x00"), 1, "fields take", id="slack"),
        pytest.param(record(b"\x00\x00\x00\x01\x04v"), 1, "", id="truncated-in-record"),
        pytest.param(record(b"\x00\xff\xff") + GOOD_RECORD, 1, "varint", id="truncated-varint"),
        pytest.param(record(b"\x00" + b"\xff" * 10 + b"\x01\x00\x01\x01\x00"), 1, "", id="varlong"),
    ],
)
def test_malformed_records_are_corrupt(
    impl: ModuleType, records: bytes, count: int, reason: str
) -> None:
    with using(impl):
        error = assert_undecodable(with_records(records, count=count))
    assert reason.lower() in error.message.lower()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_records_read_the_way_java_reads_them(impl: ModuleType) -> None:
    """Offset deltas come from the records (compaction leaves gaps), a fifth varint byte's
    bits beyond 32 are dropped as Java's ByteUtils drops them, and a LogAppendTime batch
    gives every record the batch's max_timestamp."""
    gapped = record(b"\x00\x00\x00\x01\x02a\x00") + record(b"\x00\x02\x14\x01\x02b\x00")
    # Value length 1 as a 5-byte varint whose last byte carries junk above bit 31.
    overlong = record(b"\x00\x00\x00\x01\x82\x80\x80\x80\x70v\x00")
    with using(impl):
        first, second = decode_batch(with_records(gapped, count=2))
        [odd] = decode_batch(with_records(overlong, count=1))
        stamped = patch(SAMPLE, ">h", 21, 0x08)
        log_append_time = decode_batch(stamped)
        control = decode_batch(patch(SAMPLE, ">h", 21, 0x30))
    assert (first.offset, second.offset, second.timestamp_ms) == (0, 10, 1001)
    assert odd.value == b"v"
    assert [m.timestamp_ms for m in log_append_time] == [1002, 1002, 1002]
    assert control == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_huge_record_count_is_refused_before_anything_is_allocated(impl: ModuleType) -> None:
    with using(impl):
        for count in (2**31 - 1, 10**6):
            error = assert_undecodable(patch(SAMPLE, ">i", 57, count))
            assert "cannot fit" in error.message
        for compression in (CODEC_GZIP, CODEC_LZ4):
            records = compress(compression, GOOD_RECORD)
            batch = with_records(records, count=2**31 - 1, attributes=compression)
            assert "cannot fit" in assert_undecodable(batch).message


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("compression", CODECS[1:])
def test_bad_compressed_payloads_are_corrupt(impl: ModuleType, compression: int) -> None:
    good = compress(compression, GOOD_RECORD)
    with using(impl):
        [message] = decode_batch(with_records(good, count=1, attributes=compression))
        assert message.value == b"v"
        for bad in (b"", b"\x00" * 20, good[: len(good) // 2], good + b"junk"):
            assert_undecodable(with_records(bad, count=1, attributes=compression))


def test_codec_none_records_are_what_is_stored() -> None:
    """Uncompressed, the records section is plain records: offset 61 on."""
    batch = encode_batch([Message(b"v", timestamp_ms=5)])
    assert batch[HEADER_SIZE:] == GOOD_RECORD
    assert read_header(batch).compression_codec == CODEC_NONE
