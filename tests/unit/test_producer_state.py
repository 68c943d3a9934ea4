"""Idempotent producer state of one partition: duplicates answered with the original
offsets, gaps refused, zombies fenced, unknown producers accepted (KIP-360), the 5-batch
window persisted whole and cut on truncation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from raftmq.broker.producer_state import (
    BATCHES_PER_PRODUCER,
    AppendInfo,
    ProducerBatch,
    ProducerEntry,
    ProducerStates,
)
from raftmq.errors import ErrorCode, RaftmqError


def append(
    states: ProducerStates, pid: int, epoch: int, *, seq: int, count: int, offset: int
) -> None:
    assert states.check_append(pid, epoch, seq, count) is None
    states.commit(
        states.updated(
            [AppendInfo(pid, epoch, seq, count, offset, offset + count - 1, 1000 + offset)]
        )
    )


def test_a_retry_of_any_of_the_last_five_batches_is_a_duplicate() -> None:
    states = ProducerStates()
    for i in range(7):
        append(states, 1, 0, seq=10 * i, count=10, offset=100 * i)
    for i in range(2, 7):  # the last five batches
        duplicate = states.check_append(1, 0, 10 * i, 10)
        assert duplicate is not None and duplicate.base_offset == 100 * i
    # Older than the window: neither a duplicate nor the next sequence.
    with pytest.raises(RaftmqError) as e:
        states.check_append(1, 0, 10, 10)
    assert e.value.code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER


def test_a_gap_is_out_of_order() -> None:
    states = ProducerStates()
    append(states, 1, 0, seq=0, count=5, offset=0)
    with pytest.raises(RaftmqError) as e:
        states.check_append(1, 0, 6, 1)
    assert e.value.code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert "expects 5" in e.value.message
    assert states.check_append(1, 0, 5, 1) is None


def test_an_older_epoch_is_fenced_and_a_new_epoch_starts_at_zero() -> None:
    states = ProducerStates()
    append(states, 1, 3, seq=0, count=5, offset=0)
    with pytest.raises(RaftmqError) as e:
        states.check_append(1, 2, 5, 1)
    assert e.value.code == ErrorCode.INVALID_PRODUCER_EPOCH
    with pytest.raises(RaftmqError):
        states.check_append(1, 4, 5, 1)
    append(states, 1, 4, seq=0, count=1, offset=5)
    entry = states.get(1)
    assert entry is not None and entry.epoch == 4 and len(entry.batches) == 1


def test_an_unknown_producer_may_start_at_any_sequence() -> None:
    assert ProducerStates().check_append(9, 0, 12345, 3) is None
    assert ProducerStates().check_append(-1, -1, -1, 3) is None  # not idempotent


def test_sequences_wrap_at_int32_max() -> None:
    states = ProducerStates()
    append(states, 1, 0, seq=2**31 - 2, count=2, offset=0)
    assert states.check_append(1, 0, 0, 1) is None


def test_truncation_cuts_the_window_and_forgets_producers_with_nothing_left() -> None:
    states = ProducerStates()
    append(states, 1, 0, seq=0, count=10, offset=0)
    append(states, 1, 0, seq=10, count=10, offset=20)
    append(states, 2, 0, seq=0, count=5, offset=30)
    changed, removed = states.truncated(20)
    assert list(changed) == [1] and removed == [2]
    assert len(states.get(1).batches) == 2  # type: ignore[union-attr]  # nothing applied yet
    states.commit(changed, removed)
    # Producer 1's retry of the truncated batch is appended again, not answered as written.
    assert states.check_append(1, 0, 10, 10) is None
    assert states.get(2) is None


def test_idle_producers_expire() -> None:
    states = ProducerStates()
    append(states, 1, 0, seq=0, count=1, offset=0)  # timestamp 1000
    append(states, 2, 0, seq=0, count=1, offset=5_000)  # timestamp 6000
    expired = states.expired(now_ms=5_500, expiration_ms=4_000)
    assert expired == [1]
    states.commit({}, expired)
    assert [e.producer_id for e in states] == [2]


@given(
    epoch=st.integers(0, 2**15 - 1),
    batches=st.lists(
        st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(0, 2**40)),
        min_size=1,
        max_size=BATCHES_PER_PRODUCER,
    ),
)
def test_entries_round_trip_through_their_encoding(
    epoch: int, batches: list[tuple[int, int, int]]
) -> None:
    entry = ProducerEntry(7, epoch)
    for offset, (first, last, ts) in enumerate(batches):
        entry.batches.append(ProducerBatch(first, last, offset, offset, ts))
    decoded = ProducerEntry.decode(7, entry.encode())
    assert decoded.epoch == epoch and list(decoded.batches) == list(entry.batches)


@pytest.mark.parametrize("data", [b"", b"\x02", b"\x01\x00\x01\x06", b"\x01" + b"\x00" * 50])
def test_malformed_entries_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        ProducerEntry.decode(1, data)
