"""`Message`: one Kafka record as raftmq's client API shows it (`from raftmq import Message`).

It mirrors kafka-go's Message: a value, an optional key, headers and a time, plus the
topic / partition / offset a reader fills in. The record codec (`raftmq.record_batch`)
encodes lists of them into Kafka RecordBatch v2 bytes and decodes batches back into them;
its compiled half (`raftmq._codec`) allocates decoded instances without calling
`__init__` and reads and writes the `__slots__` below directly, so the slot names and
their meaning are part of that contract (the extension checks them when it is imported).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable

__all__ = ["OFFSET_UNSET", "TIMESTAMP_UNSET", "Header", "Message"]

# timestamp_ms / offset of a message that has none yet: the writer stamps the current time
# into such a message's record; the leader assigns offsets.
TIMESTAMP_UNSET = -1
OFFSET_UNSET = -1
# Kafka timestamps are int64 milliseconds since the Unix epoch, >= 0 (or -1 = unset).
_TIMESTAMP_MS_MAX = 2**63 - 1
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MILLISECOND = _dt.timedelta(milliseconds=1)
# __repr__ shows at most this many bytes of a key, value or header value.
_REPR_BYTES_MAX = 24

Header = tuple[str, bytes | None]
# The default `headers` of a Message, and the `headers` of one that has none.
_NO_HEADERS: tuple[Header, ...] = ()


def _as_bytes(data: bytes | bytearray | memoryview | str | None, what: str) -> bytes | None:
    """bytes as they are; str as UTF-8; other bytes-like objects copied; None stays None."""
    if data is None or type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, str or None, not {type(data).__name__}")


def _headers_of(
    headers: Iterable[tuple[str, bytes | bytearray | memoryview | str | None]],
) -> tuple[Header, ...]:
    pairs: list[Header] = []
    for name, header_value in headers:
        if not isinstance(name, str):
            raise TypeError(f"a header key must be str, not {type(name).__name__}")
        pairs.append((name, _as_bytes(header_value, f"header {name!r}")))
    return tuple(pairs)


def _timestamp_ms_of(time: _dt.datetime) -> int:
    """Milliseconds since the epoch, rounded down; a naive datetime is local time."""
    aware = time if time.tzinfo is not None else time.astimezone()
    # Integer timedelta arithmetic: exact, unlike datetime.timestamp()'s float.
    return (aware - _EPOCH) // _MILLISECOND


def _shown(data: bytes | None) -> str:
    if data is None or len(data) <= _REPR_BYTES_MAX:
        return repr(data)
    return f"{data[:_REPR_BYTES_MAX]!r}...({len(data)} B)"


class Message:
    """One record: value, key, headers and time; topic, partition and offset once read.

    `Message(value=b"...", key=None, topic=None, partition=None, headers=[("k", b"v")],
    time=None)`. value / key: bytes or None (str is encoded as UTF-8). headers: (str key,
    bytes-or-None value) pairs, kept in order (keys may repeat, as in Kafka). time: a
    datetime (naive means local time, as `datetime.timestamp()` reads it), stored as
    `timestamp_ms`; `timestamp_ms` may be given instead. -1 means unset: the writer stamps
    the current time. `offset` is -1 until the message was read from a log.

    The fields are plain mutable attributes; `encode_batch` reads them as they are when it
    is called. Decoded messages, and those a Writer accepts whose fields hold only bytes,
    str, int, None and such headers, are left to reference counting, outside the cycle
    collector: a container assigned to a field that refers back to its message
    (`m.headers = [m]`) is then never collected.
    """

    # The compiled codec reads and writes these slots by offset: renaming one breaks its
    # import-time check, not silently its output.
    __slots__ = ("headers", "key", "offset", "partition", "timestamp_ms", "topic", "value")

    value: bytes | None
    key: bytes | None
    topic: str | None
    partition: int | None
    offset: int
    headers: tuple[Header, ...]
    timestamp_ms: int

    def __init__(
        self,
        value: bytes | bytearray | memoryview | str | None = None,
        key: bytes | bytearray | memoryview | str | None = None,
        *,
        topic: str | None = None,
        partition: int | None = None,
        headers: Iterable[tuple[str, bytes | bytearray | memoryview | str | None]] = _NO_HEADERS,
        time: _dt.datetime | None = None,
        offset: int = OFFSET_UNSET,
        timestamp_ms: int = TIMESTAMP_UNSET,
    ) -> None:
        if time is not None:
            if timestamp_ms != TIMESTAMP_UNSET:
                raise ValueError("give either time or timestamp_ms, not both")
            timestamp_ms = _timestamp_ms_of(time)
        if timestamp_ms != TIMESTAMP_UNSET and not 0 <= timestamp_ms <= _TIMESTAMP_MS_MAX:
            raise ValueError(
                f"timestamp {timestamp_ms} ms is outside Kafka's range: 0 (1970) .. 2**63 - 1, "
                "or -1 for the writer's current time"
            )
        # bytes, None and no headers are by far the common case: no call and no allocation
        # for them (a writer builds hundreds of thousands of messages a second).
        self.value = value if value is None or type(value) is bytes else _as_bytes(value, "value")
        self.key = key if key is None or type(key) is bytes else _as_bytes(key, "key")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.headers = _NO_HEADERS if headers is _NO_HEADERS else _headers_of(headers)
        self.timestamp_ms = timestamp_ms

    @property
    def time(self) -> _dt.datetime | None:
        """The record's time as an aware UTC datetime; None while timestamp_ms is -1.

        Raises OverflowError for a timestamp past datetime's year 9999.
        """
        if self.timestamp_ms < 0:
            return None
        return _EPOCH + self.timestamp_ms * _MILLISECOND

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.value == other.value
            and self.key == other.key
            and self.topic == other.topic
            and self.partition == other.partition
            and self.offset == other.offset
            and self.headers == other.headers
            and self.timestamp_ms == other.timestamp_ms
        )

    # Mutable and compared by value: not hashable, like a list.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = []
        if self.topic is not None:
            parts.append(f"topic={self.topic!r}")
        if self.partition is not None:
            parts.append(f"partition={self.partition}")
        if self.offset != OFFSET_UNSET:
            parts.append(f"offset={self.offset}")
        if self.key is not None:
            parts.append(f"key={_shown(self.key)}")
        parts.append(f"value={_shown(self.value)}")
        if self.headers:
            shown = ", ".join(f"({k!r}, {_shown(v)})" for k, v in self.headers)
            parts.append(f"headers=[{shown}]")
        if self.timestamp_ms != TIMESTAMP_UNSET:
            parts.append(f"timestamp_ms={self.timestamp_ms}")
        return f"Message({', '.join(parts)})"
