"""The Kafka listener's codec without sockets: request headers v1/v2, response headers
v0/v1 (ApiVersions always v0), kio bodies with unknown tagged fields skipped (where kio's
own reader raises), garbage that is a decode error and nothing else; and the API table
ApiVersions answers from."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.api_versions.v0 import response as api_versions_v0
from kio.schema.api_versions.v3 import request as api_versions_v3
from kio.schema.api_versions.v3 import response as api_versions_v3_response
from kio.schema.errors import ErrorCode as K
from kio.schema.metadata.v12 import request as metadata_v12
from kio.serial import entity_reader, entity_writer
from raftmq.broker import kafka_codec
from raftmq.broker.kafka_api import KafkaApi, RequestContext
from raftmq.broker.kafka_codec import KafkaDecodeError


def written(entity: Any) -> bytes:
    buffer = io.BytesIO()
    entity_writer(type(entity))(buffer, entity)
    return buffer.getvalue()


def header_v1(api_key: int, version: int, correlation_id: int, client_id: str | None) -> bytes:
    raw = (
        b"\xff\xff" if client_id is None else struct.pack(">h", len(client_id)) + client_id.encode()
    )
    return struct.pack(">hhi", api_key, version, correlation_id) + raw


def tagged(*fields: tuple[int, bytes]) -> bytes:
    """A tagged-field section (count, then tag, size, bytes; all small enough for 1-byte varints)."""
    return bytes([len(fields)]) + b"".join(bytes([tag, len(data)]) + data for tag, data in fields)


# ---------------------------------------------------------------- headers


def test_request_header_v1_and_v2() -> None:
    frame = header_v1(3, 1, 7, "me") + b"body"
    header = kafka_codec.read_request_header(frame, flexible=False)
    assert (header.api_key, header.api_version, header.correlation_id) == (3, 1, 7)
    assert header.client_id == "me" and frame[header.body_offset :] == b"body"
    # v2: the same, then tagged fields (skipped, whatever they hold); client_id may be null.
    frame = header_v1(3, 12, 8, None) + tagged((5, b"xyz")) + b"body"
    header = kafka_codec.read_request_header(frame, flexible=True)
    assert header.client_id is None and frame[header.body_offset :] == b"body"


@pytest.mark.parametrize(
    "frame",
    [b"", b"\0\x03\0\x01\0\0", header_v1(3, 1, 7, "me")[:-1], struct.pack(">hhih", 3, 1, 7, -5)],
)
def test_truncated_headers_are_decode_errors(frame: bytes) -> None:
    with pytest.raises(KafkaDecodeError):
        kafka_codec.read_request_header(frame, flexible=False)


def test_response_headers() -> None:
    api = KafkaApi()
    ctx = RequestContext(18, 3, 9, None, "KAFKA", "127.0.0.1:1")
    response = asyncio.run(api.lookup(18, 3)(ctx, None))  # type: ignore[misc]
    frame = kafka_codec.encode_response(18, 3, 9, response)
    size, correlation_id = struct.unpack_from(">ii", frame)
    assert size == len(frame) - 4 and correlation_id == 9
    # ApiVersions v3 is flexible, yet its response header is v0: the body follows at once.
    body, _ = entity_reader(api_versions_v3_response.ApiVersionsResponse)(frame, 8)
    assert body.error_code == K.none
    assert [(k.api_key, k.min_version, k.max_version) for k in body.api_keys] == [(18, 0, 3)]
    # Another flexible response gets header v1: one byte of (no) tagged fields.
    from kio.schema.metadata.v12 import response as metadata_v12_response

    metadata = metadata_v12_response.MetadataResponse(
        throttle_time=timedelta(0), brokers=(), cluster_id="c", controller_id=1, topics=()
    )
    frame = kafka_codec.encode_response(3, 12, 5, metadata)
    assert frame[8] == 0 and frame[9:] == written(metadata)
    assert kafka_codec.encode_response(3, 1, 5, _metadata_v1())[8:] == written(_metadata_v1())


def _metadata_v1() -> Any:
    from kio.schema.metadata.v1 import response as v1

    return v1.MetadataResponse(brokers=(), controller_id=1, topics=())


# ---------------------------------------------------------------- the tolerant reader


def test_kio_raises_on_an_unknown_tagged_field_and_we_skip_it() -> None:
    request = api_versions_v3.ApiVersionsRequest(
        client_software_name="cli", client_software_version="1.0"
    )
    plain = written(request)
    assert plain[-1] == 0  # no tagged fields
    with_unknown = plain[:-1] + tagged((7, b"\xab\xcd"))
    with pytest.raises(KeyError, match="tagged field"):
        entity_reader(api_versions_v3.ApiVersionsRequest)(with_unknown, 0)
    decoded, end = kafka_codec.read_entity(api_versions_v3.ApiVersionsRequest, with_unknown, 0)
    assert decoded == request and end == len(with_unknown)


def test_unknown_tags_nested_in_arrays_are_skipped_and_known_ones_kept() -> None:
    request = metadata_v12.MetadataRequest(
        topics=(
            metadata_v12.MetadataRequestTopic(topic_id=uuid.UUID(int=5), name="a"),
            metadata_v12.MetadataRequestTopic(topic_id=uuid.UUID(int=1), name="b"),
        ),
        allow_auto_topic_creation=True,
        include_topic_authorized_operations=False,
    )
    plain = written(request)
    # Each topic entry ends in its own tagged-field byte: give the first one an unknown tag.
    first_entry_end = plain.index(b"\x02a") + 2
    assert plain[first_entry_end] == 0
    mutated = plain[:first_entry_end] + tagged((9, b"\x01")) + plain[first_entry_end + 1 :]
    decoded, end = kafka_codec.read_entity(metadata_v12.MetadataRequest, mutated, 0)
    assert decoded == request and end == len(mutated)
    # A known tag (ApiVersions v3 response, supported_features is tag 0) next to an unknown.
    response = api_versions_v3_response.ApiVersionsResponse(
        error_code=K.none,
        api_keys=(),
        throttle_time=timedelta(0),
        finalized_features_epoch=5,
    )
    raw = written(response)
    # The top-level section is last: count 1, tag 1, size 8, the int64 5.
    section = bytes([1, 1, 8]) + (5).to_bytes(8, "big")
    assert raw.endswith(section)
    mutated = raw[: -len(section)] + bytes([2]) + section[1:] + bytes([20, 1, 0x7F])
    decoded, end = kafka_codec.read_entity(type(response), mutated, 0)
    assert decoded == response and end == len(mutated)


def test_a_tagged_field_longer_than_the_frame_is_a_decode_error() -> None:
    request = api_versions_v3.ApiVersionsRequest(
        client_software_name="cli", client_software_version="1.0"
    )
    plain = written(request)
    with pytest.raises(KafkaDecodeError):
        kafka_codec.read_entity(type(request), plain[:-1] + bytes([1, 7, 100, 1]), 0)


SCHEMAS = [
    (api_key, version)
    for api_key, version in [
        (0, 3),
        (0, 9),
        (1, 4),
        (1, 12),
        (3, 1),
        (3, 12),
        (18, 3),
        (2, 7),
        (0, 2),
        (1, 2),
    ]
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SCHEMAS), st.binary(max_size=200))
def test_garbage_bodies_are_decode_errors_and_nothing_else(
    schema: tuple[int, int], body: bytes
) -> None:
    api_key, version = schema
    frame = header_v1(api_key, version, 1, "fuzz")
    flexible = kafka_codec.is_flexible(api_key, version)
    assert flexible is not None
    if flexible:
        frame += b"\0"
    frame += body
    with contextlib.suppress(KafkaDecodeError):
        header = kafka_codec.read_request_header(frame, flexible=flexible)
        kafka_codec.decode_request(header, frame)


def served_versions() -> list[tuple[int, int]]:
    from raftmq.broker.kafka_partition_apis import (
        FETCH_VERSIONS,
        LIST_OFFSETS_VERSIONS,
        OFFSET_FOR_LEADER_EPOCH_VERSIONS,
        PRODUCE_VERSIONS,
    )

    ranges = {
        0: PRODUCE_VERSIONS,
        1: FETCH_VERSIONS,
        2: LIST_OFFSETS_VERSIONS,
        23: OFFSET_FOR_LEADER_EPOCH_VERSIONS,
        3: (1, 12),
        18: (0, 3),
    }
    return [(k, v) for k, (low, high) in ranges.items() for v in range(low, high + 1)]


# Array and string lengths that claim far more than the frame holds: 2**32 - 2 items as a
# compact varint, 2**31 - 1 as an int32, and then a string length of 32767.
HOSTILE_BODIES = [
    b"\xff\xff\xff\xff\x0f" * 4,
    b"\x7f\xff\xff\xff" * 4,
    b"\x00" * 2 + b"\x7f\xff" + b"\xff\xff\xff\xff\x0f" * 3,
    b"\x00\x00\x00\x01\x7f\xff",
]


@pytest.mark.parametrize("schema", served_versions())
@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_lengths_never_become_allocations(schema: tuple[int, int], body: bytes) -> None:
    """Every served request schema, fed lengths that lie: a decode error, or (where the
    bytes happen to fit the schema) a request — never an allocation for the lie."""
    api_key, version = schema
    flexible = kafka_codec.is_flexible(api_key, version)
    assert flexible is not None
    frame = header_v1(api_key, version, 1, None) + (b"\0" if flexible else b"") + body
    header = kafka_codec.read_request_header(frame, flexible=flexible)
    with contextlib.suppress(KafkaDecodeError):
        kafka_codec.decode_request(header, frame)


def test_kio_aborts_the_process_on_a_huge_compact_array_and_we_do_not() -> None:
    """Metadata v12 whose topic array claims 2**32 - 2 items: kio's native reader asks
    for 32 GiB up front and Rust's out-of-memory handler aborts the interpreter (a broker
    killed by one frame). Ours is a decode error."""
    body = "ffffffff0f"
    probe = (
        "from kio.serial import entity_reader\n"
        "from kio.schema.metadata.v12.request import MetadataRequest as M\n"
        f"entity_reader(M)(bytes.fromhex('{body}'), 0)\n"
    )
    crashed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, timeout=60, check=False
    )
    assert crashed.returncode < 0 and b"memory allocation" in crashed.stderr
    with pytest.raises(KafkaDecodeError, match="array of"):
        kafka_codec.read_entity(metadata_v12.MetadataRequest, bytes.fromhex(body), 0)


# ---------------------------------------------------------------- the API table


async def _echo(ctx: RequestContext, request: Any) -> Any:
    return request


def test_api_versions_advertises_exactly_what_is_registered() -> None:
    api = KafkaApi()
    api.register(0, 3, 9, _echo)
    api.register(1, 4, 12, _echo)
    assert api.lookup(0, 9) is _echo and api.lookup(0, 10) is None and api.lookup(0, 2) is None
    assert api.lookup(99, 0) is None
    ctx = RequestContext(18, 0, 1, None, "KAFKA", "p")
    handler = api.lookup(18, 0)
    assert handler is not None
    response = asyncio.run(handler(ctx, None))
    assert [(k.api_key, k.min_version, k.max_version) for k in response.api_keys] == [
        (0, 3, 9),
        (1, 4, 12),
        (18, 0, 3),
    ]
    with pytest.raises(AssertionError, match="twice"):
        api.register(0, 3, 9, _echo)


def test_an_unsupported_api_versions_version_is_answered_in_v0_with_the_full_list() -> None:
    api = KafkaApi()
    api.register(0, 3, 9, _echo)
    response = api.unsupported_api_versions_response()
    assert isinstance(response, api_versions_v0.ApiVersionsResponse)
    assert response.error_code == K.unsupported_version
    frame = kafka_codec.encode_response(18, 0, 4, response)
    decoded, _ = entity_reader(api_versions_v0.ApiVersionsResponse)(frame, 8)
    assert [(k.api_key, k.max_version) for k in decoded.api_keys] == [(0, 9), (18, 3)]


def test_a_null_array_where_the_schema_has_none_is_a_decode_error() -> None:
    """ListOffsets v1's topics may not be null (the fuzz test's find: a handler iterated
    None); Metadata's topics may (null: every topic)."""
    from kio.schema.list_offsets.v1 import request as list_offsets_v1
    from kio.schema.metadata.v1 import request as metadata_v1

    with pytest.raises(KafkaDecodeError, match="null array"):
        kafka_codec.read_entity(list_offsets_v1.ListOffsetsRequest, b"\xff\xff\xff\xff" * 2, 0)
    request, _ = kafka_codec.read_entity(metadata_v1.MetadataRequest, b"\xff\xff\xff\xff", 0)
    assert request.topics is None
