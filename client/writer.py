"""`Writer`: writes messages to topics (kafka-go's Writer, pythonic), the sync shell around
`ProducerCore`.

    with Writer(brokers=["127.0.0.1:9092"], topic="orders") as writer:
        writer.write_messages(Message(b"one"), Message(b"two", key=b"k"))

`write_messages` blocks until every message is written or failed and raises `WriteError`
listing each failed message with its cause. With `async_=True` it returns at once and
every outcome goes to the `completion(messages, error)` callback (and to the returned
future): nothing is dropped silently. `close()` (or leaving `with`) flushes.

Threads: one sender thread per Writer runs the core (sealing, sending, retries, metadata
and producer-id requests); produce requests are sent without blocking (gRPC futures),
and their answers are fed back from gRPC's callback threads. Completions (the callback,
the futures) are delivered on the sender thread, in order, never under the Writer's lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from raftmq.client import protocol
from raftmq.client.balancers import Balancer, RoundRobin
from raftmq.client.brokers import BrokerPool
from raftmq.client.conn import DEADLINE_MARGIN_MS, now_ms, transport_error, wall_ms
from raftmq.client.producer_core import (
    Completion,
    PartitionResult,
    ProducerCore,
    ProduceSend,
    WriterConfig,
    WriterStats,
)
from raftmq.compression import CODEC_NAMES
from raftmq.errors import RaftmqError
from raftmq.message import Message

RequireAll = -1
RequireOne = 1
RequireNone = 0
METADATA_BACKOFF_MS = 100
METADATA_BACKOFF_MS_MAX = 2_000
CLOSE_TIMEOUT_S = 60.0

_log = structlog.get_logger("raftmq.client")


class WriteError(RaftmqError):
    """Some messages of a write failed: `errors` pairs each with its cause (a per-code
    error such as `LeaderNotAvailableError`, or `OutcomeUnknownError`). Also a
    RaftmqError, with the first failure's code; `retriable` is True only when every cause
    is retriable, so `except WriteError as e: if e.retriable: ...` is the retry test."""

    def __init__(self, errors: list[tuple[Message, RaftmqError]]) -> None:
        first = errors[0][1]
        shown = "; ".join(f"{m!r}: {e}" for m, e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        super().__init__(first.code, f"{len(errors)} message(s) failed: {shown}{more}")
        self.errors = errors

    def __new__(cls, errors: list[tuple[Message, RaftmqError]]) -> WriteError:
        return Exception.__new__(cls)

    def __reduce__(self) -> tuple[object, ...]:
        return (WriteError, (self.errors,))

    @property
    def retriable(self) -> bool:
        """Every message failed for a reason that writing it again may cure (a leader
        change, a timeout, an unknown outcome)."""
        return all(error.retriable for _, error in self.errors)


def check_topics(writer_topic: str | None, messages: Iterable[Message]) -> None:
    """A topic on the Writer and on a message is exclusive: exactly one of them (kafka-go's
    rule), checked before anything is sent. A message whose topic is the Writer's own is
    no conflict: a written message carries its topic, and writing the same messages again
    (a retry loop) must work."""
    for message in messages:
        if writer_topic is not None and message.topic not in (None, writer_topic):
            raise ValueError(
                f"the Writer has topic {writer_topic!r} and a message has topic "
                f"{message.topic!r}: set the topic on the Writer or on each message, not both"
            )
        if writer_topic is None and message.topic is None:
            raise ValueError("a message has no topic and the Writer has none: set one of them")


def compression_codec(compression: str | None) -> int:
    by_name = {name: codec for codec, name in CODEC_NAMES.items()}
    if compression is None:
        return by_name["none"]
    if compression not in by_name:
        raise ValueError(f"compression must be one of {sorted(by_name)} or None")
    return by_name[compression]


@dataclass
class _Call:
    """One write_messages call: its messages' outcomes as they complete."""

    total: int
    future: Future[list[Message]]
    written: int = 0
    failures: list[tuple[Message, RaftmqError]] = field(default_factory=list)

    def add(self, completion: Completion) -> None:
        """Count one completion; resolve the future once every message has an outcome."""
        if completion.error is None:
            self.written += len(completion.messages)
        else:
            self.failures.extend((m, completion.error) for m in completion.messages)
        if self.written + len(self.failures) == self.total:
            if self.failures:
                self.future.set_exception(WriteError(self.failures))
            else:
                self.future.set_result(self.messages)

    messages: list[Message] = field(default_factory=list)


