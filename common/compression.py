"""Kafka's batch compression codecs: the records section of a RecordBatch v2, compressed.

The codec id sits in the low 3 bits of the batch attributes. Each codec writes what
Kafka's Java producer writes, and reads what any Kafka client writes:

- 1 gzip: one gzip member (stdlib zlib, level 6 = java.util.zip's default); reading
  accepts several concatenated members, as Java's GZIPInputStream does.
- 2 snappy: xerial's block framing, as the Java client writes it (an 16-byte header,
  then [int32 length][raw snappy block] per 32 KiB of input); reading also accepts a raw
  snappy block (librdkafka may send either). Blocks via `cramjam` (python-snappy is a thin
  wrapper over it).
- 3 lz4: one LZ4 frame with independent 64 KiB blocks and no content size or checksums,
  like Java's KafkaLZ4BlockOutputStream (Kafka's reader refuses linked blocks). `lz4`.
- 4 zstd: one zstd frame (`zstandard`, level 3 = zstd's default); reading accepts frames
  without a content size (Java's streaming writer omits it) and several frames.

Decompression is bounded: output beyond `DECOMPRESSED_BYTES_MAX` is refused before it is
produced (a small "decompression bomb" batch must not take the reader's memory). Every
malformed input raises ValueError, whichever library found it.
"""

from __future__ import annotations

import struct
import threading
import zlib
from typing import Final

import cramjam
import lz4.frame
import zstandard

__all__ = [
    "CODEC_GZIP",
    "CODEC_LZ4",
    "CODEC_NAMES",
    "CODEC_NONE",
    "CODEC_SNAPPY",
    "CODEC_ZSTD",
    "DECOMPRESSED_BYTES_MAX",
    "compress",
    "decompress",
]

CODEC_NONE: Final = 0
CODEC_GZIP: Final = 1
CODEC_SNAPPY: Final = 2
CODEC_LZ4: Final = 3
CODEC_ZSTD: Final = 4
CODEC_NAMES: Final = {
    CODEC_NONE: "none",
    CODEC_GZIP: "gzip",
    CODEC_SNAPPY: "snappy",
    CODEC_LZ4: "lz4",
    CODEC_ZSTD: "zstd",
}

# A producer batch is at most ~1 MiB on the wire (max.message.bytes); even at gzip's best
# ratio (~1000:1) real batches stay far below this, and a reader never holds more per batch.
DECOMPRESSED_BYTES_MAX = 256 * 1024 * 1024

_GZIP_LEVEL = 6
# wbits 16 + 15: gzip header and trailer, 32 KiB window.
_GZIP_WBITS = 31
_ZSTD_LEVEL = 3
# lz4 and zstd output is read in chunks of this size until the frame ends: bounded, and
# far cheaper than asking for DECOMPRESSED_BYTES_MAX at once (the libraries allocate the
# size asked for).
_READ_CHUNK_BYTES = 256 * 1024

# xerial snappy framing: magic (8 bytes), version and compatible version (int32 each).
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK_LENGTH = struct.Struct(">i")
_XERIAL_BLOCK_INPUT_BYTES = 32 * 1024


class _ZstdContexts(threading.local):
    """One zstd compressor and decompressor per thread: they hold native state, may not be
    used by two threads at once, and cost ~10 us each to create (a third of a batch)."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()


_zstd = _ZstdContexts()


def _too_large(codec: str) -> ValueError:
    return ValueError(f"{codec} payload decompresses to more than {DECOMPRESSED_BYTES_MAX} bytes")


def compress(codec: int, data: bytes) -> bytes:
    """`data` compressed with `codec` (1-4), framed as Kafka's Java producer frames it."""
    if codec == CODEC_GZIP:
        return zlib.compress(data, _GZIP_LEVEL, _GZIP_WBITS)
    if codec == CODEC_SNAPPY:
        blocks = [_XERIAL_HEADER]
        view = memoryview(data)
        for start in range(0, len(data), _XERIAL_BLOCK_INPUT_BYTES):
            block = bytes(
                cramjam.snappy.compress_raw(view[start : start + _XERIAL_BLOCK_INPUT_BYTES])
            )
            blocks += (_XERIAL_BLOCK_LENGTH.pack(len(block)), block)
        return b"".join(blocks)
    if codec == CODEC_LZ4:
        framed: bytes = lz4.frame.compress(
            data,
            block_size=lz4.frame.BLOCKSIZE_MAX64KB,
            block_linked=False,
            content_checksum=False,
            store_size=False,
        )
        return framed
    if codec == CODEC_ZSTD:
        return _zstd.compressor.compress(data)
    raise ValueError(f"unknown compression codec {codec}")


