"""The console's forms (console/forms.py): produce, create a topic, reset a group's
offsets — parsed into typed requests, every field bounded, bad input a QueryError."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from raftmq.console.forms import (
    PRODUCE_HEADERS_MAX,
    PRODUCE_VALUE_BYTES_MAX,
    TOPIC_CONFIGS_MAX,
    CreateTopicRequest,
    ProduceRequest,
    ResetRequest,
    parse_create_topic,
    parse_headers,
    parse_produce,
    parse_reset,
    reset_fields,
)
from raftmq.console.records import QueryError

TOPICS = {"orders": 3, "logs": 1}


def test_produce_text_with_key_partition_and_headers() -> None:
    wanted = parse_produce(
        {
            "topic": " orders ",
            "partition": "2",
            "key": "user-1",
            "value": "<b>hi</b>",
            "headers": "trace: abc\n\nempty:\n",
        },
        TOPICS,
    )
    assert wanted == ProduceRequest(
        "orders", 2, b"user-1", b"<b>hi</b>", (("trace", b"abc"), ("empty", b""))
    )


def test_produce_without_key_or_partition_and_an_empty_value() -> None:
    wanted = parse_produce({"topic": "logs"}, TOPICS)
    assert (wanted.partition, wanted.key, wanted.value, wanted.headers) == (None, None, b"", ())


def test_produce_hex_sends_any_bytes() -> None:
    wanted = parse_produce(
        {"topic": "logs", "encoding": "hex", "key": "ff 00", "value": "DE ad\nbe ef"}, TOPICS
    )
    assert (wanted.key, wanted.value) == (b"\xff\x00", b"\xde\xad\xbe\xef")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "choose a topic"),
        ({"topic": "nope"}, "there is no topic 'nope'"),
        ({"topic": "orders", "partition": "3"}, "partition must be in"),
        ({"topic": "orders", "partition": "x"}, "partition must be a whole number"),
        ({"topic": "logs", "encoding": "base64"}, "encoding must be one of"),
        ({"topic": "logs", "encoding": "hex", "value": "abc"}, "the value is not hex"),
        ({"topic": "logs", "encoding": "hex", "value": "zz"}, "the value is not hex"),
        ({"topic": "logs", "headers": "no colon"}, "header line 1 is not NAME: VALUE"),
        ({"topic": "logs", "headers": ": v"}, "header line 1 is not NAME: VALUE"),
        ({"topic": "logs", "value": "x" * (PRODUCE_VALUE_BYTES_MAX + 1)}, "at most"),
    ],
)
def test_bad_produce_forms(fields: dict[str, str], says: str) -> None:
    with pytest.raises(QueryError, match=says):
        parse_produce(fields, TOPICS)


def test_headers_are_bounded() -> None:
    lines = "\n".join(f"h{i}: v" for i in range(PRODUCE_HEADERS_MAX))
    assert len(parse_headers(lines)) == PRODUCE_HEADERS_MAX
    with pytest.raises(QueryError, match=f"at most {PRODUCE_HEADERS_MAX} headers"):
        parse_headers(lines + "\none: more")
    with pytest.raises(QueryError, match="the name is longer"):
        parse_headers("n" * 300 + ": v")


def test_create_topic() -> None:
    wanted = parse_create_topic(
        {
            "name": "orders",
            "partitions": "6",
            "replication_factor": "3",
            "configs": "min.insync.replicas = 2\n\nretention.ms=1000",
        }
    )
    assert wanted == CreateTopicRequest(
        "orders", 6, 3, (("min.insync.replicas", "2"), ("retention.ms", "1000"))
    )
    assert parse_create_topic({"name": "x"}) == CreateTopicRequest("x", 1, 1, ())


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "give the topic a name"),
        ({"name": "x" * 250}, "at most 249"),
        ({"name": "t", "partitions": "0"}, "partitions must be in"),
        ({"name": "t", "partitions": "10001"}, "partitions must be in"),
        ({"name": "t", "replication_factor": "17"}, "replication factor must be in"),
        ({"name": "t", "configs": "novalue"}, "config line 1 is not KEY=VALUE"),
        ({"name": "t", "configs": "\n".join(["a=b"] * (TOPIC_CONFIGS_MAX + 1))}, "at most"),
    ],
)
def test_bad_create_topic_forms(fields: dict[str, str], says: str) -> None:
    with pytest.raises(QueryError, match=says):
        parse_create_topic(fields)


def test_reset_modes_and_their_confirmation_fields() -> None:
    topics = {"orders"}
    for fields, to in [
        ({"topic": "orders", "to": "earliest"}, "earliest"),
        ({"topic": "orders", "to": "latest"}, "latest"),
        ({"topic": "orders", "to": "offset", "offset": "42"}, 42),
        (
            {"topic": "orders", "to": "time", "time": "2026-01-02T03:04:05Z"},
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
    ]:
        wanted = parse_reset(fields, topics)
        assert wanted == ResetRequest("orders", to)
        # The confirmation page posts these back: they parse to the same request.
        assert parse_reset(reset_fields(wanted), topics) == wanted
        assert wanted.described


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"to": "earliest"}, "choose a topic"),
        ({"topic": "nope", "to": "earliest"}, "there is no topic"),
        ({"topic": "orders", "to": "middle"}, "reset to one of"),
        ({"topic": "orders", "to": "offset", "offset": "-1"}, "offset must be in"),
        ({"topic": "orders", "to": "time"}, "give a time"),
        ({"topic": "orders", "to": "time", "time": "soon"}, "ISO 8601"),
    ],
)
def test_bad_reset_forms(fields: dict[str, str], says: str) -> None:
    with pytest.raises(QueryError, match=says):
        parse_reset(fields, {"orders"})
