"""The Kafka API versions kio 0.6 dropped, hand-coded: Produce v2 and Fetch v2/v3, the
versions kafka-go 0.2.1 speaks, and the message sets (magic 0/1) they carry.

Scope is deliberately narrow. A legacy request decodes into the kio entity of the oldest
version kio still has with the same meaning (Produce v2 -> ProduceRequest v3 without a
transactional id; Fetch v2/v3 -> FetchRequest v4 at read-uncommitted), so the handlers
serve one shape; a legacy response is written from that same entity (Produce v2's
response has v3's layout byte for byte; Fetch v2/v3 drop v4's last stable offset and
aborted transactions).

The records inside are converted by the handlers, at this listener only, and never on
the path of any other client: `batch_from_message_set` when a legacy producer's message
set is appended (the log stores only v2 batches), `message_set_from_batches` when a
legacy consumer fetches. Headers do not exist before magic 2: a fetched record's headers
are dropped, as Kafka's own down-conversion drops them.

Message format v0/v1 (Kafka's "Message sets", protocol guide):

    offset int64, message_size int32, then the message:
    crc uint32 (CRC-32 of what follows), magic int8, attributes int8,
    [timestamp int64, magic 1 only], key bytes (int32 length, -1 null), value bytes

A compressed message set is one wrapper message whose value is the compressed inner
message set (attributes & 0x07: 1 gzip, 2 snappy, 3 lz4).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

from kio.schema.fetch.v4 import request as fetch_v4_request
from kio.schema.fetch.v4 import response as fetch_v4_response
from kio.schema.produce.v3 import request as produce_v3_request
from kio.schema.produce.v3 import response as produce_v3_response
from raftmq.compression import CODEC_GZIP, CODEC_LZ4, CODEC_NONE, CODEC_SNAPPY, decompress
from raftmq.errors import RaftmqError
from raftmq.message import Message
from raftmq.record_batch import decode_batches, encode_batch

# The kio modules, untyped here: this module builds entities from wire values it checked
# itself, and kio's nominal types (i32, TopicName, ...) would add nothing but casts.
produce_v3: Any = produce_v3_request
fetch_v4: Any = fetch_v4_request

PRODUCE = 0
FETCH = 1

# Fetch v2 has no request-level max_bytes; Kafka treats it as unlimited.
FETCH_V2_MAX_BYTES: Final = 2**31 - 1
# Bounds of what one legacy request may hold (the frame bound comes first).
ARRAY_ITEMS_MAX: Final = 100_000
MESSAGES_PER_SET_MAX: Final = 1_000_000

_ATTR_CODEC_MASK = 0x07
_ATTR_LOG_APPEND_TIME = 0x08
_MESSAGE_CODECS = {CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4}
_ENTRY_HEADER = struct.Struct(">qi")  # offset, message_size
_MESSAGE_V0_HEADER = struct.Struct(">Ibb")  # crc, magic, attributes
_MESSAGE_V1_HEADER = struct.Struct(">Ibbq")  # ... timestamp
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_PRODUCE_PARTITION = struct.Struct(">ii")  # partition, message_set_size
_FETCH_PARTITION = struct.Struct(">iqi")  # partition, fetch_offset, max_bytes


class LegacyDecodeError(Exception):
    """A legacy request that does not parse (the listener closes the connection)."""


class MessageSetError(ValueError):
    """A message set that cannot be converted (bad CRC, truncated, unknown codec): the
    partition is answered CORRUPT_MESSAGE and nothing is stored."""


# ---------------------------------------------------------------- the version table

_REQUEST_SCHEMAS: dict[tuple[int, int], type[Any]] = {
    (PRODUCE, 2): produce_v3_request.ProduceRequest,
    (FETCH, 2): fetch_v4_request.FetchRequest,
    (FETCH, 3): fetch_v4_request.FetchRequest,
}
_RESPONSE_SCHEMAS: dict[tuple[int, int], type[Any]] = {
    (PRODUCE, 2): produce_v3_response.ProduceResponse,
    (FETCH, 2): fetch_v4_response.FetchResponse,
    (FETCH, 3): fetch_v4_response.FetchResponse,
}


def request_schema(api_key: int, api_version: int) -> type[Any] | None:
    """The kio request class a legacy version decodes into; None if not legacy."""
    return _REQUEST_SCHEMAS.get((api_key, api_version))


def response_schema(api_key: int, api_version: int) -> type[Any] | None:
    """The kio response class a handler answers a legacy version with; None if not legacy."""
    return _RESPONSE_SCHEMAS.get((api_key, api_version))


def decoder(api_key: int, api_version: int) -> Callable[[bytes, int], Any] | None:
    if api_key == PRODUCE and api_version == 2:
        return decode_produce_v2
    if api_key == FETCH and api_version in (2, 3):
        return lambda data, offset: decode_fetch_v2_v3(data, offset, version=api_version)
    return None


def encoder(api_key: int, api_version: int) -> Callable[[io.BytesIO, Any], None] | None:
    # Produce v2's response is v3's layout: kio's v3 writer serves it (no encoder here).
    if api_key == FETCH and api_version in (2, 3):
        return encode_fetch_v2_v3
    return None


# ---------------------------------------------------------------- primitive reads


class _Cursor:
    """Reads big-endian primitives from a frame; every read is bounds-checked."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def _unpack(self, s: struct.Struct) -> Any:
        if self.offset + s.size > len(self.data):
            raise LegacyDecodeError(f"truncated at {self.offset}")
        (value,) = s.unpack_from(self.data, self.offset)
        self.offset += s.size
        return value

    def int16(self) -> int:
        return int(self._unpack(_INT16))

    def int32(self) -> int:
        return int(self._unpack(_INT32))

    def int64(self) -> int:
        return int(self._unpack(_INT64))

    def string(self) -> str:
        length = self.int16()
        if length < 0:
            raise LegacyDecodeError("null where a string is required")
        raw = self.take(length)
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise LegacyDecodeError(f"string is not UTF-8: {e}") from None

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise LegacyDecodeError(f"{size} bytes at {self.offset} run past the frame")
        raw = self.data[self.offset : self.offset + size]
        self.offset += size
        return raw

    def array_length(self) -> int:
        length = self.int32()
        if length == -1:
            return 0
        if not 0 <= length <= ARRAY_ITEMS_MAX or length > len(self.data) - self.offset:
            raise LegacyDecodeError(f"array length {length}")
        return length


