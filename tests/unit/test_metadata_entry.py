"""The Raft entry format: every record and result round-trips through its versioned JSON,
large entries are compressed and bounded, and anything else is refused, never guessed at."""

from __future__ import annotations

import json
import os
import pickle
import zlib

import pytest
from raftmq.controller.metadata_commands import (
    CommandResult,
    CreateTopic,
    ProducerIdBlock,
)
from raftmq.controller.metadata_entry import (
    COMPRESS_BYTES_MIN,
    ENTRY_BYTES_MAX,
    MetadataEntry,
    MetadataItem,
    decode_entry,
    encode_entry,
    plain_item_bytes,
)
from raftmq.controller.metadata_records import (
    RECORD_SCHEMA_VERSION,
    BrokerFenceChanged,
    BrokerRegistered,
    ClusterInitialized,
    ControllerEpochBegan,
    ControllerRegistered,
    MetadataFormatError,
    PartitionChanged,
    ProducerIdsAllocated,
    TopicCreated,
    TopicDeleted,
)
from raftmq.errors import ErrorCode
from raftmq.metadata import BrokerRegistration, ControllerRecord, PartitionRecord
from raftmq.topic_config import TopicConfig

EVERY_RECORD = (
    ClusterInitialized("MkU3OEVBNTcwNTJENDM2Qg"),
    ControllerEpochBegan(3),
    ControllerRegistered(ControllerRecord(2, "10.0.0.2", 19093)),
    BrokerRegistered(BrokerRegistration(1, "b1", 9092, "r1", "inc", 7, True, False)),
    BrokerFenceChanged(1, False, True),
    TopicCreated("t", bytes(range(16)), TopicConfig(min_insync_replicas=2), ((1, 2), (2, 1))),
    TopicDeleted("old"),
    PartitionChanged("t", 1, (1,), -1, 4, 9),
    ProducerIdsAllocated(2_000, 1, 7),
)
EVERY_RESULT = (
    CommandResult(),
    CommandResult(ErrorCode.TOPIC_ALREADY_EXISTS, "topic 't' already exists"),
    CommandResult(value=42),
    CommandResult(value="t"),
    CommandResult(value=PartitionRecord((1, 2), (1,), 1, 3, 5)),
    CommandResult(value=ProducerIdBlock(1_000, 1_000)),
)


def test_every_record_and_result_round_trips() -> None:
    items = tuple(
        MetadataItem(f"req-{i}", EVERY_RECORD[: i + 1], result)
        for i, result in enumerate(EVERY_RESULT)
    )
    for expected_version in (None, 0, 17):
        entry = MetadataEntry(expected_version, items)
        assert decode_entry(encode_entry(entry)) == entry


def test_the_encoding_is_plain_versioned_json() -> None:
    entry = MetadataEntry(5, (MetadataItem("r", (TopicDeleted("x"),), CommandResult()),))
    blob = encode_entry(entry)
    assert blob[:1] == b"J"
    assert json.loads(blob[1:]) == {
        "schema_version": RECORD_SCHEMA_VERSION,
        "expected_version": 5,
        "items": [
            {
                "request_id": "r",
                "records": [{"type": "TopicDeleted", "name": "x"}],
                "result": {"error": 0},
            }
        ],
    }


def test_large_entries_are_compressed_and_a_big_topic_stays_small() -> None:
    assignment = tuple((b % 6 + 1, (b + 1) % 6 + 1, (b + 2) % 6 + 1) for b in range(10_000))
    item = MetadataItem(
        "r", (TopicCreated("big", b"b" * 16, TopicConfig(), assignment),), CommandResult()
    )
    blob = encode_entry(MetadataEntry(1, (item,)))
    assert plain_item_bytes(item) > ENTRY_BYTES_MAX > COMPRESS_BYTES_MIN
    assert blob[:1] == b"Z" and len(blob) < ENTRY_BYTES_MAX
    assert decode_entry(blob) == MetadataEntry(1, (item,))


def test_an_entry_of_the_maximum_size_pickles_well_under_64_kib() -> None:
    """pysyncobj pickles the call with protocol 2 (bytes >= 0x80 cost two bytes) and has
    trouble with entries of 64 KiB or more."""
    worst = bytes([0xFF]) * ENTRY_BYTES_MAX
    assert len(pickle.dumps((0, (worst,)), protocol=2)) < 52 * 1024
    compressed_like = b"Z" + os.urandom(ENTRY_BYTES_MAX - 1)
    assert len(pickle.dumps((0, (compressed_like,)), protocol=2)) < 40 * 1024


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        # What a journal of the old format hands the replicated method: a command object.
        (CreateTopic("r", "t", b"t" * 16, 1, 1), "older raftmq"),
        (b"", "unknown entry encoding flag"),
        (b"Xjunk", "unknown entry encoding flag"),
        (b"J{not json", "undecodable"),
        (b"Z" + b"not zlib", "undecodable"),
        (b"J[]", "must be a JSON object"),
        (b'J{"schema_version": 2, "expected_version": 1, "items": []}', "schema version 2"),
        (b'J{"expected_version": 1, "items": []}', "schema version None"),
        (
            b'J{"schema_version": 1, "expected_version": "1", "items": []}',
            "expected_version",
        ),
        (
            b'J{"schema_version": 1, "expected_version": 1, "items": [{"request_id": "r", '
            b'"records": [{"type": "Mystery"}], "result": {"error": 0}}]}',
            "unknown record type 'Mystery'",
        ),
        (
            b'J{"schema_version": 1, "expected_version": 1, "items": [{"request_id": "r", '
            b'"records": [{"type": "TopicDeleted", "name": 5}], "result": {"error": 0}}]}',
            "field 'name' must be str",
        ),
        (
            b'J{"schema_version": 1, "expected_version": 1, "items": [{"request_id": "r", '
            b'"records": [], "result": {"error": 999}}]}',
            "unknown error code 999",
        ),
    ],
)
def test_anything_else_is_refused(blob: object, match: str) -> None:
    with pytest.raises(MetadataFormatError, match=match):
        decode_entry(blob)


def test_a_compressed_entry_of_a_newer_schema_is_refused() -> None:
    body = json.dumps({"schema_version": 99, "expected_version": None, "items": []}).encode()
    with pytest.raises(MetadataFormatError, match="reads version 1 only"):
        decode_entry(b"Z" + zlib.compress(body))
