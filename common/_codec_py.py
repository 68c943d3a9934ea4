"""The records section of a Kafka RecordBatch v2, in pure Python: the fallback of `_codec`.

`raftmq.record_batch` uses the compiled `raftmq._codec` when it is importable and this
module otherwise (or when RAFTMQ_PURE_PYTHON_CODEC=1). Both implement the same two
functions with the same results and the same errors, and the unit tests run every case
against both; the record layout is documented in `raftmq.record_batch`.

Varints are Kafka's: zigzag, 7 bits per byte, least significant group first, at most 5
bytes (varint, int32) or 10 bytes (varlong, int64). A final byte's bits beyond the type's
width are dropped, exactly as Java's ByteUtils.readVarint / readVarlong drop them, so that
both readers accept the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftmq.message import Header, Message

__all__ = ["decode_records", "encode_records", "payload_bytes", "untrack_messages"]

_INT32_MAX = 2**31 - 1
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT32_MASK = 2**32 - 1
_UINT64_MASK = 2**64 - 1
# A record is at least 7 bytes: length, attributes, timestamp delta, offset delta, key
# length, value length and header count, one byte each.
RECORD_BYTES_MIN = 7
# A header is at least 2 bytes: key length and value length.
_HEADER_BYTES_MIN = 2

_new_message = Message.__new__
_NO_HEADERS: tuple[Header, ...] = ()


def _uvarint(value: int) -> bytes:
    """`value` (>= 0, < 2**64) as 7-bit groups, least significant first."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint(value: int) -> bytes:
    """A zigzag varint of an int32 (-1 -> 1, 1 -> 2, ...)."""
    return _uvarint(((value << 1) ^ (value >> 31)) & _UINT32_MASK)


def _varlong(value: int) -> bytes:
    return _uvarint(((value << 1) ^ (value >> 63)) & _UINT64_MASK)


def _field_bytes(data: object, what: str) -> bytes | None:
    """A key, value or header value as the wire carries it (None = null).

    Only bytes, str (as UTF-8) and None, as the compiled codec accepts: `Message()` turns
    other bytes-like objects into bytes.
    """
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    raise TypeError(f"{what} must be bytes, str or None, not {type(data).__name__}")


def _sized(data: bytes | None, what: str) -> bytes:
    """Length varint (-1 = null) followed by the bytes."""
    if data is None:
        return b"\x01"  # zigzag(-1)
    if len(data) > _INT32_MAX:
        raise ValueError(f"{what} of {len(data)} bytes exceeds Kafka's int32 length")
    return _varint(len(data)) + data


def encode_records(messages: Sequence[Message], now_ms: int) -> tuple[bytes, int, int]:
    """The records section for `messages` (at least one) and its base / max timestamps.

    Record i gets offset delta i and timestamp delta (its timestamp - the first record's);
    a message with timestamp_ms -1 gets `now_ms`. Raises TypeError / ValueError for a
    message that cannot be encoded (a field of the wrong type, a timestamp below -1).
    """
    if not 1 <= len(messages) <= _INT32_MAX:
        raise ValueError("a batch holds 1 .. 2**31 - 1 records")
    timestamps_ms: list[int] = []
    for message in messages:
        if not isinstance(message, Message):
            raise TypeError(f"expected a Message, got {type(message).__name__}")
        timestamp_ms = message.timestamp_ms
        if not isinstance(timestamp_ms, int):
            raise TypeError(f"timestamp_ms must be int, not {type(timestamp_ms).__name__}")
        if timestamp_ms == -1:
            timestamp_ms = now_ms
        if not 0 <= timestamp_ms <= _INT64_MAX:
            raise ValueError(f"timestamp {timestamp_ms} ms is outside 0 .. 2**63 - 1 (or -1)")
        timestamps_ms.append(timestamp_ms)
    base_timestamp_ms = timestamps_ms[0]
    parts: list[bytes] = []
    for offset_delta, (message, timestamp_ms) in enumerate(
        zip(messages, timestamps_ms, strict=True)
    ):
        headers = message.headers
        if not isinstance(headers, tuple | list):
            raise TypeError(f"headers must be a tuple or list, not {type(headers).__name__}")
        fields = [
            b"\x00",  # attributes: unused in v2 records
            _varlong(timestamp_ms - base_timestamp_ms),
            _varint(offset_delta),
            _sized(_field_bytes(message.key, "key"), "key"),
            _sized(_field_bytes(message.value, "value"), "value"),
            _varint(len(headers)),
        ]
        for header in headers:
            if type(header) is not tuple or len(header) != 2:
                raise TypeError("a header must be a (str, bytes or None) tuple")
            name, header_value = header
            if not isinstance(name, str):
                raise TypeError(f"a header key must be str, not {type(name).__name__}")
            fields.append(_sized(name.encode("utf-8"), "header key"))
            fields.append(_sized(_field_bytes(header_value, "header value"), "header value"))
        body = b"".join(fields)
        if len(body) > _INT32_MAX:
            raise ValueError(f"record of {len(body)} bytes exceeds Kafka's int32 length")
        parts.append(_varint(len(body)))
        parts.append(body)
    return b"".join(parts), base_timestamp_ms, max(timestamps_ms)


