"""Legacy Kafka versions at the listener (kafka-go 0.2's Produce v2 / Fetch v2-3): message
sets (magic 0/1, gzip wrappers) convert to v2 batches and back, checked against
kafka-python's independent legacy codec; the hand-written request codecs read what the
protocol guide describes, byte by byte."""

from __future__ import annotations

import contextlib
import struct
import warnings
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.broker import kafka_codec, kafka_legacy
from raftmq.broker.kafka_legacy import MessageSetError
from raftmq.compression import CODEC_GZIP, CODEC_NONE
from raftmq.message import Message
from raftmq.record_batch import decode_batch, encode_batch, read_header, stamp_batch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.legacy_records import LegacyRecordBatchBuilder
    from kafka.record.memory_records import MemoryRecords

NOW_MS = 1_700_000_000_000
KAFKA_PYTHON_GZIP = 1


def legacy_set(
    magic: int, items: list[tuple[bytes | None, bytes | None]], *, compression: int = 0
) -> bytes:
    builder = LegacyRecordBatchBuilder(
        magic=magic, compression_type=compression, batch_size=1 << 20
    )
    for i, (key, value) in enumerate(items):
        builder.append(i, timestamp=NOW_MS + i if magic else None, key=key, value=value)
    return bytes(builder.build())


def read_legacy(data: bytes) -> list[tuple[int, int, bytes | None, bytes | None]]:
    records = MemoryRecords(data)
    out = []
    while records.has_next():
        batch = records.next_batch()
        assert batch is not None
        out += [(r.offset, r.timestamp, r.key, r.value) for r in batch]
    return out


ITEMS = [(b"k0", b"v0"), (None, b"v1"), (b"k2", None), (b"", b"")]


@pytest.mark.parametrize("compression", [0, KAFKA_PYTHON_GZIP])
@pytest.mark.parametrize("magic", [0, 1])
def test_a_produced_message_set_becomes_one_v2_batch(magic: int, compression: int) -> None:
    batch = kafka_legacy.batch_from_message_set(
        legacy_set(magic, ITEMS, compression=compression), now_ms=NOW_MS
    )
    header = read_header(batch)
    assert header.magic == 2 and header.record_count == len(ITEMS)
    assert header.compression_codec == (CODEC_GZIP if compression else CODEC_NONE)
    messages = decode_batch(batch)
    assert [(m.key, m.value) for m in messages] == ITEMS
    # Magic 1 keeps each create time; magic 0 has none and is stamped on arrival.
    expected = [NOW_MS + i for i in range(len(ITEMS))] if magic else [NOW_MS] * len(ITEMS)
    assert [m.timestamp_ms for m in messages] == expected


def test_stored_batches_are_served_as_a_magic_1_message_set_from_the_fetch_offset() -> None:
    first = stamp_batch(
        encode_batch([Message(key=b"a", value=b"1"), Message(key=b"b", value=None)], now_ms=NOW_MS),
        base_offset=10,
        partition_leader_epoch=0,
    )
    second = stamp_batch(
        encode_batch(
            [Message(key=b"c", value=b"3", headers=[("dropped", b"x")])],
            compression=CODEC_GZIP,
            now_ms=NOW_MS,
        ),
        base_offset=12,
        partition_leader_epoch=0,
    )
    message_set = kafka_legacy.message_set_from_batches(first + second, min_offset=11)
    # Offset 10 is below the fetch offset: not served. Headers do not exist in magic 1.
    assert read_legacy(message_set) == [(11, NOW_MS, b"b", None), (12, NOW_MS, b"c", b"3")]