class Writer:
    def __init__(
        self,
        brokers: Sequence[str] | str,
        topic: str | None = None,
        *,
        balancer: Balancer | None = None,
        required_acks: int = RequireAll,
        batch_size: int = 1_000,
        batch_bytes: int = 1 << 20,
        linger_ms: int = 5,
        compression: str | None = None,
        idempotent: bool = True,
        max_attempts: int = 10,
        write_timeout_ms: int = 30_000,
        request_timeout_ms: int = 30_000,
        allow_auto_topic_creation: bool = False,
        async_: bool = False,
        completion: Callable[[list[Message], RaftmqError | None], None] | None = None,
        buffered_messages_max: int = 100_000,
    ) -> None:
        self.config = WriterConfig(
            topic=topic,
            required_acks=required_acks,
            batch_size=batch_size,
            batch_bytes=batch_bytes,
            linger_ms=linger_ms,
            compression=compression_codec(compression),
            idempotent=idempotent,
            max_attempts=max_attempts,
            write_timeout_ms=write_timeout_ms,
            request_timeout_ms=request_timeout_ms,
            buffered_messages_max=buffered_messages_max,
        )
        self.async_ = async_
        self.completion = completion
        self.allow_auto_topic_creation = allow_auto_topic_creation
        self._pool = BrokerPool(brokers)
        self._core = ProducerCore(self.config, balancer or RoundRobin())
        self._lock = threading.Lock()
        # Notified on anything the sender must look at (new messages, answers, close).
        self._wakeup = threading.Condition(self._lock)
        # Notified when messages complete (room for blocked writers, flush, close).
        self._drained = threading.Condition(self._lock)
        self._closed = threading.Event()
        # Set (under the lock) by whatever gives the sender work; cleared by the sender
        # when it looks. Invariant: no wakeup is lost between its look and its wait.
        self._dirty = False
        # Completions drained from the core and not yet delivered (sender thread).
        self._delivering = 0
        self._metadata_backoff_ms = METADATA_BACKOFF_MS
        self._next_metadata_ms = 0
        self._sender = threading.Thread(target=self._run, name="raftmq-writer", daemon=True)
        self._sender.start()

    # ------------------------------------------------------------ public API

    def write_messages(self, *messages: Message) -> Future[list[Message]]:
        """Write `messages`. Sync mode: blocks until all are written (their `topic`,
        `partition` and `offset` are then set) or raises WriteError. Async mode: returns a
        future at once; outcomes also go to `completion`. Raises ValueError at once for a
        message without a topic, or with one when the Writer has its own."""
        check_topics(self.config.topic, messages)
        future: Future[list[Message]] = Future()
        if not messages:
            future.set_result([])
            return future
        call = _Call(len(messages), future, messages=list(messages))
        remaining: Sequence[Message] = messages
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("write_messages on a closed Writer")
            # Bound: each pass adds at least one message or waits for room.
            while remaining:
                room = self._core.room()
                if room <= 0:
                    self._drained.wait(timeout=1.0)
                    continue
                chunk, remaining = remaining[:room], remaining[room:]
                self._core.add(chunk, call, now_ms=now_ms(), wall_ms=wall_ms(), linger=self.async_)
                self._poke()
        if not self.async_:
            future.result()  # raises WriteError
        return future

    def flush(self, timeout_s: float | None = None) -> bool:
        """Seal every batch and wait until every accepted message completed; False on
        timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            self._core.flush()
            self._poke()
            # Bound: until idle or the deadline.
            while not self._core.idle() or self._delivering:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._drained.wait(timeout=remaining if remaining is not None else 1.0)
        return True

    def close(self) -> None:
        """Flush (bounded by the write timeout), stop the sender, close connections."""
        if self._closed.is_set():
            return
        self.flush(timeout_s=self.config.write_timeout_ms / 1000 + 5)
        with self._lock:
            self._closed.set()
            self._poke()
        self._sender.join(timeout=CLOSE_TIMEOUT_S)
        self._pool.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> WriterStats:
        with self._lock:
            s = self._core.stats
            return WriterStats(
                s.messages,
                s.bytes,
                s.batches,
                s.errors,
                s.retries,
                s.batch_messages_min,
                s.batch_messages_max,
            )

    # ------------------------------------------------------------ sender thread

    def _run(self) -> None:
        # Bound: until closed; each pass does the core's due work, then waits for a
        # wakeup or the core's next deadline.
        while True:
            with self._lock:
                closed = self._closed.is_set()
                self._dirty = False
                now = now_ms()
                sends = [] if closed else self._core.poll(now_ms=now)
                wanted_id = None if closed else self._core.producer_id_wanted()
                topics = self._core.metadata_wanted() if now >= self._next_metadata_ms else set()
                completions = self._core.drain_completions()
                self._delivering += len(completions)
            self._deliver(completions)
            if closed:
                return
            for send in sends:
                self._send(send)
            if wanted_id is not None:
                self._init_producer_id(*wanted_id)
            if topics:
                self._refresh_metadata(topics)
            with self._lock:
                if self._closed.is_set():
                    return
                now = now_ms()
                wake = self._core.next_wakeup_ms(now_ms=now)
                if self._core.metadata_wanted():
                    wake = min(wake, self._next_metadata_ms)
                if not self._dirty and wake > now:
                    self._wakeup.wait(timeout=(wake - now) / 1000)

    def _send(self, send: ProduceSend) -> None:
        request = protocol.produce_request(
            [(b.topic, b.partition, b.leader_epoch, b.records) for b in send.batches],
            acks=send.acks,
            timeout_ms=send.timeout_ms,
        )
        future = self._pool.conn(send.endpoint).call_future(
            "Produce", request, timeout_ms=send.timeout_ms + DEADLINE_MARGIN_MS
        )
        if send.acks == 0:
            return  # nobody waits for an answer (the core completed these already)

        def done(f: Future[Any]) -> None:
            try:
                response = f.result()
            except grpc.RpcError as e:
                failure = transport_error(send.endpoint, "Produce", e)
                self._on_answer(
                    lambda now: self._core.on_produce_failure(send.request_id, failure, now_ms=now)
                )
                return
            results = [
                PartitionResult(r.topic, r.partition, r.base_offset, r.error)
                for r in protocol.produce_results(response)
            ]
            self._on_answer(
                lambda now: self._core.on_produce_response(send.request_id, results, now_ms=now)
            )

        future.add_done_callback(done)

    def _poke(self) -> None:
        """Under the lock: the sender has work."""
        self._dirty = True
        self._wakeup.notify()

    def _on_answer(self, feed: Callable[[int], None]) -> None:
        """Feed an answer to the core (on a gRPC callback thread); the sender delivers."""
        with self._lock:
            feed(now_ms())
            self._poke()

    def _init_producer_id(self, producer_id: int, producer_epoch: int) -> None:
        try:
            new_id, new_epoch = self._pool.init_producer_id(producer_id, producer_epoch)
        except RaftmqError as e:
            _log.info("writer.producer_id_failed", error=str(e))
            with self._lock:
                self._core.on_producer_id_failure()
            time.sleep(METADATA_BACKOFF_MS / 1000)  # the sender's own backoff
            return
        with self._lock:
            self._core.on_producer_id(new_id, new_epoch)

    def _refresh_metadata(self, topics: set[str]) -> None:
        try:
            self._pool.fetch_metadata(
                sorted(topics), allow_auto_topic_creation=self.allow_auto_topic_creation
            )
            failure: RaftmqError | None = None
        except RaftmqError as e:
            failure = e
        with self._lock:
            now = now_ms()
            metadata = self._pool.metadata
            if metadata is not None:
                self._core.on_metadata(metadata, now_ms=now)
            if failure is not None:
                self._core.on_metadata_failure(topics, failure, now_ms=now)
            still_missing = self._core.metadata_wanted() & topics
            if failure is not None or still_missing:
                self._next_metadata_ms = now + self._metadata_backoff_ms
                self._metadata_backoff_ms = min(
                    METADATA_BACKOFF_MS_MAX, self._metadata_backoff_ms * 2
                )
            else:
                self._metadata_backoff_ms = METADATA_BACKOFF_MS
            self._dirty = True  # routed messages may be ready to seal

    def _deliver(self, completions: list[Completion]) -> None:
        """Sender thread only: callbacks and futures, in completion order."""
        if not completions:
            return
        for completion in completions:
            call = completion.ticket
            assert isinstance(call, _Call)
            if self.completion is not None:
                try:
                    self.completion(completion.messages, completion.error)
                except Exception:
                    _log.exception("writer.completion_failed")
            call.add(completion)
        with self._lock:
            self._delivering -= len(completions)
            self._drained.notify_all()
