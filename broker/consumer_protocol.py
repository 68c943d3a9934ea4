"""The bytes a classic "consumer" group carries: Kafka's ConsumerProtocolSubscription
(JoinGroup metadata) and ConsumerProtocolAssignment (SyncGroup assignment).

The coordinator never needs them to run the protocol — assignment is the clients' — but
it reads the assignment to fence commits by ownership, and both to describe a group.

Layout (Kafka's ConsumerProtocolAssignment.json, versions 0-3 alike; a later version only
appends fields, so a reader of the prefix reads any version, as Kafka's own does):

    version int16, [topic string, [partition int32]], user_data bytes (nullable)

and ConsumerProtocolSubscription: version int16, [topic string], user_data, then from v1
owned partitions, v2 generation id, v3 rack id (only the topics are read here).

Pure: bytes in, values out; malformed input gives None, never an exception.
"""

from __future__ import annotations

import struct

TopicPartition = tuple[str, int]

# A bound on what one decode may build, whatever the counts in the bytes claim.
PARTITIONS_MAX = 1_000_000

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def remaining(self) -> int:
        return len(self.data) - self.at

    def i16(self) -> int:
        if self.remaining() < 2:
            raise ValueError("truncated int16")
        (value,) = _I16.unpack_from(self.data, self.at)
        self.at += 2
        return int(value)

    def i32(self) -> int:
        if self.remaining() < 4:
            raise ValueError("truncated int32")
        (value,) = _I32.unpack_from(self.data, self.at)
        self.at += 4
        return int(value)

    def string(self) -> str:
        length = self.i16()
        if length < 0 or self.remaining() < length:
            raise ValueError("bad string length")
        text = self.data[self.at : self.at + length].decode("utf-8")
        self.at += length
        return text

    def count(self, item_bytes_min: int) -> int:
        """An array length (null reads as empty), checked against the bytes left."""
        n = self.i32()
        if n < 0:
            return 0
        if n * item_bytes_min > self.remaining():
            raise ValueError("array longer than its bytes")
        return n


def decode_assignment(data: bytes) -> frozenset[TopicPartition] | None:
    """The partitions a ConsumerProtocolAssignment gives; None if the bytes are not one.
    Empty bytes are an empty assignment (some clients send nothing for a member that
    gets no partition)."""
    if not data:
        return frozenset()
    reader = _Reader(data)
    try:
        if reader.i16() < 0:
            return None
        found: set[TopicPartition] = set()
        for _ in range(reader.count(2 + 4)):
            topic = reader.string()
            for _ in range(reader.count(4)):
                found.add((topic, reader.i32()))
                if len(found) > PARTITIONS_MAX:
                    return None
    except (ValueError, UnicodeDecodeError):
        return None
    return frozenset(found)


def encode_assignment(partitions: frozenset[TopicPartition], *, version: int = 0) -> bytes:
    """A ConsumerProtocolAssignment with no user data (describing a native group in the
    Kafka protocol's terms)."""
    by_topic: dict[str, list[int]] = {}
    for topic, index in sorted(partitions):
        by_topic.setdefault(topic, []).append(index)
    out = bytearray(_I16.pack(version))
    out += _I32.pack(len(by_topic))
    for topic, indexes in by_topic.items():
        name = topic.encode()
        out += _I16.pack(len(name)) + name + _I32.pack(len(indexes))
        for index in indexes:
            out += _I32.pack(index)
    out += _I32.pack(-1)  # user_data: null
    return bytes(out)


def decode_subscription_topics(data: bytes) -> tuple[str, ...] | None:
    """The topics of a ConsumerProtocolSubscription, sorted; None if the bytes are not
    one."""
    reader = _Reader(data)
    try:
        if reader.i16() < 0:
            return None
        topics = {reader.string() for _ in range(reader.count(2))}
    except (ValueError, UnicodeDecodeError):
        return None
    return tuple(sorted(topics))
