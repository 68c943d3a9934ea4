"""The client library against brokers that misbehave on purpose, in this process: a socket
that accepts connections and never answers (a broker that is up and stuck), and fake
brokers of a one-topic cluster that stall produce requests, name another broker as the
leader, or answer an admin request with CONTROLLER_UNAVAILABLE once.

What they check: every operation is bounded by its own timeout and names the last error;
close() delivers every outcome (in flight: maybe written; not sent: not written); leader
hints route retries and metadata refreshes; AsyncAdmin fails over as Admin does."""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from raftmq import AsyncAdmin, AsyncReader, AsyncWriter, Message, Reader, WriteError, Writer, wire
from raftmq.client import protocol
from raftmq.client.async_brokers import AsyncBrokerPool
from raftmq.client.brokers import BrokerPool
from raftmq.client.conn import now_ms
from raftmq.client.deadlines import DEADLINE_MARGIN_MS
from raftmq.errors import ErrorCode, OutcomeUnknownError, RaftmqError, WriterClosedError
from raftmq.local_cluster import wait_until
from raftmq.metadata import NO_LEADER, BrokerRegistration, PartitionRecord, TopicRecord
from raftmq.record_batch import encode_batch, read_header
from raftmq.topic_config import TopicConfig
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc
from raftmq.v1 import controller_pb2 as cpb

pytestmark = pytest.mark.cluster

