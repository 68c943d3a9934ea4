"""Kafka wire framing and headers, and request/response bodies through kio — no I/O.

A Kafka message on the wire is a 4-byte big-endian size, then that many bytes: a request
header and body, or a response header and body. This module turns a frame's bytes into
(header, request entity) and a response entity into a frame's bytes; `kafka_listener`
does the socket work.

Header rules (Kafka's `RequestHeader.json` / `ResponseHeader.json`):
- Request header v1 for non-flexible API versions, v2 (v1 plus tagged fields) for flexible
  ones; `client_id` is always an old-style nullable string (int16 length), even in v2.
- Response header v0 (correlation id) for non-flexible versions, v1 (plus tagged fields)
  for flexible ones — except ApiVersions, whose response header is always v0, so that a
  client that does not know our versions yet can read it.

Bodies are kio's generated dataclasses, except the versions kio 0.6 dropped, which
`kafka_legacy` hand-codes. kio's native reader raises on an unknown tagged field, where
the protocol says to skip it, and trusts array lengths enough to abort the process on a
hostile one: `read_entity` is a schema walk of our own on kio's primitive readers.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from functools import cache
from typing import Any

from kio._kio_native import get_field_reader, get_reader
from kio.index import UnknownAPIKey, UnknownEntity, load_request_schema, load_response_schema
from kio.serial import entity_writer
from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveField,
    PrimitiveTupleField,
    classify_field,
    is_optional,
)
from kio.serial.readers import (
    read_compact_array_length,
    read_int8,
    read_legacy_array_length,
    read_unsigned_varint,
)
from raftmq.broker import kafka_legacy

# A frame larger than this closes the connection before its body is read (Kafka's
# socket.request.max.bytes is 100 MiB; a produce request holds at most a few batches
# of max.message.bytes each).
FRAME_BYTES_MAX = 100 * 1024 * 1024
SIZE_PREFIX = struct.Struct(">i")
# api_key, api_version, correlation_id: the fixed start of every request header v1/v2.
_HEADER_FIXED = struct.Struct(">hhi")
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
# Tagged fields of one struct: Kafka gives no bound; ours keeps a hostile count from
# turning into a long loop (a real message carries a handful).
TAGGED_FIELDS_MAX = 1_024


class KafkaDecodeError(Exception):
    """A request frame that does not parse: truncated, a length out of range, bad UTF-8,
    a count beyond the frame. The listener answers nothing and closes the connection
    (as Kafka's broker does for a request it cannot parse)."""


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    # Where the body starts in the frame.
    body_offset: int


def read_header_fixed(frame: bytes) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id) of a request frame. Raises KafkaDecodeError."""
    if len(frame) < _HEADER_FIXED.size:
        raise KafkaDecodeError(f"a request of {len(frame)} bytes has no header")
    api_key, api_version, correlation_id = _HEADER_FIXED.unpack_from(frame, 0)
    return int(api_key), int(api_version), int(correlation_id)


def read_request_header(frame: bytes, *, flexible: bool) -> RequestHeader:
    """The request header of `frame` (v2 when `flexible`, else v1). Unknown tagged fields
    of a v2 header are skipped. Raises KafkaDecodeError."""
    api_key, api_version, correlation_id = read_header_fixed(frame)
    offset = _HEADER_FIXED.size
    if len(frame) < offset + _INT16.size:
        raise KafkaDecodeError("the request header ends before its client id")
    (length,) = _INT16.unpack_from(frame, offset)
    offset += _INT16.size
    client_id: str | None = None
    if length >= 0:
        end = offset + length
        if end > len(frame):
            raise KafkaDecodeError(f"client id of {length} bytes runs past the frame")
        try:
            client_id = frame[offset:end].decode()
        except UnicodeDecodeError as e:
            raise KafkaDecodeError(f"client id is not UTF-8: {e}") from None
        offset = end
    elif length != -1:
        raise KafkaDecodeError(f"client id length {length}")
    if flexible:
        offset = _skip_tagged_fields(frame, offset)
    return RequestHeader(api_key, api_version, correlation_id, client_id, offset)


def _skip_tagged_fields(data: bytes, offset: int) -> int:
    count, offset = _uvarint(data, offset)
    if count > TAGGED_FIELDS_MAX:
        raise KafkaDecodeError(f"{count} tagged fields")
    for _ in range(count):
        _tag, offset = _uvarint(data, offset)
        size, offset = _uvarint(data, offset)
        offset += size
        if offset > len(data):
            raise KafkaDecodeError("a tagged field runs past the frame")
    return offset


def _uvarint(data: bytes, offset: int) -> tuple[int, int]:
    try:
        value, size = read_unsigned_varint(data, offset)
    except Exception as e:
        raise KafkaDecodeError(f"bad unsigned varint at {offset}: {e}") from None
    return int(value), offset + size


# ---------------------------------------------------------------- schemas


@cache
def request_schema(api_key: int, api_version: int) -> type[Any] | None:
    """The request entity class of this key and version (kio's, or kafka_legacy's for the
    versions kio dropped); None when neither knows it."""
    legacy = kafka_legacy.request_schema(api_key, api_version)
    if legacy is not None:
        return legacy
    try:
        return load_request_schema(api_key, api_version)
    except (UnknownAPIKey, UnknownEntity):
        return None


@cache
def response_schema(api_key: int, api_version: int) -> type[Any] | None:
    """The response entity class a handler answers this key and version with."""
    legacy = kafka_legacy.response_schema(api_key, api_version)
    if legacy is not None:
        return legacy
    try:
        return load_response_schema(api_key, api_version)
    except (UnknownAPIKey, UnknownEntity):
        return None


def is_flexible(api_key: int, api_version: int) -> bool | None:
    """Whether requests of this key and version use the flexible encodings (header v2,
    compact types, tagged fields); None when the version is unknown to us."""
    schema = request_schema(api_key, api_version)
    return None if schema is None else bool(schema.__flexible__)


# ---------------------------------------------------------------- requests


def decode_request(header: RequestHeader, frame: bytes) -> Any:
    """The request entity of a frame whose header was read. Bytes after the body are
    ignored, as Kafka ignores them. Raises KafkaDecodeError."""
    api_key, api_version = header.api_key, header.api_version
    legacy = kafka_legacy.decoder(api_key, api_version)
    if legacy is not None:
        try:
            return legacy(frame, header.body_offset)
        except kafka_legacy.LegacyDecodeError as e:
            raise KafkaDecodeError(str(e)) from None
    schema = request_schema(api_key, api_version)
    assert schema is not None, "decode_request of a version the listener does not serve"
    entity, _ = read_entity(schema, frame, header.body_offset)
    return entity


def read_entity(entity_type: type[Any], data: bytes, offset: int) -> tuple[Any, int]:
    """The entity at `offset`, read by our schema walk (see `_build_reader`); returns
    (entity, the offset after it). Raises KafkaDecodeError for anything that does not
    parse, whatever the bytes."""
    try:
        return _reader(entity_type)(data, offset)
    except KafkaDecodeError:
        raise
    except Exception as e:
        # kio's primitive readers raise BufferUnderflow, UnicodeDecodeError, ValueError...
        raise KafkaDecodeError(f"{entity_type.__name__}: {type(e).__name__}: {e}") from None


_Read = Callable[[bytes, int], tuple[Any, int]]


_READERS: dict[type[Any], _Read] = {}


def _reader(entity_type: type[Any]) -> _Read:
    """`_build_reader`, once per entity type (a few hundred exist)."""
    reader = _READERS.get(entity_type)
    if reader is None:
        reader = _READERS[entity_type] = _build_reader(entity_type)
    return reader


def _build_reader(entity_type: type[Any]) -> _Read:
    """A reader of `entity_type` built from its dataclass schema (the field metadata kio
    generates), on kio's primitive readers, where kio's own entity reader falls short:
    - an unknown tagged field raises KeyError in kio; the protocol says skip it (tagged
      fields exist so that old readers can ignore new ones), and this reader does;
    - an array's length is trusted by kio, which allocates for it first: a 5-byte varint
      saying 2**32 items aborts the whole process (Rust's out-of-memory handler). Here
      a length beyond the bytes left (every item takes at least one) is a decode error.
    Used for every request; responses are written by kio's writer."""
    flexible = bool(entity_type.__flexible__)
    plain: list[tuple[str, _Read]] = []
    tagged: dict[int, tuple[str, _Read]] = {}
    for f in fields(entity_type):
        tag = f.metadata.get("tag")
        reader = _field_reader(entity_type, f, flexible=flexible, is_tag=tag is not None)
        if tag is None:
            plain.append((f.name, reader))
        else:
            tagged[int(tag)] = (f.name, reader)

    def read(data: bytes, offset: int) -> tuple[Any, int]:
        values: dict[str, Any] = {}
        for name, reader in plain:
            values[name], offset = reader(data, offset)
        if flexible:
            count, offset = _uvarint(data, offset)
            if count > TAGGED_FIELDS_MAX:
                raise KafkaDecodeError(f"{count} tagged fields in {entity_type.__name__}")
            for _ in range(count):
                tag, offset = _uvarint(data, offset)
                size, offset = _uvarint(data, offset)
                end = offset + size
                if end > len(data):
                    raise KafkaDecodeError(f"tagged field {tag} runs past the frame")
                known = tagged.get(tag)
                if known is not None:
                    name, reader = known
                    values[name], _ = reader(data[:end], offset)
                offset = end  # unknown: skipped, as the protocol says
        return entity_type(**values), offset

    return read


def _field_reader(entity_type: type[Any], f: Any, *, flexible: bool, is_tag: bool) -> _Read:
    kind = classify_field(f)
    if isinstance(kind, PrimitiveField):
        native = get_field_reader(entity_type, f, False, is_tag)
        return lambda data, offset: _sized(native(data, offset), offset)
    if isinstance(kind, PrimitiveTupleField):
        item_native = get_reader(f.metadata["kafka_type"], flexible, False)

        def read_item(data: bytes, offset: int) -> tuple[Any, int]:
            return _sized(item_native(data, offset), offset)

        return _array_reader(read_item, flexible, nullable=is_optional(f))
    if isinstance(kind, EntityField):
        inner = _reader(kind.type_)
        if is_tag or not is_optional(f):
            return inner

        def read_nullable(data: bytes, offset: int) -> tuple[Any, int]:
            marker, size = read_int8(data, offset)
            offset += size
            return (None, offset) if marker < 0 else inner(data, offset)

        return read_nullable
    assert isinstance(kind, EntityTupleField)
    return _array_reader(_reader(kind.type_), flexible, nullable=is_optional(f))


def _array_reader(item: _Read, flexible: bool, *, nullable: bool) -> _Read:
    def read_array(data: bytes, offset: int) -> tuple[Any, int]:
        if flexible:
            length, size = read_compact_array_length(data, offset)
        else:
            length, size = read_legacy_array_length(data, offset)
        offset += size
        if length is None or length < 0:
            if not nullable:
                # Handlers trust the schema's types: a null where it allows none is a
                # malformed request, not a None for them to trip on.
                raise KafkaDecodeError("a null array where the schema has no null")
            return None, offset
        # Each item takes at least one byte: a count beyond the frame is a lie, and must
        # not become an allocation.
        if length > len(data) - offset:
            raise KafkaDecodeError(f"array of {length} items in {len(data) - offset} bytes")
        items = []
        for _ in range(length):
            value, offset = item(data, offset)
            items.append(value)
        return tuple(items), offset

    return read_array


def _sized(result: tuple[Any, int], offset: int) -> tuple[Any, int]:
    value, size = result
    return value, offset + size


# ---------------------------------------------------------------- responses


def response_header_flexible(api_key: int, api_version: int) -> bool:
    """Response header v1 (tagged fields) for flexible versions, except ApiVersions."""
    return api_key != API_VERSIONS and bool(is_flexible(api_key, api_version))


API_VERSIONS = 18


def encode_response(api_key: int, api_version: int, correlation_id: int, response: Any) -> bytes:
    """The whole frame (size prefix included) of a response entity."""
    buffer = io.BytesIO()
    buffer.write(b"\0\0\0\0")
    buffer.write(_INT32.pack(correlation_id))
    if response_header_flexible(api_key, api_version):
        buffer.write(b"\0")  # no tagged fields
    legacy = kafka_legacy.encoder(api_key, api_version)
    if legacy is not None:
        legacy(buffer, response)
    else:
        entity_writer(type(response))(buffer, response)
    frame = buffer.getbuffer()
    SIZE_PREFIX.pack_into(frame, 0, len(frame) - SIZE_PREFIX.size)
    return bytes(frame)


def entity(cls: type[Any], **values: Any) -> Any:
    """An entity of `cls` from the values it has fields for; the others are dropped. One
    handler answers many versions: each version's class takes the fields it knows."""
    known = _field_names(cls)
    return cls(**{k: v for k, v in values.items() if k in known})


def has_field(cls: type[Any], name: str) -> bool:
    """Whether this version's entity class has the field (it appeared in some version)."""
    return name in _field_names(cls)


_FIELD_NAMES: dict[type[Any], frozenset[str]] = {}


def _field_names(cls: type[Any]) -> frozenset[str]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls))
    return names


def required_fields(cls: type[Any]) -> frozenset[str]:
    """Fields of `cls` without a default (tests use it to check `entity` calls)."""
    return frozenset(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )
