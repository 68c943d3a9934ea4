"""Kafka's RecordBatch v2, byte for byte: the client codec (encode, decode) and the broker's
checks (validate, stamp, split).

A batch is one opaque blob per producer request and partition, exactly as Kafka's Java
client, librdkafka and kafka-python write it, so that stored batches can be served to
Kafka clients unchanged. The broker never decompresses or decodes records: it validates a
produce batch's header once (`validate_batch`: framing, magic, CRC-32C, attributes,
counts; O(one CRC pass)), stamps the base offset and leader epoch into the header
(`stamp_batch`, the CRC does not cover those two fields) and stores, replicates and serves
the identical bytes.

Header, big-endian, `HEADER_SIZE` = 61 bytes::

    offset size field
         0    8 base_offset             int64  stamped by the leader (0 from a producer)
         8    4 batch_length            int32  bytes after this field (= total size - 12)
        12    4 partition_leader_epoch  int32  stamped by the leader (-1 from a producer)
        16    1 magic                   int8   = MAGIC (2)
        17    4 crc                     uint32 CRC-32C of bytes [21, end)
        21    2 attributes              int16  bits 0-2 compression codec (0 none, 1 gzip,
                                               2 snappy, 3 lz4, 4 zstd), bit 3 timestamp
                                               type (1 = LogAppendTime), bit 4
                                               transactional, bit 5 control batch
        23    4 last_offset_delta       int32  = record_count - 1 from a producer; larger
                                               in a batch compaction rewrote (it keeps its
                                               offsets: `rebuild_batch`)
        27    8 base_timestamp          int64  ms, the FIRST record's timestamp
        35    8 max_timestamp           int64  ms, the largest record timestamp
        43    8 producer_id             int64  -1 without idempotence
        51    2 producer_epoch          int16
        53    4 base_sequence           int32
        57    4 record_count            int32
        61      records                        compressed as a whole when codec != 0

Each record (varint = zigzag-encoded, 7 bits per byte, least significant first; varlong
the same for int64)::

    length varint (bytes after this field) | attributes int8 (unused, 0) |
    timestamp_delta varlong (ms from base_timestamp, may be negative) |
    offset_delta varint (from base_offset) | key_length varint (-1 = null) | key |
    value_length varint (-1 = null) | value | header_count varint |
    header_count x (key_length varint | key UTF-8 | value_length varint (-1 = null) | value)

The records section is encoded and decoded by the compiled `raftmq._codec` (C, built with
the package) when it imports and by `raftmq._codec_py` otherwise, or when the environment
sets RAFTMQ_PURE_PYTHON_CODEC=1; both give the same results (`codec_implementation()` says
which one runs). Compression is `raftmq.compression`.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import crc32c
from raftmq import _codec_py
from raftmq.compression import CODEC_NAMES, CODEC_NONE, compress, decompress
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

__all__ = [
    "CODEC_NONE",
    "HEADER_SIZE",
    "MAGIC",
    "PURE_PYTHON_CODEC_ENV",
    "RECORD_BYTES_MIN",
    "BatchHeader",
    "RecordSlice",
    "codec_implementation",
    "decode_batch",
    "decode_batches",
    "encode_batch",
    "iter_batches",
    "read_header",
    "rebuild_batch",
    "record_count",
    "record_slices",
    "stamp_batch",
    "untrack_messages",
    "validate_batch",
]

MAGIC = 2
PURE_PYTHON_CODEC_ENV = "RAFTMQ_PURE_PYTHON_CODEC"

_CODEC_MASK = 0x07
_CODEC_MAX = max(CODEC_NAMES)
_TIMESTAMP_TYPE_LOG_APPEND_TIME = 0x08
_TRANSACTIONAL = 0x10
_CONTROL = 0x20

_HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = _HEADER.size
assert HEADER_SIZE == 61
# batch_length counts the bytes after itself: everything but base_offset and batch_length.
_LENGTH_PREFIX_SIZE = 12
_BATCH_LENGTH_MIN = HEADER_SIZE - _LENGTH_PREFIX_SIZE
# The CRC covers attributes .. end, so base_offset / partition_leader_epoch can be stamped.
_CRC_COVERED_FROM = 21
_STAMPED_PREFIX = struct.Struct(">qii")  # base_offset, batch_length, partition_leader_epoch
_UNCOVERED_PREFIX = struct.Struct(">qiibI")  # ... magic, crc
_CRC_COVERED = struct.Struct(">hiqqqhii")  # attributes .. record_count
assert _UNCOVERED_PREFIX.size == _CRC_COVERED_FROM
assert _CRC_COVERED_FROM + _CRC_COVERED.size == HEADER_SIZE
_INT32_MAX = 2**31 - 1
# The smallest record (every field one byte): an uncompressed batch of n records takes at
# least n times this, which the broker checks without decoding them.
RECORD_BYTES_MIN = _codec_py.RECORD_BYTES_MIN


class _RecordsCodec(Protocol):
    """What `raftmq._codec` and `raftmq._codec_py` both provide (see _codec_py)."""

    def encode_records(
        self, messages: Sequence[Message], now_ms: int, /
    ) -> tuple[bytes, int, int]: ...

    def decode_records(
        self,
        data: bytes | memoryview,
        start: int,
        record_count: int,
        /,
        *,
        base_offset: int,
        base_timestamp_ms: int,
        log_append_time_ms: int | None,
        topic: str | None = None,
        partition: int | None = None,
        min_offset: int = -1,
    ) -> list[Message]: ...

    def payload_bytes(self, messages: list[Message], /) -> int: ...

    def untrack_messages(self, messages: Sequence[Message], /) -> int: ...


def _load_records_codec() -> tuple[_RecordsCodec, str]:
    if os.environ.get(PURE_PYTHON_CODEC_ENV) == "1":
        return _codec_py, "python"
    try:
        from raftmq import _codec
    except ImportError:  # built without a C compiler: correct, about 10x slower
        return _codec_py, "python"
    return _codec, "c"


_records, _implementation = _load_records_codec()


def codec_implementation() -> str:
    """ "c" (the compiled raftmq._codec) or "python" (the fallback), as chosen at import."""
    return _implementation


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The fixed header of one batch, field for field (see the module docstring)."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def last_offset(self) -> int:
        """Offset of the last record in the batch."""
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        """Offset just past the batch: the log end offset after appending it."""
        return self.base_offset + self.last_offset_delta + 1

    @property
    def size_bytes(self) -> int:
        """Total size of the batch, header included."""
        return _LENGTH_PREFIX_SIZE + self.batch_length

    @property
    def compression_codec(self) -> int:
        return self.attributes & _CODEC_MASK

    @property
    def last_sequence(self) -> int:
        """Producer sequence of the last record (-1 without idempotence).

        Sequences wrap from 2**31 - 1 to 0, as in Kafka.
        """
        if self.base_sequence < 0:
            return -1
        return (self.base_sequence + self.last_offset_delta) % (_INT32_MAX + 1)


def _corrupt(message: str) -> RaftmqError:
    return RaftmqError(ErrorCode.CORRUPT_MESSAGE, message)


def encode_batch(
    messages: Sequence[Message],
    *,
    compression: int = CODEC_NONE,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    now_ms: int | None = None,
) -> bytes:
    """Encode `messages` (at least one) as one batch (client side).

    The result has base_offset 0 and partition_leader_epoch -1 (the leader stamps both).
    Record i gets offset delta i; a message whose timestamp_ms is -1 gets `now_ms`
    (default: the current time). `compression` is a codec id of `raftmq.compression`.
    Message topics, partitions and offsets are ignored. Raises ValueError / TypeError for
    messages that cannot be encoded (see `Message`). Cost: one C pass over the messages,
    the compression if any, one CRC-32C pass and one copy of the batch.
    """
    if not messages:
        raise ValueError("a batch holds at least one message")
    if len(messages) > _INT32_MAX:
        raise ValueError(f"{len(messages)} messages exceed a batch's int32 record count")
    if compression not in CODEC_NAMES:
        raise ValueError(f"unknown compression codec {compression}")
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    records, base_timestamp, max_timestamp = _records.encode_records(messages, now_ms)
    if compression != CODEC_NONE:
        records = compress(compression, records)
    count = len(messages)
    covered_header = _CRC_COVERED.pack(
        compression,
        count - 1,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    )
    batch_length = HEADER_SIZE - _LENGTH_PREFIX_SIZE + len(records)
    if batch_length > _INT32_MAX:
        raise ValueError(f"a batch of {batch_length} bytes exceeds Kafka's int32 length")
    crc = crc32c.crc32c(records, crc32c.crc32c(covered_header))
    prefix = _UNCOVERED_PREFIX.pack(0, batch_length, -1, MAGIC, crc)
    return b"".join((prefix, covered_header, records))


def read_header(data: bytes | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the header at `pos` without any check (for batches the broker already stored)."""
    return BatchHeader(*_HEADER.unpack_from(data, pos))


