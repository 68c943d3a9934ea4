"""The chaos workload: producers and consumers that record every operation in a `History`,
and the final read after heal.

- Producers (acks=all, one message per send, values unique per run) retry a send until it
  is acknowledged, its deadline passes or an error says retrying is pointless. Each send is
  one history op; its completion is
  - `ok` with the acknowledged offset;
  - `fail` only when *every* attempt definitely appended nothing: it never left the client,
    or the broker answered with a code documented as "nothing was appended"
    (`NOTHING_APPENDED_CODES`);
  - `info` otherwise (a timeout, a transport error, NOT_LEADER after the append, ...): the
    message may or may not be in the log.
- Consumers poll every partition in turn from offset 0, one poll op per fetch, recording the
  records at or after their position; they never seek (no retention in a chaos run, so
  offset 0 is the earliest).
- `final_read`, after heal, reads every partition from its earliest offset to its high
  watermark as one more consumer.

Rates are bounded (`producer_rate_per_s` per producer), every call has a deadline, and every
thread stops on its event within one operation's deadline.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from raftmq import wire
from raftmq.chaos.history import CompletionType, History, HistoryFullError, Read
from raftmq.chaos.nemesis import RunClock
from raftmq.client.cluster_client import ClusterClient
from raftmq.client.connection import ACKS_ALL
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import decode_batch, encode_batch, iter_batches
from raftmq.v1 import controller_pb2 as pb

_log = structlog.get_logger("raftmq.chaos")

# Codes whose documentation (proto/raftmq/v1/common.proto, ErrorCode) says the broker
# refused the batch before appending it, or that name a request the broker rejects as a
# whole before touching any log. NOT_LEADER_OR_FOLLOWER is *not* here: the broker also
# returns it when leadership moved after the append (the write may survive).
NOTHING_APPENDED_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.CORRUPT_MESSAGE,
        ErrorCode.INVALID_REQUIRED_ACKS,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
    }
)

SEND_ATTEMPTS_MAX = 20
RETRY_BACKOFF_MS = 50
RETRY_BACKOFF_MS_MAX = 800
# Each process's error strings are kept short in the history: the code name only.
FINAL_READ_POLLS_MAX = 100_000


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    topic: str = "chaos"
    partitions: int = 3
    replication_factor: int = 3
    min_insync_replicas: int = 2
    # Several producers, so that those stuck on a dead or paused leader (a send waits up to
    # its RPC deadline) do not stop the others from showing when produce works again.
    producers: int = 6
    # Per producer; 6 x 30/s keeps the 2-core test machine far from saturation.
    producer_rate_per_s: float = 30.0
    consumers: int = 2
    # One send, all its attempts: after this it completes as fail or info.
    send_timeout_ms: int = 10_000
    # How long the broker waits for acks=all within one attempt (the client's RPC deadline
    # adds its own margin to this).
    attempt_timeout_ms: int = 2_000
    consumer_max_wait_ms: int = 100
    consumer_request_timeout_ms: int = 3_000
    fetch_bytes_max: int = 256 << 10


def send_attempt_outcome(code: ErrorCode | None, *, sent: bool) -> CompletionType:
    """What one failed attempt says about the message: `fail` if it certainly appended
    nothing (never sent, or a nothing-appended code), else `info`. Pure."""
    if not sent:
        return "fail"
    if code is not None and code in NOTHING_APPENDED_CODES:
        return "fail"
    return "info"


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


def _reads(records_bytes: bytes, partition: int, position: int) -> list[Read]:
    """Records at or after `position` in a fetch response, as history reads."""
    reads: list[Read] = []
    for _header, batch in iter_batches(records_bytes):
        for record in decode_batch(batch):
            if record.offset >= position:
                value = b"" if record.value is None else record.value
                reads.append((partition, record.offset, value.decode("utf-8", "replace")))
    return reads


class _Worker(threading.Thread):
    """One client process of the history ("producer-N", "consumer-N"): a daemon thread
    running `_work` until `stopping` is set or the history is full. An unexpected
    exception is kept in `error` (a harness bug: the run must not pass with a dead worker)."""

    def __init__(
        self,
        role: str,
        index: int,
        *,
        history: History,
        clock: RunClock,
        config: WorkloadConfig,
        stopping: threading.Event,
        client: ClusterClient,
    ) -> None:
        super().__init__(name=f"chaos-{role}-{index}", daemon=True)
        self.process_name = f"{role}-{index}"
        self.history = history
        self.clock = clock
        self.config = config
        self.stopping = stopping
        self.client = client
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
        finally:
            self.client.close()

    def _work(self) -> None:
        raise NotImplementedError


class Producer(_Worker):
    """Sequential sends, a random partition per send, at a bounded rate."""

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
        # retries_max=1: this class retries itself, to see every attempt's outcome.
        client = ClusterClient(
            _rotated(bootstrap, index), request_timeout_ms=config.send_timeout_ms, retries_max=1
        )
        super().__init__(
            "producer",
            index,
            history=history,
            clock=clock,
            config=config,
            stopping=stopping,
            client=client,
        )
        self.rng = random.Random(f"{seed}-producer-{index}")
        self.sent = 0

    def _work(self) -> None:
        interval_s = 1.0 / self.config.producer_rate_per_s
        next_s = time.monotonic()
        # Bound: until `stopping`; each iteration is one send with a deadline.
        while not self.stopping.is_set():
            delay_s = next_s - time.monotonic()
            if delay_s > 0 and self.stopping.wait(delay_s):
                break
            # No catch-up bursts after a slow send: the rate is an upper bound.
            next_s = max(next_s + interval_s, time.monotonic())
            self._send_one()

    def _send_one(self) -> None:
        partition = self.rng.randrange(self.config.partitions)
        value = f"{self.process_name}-{self.sent}"
        self.sent += 1
        batch = encode_batch([Message(value.encode())])
        invoke = self.history.invoke_send(
            self.process_name,
            self.config.topic,
            value,
            partition=partition,
            time_ms=self.clock.now_ms(),
        )
        outcome, offset, error = self._send(partition, batch)
        self.history.complete(
            invoke,
            outcome,
            time_ms=self.clock.now_ms(),
            partition=partition,
            offset=offset if outcome == "ok" else -1,
            error=error,
        )

    def _send(self, partition: int, batch: bytes) -> tuple[CompletionType, int, str]:
        """Attempts until acknowledged or hopeless: (outcome, offset, last error name)."""
        topic = self.config.topic
        deadline_s = time.monotonic() + self.config.send_timeout_ms / 1000
        outcome: CompletionType = "fail"
        error = ""
        for attempt in range(SEND_ATTEMPTS_MAX):
            if attempt:
                backoff_ms = min(RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS * 2 ** min(attempt, 5))
                remaining_s = deadline_s - time.monotonic()
                if remaining_s <= backoff_ms / 1000:
                    break
                time.sleep(backoff_ms / 1000)
                # A failed refresh is fine: the next attempt reports what is wrong.
                with contextlib.suppress(RaftmqError):
                    self.client.refresh_metadata()
            remaining_ms = int((deadline_s - time.monotonic()) * 1000)
            if remaining_ms < 100:
                break
            try:
                endpoint = self.client.leader_endpoint(topic, partition)
            except RaftmqError as exc:
                error = exc.code.name  # never sent: outcome unchanged
                continue
            try:
                [result] = self.client.connection(endpoint).produce(
                    [(topic, partition, batch)],
                    acks=ACKS_ALL,
                    timeout_ms=min(remaining_ms, self.config.attempt_timeout_ms),
                )
            except RaftmqError as exc:
                error = exc.code.name
                outcome = "info"  # a transport failure may hide a completed append
                continue
            if result.error is None:
                return "ok", result.base_offset, ""
            code = result.error.code
            error = code.name
            if send_attempt_outcome(code, sent=True) == "info":
                outcome = "info"
            if not code.retriable:
                break
        return outcome, -1, error


class Consumer(_Worker):
    """Polls every partition in turn, from offset 0."""

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
        client = ClusterClient(
            _rotated(bootstrap, index + 1),
            request_timeout_ms=config.consumer_request_timeout_ms,
            retries_max=3,
        )
        super().__init__(
            "consumer",
            index,
            history=history,
            clock=clock,
            config=config,
            stopping=stopping,
            client=client,
        )
        self.positions = dict.fromkeys(range(config.partitions), 0)

    def _work(self) -> None:
        # Bound: until `stopping`; each poll has a deadline.
        while not self.stopping.is_set():
            for partition in range(self.config.partitions):
                if self.stopping.is_set():
                    break
                poll(
                    self.client,
                    self.history,
                    clock=self.clock,
                    process=self.process_name,
                    config=self.config,
                    partition=partition,
                    positions=self.positions,
                )


def poll(
    client: ClusterClient,
    history: History,
    *,
    clock: RunClock,
    process: str,
    config: WorkloadConfig,
    partition: int,
    positions: dict[int, int],
) -> int:
    """One recorded fetch of `partition` at `positions[partition]`; advances the position
    past what was read. Returns the high watermark the leader reported (-1 on error)."""
    position = positions[partition]
    invoke = history.invoke_poll(process, config.topic, time_ms=clock.now_ms())
    try:
        result = client.fetch(
            config.topic,
            partition,
            position,
            max_wait_ms=config.consumer_max_wait_ms,
            max_bytes=config.fetch_bytes_max,
        )
    except RaftmqError as exc:
        history.complete(invoke, "info", time_ms=clock.now_ms(), error=exc.code.name)
        return -1
    if result.error is not None:
        history.complete(invoke, "fail", time_ms=clock.now_ms(), error=result.error.code.name)
        return -1
    try:
        reads = _reads(result.records, partition, position)
    except RaftmqError as exc:
        # A corrupt fetch response: nothing is recorded as read.
        history.complete(invoke, "fail", time_ms=clock.now_ms(), error=exc.code.name)
        return -1
    history.complete(invoke, "ok", time_ms=clock.now_ms(), reads=reads)
    if reads:
        positions[partition] = reads[-1][1] + 1
    return result.high_watermark


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
        return _join_all(self.producers, self.config.send_timeout_ms / 1000 + 15)

    def stop_consumers(self) -> bool:
        self.consumers_stopping.set()
        return _join_all(self.consumers, self.config.consumer_request_timeout_ms / 1000 + 15)

    def stop(self) -> None:
        self.stop_producers()
        self.stop_consumers()

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


def final_read(
    bootstrap: Sequence[str],
    history: History,
    clock: RunClock,
    config: WorkloadConfig,
    *,
    timeout_s: float,
) -> FinalRead:
    """Read every partition from its earliest offset to its high watermark (taken once at
    the start, after heal) as the history process "final-reader"."""
    deadline_s = time.monotonic() + timeout_s
    process = "final-reader"
    problems: list[str] = []
    high_watermarks: dict[int, int] = {}
    positions: dict[int, int] = {}
    with ClusterClient(list(bootstrap), request_timeout_ms=5_000, retries_max=10) as client:
        for partition in range(config.partitions):
            try:
                high_watermarks[partition] = client.list_offset(config.topic, partition, -1)
                positions[partition] = client.list_offset(config.topic, partition, -2)
            except RaftmqError as exc:
                problems.append(f"partition {partition}: list offsets failed: {exc}")
                continue
            if positions[partition] != 0:
                problems.append(
                    f"partition {partition}: earliest offset is {positions[partition]}, not 0"
                )
            # Bound: FINAL_READ_POLLS_MAX polls and the deadline.
            for _ in range(FINAL_READ_POLLS_MAX):
                if positions[partition] >= high_watermarks[partition]:
                    break
                if time.monotonic() >= deadline_s:
                    problems.append(f"partition {partition}: final read timed out")
                    break
                high_watermark = poll(
                    client,
                    history,
                    clock=clock,
                    process=process,
                    config=config,
                    partition=partition,
                    positions=positions,
                )
                if high_watermark < 0:  # a failed poll: back off instead of spinning
                    time.sleep(RETRY_BACKOFF_MS_MAX / 1000)
    complete = not problems and all(
        positions.get(p, -1) >= high_watermarks.get(p, 0) for p in range(config.partitions)
    )
    return FinalRead(complete, high_watermarks, positions, tuple(problems))