class _Reader:
    """A cursor over data[pos:end]; every read is bounds-checked and raises ValueError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def _uvarint(self, groups_max: int, mask: int) -> int:
        data = self.data
        pos = self.pos
        result = 0
        shift = 0
        # Bound: groups_max bytes.
        for _ in range(groups_max):
            if pos >= self.end:
                raise ValueError(f"truncated varint at position {pos}")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return result & mask
            shift += 7
        raise ValueError(f"varint longer than {groups_max} bytes at position {self.pos}")

    def varint(self) -> int:
        unsigned = self._uvarint(5, _UINT32_MASK)
        return (unsigned >> 1) ^ -(unsigned & 1)

    def varlong(self) -> int:
        unsigned = self._uvarint(10, _UINT64_MASK)
        return (unsigned >> 1) ^ -(unsigned & 1)

    def skip_sized(self, what: str) -> tuple[int, int]:
        """A length varint (-1 = null) and the bytes it announces, skipped: their (start,
        length), length -1 for null."""
        length = self.varint()
        if length < 0:
            if length == -1:
                return self.pos, -1
            raise ValueError(f"{what} length {length} is below -1")
        start = self.pos
        if length > self.end - start:
            raise ValueError(f"{what} of {length} bytes overruns its record at position {start}")
        self.pos = start + length
        return start, length

    def sized(self, what: str) -> bytes | None:
        """A length varint (-1 = null) and that many bytes."""
        start, length = self.skip_sized(what)
        return None if length < 0 else self.data[start : start + length]

    def header_count(self, index: int) -> int:
        count = self.varint()
        if not 0 <= count <= (self.end - self.pos) // _HEADER_BYTES_MIN:
            raise ValueError(f"record {index} claims {count} headers")
        return count

    def header_key(self, index: int) -> tuple[int, int]:
        """A header key's (start, length), not decoded; a null key is malformed."""
        start, length = self.skip_sized("header key")
        if length < 0:
            raise ValueError(f"record {index} has a null header key")
        return start, length

    def headers(self, index: int) -> tuple[Header, ...]:
        count = self.header_count(index)
        if count == 0:
            return _NO_HEADERS
        pairs: list[Header] = []
        for _ in range(count):
            start, length = self.header_key(index)
            name = self.data[start : start + length].decode("utf-8")
            pairs.append((name, self.sized("header value")))
        return tuple(pairs)

    def skip_fields(self, index: int) -> None:
        """The key, value and headers of a record below min_offset: checked as `headers`
        checks them (header keys are not decoded as UTF-8), nothing built."""
        self.skip_sized("key")
        self.skip_sized("value")
        for _ in range(self.header_count(index)):
            self.header_key(index)
            self.skip_sized("header value")


