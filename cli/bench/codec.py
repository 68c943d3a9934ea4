"""`raftmq bench codec`: records/s of the client's batch codec on one core, per compression.

Encode is a list of `Message` -> batch bytes (records, compression, header, CRC-32C);
decode is batch bytes -> list of `Message` (CRC check, decompression, records). No broker
is involved. Batches hold as many `--message-bytes` values (default 100) as fit in 16 KiB
uncompressed, with null keys and no headers. Values are JSON-like event lines (seeded,
deterministic), compressible the way real payloads are, so that the compression codecs'
figures mean something; the uncompressed figures do not depend on the content.

Each figure is the median over `ROUNDS` rounds of at least `ROUND_S` seconds, in this
one thread (one core). Units: MiB = 2**20 bytes of values.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from raftmq.compression import CODEC_NAMES, CODEC_NONE
from raftmq.message import Message
from raftmq.record_batch import (
    HEADER_SIZE,
    RECORD_BYTES_MIN,
    codec_implementation,
    decode_batch,
    encode_batch,
    stamp_batch,
)

from .common import MIB, Result

BATCH_BYTES_TARGET = 16 * 1024
# A value larger than this would not be a codec benchmark any more (one record per batch).
MESSAGE_BYTES_MAX = 1024 * 1024
ROUNDS = 5
ROUND_S = 0.2


def event_values(count: int, size: int, *, seed: int = 0) -> list[bytes]:
    """`count` JSON-like event lines of exactly `size` bytes (padded or cut)."""
    rng = random.Random(seed)
    values = []
    for i in range(count):
        line = (
            f'{{"id":{i},"user":"u{rng.randrange(10**5):05d}","page":"/item/'
            f'{rng.randrange(1000)}","ms":{rng.randrange(10**4)},"ok":true,"pad":"'
        ).encode()
        values.append((line + b"x" * size)[:size])
    return values


def records_per_batch(values: list[bytes]) -> int:
    """The most of `values` (at least one) that fit in BATCH_BYTES_TARGET uncompressed."""

    def fits(count: int) -> bool:
        return len(encode_batch([Message(v) for v in values[:count]])) <= BATCH_BYTES_TARGET

    low, high = 1, len(values)  # invariant: the answer is in [low, high]
    # Bound: log2(len(values)) encodes (the size grows with the count).
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def median_rate(operation: Callable[[], object], records_per_call: int) -> float:
    """Median records/s of `operation` over ROUNDS rounds of >= ROUND_S seconds each."""
    rates = []
    for _ in range(ROUNDS):
        calls = 0
        start = time.perf_counter()
        deadline = start + ROUND_S
        # Bound: ROUND_S seconds.
        while True:
            operation()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(calls * records_per_call / (now - start))
    return statistics.median(rates)


def measure(values: list[bytes], compression: int) -> dict[str, float]:
    messages = [Message(v) for v in values]
    batch = encode_batch(messages, compression=compression)
    stored = stamp_batch(batch, base_offset=0, partition_leader_epoch=0)
    assert len(decode_batch(stored)) == len(messages)
    encode_rate = median_rate(lambda: encode_batch(messages, compression=compression), len(values))
    decode_rate = median_rate(lambda: decode_batch(stored), len(values))
    value_bytes = sum(map(len, values)) / len(values)
    return {
        "encode_records_per_s": round(encode_rate),
        "decode_records_per_s": round(decode_rate),
        "encode_value_mib_per_s": round(encode_rate * value_bytes / MIB, 1),
        "decode_value_mib_per_s": round(decode_rate * value_bytes / MIB, 1),
        "batch_bytes": len(batch),
    }


def render(result: Result) -> str:
    lines = [
        f"codec bench: one core, records codec {result['codec_implementation']}, "
        f"{result['value_bytes']} B values, {result['records_per_batch']} records per batch "
        f"({result['batch_bytes']} B uncompressed); median of {ROUNDS} rounds",
        f"{'compression':<12}{'batch B':>9}{'encode rec/s':>15}{'decode rec/s':>15}"
        f"{'enc MiB/s':>11}{'dec MiB/s':>11}",
    ]
    for name, figures in result["by_compression"].items():
        lines.append(
            f"{name:<12}{figures['batch_bytes']:>9}{figures['encode_records_per_s']:>15,}"
            f"{figures['decode_records_per_s']:>15,}{figures['encode_value_mib_per_s']:>11}"
            f"{figures['decode_value_mib_per_s']:>11}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Result:
    """Encode and decode figures per compression (reads args.message_bytes)."""
    value_bytes: int = args.message_bytes
    if not 0 <= value_bytes <= MESSAGE_BYTES_MAX:
        raise ValueError(f"--message-bytes must be in 0 .. {MESSAGE_BYTES_MAX}")
    # More would not fit: each record takes its value and >= RECORD_BYTES_MIN bytes more.
    fit_max = max(1, (BATCH_BYTES_TARGET - HEADER_SIZE) // (value_bytes + RECORD_BYTES_MIN))
    candidates = event_values(fit_max, value_bytes)
    values = candidates[: records_per_batch(candidates)]
    by_compression = {name: measure(values, codec) for codec, name in CODEC_NAMES.items()}
    none = by_compression[CODEC_NAMES[CODEC_NONE]]
    return {
        "scenario": "codec",
        "codec_implementation": codec_implementation(),
        "value_bytes": value_bytes,
        "records_per_batch": len(values),
        "batch_bytes": none["batch_bytes"],
        "encode_records_per_s": none["encode_records_per_s"],
        "decode_records_per_s": none["decode_records_per_s"],
        "by_compression": by_compression,
    }
