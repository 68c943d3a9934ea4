"""The record batch codec, shared by the client (encode, decode) and the broker (validate, stamp).

A batch is one opaque blob per producer request and partition, laid out as Kafka's
RecordBatch v2 header followed by a columnar payload. The broker never decodes individual
records: it validates a produce batch once (`validate_batch`, cost O(header + one pass of
C-level sums over the length arrays)), stamps the base offset and leader epoch into the
header (`stamp_batch`, the CRC does not cover those two fields) and stores, replicates and
serves the identical bytes.

Header, big-endian, `HEADER_SIZE` = 61 bytes::

    offset size field
         0    8 base_offset             int64  stamped by the leader
         8    4 batch_length            int32  bytes after this field (= total size - 12)
        12    4 partition_leader_epoch  int32  stamped by the leader
        16    1 magic                   int8   = MAGIC (2)
        17    4 crc                     uint32 CRC-32C of bytes [21, end)
        21    2 attributes              int16  low 3 bits: compression codec (only 0 = none)
        23    4 last_offset_delta       int32  = record_count - 1
        27    8 base_timestamp          int64  ms, = min record timestamp
        35    8 max_timestamp           int64  ms, = max record timestamp
        43    8 producer_id             int64  -1 without idempotence
        51    2 producer_epoch          int16
        53    4 base_sequence           int32
        57    4 record_count            int32  >= 1

Payload (columnar, so that encoding and validation need no per-record Python loop)::

    key_lengths int32[n] (-1 = null key) | value_lengths int32[n] (-1 = null value) |
    timestamp_deltas int64[n] (ms, >= 0, relative to base_timestamp) |
    all keys concatenated | all values concatenated

Per-record headers are not supported yet (they would need a new attributes bit or magic).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import attrgetter

import crc32c
from raftmq.errors import ErrorCode, RaftmqError

__all__ = [
    "CODEC_NONE",
    "HEADER_SIZE",
    "MAGIC",
    "BatchHeader",
    "Record",
    "decode_records",
    "encode_batch",
    "iter_batches",
    "read_header",
    "stamp_batch",
    "validate_batch",
]

MAGIC = 2
CODEC_NONE = 0
_CODEC_MASK = 0x07

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

# The payload arrays are parsed with `array`, whose item sizes are platform-defined.
assert array("i").itemsize == 4
assert array("q").itemsize == 8
_SWAP = sys.byteorder == "little"  # wire order is big-endian


@dataclass(frozen=True, slots=True)
class Record:
    """One record as the client sees it. `offset` is -1 until the batch is decoded from a log."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    offset: int = -1


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


_get_key = attrgetter("key")
_get_value = attrgetter("value")
_get_timestamp_ms = attrgetter("timestamp_ms")


def _corrupt(message: str) -> RaftmqError:
    return RaftmqError(ErrorCode.CORRUPT_MESSAGE, message)


def _int32_array(data: bytes | memoryview, start: int, count: int) -> array[int]:
    column = array("i")
    column.frombytes(data[start : start + 4 * count])
    if _SWAP:
        column.byteswap()
    return column


def _int64_array(data: bytes | memoryview, start: int, count: int) -> array[int]:
    column = array("q")
    column.frombytes(data[start : start + 8 * count])
    if _SWAP:
        column.byteswap()
    return column


