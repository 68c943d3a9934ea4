"""Our batches against an independent Kafka codec: kafka-python's `kafka.record`.

What we write, kafka-python reads field for field (every codec, headers, null keys and
values, negative timestamp deltas); what kafka-python writes (every codec), we validate
and read. Uncompressed, both write the same bytes (bar the leader epoch, which a Java
producer also leaves at -1 and kafka-python at 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq import _codec_py, record_batch
from raftmq.compression import CODEC_NAMES, CODEC_NONE
from raftmq.message import Message
from raftmq.record_batch import (
    decode_batch,
    encode_batch,
    read_header,
    stamp_batch,
    validate_batch,
)

with warnings.catch_warnings():
    # kafka-python 3.0 loads its bundled schemas with a deprecated importlib call.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

try:
    from raftmq import _codec
except ImportError:  # test_record_batch.py fails then
    _codec = None

IMPLEMENTATIONS = [
    pytest.param(_codec, id="c", marks=pytest.mark.skipif(_codec is None, reason="not built")),
    pytest.param(_codec_py, id="python"),
]
CODECS = sorted(CODEC_NAMES)
NOW_MS = 1_700_000_000_000

messages_st = st.lists(
    st.builds(
        Message,
        value=st.none() | st.binary(max_size=300),
        key=st.none() | st.binary(max_size=20),
        headers=st.lists(
            st.tuples(st.text(max_size=6), st.none() | st.binary(max_size=10)), max_size=3
        ),
        # Around NOW_MS on both sides: timestamp deltas go negative.
        timestamp_ms=st.integers(NOW_MS - 10**6, NOW_MS + 10**6),
    ),
    min_size=1,
    max_size=30,
)
producer_st = st.sampled_from([(-1, -1, -1), (4000, 3, 17), (2**40, 0, 2**31 - 5)])
Fields = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


@contextmanager
def using(impl: ModuleType) -> Iterator[None]:
    saved = record_batch._records
    record_batch._records = impl
    try:
        yield
    finally:
        record_batch._records = saved


def kafka_python_batch(
    messages: list[Message], compression: int, producer: tuple[int, int, int]
) -> bytes:
    producer_id, producer_epoch, base_sequence = producer
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=1 << 24,
    )
    for i, m in enumerate(messages):
        assert builder.append(i, m.timestamp_ms, m.key, m.value, list(m.headers)) is not None
    return bytes(builder.build())


def kafka_python_reads(batch: bytes) -> tuple[DefaultRecordBatch, list[Fields]]:
    read = DefaultRecordBatch(batch)
    assert read.validate_crc()
    return read, [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in read]


def fields(messages: list[Message], *, base_offset: int) -> list[Fields]:
    return [
        (base_offset + i, m.timestamp_ms, m.key, m.value, list(m.headers))
        for i, m in enumerate(messages)
    ]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(messages_st, producer_st)
@settings(max_examples=100)
def test_uncompressed_batches_are_the_bytes_kafka_python_writes(
    impl: ModuleType, messages: list[Message], producer: tuple[int, int, int]
) -> None:
    producer_id, producer_epoch, base_sequence = producer
    with using(impl):
        ours = encode_batch(
            messages,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=base_sequence,
        )
    theirs = kafka_python_batch(messages, CODEC_NONE, producer)
    assert ours[:12] == theirs[:12]  # base offset, batch length
    assert ours[12:16] == b"\xff\xff\xff\xff"  # partition leader epoch -1, as Java's
    assert ours[16:] == theirs[16:]  # magic, CRC, attributes .. records


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("compression", CODECS, ids=[CODEC_NAMES[c] for c in CODECS])
@given(messages_st, producer_st, st.integers(0, 2**40))
@settings(max_examples=30)
def test_kafka_python_reads_what_we_write(
    impl: ModuleType,
    compression: int,
    messages: list[Message],
    producer: tuple[int, int, int],
    base_offset: int,
) -> None:
    producer_id, producer_epoch, base_sequence = producer
    with using(impl):
        batch = encode_batch(
            messages,
            compression=compression,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=base_sequence,
        )
    stamped = stamp_batch(batch, base_offset=base_offset, partition_leader_epoch=7)
    read, records = kafka_python_reads(stamped)
    assert (read.base_offset, read.leader_epoch, read.compression_type) == (
        base_offset,
        7,
        compression,
    )
    assert (read.producer_id, read.producer_epoch, read.base_sequence) == producer
    assert (read.first_timestamp, read.max_timestamp) == (
        messages[0].timestamp_ms,
        max(m.timestamp_ms for m in messages),
    )
    assert (read.records_count, read.last_offset_delta) == (len(messages), len(messages) - 1)
    assert records == fields(messages, base_offset=base_offset)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("compression", CODECS, ids=[CODEC_NAMES[c] for c in CODECS])
@given(messages_st, producer_st)
@settings(max_examples=30)
def test_we_validate_and_read_what_kafka_python_writes(
    impl: ModuleType, compression: int, messages: list[Message], producer: tuple[int, int, int]
) -> None:
    theirs = kafka_python_batch(messages, compression, producer)
    header = validate_batch(theirs, max_bytes=1 << 24)
    # kafka-python sends a batch uncompressed when compressing would not shrink it.
    assert header.compression_codec in (compression, CODEC_NONE)
    assert header.record_count == len(messages)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == producer
    stamped = stamp_batch(theirs, base_offset=50, partition_leader_epoch=2)
    with using(impl):
        decoded = decode_batch(stamped)
    assert [(m.offset, m.timestamp_ms, m.key, m.value, list(m.headers)) for m in decoded] == (
        fields(messages, base_offset=50)
    )


def test_a_big_compressed_batch_both_ways() -> None:
    """Many records across several compression blocks (snappy 32 KiB, lz4 64 KiB)."""
    messages = [
        Message(b"value %d " % i * 20, b"key %d" % (i % 7), timestamp_ms=NOW_MS - i)
        for i in range(3000)
    ]
    for compression in CODECS:
        _, records = kafka_python_reads(encode_batch(messages, compression=compression))
        assert records == fields(messages, base_offset=0)
        theirs = kafka_python_batch(messages, compression, (-1, -1, -1))
        assert read_header(theirs).compression_codec == compression
        assert decode_batch(theirs) == [
            Message(m.value, m.key, offset=i, timestamp_ms=m.timestamp_ms)
            for i, m in enumerate(messages)
        ]
