"""`raftmq bench e2e`: produce -> consume latency at a fixed rate, through the library.

Against `--bootstrap` (a `raftmq up` cluster, say). Creates the topic if missing (RF and
partitions from the flags, min.insync.replicas = min(2, RF)). An async idempotent
`Writer` (acks=all, no linger: a paced message is sent at once unless its partition has a
batch in flight, when it joins the next batch; `--pipeline-partial-batches`: sent at once
within the in-flight window) gets one message per `write_messages` call, `--rate` calls
per second on a fixed schedule, round robin over the partitions; one `Reader` per
partition, each on a thread of this process, reads concurrently from where the measured
messages start. The latency of a message is from just before its `write_messages` call
to when `read_message` returned it; the send time travels in the value (perf_counter_ns,
one clock for both ends), with the message's sequence number, so each is counted once.
`--client async`: the same with an `AsyncWriter` and an `AsyncReader` task per partition,
all on one event loop (uvloop's, as the brokers') instead of the sync clients' threads.

The sender keeps its schedule (message i is due at start + i / rate) and reports how
late it issued calls against it: a sender behind its schedule means the client, not the
cluster, set the pace. `--messages`, or `--duration` seconds of sending (default
`E2E_DURATION_S_DEFAULT`), after one unmeasured warm-up message per partition.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from raftmq.broker.broker import event_loop_factory
from raftmq.client.async_reader import AsyncReader
from raftmq.client.async_writer import AsyncWriter
from raftmq.client.producer_core import WriterStats
from raftmq.client.reader import LastOffset, Reader
from raftmq.client.writer import RequireAll, Writer
from raftmq.errors import RaftmqError
from raftmq.message import Message

from .common import (
    LATENCY_QUANTILES_FINE,
    RUN_DURATION_S_MAX,
    CpuMeter,
    Result,
    brokers_of,
    ensure_topic,
    footer_lines,
    headline_latency_ms,
    latency_summary_ms,
    latency_table,
    make_values,
    rates,
    timeout_ms_of,
)
from .progress import ProgressBar, progress_wanted

E2E_RATE_DEFAULT = 1_000
E2E_RATE_MAX = 100_000
E2E_DURATION_S_DEFAULT = 10.0
E2E_MESSAGES_MAX = 1_000_000
# Value layout: magic | int64 perf_counter_ns just before the write call | uint32 sequence
# number (of the measured messages; warm-up messages carry WARMUP_SEQUENCE) | padding.
# The magic keeps another bench's values on the same topic out of the figures.
E2E_MAGIC = b"e2e1"
E2E_STAMP = struct.Struct(">4sqI")
WARMUP_SEQUENCE = 0xFFFF_FFFF
# After the last send, the Readers get this long to see what was acknowledged.
E2E_DRAIN_TIMEOUT_S = 10.0
READ_TIMEOUT_MS = 200
FETCH_WAIT_MS = 500
# A sender this late (p99 of its calls against the schedule), and late by this share of
# the end-to-end p99, set the pace: the figure is then the client's as much as the cluster's.
SENDER_LATE_MS_MAX = 1.0
SENDER_LATE_SHARE_MAX = 0.25
# An acknowledgement p99 this close to the end-to-end p99: the write path holds the time.
WRITE_PATH_SHARE = 0.8


def e2e_value(sent_ns: int, sequence: int, padding: bytes) -> bytes:
    return E2E_STAMP.pack(E2E_MAGIC, sent_ns, sequence) + padding


def read_e2e_value(value: bytes | None) -> tuple[int, int] | None:
    """(sent_ns, sequence) of an e2e value, or None for any other value."""
    if value is None or len(value) < E2E_STAMP.size:
        return None
    magic, sent_ns, sequence = E2E_STAMP.unpack_from(value)
    if magic != E2E_MAGIC:
        return None
    return int(sent_ns), int(sequence)


def e2e_plan(args: argparse.Namespace) -> tuple[int, float]:
    """(messages, rate per s) from the flags; ValueError on a bad one."""
    rate = args.rate if args.rate is not None else E2E_RATE_DEFAULT
    if not 1 <= rate <= E2E_RATE_MAX:
        raise ValueError(f"--rate must be in [1, {E2E_RATE_MAX}] messages/s")
    if args.messages is not None and args.duration is not None:
        raise ValueError("give --messages or --duration, not both")
    if args.messages is not None:
        messages = int(args.messages)
    else:
        duration_s = E2E_DURATION_S_DEFAULT if args.duration is None else float(args.duration)
        if not 0 < duration_s <= RUN_DURATION_S_MAX:
            raise ValueError(f"--duration must be in (0, {RUN_DURATION_S_MAX:.0f}] s")
        messages = max(1, round(rate * duration_s))
    if not 1 <= messages <= E2E_MESSAGES_MAX:
        raise ValueError(f"--messages must be in [1, {E2E_MESSAGES_MAX}]")
    if messages / rate > RUN_DURATION_S_MAX:
        raise ValueError(
            f"{messages} messages at {rate}/s take longer than {RUN_DURATION_S_MAX:.0f} s"
        )
    if args.message_bytes < 0:
        raise ValueError("--message-bytes must not be negative")
    if args.partitions < 1 or args.replication_factor < 1:
        raise ValueError("--partitions and --replication-factor must be at least 1")
    return messages, float(rate)


@dataclass
class _Seen:
    """What the Reader threads saw. Each thread appends to its own list in `samples_s`
    (and marks its own partition's sequence numbers in `seen`, disjoint from the other
    threads'); the main thread reads them after stopping the threads, and `count()`
    (approximate while running) to know when to stop waiting."""

    messages: int
    samples_s: list[list[float]]
    seen: bytearray = field(init=False)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.seen = bytearray(self.messages)

    def count(self) -> int:
        return sum(len(s) for s in self.samples_s)

    def record(self, message: Message, received_ns: int, samples_s: list[float]) -> None:
        """A message a Reader returned at `received_ns` (perf_counter_ns)."""
        stamp = read_e2e_value(message.value)
        if stamp is None or not 0 <= stamp[1] < self.messages:
            return
        if self.seen[stamp[1]]:
            self.duplicates += 1
            return
        self.seen[stamp[1]] = 1
        samples_s.append((received_ns - stamp[0]) / 1e9)


def e2e_limited_by(
    cpu_hint: str,
    late_p99_ms: float | None,
    e2e_ms: dict[str, float] | None,
    produce_ms: dict[str, float] | None = None,
) -> str:
    """The CPU-based hint, led by the sender when its lateness is a fair share of the
    end-to-end p99; then which path the end-to-end p99 spent its time on: the write's
    acknowledgement (a consumer sees a message once the high watermark passes it, which is
    also when an acks=all write is acknowledged) or the read after it."""
    if late_p99_ms is None or e2e_ms is None:
        return cpu_hint
    e2e_p99_ms = e2e_ms["p99"]
    if late_p99_ms > max(SENDER_LATE_MS_MAX, SENDER_LATE_SHARE_MAX * e2e_p99_ms):
        return (
            f"the bench's sender: 1% of its calls went out more than {late_p99_ms:.2f} ms "
            f"behind its schedule, against an end-to-end p99 of {e2e_p99_ms:.2f} ms (the "
            f"client process set part of the pace); {cpu_hint}"
        )
    line = f"{cpu_hint}; the sender kept its schedule within {late_p99_ms:.2f} ms at p99"
    if produce_ms is not None:
        path = (
            "the write path (replication and the high watermark)"
            if produce_ms["p99"] >= WRITE_PATH_SHARE * e2e_p99_ms
            else "the read path (the Readers' fetch after the high watermark moved)"
        )
        line += (
            f"; the end-to-end p99 {e2e_p99_ms:.2f} ms against an acknowledgement p99 of "
            f"{produce_ms['p99']:.2f} ms: {path} holds most of it"
        )
    return line


def _read_partition(reader: Reader, samples_s: list[float], seen: _Seen) -> None:
    """One Reader thread, until the main thread sets `seen.stop`."""
    deadline = time.monotonic() + RUN_DURATION_S_MAX + E2E_DRAIN_TIMEOUT_S
    # Bound: the stop event (set at the latest E2E_DRAIN_TIMEOUT_S after the last send) and
    # a deadline past the run's longest; each read waits READ_TIMEOUT_MS at most.
    while not seen.stop.is_set() and time.monotonic() < deadline:
        try:
            message = reader.read_message(timeout_ms=READ_TIMEOUT_MS)
        except TimeoutError:
            continue
        except RaftmqError as e:  # reported with the figures, not lost in a thread
            seen.errors.append(f"reader {reader.topic}-{reader.partition}: {e}")
            return
        seen.record(message, time.perf_counter_ns(), samples_s)


async def _read_partition_async(reader: AsyncReader, samples_s: list[float], seen: _Seen) -> None:
    """One AsyncReader's task, as `_read_partition`."""
    deadline = time.monotonic() + RUN_DURATION_S_MAX + E2E_DRAIN_TIMEOUT_S
    # Bound: as _read_partition's.
    while not seen.stop.is_set() and time.monotonic() < deadline:
        try:
            message = await reader.read_message(timeout_ms=READ_TIMEOUT_MS)
        except TimeoutError:
            continue
        except RaftmqError as e:
            seen.errors.append(f"reader {reader.topic}-{reader.partition}: {e}")
            return
        seen.record(message, time.perf_counter_ns(), samples_s)


@dataclass
class _Sent:
    """The write calls. Acknowledgements arrive on the Writer's completion thread, under
    `lock`."""

    bar: ProgressBar
    lock: threading.Lock = field(default_factory=threading.Lock)
    produce_s: list[float] = field(default_factory=list)
    late_s: list[float] = field(default_factory=list)
    issued: int = 0
    acked: int = 0
    value_bytes: int = 0
    failed: int = 0
    first_error: str | None = None

    def track(
        self,
        future: Future[list[Message]] | asyncio.Future[list[Message]],
        sent_s: float,
        value_bytes: int,
    ) -> None:
        def done(f: Future[list[Message]] | asyncio.Future[list[Message]]) -> None:
            latency_s = time.perf_counter() - sent_s
            error = f.exception()
            with self.lock:
                if error is None:
                    self.acked += 1
                    self.value_bytes += value_bytes
                    self.produce_s.append(latency_s)
                else:
                    self.failed += 1
                    self.first_error = self.first_error or f"writer: {error}"
            if error is None:
                self.bar.advance()

        future.add_done_callback(done)


def _send_on_schedule(
    writer: Writer, sent: _Sent, *, messages: int, rate: float, partitions: int, padding: bytes
) -> float:
    """Issue message i at start + i / rate (round robin over partitions); returns the
    perf_counter of the start. Bound: `messages` calls and RUN_DURATION_S_MAX."""
    started_s = time.perf_counter()
    deadline_s = started_s + RUN_DURATION_S_MAX
    for i in range(messages):
        due_s = started_s + i / rate
        # Bound: until due_s (at most 1 / rate away, or the time the sender is behind).
        # A sleep, never a spin: latency counts from the send, so a sleep's overshoot
        # (~0.17 ms here, printed as SENDER LATE) costs the figure nothing, while spinning
        # the last 0.2 ms of every 1 ms took CPU and the GIL from the cluster and the
        # Readers (client 0.59 -> 0.55 cores, e2e p99 medians 18.3 -> 17.7 ms, three pairs).
        while (wait_s := due_s - time.perf_counter()) > 0:
            time.sleep(wait_s)
        sent_ns = time.perf_counter_ns()
        if sent_ns / 1e9 >= deadline_s:
            with sent.lock:
                sent.first_error = sent.first_error or f"stopped after {RUN_DURATION_S_MAX:.0f} s"
            break
        value = e2e_value(sent_ns, i, padding)
        future = writer.write_messages(Message(value, partition=i % partitions))
        sent.track(future, sent_ns / 1e9, len(value))
        sent.late_s.append(sent_ns / 1e9 - due_s)
        sent.issued += 1
    return started_s


def _open_readers(args: argparse.Namespace, partitions: int) -> list[Reader]:
    """A Reader per partition at its end (after the warm-up), its metadata, position and
    leader connection ready (read_lag asks the leader), so none of that is measured."""
    readers = []
    for p in range(partitions):
        reader = Reader(
            brokers_of(args), args.topic, p, start_offset=LastOffset, max_wait_ms=FETCH_WAIT_MS
        )
        reader.read_lag()
        readers.append(reader)
    return readers


async def _send_on_schedule_async(
    writer: AsyncWriter,
    sent: _Sent,
    *,
    messages: int,
    rate: float,
    partitions: int,
    padding: bytes,
) -> float:
    """As `_send_on_schedule`, on the event loop (its timers' resolution shows as SENDER
    LATE; latency counts from the call, so it costs the figure nothing)."""
    started_s = time.perf_counter()
    deadline_s = started_s + RUN_DURATION_S_MAX
    for i in range(messages):
        due_s = started_s + i / rate
        # Bound: until due_s, as in _send_on_schedule.
        while (wait_s := due_s - time.perf_counter()) > 0:
            await asyncio.sleep(wait_s)
        sent_ns = time.perf_counter_ns()
        if sent_ns / 1e9 >= deadline_s:
            sent.first_error = sent.first_error or f"stopped after {RUN_DURATION_S_MAX:.0f} s"
            break
        value = e2e_value(sent_ns, i, padding)
        future = await writer.write_messages(Message(value, partition=i % partitions))
        sent.track(future, sent_ns / 1e9, len(value))
        sent.late_s.append(sent_ns / 1e9 - due_s)
        sent.issued += 1
    return started_s


@dataclass(frozen=True, slots=True)
class _Plan:
    messages: int
    rate: float
    partitions: int
    padding: bytes
    sent: _Sent
    seen: _Seen


@dataclass(frozen=True, slots=True)
class _Measured:
    stats: WriterStats
    warm: WriterStats
    cpu: Result
    sending_s: float
    elapsed_s: float
    pipeline_partial_batches: bool


_CPU_WAITING = (
    "acks=all replication (the followers' fetches, the HW advance) and the Readers' "
    "long-poll wake-up"
)


def _writer_options(args: argparse.Namespace) -> dict[str, Any]:
    """Both clients' Writer: acks=all, no linger, a future per call."""
    return {
        "topic": args.topic,
        "required_acks": RequireAll,
        "linger_ms": 0,
        "write_timeout_ms": timeout_ms_of(args),
        "async_": True,
        "pipeline_partial_batches": args.pipeline_partial_batches,
    }


def _warm_up_messages(partitions: int) -> list[Message]:
    """One unmeasured message per partition: metadata, producer id and streams ready."""
    return [Message(e2e_value(0, WARMUP_SEQUENCE, b""), partition=p) for p in range(partitions)]


def _measure_sync(args: argparse.Namespace, plan: _Plan) -> _Measured:
    """The sync `Writer` and a `Reader` thread per partition."""
    messages, rate, partitions, padding = plan.messages, plan.rate, plan.partitions, plan.padding
    sent, seen = plan.sent, plan.seen
    with Writer(args.bootstrap, **_writer_options(args)) as writer:
        warm_up = _warm_up_messages(partitions)
        writer.write_messages(*warm_up).result()
        warm = writer.stats()
        readers = _open_readers(args, partitions)
        threads = [
            threading.Thread(
                target=_read_partition,
                args=(reader, seen.samples_s[reader.partition], seen),
                name=f"bench-e2e-reader-{reader.partition}",
                daemon=True,
            )
            for reader in readers
        ]
        for t in threads:
            t.start()
        meter = CpuMeter()
        try:
            started_s = _send_on_schedule(
                writer, sent, messages=messages, rate=rate, partitions=partitions, padding=padding
            )
            sending_s = time.perf_counter() - started_s
            writer.flush(timeout_s=timeout_ms_of(args) / 1000 + 5)
            drain_deadline = time.monotonic() + E2E_DRAIN_TIMEOUT_S
            # Bound: E2E_DRAIN_TIMEOUT_S.
            while seen.count() < sent.acked and time.monotonic() < drain_deadline:
                if seen.errors:
                    break
                time.sleep(0.01)
        finally:
            seen.stop.set()
            for t in threads:
                t.join(timeout=READ_TIMEOUT_MS / 1000 + 2)
        elapsed_s = max(time.perf_counter() - started_s, 1e-9)
        stats = writer.stats()
        cpu = meter.stop(waiting=_CPU_WAITING)
    for reader in readers:
        reader.close()
    return _Measured(stats, warm, cpu, sending_s, elapsed_s, writer.config.pipeline_partial_batches)


async def _measure_async(args: argparse.Namespace, plan: _Plan) -> _Measured:
    """The `AsyncWriter` and an `AsyncReader` task per partition, on one event loop."""
    messages, rate, partitions, padding = plan.messages, plan.rate, plan.partitions, plan.padding
    sent, seen = plan.sent, plan.seen
    async with AsyncWriter(args.bootstrap, **_writer_options(args)) as writer:
        warm_up = _warm_up_messages(partitions)
        await (await writer.write_messages(*warm_up))
        warm = writer.stats()
        readers = []
        for p in range(partitions):  # as _open_readers
            reader = AsyncReader(
                brokers_of(args), args.topic, p, start_offset=LastOffset, max_wait_ms=FETCH_WAIT_MS
            )
            await reader.read_lag()
            readers.append(reader)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(_read_partition_async(r, seen.samples_s[r.partition], seen))
            for r in readers
        ]
        meter = CpuMeter()
        try:
            started_s = await _send_on_schedule_async(
                writer, sent, messages=messages, rate=rate, partitions=partitions, padding=padding
            )
            sending_s = time.perf_counter() - started_s
            await asyncio.wait_for(writer.flush(), timeout_ms_of(args) / 1000 + 5)
            drain_deadline = time.monotonic() + E2E_DRAIN_TIMEOUT_S
            # Bound: E2E_DRAIN_TIMEOUT_S.
            while seen.count() < sent.acked and time.monotonic() < drain_deadline:
                if seen.errors:
                    break
                await asyncio.sleep(0.01)
        finally:
            seen.stop.set()
            await asyncio.wait(tasks, timeout=READ_TIMEOUT_MS / 1000 + 2)
        elapsed_s = max(time.perf_counter() - started_s, 1e-9)
        stats = writer.stats()
        cpu = meter.stop(waiting=_CPU_WAITING)
    for reader in readers:
        await reader.close()
    return _Measured(stats, warm, cpu, sending_s, elapsed_s, writer.config.pipeline_partial_batches)


