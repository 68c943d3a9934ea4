"""`raftmq bench produce`: messages per second through the library's `Writer`.

Creates the topic if missing (min.insync.replicas = min(2, RF)), then hands the Writer
`--messages` random values of `--message-bytes` in `write_messages` calls of
`--batch-size` messages each, in async mode, with at most `--inflight` calls not yet
completed: the Writer's own path (round-robin balancer, batching by `--batch-size`,
idempotence for acks=all, `--compression`, requests to the partition leaders, retries) is
what is measured, Message objects included (after one warm-up message per partition).
Reports msgs/s, MiB/s of values and of encoded batches, and the latency of each call
(handed to the Writer -> every message of it acknowledged).
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from raftmq.client.producer_core import WriterStats
from raftmq.client.writer import RequireAll, Writer
from raftmq.message import Message

from .common import (
    ACKS_BY_NAME,
    LATENCY_QUANTILES,
    RUN_DURATION_S_MAX,
    CpuMeter,
    Result,
    check_workload,
    chunk_sizes,
    distinct_values,
    ensure_topic,
    footer_lines,
    headline_latency_ms,
    latency_summary_ms,
    latency_table,
    make_values,
    produce_waiting,
    rates,
    throughput_table,
    timeout_ms_of,
)
from .progress import ProgressBar, progress_wanted

# The topic default max.message.bytes is 1_048_588 (Kafka's): the Writer's batches stay
# under it with room for its estimate of the per-record overhead.
BATCH_BYTES_MAX = 1_000_000


@dataclass
class _Calls:
    """The write_messages calls of a run. Written on the Writer's completion thread and
    read by the main thread, under `lock`; `room` counts calls that may still be made
    before one completes (at most --inflight in flight)."""

    inflight_max: int
    bar: ProgressBar
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies_s: list[float] = field(default_factory=list)
    messages: int = 0
    value_bytes: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.room = threading.Semaphore(self.inflight_max)

    def track(self, future: Future[list[Message]], started_s: float, value_bytes: int) -> None:
        """Count the call once it completed (on the Writer's thread); `started_s`: when it
        was made (perf_counter)."""

        def done(f: Future[list[Message]]) -> None:
            latency_s = time.perf_counter() - started_s
            error = f.exception()
            with self.lock:
                if error is not None:
                    self.error = self.error or f"{error}"
                else:
                    self.latencies_s.append(latency_s)
                    self.messages += len(f.result())
                    self.value_bytes += value_bytes
            if error is None:
                self.bar.advance(len(f.result()))
            self.room.release()

        future.add_done_callback(done)

    def failed(self) -> bool:
        with self.lock:
            return self.error is not None


def run(args: argparse.Namespace) -> Result:
    check_workload(args)
    acks = ACKS_BY_NAME[args.acks]
    topic, created = ensure_topic(args)
    values = make_values(distinct_values(args.messages, args.message_bytes), args.message_bytes)
    sizes = chunk_sizes(args.messages, args.batch_size)
    bar = ProgressBar("produce", args.messages, "msgs", enabled=progress_wanted(args))
    calls = _Calls(args.inflight, bar)
    with Writer(
        args.bootstrap,
        topic=args.topic,
        required_acks=acks,
        batch_size=args.batch_size,
        batch_bytes=BATCH_BYTES_MAX,
        compression=None if args.compression == "none" else args.compression,
        idempotent=acks == RequireAll,
        write_timeout_ms=timeout_ms_of(args),
        async_=True,
    ) as writer:
        warm = _warm_up(writer, len(topic.partitions))
        deadline = time.monotonic() + RUN_DURATION_S_MAX
        meter = CpuMeter()
        started_s = time.perf_counter()
        try:
            _feed(writer, calls, values, sizes, deadline)
        finally:
            writer.flush()  # also on Ctrl-C: bounded by the write timeout
        elapsed_s = max(time.perf_counter() - started_s, 1e-9)
        cpu = meter.stop(waiting=produce_waiting(acks))
        stats = writer.stats()
    bar.close()
    return {
        "scenario": "produce",
        "topic": args.topic,
        "topic_created": created,
        "partitions": len(topic.partitions),
        "replication_factor": topic.replication_factor,
        "acks": args.acks,
        "compression": args.compression,
        "message_bytes": args.message_bytes,
        "messages_requested": args.messages,
        "messages": calls.messages,
        "batch_size": args.batch_size,
        "batches": stats.batches - warm.batches,
        "batch_messages_avg": round(
            (stats.messages - warm.messages) / max(1, stats.batches - warm.batches), 1
        ),
        "retries": stats.retries,
        "inflight": args.inflight,
        **rates(calls.messages, calls.value_bytes, elapsed_s, wire_bytes=stats.bytes - warm.bytes),
        "latency_ms": headline_latency_ms(calls.latencies_s),
        "write_latency": latency_summary_ms(calls.latencies_s),
        "cpu": cpu,
        "error": calls.error,
    }


def _warm_up(writer: Writer, partitions: int) -> WriterStats:
    """One message to each partition, before the clock starts: metadata, the producer id
    and a connection to every leader are not part of the figures. Returns the Writer's
    counters after it (the run's are the difference)."""
    writer.write_messages(*(Message(b"warm-up", partition=p) for p in range(partitions))).result()
    return writer.stats()


def _feed(
    writer: Writer, calls: _Calls, values: list[bytes], sizes: list[int], deadline: float
) -> None:
    """Hand every chunk to the Writer, at most calls.inflight_max not yet completed."""
    first = 0
    # Bound: len(sizes) calls, and RUN_DURATION_S_MAX.
    for size in sizes:
        calls.room.acquire()
        if calls.failed():
            return
        if time.monotonic() >= deadline:
            with calls.lock:
                calls.error = f"stopped after {RUN_DURATION_S_MAX:.0f} s"
            return
        chunk = [Message(values[(first + i) % len(values)]) for i in range(size)]
        first += size
        value_bytes = sum(len(m.value or b"") for m in chunk)
        started_s = time.perf_counter()
        calls.track(writer.write_messages(*chunk), started_s, value_bytes)


def render(result: Result) -> str:
    lines = [
        f"bench produce: topic {result['topic']} ({result['partitions']} partitions, "
        f"RF {result['replication_factor']}), acks={result['acks']}, "
        f"compression {result['compression']}, {result['message_bytes']} B messages, "
        f"write_messages calls of {result['batch_size']}, {result['inflight']} in flight",
        throughput_table(
            result,
            {"BATCHES": result["batches"], "MSGS/BATCH": f"{result['batch_messages_avg']:.0f}"},
        ),
        latency_table("WRITE LATENCY", result["write_latency"], LATENCY_QUANTILES),
        *footer_lines(result),
    ]
    return "\n".join(lines)