def test_a_bad_crc_or_truncation_is_refused() -> None:
    good = legacy_set(1, ITEMS)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    with pytest.raises(MessageSetError, match="CRC"):
        kafka_legacy.messages_of_message_set(bytes(bad_crc))
    with pytest.raises(MessageSetError):
        kafka_legacy.messages_of_message_set(good[:-3])
    with pytest.raises(MessageSetError, match="empty"):
        kafka_legacy.messages_of_message_set(b"")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_a_message_set_error_and_nothing_else(data: bytes) -> None:
    with contextlib.suppress(MessageSetError):
        kafka_legacy.batch_from_message_set(data, now_ms=NOW_MS)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.none() | st.binary(max_size=20), st.none() | st.binary(max_size=40)),
        min_size=1,
        max_size=10,
    ),
    st.sampled_from([0, KAFKA_PYTHON_GZIP]),
)
def test_round_trip_through_both_codecs(
    items: list[tuple[bytes | None, bytes | None]], compression: int
) -> None:
    batch = kafka_legacy.batch_from_message_set(legacy_set(1, items, compression=compression))
    stored = stamp_batch(batch, base_offset=100, partition_leader_epoch=3)
    served = kafka_legacy.message_set_from_batches(stored, min_offset=0)
    assert read_legacy(served) == [
        (100 + i, NOW_MS + i, key, value) for i, (key, value) in enumerate(items)
    ]


# ---------------------------------------------------------------- request codecs


def string(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def test_produce_v2_request_decodes_as_produce_v3() -> None:
    records = legacy_set(1, ITEMS)
    body = (
        struct.pack(">hi", -1, 5_000)
        + struct.pack(">i", 1)
        + string("t")
        + struct.pack(">i", 1)
        + struct.pack(">ii", 3, len(records))
        + records
    )
    request = kafka_legacy.decode_produce_v2(body, 0)
    assert request.transactional_id is None and request.acks == -1
    assert request.timeout == timedelta(seconds=5)
    [topic] = request.topic_data
    [partition] = topic.partition_data
    assert (topic.name, partition.index, partition.records) == ("t", 3, records)
    assert kafka_codec.request_schema(0, 2) is type(request)
    assert kafka_codec.is_flexible(0, 2) is False


@pytest.mark.parametrize("version", [2, 3])
def test_fetch_v2_v3_request_decodes_as_fetch_v4(version: int) -> None:
    body = (
        struct.pack(">iii", -1, 500, 1)
        + (struct.pack(">i", 4096) if version == 3 else b"")
        + struct.pack(">i", 1)
        + string("t")
        + struct.pack(">i", 1)
        + struct.pack(">iqi", 0, 42, 1024)
    )
    request = kafka_legacy.decode_fetch_v2_v3(body, 0, version=version)
    assert request.replica_id == -1 and request.max_wait == timedelta(milliseconds=500)
    assert request.max_bytes == (4096 if version == 3 else kafka_legacy.FETCH_V2_MAX_BYTES)
    [topic] = request.topics
    [p] = topic.partitions
    assert (topic.topic, p.partition, p.fetch_offset, p.partition_max_bytes) == ("t", 0, 42, 1024)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\0\0",
        struct.pack(">hi", 1, 0) + struct.pack(">i", 2**30),
        struct.pack(">hii", 1, 0, 1) + b"\0\x09ab",
    ],
)
def test_truncated_legacy_requests_are_decode_errors(body: bytes) -> None:
    with pytest.raises(kafka_legacy.LegacyDecodeError):
        kafka_legacy.decode_produce_v2(body, 0)


def test_fetch_v2_response_layout() -> None:
    from kio.schema.errors import ErrorCode
    from kio.schema.fetch.v4 import response as v4

    records = legacy_set(1, ITEMS)
    response = v4.FetchResponse(
        throttle_time=timedelta(0),
        responses=(
            v4.FetchableTopicResponse(
                topic="t",
                partitions=(
                    v4.PartitionData(
                        partition_index=0,
                        error_code=ErrorCode.none,
                        high_watermark=9,
                        last_stable_offset=9,
                        aborted_transactions=(),
                        records=records,
                    ),
                ),
            ),
        ),
    )
    frame = kafka_codec.encode_response(1, 2, 77, response)
    expected_body = (
        struct.pack(">i", 0)
        + struct.pack(">i", 1)
        + string("t")
        + struct.pack(">i", 1)
        + struct.pack(">ihqi", 0, 0, 9, len(records))
        + records
    )
    assert frame == struct.pack(">ii", 4 + len(expected_body), 77) + expected_body