def run(args: argparse.Namespace) -> Result:
    messages, rate = e2e_plan(args)
    topic, created = ensure_topic(args)
    partitions = len(topic.partitions)
    padding = make_values(1, max(0, args.message_bytes - E2E_STAMP.size))[0]
    bar = ProgressBar("e2e", messages, "msgs", enabled=progress_wanted(args))
    sent = _Sent(bar)
    seen = _Seen(messages, [[] for _ in range(partitions)])
    plan = _Plan(messages, rate, partitions, padding, sent, seen)
    if args.client == "async":
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            measured = runner.run(_measure_async(args, plan))
    else:
        measured = _measure_sync(args, plan)
    stats, warm, cpu = measured.stats, measured.warm, measured.cpu
    sending_s, elapsed_s = measured.sending_s, measured.elapsed_s
    bar.close()
    e2e_s = [s for samples in seen.samples_s for s in samples]
    late = latency_summary_ms(sent.late_s, LATENCY_QUANTILES_FINE)
    errors = [e for e in (sent.first_error, *seen.errors) if e]
    if sent.failed and not errors:
        errors.append(f"{sent.failed} write(s) failed")
    if not errors and len(e2e_s) < sent.acked:
        errors.append(
            f"the Readers saw {len(e2e_s)} of {sent.acked} acknowledged messages within "
            f"{E2E_DRAIN_TIMEOUT_S:.0f} s of the last send"
        )
    if seen.duplicates:
        errors.append(f"the Readers saw {seen.duplicates} message(s) twice")
    cpu["limited_by"] = e2e_limited_by(
        cpu["limited_by"],
        late.get("p99_ms"),
        headline_latency_ms(e2e_s),
        headline_latency_ms(sent.produce_s),
    )
    return {
        "scenario": "e2e",
        "topic": args.topic,
        "topic_created": created,
        "partitions": partitions,
        "replication_factor": topic.replication_factor,
        "acks": "all",
        "message_bytes": max(args.message_bytes, E2E_STAMP.size),
        "rate_requested": rate,
        "rate_achieved": round(sent.issued / max(sending_s, 1e-9), 1),
        "messages_requested": messages,
        "messages": len(e2e_s),
        "acknowledged": sent.acked,
        "failed": sent.failed,
        "duplicates": seen.duplicates,
        # The Writer seals a batch at once (no linger) unless its partition has a batch in
        # flight (or, pipelining partial batches, a full window): more messages per batch
        # means the write path was busy.
        "pipeline_partial_batches": measured.pipeline_partial_batches,
        "client": args.client,
        "batches": stats.batches - warm.batches,
        "batch_messages_avg": round(
            (stats.messages - warm.messages) / max(1, stats.batches - warm.batches), 2
        ),
        "retries": stats.retries - warm.retries,
        **rates(len(e2e_s), sent.value_bytes, elapsed_s),
        "latency_ms": headline_latency_ms(e2e_s),
        "produce_latency_ms": headline_latency_ms(sent.produce_s),
        "end_to_end_latency": latency_summary_ms(e2e_s, LATENCY_QUANTILES_FINE),
        "produce_latency": latency_summary_ms(sent.produce_s, LATENCY_QUANTILES_FINE),
        "sender_late": late,
        "cpu": cpu,
        "error": errors[0] if errors else None,
    }


def render(result: Result) -> str:
    batches = (
        "pipelined"
        if result["pipeline_partial_batches"]
        else "one at a time per partition while not full"
    )
    readers = "an AsyncReader" if result["client"] == "async" else "a Reader"
    lines = [
        f"bench e2e: topic {result['topic']} ({result['partitions']} partitions, RF "
        f"{result['replication_factor']}), acks=all, {result['message_bytes']} B, "
        f"{result['rate_requested']:.0f} msgs/s requested ({result['rate_achieved']:.0f} "
        f"issued), one message per write call ({result['batch_messages_avg']:.2f} per "
        f"batch sent, {batches}), {readers} per partition; {result['messages']} of "
        f"{result['acknowledged']} acknowledged messages consumed",
        latency_table("PRODUCE->CONSUME", result["end_to_end_latency"], LATENCY_QUANTILES_FINE),
        latency_table("PRODUCE (ACK)", result["produce_latency"], LATENCY_QUANTILES_FINE),
        latency_table("SENDER LATE", result["sender_late"], LATENCY_QUANTILES_FINE),
        *footer_lines(result),
    ]
    return "\n".join(lines)
