"""The Writer's core, driven by hand: batching, sequencing, retries and outcomes."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from raftmq import WriteError
from raftmq.client.balancers import RoundRobin
from raftmq.client.producer_core import (
    Completion,
    MetadataRequest,
    PartitionResult,
    ProducerCore,
    ProducerIdRequest,
    ProduceSend,
    WriterConfig,
)
from raftmq.client.protocol import ClusterMetadata
from raftmq.errors import ErrorCode, OutcomeUnknownError, RaftmqError, WriterClosedError
from raftmq.message import TIMESTAMP_UNSET, Message
from raftmq.metadata import BrokerRegistration, PartitionRecord, TopicRecord
from raftmq.record_batch import decode_batch, read_header
from raftmq.topic_config import TopicConfig


def metadata(
    partitions: int = 2, *, version: int = 1, leader: int = 1, leader_epoch: int = 0
) -> ClusterMetadata:
    brokers = {
        b: BrokerRegistration(b, "127.0.0.1", 9000 + b, "", "x", 1, fenced=False) for b in (1, 2)
    }
    parts = tuple(
        PartitionRecord((1, 2), (1, 2), leader, leader_epoch, leader_epoch)
        for _ in range(partitions)
    )
    return ClusterMetadata(
        version, brokers, {"t": TopicRecord("t", b"x" * 16, TopicConfig(), parts)}
    )


def core(**config: object) -> ProducerCore:
    c = ProducerCore(WriterConfig(topic="t", **config), RoundRobin())  # type: ignore[arg-type]
    c.on_metadata(metadata(), now_ms=0)
    if c.config.idempotent:
        c.on_producer_id(1000, 0)
    return c


def ok(send: ProduceSend, offsets: Sequence[int] | None = None) -> list[PartitionResult]:
    return [
        PartitionResult(b.topic, b.partition, offsets[i] if offsets else 100 * i, None)
        for i, b in enumerate(send.batches)
    ]


def messages(n: int, partition: int | None = 0) -> list[Message]:
    return [Message(f"m{i}", partition=partition) for i in range(n)]


def one_message_sent() -> tuple[ProducerCore, ProduceSend]:
    """A core with one batch of one message, sent at 0 ms to the leader of partition 0."""
    c = core(batch_size=1)
    c.add(messages(1), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    return c, send


def test_a_batch_is_sealed_by_size_and_by_linger() -> None:
    c = core(batch_size=3, linger_ms=5)
    c.add(messages(4), "call", now_ms=0, wall_ms=1_700_000_000_000)
    [send] = c.poll(now_ms=0)  # 3 messages: full
    assert [read_header(b.records).record_count for b in send.batches] == [3]
    c.on_produce_response(send.request_id, ok(send), now_ms=1)
    assert c.poll(now_ms=4) == []  # 1 message lingers
    [send] = c.poll(now_ms=5)
    assert read_header(send.batches[0].records).record_count == 1


def test_a_blocking_caller_does_not_linger() -> None:
    c = core(linger_ms=1_000)
    c.add(messages(1), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    assert len(c.poll(now_ms=0)) == 1


def test_sequences_per_partition_and_five_in_flight() -> None:
    c = core(batch_size=1)
    msgs = messages(7)
    c.add(msgs, "call", now_ms=0, wall_ms=1_700_000_000_000)
    [send] = c.poll(now_ms=0)
    headers = [read_header(b.records) for b in send.batches]
    assert [h.base_sequence for h in headers] == [0, 1, 2, 3, 4]  # 2 wait: 5 in flight
    assert {(h.producer_id, h.producer_epoch) for h in headers} == {(1000, 0)}
    # Five batches of one partition in one request: each result is its own batch's.
    c.on_produce_response(send.request_id, ok(send, [0, 1, 2, 3, 4]), now_ms=1)
    [send] = c.poll(now_ms=1)
    assert [read_header(b.records).base_sequence for b in send.batches] == [5, 6]
    c.on_produce_response(send.request_id, ok(send, [5, 6]), now_ms=2)
    assert [m.offset for m in msgs] == [0, 1, 2, 3, 4, 5, 6]


def test_messages_behind_a_full_window_join_one_open_batch() -> None:
    """Kafka's accumulator: past its linger, an open batch stays open while the partition
    has five batches in flight, so the messages that arrive meanwhile leave as one batch
    when an answer frees the window, not as a queue of one-message batches."""
    c = core(linger_ms=0, pipeline_partial_batches=True)
    for i in range(5):
        c.add(messages(1), f"call{i}", now_ms=i, wall_ms=1_700_000_000_000)
        [send] = c.poll(now_ms=i)
        assert [read_header(b.records).record_count for b in send.batches] == [1]
    fifth = send
    for i in range(5, 12):
        c.add(messages(1), f"call{i}", now_ms=i, wall_ms=1_700_000_000_000)
        assert c.poll(now_ms=i) == []
        assert c.next_wakeup_ms(now_ms=i) > i  # no busy wakeups while held
    c.on_produce_response(fifth.request_id, ok(fifth), now_ms=12)  # frees one slot
    [send] = c.poll(now_ms=12)
    [batch] = send.batches
    assert read_header(batch.records).record_count == 7


def test_a_partial_batch_waits_while_its_partition_has_one_in_flight_and_a_full_one_goes() -> None:
    """The default (Nagle's rule, by batch): what is not a full batch is sent only while
    nothing of its partition is in flight, and meanwhile takes what arrives; a full batch
    is pipelined up to the window, and another partition is not held up."""
    c = core(linger_ms=0, batch_size=3)
    c.add(messages(1), "first", now_ms=0, wall_ms=1_700_000_000_000)
    [first] = c.poll(now_ms=0)
    assert [b.partition for b in first.batches] == [0]
    c.add(messages(2), "held", now_ms=1, wall_ms=1_700_000_000_000)
    assert c.poll(now_ms=1) == []  # partial, and partition 0 has a batch in flight
    c.add(messages(1, partition=1), "elsewhere", now_ms=1, wall_ms=1_700_000_000_000)
    [elsewhere] = c.poll(now_ms=1)  # partition 1 has nothing in flight
    assert [b.partition for b in elsewhere.batches] == [1]
    c.add(messages(1), "fills it", now_ms=2, wall_ms=1_700_000_000_000)
    [full] = c.poll(now_ms=2)  # 3 messages: full, so pipelined behind the first
    assert [read_header(b.records).record_count for b in full.batches] == [3]
    assert read_header(full.batches[0].records).base_sequence == 1


def test_a_window_of_one_batch_holds_later_messages_in_one_open_batch() -> None:
    """inflight_batches_max=1 (kafka-go's Writer: one batch per partition at a time): while
    a batch is in flight, what arrives waits in one open batch, sent when the answer
    comes; sequences stay in order."""
    c = core(linger_ms=0, inflight_batches_max=1)
    c.add(messages(1), "first", now_ms=0, wall_ms=1_700_000_000_000)
    [first] = c.poll(now_ms=0)
    for i in range(1, 4):
        c.add(messages(1), f"call{i}", now_ms=i, wall_ms=1_700_000_000_000)
        assert c.poll(now_ms=i) == []
    c.on_produce_response(first.request_id, ok(first), now_ms=4)
    [send] = c.poll(now_ms=4)
    [batch] = send.batches
    header = read_header(batch.records)
    assert (header.record_count, header.base_sequence) == (3, 1)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"inflight_batches_max": 0}, r"must be in \[1, 5\], got 0 \(the leader remembers"),
        ({"inflight_batches_max": 6}, r"must be in \[1, 5\], got 6"),
        (
            {"inflight_batches_max": 2, "idempotent": False},
            r"must be in \[1, 1\], got 2 \(without idempotence, a retry",
        ),
    ],
)
def test_the_in_flight_window_is_checked(config: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        WriterConfig(topic="t", **config)  # type: ignore[arg-type]


def test_the_in_flight_window_defaults_to_five_idempotent_and_one_without() -> None:
    assert WriterConfig(topic="t").inflight_max == 5
    assert WriterConfig(topic="t", idempotent=False, required_acks=1).inflight_max == 1
    assert WriterConfig(topic="t", inflight_batches_max=2).inflight_max == 2


def test_a_held_open_batch_still_expires_at_its_deadline() -> None:
    c = core(linger_ms=0, write_timeout_ms=1_000, pipeline_partial_batches=True)
    for i in range(5):
        c.add(messages(1), f"call{i}", now_ms=0, wall_ms=1_700_000_000_000)
        c.poll(now_ms=0)
    c.add(messages(1), "late", now_ms=10, wall_ms=1_700_000_000_000)
    assert c.poll(now_ms=10) == []
    assert c.next_wakeup_ms(now_ms=10) == 1_010
    c.poll(now_ms=1_010)
    expired = [x for x in c.drain_completions() if x.ticket == "late"]
    assert len(expired) == 1 and expired[0].error is not None


def test_results_pair_with_the_batches_of_one_partition_by_position() -> None:
    c = core(batch_size=10)
    msgs = messages(25)
    c.add(msgs, "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    assert [(b.topic, b.partition) for b in send.batches] == [("t", 0)] * 3
    c.on_produce_response(send.request_id, ok(send, [0, 10, 20]), now_ms=1)
    assert [m.offset for m in msgs] == list(range(25))
    assert [x.error for x in c.drain_completions()] == [None, None, None]


def test_an_answer_that_does_not_match_the_request_is_outcome_unknown() -> None:
    c = core(batch_size=1, max_attempts=1)
    c.add(messages(2), "call", now_ms=0, wall_ms=1_700_000_000_000)
    [send] = c.poll(now_ms=0)
    assert len(send.batches) == 2
    c.on_produce_response(send.request_id, ok(send, [0, 1])[:1], now_ms=1)  # one result
    completions = c.drain_completions()
    assert len(completions) == 2
    assert all(isinstance(x.error, OutcomeUnknownError) for x in completions)
    assert c.idle()


def test_a_retry_resends_the_same_bytes_one_at_a_time_then_completes() -> None:
    c = core(batch_size=1)
    msgs = messages(3)
    c.add(msgs, "call", now_ms=0, wall_ms=1_700_000_000_000)
    [first] = c.poll(now_ms=0)
    original = [b.records for b in first.batches]
    not_leader = RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "moved")
    c.on_produce_response(
        first.request_id,
        [PartitionResult("t", 0, -1, not_leader)] * 3,
        now_ms=1,
    )
    assert c.metadata_wanted() == {"t"}
    c.on_metadata(metadata(version=2), now_ms=2)
    assert c.poll(now_ms=2) == []  # backoff
    sent: list[bytes] = []
    now = 200
    for _ in range(3):  # recovering: one batch in flight at a time, in sequence order
        [send] = c.poll(now_ms=now)
        assert len(send.batches) == 1
        sent.append(send.batches[0].records)
        c.on_produce_response(send.request_id, ok(send, [len(sent) - 1]), now_ms=now)
        now += 1
    assert sent == original  # identical bytes: the leader can recognise a duplicate
    completions = c.drain_completions()  # one per batch
    assert [x.error for x in completions] == [None, None, None]
    assert [m.offset for m in msgs] == [0, 1, 2]
    assert c.idle()


def test_giving_up_on_a_batch_that_may_have_been_written_is_outcome_unknown() -> None:
    c = core(max_attempts=2)
    c.add(messages(1), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    c.on_produce_failure(
        send.request_id, RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "cut"), now_ms=1
    )
    c.on_metadata(metadata(version=2), now_ms=2)
    [send] = c.poll(now_ms=500)
    c.on_produce_response(
        send.request_id,
        [PartitionResult("t", 0, -1, RaftmqError(ErrorCode.NOT_ENOUGH_REPLICAS, "1 in sync"))],
        now_ms=501,
    )
    [completion] = c.drain_completions()
    assert isinstance(completion.error, OutcomeUnknownError)
    assert completion.error.cause is not None
    assert completion.error.cause.code == ErrorCode.NOT_ENOUGH_REPLICAS


def test_a_definite_refusal_fails_as_not_written() -> None:
    c = core()
    c.add(messages(2), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    too_large = RaftmqError(ErrorCode.MESSAGE_TOO_LARGE, "big")
    c.on_produce_response(send.request_id, [PartitionResult("t", 0, -1, too_large)], now_ms=1)
    [completion] = c.drain_completions()
    assert completion.error is too_large and len(completion.messages) == 2
    assert c.stats.errors == 2 and c.idle()


def test_messages_of_an_unknown_topic_fail_after_the_write_timeout() -> None:
    c2 = ProducerCore(
        WriterConfig(topic="missing", idempotent=False, write_timeout_ms=1_000), RoundRobin()
    )
    c2.add(messages(1, partition=None), "call", now_ms=0, wall_ms=1_700_000_000_000)
    assert c2.metadata_wanted() == {"missing"}
    request = c2.next_request(now_ms=0)
    assert isinstance(request, MetadataRequest) and request.topics == ("missing",)
    c2.on_metadata(metadata(), asked=request.topics, now_ms=1)  # answered: no such topic
    c2.poll(now_ms=999)
    assert c2.drain_completions() == []
    c2.poll(now_ms=1_000)
    [completion] = c2.drain_completions()
    assert completion.error is not None
    assert completion.error.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_a_sequence_lost_by_the_leader_bumps_the_epoch_and_restarts_sequences() -> None:
    c = core(batch_size=1)
    c.add(messages(2), "call", now_ms=0, wall_ms=1_700_000_000_000)
    [send] = c.poll(now_ms=0)
    oos = RaftmqError(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER, "expects 7")
    c.on_produce_response(send.request_id, [PartitionResult("t", 0, -1, oos)] * 2, now_ms=1)
    assert c.poll(now_ms=500) == []  # no sends until the epoch is bumped
    request = c.next_request(now_ms=500)
    assert isinstance(request, ProducerIdRequest)
    assert (request.producer_id, request.producer_epoch) == (1000, 0)
    c.on_producer_id(1000, 1)
    [send] = c.poll(now_ms=500)
    header = read_header(send.batches[0].records)
    assert (header.producer_epoch, header.base_sequence) == (1, 0)


def test_acks_zero_completes_when_sent() -> None:
    c = core(idempotent=False, required_acks=0)
    c.add(messages(3), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    assert send.acks == 0
    [completion] = c.drain_completions()
    assert completion.error is None and c.idle()


def test_an_idempotent_writer_needs_acks_all() -> None:
    with pytest.raises(ValueError, match="RequireAll"):
        WriterConfig(topic="t", required_acks=1)


def test_completions_are_per_call() -> None:
    c = core(batch_size=10)
    a, b = messages(2), messages(3)
    c.add(a, "a", now_ms=0, wall_ms=1_700_000_000_000)
    c.add(b, "b", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    assert len(send.batches) == 1  # one batch holds both calls' messages
    c.on_produce_response(send.request_id, ok(send, [10]), now_ms=1)
    completions: list[Completion] = c.drain_completions()
    assert {(x.ticket, len(x.messages)) for x in completions} == {("a", 2), ("b", 3)}
    assert [m.offset for m in a + b] == [10, 11, 12, 13, 14]


def test_an_explicit_partition_out_of_range_fails_at_once() -> None:
    c = core()
    c.add([Message("x", partition=7)], "call", now_ms=0, wall_ms=1_700_000_000_000)
    [completion] = c.drain_completions()
    assert completion.error is not None and "no partition 7" in completion.error.message


def test_one_call_of_several_topics_routes_each_message() -> None:
    """A call may mix topics, balanced and explicit partitions: each message goes to its
    own topic's partition, in order; the round robin runs on across topics; a partition
    the topic lacks fails at once and a topic without metadata waits for it, neither
    holding up the rest of the call."""
    brokers = {1: BrokerRegistration(1, "127.0.0.1", 9001, "", "x", 1, fenced=False)}
    topics = {
        name: TopicRecord(
            name,
            name.encode() * 16,
            TopicConfig(),
            tuple(PartitionRecord((1,), (1,), 1, 0, 0) for _ in range(count)),
        )
        for name, count in (("a", 2), ("b", 3))
    }
    c = ProducerCore(WriterConfig(idempotent=False, linger_ms=0), RoundRobin())
    c.on_metadata(ClusterMetadata(1, brokers, topics), now_ms=0)
    c.add(
        [
            Message("a0", topic="a"),  # turn 0 of the round robin: a-0
            Message("u0", topic="u"),  # no metadata: waits, takes no turn
            Message("b0", topic="b"),  # turn 1: b-1
            Message("a1", topic="a"),  # turn 2: a-0
            Message("bad", topic="a", partition=9),
            Message("b1", topic="b", partition=0),
            Message("b2", topic="b"),  # turn 3: b-0
        ],
        "call",
        now_ms=0,
        wall_ms=1_700_000_000_000,
    )
    [failed] = c.drain_completions()
    assert [m.value for m in failed.messages] == [b"bad"]
    assert failed.error is not None and "a has 2 partitions" in failed.error.message
    assert c.metadata_wanted() == {"u"}
    [send] = c.poll(now_ms=0)
    written = {
        (b.topic, b.partition): [m.value for m in decode_batch(b.records)] for b in send.batches
    }
    assert written == {("a", 0): [b"a0", b"a1"], ("b", 1): [b"b0"], ("b", 0): [b"b1", b"b2"]}


class _OneAtATime(RoundRobin):
    """RoundRobin's turns, but not RoundRobin itself: the core balances each message."""


@pytest.mark.parametrize("seed", range(8))
def test_a_round_robin_call_spread_in_bulk_makes_the_batches_of_one_message_at_a_time(
    seed: int,
) -> None:
    """`add` spreads a round-robin call of its topic's balanced messages in slices; any
    other call goes message by message. Both make the same batches, byte for byte, with
    batches sealed by count and by bytes in the middle of calls."""
    rng = random.Random(seed)
    calls = []
    for _ in range(30):
        call = []
        for i in range(rng.randint(1, 25)):
            value = b"v" * rng.choice((1, 10, 60))
            kind = rng.random()
            if kind < 0.05:
                call.append(Message(value, partition=rng.randrange(3)))
            elif kind < 0.1:
                call.append(Message(value, topic="t"))  # the Writer's topic, named
            else:
                call.append(
                    Message(value, timestamp_ms=1_000 + i if kind < 0.2 else TIMESTAMP_UNSET)
                )
        calls.append(call)

    def batches(balancer: RoundRobin) -> list[tuple[str, int, bytes]]:
        c = ProducerCore(
            WriterConfig(topic="t", batch_size=7, batch_bytes=400, idempotent=False),
            balancer,
        )
        c.on_metadata(metadata(3), now_ms=0)
        made = []
        for n, call in enumerate(calls):
            copies = [
                Message(m.value, topic=m.topic, partition=m.partition, timestamp_ms=m.timestamp_ms)
                for m in call
            ]
            c.add(copies, n, now_ms=0, wall_ms=1_700_000_000_000, linger=n % 2 == 0)
            # Bound: each send is answered, so the window reopens.
            while sends := c.poll(now_ms=n):
                for send in sends:
                    made += [(b.topic, b.partition, b.records) for b in send.batches]
                    c.on_produce_response(send.request_id, ok(send), now_ms=n)
        c.flush()
        for send in c.poll(now_ms=10_000):
            made += [(b.topic, b.partition, b.records) for b in send.batches]
        return made

    bulk, one_at_a_time = batches(RoundRobin()), batches(_OneAtATime())
    assert len(bulk) > 30
    assert bulk == one_at_a_time


def test_a_request_gets_at_most_the_request_timeout() -> None:
    c = core(request_timeout_ms=2_000, write_timeout_ms=30_000)
    c.add(messages(1), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    assert (send.timeout_ms, send.rpc_timeout_ms) == (2_000, 4_000)  # + the answer's margin
    c2 = core(request_timeout_ms=20_000, write_timeout_ms=5_000)
    c2.add(messages(1), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c2.poll(now_ms=1_000)
    # 4 s are left: the broker answers 2 s early, so that its answer arrives in time.
    assert (send.timeout_ms, send.rpc_timeout_ms) == (2_000, 4_000)


def test_batch_bytes_seals_and_a_big_message_goes_alone() -> None:
    c = core(batch_bytes=250)
    c.add(
        [Message(b"x" * 100), Message(b"x" * 100), Message(b"x" * 100), Message(b"x" * 1000)],
        "call",
        now_ms=0,
        wall_ms=1_700_000_000_000,
        linger=False,
    )
    [send] = c.poll(now_ms=0)
    counts = [read_header(b.records).record_count for b in send.batches]
    assert counts == [2, 1, 1]  # 2 x 110 B fit in 250; the 1000 B message is a batch alone


def test_batch_bytes_holds_across_calls() -> None:
    """Calls that each fit whole are summed without a size per message: the open batch
    still takes no more than batch_bytes."""
    c = core(batch_bytes=300)
    for n in range(5):
        c.add([Message(b"x" * 100, partition=0)], n, now_ms=0, wall_ms=1_700_000_000_000)
    c.flush()
    [send] = c.poll(now_ms=0)
    counts = [read_header(b.records).record_count for b in send.batches]
    assert counts == [2, 2, 1]  # 3 x 110 B do not fit in 300


def test_a_write_error_is_retriable_only_when_every_cause_is() -> None:
    a, b = Message("a"), Message("b")
    no_leader = RaftmqError(ErrorCode.LEADER_NOT_AVAILABLE, "electing")
    unknown = OutcomeUnknownError("timed out after it was sent")
    too_large = RaftmqError(ErrorCode.MESSAGE_TOO_LARGE, "big")
    assert WriteError([(a, no_leader), (b, unknown)]).retriable
    assert not WriteError([(a, no_leader), (b, too_large)]).retriable
    assert not WriteError([(a, too_large), (b, no_leader)]).retriable


def test_a_leader_hint_routes_the_retry_and_is_asked_for_metadata_first() -> None:
    c = core(batch_size=1)
    msgs = messages(1)
    c.add(msgs, "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    assert send.endpoint == "127.0.0.1:9001"
    moved = RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "moved to broker 2")
    hint = "127.0.0.1:9002"
    c.on_produce_response(
        send.request_id, [PartitionResult("t", 0, -1, moved, leader_endpoint=hint)], now_ms=1
    )
    request = c.next_request(now_ms=1)
    assert isinstance(request, MetadataRequest)
    assert (request.topics, request.prefer) == (("t",), (hint,))
    # Before the metadata answer: the retry goes to the hinted leader, epoch unchecked.
    [retry] = c.poll(now_ms=200)
    assert retry.endpoint == hint
    assert retry.batches[0].leader_epoch == -1
    assert retry.batches[0].records == send.batches[0].records
    c.on_produce_response(retry.request_id, ok(retry, [7]), now_ms=201)
    assert msgs[0].offset == 7


def test_without_a_hint_the_retry_waits_for_metadata() -> None:
    c, send = one_message_sent()
    moved = RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "moved")
    c.on_produce_response(send.request_id, [PartitionResult("t", 0, -1, moved)], now_ms=1)
    assert c.poll(now_ms=200) == []
    request = c.next_request(now_ms=200)
    assert isinstance(request, MetadataRequest) and request.prefer == ()
    c.on_metadata(metadata(version=2, leader=2), asked=request.topics, now_ms=201)
    [retry] = c.poll(now_ms=201)
    assert retry.endpoint == "127.0.0.1:9002" and retry.batches[0].leader_epoch == 0


def test_a_new_leader_epoch_ends_the_retry_backoff_and_the_same_one_does_not() -> None:
    # KIP-951: a leader killed with -9 refuses connections at once; its successor needs no
    # backoff. Metadata still naming the failed leader (it is not fenced yet) keeps it.
    c, send = one_message_sent()
    assert (send.endpoint, send.batches[0].leader_epoch) == ("127.0.0.1:9001", 0)
    gone = RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "connection refused")
    c.on_produce_failure(send.request_id, gone, now_ms=10)
    assert c.metadata_wanted() == {"t"}
    c.on_metadata(metadata(version=2), asked=("t",), now_ms=12)  # same leader, same epoch
    assert c.poll(now_ms=12) == []
    # While it backs off, the metadata is watched for a new leader every 50 ms.
    assert c.next_request(now_ms=12) is None
    assert c.next_wakeup_ms(now_ms=12) == 62
    watch = c.next_request(now_ms=62)
    assert isinstance(watch, MetadataRequest) and watch.topics == ("t",)
    c.on_metadata(metadata(version=2), asked=watch.topics, now_ms=63)
    assert c.next_wakeup_ms(now_ms=63) == 110  # the backoff ends before the next watch
    [second] = c.poll(now_ms=110)
    assert second.endpoint == "127.0.0.1:9001"
    c.on_produce_failure(second.request_id, gone, now_ms=111)  # backoff now 200 ms
    c.on_metadata(metadata(version=3, leader=2, leader_epoch=1), asked=("t",), now_ms=140)
    [retry] = c.poll(now_ms=140)  # the shell polls after every metadata answer
    assert (retry.endpoint, retry.batches[0].leader_epoch) == ("127.0.0.1:9002", 1)
    assert retry.batches[0].records == send.batches[0].records
    # The new leader fails too: its epoch is the attempt's now, so the backoff holds.
    c.on_produce_failure(retry.request_id, gone, now_ms=141)
    c.on_metadata(metadata(version=4, leader=2, leader_epoch=1), asked=("t",), now_ms=142)
    assert c.poll(now_ms=142) == []


def test_the_leader_watch_finds_a_new_leader_before_the_backoff_ends() -> None:
    c, send = one_message_sent()
    c.on_produce_failure(
        send.request_id, RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "x"), now_ms=1
    )
    c.on_metadata(metadata(version=2), asked=("t",), now_ms=2)  # not fenced yet
    watch = c.next_request(now_ms=52)
    assert isinstance(watch, MetadataRequest)
    c.on_metadata(metadata(version=3, leader=2, leader_epoch=1), asked=watch.topics, now_ms=53)
    [retry] = c.poll(now_ms=53)  # 53 ms, not the 101 of the backoff
    assert retry.endpoint == "127.0.0.1:9002"
    # Nothing waits any more: no more watching.
    assert c.next_request(now_ms=103) is None
    c.on_produce_response(retry.request_id, ok(retry, [0]), now_ms=54)
    assert c.next_request(now_ms=200) is None


def test_no_leader_watch_without_a_retried_batch_in_backoff() -> None:
    c, send = one_message_sent()
    c.on_metadata(metadata(version=2), asked=("t",), now_ms=1)  # nothing failed
    assert c.next_request(now_ms=100) is None
    c.on_produce_response(send.request_id, ok(send, [0]), now_ms=2)
    assert c.next_request(now_ms=200) is None


def test_a_hinted_retry_keeps_its_backoff() -> None:
    # A refusal's hint names no epoch: bouncing between two brokers that each name the
    # other would otherwise retry without any pause.
    c, send = one_message_sent()
    moved = RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "moved to broker 2")
    hint = "127.0.0.1:9002"
    c.on_produce_response(
        send.request_id, [PartitionResult("t", 0, -1, moved, leader_endpoint=hint)], now_ms=1
    )
    [retry] = c.poll(now_ms=101)
    assert (retry.endpoint, retry.batches[0].leader_epoch) == (hint, -1)
    back = RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "moved to broker 1")
    c.on_produce_response(
        retry.request_id,
        [PartitionResult("t", 0, -1, back, leader_endpoint="127.0.0.1:9001")],
        now_ms=102,
    )
    assert c.poll(now_ms=103) == []
    [third] = c.poll(now_ms=302)
    assert third.endpoint == "127.0.0.1:9001"


