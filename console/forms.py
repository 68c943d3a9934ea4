"""The console's forms, parsed and bounded, pure: produce a message, create a topic,
reset a group's offsets. Each parser takes the posted fields and returns a typed request
or raises QueryError with a message for the page's error box.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .records import QueryError, parse_int, parse_time_ms

PRODUCE_VALUE_BYTES_MAX = 1 << 20
PRODUCE_KEY_BYTES_MAX = 16 * 1024
PRODUCE_HEADERS_MAX = 32
HEADER_NAME_BYTES_MAX = 256
HEADER_VALUE_BYTES_MAX = 16 * 1024
TOPIC_PARTITIONS_MAX = 10_000
REPLICATION_FACTOR_MAX = 16
TOPIC_CONFIGS_MAX = 32
ENCODINGS = ("text", "hex")
RESET_MODES = ("earliest", "latest", "offset", "time")


@dataclass(frozen=True, slots=True)
class ProduceRequest:
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def _field(fields: Mapping[str, str], name: str) -> str:
    return fields.get(name, "")


def _encoded(text: str, encoding: str, what: str, limit_bytes: int) -> bytes:
    if encoding == "hex":
        compact = "".join(text.split())
        try:
            data = binascii.unhexlify(compact)
        except (binascii.Error, ValueError):
            raise QueryError(f"the {what} is not hex (pairs of 0-9a-f)") from None
    else:
        data = text.encode()
    if len(data) > limit_bytes:
        raise QueryError(
            f"the {what} is {len(data)} bytes; the console sends at most {limit_bytes}"
        )
    return data


def parse_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    """One header per line, `name: value` (the value may be empty)."""
    headers = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name:
            raise QueryError(f"header line {number} is not NAME: VALUE")
        if len(name.encode()) > HEADER_NAME_BYTES_MAX:
            raise QueryError(
                f"header line {number}: the name is longer than {HEADER_NAME_BYTES_MAX} bytes"
            )
        data = value.strip().encode()
        if len(data) > HEADER_VALUE_BYTES_MAX:
            raise QueryError(
                f"header line {number}: the value is longer than {HEADER_VALUE_BYTES_MAX} bytes"
            )
        headers.append((name, data))
        if len(headers) > PRODUCE_HEADERS_MAX:
            raise QueryError(f"at most {PRODUCE_HEADERS_MAX} headers")
    return tuple(headers)


def parse_produce(fields: Mapping[str, str], partitions_of: Mapping[str, int]) -> ProduceRequest:
    """`partitions_of`: topic -> partition count, of the topics that exist."""
    topic = _field(fields, "topic").strip()
    if not topic:
        raise QueryError("choose a topic")
    if topic not in partitions_of:
        raise QueryError(f"there is no topic {topic!r}")
    partition = None
    if _field(fields, "partition").strip():
        partition = parse_int(
            fields["partition"], "partition", minimum=0, maximum=partitions_of[topic] - 1
        )
    encoding = _field(fields, "encoding") or "text"
    if encoding not in ENCODINGS:
        raise QueryError(f"encoding must be one of {', '.join(ENCODINGS)}")
    key_text = _field(fields, "key")
    key = _encoded(key_text, encoding, "key", PRODUCE_KEY_BYTES_MAX) if key_text else None
    value = _encoded(_field(fields, "value"), encoding, "value", PRODUCE_VALUE_BYTES_MAX)
    return ProduceRequest(topic, partition, key, value, parse_headers(_field(fields, "headers")))


@dataclass(frozen=True, slots=True)
class CreateTopicRequest:
    name: str
    partitions: int
    replication_factor: int
    configs: tuple[tuple[str, str], ...]


def parse_create_topic(fields: Mapping[str, str]) -> CreateTopicRequest:
    """The cluster validates the name and the configs; this bounds the form."""
    name = _field(fields, "name").strip()
    if not name:
        raise QueryError("give the topic a name")
    if len(name) > 249:
        raise QueryError("a topic name has at most 249 characters")
    partitions = parse_int(
        _field(fields, "partitions") or "1", "partitions", minimum=1, maximum=TOPIC_PARTITIONS_MAX
    )
    replication_factor = parse_int(
        _field(fields, "replication_factor") or "1",
        "replication factor",
        minimum=1,
        maximum=REPLICATION_FACTOR_MAX,
    )
    configs: list[tuple[str, str]] = []
    for number, line in enumerate(_field(fields, "configs").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise QueryError(f"config line {number} is not KEY=VALUE")
        configs.append((key.strip(), value.strip()))
        if len(configs) > TOPIC_CONFIGS_MAX:
            raise QueryError(f"at most {TOPIC_CONFIGS_MAX} configs")
    return CreateTopicRequest(name, partitions, replication_factor, tuple(configs))


@dataclass(frozen=True, slots=True)
class ResetRequest:
    topic: str
    to: str | int | datetime  # Admin.reset_offsets' `to`

    @property
    def described(self) -> str:
        if isinstance(self.to, datetime):
            return f"the first offset at or after {self.to.isoformat().replace('+00:00', 'Z')}"
        if isinstance(self.to, int):
            return f"offset {self.to} (kept within each partition's log)"
        return "the log start offsets" if self.to == "earliest" else "the high watermarks"


def parse_reset(fields: Mapping[str, str], topics: set[str]) -> ResetRequest:
    """`topics`: the topics the reset may name (those that exist)."""
    topic = _field(fields, "topic").strip()
    if topic not in topics:
        raise QueryError(f"there is no topic {topic!r}" if topic else "choose a topic")
    mode = _field(fields, "to")
    if mode not in RESET_MODES:
        raise QueryError(f"reset to one of {', '.join(RESET_MODES)}")
    if mode == "offset":
        offset = parse_int(_field(fields, "offset"), "offset", minimum=0, maximum=2**63 - 1)
        return ResetRequest(topic, offset)
    if mode == "time":
        text = _field(fields, "time")
        if not text.strip():
            raise QueryError("give a time, e.g. 2026-01-02T03:04:05Z")
        when = datetime.fromtimestamp(parse_time_ms(text) / 1000, tz=UTC)
        return ResetRequest(topic, when)
    return ResetRequest(topic, mode)


def reset_fields(request: ResetRequest) -> dict[str, str]:
    """The form fields that post `request` again (the confirmation page's hidden inputs)."""
    fields = {"topic": request.topic}
    if isinstance(request.to, datetime):
        fields.update(to="time", time=request.to.isoformat().replace("+00:00", "Z"))
    elif isinstance(request.to, int):
        fields.update(to="offset", offset=str(request.to))
    else:
        fields["to"] = request.to
    return fields
