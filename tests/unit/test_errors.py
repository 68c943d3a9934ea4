"""One exception type per error code; "maybe written" is a type of its own."""

from __future__ import annotations

import pickle

import pytest
from raftmq import errors
from raftmq.errors import ErrorCode, OutcomeUnknownError, RaftmqError


@pytest.mark.parametrize("code", [c for c in ErrorCode if c != ErrorCode.NONE])
def test_every_code_has_its_own_type(code: ErrorCode) -> None:
    error = RaftmqError(code, "what happened", leader_id=2)
    expected = "".join(p.capitalize() for p in code.name.split("_")) + "Error"
    assert type(error).__name__ == expected
    assert getattr(errors, expected) is type(error)
    assert isinstance(error, RaftmqError)
    assert error.code == code and error.retriable == code.retriable and error.leader_id == 2
    assert str(error).startswith(f"{code.name}: what happened")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.message == "what happened"


def test_client_facing_codes_say_what_to_do() -> None:
    text = str(RaftmqError(ErrorCode.NOT_ENOUGH_REPLICAS, "2 in sync, need 3"))
    assert "nothing was written" in text


def test_outcome_unknown_is_told_apart_from_not_written() -> None:
    cause = RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "leader moved after the append")
    error = OutcomeUnknownError("send timed out after it was sent", cause=cause)
    assert isinstance(error, RaftmqError) and error.cause is cause
    assert "may or may not" in str(error)
    assert not isinstance(RaftmqError(ErrorCode.MESSAGE_TOO_LARGE), OutcomeUnknownError)


def test_a_hint_is_said_once_when_a_message_quotes_an_error_of_the_same_code() -> None:
    inner = RaftmqError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "topic 'x' does not exist")
    outer = RaftmqError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"1 message(s) failed: {inner}")
    assert str(outer).count("allow_auto_topic_creation=True") == 1
    assert str(inner).count("allow_auto_topic_creation=True") == 1