def decompress(codec: int, data: bytes | memoryview) -> bytes:
    """The payload that `compress(codec, ...)` (or any Kafka client) compressed.

    Raises ValueError for malformed or truncated input, an unknown codec, or output above
    `DECOMPRESSED_BYTES_MAX`.
    """
    if codec == CODEC_GZIP:
        return _gunzip(data)
    if codec == CODEC_SNAPPY:
        return _unsnappy(data)
    if codec == CODEC_LZ4:
        return _unlz4(data)
    if codec == CODEC_ZSTD:
        return _unzstd(data)
    raise ValueError(f"unknown compression codec {codec}")


def _gunzip(data: bytes | memoryview) -> bytes:
    parts: list[bytes] = []
    total_bytes = 0
    rest: bytes | memoryview = data
    # Bound: one pass per gzip member, and each member takes >= 18 bytes of input.
    while rest:
        decompressor = zlib.decompressobj(_GZIP_WBITS)
        try:
            # One byte past the limit tells "exactly at the limit" from "beyond it".
            part = decompressor.decompress(rest, DECOMPRESSED_BYTES_MAX - total_bytes + 1)
        except zlib.error as e:
            raise ValueError(f"bad gzip payload: {e}") from e
        total_bytes += len(part)
        if total_bytes > DECOMPRESSED_BYTES_MAX:
            raise _too_large("gzip")
        if not decompressor.eof:
            raise ValueError("truncated gzip payload")
        parts.append(part)
        rest = decompressor.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _unsnappy(data: bytes | memoryview) -> bytes:
    if len(data) < len(_XERIAL_HEADER) or bytes(data[:8]) != _XERIAL_MAGIC:
        return _snappy_block(data, DECOMPRESSED_BYTES_MAX)
    # The version fields are not checked: some writers (Redpanda) put them little-endian,
    # and kafka-python and Java ignore them too.
    view = memoryview(data)
    parts: list[bytes] = []
    total_bytes = 0
    pos = len(_XERIAL_HEADER)
    # Bound: each block consumes >= 4 bytes of input.
    while pos < len(view):
        if len(view) - pos < _XERIAL_BLOCK_LENGTH.size:
            raise ValueError("truncated xerial snappy block length")
        (length,) = _XERIAL_BLOCK_LENGTH.unpack_from(view, pos)
        pos += _XERIAL_BLOCK_LENGTH.size
        if not 0 <= length <= len(view) - pos:
            raise ValueError(f"xerial snappy block of {length} bytes overruns the payload")
        part = _snappy_block(view[pos : pos + length], DECOMPRESSED_BYTES_MAX - total_bytes)
        total_bytes += len(part)
        parts.append(part)
        pos += length
    return b"".join(parts)


def _snappy_block(block: bytes | memoryview, bytes_max: int) -> bytes:
    """One raw snappy block, whose preamble states its uncompressed length."""
    try:
        if cramjam.snappy.decompress_raw_len(block) > bytes_max:
            raise _too_large("snappy")
        return bytes(cramjam.snappy.decompress_raw(block))
    except cramjam.DecompressionError as e:
        raise ValueError(f"bad snappy payload: {e}") from e


def _unlz4(data: bytes | memoryview) -> bytes:
    decompressor = lz4.frame.LZ4FrameDecompressor()
    parts: list[bytes] = []
    total_bytes = 0
    try:
        part: bytes = decompressor.decompress(data, max_length=_READ_CHUNK_BYTES)
        # Bound: DECOMPRESSED_BYTES_MAX / _READ_CHUNK_BYTES + 1 chunks.
        while True:
            total_bytes += len(part)
            if total_bytes > DECOMPRESSED_BYTES_MAX:
                raise _too_large("lz4")
            parts.append(part)
            # needs_input: all the input is decompressed (at the frame's end, or short).
            if decompressor.eof or decompressor.needs_input:
                break
            part = decompressor.decompress(b"", max_length=_READ_CHUNK_BYTES)
    except RuntimeError as e:  # what python-lz4 raises for any LZ4F error
        raise ValueError(f"bad lz4 payload: {e}") from e
    if not decompressor.eof:
        raise ValueError("truncated lz4 payload")
    if decompressor.unused_data:
        raise ValueError(f"{len(decompressor.unused_data)} bytes after the lz4 frame")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _unzstd(data: bytes | memoryview) -> bytes:
    parts: list[bytes] = []
    total_bytes = 0
    try:
        with _zstd.decompressor.stream_reader(data, read_across_frames=True) as reader:
            # Bound: DECOMPRESSED_BYTES_MAX / _READ_CHUNK_BYTES + 1 reads.
            while part := reader.read(_READ_CHUNK_BYTES):
                total_bytes += len(part)
                if total_bytes > DECOMPRESSED_BYTES_MAX:
                    raise _too_large("zstd")
                parts.append(part)
    except zstandard.ZstdError as e:
        raise ValueError(f"bad zstd payload: {e}") from e
    # A truncated frame ends the stream early without an error here; the record parser
    # then finds records missing and refuses the batch.
    return parts[0] if len(parts) == 1 else b"".join(parts)