def test_requests_are_bounded_by_what_the_earliest_message_has_left() -> None:
    c = ProducerCore(WriterConfig(topic="t", write_timeout_ms=1_000), RoundRobin())
    assert c.next_request(now_ms=0) is None  # nothing to write: no producer id yet
    c.add(messages(1, partition=None), "call", now_ms=0, wall_ms=1_700_000_000_000)
    metadata_request = c.next_request(now_ms=300)
    assert isinstance(metadata_request, MetadataRequest)
    assert metadata_request.timeout_ms == 700
    assert c.next_request(now_ms=300) is None  # one request at a time
    c.on_metadata(metadata(), asked=metadata_request.topics, now_ms=310)
    id_request = c.next_request(now_ms=310)
    assert isinstance(id_request, ProducerIdRequest)
    assert (id_request.producer_id, id_request.timeout_ms) == (-1, 690)


def test_a_broker_reachable_again_ends_the_metadata_backoff() -> None:
    c = ProducerCore(WriterConfig(topic="t", idempotent=False), RoundRobin())
    c.add(messages(1, partition=None), "call", now_ms=0, wall_ms=1_700_000_000_000)
    down = RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "127.0.0.1:1 Metadata failed: UNAVAILABLE")
    now = 0
    for _ in range(5):  # asked at 0, 100, 300, 700 and 1_500 ms: then due at 2_500
        request = c.next_request(now_ms=now)
        assert isinstance(request, MetadataRequest)
        c.on_metadata_failure(request.topics, down, now_ms=now)
        now = c.next_wakeup_ms(now_ms=now)
    assert now == 2_500
    assert c.next_request(now_ms=1_700) is None  # still backing off
    c.on_broker_reachable(now_ms=1_700)
    request = c.next_request(now_ms=1_700)
    assert isinstance(request, MetadataRequest) and request.topics == ("t",)
    c.on_metadata_failure(request.topics, down, now_ms=1_705)  # not ready yet: 100 ms again
    assert c.next_wakeup_ms(now_ms=1_705) == 1_805