# ---------------------------------------------------------------- produce v2


def decode_produce_v2(data: bytes, offset: int) -> Any:
    """ProduceRequest v2 (acks, timeout, topics of partitions of message sets) as kio's
    ProduceRequest v3; the records stay message-set bytes (the handler converts them)."""
    c = _Cursor(data, offset)
    acks = c.int16()
    timeout_ms = c.int32()
    topics = []
    for _ in range(c.array_length()):
        name = c.string()
        partitions = []
        for _ in range(c.array_length()):
            index = c.int32()
            size = c.int32()
            records = None if size == -1 else c.take(size)
            partitions.append(produce_v3.PartitionProduceData(index=index, records=records))
        topics.append(produce_v3.TopicProduceData(name=name, partition_data=tuple(partitions)))
    return produce_v3.ProduceRequest(
        transactional_id=None,
        acks=acks,
        timeout=timedelta(milliseconds=timeout_ms),
        topic_data=tuple(topics),
    )


# ---------------------------------------------------------------- fetch v2/v3


def decode_fetch_v2_v3(data: bytes, offset: int, *, version: int) -> Any:
    """FetchRequest v2 (v3: plus a request-level max_bytes) as kio's FetchRequest v4."""
    c = _Cursor(data, offset)
    replica_id = c.int32()
    max_wait_ms = c.int32()
    min_bytes = c.int32()
    max_bytes = c.int32() if version >= 3 else FETCH_V2_MAX_BYTES
    topics = []
    for _ in range(c.array_length()):
        name = c.string()
        partitions = []
        for _ in range(c.array_length()):
            if c.offset + _FETCH_PARTITION.size > len(data):
                raise LegacyDecodeError(f"truncated at {c.offset}")
            index, fetch_offset, partition_max = _FETCH_PARTITION.unpack_from(data, c.offset)
            c.offset += _FETCH_PARTITION.size
            partitions.append(
                fetch_v4.FetchPartition(
                    partition=index, fetch_offset=fetch_offset, partition_max_bytes=partition_max
                )
            )
        topics.append(fetch_v4.FetchTopic(topic=name, partitions=tuple(partitions)))
    return fetch_v4.FetchRequest(
        replica_id=replica_id,
        max_wait=timedelta(milliseconds=max_wait_ms),
        min_bytes=min_bytes,
        max_bytes=max_bytes,
        isolation_level=0,
        topics=tuple(topics),
    )


