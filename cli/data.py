"""`raftmq produce` and `raftmq consume`: stdin lines in, messages out."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import zlib
from collections.abc import Iterator

from raftmq.client.cluster_client import ClusterClient
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import decode_batch, encode_batch, iter_batches

READ_CHUNK_BYTES = 1 << 20
_ACKS = {"all": -1, "1": 1, "0": 0}


def _bootstrap(args: argparse.Namespace) -> list[str]:
    return [e.strip() for e in args.bootstrap.split(",") if e.strip()]


def _stdin_line_groups() -> Iterator[list[bytes]]:
    """Lines grouped by what one read() returned: a pipe yields big groups (big batches),
    a person typing yields one line at a time (sent at once)."""
    fd = sys.stdin.fileno()
    tail = b""
    while True:
        chunk = os.read(fd, READ_CHUNK_BYTES)
        if not chunk:
            if tail:
                yield [tail]
            return
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        if lines:
            yield [line.rstrip(b"\r") for line in lines]


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


def produce(args: argparse.Namespace) -> int:
    acks = _ACKS[args.acks]
    separator = args.key_separator.encode() if args.key_separator else None
    failures = 0
    round_robin = itertools.count()
    with ClusterClient(_bootstrap(args), request_timeout_ms=args.timeout_ms) as client:
        partitions = client.partition_count(args.topic)
        if args.partition is not None and not 0 <= args.partition < partitions:
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"{args.topic} has {partitions} partitions; there is no partition {args.partition}",
            )
        for lines in _stdin_line_groups():
            by_partition: dict[int, list[Message]] = {}
            now_ms = int(time.time() * 1000)
            for line in lines:
                key: bytes | None = None
                value = line
                if separator is not None and separator in line:
                    key, value = line.split(separator, 1)
                if args.partition is not None:
                    partition = args.partition
                elif key is not None:
                    partition = zlib.crc32(key) % partitions  # same key, same partition
                else:
                    partition = next(round_robin) % partitions
                by_partition.setdefault(partition, []).append(
                    Message(value, key, timestamp_ms=now_ms)
                )
            for partition, records in sorted(by_partition.items()):
                for start in range(0, len(records), args.batch_size):
                    chunk = records[start : start + args.batch_size]
                    try:
                        base = client.produce(args.topic, partition, encode_batch(chunk), acks=acks)
                    except RaftmqError as e:
                        failures += len(chunk)
                        print(
                            f"error: {len(chunk)} message(s) to {args.topic}-{partition} failed: "
                            f"{e.code.name}: {e.message}",
                            file=sys.stderr,
                        )
                        continue
                    if args.json:
                        for i, record in enumerate(chunk):
                            print(
                                json.dumps(
                                    {
                                        "topic": args.topic,
                                        "partition": partition,
                                        "offset": base + i if acks != 0 else None,
                                        "key": _text(record.key),
                                        "value": _text(record.value),
                                    }
                                )
                            )
                    sys.stdout.flush()
    return 1 if failures else 0


def consume(args: argparse.Namespace) -> int:
    printed = 0
    idle_deadline = (
        time.monotonic() + args.timeout_ms / 1000 if args.timeout_ms is not None else None
    )
    with ClusterClient(_bootstrap(args)) as client:
        count = client.partition_count(args.topic)
        partitions = [args.partition] if args.partition is not None else list(range(count))
        positions: dict[int, int] = {}
        for p in partitions:
            if args.offset is not None:
                positions[p] = args.offset
            else:
                positions[p] = client.list_offset(args.topic, p, -2 if args.from_beginning else -1)
        while True:
            progressed = False
            for p in partitions:
                result = client.fetch(
                    args.topic, p, positions[p], max_wait_ms=200 if len(partitions) > 1 else 500
                )
                if result.error is not None and result.error.code == ErrorCode.OFFSET_OUT_OF_RANGE:
                    reset = (
                        result.log_start_offset
                        if positions[p] < result.log_start_offset
                        else result.high_watermark
                    )
                    print(
                        f"warning: offset {positions[p]} of {args.topic}-{p} is out of range; "
                        f"resetting to {reset}",
                        file=sys.stderr,
                    )
                    positions[p] = reset
                    continue
                for _, batch in iter_batches(result.records):
                    for record in decode_batch(batch):
                        if record.offset < positions[p]:
                            continue
                        positions[p] = record.offset + 1
                        progressed = True
                        if args.json:
                            print(
                                json.dumps(
                                    {
                                        "topic": args.topic,
                                        "partition": p,
                                        "offset": record.offset,
                                        "key": _text(record.key),
                                        "value": _text(record.value),
                                        "timestamp": record.timestamp_ms,
                                    }
                                )
                            )
                        else:
                            print(_text(record.value))
                        printed += 1
                        if args.max_messages is not None and printed >= args.max_messages:
                            sys.stdout.flush()
                            return 0
                sys.stdout.flush()
            if progressed and args.timeout_ms is not None:
                idle_deadline = time.monotonic() + args.timeout_ms / 1000
            if idle_deadline is not None and time.monotonic() >= idle_deadline:
                return 0
