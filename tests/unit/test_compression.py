"""Batch compression: each codec's framing, what other writers send, and bounded output."""

from __future__ import annotations

import gzip
import struct

import cramjam
import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq import compression
from raftmq.compression import (
    CODEC_GZIP,
    CODEC_LZ4,
    CODEC_NAMES,
    CODEC_SNAPPY,
    CODEC_ZSTD,
    compress,
    decompress,
)

COMPRESSED = [CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD]
# Compressible but not trivial: 100 KiB spans several 32 KiB snappy / 64 KiB lz4 blocks.
TEXT = b"".join(b"record %d of a batch; " % i for i in range(5000))[: 100 * 1024]


@pytest.mark.parametrize("codec", COMPRESSED)
@given(st.binary(max_size=2000))
@settings(max_examples=50)
def test_round_trip(codec: int, data: bytes) -> None:
    assert decompress(codec, compress(codec, data)) == data


@pytest.mark.parametrize("codec", COMPRESSED)
def test_round_trip_of_many_blocks(codec: int) -> None:
    packed = compress(codec, TEXT)
    assert len(packed) < len(TEXT) // 2
    assert decompress(codec, packed) == TEXT
    assert decompress(codec, memoryview(packed)) == TEXT


def test_snappy_is_xerial_framed_and_raw_blocks_are_read_too() -> None:
    packed = compress(CODEC_SNAPPY, TEXT)
    assert packed[:16] == b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    (first_block_bytes,) = struct.unpack_from(">i", packed, 16)
    assert cramjam.snappy.decompress_raw_len(packed[20 : 20 + first_block_bytes]) == 32 * 1024
    raw = bytes(cramjam.snappy.compress_raw(TEXT))  # what librdkafka may send
    assert decompress(CODEC_SNAPPY, raw) == TEXT
    # Redpanda wrote the xerial version fields little-endian: they are not checked.
    odd_versions = packed[:8] + struct.pack("<ii", 1, 1) + packed[16:]
    assert decompress(CODEC_SNAPPY, odd_versions) == TEXT


def test_lz4_writes_independent_64k_blocks_without_size_or_checksums() -> None:
    packed = compress(CODEC_LZ4, TEXT)
    assert packed[:4] == b"\x04\x22\x4d\x18"  # LZ4 frame magic
    flags, block_descriptor = packed[4], packed[5]
    assert flags >> 6 == 1  # version 01
    assert flags & 0x20  # independent blocks: Kafka's reader refuses linked ones
    assert not flags & 0x1C  # no block checksum, content size or content checksum
    assert block_descriptor == 0x40  # 64 KiB blocks
    # Other writers' frames: linked blocks with checksums (cramjam), content size (lz4).
    assert decompress(CODEC_LZ4, bytes(cramjam.lz4.compress(TEXT))) == TEXT
    assert decompress(CODEC_LZ4, lz4.frame.compress(TEXT)) == TEXT


def test_zstd_frames_without_content_size_and_several_frames_are_read() -> None:
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
    assert zstandard.frame_content_size(streamed) == -1  # as Java's streaming writer omits it
    assert decompress(CODEC_ZSTD, streamed) == TEXT
    assert (
        decompress(CODEC_ZSTD, compress(CODEC_ZSTD, b"ab") + compress(CODEC_ZSTD, b"c")) == b"abc"
    )


def test_gzip_members_are_concatenated_and_trailing_garbage_is_refused() -> None:
    assert decompress(CODEC_GZIP, gzip.compress(b"ab") + gzip.compress(b"c")) == b"abc"
    with pytest.raises(ValueError, match="gzip"):
        decompress(CODEC_GZIP, gzip.compress(b"ab") + b"garbage")


@pytest.mark.parametrize("codec", COMPRESSED)
def test_truncated_or_garbage_input_is_a_value_error(codec: int) -> None:
    packed = compress(codec, TEXT)
    for bad in (packed[: len(packed) // 2], b"\x00" * 50, packed[:1]):
        try:
            out = decompress(codec, bad)
        except ValueError:
            continue
        # zstd ends a truncated stream quietly; the record parser then finds records missing.
        assert codec == CODEC_ZSTD and len(out) < len(TEXT)


@pytest.mark.parametrize("codec", COMPRESSED)
def test_output_is_bounded(codec: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small batch that inflates past the bound is refused, not inflated."""
    monkeypatch.setattr(compression, "DECOMPRESSED_BYTES_MAX", len(TEXT))
    assert decompress(codec, compress(codec, TEXT)) == TEXT
    with pytest.raises(ValueError, match="more than"):
        decompress(codec, compress(codec, TEXT + b"!"))


def test_unknown_codecs() -> None:
    assert sorted(CODEC_NAMES) == [0, 1, 2, 3, 4]
    for codec in (0, 5, 7):
        with pytest.raises(ValueError, match="unknown"):
            compress(codec, b"x")
        with pytest.raises(ValueError, match="unknown"):
            decompress(codec, b"x")


@pytest.mark.parametrize("codec", [CODEC_LZ4, CODEC_ZSTD])
def test_chunked_reads_reassemble_and_stay_bounded(
    codec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lz4 and zstd output is read in chunks: many of them, and the bound holds mid-way."""
    monkeypatch.setattr(compression, "_READ_CHUNK_BYTES", 1000)
    assert decompress(codec, compress(codec, TEXT)) == TEXT
    monkeypatch.setattr(compression, "DECOMPRESSED_BYTES_MAX", len(TEXT) - 1500)
    with pytest.raises(ValueError, match="more than"):
        decompress(codec, compress(codec, TEXT))