def _check_framing(data: bytes | memoryview, pos: int, end: int) -> BatchHeader:
    """Size, magic and CRC of the batch at data[pos:end] (exactly one batch)."""
    size_bytes = end - pos
    if size_bytes < HEADER_SIZE:
        raise _corrupt(f"batch of {size_bytes} bytes is shorter than the {HEADER_SIZE}-byte header")
    header = read_header(data, pos)
    if header.size_bytes != size_bytes:
        raise _corrupt(
            f"batch_length {header.batch_length} does not match the {size_bytes}-byte batch "
            f"(expected {size_bytes - _LENGTH_PREFIX_SIZE}: exactly one batch per request)"
        )
    if header.magic != MAGIC:
        raise _corrupt(f"unsupported magic {header.magic} (expected {MAGIC})")
    crc = crc32c.crc32c(data[pos + _CRC_COVERED_FROM : end])
    if crc != header.crc:
        raise _corrupt(f"CRC-32C mismatch: header says {header.crc:#010x}, data has {crc:#010x}")
    return header


def _check_header(
    data: bytes | memoryview, pos: int, end: int, *, compacted_ok: bool = False
) -> BatchHeader:
    """What the broker checks of a batch at data[pos:end]: framing, magic, CRC, attributes,
    record count and offset delta, timestamps. Never looks at the records.

    A producer's batch has one record per offset (last_offset_delta = record_count - 1).
    A stored batch the log cleaner rewrote keeps its last_offset_delta with fewer records
    (`rebuild_batch`: offsets stay offsets), so with `compacted_ok` (batches read from a
    leader's log) fewer records than offsets are accepted, never more."""
    header = _check_framing(data, pos, end)
    codec = header.attributes & _CODEC_MASK
    if codec > _CODEC_MAX:
        raise _corrupt(f"unknown compression codec {codec}")
    if header.attributes & ~_CODEC_MASK:
        raise _corrupt(
            f"unsupported attributes {header.attributes:#06x}: LogAppendTime timestamps, "
            "transactional and control batches are not supported"
        )
    if header.record_count < 1:
        raise _corrupt(f"record_count {header.record_count} must be at least 1")
    if compacted_ok:
        if header.last_offset_delta < header.record_count - 1:
            raise _corrupt(
                f"last_offset_delta {header.last_offset_delta} < record_count - 1 "
                f"({header.record_count - 1}): more records than offsets"
            )
    elif header.last_offset_delta != header.record_count - 1:
        raise _corrupt(
            f"last_offset_delta {header.last_offset_delta} != record_count - 1 "
            f"({header.record_count - 1})"
        )
    # Header arithmetic only: an uncompressed batch cannot hold more records than its
    # bytes allow, so a forged count cannot move the log end offset by billions.
    records_bytes = header.size_bytes - HEADER_SIZE
    if codec == CODEC_NONE and header.record_count > records_bytes // RECORD_BYTES_MIN:
        raise _corrupt(
            f"record_count {header.record_count} cannot fit in {records_bytes} bytes of records"
        )
    if header.max_timestamp < header.base_timestamp:
        raise _corrupt(
            f"max_timestamp {header.max_timestamp} < base_timestamp {header.base_timestamp}"
        )
    return header