def test_messages_expire_while_the_producer_id_is_pending_with_its_error() -> None:
    c = ProducerCore(WriterConfig(topic="t", write_timeout_ms=1_000), RoundRobin())
    c.on_metadata(metadata(), now_ms=0)
    c.add(messages(2), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    request = c.next_request(now_ms=0)
    assert isinstance(request, ProducerIdRequest)
    unanswered = RaftmqError(
        ErrorCode.BROKER_NOT_AVAILABLE, "127.0.0.1:1 InitProducerId failed: DEADLINE_EXCEEDED"
    )
    assert c.on_producer_id_failure(unanswered, now_ms=1_000)  # reported: the first one
    assert c.poll(now_ms=1_000) == []
    [completion] = c.drain_completions()
    assert completion.error is not None
    assert completion.error.code == ErrorCode.BROKER_NOT_AVAILABLE
    assert "DEADLINE_EXCEEDED" in completion.error.message
    assert c.idle()


def test_producer_id_failures_are_retried_with_backoff_and_reported_rarely() -> None:
    c = ProducerCore(WriterConfig(topic="t"), RoundRobin())
    c.on_metadata(metadata(), now_ms=0)
    c.add(messages(1), "call", now_ms=0, wall_ms=1_700_000_000_000)
    failure = RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "down")
    reported: list[bool] = []
    asked_ms: list[int] = []
    now = 0
    for _ in range(1_000):  # bound; ends after 16 requests
        c.poll(now_ms=now)
        request = c.next_request(now_ms=now)
        if request is not None:
            assert isinstance(request, ProducerIdRequest)
            asked_ms.append(now)
            reported.append(c.on_producer_id_failure(failure, now_ms=now))
            if len(reported) == 16:
                break
        now = c.next_wakeup_ms(now_ms=now)
    gaps = [b - a for a, b in itertools.pairwise(asked_ms)]
    assert gaps[:4] == [100, 200, 400, 800] and set(gaps[4:]) == {1_000}
    assert reported[0] and not any(reported[1:6])  # not every 100 ms
    assert reported.count(True) == 2  # and again after PRODUCER_ID_REPORT_INTERVAL_MS


