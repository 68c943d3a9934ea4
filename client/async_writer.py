"""`AsyncWriter`: the asyncio twin of `Writer`, the same core (`ProducerCore`) in an
asyncio shell on grpc.aio.

    async with AsyncWriter(brokers=["127.0.0.1:9092"], topic="orders") as writer:
        await writer.write_messages(Message(b"one"), Message(b"two"))

One sender task per writer carries out what the core decides: produce requests are
pipelined on one long-lived produce stream per broker (`client/async_request_stream.py`;
unary Produce calls, each its own task, to a broker without one), answers are fed back to
the core as they come, and one metadata or producer-id request at a time is awaited by
the sender, bounded by the time the waiting messages have left. Everything runs on the
loop that created the writer (create it inside `async with` or a coroutine).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence

import structlog
from raftmq.client import protocol
from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.balancers import Balancer, RoundRobin
from raftmq.client.conn import now_ms, wall_ms
from raftmq.client.producer_core import (
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
from raftmq.client.writer import (
    CLOSE_FLUSH_MARGIN_MS,
    Callback,
    RequireAll,
    closed_before_accepted,
    compression_codec,
    deliver,
)
from raftmq.errors import RaftmqError
from raftmq.message import Message
from raftmq.v1 import broker_pb2 as pb

_log = structlog.get_logger("raftmq.client")


class AsyncWriter:
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
        self._pool = AsyncBrokerPool(brokers)
        self._core = ProducerCore(self.config, balancer or RoundRobin())
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        # Set when close() starts: no new writes.
        self._closed = False
        self._requests: set[asyncio.Task[None]] = set()
        self._sender = asyncio.get_running_loop().create_task(self._run())

    # ------------------------------------------------------------ public API

    async def write_messages(self, *messages: Message) -> asyncio.Future[list[Message]]:
        """As `Writer.write_messages`: awaits every outcome (raising WriteError) unless
        async_=True, where it returns the future at once."""
        check_topics(self.config.topic, messages)
        future: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        if not messages:
            future.set_result([])
            return future
        if self._closed:
            raise RuntimeError("write_messages on a closed AsyncWriter")
        written = list(messages)
        call = WriteCall(written, lambda error: _resolve(future, written, error))
        remaining: Sequence[Message] = messages
        # Bound: each pass adds at least one message or waits for room (or close).
        while remaining and not self._core.closed:
            room = self._core.room()
            if room <= 0:
                self._drained.clear()
                await self._drained.wait()
                continue
            chunk, remaining = remaining[:room], remaining[room:]
            self._core.add(chunk, call, now_ms=now_ms(), wall_ms=wall_ms(), linger=self.async_)
            self._wakeup.set()
        if remaining:  # closed while this call waited for room
            deliver([closed_before_accepted(call, remaining)], self.completion)
        if not self.async_:
            await asyncio.shield(future)
        return future

    async def flush(self) -> None:
        self._core.flush()
        self._wakeup.set()
        while not self._core.idle():
            self._drained.clear()
            await self._drained.wait()

    async def close(self, timeout_ms: int | None = None) -> None:
        """As `Writer.close`: flush for at most `timeout_ms` (default write_timeout_ms +
        5 s), then fail whatever is left; every future is resolved and every completion
        callback has run when it returns."""
        if self._closed:
            return
        self._closed = True
        bound_ms = self.config.write_timeout_ms + CLOSE_FLUSH_MARGIN_MS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.flush(), (bound_ms if timeout_ms is None else timeout_ms) / 1000
            )
        self._core.close()
        # The sender may be awaiting a (bounded) metadata or producer-id call: its answer
        # no longer matters.
        self._sender.cancel()
        await asyncio.wait([self._sender])
        for task in list(self._requests):
            task.cancel()
        self._deliver()
        await self._pool.close()

    async def __aenter__(self) -> AsyncWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stats(self) -> WriterStats:
        return self._core.stats.copy()

    # ------------------------------------------------------------ sender task

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception:  # a bug: fail what is left rather than leave callers waiting
            _log.exception("writer.sender_failed")
            self._core.close()
            self._deliver()

    async def _loop(self) -> None:
        # Bound: until the core is closed; each pass does the core's due work and awaits
        # at most one bounded request, then waits for a wakeup or the next deadline.
        while not self._core.closed:
            self._wakeup.clear()
            now = now_ms()
            for send in self._core.poll(now_ms=now):
                self._start(send)
            request = self._core.next_request(now_ms=now)
            self._deliver()
            if request is not None:
                await self._perform(request)
                continue
            # A produce stream whose broker stopped answering fails here (its requests
            # then fail like timed-out calls, which sets the wakeup).
            now = now_ms()
            stream_deadline = self._pool.expire_streams(now)
            wake = self._core.next_wakeup_ms(now_ms=now)
            if stream_deadline is not None:
                wake = min(wake, stream_deadline)
            if not self._wakeup.is_set() and wake > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), (wake - now) / 1000)
        self._deliver()

    def _start(self, send: ProduceSend) -> None:
        request = protocol.produce_request(
            [(b.topic, b.partition, b.leader_epoch, b.records) for b in send.batches],
            acks=send.acks,
            timeout_ms=send.timeout_ms,
        )
        try:
            stream = self._pool.produce_stream(send.endpoint)
        except RaftmqError as e:  # the pool was closed under us
            self._answered(send, e)
            return
        if stream is None:
            task = asyncio.get_running_loop().create_task(self._send_unary(send, request))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
        elif send.acks == 0:
            # Nobody waits for an answer (the core completed these already).
            stream.send(request, timeout_ms=send.rpc_timeout_ms, on_answer=None)
        else:
            stream.send(
                request,
                timeout_ms=send.rpc_timeout_ms,
                on_answer=functools.partial(self._answered, send),
            )

    async def _send_unary(self, send: ProduceSend, request: pb.ProduceRequest) -> None:
        """A broker without ProduceStream: one unary Produce call."""
        answer: pb.ProduceResponse | RaftmqError
        try:
            answer = await self._pool.conn(send.endpoint).call(
                "Produce", request, timeout_ms=send.rpc_timeout_ms
            )
        except RaftmqError as e:
            answer = e
        self._answered(send, answer)

    def _answered(self, send: ProduceSend, answer: pb.ProduceResponse | RaftmqError) -> None:
        """A request's answer (or the failure that ended its stream or call) to the core."""
        if send.acks == 0:
            return
        if isinstance(answer, RaftmqError):
            self._core.on_produce_failure(send.request_id, answer, now_ms=now_ms())
        else:
            results = [
                PartitionResult(r.topic, r.partition, r.base_offset, r.error, r.leader_endpoint)
                for r in protocol.produce_results(answer)
            ]
            self._core.on_produce_response(send.request_id, results, now_ms=now_ms())
        self._wakeup.set()

    async def _perform(self, request: MetadataRequest | ProducerIdRequest) -> None:
        """One metadata or producer-id request, bounded by its timeout."""
        if isinstance(request, ProducerIdRequest):
            try:
                answer = await self._pool.init_producer_id(
                    request.producer_id, request.producer_epoch, timeout_ms=request.timeout_ms
                )
            except RaftmqError as e:
                if self._core.on_producer_id_failure(e, now_ms=now_ms()):
                    failures = self._core.producer_id_failures
                    _log.info("writer.producer_id_failed", error=str(e), failures=failures)
                return
            self._core.on_producer_id(*answer)
            return
        try:
            metadata = await self._pool.fetch_metadata(
                request.topics,
                allow_auto_topic_creation=self.allow_auto_topic_creation,
                timeout_ms=request.timeout_ms,
                prefer=request.prefer,
            )
        except RaftmqError as e:
            self._core.on_metadata_failure(request.topics, e, now_ms=now_ms())
            return
        self._core.on_metadata(metadata, asked=request.topics, now_ms=now_ms())

    def _deliver(self) -> None:
        completions = self._core.drain_completions()
        if completions:
            deliver(completions, self.completion)
            self._drained.set()


def _resolve(
    future: asyncio.Future[list[Message]], messages: list[Message], error: WriteError | None
) -> None:
    if future.done():  # the caller cancelled it: nobody waits for it
        return
    if error is None:
        future.set_result(messages)
    else:
        future.set_exception(error)