def validate_batch(data: bytes, *, max_bytes: int) -> BatchHeader:
    """Validate one producer batch (broker side, before stamping and appending).

    Raises RaftmqError MESSAGE_TOO_LARGE when len(data) > max_bytes, CORRUPT_MESSAGE for any
    malformed header (framing, magic, CRC, attributes, counts, timestamps). Never raises
    anything else, whatever the bytes. Cost: one CRC-32C pass; records are neither
    decompressed nor decoded, so a batch whose records are malformed behind a valid CRC
    is stored and refused by readers (`decode_batch`), as the opaque broker cannot know.
    """
    if len(data) > max_bytes:
        raise RaftmqError(
            ErrorCode.MESSAGE_TOO_LARGE, f"batch of {len(data)} bytes exceeds {max_bytes} bytes"
        )
    return _check_header(data, 0, len(data))


def record_count(data: bytes) -> int:
    """The records in concatenated stored batches, from their headers alone (metrics)."""
    total = 0
    pos = 0
    # Bound: one step per batch; each header says its size.
    while pos + HEADER_SIZE <= len(data):
        header = read_header(data, pos)
        total += header.record_count
        pos += max(header.size_bytes, HEADER_SIZE)
    return total


def stamp_batch(data: bytes, *, base_offset: int, partition_leader_epoch: int) -> bytes:
    """Return `data` with base_offset and partition_leader_epoch overwritten (leader side).

    The CRC does not cover those fields, so it stays valid. `data` must be a validated
    batch. Cost: one copy of the batch.
    """
    assert len(data) >= HEADER_SIZE
    assert base_offset >= 0
    batch_length = _STAMPED_PREFIX.unpack_from(data)[1]
    prefix = _STAMPED_PREFIX.pack(base_offset, batch_length, partition_leader_epoch)
    return b"".join((prefix, memoryview(data)[_STAMPED_PREFIX.size :]))