STALL_S_MAX = 10.0  # a stalled call is released at teardown, or by then


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """HOST:PORT of a socket that listens (the kernel completes up to 16 connections) and
    never reads or answers: calls to it run into their deadline. Closed at the end."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


class FakeBroker(broker_pb2_grpc.BrokerServiceServicer):
    """One broker of a cluster with one topic, "t", that behaves as a test sets: who it
    says leads each partition (`leaders`: (broker id or NO_LEADER, leader epoch) per
    partition), what it answers to Produce (`produce`: "accept", "stall", or
    ("not_leader", id)) and Fetch (`fetch`: "serve", "stall", or ("not_leader", id)). It
    counts its calls and keeps the produce and fetch requests."""

    def __init__(self, broker_id: int) -> None:
        self.broker_id = broker_id
        self.endpoint = ""
        self.cluster: dict[int, str] = {}  # broker id -> HOST:PORT, set by the fixture
        self.leaders: list[tuple[int, int]] = [(broker_id, 0)]
        self.produce: str | tuple[str, int] = "accept"
        self.fetch: str | tuple[str, int] = "serve"
        self.admin_failures = 0  # CreateTopic answers CONTROLLER_UNAVAILABLE this often
        self.streams = True  # False: no ProduceStream or FetchStream (an older broker)
        self.release = threading.Event()
        self.requests: list[Any] = []
        self._calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._next_offset = 0

    def calls(self, method: str) -> int:
        with self._lock:
            return self._calls[method]

    def _count(self, method: str, request: Any = None) -> None:
        with self._lock:
            self._calls[method] += 1
            if request is not None:
                self.requests.append(request)

    def _not_leader(self, leader: int) -> Any:
        return wire.error_to_pb(
            ErrorCode.NOT_LEADER_OR_FOLLOWER,
            f"broker {self.broker_id} is not the leader",
            leader_id=leader,
            leader_endpoint=wire.parse_host_port(self.cluster[leader]),
        )

    def Metadata(self, request: Any, context: Any) -> pb.MetadataResponse:
        self._count("Metadata")
        brokers = [
            wire.broker_to_pb(BrokerRegistration(i, *wire.parse_host_port(e), "", "x", 1, False))
            for i, e in sorted(self.cluster.items())
        ]
        partitions = tuple(
            PartitionRecord((1, 2), (1, 2) if leader == NO_LEADER else (leader,), leader, e, e)
            for leader, e in self.leaders
        )
        topic = TopicRecord("t", b"t" * 16, TopicConfig(), partitions)
        return pb.MetadataResponse(
            brokers=brokers, topics=[wire.topic_to_pb(topic)], metadata_version=1
        )

    def InitProducerId(self, request: Any, context: Any) -> pb.InitProducerIdResponse:
        self._count("InitProducerId")
        return pb.InitProducerIdResponse(error=wire.ok_pb(), producer_id=7, producer_epoch=0)

    def Produce(self, request: Any, context: Any) -> pb.ProduceResponse:
        self._count("Produce", request)
        if self.produce == "stall":
            self.release.wait(STALL_S_MAX)
            return pb.ProduceResponse()
        response = pb.ProduceResponse()
        for data in request.partitions:
            if isinstance(self.produce, tuple):
                response.partitions.add(
                    topic=data.topic,
                    partition=data.partition,
                    error=self._not_leader(self.produce[1]),
                    base_offset=-1,
                )
                continue
            with self._lock:
                base_offset = self._next_offset
                self._next_offset += read_header(bytes(data.records)).record_count
            response.partitions.add(
                topic=data.topic,
                partition=data.partition,
                error=wire.ok_pb(),
                base_offset=base_offset,
            )
        return response

    def ProduceStream(
        self, request_iterator: Iterator[pb.ProduceStreamRequest], context: Any
    ) -> Iterator[pb.ProduceStreamResponse]:
        """The Writer's path: each request answered in turn as Produce answers it (a
        stalled one stalls the stream behind it). With `streams` False, it answers as a
        broker from before ProduceStream would: UNIMPLEMENTED, before reading anything."""
        self._count("ProduceStream")
        if not self.streams:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        for item in request_iterator:
            response = self.Produce(item.request, context)
            if item.request.acks != 0:
                yield pb.ProduceStreamResponse(
                    correlation_id=item.correlation_id, response=response
                )

    def Fetch(self, request: Any, context: Any) -> pb.FetchResponse:
        self._count("Fetch", request)
        return self._fetch_response(request)

    def _fetch_response(self, request: Any) -> pb.FetchResponse:
        if self.fetch == "stall":
            self.release.wait(STALL_S_MAX)
        response = pb.FetchResponse()
        for data in request.partitions:
            if isinstance(self.fetch, tuple):
                response.partitions.add(
                    topic=data.topic,
                    partition=data.partition,
                    error=self._not_leader(self.fetch[1]),
                )
                continue
            records = encode_batch([Message(b"served")]) if data.fetch_offset == 0 else b""
            response.partitions.add(
                topic=data.topic,
                partition=data.partition,
                error=wire.ok_pb(),
                records=records,
                high_watermark=1,
                log_start_offset=0,
                log_end_offset=1,
            )
        return response

    def FetchStream(
        self, request_iterator: Iterator[pb.FetchStreamRequest], context: Any
    ) -> Iterator[pb.FetchStreamResponse]:
        """The AsyncReader's path: each fetch answered in turn as Fetch answers it. With
        `streams` False: UNIMPLEMENTED, as ProduceStream."""
        self._count("FetchStream")
        if not self.streams:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        for item in request_iterator:
            self._count("FetchStream request", item.request)
            yield pb.FetchStreamResponse(
                correlation_id=item.correlation_id, response=self._fetch_response(item.request)
            )

    def CreateTopic(self, request: Any, context: Any) -> cpb.CreateTopicResponse:
        self._count("CreateTopic")
        with self._lock:
            fail = self.admin_failures > 0
            self.admin_failures -= int(fail)
        if fail:
            return cpb.CreateTopicResponse(
                error=wire.error_to_pb(ErrorCode.CONTROLLER_UNAVAILABLE, "electing a leader")
            )
        partitions = (PartitionRecord((1,), (1,), 1, 0, 0),)
        topic = TopicRecord(request.name, b"n" * 16, TopicConfig(), partitions)
        return cpb.CreateTopicResponse(error=wire.ok_pb(), topic=wire.topic_to_pb(topic))


@pytest.fixture
def fakes() -> Iterator[list[FakeBroker]]:
    """Two fake brokers (ids 1 and 2) on 127.0.0.1, each knowing the other; stopped at
    the end, their stalled calls released."""
    servicers = [FakeBroker(1), FakeBroker(2)]
    servers = []
    for servicer in servicers:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=wire.GRPC_OPTIONS)
        broker_pb2_grpc.add_BrokerServiceServicer_to_server(servicer, server)
        servicer.endpoint = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        servers.append(server)
    for servicer in servicers:
        servicer.cluster = {s.broker_id: s.endpoint for s in servicers}
    try:
        yield servicers
    finally:
        for servicer in servicers:
            servicer.release.set()
        for server in servers:
            server.stop(grace=None).wait(5)


def only_cause(error: BaseException | None) -> RaftmqError:
    """The cause of a one-message WriteError."""
    assert isinstance(error, WriteError), error
    [(_, cause)] = error.errors
    return cause


def only_cause_of(error: BaseException | None) -> RaftmqError:
    """The one cause every message of a WriteError failed with."""
    assert isinstance(error, WriteError), error
    causes = {id(cause): cause for _, cause in error.errors}
    [cause] = causes.values()
    return cause


# ---------------------------------------------------------------- time bounds


def test_a_write_to_a_broker_that_never_answers_fails_within_its_timeout(
    silent_broker: str,
) -> None:
    started = time.monotonic()
    with (
        pytest.raises(WriteError) as e,
        Writer([silent_broker], topic="t", write_timeout_ms=1_000) as writer,
    ):
        writer.write_messages(Message("x"))
    elapsed_s = time.monotonic() - started
    assert elapsed_s < 4, elapsed_s  # not InitProducerId's 10 s plus metadata's 5 s
    cause = only_cause(e.value)
    # The last transport error, not a guess (it said UNKNOWN_TOPIC_OR_PARTITION): the call's
    # deadline, or the connection attempt given up after wire.CONNECT_ATTEMPT_MS_MIN (as
    # long as this write's timeout: whichever ends first), both naming the broker.
    assert cause.code == ErrorCode.BROKER_NOT_AVAILABLE
    assert silent_broker in cause.message
    assert "DEADLINE_EXCEEDED" in cause.message or "UNAVAILABLE" in cause.message, cause.message


def test_a_produce_stream_to_a_broker_that_never_answers_fails_at_the_deadline(
    silent_broker: str,
) -> None:
    pool = BrokerPool([silent_broker])
    answers: list[pb.ProduceResponse | RaftmqError] = []
    request = pb.ProduceRequest(acks=-1, timeout_ms=100)
    try:
        stream = pool.produce_stream(silent_broker)
        stream.send(request, timeout_ms=300, on_answer=answers.append)
        sent_ms = now_ms()
        # Nothing is due before the deadline; expire_streams says when it is.
        next_ms = pool.expire_streams(sent_ms)
        assert next_ms is not None and next_ms >= sent_ms
        assert not answers and not stream.failed
        wait_until(
            lambda: pool.expire_streams(now_ms()) is None and bool(answers),
            timeout_s=5,
            what="the request's deadline to fail the stream",
        )
        assert now_ms() - sent_ms >= 300
        [failure] = answers
        assert isinstance(failure, RaftmqError)
        assert failure.code == ErrorCode.BROKER_NOT_AVAILABLE
        assert "no answer by the request's deadline" in failure.message
        assert stream.failed
        # The next use opens a new stream; closing the pool answers what it has pending.
        fresh = pool.produce_stream(silent_broker)
        assert fresh is not stream
        fresh.send(request, timeout_ms=60_000, on_answer=answers.append)
    finally:
        pool.close()
    assert len(answers) == 2
    closed = answers[1]
    assert isinstance(closed, RaftmqError) and "closed" in closed.message


def test_an_async_produce_stream_to_a_broker_that_never_answers_fails_at_the_deadline(
    silent_broker: str,
) -> None:
    answers: list[pb.ProduceResponse | RaftmqError] = []
    request = pb.ProduceRequest(acks=-1, timeout_ms=100)

    async def main() -> None:
        pool = AsyncBrokerPool([silent_broker])
        try:
            stream = pool.produce_stream(silent_broker)
            assert stream is not None
            stream.send(request, timeout_ms=300, on_answer=answers.append)
            sent_ms = now_ms()
            next_ms = pool.expire_streams(sent_ms)
            assert next_ms is not None and next_ms >= sent_ms
            assert not answers and not stream.failed
            for _ in range(500):  # bound: 5 s
                if pool.expire_streams(now_ms()) is None and answers:
                    break
                await asyncio.sleep(0.01)
            assert now_ms() - sent_ms >= 300
            [failure] = answers
            assert isinstance(failure, RaftmqError)
            assert failure.code == ErrorCode.BROKER_NOT_AVAILABLE
            assert "no answer by the request's deadline" in failure.message
            assert stream.failed
            fresh = pool.produce_stream(silent_broker)
            assert fresh is not None and fresh is not stream
            fresh.send(request, timeout_ms=60_000, on_answer=answers.append)
        finally:
            await pool.close()
        # Closing the pool answered what the fresh stream had pending, and ended its task.
        assert len(answers) == 2
        closed = answers[1]
        assert isinstance(closed, RaftmqError) and "closed" in closed.message
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("raftmq-ProduceStream")]
        assert tasks == []

    asyncio.run(main())


def test_a_read_from_a_broker_that_never_answers_times_out_in_time(silent_broker: str) -> None:
    with Reader([silent_broker], "t") as reader:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="DEADLINE_EXCEEDED"):
            reader.read_message(timeout_ms=500)
        elapsed_s = time.monotonic() - started
        assert elapsed_s < 2.5, elapsed_s  # not the metadata call's 5 s
        with pytest.raises(TimeoutError):
            reader.read_lag(timeout_ms=300)


def test_the_async_twins_are_bounded_the_same_way(silent_broker: str) -> None:
    async def main() -> None:
        started = time.monotonic()
        async with AsyncWriter([silent_broker], topic="t", write_timeout_ms=1_000) as writer:
            with pytest.raises(WriteError) as e:
                await writer.write_messages(Message("x"))
        assert time.monotonic() - started < 4
        assert only_cause(e.value).code == ErrorCode.BROKER_NOT_AVAILABLE
        async with AsyncReader([silent_broker], "t") as reader:
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="DEADLINE_EXCEEDED"):
                await reader.read_message(timeout_ms=500)
            assert time.monotonic() - started < 2.5

    asyncio.run(main())


def test_init_producer_id_failures_are_not_doubled(silent_broker: str) -> None:
    pool = BrokerPool([silent_broker])
    try:
        with pytest.raises(RaftmqError) as e:
            pool.init_producer_id(-1, -1, timeout_ms=300)
    finally:
        pool.close()
    assert str(e.value).count("BROKER_NOT_AVAILABLE") == 1, str(e.value)
    assert "InitProducerId failed: DEADLINE_EXCEEDED" in str(e.value)


# ---------------------------------------------------------------- close


def test_close_delivers_an_unanswered_async_write(silent_broker: str) -> None:
    # The audit's case: async_=True against a broker that never answers; close() used to
    # return with the future pending and the callback never run.
    outcomes: list[tuple[int, RaftmqError | None]] = []
    writer = Writer(
        [silent_broker],
        topic="t",
        async_=True,
        write_timeout_ms=1_000,
        completion=lambda messages, error: outcomes.append((len(messages), error)),
    )
    future = writer.write_messages(Message("a"), Message("b"))
    writer.close()
    assert future.done()
    assert [n for n, _ in outcomes] == [2]
    assert only_cause_of(future.exception()).code == ErrorCode.BROKER_NOT_AVAILABLE


def test_close_fails_what_is_left_in_flight_as_maybe_written_and_the_rest_as_not_written(
    fakes: list[FakeBroker],
) -> None:
    leader = fakes[0]
    leader.leaders = [(1, 0), (NO_LEADER, 0)]  # partition 1 has no leader: nothing is sent
    leader.produce = "stall"
    outcomes: list[tuple[bytes | None, RaftmqError | None]] = []
    writer = Writer(
        [leader.endpoint],
        topic="t",
        async_=True,
        write_timeout_ms=60_000,
        completion=lambda messages, error: outcomes.append((messages[0].value, error)),
    )
    in_flight = writer.write_messages(Message("sent", partition=0))
    not_sent = writer.write_messages(Message("not sent", partition=1))
    wait_until(lambda: leader.calls("Produce") == 1, timeout_s=10, what="the produce request")
    started = time.monotonic()
    writer.close(timeout_ms=200)
    assert time.monotonic() - started < 5
    assert in_flight.done() and not_sent.done()
    assert isinstance(only_cause(in_flight.exception()), OutcomeUnknownError)
    assert isinstance(only_cause(not_sent.exception()), WriterClosedError)
    assert sorted(v or b"" for v, _ in outcomes) == [b"not sent", b"sent"]


def test_async_writer_close_fails_what_is_left_the_same_way(fakes: list[FakeBroker]) -> None:
    leader = fakes[0]
    leader.leaders = [(1, 0), (NO_LEADER, 0)]
    leader.produce = "stall"
    outcomes: list[RaftmqError | None] = []

    async def main() -> None:
        writer = AsyncWriter(
            [leader.endpoint],
            topic="t",
            async_=True,
            write_timeout_ms=60_000,
            completion=lambda messages, error: outcomes.append(error),
        )
        in_flight = await writer.write_messages(Message("sent", partition=0))
        not_sent = await writer.write_messages(Message("not sent", partition=1))
        for _ in range(1_000):  # bound: 10 s
            if leader.calls("Produce") == 1:
                break
            await asyncio.sleep(0.01)
        await writer.close(timeout_ms=200)
        assert in_flight.done() and not_sent.done()
        assert isinstance(only_cause(in_flight.exception()), OutcomeUnknownError)
        assert isinstance(only_cause(not_sent.exception()), WriterClosedError)

    asyncio.run(main())
    assert len(outcomes) == 2


# ---------------------------------------------------------------- leader hints


def test_a_produce_retry_goes_to_the_leader_a_refusal_names(fakes: list[FakeBroker]) -> None:
    stale, leader = fakes
    # The bootstrap broker's metadata lags (it shows itself as the leader) but its refusal
    # names broker 2: asking the bootstrap broker again would loop until max_attempts.
    stale.produce = ("not_leader", 2)
    leader.leaders = [(2, 1)]
    with Writer([stale.endpoint], topic="t", max_attempts=3, linger_ms=0) as writer:
        sent = [Message("m")]
        writer.write_messages(*sent)
    assert sent[0].offset == 0
    assert (stale.calls("Produce"), leader.calls("Produce")) == (1, 1)
    assert leader.calls("Metadata") >= 1  # asked first for the refresh


def test_a_writer_falls_back_to_unary_produce_on_a_broker_without_produce_stream(
    fakes: list[FakeBroker],
) -> None:
    old = fakes[0]
    old.streams = False
    with Writer([old.endpoint], topic="t", linger_ms=0) as writer:
        first = [Message("a")]
        writer.write_messages(*first)  # the stream's UNIMPLEMENTED: retried unary
        later = [Message("b"), Message("c")]
        for message in later:
            writer.write_messages(message)
    assert [m.offset for m in first + later] == [0, 1, 2]
    assert old.calls("ProduceStream") == 1  # asked once, then remembered
    assert old.calls("Produce") == 3
    assert [read_header(bytes(r.partitions[0].records)).record_count for r in old.requests] == [
        1,
        1,
        1,
    ]


def test_an_async_writer_pipelines_on_one_produce_stream_per_broker(
    fakes: list[FakeBroker],
) -> None:
    leader = fakes[0]

    async def main() -> list[Message]:
        async with AsyncWriter([leader.endpoint], topic="t", linger_ms=0) as writer:
            sent = [Message(f"m{i}", partition=0) for i in range(5)]
            for message in sent:
                await writer.write_messages(message)
            return sent

    sent = asyncio.run(main())
    assert [m.offset for m in sent] == [0, 1, 2, 3, 4]
    assert (leader.calls("ProduceStream"), leader.calls("Produce")) == (1, 5)  # all on it


def test_an_async_writer_falls_back_to_unary_produce_on_a_broker_without_produce_stream(
    fakes: list[FakeBroker],
) -> None:
    old = fakes[0]
    old.streams = False

    async def main() -> list[Message]:
        async with AsyncWriter([old.endpoint], topic="t", linger_ms=0) as writer:
            sent = [Message("a"), Message("b"), Message("c")]
            for message in sent:  # the first: the stream's UNIMPLEMENTED, retried unary
                await writer.write_messages(message)
            return sent

    sent = asyncio.run(main())
    assert [m.offset for m in sent] == [0, 1, 2]
    # Asked once, then remembered; or more: when grpc.aio's first write races the broker's
    # UNIMPLEMENTED, the call ends INTERNAL ("Failed execute_batch") instead, and the
    # request is retried on a new stream, until one sees UNIMPLEMENTED.
    assert old.calls("ProduceStream") >= 1
    assert old.calls("Produce") == 3


def test_an_async_reader_fetches_on_one_fetch_stream_per_broker(
    fakes: list[FakeBroker],
) -> None:
    leader = fakes[0]

    async def main() -> tuple[Message, int]:
        async with AsyncReader([leader.endpoint], "t", 0, max_wait_ms=50, start_offset=0) as reader:
            message = await reader.read_message(timeout_ms=5_000)
            with pytest.raises(TimeoutError):  # fetches past the end: answered empty
                await reader.read_message(timeout_ms=300)
            return message, reader.offset

    message, offset = asyncio.run(main())
    assert (message.value, message.offset, offset) == (b"served", 0, 1)
    fetches = [r for r in leader.requests if isinstance(r, pb.FetchRequest)]
    assert len(fetches) >= 2 and fetches[-1].partitions[0].fetch_offset == 1
    # One stream opened, every fetch on it, none unary.
    assert leader.calls("FetchStream") == 1
    assert (leader.calls("FetchStream request"), leader.calls("Fetch")) == (len(fetches), 0)


def test_an_async_reader_falls_back_to_unary_fetch_on_a_broker_without_fetch_stream(
    fakes: list[FakeBroker],
) -> None:
    old = fakes[0]
    old.streams = False

    async def main() -> tuple[Message, int]:
        async with AsyncReader([old.endpoint], "t", 0, max_wait_ms=50, start_offset=0) as reader:
            message = await reader.read_message(timeout_ms=5_000)
            asked = old.calls("FetchStream")
            with pytest.raises(TimeoutError):  # more fetches past the end, all unary
                await reader.read_message(timeout_ms=300)
            return message, asked

    message, asked = asyncio.run(main())
    assert (message.value, message.offset) == (b"served", 0)
    # As the AsyncWriter's fallback: asked once, or again after an INTERNAL race; then
    # remembered: the later fetches did not ask again.
    assert 1 <= asked <= 3 and old.calls("FetchStream") == asked
    assert old.calls("FetchStream request") == 0
    assert old.calls("Fetch") >= 2


def test_an_async_fetch_stream_fails_only_when_the_broker_is_overdue(
    fakes: list[FakeBroker],
) -> None:
    """A broker that stops answering fetches. A caller's own deadline, shorter than
    max_wait_ms and the round trip's margin, gives up only its request: the stream stays.
    Past that the broker is overdue: the stream fails, and a fresh one serves again."""
    leader = fakes[0]
    leader.fetch = "stall"
    patient = protocol.fetch_request(
        [("t", 0, 0, -1)],
        max_wait_ms=5_000,
        min_bytes=1,
        max_bytes=1 << 20,
        partition_max_bytes=1 << 20,
    )
    overdue = protocol.fetch_request(
        [("t", 0, 0, -1)],
        max_wait_ms=100,
        min_bytes=1,
        max_bytes=1 << 20,
        partition_max_bytes=1 << 20,
    )

    async def main() -> None:
        pool = AsyncBrokerPool([leader.endpoint])
        try:
            stream = pool.fetch_stream(leader.endpoint)
            assert stream is not None
            started_ms = now_ms()
            with pytest.raises(RaftmqError) as e:
                await pool.fetch(leader.endpoint, patient, timeout_ms=300)
            assert 300 <= now_ms() - started_ms < 2_000
            assert e.value.code == ErrorCode.BROKER_NOT_AVAILABLE
            assert "FetchStream failed: DEADLINE_EXCEEDED" in e.value.message
            assert pool.fetch_stream(leader.endpoint) is stream and not stream.failed

            timeout_ms = overdue.max_wait_ms + DEADLINE_MARGIN_MS
            started_ms = now_ms()
            with pytest.raises(RaftmqError) as e:
                await pool.fetch(leader.endpoint, overdue, timeout_ms=timeout_ms)
            assert timeout_ms <= now_ms() - started_ms < timeout_ms + 2_000
            assert e.value.code == ErrorCode.BROKER_NOT_AVAILABLE
            assert "FetchStream: no answer by the request's deadline" in e.value.message
            assert stream.failed

            leader.fetch = "serve"
            leader.release.set()
            fresh = pool.fetch_stream(leader.endpoint)  # the failed one is replaced
            assert fresh is not None and fresh is not stream and not fresh.failed
            response = await pool.fetch(leader.endpoint, overdue, timeout_ms=timeout_ms)
            [result] = protocol.fetch_results(response)
            assert result.error is None and result.high_watermark == 1
        finally:
            await pool.close()
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("raftmq-FetchStream")]
        assert tasks == []

    asyncio.run(main())
    assert leader.calls("FetchStream") == 2 and leader.calls("Fetch") == 0


def test_a_reader_asks_the_leader_a_refusal_names_for_metadata_first(
    fakes: list[FakeBroker],
) -> None:
    stale, leader = fakes
    stale.fetch = ("not_leader", 2)  # its metadata still says broker 1 leads (epoch 0)
    leader.leaders = [(2, 1)]  # the leader knows: broker 2, epoch 1
    with Reader([stale.endpoint], "t", 0, start_offset=0) as reader:
        assert reader.read_message(timeout_ms=5_000).value == b"served"
    assert leader.calls("Metadata") >= 1
    [fetched] = [r for r in leader.requests if isinstance(r, pb.FetchRequest)]
    assert fetched.partitions[0].current_leader_epoch == 1


# ---------------------------------------------------------------- admin failover


def test_async_admin_retries_controller_unavailable_as_admin_does(
    fakes: list[FakeBroker],
) -> None:
    broker = fakes[0]
    broker.admin_failures = 1

    async def main() -> None:
        async with AsyncAdmin([broker.endpoint]) as admin:
            created = await admin.create_topic("new", partitions=1)
        assert created.name == "new"

    asyncio.run(main())
    assert broker.calls("CreateTopic") == 2