def encode_fetch_v2_v3(buffer: io.BytesIO, response: Any) -> None:
    """Fetch v2/v3 response from kio's FetchResponse v4 (whose records the handler already
    turned into message sets): throttle time, then per partition the index, error code,
    high watermark and message set."""
    assert isinstance(response, fetch_v4_response.FetchResponse)
    write = buffer.write
    write(_INT32.pack(_ms(response.throttle_time)))
    write(_INT32.pack(len(response.responses)))
    for topic in response.responses:
        _write_string(buffer, topic.topic)
        write(_INT32.pack(len(topic.partitions)))
        for p in topic.partitions:
            records = p.records or b""
            write(
                struct.pack(
                    ">ihqi", p.partition_index, int(p.error_code), p.high_watermark, len(records)
                )
            )
            write(records)


def _write_string(buffer: io.BytesIO, text: str) -> None:
    raw = text.encode()
    buffer.write(_INT16.pack(len(raw)))
    buffer.write(raw)


def _ms(value: timedelta) -> int:
    return int(value.total_seconds() * 1000)


# ---------------------------------------------------------------- message sets -> batch


def messages_of_message_set(data: bytes) -> list[Message]:
    """The messages of a produced message set (magic 0 or 1, compressed wrappers
    unwrapped), in order. Raises MessageSetError for anything malformed or empty."""
    messages: list[Message] = []
    _read_message_set(data, messages, nested=False)
    if not messages:
        raise MessageSetError("an empty message set")
    return messages


def batch_from_message_set(data: bytes, *, now_ms: int | None = None) -> bytes:
    """One v2 batch (base offset 0, as a producer sends it) with the messages of a legacy
    message set: keys, values and create timestamps kept, a magic 0 message stamped with
    `now_ms`, compression kept when the wrapper was compressed. Raises MessageSetError."""
    messages = messages_of_message_set(data)
    codec = _outer_codec(data)
    try:
        return encode_batch(messages, compression=codec, now_ms=now_ms)
    except (ValueError, TypeError) as e:
        raise MessageSetError(f"cannot re-encode the message set: {e}") from None


def _outer_codec(data: bytes) -> int:
    if len(data) < _ENTRY_HEADER.size + _MESSAGE_V0_HEADER.size:
        return CODEC_NONE
    _crc, _magic, attributes = _MESSAGE_V0_HEADER.unpack_from(data, _ENTRY_HEADER.size)
    codec = int(attributes) & _ATTR_CODEC_MASK
    return codec if codec in _MESSAGE_CODECS else CODEC_NONE