def encode_batch(
    records: Sequence[Record],
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """Encode `records` as one batch (client side).

    The result has base_offset 0 and partition_leader_epoch -1 (the leader stamps both);
    base_timestamp / max_timestamp are the min / max record timestamps. Record offsets are
    ignored. Cost: a few list comprehensions over the records, no per-record struct calls.
    """
    assert records, "a batch holds at least one record"
    count = len(records)
    assert count <= _INT32_MAX
    keys = list(map(_get_key, records))
    values = list(map(_get_value, records))
    timestamps_ms = list(map(_get_timestamp_ms, records))
    base_timestamp = min(timestamps_ms)
    max_timestamp = max(timestamps_ms)

    key_lengths = array("i", [-1 if k is None else len(k) for k in keys])
    value_lengths = array("i", [-1 if v is None else len(v) for v in values])
    timestamp_deltas = array("q", [t - base_timestamp for t in timestamps_ms])
    if _SWAP:
        key_lengths.byteswap()
        value_lengths.byteswap()
        timestamp_deltas.byteswap()
    # filter(None, ...) drops both None and b"", which contribute no bytes anyway.
    body = b"".join(
        (
            _CRC_COVERED.pack(
                CODEC_NONE,
                count - 1,
                base_timestamp,
                max_timestamp,
                producer_id,
                producer_epoch,
                base_sequence,
                count,
            ),
            key_lengths.tobytes(),
            value_lengths.tobytes(),
            timestamp_deltas.tobytes(),
            *filter(None, keys),
            *filter(None, values),
        )
    )
    batch_length = _CRC_COVERED_FROM - _LENGTH_PREFIX_SIZE + len(body)
    assert batch_length <= _INT32_MAX, "batch too large to encode"
    prefix = _UNCOVERED_PREFIX.pack(0, batch_length, -1, MAGIC, crc32c.crc32c(body))
    return prefix + body


def read_header(data: bytes | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the header at `pos` without any check (for batches the broker already stored)."""
    return BatchHeader(*_HEADER.unpack_from(data, pos))


def _check_header(data: bytes | memoryview, pos: int, end: int) -> BatchHeader:
    """Check the header-level framing of the batch at data[pos:end] (exactly one batch).

    Checks size, magic, CRC, codec, record count. Does not look at the payload structure.
    """
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
    codec = header.attributes & _CODEC_MASK
    if codec != CODEC_NONE:
        raise _corrupt(f"unsupported compression codec {codec} (only 0 = none is supported)")
    if header.attributes != 0:
        raise _corrupt(
            f"unsupported attributes {header.attributes:#06x} "
            "(timestamp type, transactional and control batches are not supported)"
        )
    if header.record_count < 1:
        raise _corrupt(f"record_count {header.record_count} must be at least 1")
    if header.last_offset_delta != header.record_count - 1:
        raise _corrupt(
            f"last_offset_delta {header.last_offset_delta} != record_count - 1 "
            f"({header.record_count - 1})"
        )
    if header.max_timestamp < header.base_timestamp:
        raise _corrupt(
            f"max_timestamp {header.max_timestamp} < base_timestamp {header.base_timestamp}"
        )
    return header


def _check_payload(
    data: bytes | memoryview, pos: int, header: BatchHeader
) -> tuple[array[int], array[int], array[int]]:
    """Check the columnar payload of a header-checked batch; return its three columns.

    Work: C-level min/max/sum/count over the arrays, no per-record Python loop. The arrays
    are only allocated after the payload was shown to be large enough to hold them, so a
    forged record_count cannot make us allocate more than the batch size.
    """
    count = header.record_count
    payload_start = pos + HEADER_SIZE
    payload_bytes = header.size_bytes - HEADER_SIZE
    columns_bytes = 16 * count
    if columns_bytes > payload_bytes:
        raise _corrupt(
            f"{count} records need {columns_bytes} bytes of length/timestamp columns, "
            f"payload has {payload_bytes}"
        )
    key_lengths = _int32_array(data, payload_start, count)
    value_lengths = _int32_array(data, payload_start + 4 * count, count)
    timestamp_deltas = _int64_array(data, payload_start + 8 * count, count)
    if min(key_lengths) < -1 or min(value_lengths) < -1:
        raise _corrupt("a key or value length is below -1")
    # Each -1 (null) adds -1 to the sum; adding the count of -1s back gives the byte total.
    keys_bytes = sum(key_lengths) + key_lengths.count(-1)
    values_bytes = sum(value_lengths) + value_lengths.count(-1)
    expected_bytes = columns_bytes + keys_bytes + values_bytes
    if expected_bytes != payload_bytes:
        raise _corrupt(f"payload is {payload_bytes} bytes, the record lengths say {expected_bytes}")
    # Every record timestamp must lie in [base_timestamp, max_timestamp]: retention and
    # offset_for_timestamp trust the header's max_timestamp.
    if min(timestamp_deltas) < 0 or max(timestamp_deltas) > (
        header.max_timestamp - header.base_timestamp
    ):
        raise _corrupt("a record timestamp lies outside [base_timestamp, max_timestamp]")
    return key_lengths, value_lengths, timestamp_deltas


def validate_batch(data: bytes, *, max_bytes: int) -> BatchHeader:
    """Validate one producer batch (broker side, before stamping and appending).

    Raises RaftmqError MESSAGE_TOO_LARGE when len(data) > max_bytes, CORRUPT_MESSAGE for any
    malformed input (framing, magic, CRC, codec, counts, lengths, timestamps). Never raises
    anything else, whatever the bytes. Cost: one CRC-32C pass plus C-level sums over the
    length columns; individual records are never materialized.
    """
    if len(data) > max_bytes:
        raise RaftmqError(
            ErrorCode.MESSAGE_TOO_LARGE, f"batch of {len(data)} bytes exceeds {max_bytes} bytes"
        )
    header = _check_header(data, 0, len(data))
    _check_payload(data, 0, header)
    return header


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

    Yields (header, batch bytes) in order. Each batch's framing, magic, CRC, codec and
    record count are checked (not its payload: see `decode_records`); a truncated or
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
        header = _check_header(view, pos, batch_end)
        yield header, data[pos:batch_end]
        pos = batch_end


def decode_records(batch: bytes) -> list[Record]:
    """Decode one whole batch into records (client side).

    Record i gets offset base_offset + i and timestamp base_timestamp + delta_i. Raises
    CORRUPT_MESSAGE (only) for malformed input.
    """
    header = _check_header(batch, 0, len(batch))
    key_lengths, value_lengths, timestamp_deltas = _check_payload(batch, 0, header)
    count = header.record_count
    base_offset = header.base_offset
    base_timestamp = header.base_timestamp
    # A null (-1) takes no bytes: clamp lengths to >= 0 to find where each field starts.
    key_lengths_list = key_lengths.tolist()
    value_lengths_list = value_lengths.tolist()
    key_starts = accumulate(
        [n if n > 0 else 0 for n in key_lengths_list], initial=HEADER_SIZE + 16 * count
    )
    keys = [
        batch[s : s + n] if n >= 0 else None
        for n, s in zip(key_lengths_list, key_starts, strict=False)
    ]
    values_start = HEADER_SIZE + 16 * count + sum(key_lengths) + key_lengths.count(-1)
    value_starts = accumulate([n if n > 0 else 0 for n in value_lengths_list], initial=values_start)
    values = [
        batch[s : s + n] if n >= 0 else None
        for n, s in zip(value_lengths_list, value_starts, strict=False)
    ]
    timestamps_ms = map(base_timestamp.__add__, timestamp_deltas)
    offsets = range(base_offset, base_offset + count)
    return list(map(Record, keys, values, timestamps_ms, offsets))
