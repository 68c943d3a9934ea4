"""The Reader's core, driven by hand: steps and their time budgets, answers, leader hints,
the lag, and its argument checks. Shared by Reader and AsyncReader (and, per partition,
by a consumer group's GroupCore)."""

from __future__ import annotations

import pytest
from raftmq.client.brokers import candidate_addresses
from raftmq.client.deadlines import Deadline
from raftmq.client.protocol import ClusterMetadata, FetchResult, OffsetResult
from raftmq.client.reader_core import (
    FetchStep,
    FirstOffset,
    ListOffsetStep,
    MetadataStep,
    ReaderConfig,
    ReaderCore,
    WaitStep,
    check_reader_args,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.metadata import BrokerRegistration, PartitionRecord, TopicRecord
from raftmq.record_batch import encode_batch
from raftmq.topic_config import TopicConfig


def metadata(*, leader: int = 1, epoch: int = 3) -> ClusterMetadata:
    brokers = {
        b: BrokerRegistration(b, "127.0.0.1", 9000 + b, "", "x", 1, fenced=False) for b in (1, 2)
    }
    parts = (PartitionRecord((1, 2), (1, 2), leader, epoch, epoch),)
    return ClusterMetadata(1, brokers, {"t": TopicRecord("t", b"x" * 16, TopicConfig(), parts)})


def fetched(offset: int, values: list[bytes], *, hw: int) -> FetchResult:
    records = encode_batch([Message(v) for v in values], now_ms=1_700_000_000_000)
    # The leader stamps the base offset (the first 8 bytes).
    records = offset.to_bytes(8, "big") + records[8:]
    return FetchResult("t", 0, None, records, hw, 0, hw)


def ready_core(**config: int) -> ReaderCore:
    core = ReaderCore("t", 0, ReaderConfig(**config))
    core.set_offset(0)
    step = core.next_step(now_ms=0)
    assert isinstance(step, MetadataStep)
    core.on_metadata(metadata())
    return core


def test_a_fetch_sends_the_leader_epoch_and_is_bounded_by_the_read_timeout() -> None:
    core = ready_core(max_wait_ms=500)
    step = core.next_read(now_ms=0, deadline=None)
    assert isinstance(step, FetchStep)
    assert (step.endpoint, step.offset, step.leader_epoch) == ("127.0.0.1:9001", 0, 3)
    assert (step.max_wait_ms, step.timeout_ms) == (500, 2_500)  # unbounded read: margin
    step = core.next_read(now_ms=0, deadline=Deadline(600, 600))
    assert isinstance(step, FetchStep)
    # 600 ms left: the broker answers after 300 ms, the call gives up at 600 ms.
    assert (step.max_wait_ms, step.timeout_ms) == (300, 600)


def test_metadata_and_offsets_are_bounded_by_the_read_timeout_then_it_times_out() -> None:
    core = ReaderCore("t", 0)
    step = core.next_read(now_ms=100, deadline=Deadline(600, 500))
    assert step == MetadataStep((), 500)
    core.on_metadata_failure(
        RaftmqError(
            ErrorCode.BROKER_NOT_AVAILABLE, "127.0.0.1:1 Metadata failed: DEADLINE_EXCEEDED"
        ),
        now_ms=600,
    )
    with pytest.raises(TimeoutError, match=r"within 500 ms \(last error: .*DEADLINE_EXCEEDED"):
        core.next_read(now_ms=600, deadline=Deadline(600, 500))
    core.on_metadata(metadata())
    step = core.next_read(now_ms=700, deadline=Deadline(1_000, 300))
    assert step == ListOffsetStep("127.0.0.1:9001", FirstOffset, 300)


def test_fetched_messages_are_handed_out_in_order() -> None:
    core = ready_core()
    step = core.next_read(now_ms=0, deadline=None)
    assert isinstance(step, FetchStep)
    core.on_fetch(step, fetched(0, [b"a", b"b"], hw=2), now_ms=1)
    assert [core.pop(), core.pop(), core.pop()] == [
        Message(b"a", topic="t", partition=0, offset=0, timestamp_ms=1_700_000_000_000),
        Message(b"b", topic="t", partition=0, offset=1, timestamp_ms=1_700_000_000_000),
        None,
    ]
    assert (core.offset, core.lag) == (2, 0)


def test_a_fenced_epoch_refreshes_metadata_and_the_next_fetch_has_the_new_epoch() -> None:
    core = ready_core()
    step = core.next_read(now_ms=0, deadline=None)
    assert isinstance(step, FetchStep) and step.leader_epoch == 3
    fenced = RaftmqError(ErrorCode.FENCED_LEADER_EPOCH, "leader epoch 3 is older than 5")
    core.on_fetch(step, FetchResult("t", 0, fenced, b"", -1, -1, -1), now_ms=1)
    assert isinstance(core.next_read(now_ms=1, deadline=None), WaitStep)  # backoff
    assert isinstance(core.next_read(now_ms=1_000, deadline=None), MetadataStep)
    core.on_metadata(metadata(epoch=5))
    step = core.next_read(now_ms=1_000, deadline=None)
    assert isinstance(step, FetchStep) and step.leader_epoch == 5
    assert core.current_stats().errors_by_code == {"FENCED_LEADER_EPOCH": 1}


def test_a_leader_hint_is_asked_for_metadata_first() -> None:
    core = ready_core()
    step = core.next_read(now_ms=0, deadline=None)
    assert isinstance(step, FetchStep)
    moved = RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "broker 1 is not the leader")
    core.on_fetch(step, FetchResult("t", 0, moved, b"", -1, -1, -1, "127.0.0.1:9002"), now_ms=1)
    step = core.next_read(now_ms=1_000, deadline=None)
    assert step == MetadataStep(("127.0.0.1:9002",), None)
    assert isinstance(step, MetadataStep)
    assert candidate_addresses(["127.0.0.1:9001"], None, step.prefer) == [
        "127.0.0.1:9002",
        "127.0.0.1:9001",
    ]
    core.on_metadata(metadata(leader=2, epoch=4))
    step = core.next_read(now_ms=1_000, deadline=None)
    assert isinstance(step, FetchStep)
    assert (step.endpoint, step.leader_epoch) == ("127.0.0.1:9002", 4)


def test_the_lag_is_asked_after_the_position_is_resolved() -> None:
    core = ReaderCore("t", 0)
    core.on_metadata(metadata())
    core.ask_high_watermark()
    deadline = Deadline(10_000, 10_000)
    step = core.next_lag(now_ms=0, deadline=deadline)
    assert step == ListOffsetStep("127.0.0.1:9001", FirstOffset, 10_000)  # the position
    assert isinstance(step, ListOffsetStep)
    core.on_offset(step, OffsetResult("t", 0, 4, -1, 3, None), now_ms=1)
    step = core.next_lag(now_ms=1, deadline=deadline)
    assert isinstance(step, ListOffsetStep) and step.high_watermark
    core.on_offset(step, OffsetResult("t", 0, 10, -1, 3, None), now_ms=2)
    assert core.next_lag(now_ms=2, deadline=deadline) == 6
    assert core.offset == 4  # asking the high watermark does not move the position
    with pytest.raises(TimeoutError, match="no high watermark"):
        core.ask_high_watermark()
        core.next_lag(now_ms=10_000, deadline=deadline)


def test_a_negative_partition_is_refused() -> None:
    with pytest.raises(ValueError, match="partition must be >= 0"):
        check_reader_args(-1)
    check_reader_args(0)