def _read_message_set(data: bytes, out: list[Message], *, nested: bool) -> None:
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _ENTRY_HEADER.size:
            raise MessageSetError(f"truncated message at {pos}")
        _offset, size = _ENTRY_HEADER.unpack_from(data, pos)
        start = pos + _ENTRY_HEADER.size
        if size < _MESSAGE_V0_HEADER.size or start + size > end:
            raise MessageSetError(f"message at {pos} says {size} bytes; {end - start} left")
        _read_message(data[start : start + size], out, nested=nested)
        if len(out) > MESSAGES_PER_SET_MAX:
            raise MessageSetError(f"more than {MESSAGES_PER_SET_MAX} messages in one set")
        pos = start + size


def _read_message(message: bytes, out: list[Message], *, nested: bool) -> None:
    crc, magic, attributes = _MESSAGE_V0_HEADER.unpack_from(message, 0)
    if magic not in (0, 1):
        raise MessageSetError(f"magic {magic} in a message set (0 or 1 expected)")
    if zlib.crc32(memoryview(message)[4:]) != crc:
        raise MessageSetError("message CRC mismatch")
    pos = _MESSAGE_V0_HEADER.size
    timestamp_ms = -1
    if magic == 1:
        if len(message) < _MESSAGE_V1_HEADER.size:
            raise MessageSetError("truncated magic 1 message")
        timestamp_ms = _MESSAGE_V1_HEADER.unpack_from(message, 0)[3]
        pos = _MESSAGE_V1_HEADER.size
    key, pos = _read_bytes(message, pos)
    value, pos = _read_bytes(message, pos)
    if pos != len(message):
        raise MessageSetError(f"{len(message) - pos} bytes after the message's value")
    codec = attributes & _ATTR_CODEC_MASK
    if codec == CODEC_NONE:
        out.append(Message(value, key, timestamp_ms=max(timestamp_ms, -1)))
        return
    if nested or codec not in _MESSAGE_CODECS:
        raise MessageSetError(f"compression codec {codec} " + ("nested" if nested else "unknown"))
    if value is None:
        raise MessageSetError("a compressed wrapper message without a value")
    try:
        inner = decompress(codec, value)
    except (ValueError, RaftmqError, OSError) as e:
        raise MessageSetError(f"cannot decompress the wrapper message: {e}") from None
    first = len(out)
    _read_message_set(inner, out, nested=True)
    if magic == 1 and attributes & _ATTR_LOG_APPEND_TIME:
        for m in out[first:]:
            m.timestamp_ms = timestamp_ms


def _read_bytes(message: bytes, pos: int) -> tuple[bytes | None, int]:
    if pos + 4 > len(message):
        raise MessageSetError("truncated message")
    (length,) = _INT32.unpack_from(message, pos)
    pos += 4
    if length == -1:
        return None, pos
    if length < 0 or pos + length > len(message):
        raise MessageSetError(f"a length of {length} runs past the message")
    return message[pos : pos + length], pos + length


# ---------------------------------------------------------------- batches -> message set


def message_set_from_batches(records: bytes, *, min_offset: int) -> bytes:
    """A magic 1, uncompressed message set of the messages in stored v2 batches at or
    after `min_offset`, each with its absolute offset and its timestamp. Headers are
    dropped (magic 1 has none). Raises RaftmqError CORRUPT_MESSAGE for a bad stored batch."""
    out = io.BytesIO()
    for m in decode_batches(records, min_offset=min_offset):
        out.write(encode_message_v1(m.offset, m.timestamp_ms, m.key, m.value))
    return out.getvalue()


def encode_message_v1(
    offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None
) -> bytes:
    """One message set entry (offset, size, message) in format v1, uncompressed."""
    body = io.BytesIO()
    body.write(struct.pack(">bbq", 1, 0, timestamp_ms))
    for part in (key, value):
        if part is None:
            body.write(_INT32.pack(-1))
        else:
            body.write(_INT32.pack(len(part)))
            body.write(part)
    tail = body.getvalue()
    crc = zlib.crc32(tail) & 0xFFFFFFFF
    return _ENTRY_HEADER.pack(offset, 4 + len(tail)) + struct.pack(">I", crc) + tail
