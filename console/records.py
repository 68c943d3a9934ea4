"""How the console shows and searches records, pure: bytes -> text, pretty JSON or a hex
dump, truncated for display; the search filter; the message browser's query, validated.

Nothing here touches the cluster or HTML: the templates escape every string this module
returns (Jinja2 autoescaping), so a key like `<script>` is shown, never run. What this
module guarantees is that every string it returns is bounded (`*_BYTES_MAX`) and valid
Unicode whatever the bytes were (non-UTF-8 data is shown as hex or with U+FFFD).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from raftmq.message import Message

FORMATS = ("auto", "text", "json", "hex")
# A value (or key) in a list of records shows at most this much; "show all" (one record's
# page) shows up to VALUE_FULL_BYTES_MAX, and says so when the value is longer still.
VALUE_SHOWN_BYTES_MAX = 2_048
VALUE_FULL_BYTES_MAX = 1 << 20
HEADER_SHOWN_BYTES_MAX = 512
HEADERS_SHOWN_MAX = 32
# JSON is parsed for pretty-printing only up to this size (a whole value, never a prefix).
JSON_PRETTY_BYTES_MAX = 256 * 1024
HEX_ROW_BYTES = 16

# The message browser's bounds: records on one page, records read for one page (a search
# may read many to find a few), and the search terms.
RECORDS_PER_PAGE_MAX = 100
RECORDS_PER_PAGE_DEFAULT = 20
SCAN_RECORDS_MAX = 10_000
SCAN_RECORDS_DEFAULT = 1_000
SEARCH_TERM_BYTES_MAX = 1_024

# C0 controls other than tab, newline and carriage return, DEL and C1 controls: shown as
# \xNN so that invisible bytes are visible (and a terminal escape stays inert text).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class QueryError(ValueError):
    """Bad input in a request (a query parameter or a form field): shown in an error box,
    with this message, as a 400."""


@dataclass(frozen=True, slots=True)
class ShownBytes:
    """A key, value or header value as displayed."""

    text: str  # what to show; bounded, valid Unicode (escaped by the template)
    format: str  # null | empty | text | json | hex
    size_bytes: int  # of the whole data (0 for null)
    truncated: bool  # `text` shows only a prefix of the data
    note: str = ""  # e.g. "not valid UTF-8: shown as hex"


def show_bytes(
    data: bytes | None, fmt: str = "auto", limit_bytes: int = VALUE_SHOWN_BYTES_MAX
) -> ShownBytes:
    """`data` for display in format `fmt` (auto | text | json | hex), at most
    `limit_bytes` of it. auto: pretty JSON when the whole value is a JSON object or
    array, text when it is UTF-8, hex otherwise."""
    assert fmt in FORMATS, fmt
    assert limit_bytes > 0
    if data is None:
        return ShownBytes("null", "null", 0, False)
    size = len(data)
    if size == 0:
        return ShownBytes("(empty)", "empty", 0, False)
    head = data[:limit_bytes]
    truncated = size > limit_bytes
    if fmt == "hex":
        return ShownBytes(hex_dump(head), "hex", size, truncated)
    text = _utf8_prefix(head, whole=not truncated)
    if fmt in ("auto", "json") and text is not None and not truncated:
        pretty = _pretty_json(text, size, strict=fmt == "json")
        if pretty is not None:
            return ShownBytes(pretty, "json", size, False)
    if fmt == "json":
        why = "too large to parse" if truncated or size > JSON_PRETTY_BYTES_MAX else "not JSON"
        if text is None:
            why = "not valid UTF-8"
        return ShownBytes(
            _visible(head.decode("utf-8", errors="replace")), "text", size, truncated, why
        )
    if text is None:
        if fmt == "auto":
            return ShownBytes(hex_dump(head), "hex", size, truncated, "not valid UTF-8: hex")
        return ShownBytes(
            _visible(head.decode("utf-8", errors="replace")),
            "text",
            size,
            truncated,
            "not valid UTF-8: \ufffd marks bytes that are not",
        )
    return ShownBytes(_visible(text), "text", size, truncated)


def _utf8_prefix(head: bytes, *, whole: bool) -> str | None:
    """`head` decoded as UTF-8, or None if it is not. A prefix (`whole` False) may end
    in the middle of a character: that last partial character is dropped, not an error."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        return decoder.decode(head, final=whole)
    except UnicodeDecodeError:
        return None


