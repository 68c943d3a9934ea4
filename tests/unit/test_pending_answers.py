"""`PendingAnswers`, the pure part both produce streams (sync and asyncio) share."""

from __future__ import annotations

import pytest
from raftmq.client.produce_stream import STALE_DEADLINES_SLACK, PendingAnswers
from raftmq.errors import ErrorCode, RaftmqError

Answers = list[object]


def test_each_request_is_answered_once_and_deadlines_skip_the_answered() -> None:
    answers = PendingAnswers()
    got: Answers = []
    first = answers.add(got.append, deadline_ms=100)
    second = answers.add(got.append, deadline_ms=50)
    assert (first, second) == (0, 1)
    assert answers.next_deadline_ms() == 50
    on_answer = answers.pop(second)
    assert on_answer is not None
    assert answers.pop(second) is None  # exactly once
    assert answers.next_deadline_ms() == 100  # the answered one's deadline is skipped
    assert answers.pop(first) is not None
    assert answers.next_deadline_ms() is None


def test_a_request_without_an_answer_owes_nothing() -> None:
    answers = PendingAnswers()
    correlation_id = answers.add(None, deadline_ms=10)  # acks=0
    assert answers.pop(correlation_id) is None
    assert answers.next_deadline_ms() is None


def test_failing_hands_back_what_was_pending_once_and_takes_nothing_after() -> None:
    answers = PendingAnswers()
    got: Answers = []
    answers.add(got.append, deadline_ms=10)
    answers.add(got.append, deadline_ms=20)
    error = RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "gone")
    pending = answers.fail(error)
    assert pending is not None and len(pending) == 2
    assert answers.failure is error
    assert answers.fail(RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "again")) is None
    assert answers.failure is error  # set once
    assert answers.next_deadline_ms() is None
    with pytest.raises(AssertionError, match="takes no requests"):
        answers.add(got.append, deadline_ms=30)


def test_answered_deadlines_do_not_pile_up_on_a_stream_nobody_expires() -> None:
    """A Reader's fetch stream answers request after request and never calls
    `next_deadline_ms` (only writers expire their streams): the heap stays bounded, also
    behind one request that stays pending the whole time."""
    answers = PendingAnswers[object]()
    got: Answers = []
    long_pending = answers.add(got.append, deadline_ms=1)  # the earliest: at the top
    for n in range(10_000):
        correlation_id = answers.add(got.append, deadline_ms=1_000 + n)
        assert answers.pop(correlation_id) is not None
        assert answers.deadlines_held() <= 2 * 1 + STALE_DEADLINES_SLACK + 1
    assert answers.next_deadline_ms() == 1
    assert answers.pop(long_pending) is not None
    assert answers.next_deadline_ms() is None and answers.deadlines_held() == 0
