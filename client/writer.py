"""`Writer`: writes messages to topics (kafka-go's Writer, pythonic), the sync shell around
`ProducerCore`.

    with Writer(brokers=["127.0.0.1:9092"], topic="orders") as writer:
        writer.write_messages(Message(b"one"), Message(b"two", key=b"k"))

`write_messages` blocks until every message is written or failed and raises `WriteError`
listing each failed message with its cause. With `async_=True` it returns at once and
every outcome goes to the `completion(messages, error)` callback (and to the returned
future): nothing is dropped silently. `close()` (or leaving `with`) flushes, then fails
whatever is left, so every future is resolved and every callback has run when it returns.

Threads: one sender thread per Writer carries out what the core decides: produce requests
are sent without blocking on one long-lived produce stream per broker
(`client/produce_stream.py`) and their answers are fed back from each stream's reader
thread; one metadata or producer-id request at a time is made on the sender
thread, bounded by the time the waiting messages have left. Completions (the callback,
the futures) are delivered on the sender thread, in order, never under the Writer's lock.

A sync Writer without a completion callback runs no application code on its threads, so
it spares a write two thread hops: the calling thread sends what its call made due
itself, and the stream's reader thread resolves the futures its answer completed. The
sender then wakes only for what needs it (metadata, producer ids, retries, deadlines).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

import grpc
import structlog
from raftmq.client import protocol
from raftmq.client.balancers import Balancer, RoundRobin
from raftmq.client.brokers import BrokerPool
from raftmq.client.conn import closed_error, now_ms, transport_error, wall_ms
from raftmq.client.producer_core import (
    Completion,
    MetadataRequest,
    PartitionResult,
    ProducerCore,
    ProducerIdRequest,
    ProduceSend,
    WriteCall,
    WriteError,
    WriterConfig,
    WriterStats,
    check_topics,
)
from raftmq.compression import CODEC_NAMES
from raftmq.errors import RaftmqError, WriterClosedError
from raftmq.message import Message
from raftmq.v1 import broker_pb2 as pb

__all__ = [
    "RequireAll",
    "RequireNone",
    "RequireOne",
    "WriteError",
    "Writer",
    "check_topics",
    "compression_codec",
]

RequireAll = -1
RequireOne = 1
RequireNone = 0
# close() flushes for the write timeout plus this (an answer's margin) by default.
CLOSE_FLUSH_MARGIN_MS = 5_000
# How long close() waits for the sender to deliver the last outcomes and stop.
CLOSE_TIMEOUT_S = 60.0

_log = structlog.get_logger("raftmq.client")

Callback = Callable[[list[Message], RaftmqError | None], None]


def compression_codec(compression: str | None) -> int:
    by_name = {name: codec for codec, name in CODEC_NAMES.items()}
    if compression is None:
        return by_name["none"]
    if compression not in by_name:
        raise ValueError(f"compression must be one of {sorted(by_name)} or None")
    return by_name[compression]


def deliver(completions: list[Completion], callback: Callback | None) -> None:
    """Run the completion callback and count each completion toward its call, in order
    (both shells; the sender thread or the loop). A failing callback is logged, never
    lets an outcome go undelivered."""
    for completion in completions:
        call = completion.ticket
        assert isinstance(call, WriteCall)
        if callback is not None:
            try:
                callback(completion.messages, completion.error)
            except Exception:
                _log.exception("writer.completion_failed")
        call.add(completion)


def closed_before_accepted(call: WriteCall, messages: Sequence[Message]) -> Completion:
    """The outcome of a call's messages the writer never took: it was closed while the call
    waited for room in its buffer."""
    return Completion(
        call,
        list(messages),
        WriterClosedError("the writer was closed before these messages were accepted"),
    )


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
        completion: Callback | None = None,
        buffered_messages_max: int = 100_000,
        inflight_batches_max: int | None = None,
        pipeline_partial_batches: bool = False,
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
            inflight_batches_max=inflight_batches_max,
            pipeline_partial_batches=pipeline_partial_batches,
        )
        self.async_ = async_
        self.completion = completion
        self.allow_auto_topic_creation = allow_auto_topic_creation
        self._pool = BrokerPool(brokers, on_reconnect=self._on_reconnect)
        self._core = ProducerCore(self.config, balancer or RoundRobin())
        self._lock = threading.Lock()
        # Notified on anything the sender must look at (new messages, answers, close).
        self._wakeup = threading.Condition(self._lock)
        # Notified when messages complete (room for blocked writers, flush, close).
        self._drained = threading.Condition(self._lock)
        # Set when close() starts: no new writes.
        self._closed = threading.Event()
        # Set (under the lock) by whatever gives the sender work; cleared by the sender
        # when it looks. Invariant: no wakeup is lost between its look and its wait.
        self._dirty = False
        # Completions drained from the core and not yet delivered.
        self._delivering = 0
        # Held while polling the core for sends and handing them to their streams, so
        # that sends leave in the order the core made them (sequence numbers). Taken
        # before _lock, never while holding it.
        self._sending = threading.Lock()
        # A sync Writer without a callback: callers send, answers deliver (see above).
        self._direct = not async_ and completion is None
        # When the sender's current wait ends (monotonic ms); 0 while it is awake.
        # Guarded by _lock.
        self._sender_wake_ms = 0
        self._sender = threading.Thread(target=self._run, name="raftmq-writer", daemon=True)
        self._sender.start()

    # ------------------------------------------------------------ public API

    def write_messages(self, *messages: Message) -> Future[list[Message]]:
        """Write `messages`. Sync mode: blocks until all are written (their `topic`,
        `partition` and `offset` are then set) or raises WriteError. Async mode: returns a
        future at once; outcomes also go to `completion`. Raises ValueError at once for a
        message without a topic, or with another than the Writer's own."""
        check_topics(self.config.topic, messages)
        future: Future[list[Message]] = Future()
        if not messages:
            future.set_result([])
            return future
        written = list(messages)
        call = WriteCall(written, lambda error: _resolve(future, written, error))
        remaining: Sequence[Message] = messages
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("write_messages on a closed Writer")
            # Bound: each pass adds at least one message or waits for room (or close).
            while remaining and not self._core.closed:
                room = self._core.room()
                if room <= 0:
                    self._poke()  # a direct Writer's earlier chunks wait for the sender
                    self._drained.wait(timeout=1.0)
                    continue
                chunk, remaining = remaining[:room], remaining[room:]
                self._core.add(chunk, call, now_ms=now_ms(), wall_ms=wall_ms(), linger=self.async_)
                if not self._direct:
                    self._poke()
        if self._direct:
            self._send_due()
        if remaining:  # closed while this call waited for room: the sender has stopped
            self._sender.join(timeout=CLOSE_TIMEOUT_S)
            deliver([closed_before_accepted(call, remaining)], self.completion)
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

    def close(self, timeout_ms: int | None = None) -> None:
        """Flush for at most `timeout_ms` (default: write_timeout_ms + 5 s, by which every
        message has met its own deadline), then fail whatever is left — sent and not
        answered: OutcomeUnknownError; not sent: WriterClosedError — deliver every outcome,
        stop the sender and close the connections. When it returns, every future is
        resolved and every completion callback has run (unless called from a callback,
        on the sender thread: then they run right after that callback returns)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        on_sender = threading.current_thread() is self._sender
        if not on_sender:
            bound_ms = self.config.write_timeout_ms + CLOSE_FLUSH_MARGIN_MS
            self.flush(timeout_s=(bound_ms if timeout_ms is None else timeout_ms) / 1000)
        with self._lock:
            self._core.close()
            self._poke()
        # Closing the channels cuts a call the sender may be blocked in short.
        self._pool.close()
        if not on_sender:
            self._sender.join(timeout=CLOSE_TIMEOUT_S)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> WriterStats:
        with self._lock:
            return self._core.stats.copy()

    # ------------------------------------------------------------ sender thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug: fail what is left rather than leave callers waiting
            _log.exception("writer.sender_failed")
            with self._lock:
                self._core.close()
                completions = self._core.drain_completions()
                self._delivering += len(completions)
            self._deliver(completions)

    def _loop(self) -> None:
        # Bound: until the core is closed; each pass does the core's due work and at most
        # one bounded request, then waits for a wakeup or the core's next deadline.
        while True:
            with self._sending:
                with self._lock:
                    self._dirty = False
                    now = now_ms()
                    sends = self._core.poll(now_ms=now)
                    request = self._core.next_request(now_ms=now)
                    completions = self._core.drain_completions()
                    self._delivering += len(completions)
                    closed = self._core.closed
                for send in sends:  # none once closed
                    self._send(send)
            self._deliver(completions)
            if closed:
                return
            if request is not None:
                self._perform(request)
                continue  # look again at once: answers may have made work due
            # A produce stream whose broker stopped answering fails here (its requests
            # then fail like timed-out calls); outside the lock: that feeds the core.
            stream_deadline = self._pool.expire_streams(now_ms())
            with self._lock:
                now = now_ms()
                wake = self._core.next_wakeup_ms(now_ms=now)
                if stream_deadline is not None:
                    wake = min(wake, stream_deadline)
                if not self._dirty and not self._core.closed and wake > now:
                    self._sender_wake_ms = wake
                    self._wakeup.wait(timeout=(wake - now) / 1000)
                    self._sender_wake_ms = 0

    def _send_due(self) -> None:
        """The calling thread of a direct Writer: send what the core has due now (the
        sender's work, done here to spare a thread hop), and wake the sender only if it
        has work too or would sleep past a deadline this made."""
        with self._sending:
            with self._lock:
                now = now_ms()
                sends = self._core.poll(now_ms=now)
            for send in sends:
                self._send(send)
        with self._lock:
            if not sends or self._sender_wake_ms == 0:  # it has work, or looks again anyway
                self._poke()
                return
            # Its stream fails if unanswered by then (expire_streams, on the sender).
            wake = min(
                now + min(s.rpc_timeout_ms for s in sends), self._core.next_wakeup_ms(now_ms=now)
            )
            if wake < self._sender_wake_ms:
                self._poke()

    def _send(self, send: ProduceSend) -> None:
        request = protocol.produce_request(
            [(b.topic, b.partition, b.leader_epoch, b.records) for b in send.batches],
            acks=send.acks,
            timeout_ms=send.timeout_ms,
        )
        try:
            stream = self._pool.produce_stream(send.endpoint)
        except RaftmqError as e:  # the pool was closed under us
            closed = e
            if send.acks != 0:
                self._on_answer(
                    lambda now: self._core.on_produce_failure(send.request_id, closed, now_ms=now)
                )
            return
        if stream is not None and send.acks == 0:
            # Nobody waits for an answer (the core completed these already).
            stream.send(request, timeout_ms=send.rpc_timeout_ms, on_answer=None)
            return

        def answered(answer: pb.ProduceResponse | RaftmqError) -> None:
            if isinstance(answer, RaftmqError):
                failure = answer
                self._on_answer(
                    lambda now: self._core.on_produce_failure(send.request_id, failure, now_ms=now)
                )
                return
            results = [
                PartitionResult(r.topic, r.partition, r.base_offset, r.error, r.leader_endpoint)
                for r in protocol.produce_results(answer)
            ]
            self._on_answer(
                lambda now: self._core.on_produce_response(send.request_id, results, now_ms=now)
            )

        if stream is not None:
            stream.send(request, timeout_ms=send.rpc_timeout_ms, on_answer=answered)
        else:
            self._send_unary(send, request, answered)

    def _send_unary(
        self,
        send: ProduceSend,
        request: pb.ProduceRequest,
        answered: Callable[[pb.ProduceResponse | RaftmqError], None],
    ) -> None:
        """A broker without ProduceStream: one unary Produce call, answered (acks != 0)
        on grpc's thread as a stream answer would be."""
        endpoint = send.endpoint
        try:
            future = self._pool.conn(endpoint).call_future(
                "Produce", request, timeout_ms=send.rpc_timeout_ms
            )
        except RaftmqError as e:  # the pool or the connection was closed under us
            if send.acks != 0:
                answered(e)
            return

        def done(call: Future[Any]) -> None:
            answer: pb.ProduceResponse | RaftmqError
            try:
                answer = call.result()
            except grpc.RpcError as e:
                answer = transport_error(endpoint, "Produce", e)
            except grpc.FutureCancelledError:  # the channel was closed under it
                answer = closed_error(endpoint, "Produce")
            if send.acks != 0:
                answered(answer)

        future.add_done_callback(done)

    def _perform(self, request: MetadataRequest | ProducerIdRequest) -> None:
        """Sender thread: one metadata or producer-id request, bounded by its timeout."""
        if isinstance(request, ProducerIdRequest):
            try:
                answer = self._pool.init_producer_id(
                    request.producer_id, request.producer_epoch, timeout_ms=request.timeout_ms
                )
            except RaftmqError as e:
                with self._lock:
                    report = self._core.on_producer_id_failure(e, now_ms=now_ms())
                    failures = self._core.producer_id_failures
                if report:
                    _log.info("writer.producer_id_failed", error=str(e), failures=failures)
                return
            with self._lock:
                self._core.on_producer_id(*answer)
            return
        try:
            metadata = self._pool.fetch_metadata(
                request.topics,
                allow_auto_topic_creation=self.allow_auto_topic_creation,
                timeout_ms=request.timeout_ms,
                prefer=request.prefer,
            )
        except RaftmqError as e:
            with self._lock:
                self._core.on_metadata_failure(request.topics, e, now_ms=now_ms())
            return
        with self._lock:
            self._core.on_metadata(metadata, asked=request.topics, now_ms=now_ms())

    def _on_reconnect(self, address: str) -> None:
        """A Conn's thread: the broker at `address` answers again."""
        with self._lock:
            self._core.on_broker_reachable(now_ms=now_ms())
            self._poke()

    def _poke(self) -> None:
        """Under the lock: the sender has work."""
        self._dirty = True
        self._wakeup.notify()

    def _on_answer(self, feed: Callable[[int], None]) -> None:
        """Feed an answer to the core (on a gRPC callback thread); the sender delivers,
        or, in a direct Writer, this thread, and the sender wakes only if work is left."""
        with self._lock:
            feed(now_ms())
            if not self._direct:
                self._poke()
                return
            completions = self._core.drain_completions()
            self._delivering += len(completions)
            if not self._core.idle():
                self._poke()
        self._deliver(completions)

    def _deliver(self, completions: list[Completion]) -> None:
        """Callbacks and futures, in completion order: on the sender thread, or (direct
        Writer: futures only) on the thread that drained them."""
        if not completions:
            return
        deliver(completions, self.completion)
        with self._lock:
            self._delivering -= len(completions)
            self._drained.notify_all()


def _resolve(
    future: Future[list[Message]], messages: list[Message], error: WriteError | None
) -> None:
    try:
        if error is None:
            future.set_result(messages)
        else:
            future.set_exception(error)
    except InvalidStateError:  # the caller cancelled the future: nobody waits for it
        pass