def decode_records(
    data: bytes | memoryview,
    start: int,
    record_count: int,
    *,
    base_offset: int,
    base_timestamp_ms: int,
    log_append_time_ms: int | None,
    topic: str | None = None,
    partition: int | None = None,
    min_offset: int = -1,
) -> list[Message]:
    """The `record_count` records in data[start:], which they must fill exactly.

    Offsets are base_offset + offset delta; timestamps base_timestamp_ms + delta, or
    `log_append_time_ms` for every record when it is given (a LogAppendTime batch). Every
    message gets `topic` and `partition`. Records whose offset is below `min_offset` (when
    it is >= 0: a consumer's fetch position) are checked but not returned, and nothing is
    built for them (header keys are not decoded). Raises ValueError for any malformed
    input, never another error, whatever the bytes; TypeError for a topic or partition of
    the wrong type.
    """
    if type(data) is not bytes:
        data = bytes(data)  # a view into a fetch response: slices must be bytes
    if topic is not None and not isinstance(topic, str):
        raise TypeError(f"topic must be str or None, not {type(topic).__name__}")
    if partition is not None and not isinstance(partition, int):
        raise TypeError(f"partition must be int or None, not {type(partition).__name__}")
    end = len(data)
    if not 0 <= start <= end:
        raise ValueError(f"records start at {start}, outside the {end}-byte batch")
    # Checked before anything is allocated: a forged count cannot allocate beyond the data.
    if record_count < 0 or record_count > (end - start) // RECORD_BYTES_MIN:
        raise ValueError(
            f"{record_count} records cannot fit in {end - start} bytes "
            f"(each takes at least {RECORD_BYTES_MIN})"
        )
    messages: list[Message] = []
    outer = _Reader(data, start, end)
    # Bound: record_count records, each consuming >= RECORD_BYTES_MIN bytes.
    for index in range(record_count):
        length = outer.varint()
        record_start = outer.pos
        if not 0 <= length <= end - record_start:
            raise ValueError(f"record {index} of {length} bytes overruns the batch")
        record_end = record_start + length
        reader = _Reader(data, record_start, record_end)
        if record_start >= record_end:
            raise ValueError(f"record {index} is empty")
        reader.pos += 1  # attributes: unused in v2 records
        timestamp_delta_ms = reader.varlong()
        offset = base_offset + reader.varint()
        if log_append_time_ms is not None:
            timestamp_ms = log_append_time_ms
        else:
            timestamp_ms = base_timestamp_ms + timestamp_delta_ms
        if not (_INT64_MIN <= offset <= _INT64_MAX and _INT64_MIN <= timestamp_ms <= _INT64_MAX):
            raise ValueError(f"record {index}'s offset or timestamp overflows int64")
        message = None
        if min_offset >= 0 and offset < min_offset:
            reader.skip_fields(index)
        else:
            message = _new_message(Message)
            message.key = reader.sized("key")
            message.value = reader.sized("value")
            message.headers = reader.headers(index)
            message.topic = topic
            message.partition = partition
            message.offset = offset
            message.timestamp_ms = timestamp_ms
        if reader.pos != record_end:
            raise ValueError(
                f"record {index} says {length} bytes, its fields take {reader.pos - record_start}"
            )
        if message is not None:
            messages.append(message)
        outer.pos = record_end
    if outer.pos != end:
        raise ValueError(f"{end - outer.pos} bytes follow the last of {record_count} records")
    return messages


def payload_bytes(messages: list[Message]) -> int:
    """The bytes of the keys and values of `messages` (None counts 0): a consumer's
    fetched-bytes figure."""
    if not isinstance(messages, list):
        raise TypeError(f"payload_bytes() takes a list, not {type(messages).__name__}")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, Message):
            raise TypeError(f"payload_bytes() item {i} is {type(message).__name__}, not Message")
        total += len(message.key or b"") + len(message.value or b"")
    return total


def untrack_messages(messages: Sequence[Message]) -> int:
    """Python cannot take an object out of the cycle collector's lists: none is (the
    compiled codec does; see its comment on decoded messages and the GC)."""
    return 0
