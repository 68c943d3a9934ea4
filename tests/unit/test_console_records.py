"""The console's record display and the message browser's query (console/records.py):
every string shown is bounded and valid Unicode whatever the bytes; bad input is a
QueryError with a message for the page."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from raftmq.console.records import (
    HEADERS_SHOWN_MAX,
    JSON_PRETTY_BYTES_MAX,
    RECORDS_PER_PAGE_DEFAULT,
    RECORDS_PER_PAGE_MAX,
    SCAN_RECORDS_MAX,
    SEARCH_TERM_BYTES_MAX,
    VALUE_SHOWN_BYTES_MAX,
    QueryError,
    RecordFilter,
    hex_dump,
    parse_browse_query,
    parse_time_ms,
    show_bytes,
    show_record,
    time_text,
)
from raftmq.message import Message


def test_null_empty_and_text() -> None:
    assert show_bytes(None).format == "null"
    assert show_bytes(b"").format == "empty"
    shown = show_bytes(b"hello")
    assert (shown.text, shown.format, shown.size_bytes, shown.truncated) == (
        "hello",
        "text",
        5,
        False,
    )


def test_auto_pretty_prints_a_json_object_but_not_a_bare_number() -> None:
    shown = show_bytes(b'{"a":[1,2],"b":"\xc3\xa9"}')
    assert shown.format == "json"
    assert json.loads(shown.text) == {"a": [1, 2], "b": "é"}
    assert "\n" in shown.text
    assert show_bytes(b"42").format == "text"
    assert show_bytes(b"42", "json").format == "json"


def test_json_format_says_why_it_could_not() -> None:
    assert show_bytes(b"{nope", "json").note == "not JSON"
    assert show_bytes(b"\xff{", "json").note == "not valid UTF-8"
    big = b"[" + b"1," * (JSON_PRETTY_BYTES_MAX // 2) + b"1]"
    assert show_bytes(big, "json", limit_bytes=len(big)).note == "too large to parse"


def test_non_utf8_is_hex_in_auto_and_marked_in_text() -> None:
    auto = show_bytes(b"\xff\xfe\x00ab")
    assert auto.format == "hex" and "ff fe 00 61 62" in auto.text
    assert "not valid UTF-8" in auto.note
    text = show_bytes(b"\xffab", "text")
    assert text.format == "text" and "\ufffd" in text.text and text.note


def test_control_characters_are_made_visible() -> None:
    shown = show_bytes(b"red\x1b[31m bell\x07 tab\tok")
    assert "\x1b" not in shown.text and "\\x1b" in shown.text and "\\x07" in shown.text
    assert "\t" in shown.text


def test_a_huge_value_is_truncated_at_a_character_boundary() -> None:
    value = "é".encode() * VALUE_SHOWN_BYTES_MAX  # 2 bytes each: the cut falls inside one
    shown = show_bytes(value[: VALUE_SHOWN_BYTES_MAX + 1])
    assert shown.truncated and shown.format == "text"
    assert len(shown.text.encode()) <= VALUE_SHOWN_BYTES_MAX
    assert set(shown.text) == {"é"}
    assert shown.size_bytes == VALUE_SHOWN_BYTES_MAX + 1


def test_hex_dump_rows() -> None:
    dump = hex_dump(bytes(range(20)))
    first, second = dump.splitlines()
    assert first.startswith("00000000  00 01 02") and first.endswith("|................|")
    assert second.startswith("00000010  10 11 12 13")


@given(st.binary(max_size=5000), st.sampled_from(["auto", "text", "json", "hex"]))
def test_any_bytes_show_as_bounded_valid_unicode(data: bytes, fmt: str) -> None:
    shown = show_bytes(data, fmt, limit_bytes=300)
    shown.text.encode("utf-8")  # valid Unicode (no lone surrogates)
    # hex triples the size and adds offsets; text is at most the prefix (escapes x4).
    assert len(shown.text) <= 300 * 5
    assert shown.truncated == (len(data) > 300)


def test_show_record_keeps_headers_bounded_and_formats_time() -> None:
    headers = [(f"h{i}", b"v") for i in range(HEADERS_SHOWN_MAX + 3)]
    message = Message(b"v", b"k", topic="t", partition=2, headers=headers, timestamp_ms=0)
    message.offset = 7
    shown = show_record(message)
    assert (shown.partition, shown.offset, shown.time_text) == (2, 7, "1970-01-01T00:00:00.000Z")
    assert len(shown.headers) == HEADERS_SHOWN_MAX and shown.headers_hidden == 3


def test_time_text_edges() -> None:
    assert time_text(-1) == "-"
    assert time_text(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert time_text(2**62) == f"{2**62} ms"


def test_filter_matches_key_value_and_header() -> None:
    message = Message(b"hello world", b"user-42", headers=[("trace", b"abc123"), ("x", None)])
    assert RecordFilter().matches(message) and not RecordFilter().active
    assert RecordFilter(key=b"42").matches(message)
    assert not RecordFilter(key=b"43").matches(message)
    assert RecordFilter(value=b"o w").matches(message)
    assert RecordFilter(header_name="trace", header_value=b"c12").matches(message)
    assert RecordFilter(header_name="x").matches(message)
    assert not RecordFilter(header_name="x", header_value=b"").matches(message)
    assert not RecordFilter(header_name="trace", header_value=b"zzz").matches(message)
    assert not RecordFilter(key=b"k").matches(Message(b"v", None))


def test_browse_query_defaults_and_round_trip() -> None:
    query = parse_browse_query({}, partitions=3)
    assert (query.partition, query.offset, query.from_time_ms, query.limit) == (
        0,
        None,
        None,
        RECORDS_PER_PAGE_DEFAULT,
    )
    params = {
        "partition": "2",
        "offset": "10",
        "limit": "5",
        "key": "k",
        "header": "trace=ab",
        "format": "hex",
    }
    query = parse_browse_query(params, partitions=3)
    assert query.filter == RecordFilter(b"k", None, "trace", b"ab")
    again = parse_browse_query(query.to_params(), partitions=3)
    assert again == query
    assert query.to_params(offset=15)["offset"] == "15"


def test_browse_query_from_a_time() -> None:
    query = parse_browse_query({"time": "2026-01-02T03:04:05Z"}, partitions=1)
    assert query.from_time_ms == parse_time_ms("2026-01-02 03:04:05")
    assert parse_browse_query(query.to_params(), partitions=1).from_time_ms == query.from_time_ms


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"partition": "3"}, "partition must be in [0, 2]"),
        ({"partition": "-1"}, "partition must be in [0, 2]"),
        ({"offset": "abc"}, "offset must be a whole number"),
        ({"offset": "1" * 40}, "offset must be a whole number"),
        ({"offset": "-5"}, "offset must be in"),
        ({"limit": str(RECORDS_PER_PAGE_MAX + 1)}, "limit must be in"),
        ({"scan": str(SCAN_RECORDS_MAX + 1)}, "scan must be in"),
        ({"time": "yesterday"}, "time must be ISO 8601"),
        ({"time": "1900-01-01"}, "after 1970"),
        ({"format": "xml"}, "format must be one of"),
        ({"key": "k" * (SEARCH_TERM_BYTES_MAX + 1)}, "longer than"),
        ({"header": "=v"}, "with a name"),
    ],
)
def test_bad_browse_queries_say_what_is_wrong(params: dict[str, str], says: str) -> None:
    with pytest.raises(QueryError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_browse_query(params, partitions=3)


def test_a_long_bad_value_is_shortened_in_the_message() -> None:
    with pytest.raises(QueryError) as caught:
        parse_browse_query({"offset": "x" * 10_000}, partitions=1)
    assert len(str(caught.value)) < 200