def _pretty_json(text: str, size: int, *, strict: bool) -> str | None:
    if size > JSON_PRETTY_BYTES_MAX:
        return None
    stripped = text.lstrip()
    # auto: only objects and arrays (a bare number or string reads better as text).
    if not strict and not stripped.startswith(("{", "[")):
        return None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return json.dumps(parsed, indent=2, ensure_ascii=False, sort_keys=False)


def _visible(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def hex_dump(data: bytes) -> str:
    """`hexdump -C` style: offset, 16 bytes in hex, and their printable ASCII."""
    rows = []
    for start in range(0, len(data), HEX_ROW_BYTES):
        chunk = data[start : start + HEX_ROW_BYTES]
        hex_part = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        rows.append(f"{start:08x}  {hex_part:<{HEX_ROW_BYTES * 3 - 1}}  |{text}|")
    return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class ShownHeader:
    key: str
    value: ShownBytes


@dataclass(frozen=True, slots=True)
class ShownRecord:
    """One record as the message views show it."""

    partition: int
    offset: int
    timestamp_ms: int
    time_text: str  # ISO 8601, UTC, milliseconds
    key: ShownBytes
    value: ShownBytes
    headers: tuple[ShownHeader, ...]
    headers_hidden: int  # headers beyond HEADERS_SHOWN_MAX


def show_record(
    message: Message, fmt: str = "auto", limit_bytes: int = VALUE_SHOWN_BYTES_MAX
) -> ShownRecord:
    headers = message.headers[:HEADERS_SHOWN_MAX]
    return ShownRecord(
        partition=message.partition if message.partition is not None else -1,
        offset=message.offset,
        timestamp_ms=message.timestamp_ms,
        time_text=time_text(message.timestamp_ms),
        key=show_bytes(message.key, "text" if fmt == "json" else fmt, limit_bytes),
        value=show_bytes(message.value, fmt, limit_bytes),
        headers=tuple(
            ShownHeader(
                _visible(k[:HEADER_SHOWN_BYTES_MAX]), show_bytes(v, "auto", HEADER_SHOWN_BYTES_MAX)
            )
            for k, v in headers
        ),
        headers_hidden=len(message.headers) - len(headers),
    )


def time_text(timestamp_ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC ("-" when unset or out of range)."""
    if timestamp_ms < 0:
        return "-"
    try:
        when = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp_ms} ms"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- search


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """What a search keeps: every given term must match (substrings, on the raw bytes;
    a header by exact name, with its value containing `header_value` if given)."""

    key: bytes | None = None
    value: bytes | None = None
    header_name: str | None = None
    header_value: bytes | None = None

    @property
    def active(self) -> bool:
        return any(t is not None for t in (self.key, self.value, self.header_name))

    def matches(self, message: Message) -> bool:
        if self.key is not None and (message.key is None or self.key not in message.key):
            return False
        if self.value is not None and (message.value is None or self.value not in message.value):
            return False
        if self.header_name is not None:
            wanted = self.header_value
            return any(
                name == self.header_name
                and (wanted is None or (value is not None and wanted in value))
                for name, value in message.headers
            )
        return True


def parse_header_term(text: str) -> tuple[str | None, bytes | None]:
    """The header search box: "name" or "name=value-substring"."""
    if not text:
        return None, None
    name, sep, value = text.partition("=")
    if not name:
        raise QueryError("a header search is NAME or NAME=VALUE, with a name")
    return name, value.encode() if sep else None


# ---------------------------------------------------------------- the browser's query


@dataclass(frozen=True, slots=True)
class BrowseQuery:
    """Where to read a partition from and what to keep. Exactly one start applies:
    `offset`, else `from_time_ms`, else the newest `limit` records."""

    partition: int
    offset: int | None
    from_time_ms: int | None
    limit: int
    scan_max: int
    filter: RecordFilter
    fmt: str

    def to_params(self, **changes: str | int) -> dict[str, str]:
        """The query string of this query, with `changes` (e.g. another offset)."""
        params: dict[str, str] = {"partition": str(self.partition)}
        if self.offset is not None:
            params["offset"] = str(self.offset)
        elif self.from_time_ms is not None:
            params["time"] = time_text(self.from_time_ms)
        if self.limit != RECORDS_PER_PAGE_DEFAULT:
            params["limit"] = str(self.limit)
        if self.scan_max != SCAN_RECORDS_DEFAULT:
            params["scan"] = str(self.scan_max)
        if self.filter.key is not None:
            params["key"] = self.filter.key.decode("utf-8", errors="replace")
        if self.filter.value is not None:
            params["value"] = self.filter.value.decode("utf-8", errors="replace")
        if self.filter.header_name is not None:
            header = self.filter.header_name
            if self.filter.header_value is not None:
                header += "=" + self.filter.header_value.decode("utf-8", errors="replace")
            params["header"] = header
        if self.fmt != "auto":
            params["format"] = self.fmt
        for name, value in changes.items():
            params[name] = str(value)
        if "offset" in changes:
            params.pop("time", None)
        return params


def parse_int(text: str, what: str, *, minimum: int, maximum: int) -> int:
    text = text.strip()
    if not re.fullmatch(r"-?[0-9]{1,19}", text):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise QueryError(f"{what} must be a whole number, not {shown!r}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise QueryError(f"{what} must be in [{minimum}, {maximum}], got {value}")
    return value


def parse_time_ms(text: str) -> int:
    """ISO 8601 ("2026-01-02T03:04:05Z", "2026-01-02 03:04"; no zone: UTC) -> epoch ms."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise QueryError(
            f"time must be ISO 8601, e.g. 2026-01-02T03:04:05Z, not {shown!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    timestamp_ms = int(when.timestamp() * 1000)
    if timestamp_ms < 0:
        raise QueryError(f"time must be after 1970 (a record's timestamp is), not {text.strip()!r}")
    return timestamp_ms


def _term(params: Mapping[str, str], name: str) -> bytes | None:
    text = params.get(name, "")
    if not text:
        return None
    data = text.encode()
    if len(data) > SEARCH_TERM_BYTES_MAX:
        raise QueryError(f"the {name} search term is longer than {SEARCH_TERM_BYTES_MAX} bytes")
    return data


def parse_browse_query(params: Mapping[str, str], partitions: int) -> BrowseQuery:
    """The message browser's query string; raises QueryError for anything out of bounds.
    `partitions`: the topic's partition count."""
    assert partitions >= 1
    partition = parse_int(
        params.get("partition", "0") or "0", "partition", minimum=0, maximum=partitions - 1
    )
    offset = None
    from_time_ms = None
    if params.get("offset", ""):
        offset = parse_int(params["offset"], "offset", minimum=0, maximum=2**63 - 1)
    elif params.get("time", ""):
        from_time_ms = parse_time_ms(params["time"])
    limit = parse_int(
        params.get("limit", "") or str(RECORDS_PER_PAGE_DEFAULT),
        "limit",
        minimum=1,
        maximum=RECORDS_PER_PAGE_MAX,
    )
    scan_max = parse_int(
        params.get("scan", "") or str(SCAN_RECORDS_DEFAULT),
        "scan",
        minimum=1,
        maximum=SCAN_RECORDS_MAX,
    )
    fmt = params.get("format", "") or "auto"
    if fmt not in FORMATS:
        raise QueryError(f"format must be one of {', '.join(FORMATS)}")
    header_text = params.get("header", "")
    if len(header_text.encode()) > SEARCH_TERM_BYTES_MAX:
        raise QueryError(f"the header search term is longer than {SEARCH_TERM_BYTES_MAX} bytes")
    header_name, header_value = parse_header_term(header_text)
    return BrowseQuery(
        partition=partition,
        offset=offset,
        from_time_ms=from_time_ms,
        limit=max(limit, 1),
        scan_max=max(scan_max, limit),
        filter=RecordFilter(
            _term(params, "key"), _term(params, "value"), header_name, header_value
        ),
        fmt=fmt,
    )
