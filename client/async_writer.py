"""`AsyncWriter`: the asyncio twin of `Writer`, the same core (`ProducerCore`) in an
asyncio shell on grpc.aio.

    async with AsyncWriter(brokers=["127.0.0.1:9092"], topic="orders") as writer:
        await writer.write_messages(Message(b"one"), Message(b"two"))

One sender task per writer runs the core; each produce request is its own task; answers
are fed back to the core as they come. Everything runs on the loop that created the
writer (create it inside `async with` or a coroutine).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import structlog
from raftmq.client import protocol
from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.balancers import Balancer, RoundRobin
from raftmq.client.conn import DEADLINE_MARGIN_MS, now_ms, wall_ms
from raftmq.client.producer_core import (
    Completion,
    PartitionResult,
    ProducerCore,
    ProduceSend,
    WriterConfig,
    WriterStats,
)
from raftmq.client.writer import (
    METADATA_BACKOFF_MS,
    METADATA_BACKOFF_MS_MAX,
    RequireAll,
    WriteError,
    check_topics,
    compression_codec,
)
from raftmq.errors import RaftmqError
from raftmq.message import Message

_log = structlog.get_logger("raftmq.client")


class _AsyncCall:
    def __init__(self, messages: list[Message], future: asyncio.Future[list[Message]]) -> None:
        self.messages = messages
        self.future = future
        self.done = 0
        self.failures: list[tuple[Message, RaftmqError]] = []

    def add(self, completion: Completion) -> None:
        self.done += len(completion.messages)
        if completion.error is not None:
            self.failures.extend((m, completion.error) for m in completion.messages)
        if self.done == len(self.messages) and not self.future.done():
            if self.failures:
                self.future.set_exception(WriteError(self.failures))
            else:
                self.future.set_result(self.messages)


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
        self._pool = AsyncBrokerPool(brokers)
        self._core = ProducerCore(self.config, balancer or RoundRobin())
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._closed = False
        self._requests: set[asyncio.Task[None]] = set()
        self._metadata_backoff_ms = METADATA_BACKOFF_MS
        self._next_metadata_ms = 0
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
        call = _AsyncCall(list(messages), future)
        remaining: Sequence[Message] = messages
        while remaining:
            room = self._core.room()
            if room <= 0:
                self._drained.clear()
                await self._drained.wait()
                continue
            chunk, remaining = remaining[:room], remaining[room:]
            self._core.add(chunk, call, now_ms=now_ms(), wall_ms=wall_ms(), linger=self.async_)
            self._wakeup.set()
        if not self.async_:
            await asyncio.shield(future)
        return future

    async def flush(self) -> None:
        self._core.flush()
        self._wakeup.set()
        while not self._core.idle():
            self._drained.clear()
            await self._drained.wait()

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), self.config.write_timeout_ms / 1000 + 5)
        self._closed = True
        self._wakeup.set()
        await self._sender
        for task in list(self._requests):
            task.cancel()
        await self._pool.close()

    async def __aenter__(self) -> AsyncWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stats(self) -> WriterStats:
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

    # ------------------------------------------------------------ sender task

    async def _run(self) -> None:
        # Bound: until closed; each pass does the core's due work, then waits.
        while not self._closed:
            self._wakeup.clear()
            now = now_ms()
            for send in self._core.poll(now_ms=now):
                self._start(send)
            wanted_id = self._core.producer_id_wanted()
            if wanted_id is not None:
                await self._init_producer_id(*wanted_id)
            if now >= self._next_metadata_ms and (topics := self._core.metadata_wanted()):
                await self._refresh_metadata(topics)
            self._deliver(self._core.drain_completions())
            now = now_ms()
            wake = self._core.next_wakeup_ms(now_ms=now)
            if self._core.metadata_wanted():
                wake = min(wake, self._next_metadata_ms)
            if not self._wakeup.is_set() and wake > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), (wake - now) / 1000)
        self._deliver(self._core.drain_completions())

    def _start(self, send: ProduceSend) -> None:
        task = asyncio.get_running_loop().create_task(self._send(send))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _send(self, send: ProduceSend) -> None:
        request = protocol.produce_request(
            [(b.topic, b.partition, b.leader_epoch, b.records) for b in send.batches],
            acks=send.acks,
            timeout_ms=send.timeout_ms,
        )
        try:
            response = await self._pool.conn(send.endpoint).call(
                "Produce", request, timeout_ms=send.timeout_ms + DEADLINE_MARGIN_MS
            )
        except RaftmqError as e:
            if send.acks != 0:
                self._core.on_produce_failure(send.request_id, e, now_ms=now_ms())
        else:
            if send.acks != 0:
                results = [
                    PartitionResult(r.topic, r.partition, r.base_offset, r.error)
                    for r in protocol.produce_results(response)
                ]
                self._core.on_produce_response(send.request_id, results, now_ms=now_ms())
        self._wakeup.set()

    async def _init_producer_id(self, producer_id: int, producer_epoch: int) -> None:
        try:
            new_id, new_epoch = await self._pool.init_producer_id(producer_id, producer_epoch)
        except RaftmqError as e:
            _log.info("writer.producer_id_failed", error=str(e))
            self._core.on_producer_id_failure()
            await asyncio.sleep(METADATA_BACKOFF_MS / 1000)
            return
        self._core.on_producer_id(new_id, new_epoch)

    async def _refresh_metadata(self, topics: set[str]) -> None:
        failure: RaftmqError | None = None
        try:
            await self._pool.fetch_metadata(
                sorted(topics), allow_auto_topic_creation=self.allow_auto_topic_creation
            )
        except RaftmqError as e:
            failure = e
        now = now_ms()
        if self._pool.metadata is not None:
            self._core.on_metadata(self._pool.metadata, now_ms=now)
        if failure is not None:
            self._core.on_metadata_failure(topics, failure, now_ms=now)
        if failure is not None or self._core.metadata_wanted() & topics:
            self._next_metadata_ms = now + self._metadata_backoff_ms
            self._metadata_backoff_ms = min(METADATA_BACKOFF_MS_MAX, self._metadata_backoff_ms * 2)
        else:
            self._metadata_backoff_ms = METADATA_BACKOFF_MS
        self._wakeup.set()

    def _deliver(self, completions: list[Completion]) -> None:
        for completion in completions:
            call = completion.ticket
            assert isinstance(call, _AsyncCall)
            if self.completion is not None:
                try:
                    self.completion(completion.messages, completion.error)
                except Exception:
                    _log.exception("writer.completion_failed")
            call.add(completion)
        if completions:
            self._drained.set()