def iter_batches(data: bytes) -> Iterator[tuple[BatchHeader, bytes]]:
    """Split a concatenation of whole batches (a fetch response, a replication chunk).

    Yields (header, batch bytes) in order. Each batch's header is checked as
    `validate_batch` checks it (not its records: see `decode_batch`), except that a batch
    compaction rewrote (fewer records than its offsets span) is accepted; a truncated or
    garbage batch raises CORRUPT_MESSAGE when it is reached, after the good ones before it
    were yielded. Loop bound: len(data) // HEADER_SIZE batches.
    """
    pos = 0
    end = len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise _corrupt(f"truncated batch: {end - pos} bytes left at position {pos}")
        batch_length = struct.unpack_from(">i", data, pos + 8)[0]
        if batch_length < _BATCH_LENGTH_MIN:
            raise _corrupt(f"batch_length {batch_length} at position {pos} is below the header")
        batch_end = pos + _LENGTH_PREFIX_SIZE + batch_length
        if batch_end > end:
            raise _corrupt(
                f"truncated batch at position {pos}: needs {batch_end - pos} bytes, "
                f"{end - pos} left"
            )
        header = _check_header(view, pos, batch_end, compacted_ok=True)
        yield header, data[pos:batch_end]
        pos = batch_end


def decode_batch(
    batch: bytes | memoryview,
    *,
    topic: str | None = None,
    partition: int | None = None,
    min_offset: int = -1,
) -> list[Message]:
    """Decode one whole batch into messages (client side), as any Kafka consumer reads it.

    Message i gets offset base_offset + its offset delta and timestamp base_timestamp + its
    delta (max_timestamp for every record of a LogAppendTime batch), and `topic` and
    `partition` (None by default). A consumer passes its fetch position as `min_offset`
    (a fetch answers from the start of the batch that holds it): records below it are not
    returned and cost no allocation, and a batch wholly below it is neither decompressed
    nor decoded. A negative `min_offset` (the default) skips nothing. Compressed records
    are decompressed (bounded by `raftmq.compression.DECOMPRESSED_BYTES_MAX`); a control
    batch (transaction marker) yields no messages. Checks framing, magic and CRC, then
    every record (those below `min_offset` for their framing only). Raises RaftmqError
    CORRUPT_MESSAGE (only that) for any malformed input, whatever the bytes.
    """
    # The CRC pass reads a view: slicing bytes would copy the whole batch first.
    header = _check_framing(memoryview(batch), 0, len(batch))
    attributes = header.attributes
    wholly_below = min_offset >= 0 and header.next_offset <= min_offset
    if attributes & _CONTROL or wholly_below:
        return []
    codec = attributes & _CODEC_MASK
    if codec > _CODEC_MAX:
        raise _corrupt(f"unknown compression codec {codec}")
    log_append_time_ms = (
        header.max_timestamp if attributes & _TIMESTAMP_TYPE_LOG_APPEND_TIME else None
    )
    try:
        if codec == CODEC_NONE:
            records, start = batch, HEADER_SIZE
        else:
            records, start = decompress(codec, memoryview(batch)[HEADER_SIZE:]), 0
        return _records.decode_records(
            records,
            start,
            header.record_count,
            base_offset=header.base_offset,
            base_timestamp_ms=header.base_timestamp,
            log_append_time_ms=log_append_time_ms,
            topic=topic,
            partition=partition,
            min_offset=min_offset,
        )
    except ValueError as e:
        raise _corrupt(f"bad records in a {CODEC_NAMES[codec]} batch: {e}") from e


def payload_bytes(messages: list[Message]) -> int:
    """The bytes of the keys and values of `messages` (a key or value of None counts 0),
    as kafka-go's ReaderStats.Bytes counts them: the compiled codec sums them without a
    Python loop over every message. Raises TypeError for anything but a list of Message."""
    return _records.payload_bytes(messages)


def untrack_messages(messages: Sequence[Message]) -> int:
    """Take the messages a Writer accepted out of the cycle collector's lists, each one
    whose fields hold only bytes, str, int, None and (str, bytes-or-None) headers: no
    cycle can go through such a message (decoded messages are built untracked for the same
    reason). A Writer's in-flight messages are otherwise walked by every collection of
    the generations they reach. Returns how many were untracked (0 with the pure-Python
    codec, which cannot untrack)."""
    return _records.untrack_messages(messages)


