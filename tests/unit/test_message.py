"""Message, the client API's record type: construction, time, equality, repr."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest
from raftmq import Message

UTC = dt.UTC


def test_defaults_and_keywords() -> None:
    m = Message()
    assert (m.value, m.key, m.topic, m.partition) == (None, None, None, None)
    assert (m.offset, m.timestamp_ms, m.headers, m.time) == (-1, -1, (), None)
    m = Message(b"v", b"k", topic="t", partition=2, headers=[("a", b"1"), ("a", None)])
    assert (m.value, m.key, m.topic, m.partition) == (b"v", b"k", "t", 2)
    assert m.headers == (("a", b"1"), ("a", None))
    with pytest.raises(TypeError):
        Message(b"v", b"k", "t")  # type: ignore[misc]  # topic is keyword-only


def test_str_and_bytes_like_become_bytes() -> None:
    m = Message("välue", bytearray(b"k"), headers=[("h", "x"), ("g", memoryview(b"y"))])
    assert (m.value, m.key) == ("välue".encode(), b"k")
    assert m.headers == (("h", b"x"), ("g", b"y"))
    assert all(type(v) is bytes for v in (m.value, m.key, m.headers[0][1], m.headers[1][1]))
    with pytest.raises(TypeError, match="value"):
        Message(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="header key"):
        Message(b"v", headers=[(b"h", b"x")])  # type: ignore[list-item]


def test_time_is_stored_as_milliseconds() -> None:
    aware = dt.datetime(2024, 5, 6, 7, 8, 9, 123_999, tzinfo=UTC)
    m = Message(b"v", time=aware)
    assert m.timestamp_ms == 1_714_979_289_123  # microseconds are cut, not rounded
    assert m.time == aware.replace(microsecond=123_000)
    assert m.time is not None and m.time.tzinfo is UTC
    other_zone = aware.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert Message(time=other_zone).timestamp_ms == m.timestamp_ms
    naive_local = aware.astimezone().replace(tzinfo=None)  # as datetime.timestamp() reads it
    assert Message(time=naive_local).timestamp_ms == m.timestamp_ms
    assert Message(timestamp_ms=5).time == dt.datetime(1970, 1, 1, 0, 0, 0, 5000, tzinfo=UTC)


def test_time_and_timestamp_range_checks() -> None:
    with pytest.raises(ValueError, match="either"):
        Message(time=dt.datetime.now(UTC), timestamp_ms=5)
    with pytest.raises(ValueError, match="range"):
        Message(time=dt.datetime(1969, 12, 31, tzinfo=UTC))
    with pytest.raises(ValueError, match="range"):
        Message(timestamp_ms=-2)
    with pytest.raises(ValueError, match="range"):
        Message(timestamp_ms=2**63)
    assert Message(timestamp_ms=2**63 - 1).timestamp_ms == 2**63 - 1


def test_equality_compares_every_field_and_messages_are_not_hashable() -> None:
    base = Message(b"v", b"k", topic="t", partition=1, headers=[("h", b"x")], offset=3)
    assert base == Message(b"v", b"k", topic="t", partition=1, headers=[("h", b"x")], offset=3)
    for changed in (
        Message(b"w", b"k", topic="t", partition=1, headers=[("h", b"x")], offset=3),
        Message(b"v", None, topic="t", partition=1, headers=[("h", b"x")], offset=3),
        Message(b"v", b"k", topic="u", partition=1, headers=[("h", b"x")], offset=3),
        Message(b"v", b"k", topic="t", partition=2, headers=[("h", b"x")], offset=3),
        Message(b"v", b"k", topic="t", partition=1, headers=[("h", None)], offset=3),
        Message(b"v", b"k", topic="t", partition=1, headers=[("h", b"x")], offset=4),
        Message(
            b"v", b"k", topic="t", partition=1, headers=[("h", b"x")], offset=3, timestamp_ms=0
        ),
    ):
        assert base != changed
    assert base != (b"v", b"k")
    with pytest.raises(TypeError):
        hash(base)


def test_repr_is_short() -> None:
    m = Message(b"x" * 1000, b"key", topic="t", headers=[("h", b"y" * 100)], timestamp_ms=7)
    text = repr(m)
    assert len(text) < 200
    assert "(1000 B)" in text and "(100 B)" in text and "key=b'key'" in text
    assert repr(Message(b"v")) == "Message(value=b'v')"


def test_slots_only_and_pickles() -> None:
    m = Message(b"v", headers=[("h", b"x")], offset=4, timestamp_ms=9)
    with pytest.raises(AttributeError):
        m.extra = 1  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(m)) == m
