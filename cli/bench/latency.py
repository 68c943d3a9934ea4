"""`raftmq bench latency`: one message in flight, through the library.

A `Writer` in sync mode sends one message per `write_messages` call to partition 0 and
waits for it (acks as `--acks`; acks=all is the default): the produce latency is that
call's duration. A `Reader` on partition 0, on a thread of the same process, reads every
message from where the measured ones start; the produce-to-consume latency is from just
before the call to when `read_message` returned it (the send time travels in the value,
so both ends read one clock). After `LATENCY_WARMUP_MESSAGES` unmeasured messages (topic
metadata, producer id, connections). `--client async`: an `AsyncWriter` (each call
awaited) and an `AsyncReader` task, on one event loop (uvloop's, as the brokers').
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raftmq.broker.broker import event_loop_factory
from raftmq.client.async_reader import AsyncReader
from raftmq.client.async_writer import AsyncWriter
from raftmq.client.reader import LastOffset, Reader
from raftmq.client.writer import RequireAll, WriteError, Writer
from raftmq.errors import RaftmqError
from raftmq.message import Message

from .common import (
    ACKS_BY_NAME,
    LATENCY_QUANTILES_FINE,
    RUN_DURATION_S_MAX,
    CpuMeter,
    Result,
    brokers_of,
    check_workload,
    ensure_topic,
    footer_lines,
    headline_latency_ms,
    latency_summary_ms,
    latency_table,
    make_values,
    produce_waiting,
    timeout_ms_of,
)
from .progress import ProgressBar, progress_wanted

# One call per message: a bound keeps a latency run to a minute or two.
LATENCY_MESSAGES_MAX = 100_000
LATENCY_WARMUP_MESSAGES = 50
# Value layout: int64 perf_counter_ns at send | 1 byte kind | padding.
VALUE_STAMP = struct.Struct(">qB")
KIND_WARMUP = 0
KIND_MEASURED = 1
# After the last send, the Reader gets this long to see the remaining messages.
LATENCY_DRAIN_TIMEOUT_S = 10.0
FETCH_WAIT_MS = 500


def stamped_value(sent_ns: int, kind: int, padding: bytes) -> bytes:
    """A latency value: the send time (perf_counter_ns), its kind, then padding."""
    return VALUE_STAMP.pack(sent_ns, kind) + padding


def read_stamp(value: bytes | None) -> tuple[int, int] | None:
    """(sent_ns, kind) of a latency value, or None for any other value."""
    if value is None or len(value) < VALUE_STAMP.size:
        return None
    sent_ns, kind = VALUE_STAMP.unpack_from(value)
    return int(sent_ns), int(kind)


def _record(message: Message, received_ns: int, samples_s: list[float]) -> None:
    """A message the Reader returned at `received_ns` (perf_counter_ns): a sample if it
    is a measured one."""
    stamp = read_stamp(message.value)
    if stamp is not None and stamp[1] == KIND_MEASURED:
        samples_s.append((received_ns - stamp[0]) / 1e9)


@dataclass
class _EndToEnd:
    """The Reader thread. `samples_s` and `errors` are appended by that thread only and
    read by the main thread after join()."""

    reader: Reader
    expected: int
    stop: threading.Event = field(default_factory=threading.Event)
    samples_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        # Bound: `expected` messages, or until the main thread stops it.
        while len(self.samples_s) < self.expected and not self.stop.is_set():
            try:
                message = self.reader.read_message(timeout_ms=FETCH_WAIT_MS)
            except TimeoutError:
                continue
            except RaftmqError as e:  # reported with the figures, not lost in a thread
                self.errors.append(f"reader: {e}")
                return
            _record(message, time.perf_counter_ns(), self.samples_s)


def _open_reader(args: argparse.Namespace) -> Reader:
    """A Reader of partition 0 from its end (after the warm-up), with its metadata,
    position and leader connection ready (read_lag asks the leader)."""
    reader = Reader(
        brokers_of(args), args.topic, 0, start_offset=LastOffset, max_wait_ms=FETCH_WAIT_MS
    )
    reader.read_lag()
    return reader


def _send_one_at_a_time(
    send: Callable[[int], None], count: int, bar: ProgressBar
) -> tuple[list[float], list[str]]:
    """`count` measured sends, each waited for: (their durations in s, errors)."""
    produce_s: list[float] = []
    deadline = time.monotonic() + RUN_DURATION_S_MAX
    for _ in range(count):
        if time.monotonic() >= deadline:
            return produce_s, [f"stopped after {RUN_DURATION_S_MAX:.0f} s"]
        sent_s = time.perf_counter()
        try:
            send(KIND_MEASURED)
        except WriteError as e:
            return produce_s, [f"writer: {e}"]
        produce_s.append(time.perf_counter() - sent_s)
        bar.advance()
    return produce_s, []


@dataclass(frozen=True, slots=True)
class _Measured:
    produce_s: list[float]
    e2e_s: list[float]
    errors: list[str]
    cpu: Result
    elapsed_s: float


def _waiting(acks: int) -> str:
    return produce_waiting(acks) + ", the Reader's long poll"


def _measure_sync(args: argparse.Namespace, count: int, padding: bytes) -> _Measured:
    """The sync Writer, its Reader on a thread."""
    acks = ACKS_BY_NAME[args.acks]
    bar = ProgressBar("latency", count, "msgs", enabled=progress_wanted(args))
    with Writer(args.bootstrap, **_writer_options(args)) as writer:

        def send(kind: int) -> None:
            value = stamped_value(time.perf_counter_ns(), kind, padding)
            writer.write_messages(Message(value, partition=0))

        for _ in range(LATENCY_WARMUP_MESSAGES):
            send(KIND_WARMUP)
        end_to_end = _EndToEnd(_open_reader(args), count)
        thread = threading.Thread(target=end_to_end.run, name="bench-latency-reader", daemon=True)
        meter = CpuMeter()
        started_s = time.perf_counter()
        thread.start()
        try:
            produce_s, errors = _send_one_at_a_time(send, count, bar)
            thread.join(timeout=LATENCY_DRAIN_TIMEOUT_S)
        finally:
            end_to_end.stop.set()
        elapsed_s = max(time.perf_counter() - started_s, 1e-9)
        cpu = meter.stop(waiting=_waiting(acks))
        bar.close()
        thread.join(timeout=FETCH_WAIT_MS / 1000 + 1)
    end_to_end.reader.close()
    return _Measured(produce_s, end_to_end.samples_s, errors + end_to_end.errors, cpu, elapsed_s)


async def _read_async(
    reader: AsyncReader, expected: int, stop: asyncio.Event, samples_s: list[float]
) -> list[str]:
    """As `_EndToEnd.run`, on the event loop; returns its errors."""
    # Bound: `expected` messages, or until `stop`.
    while len(samples_s) < expected and not stop.is_set():
        try:
            message = await reader.read_message(timeout_ms=FETCH_WAIT_MS)
        except TimeoutError:
            continue
        except RaftmqError as e:
            return [f"reader: {e}"]
        _record(message, time.perf_counter_ns(), samples_s)
    return []


async def _measure_async(args: argparse.Namespace, count: int, padding: bytes) -> _Measured:
    """The AsyncWriter (each call awaited), its AsyncReader a task on the same loop."""
    acks = ACKS_BY_NAME[args.acks]
    bar = ProgressBar("latency", count, "msgs", enabled=progress_wanted(args))
    async with AsyncWriter(args.bootstrap, **_writer_options(args)) as writer:

        async def send(kind: int) -> None:
            value = stamped_value(time.perf_counter_ns(), kind, padding)
            await writer.write_messages(Message(value, partition=0))

        for _ in range(LATENCY_WARMUP_MESSAGES):
            await send(KIND_WARMUP)
        reader = AsyncReader(
            brokers_of(args), args.topic, 0, start_offset=LastOffset, max_wait_ms=FETCH_WAIT_MS
        )
        await reader.read_lag()  # as _open_reader
        stop = asyncio.Event()
        e2e_s: list[float] = []
        meter = CpuMeter()
        started_s = time.perf_counter()
        reading = asyncio.get_running_loop().create_task(_read_async(reader, count, stop, e2e_s))
        produce_s: list[float] = []
        errors: list[str] = []
        deadline = time.monotonic() + RUN_DURATION_S_MAX
        try:
            for _ in range(count):  # as _send_one_at_a_time
                if time.monotonic() >= deadline:
                    errors.append(f"stopped after {RUN_DURATION_S_MAX:.0f} s")
                    break
                sent_s = time.perf_counter()
                try:
                    await send(KIND_MEASURED)
                except WriteError as e:
                    errors.append(f"writer: {e}")
                    break
                produce_s.append(time.perf_counter() - sent_s)
                bar.advance()
            await asyncio.wait({reading}, timeout=LATENCY_DRAIN_TIMEOUT_S)
        finally:
            stop.set()
        elapsed_s = max(time.perf_counter() - started_s, 1e-9)
        cpu = meter.stop(waiting=_waiting(acks))
        bar.close()
        # As the sync Reader thread's join: a read that does not end in time is dropped.
        done, _ = await asyncio.wait({reading}, timeout=FETCH_WAIT_MS / 1000 + 1)
        if reading in done:
            errors += reading.result()
        else:
            reading.cancel()
    await reader.close()
    return _Measured(produce_s, e2e_s, errors, cpu, elapsed_s)


def _writer_options(args: argparse.Namespace) -> dict[str, Any]:
    acks = ACKS_BY_NAME[args.acks]
    return {
        "topic": args.topic,
        "required_acks": acks,
        "idempotent": acks == RequireAll,
        "write_timeout_ms": timeout_ms_of(args),
    }


def run(args: argparse.Namespace) -> Result:
    check_workload(args)
    count = min(args.messages, LATENCY_MESSAGES_MAX)
    padding = make_values(1, max(0, args.message_bytes - VALUE_STAMP.size))[0]
    topic, created = ensure_topic(args)
    if args.client == "async":
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            measured = runner.run(_measure_async(args, count, padding))
    else:
        measured = _measure_sync(args, count, padding)
    produce_s, e2e_s, errors = measured.produce_s, measured.e2e_s, list(measured.errors)
    cpu, elapsed_s = measured.cpu, measured.elapsed_s
    if not errors and len(e2e_s) < len(produce_s):
        errors.append(
            f"the Reader saw {len(e2e_s)} of {len(produce_s)} messages within "
            f"{LATENCY_DRAIN_TIMEOUT_S:.0f} s of the last send"
        )
    return {
        "scenario": "latency",
        "topic": args.topic,
        "topic_created": created,
        "partition": 0,
        "replication_factor": topic.replication_factor,
        "acks": args.acks,
        "client": args.client,
        "message_bytes": max(args.message_bytes, VALUE_STAMP.size),
        "messages_requested": args.messages,
        "messages": len(produce_s),
        "messages_max": LATENCY_MESSAGES_MAX,
        "elapsed_s": round(elapsed_s, 3),
        "latency_ms": headline_latency_ms(produce_s),
        "end_to_end_latency_ms": headline_latency_ms(e2e_s),
        "produce_latency": latency_summary_ms(produce_s, LATENCY_QUANTILES_FINE),
        "end_to_end_latency": latency_summary_ms(e2e_s, LATENCY_QUANTILES_FINE),
        "cpu": cpu,
        "error": errors[0] if errors else None,
    }


def render(result: Result) -> str:
    capped = (
        f" (capped at {result['messages_max']})"
        if result["messages_requested"] > result["messages_max"]
        else ""
    )
    call = (
        "awaited AsyncWriter.write_messages"
        if result["client"] == "async"
        else "sync write_messages"
    )
    lines = [
        f"bench latency: topic {result['topic']}-0 (RF {result['replication_factor']}), "
        f"acks={result['acks']}, {result['message_bytes']} B, one message per {call} call, "
        f"{result['messages']} messages{capped}",
        latency_table("PRODUCE", result["produce_latency"], LATENCY_QUANTILES_FINE),
        latency_table("PRODUCE->CONSUME", result["end_to_end_latency"], LATENCY_QUANTILES_FINE),
        *footer_lines(result),
    ]
    return "\n".join(lines)