def test_close_fails_in_flight_as_outcome_unknown_and_the_rest_as_not_written() -> None:
    c = core(batch_size=1)
    c.add(messages(1), "sent", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    c.add(messages(1), "open", now_ms=1, wall_ms=1_700_000_000_000)  # lingers
    c.add(messages(1, partition=None), "unrouted", now_ms=1, wall_ms=1_700_000_000_000)
    c2_topic = Message("x", topic="unknown")
    c.add([c2_topic], "unknown-topic", now_ms=1, wall_ms=1_700_000_000_000)
    c.close()
    by_ticket = {x.ticket: x.error for x in c.drain_completions()}
    assert isinstance(by_ticket.pop("sent"), OutcomeUnknownError)
    assert all(isinstance(e, WriterClosedError) for e in by_ticket.values()), by_ticket
    assert set(by_ticket) == {"open", "unrouted", "unknown-topic"}
    assert c.idle() and c.poll(now_ms=2) == [] and c.next_request(now_ms=2) is None
    c.on_produce_response(send.request_id, ok(send), now_ms=3)  # a late answer: ignored
    assert c.drain_completions() == []


def test_stats_count_batches_and_their_size_distribution() -> None:
    c = core(batch_size=10)
    c.add(messages(25), "call", now_ms=0, wall_ms=1_700_000_000_000, linger=False)
    [send] = c.poll(now_ms=0)
    stats = c.stats.copy()
    assert (stats.messages, stats.batches, stats.errors, stats.retries) == (25, 3, 0, 0)
    assert stats.bytes == sum(len(b.records) for b in send.batches)
    assert (stats.batch_messages_min, stats.batch_messages_max) == (5, 10)
    assert stats.batch_messages_avg == pytest.approx(25 / 3)
    assert stats.batch_messages_histogram == {8: 1, 16: 2}  # 5 <= 8; 10 <= 16
    c.on_produce_failure(
        send.request_id, RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "cut"), now_ms=1
    )
    c.on_metadata(metadata(version=2), asked=("t",), now_ms=2)
    assert len(c.poll(now_ms=1_000)) == 1
    assert c.stats.retries == 1 and c.stats.batches == 3  # a resend is a retry, not a batch
    assert stats.retries == 0  # the copy did not move
