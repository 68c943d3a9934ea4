"""Balancers give the same partitions as the clients they mirror (kafka-go, the Java
client, librdkafka); vectors from kafka-go's and librdkafka's own tests."""

from __future__ import annotations

import random

import pytest
from raftmq.client.balancers import CRC32, Hash, LeastBytes, Murmur2, RoundRobin, murmur2
from raftmq.message import Message

SQUARES = [i * i for i in range(17)]  # librdkafka's test: 17 partitions numbered i*i


def key(k: bytes | None) -> Message:
    return Message(b"v", k)


def test_round_robin_cycles() -> None:
    rr = RoundRobin()
    assert [rr.balance(key(None), [0, 1, 2]) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_round_robin_takes_turns_in_bulk_as_one_at_a_time(count: int) -> None:
    bulk, single = RoundRobin(), RoundRobin()
    bulk.balance(key(None), [0, 1, 2])  # not from turn 0
    single.balance(key(None), [0, 1, 2])
    first = bulk.take_turns(count)
    assert [(first + i) % 3 for i in range(count)] == [
        single.balance(key(None), [0, 1, 2]) for _ in range(count)
    ]
    assert bulk.balance(key(None), [0, 1, 2]) == single.balance(key(None), [0, 1, 2])


@pytest.mark.parametrize(
    ("k", "partitions", "expected"),
    [
        (b"blah", [0, 1], 0),
        (b"blah", [0, 1, 2], 1),
        (b"boop", [0, 1, 2], 2),
        (b"20", list(range(16)), 1),  # hash with the most significant bit set (Sarama)
    ],
)
def test_hash_is_kafka_go_fnv1a(k: bytes, partitions: list[int], expected: int) -> None:
    assert Hash().balance(key(k), partitions) == expected


def test_hash_sends_null_keys_round_robin() -> None:
    h = Hash()
    assert [h.balance(key(None), [0, 1, 2]) for _ in range(3)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (b"kafka", 0xD067CF64),
        (b"giberish123456789", 0x8F552B0C),
        (b"1234", 0x9FC97B14),
        (b"234", 0xE7C009CA),
        (b"34", 0x873930DA),
        (b"4", 0x5A4B5CA1),
        (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x78424F1C),
        (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4A62B377),
        (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xE0E4E09E),
        (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62B8B43F),
        (b"", 0x106E08D9),
    ],
)
def test_murmur2_is_the_java_clients(k: bytes, expected: int) -> None:
    assert murmur2(k) == expected


@pytest.mark.parametrize(
    ("k", "partitions", "expected"),
    [
        (b"", SQUARES, SQUARES[0x106E08D9 % 17]),
        (b"23456", SQUARES, SQUARES[0x058D780F % 17]),
        (
            b"this is another string with more length to it perhaps",
            SQUARES,
            SQUARES[0x4F7703DA % 17],
        ),
        (b"hejsan", SQUARES, SQUARES[0x5EC19395 % 17]),
        # kafka-python's Murmur2Partitioner over 1000 partitions
        (b"", list(range(1000)), 681),
        (b"a", list(range(1000)), 524),
        (b"ab", list(range(1000)), 434),
        (b"abc", list(range(1000)), 107),
        (b"123456789", list(range(1000)), 566),
        (b"\x00 ", list(range(1000)), 742),
    ],
)
def test_murmur2_balancer_gives_the_java_partition(
    k: bytes, partitions: list[int], expected: int
) -> None:
    assert Murmur2().balance(key(k), partitions) == expected


def test_murmur2_null_keys() -> None:
    rng = random.Random(1)
    spread = {Murmur2(rng=rng).balance(key(None), SQUARES) for _ in range(200)}
    assert len(spread) > 5  # random, as librdkafka's murmur2_random
    consistent = Murmur2(consistent=True)
    assert len({consistent.balance(key(None), SQUARES) for _ in range(10)}) == 1


@pytest.mark.parametrize(
    ("k", "crc"),
    [
        (b"23456", 0xB1B451D7),
        (b"this is another string with more length to it perhaps", 0xB0150DF7),
        (b"hejsan", 0xD077037E),
    ],
)
def test_crc32_is_librdkafkas(k: bytes, crc: int) -> None:
    assert CRC32().balance(key(k), SQUARES) == SQUARES[crc % 17]


def test_crc32_null_and_empty_keys() -> None:
    consistent = CRC32(consistent=True)
    assert consistent.balance(key(None), SQUARES) == consistent.balance(key(b""), SQUARES)
    rng = random.Random(2)
    assert len({CRC32(rng=rng).balance(key(b""), SQUARES) for _ in range(200)}) > 5


def test_least_bytes_fills_the_emptiest_partition() -> None:
    lb = LeastBytes()
    chosen = [lb.balance(Message(b"x" * n), [0, 1, 2]) for n in (10, 1, 1, 1, 1)]
    assert chosen == [0, 1, 2, 1, 2]
    # Partitions gained: counting starts again.
    assert lb.balance(Message(b"x"), [0, 1, 2, 3]) == 0
