"""`raftmq bench consume`: messages per second through the library's `Reader`s.

Reads `--messages` of what the topic holds (spread evenly over its partitions) from each
partition's log start offset, one `Reader` per partition on a thread of its own (so that
one partition's fetch is in flight while another's messages are decoded), each taking
message after message with `read_message` as an application would. Reports msgs/s and
MiB/s of values.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field

from raftmq.client.admin import Admin, FirstOffset, LastOffset
from raftmq.client.reader import Reader
from raftmq.errors import ErrorCode, RaftmqError

from .common import (
    RUN_DURATION_S_MAX,
    CpuMeter,
    Result,
    brokers_of,
    check_workload,
    footer_lines,
    rates,
    throughput_table,
    timeout_ms_of,
)
from .progress import ProgressBar, progress_wanted

FETCH_WAIT_MS = 500
PARTITION_FETCH_BYTES_MAX = 4 << 20
# Progress is added to the totals, and the stop and deadline checked, every this many
# messages (per message, that would cost more than the counting).
REPORT_EVERY_MESSAGES = 1_000


def consume_ends(starts: dict[int, int], ends: dict[int, int], target: int) -> dict[int, int]:
    """End offsets per partition so that exactly min(target, available) messages lie in
    [starts[p], result[p]), spread as evenly as each partition's data allows."""
    available = {p: max(0, ends[p] - starts[p]) for p in starts}
    remaining = min(target, sum(available.values()))
    result = dict(starts)
    # Smallest first: a partition short of its share leaves the rest to the bigger ones.
    order = sorted(available, key=lambda p: (available[p], p))
    for i, p in enumerate(order):
        share = min(available[p], -(-remaining // (len(order) - i)))
        result[p] = starts[p] + share
        remaining -= share
    assert remaining == 0
    return result


@dataclass
class _Totals:
    """What the reader threads read, added under `lock`; `errors` ends the run."""

    bar: ProgressBar
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: int = 0
    value_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def add(self, messages: int, value_bytes: int) -> None:
        with self.lock:
            self.messages += messages
            self.value_bytes += value_bytes
        self.bar.advance(messages)

    def fail(self, error: str) -> None:
        with self.lock:
            self.errors.append(error)
        self.stop.set()


def _open_reader(args: argparse.Namespace, partition: int, start: int) -> Reader:
    """A Reader at `start`, with its metadata, position and leader connection ready
    (read_lag asks the leader), so that none of it is in the figures."""
    reader = Reader(
        brokers_of(args),
        args.topic,
        partition,
        start_offset=start,
        max_bytes=PARTITION_FETCH_BYTES_MAX,
        max_wait_ms=FETCH_WAIT_MS,
    )
    reader.read_lag()
    return reader


def _read_partition(reader: Reader, end: int, idle_ms: int, totals: _Totals) -> None:
    """One thread: read one partition up to `end` with its own Reader."""
    deadline = time.monotonic() + RUN_DURATION_S_MAX
    messages = value_bytes = 0
    position = reader.offset
    try:
        # Bound: end - start messages, RUN_DURATION_S_MAX, or `idle_ms` without one.
        while position < end:
            message = reader.read_message(timeout_ms=idle_ms)
            position = message.offset + 1
            messages += 1
            value_bytes += len(message.value or b"")
            if messages == REPORT_EVERY_MESSAGES:
                totals.add(messages, value_bytes)
                messages = value_bytes = 0
                if totals.stop.is_set():
                    break
                if time.monotonic() >= deadline:
                    totals.fail(f"stopped after {RUN_DURATION_S_MAX:.0f} s")
                    break
    except (TimeoutError, RaftmqError) as e:
        totals.fail(f"{reader.topic}-{reader.partition} at offset {position} of {end}: {e}")
    totals.add(messages, value_bytes)


def _offsets(args: argparse.Namespace) -> tuple[dict[int, int], dict[int, int]]:
    """(log start offsets, high watermarks) by partition."""
    with Admin(brokers_of(args), timeout_ms=timeout_ms_of(args)) as admin:
        return admin.list_offsets(args.topic, FirstOffset), admin.list_offsets(
            args.topic, LastOffset
        )


def run(args: argparse.Namespace) -> Result:
    check_workload(args)
    starts, ends = _offsets(args)
    available = sum(ends[p] - starts[p] for p in starts)
    if available <= 0:
        raise RaftmqError(
            ErrorCode.OFFSET_OUT_OF_RANGE,
            f"topic {args.topic!r} holds no messages: run `raftmq bench produce` first",
        )
    target = min(args.messages, available)
    ends = consume_ends(starts, ends, target)
    totals = _Totals(ProgressBar("consume", target, "msgs", enabled=progress_wanted(args)))
    readers = [_open_reader(args, p, starts[p]) for p in sorted(starts) if ends[p] > starts[p]]
    threads = [
        threading.Thread(
            target=_read_partition,
            args=(reader, ends[reader.partition], timeout_ms_of(args), totals),
            name=f"bench-consume-{reader.partition}",
            daemon=True,
        )
        for reader in readers
    ]
    meter = CpuMeter()
    started_s = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        totals.stop.set()  # on Ctrl-C: the threads stop within REPORT_EVERY_MESSAGES
    elapsed_s = max(time.perf_counter() - started_s, 1e-9)
    cpu = meter.stop(waiting="fetch round trips (one fetch in flight per partition)")
    totals.bar.close()
    for reader in readers:
        reader.close()
    return {
        "scenario": "consume",
        "topic": args.topic,
        "partitions": len(starts),
        "messages_available": available,
        "messages_requested": args.messages,
        "messages": totals.messages,
        "reader_threads": len(threads),
        **rates(totals.messages, totals.value_bytes, elapsed_s),
        "cpu": cpu,
        "error": totals.errors[0] if totals.errors else None,
    }


def render(result: Result) -> str:
    lines = [
        f"bench consume: topic {result['topic']} ({result['partitions']} partitions, "
        f"{result['messages_available']} messages available), "
        f"{result['reader_threads']} Reader thread(s)",
        throughput_table(result, {}),
        *footer_lines(result),
    ]
    return "\n".join(lines)
