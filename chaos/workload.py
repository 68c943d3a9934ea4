"""The chaos workload, on the client library: producers (`Writer`) and consumers (`Reader`)
that record every operation in a `History`, and the final read after heal.

- Producers: one idempotent `Writer` per history process ("producer-N"), acks=all, one
  message per send, values unique per run, a random partition per send; each producer's
  sends are sequential and rate-bounded. The Writer retries a send within
  `send_timeout_ms` and `send_attempts_max`, and the partition leader answers a retry of a
  batch it already appended with the original offset, so no value may appear twice in a
  log (the checker counts a duplicate as an error). Each send is one history op, completed
  - `ok` with the offset the Writer set on the message;
  - `fail` when the Writer's error is a definite "not written": any RaftmqError other than
    OutcomeUnknownError (`send_outcome`);
  - `info` when the outcome is unknown: OutcomeUnknownError, or no outcome at all within
    the Writer's deadline plus `SEND_OUTCOME_GRACE_S` (a backstop of the harness: the
    message stays in the Writer and may still be written).
- Consumers: one `Reader` per partition, each starting at offset 0 (there is no retention
  in a chaos run, so 0 is the earliest offset); they never seek. A consumer polls its
  partitions in turn; one poll op is what one Reader delivers within
  `consumer_max_wait_ms` (`poll`).
- `final_read`, after heal, reads every partition from its log start offset to its high
  watermark (asked once, at the start) as one more consumer, "final-reader".

Every call is bounded: a send by the Writer's deadline and the backstop above, a poll by
the Reader's per-call timeouts, the final read by its deadline; every thread stops on its
event within one operation's bound.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import structlog
from raftmq import (
    Conn,
    Message,
    OutcomeUnknownError,
    RaftmqError,
    Reader,
    RequireAll,
    WriteError,
    Writer,
    wire,
)
from raftmq.chaos.history import CompletionType, History, HistoryFullError, Read
from raftmq.chaos.nemesis import RunClock
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.client.producer_core import WriterStats
from raftmq.errors import ErrorCode
from raftmq.v1 import controller_pb2 as pb

_log = structlog.get_logger("raftmq.chaos")

# How long past its write deadline a send may stay unanswered before the producer records
# it as `info` and moves on. The Writer completes a send by itself: an in-flight produce
# ends at its gRPC deadline (the write deadline + 5 s), and before that the Writer's sender
# thread may sit in one producer-id or metadata call (10 s at most each).
SEND_OUTCOME_GRACE_S = 20.0
# Closing a Writer flushes what it still holds (a send left unanswered by the backstop
# above), bounded by its write timeout plus this, then joins its sender thread.
WRITER_CLOSE_MARGIN_S = 10.0
# A poll is at most one Reader step past its wait: a metadata request (5 s per bootstrap
# broker), a ListOffsets (10 s) or a fetch (its wait + 5 s).
POLL_S_MAX = 30.0
# Records in one poll op; the rest stay in the Reader's buffer for the next poll.
POLL_READS_MAX = 10_000
# After a poll the Reader failed: the Reader did not move, so do not spin on it.
POLL_BACKOFF_S = 0.5
FINAL_READ_POLLS_MAX = 100_000
# Looking up a partition's offsets at its leader for the final read (leadership may move).
OFFSETS_ATTEMPTS_MAX = 10
OFFSETS_TIMEOUT_MS = 5_000


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    topic: str = "chaos"
    partitions: int = 3
    replication_factor: int = 3
    min_insync_replicas: int = 2
    # Several producers, so that those stuck on a dead or paused leader (a send waits up to
    # its deadline) do not stop the others from showing when produce works again.
    producers: int = 6
    # Per producer; 6 x 30/s keeps the 2-core test machine far from saturation.
    producer_rate_per_s: float = 30.0
    consumers: int = 2
    # One send, all its attempts (the Writer's write_timeout_ms and max_attempts): then it
    # completes as fail or info.
    send_timeout_ms: int = 10_000
    send_attempts_max: int = 20
    # One attempt (the Writer's request_timeout_ms): a request stuck at a paused or cut-off
    # leader is given up after this and retried, so produce shows when it works again.
    attempt_timeout_ms: int = 2_000
    consumer_max_wait_ms: int = 100
    fetch_bytes_max: int = 256 << 10
    # Consumer groups (`raftmq.chaos.group_workload`): groups of members each, on the topic.
    groups: int = 2
    group_members: int = 3
    # As the cluster's broker session (ClusterTuning): a crashed member's partitions move
    # within seconds, and a fault longer than this evicts members that cannot heartbeat.
    group_session_timeout_ms: int = 3_000
    offsets_read_interval_ms: int = 250


def send_outcome(error: RaftmqError) -> tuple[CompletionType, str]:
    """How a send the Writer failed with `error` completes in the history, and the error
    name recorded: `info` ("maybe written", named after its cause) for OutcomeUnknownError,
    `fail` ("not written") for every other error. Pure."""
    if isinstance(error, WriteError):
        # One message per send: the failure is that message's own.
        error = error.errors[0][1]
    if isinstance(error, OutcomeUnknownError):
        cause = error.cause
        return "info", (cause.code if isinstance(cause, RaftmqError) else error.code).name
    return "fail", error.code.name


def create_topic(controller_endpoints: Sequence[str], config: WorkloadConfig) -> bytes:
    """Create the workload's topic (RF, partitions, min.insync.replicas, unclean election
    off) through the controller quorum; returns its topic id. Retried safely: one request id."""
    pool = EndpointPool(list(controller_endpoints), service="controller")
    request = pb.CreateTopicRequest(
        name=config.topic,
        partitions=config.partitions,
        replication_factor=config.replication_factor,
        configs={
            "min.insync.replicas": str(config.min_insync_replicas),
            "unclean.leader.election.enable": "false",
        },
        request_id=uuid.uuid4().hex,
    )
    try:
        response = call_with_failover(pool, "CreateTopic", request, timeout_ms=30_000)
        wire.raise_for(response.error)
        topic_id = bytes(response.topic.topic_id)
    finally:
        pool.close()
    assert len(topic_id) == 16, "CreateTopic returned no topic id"
    _log.info("topic.created", topic=config.topic, partitions=config.partitions)
    return topic_id


def _rotated(endpoints: Sequence[str], by: int) -> list[str]:
    # Each worker bootstraps from a different broker first, as real clients configured
    # independently would.
    shift = by % len(endpoints)
    return [*endpoints[shift:], *endpoints[:shift]]


class MessageWriter(Protocol):
    """What a producer needs of a `Writer` in async mode (tests pass a fake)."""

    def write_messages(self, *messages: Message) -> Future[list[Message]]: ...


class PartitionReader(Protocol):
    """What `poll` needs of a `Reader` (tests pass a fake)."""

    @property
    def topic(self) -> str: ...

    def read_message(self, timeout_ms: int | None = None) -> Message: ...


def _read(message: Message) -> Read:
    assert message.partition is not None, "a Reader sets the partition of what it reads"
    value = b"" if message.value is None else message.value
    return (message.partition, message.offset, value.decode("utf-8", "replace"))


def poll(
    reader: PartitionReader,
    history: History,
    *,
    clock: RunClock,
    process: str,
    wait_ms: int,
) -> CompletionType:
    """One recorded poll of `reader`'s partition, by consumer `process`. `ok` with what the
    Reader delivers within `wait_ms` (its first message, then what its fetches buffered,
    at most `POLL_READS_MAX`), or with nothing when nothing came in time; `fail` when the
    Reader raised an error (its position did not move). Returns the outcome."""
    invoke = history.invoke_poll(process, reader.topic, time_ms=clock.now_ms())
    try:
        first = reader.read_message(timeout_ms=wait_ms)
    except TimeoutError:
        history.complete(invoke, "ok", time_ms=clock.now_ms())
        return "ok"
    except RaftmqError as exc:
        history.complete(invoke, "fail", time_ms=clock.now_ms(), error=exc.code.name)
        return "fail"
    reads = [_read(first)]
    # With no time left the Reader only hands out what it has buffered, without a request.
    # An error here cannot lose a read: the position stays after the last message handed
    # out, and the next poll meets (and records) the error again.
    with contextlib.suppress(TimeoutError, RaftmqError):
        while len(reads) < POLL_READS_MAX:
            reads.append(_read(reader.read_message(timeout_ms=0)))
    history.complete(invoke, "ok", time_ms=clock.now_ms(), reads=reads)
    return "ok"


class _Worker(threading.Thread):
    """One client process of the history ("producer-N", "consumer-N"): a daemon thread
    running `_work` until `stopping` is set or the history is full. `_work` opens and
    closes its own clients. An unexpected exception is kept in `error` (a harness or client
    bug: the run must not pass with a dead worker)."""

    def __init__(
        self,
        role: str,
        index: int,
        *,
        bootstrap: Sequence[str],
        history: History,
        clock: RunClock,
        config: WorkloadConfig,
        stopping: threading.Event,
    ) -> None:
        super().__init__(name=f"chaos-{role}-{index}", daemon=True)
        self.process_name = f"{role}-{index}"
        self.bootstrap = list(bootstrap)
        self.history = history
        self.clock = clock
        self.config = config
        self.stopping = stopping
        # Set when the thread died of an unexpected exception (read after join).
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._work()
        except HistoryFullError:
            _log.warning("worker.stopped", process=self.process_name, reason="history full")
        except Exception as exc:
            self.error = f"{self.process_name}: {type(exc).__name__}: {exc}"
            _log.exception("worker.crashed", process=self.process_name)

    def _work(self) -> None:
        raise NotImplementedError


class Producer(_Worker):
    """Sequential sends through one idempotent Writer, a random partition per send, at a
    bounded rate."""

    def __init__(
        self,
        index: int,
        *,
        bootstrap: Sequence[str],
        history: History,
        clock: RunClock,
        config: WorkloadConfig,
        seed: int,
        stopping: threading.Event,
    ) -> None:
        super().__init__(
            "producer",
            index,
            bootstrap=_rotated(bootstrap, index),
            history=history,
            clock=clock,
            config=config,
            stopping=stopping,
        )
        self.rng = random.Random(f"{seed}-producer-{index}")
        self.sent = 0
        # The Writer's counters when it was closed (read after join): how many batches it
        # resent shows how much the run exercised idempotence.
        self.writer_stats: WriterStats | None = None

    def _work(self) -> None:
        interval_s = 1.0 / self.config.producer_rate_per_s
        next_s = time.monotonic()
        # async_: this thread waits for each outcome itself, bounded (see `_write`);
        # linger_ms=0: a send is its own batch, sent at once.
        with Writer(
            self.bootstrap,
            topic=self.config.topic,
            required_acks=RequireAll,
            idempotent=True,
            linger_ms=0,
            max_attempts=self.config.send_attempts_max,
            write_timeout_ms=self.config.send_timeout_ms,
            request_timeout_ms=self.config.attempt_timeout_ms,
            async_=True,
        ) as writer:
            try:
                # Bound: until `stopping`; each iteration is one send with a deadline.
                while not self.stopping.is_set():
                    delay_s = next_s - time.monotonic()
                    if delay_s > 0 and self.stopping.wait(delay_s):
                        break
                    # No catch-up bursts after a slow send: the rate is an upper bound.
                    next_s = max(next_s + interval_s, time.monotonic())
                    self._send_one(writer)
            finally:
                self.writer_stats = writer.stats()

    def _send_one(self, writer: MessageWriter) -> None:
        partition = self.rng.randrange(self.config.partitions)
        value = f"{self.process_name}-{self.sent}"
        self.sent += 1
        message = Message(value, partition=partition)
        invoke = self.history.invoke_send(
            self.process_name,
            self.config.topic,
            value,
            partition=partition,
            time_ms=self.clock.now_ms(),
        )
        try:
            outcome, error = self._write(writer, message)
        except Exception:
            # A client bug: the outcome is unknown; the worker dies and the run says so.
            self.history.complete(invoke, "info", time_ms=self.clock.now_ms())
            raise
        self.history.complete(
            invoke,
            outcome,
            time_ms=self.clock.now_ms(),
            partition=partition,
            offset=message.offset if outcome == "ok" else -1,
            error=error,
        )

    def _write(self, writer: MessageWriter, message: Message) -> tuple[CompletionType, str]:
        """Hand `message` to the Writer and wait (bounded) for its outcome: (outcome, error
        code name or "")."""
        future = writer.write_messages(message)
        try:
            future.result(timeout=self.config.send_timeout_ms / 1000 + SEND_OUTCOME_GRACE_S)
        except TimeoutError:
            _log.warning("producer.send_unanswered", process=self.process_name)
            return "info", ErrorCode.REQUEST_TIMED_OUT.name
        except RaftmqError as exc:
            return send_outcome(exc)
        return "ok", ""


class Consumer(_Worker):
    """One Reader per partition, from offset 0; polls them in turn."""

    def __init__(
        self,
        index: int,
        *,
        bootstrap: Sequence[str],
        history: History,
        clock: RunClock,
        config: WorkloadConfig,
        stopping: threading.Event,
    ) -> None:
        super().__init__(
            "consumer",
            index,
            bootstrap=_rotated(bootstrap, index + 1),
            history=history,
            clock=clock,
            config=config,
            stopping=stopping,
        )

    def _work(self) -> None:
        config = self.config
        with contextlib.ExitStack() as readers_open:
            readers = [
                readers_open.enter_context(
                    Reader(
                        self.bootstrap,
                        config.topic,
                        partition,
                        start_offset=0,
                        max_bytes=config.fetch_bytes_max,
                        max_wait_ms=config.consumer_max_wait_ms,
                    )
                )
                for partition in range(config.partitions)
            ]
            # Bound: until `stopping`; each poll is bounded (`POLL_S_MAX`).
            while not self.stopping.is_set():
                for reader in readers:
                    if self.stopping.is_set():
                        break
                    outcome = poll(
                        reader,
                        self.history,
                        clock=self.clock,
                        process=self.process_name,
                        wait_ms=config.consumer_max_wait_ms,
                    )
                    if outcome != "ok":
                        self.stopping.wait(POLL_BACKOFF_S)


class Workload:
    """The producer and consumer threads of one run."""

    def __init__(
        self,
        *,
        bootstrap: Sequence[str],
        history: History,
        clock: RunClock,
        config: WorkloadConfig,
        seed: int,
    ) -> None:
        self.config = config
        self.producers_stopping = threading.Event()
        self.consumers_stopping = threading.Event()
        self.producers = [
            Producer(
                i,
                bootstrap=bootstrap,
                history=history,
                clock=clock,
                config=config,
                seed=seed,
                stopping=self.producers_stopping,
            )
            for i in range(config.producers)
        ]
        self.consumers = [
            Consumer(
                i,
                bootstrap=bootstrap,
                history=history,
                clock=clock,
                config=config,
                stopping=self.consumers_stopping,
            )
            for i in range(config.consumers)
        ]

    def start(self) -> None:
        for thread in [*self.producers, *self.consumers]:
            thread.start()

    def stop_producers(self) -> bool:
        """Stop and join the producers; False if one did not finish in time (its last send
        stays pending in the history, which the checker treats as indeterminate)."""
        self.producers_stopping.set()
        send_timeout_s = self.config.send_timeout_ms / 1000
        send_s_max = send_timeout_s + SEND_OUTCOME_GRACE_S
        return _join_all(self.producers, send_s_max + send_timeout_s + WRITER_CLOSE_MARGIN_S)

    def stop_consumers(self) -> bool:
        self.consumers_stopping.set()
        return _join_all(self.consumers, POLL_S_MAX)

    def stop(self) -> None:
        self.stop_producers()
        self.stop_consumers()

    def writer_totals(self) -> dict[str, int]:
        """The producers' Writer counters summed (after `stop_producers`): batches written,
        attempts resent after a failed one, messages failed."""
        stats = [p.writer_stats for p in self.producers if p.writer_stats is not None]
        return {
            "writers": len(stats),
            "batches": sum(s.batches for s in stats),
            "retries": sum(s.retries for s in stats),
            "errors": sum(s.errors for s in stats),
        }

    def worker_errors(self) -> list[str]:
        """The producers and consumers that died of an unexpected exception."""
        errors = [p.error for p in self.producers] + [c.error for c in self.consumers]
        return [error for error in errors if error is not None]


def _join_all(threads: Sequence[threading.Thread], timeout_s: float) -> bool:
    deadline_s = time.monotonic() + timeout_s
    for thread in threads:
        if thread.is_alive():
            thread.join(max(0.0, deadline_s - time.monotonic()))
    return not any(t.is_alive() for t in threads)


@dataclass(frozen=True, slots=True)
class FinalRead:
    """What the final read reached: `complete` when every partition was read from its
    earliest offset up to its high watermark."""

    complete: bool
    high_watermarks: dict[int, int]
    positions: dict[int, int]
    problems: tuple[str, ...]


def log_offsets(
    bootstrap: Sequence[str], topic: str, partition: int, *, deadline_s: float
) -> tuple[int, int]:
    """(log start offset, high watermark) of a partition, asked of its leader; retried
    while leadership moves (bounded in attempts and by `deadline_s`, monotonic)."""
    for attempt in range(1, OFFSETS_ATTEMPTS_MAX + 1):
        try:
            with Conn.dial_leader(
                bootstrap, topic, partition, timeout_ms=OFFSETS_TIMEOUT_MS
            ) as conn:
                return conn.read_offsets()
        except RaftmqError as exc:
            out_of_time = time.monotonic() + POLL_BACKOFF_S >= deadline_s
            if not exc.retriable or attempt == OFFSETS_ATTEMPTS_MAX or out_of_time:
                raise
            _log.info("final_read.offsets_retried", partition=partition, error=str(exc))
            time.sleep(POLL_BACKOFF_S)
    raise AssertionError("unreachable: the last attempt returns or raises")


def final_read(
    bootstrap: Sequence[str],
    history: History,
    clock: RunClock,
    config: WorkloadConfig,
    *,
    timeout_s: float,
) -> FinalRead:
    """Read every partition from its earliest offset to its high watermark (asked once per
    partition, after heal) with a Reader, as the history process "final-reader"."""
    deadline_s = time.monotonic() + timeout_s
    process = "final-reader"
    problems: list[str] = []
    high_watermarks: dict[int, int] = {}
    positions: dict[int, int] = {}
    for partition in range(config.partitions):
        try:
            start, high_watermark = log_offsets(
                bootstrap, config.topic, partition, deadline_s=deadline_s
            )
        except RaftmqError as exc:
            problems.append(f"partition {partition}: list offsets failed: {exc}")
            continue
        high_watermarks[partition] = high_watermark
        positions[partition] = start
        if start != 0:
            problems.append(f"partition {partition}: earliest offset is {start}, not 0")
        with Reader(
            list(bootstrap),
            config.topic,
            partition,
            start_offset=start,
            max_bytes=config.fetch_bytes_max,
            max_wait_ms=config.consumer_max_wait_ms,
        ) as reader:
            # Bound: FINAL_READ_POLLS_MAX polls and the deadline.
            for _ in range(FINAL_READ_POLLS_MAX):
                if reader.offset >= high_watermark:
                    break
                if time.monotonic() >= deadline_s:
                    problems.append(f"partition {partition}: final read timed out")
                    break
                outcome = poll(
                    reader,
                    history,
                    clock=clock,
                    process=process,
                    wait_ms=config.consumer_max_wait_ms,
                )
                if outcome != "ok":
                    time.sleep(POLL_BACKOFF_S)
            positions[partition] = reader.offset
    complete = not problems and all(
        positions.get(p, -1) >= high_watermarks.get(p, 0) for p in range(config.partitions)
    )
    return FinalRead(complete, high_watermarks, positions, tuple(problems))