def decode_batches(
    records: bytes,
    *,
    topic: str | None = None,
    partition: int | None = None,
    min_offset: int = -1,
) -> list[Message]:
    """The messages of a concatenation of whole batches (a fetch response's records), in
    order: `decode_batch` of each, with the same arguments (client side).

    Each batch is decoded where it lies in `records`, never copied out (as `iter_batches`
    does for the broker): at a million messages per second, a copy of every fetched byte
    is a measurable share of a consumer's time. Raises RaftmqError CORRUPT_MESSAGE for a
    truncated batch or anything `decode_batch` refuses. Loop bound: len(records) //
    HEADER_SIZE batches.
    """
    view = memoryview(records)
    end = len(records)
    pos = 0
    messages: list[Message] = []
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise _corrupt(f"truncated batch: {end - pos} bytes left at position {pos}")
        batch_end = pos + _LENGTH_PREFIX_SIZE + struct.unpack_from(">i", records, pos + 8)[0]
        if not pos + HEADER_SIZE <= batch_end <= end:
            raise _corrupt(
                f"batch at position {pos} says {batch_end - pos} bytes: shorter than its "
                f"header, or more than the {end - pos} left"
            )
        messages += decode_batch(
            view[pos:batch_end], topic=topic, partition=partition, min_offset=min_offset
        )
        pos = batch_end
    return messages


# --- compaction (the broker's log cleaner; never on the produce, replicate or fetch path) ----


@dataclass(frozen=True, slots=True)
class RecordSlice:
    """One record of a batch as compaction sees it: its identity, and its bytes (length
    prefix included) so that a kept record is copied, never re-encoded."""

    offset: int
    key: bytes | None
    tombstone: bool  # a null value: the key's deletion
    timestamp_ms: int
    raw: bytes


def record_slices(batch: bytes) -> tuple[BatchHeader, list[RecordSlice]]:
    """Every record of one whole stored batch (decompressed if need be). Raises RaftmqError
    CORRUPT_MESSAGE for malformed input."""
    header = _check_framing(memoryview(batch), 0, len(batch))
    codec = header.attributes & _CODEC_MASK
    if codec > _CODEC_MAX:
        raise _corrupt(f"unknown compression codec {codec}")
    data = (
        batch[HEADER_SIZE:]
        if codec == CODEC_NONE
        else decompress(codec, memoryview(batch)[HEADER_SIZE:])
    )
    data = bytes(data)
    slices: list[RecordSlice] = []
    outer = _codec_py._Reader(data, 0, len(data))
    try:
        # Bound: record_count records, each consuming at least one byte of the data.
        for index in range(header.record_count):
            begin = outer.pos
            length = outer.varint()
            start = outer.pos
            if not 0 < length <= len(data) - start:
                raise ValueError(f"record {index} of {length} bytes overruns the batch")
            reader = _codec_py._Reader(data, start + 1, start + length)  # after attributes
            timestamp_ms = header.base_timestamp + reader.varlong()
            offset = header.base_offset + reader.varint()
            key = reader.sized("key")
            _, value_length = reader.skip_sized("value")
            slices.append(
                RecordSlice(
                    offset, key, value_length < 0, timestamp_ms, data[begin : start + length]
                )
            )
            outer.pos = start + length
    except ValueError as e:
        raise _corrupt(f"bad records in a stored batch: {e}") from e
    return header, slices


def rebuild_batch(header: BatchHeader, kept: Sequence[RecordSlice]) -> bytes:
    """A batch of the `kept` records of the batch `header` describes: same base offset,
    leader epoch, attributes (compression), base timestamp, producer fields and
    last_offset_delta (so that the batch still ends where it ended: offsets stay offsets,
    compaction leaves holes); record_count and CRC are new."""
    assert kept, "a batch keeps at least one record"
    records = b"".join(r.raw for r in kept)
    codec = header.attributes & _CODEC_MASK
    if codec != CODEC_NONE:
        records = compress(codec, records)
    covered_header = _CRC_COVERED.pack(
        header.attributes,
        header.last_offset_delta,
        header.base_timestamp,
        header.max_timestamp,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        len(kept),
    )
    crc = crc32c.crc32c(records, crc32c.crc32c(covered_header))
    prefix = _UNCOVERED_PREFIX.pack(
        header.base_offset,
        HEADER_SIZE - _LENGTH_PREFIX_SIZE + len(records),
        header.partition_leader_epoch,
        MAGIC,
        crc,
    )
    return b"".join((prefix, covered_header, records))
