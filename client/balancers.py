"""Balancers: which partition a message goes to (kafka-go's `Balancer`s, same results).

A balancer gets the message and the topic's partition numbers (sorted) and returns one of
them. A message with an explicit `partition` never reaches a balancer. Keyed balancers map
the same key to the same partition as the client they mirror, so that producers written
with different clients agree:

- `Hash`: FNV-1a 32, as kafka-go's `Hash` and Sarama's hash partitioner;
- `Murmur2`: the Java client's default partitioner (`toPositive(murmur2(key)) % n`);
- `CRC32`: librdkafka's `consistent_random` / `consistent` partitioners.

Balancers are not thread-safe: a Writer calls its balancer under its own lock.
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Sequence
from typing import Protocol

from raftmq.message import Message

__all__ = [
    "CRC32",
    "Balancer",
    "Hash",
    "LeastBytes",
    "Murmur2",
    "RoundRobin",
    "fnv1a_32",
    "murmur2",
]

_MASK32 = 0xFFFFFFFF


class Balancer(Protocol):
    def balance(self, message: Message, partitions: Sequence[int]) -> int:
        """One of `partitions` (non-empty, sorted ascending) for `message`."""
        ...


class RoundRobin:
    """Each message to the next partition in turn (kafka-go's default balancer)."""

    def __init__(self) -> None:
        # The turn of the next message (kafka-go's counter; it wraps at 2**32, this one
        # does not: no partition is favoured at the wrap). A counter, not an attribute
        # updated per message: it runs for every message a Writer takes.
        self._turns = itertools.count()

    def balance(self, message: Message, partitions: Sequence[int]) -> int:
        return partitions[next(self._turns) % len(partitions)]

    def take_turns(self, count: int) -> int:
        """The turns of `count` consecutive messages at once: returns the first; the i-th
        message goes to `partitions[(first + i) % len(partitions)]`, where `balance` would
        have sent it (a Writer's whole call in one step, not one call per message)."""
        assert count > 0
        first = next(self._turns)
        if count > 1:  # past the other count - 1 turns, in C (itertools' `consume` recipe)
            next(itertools.islice(self._turns, count - 2, None), None)
        return first


class LeastBytes:
    """The partition that has received the fewest key + value bytes from this balancer."""

    def __init__(self) -> None:
        self._bytes: dict[int, int] = {}

    def balance(self, message: Message, partitions: Sequence[int]) -> int:
        if self._bytes.keys() != set(partitions):  # the topic's partitions changed
            self._bytes = dict.fromkeys(partitions, 0)
        partition = min(partitions, key=self._bytes.__getitem__)
        self._bytes[partition] += len(message.key or b"") + len(message.value or b"")
        return partition


def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & _MASK32
    return h


class Hash:
    """FNV-1a of the key, as kafka-go's `Hash` (and Sarama): the hash taken as a signed
    32-bit number, modulo the partition count, made positive. Null keys: round robin."""

    def __init__(self) -> None:
        self._round_robin = RoundRobin()

    def balance(self, message: Message, partitions: Sequence[int]) -> int:
        if message.key is None:
            return self._round_robin.balance(message, partitions)
        # Go: p := int32(h) % n (truncated toward zero); if p < 0 { p = -p }.
        return partitions[abs(_to_int32(fnv1a_32(message.key))) % len(partitions)]


def murmur2(data: bytes) -> int:
    """The Java client's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), unsigned."""
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    length = len(data)
    h = (seed ^ length) & _MASK32
    full = length - length % 4
    for i in range(0, full, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & _MASK32
        k ^= k >> r
        k = (k * m) & _MASK32
        h = ((h * m) & _MASK32) ^ k
    extra = length % 4
    if extra >= 3:
        h ^= data[full + 2] << 16
    if extra >= 2:
        h ^= data[full + 1] << 8
    if extra >= 1:
        h ^= data[full]
        h = (h * m) & _MASK32
    h ^= h >> 13
    h = (h * m) & _MASK32
    h ^= h >> 15
    return h


class Murmur2:
    """The Java client's keyed partitioner: same key, same partition number as a Java (or
    librdkafka `murmur2`) producer. `consistent=False` sends null keys to a random
    partition (librdkafka's `murmur2_random`); True hashes them as empty keys."""

    def __init__(self, *, consistent: bool = False, rng: random.Random | None = None) -> None:
        self.consistent = consistent
        self._rng = rng or random.Random()

    def balance(self, message: Message, partitions: Sequence[int]) -> int:
        if message.key is None and not self.consistent:
            return partitions[self._rng.randrange(len(partitions))]
        return partitions[(murmur2(message.key or b"") & 0x7FFFFFFF) % len(partitions)]


class CRC32:
    """librdkafka's keyed partitioner (CRC-32 of the key modulo the partition count).
    `consistent=False` (librdkafka's `consistent_random`) sends null and empty keys to a
    random partition; True hashes them too."""

    def __init__(self, *, consistent: bool = False, rng: random.Random | None = None) -> None:
        self.consistent = consistent
        self._rng = rng or random.Random()

    def balance(self, message: Message, partitions: Sequence[int]) -> int:
        if not message.key and not self.consistent:
            return partitions[self._rng.randrange(len(partitions))]
        return partitions[zlib.crc32(message.key or b"") % len(partitions)]


def _to_int32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value
