"""One Raft log entry of the controller quorum, and its byte encoding.

The Raft leader's planner turns a batch of commands into one entry: per command its
request id, the records it produces and its result. pysyncobj replicates the encoded
bytes; every node decodes them and `MetadataState.apply_entry` replays them.

    {"schema_version": 1, "expected_version": 41 | null,
     "items": [{"request_id": "...", "records": [{"type": ...}, ...], "result": {...}}]}

The JSON is prefixed by one flag byte: `J` (plain) or `Z` (zlib-compressed, used when that
is smaller). `expected_version` is the metadata version the leader planned against; a node
whose state is at another version skips the whole entry (deterministically, the same on
every node), so a stale plan never applies. null marks an unconditional entry, valid in
any state (a controller registering its own endpoint).

pysyncobj pickles the bytes (protocol 2, up to 2x for bytes >= 0x80) and has trouble with
entries of 64 KiB or more, hence ENTRY_BYTES_MAX; the planner never proposes more.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raftmq.controller.metadata_commands import CommandResult, ProducerIdBlock, ResultValue
from raftmq.controller.metadata_records import (
    RECORD_SCHEMA_VERSION,
    MetadataFormatError,
    Record,
    mapping,
    partition_from_dict,
    partition_to_dict,
    record_from_dict,
    record_to_dict,
    sequence,
)
from raftmq.errors import ErrorCode
from raftmq.metadata import PartitionRecord

# The bound on one encoded entry (see the module docstring): pickled, at most ~48 KiB.
ENTRY_BYTES_MAX = 24 * 1024
# Smaller entries are not worth compressing.
COMPRESS_BYTES_MIN = 512
_PLAIN = b"J"
_ZLIB = b"Z"


@dataclass(frozen=True, slots=True)
class MetadataItem:
    """One planned command. `request_id` "" stores no result: a controller's own
    unconditional registration, or a leading part of a change too large for one entry."""

    request_id: str
    records: tuple[Record, ...]
    result: CommandResult


@dataclass(frozen=True, slots=True)
class MetadataEntry:
    # The metadata version the items were planned against; None: valid in any state.
    expected_version: int | None
    items: tuple[MetadataItem, ...]


@dataclass(frozen=True, slots=True)
class EntryOutcome:
    """What applying an entry did: every item replayed (`applied`), or none of them
    because the entry was planned against another version (each result then says so)."""

    applied: bool
    results: tuple[CommandResult, ...]


# --------------------------------------------------------------------------- results


def _value_to_json(value: ResultValue) -> Any:
    if value is None or isinstance(value, int | str):
        return value
    if isinstance(value, PartitionRecord):
        return {"partition": partition_to_dict(value)}
    return {"producer_ids": [value.first_producer_id, value.count]}


def _value_from_json(raw: Any) -> ResultValue:
    if raw is None or isinstance(raw, str) or (isinstance(raw, int) and not isinstance(raw, bool)):
        return raw
    tagged = mapping(raw, "result value")
    if "partition" in tagged:
        return partition_from_dict(mapping(tagged["partition"], "partition"))
    if "producer_ids" in tagged:
        first, count = sequence(tagged["producer_ids"], "producer_ids")
        if not isinstance(first, int) or not isinstance(count, int):
            raise MetadataFormatError(f"producer_ids must be two integers, got {tagged!r}")
        return ProducerIdBlock(first, count)
    raise MetadataFormatError(f"unknown result value {tagged!r}")


def result_to_dict(result: CommandResult) -> dict[str, Any]:
    raw: dict[str, Any] = {"error": int(result.error)}
    if result.message:
        raw["message"] = result.message
    if result.value is not None:
        raw["value"] = _value_to_json(result.value)
    return raw


def result_from_dict(raw: Mapping[str, Any]) -> CommandResult:
    code, message = raw.get("error"), raw.get("message", "")
    if not isinstance(code, int) or not isinstance(message, str):
        raise MetadataFormatError(f"malformed result {raw!r}")
    try:
        error = ErrorCode(code)
    except ValueError as e:
        raise MetadataFormatError(f"unknown error code {code} in a result") from e
    return CommandResult(error, message, _value_from_json(raw.get("value")))


# --------------------------------------------------------------------------- entries


def item_to_dict(item: MetadataItem) -> dict[str, Any]:
    return {
        "request_id": item.request_id,
        "records": [record_to_dict(r) for r in item.records],
        "result": result_to_dict(item.result),
    }


def entry_to_dict(entry: MetadataEntry) -> dict[str, Any]:
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "expected_version": entry.expected_version,
        "items": [item_to_dict(item) for item in entry.items],
    }


def _json(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, separators=(",", ":"), sort_keys=True).encode()


def plain_item_bytes(item: MetadataItem) -> int:
    """How many bytes `item` adds to an entry's uncompressed encoding (with its comma):
    the planner sums these and compresses only when the sum exceeds ENTRY_BYTES_MAX."""
    return len(_json(item_to_dict(item))) + 1


def encode_entry(entry: MetadataEntry) -> bytes:
    """The entry's bytes: compact JSON, zlib-compressed when large and that helps."""
    text = _json(entry_to_dict(entry))
    if len(text) >= COMPRESS_BYTES_MIN:
        packed = zlib.compress(text, 6)
        if len(packed) < len(text):
            return _ZLIB + packed
    return _PLAIN + text


def decode_entry(blob: object) -> MetadataEntry:
    """Decode an entry; MetadataFormatError for anything that is not a versioned entry
    this code can read (an older raftmq's pickled command, a newer schema)."""
    if not isinstance(blob, bytes):
        raise MetadataFormatError(
            f"a Raft entry holds a {type(blob).__module__}.{type(blob).__name__}, not an "
            "encoded metadata entry: it was written by an older raftmq (a journal of "
            "commands, on-disk format 1)"
        )
    flag, body = blob[:1], blob[1:]
    try:
        if flag == _ZLIB:
            body = zlib.decompress(body)
        elif flag != _PLAIN:
            raise MetadataFormatError(f"unknown entry encoding flag {flag!r}")
        raw = mapping(json.loads(body), "entry")
    except (zlib.error, ValueError) as e:
        raise MetadataFormatError(f"undecodable metadata entry: {e}") from e
    version = raw.get("schema_version")
    if version != RECORD_SCHEMA_VERSION:
        raise MetadataFormatError(
            f"metadata entry of schema version {version!r}; this raftmq reads version "
            f"{RECORD_SCHEMA_VERSION} only"
        )
    expected = raw.get("expected_version")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
        raise MetadataFormatError(f"expected_version must be an integer or null: {expected!r}")
    items = []
    for item in sequence(raw.get("items"), "items"):
        fields = mapping(item, "item")
        request_id = fields.get("request_id")
        if not isinstance(request_id, str):
            raise MetadataFormatError(f"request_id must be a string: {request_id!r}")
        records = tuple(
            record_from_dict(mapping(r, "record"))
            for r in sequence(fields.get("records"), "records")
        )
        result = result_from_dict(mapping(fields.get("result"), "result"))
        items.append(MetadataItem(request_id, records, result))
    return MetadataEntry(expected, tuple(items))
