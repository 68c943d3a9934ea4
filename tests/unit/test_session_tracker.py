"""The controller's broker sessions (pure): when each one expires, and `next_expiry_ms`,
the time the maintenance loop wakes for (a lost stream's grace end, not the next round)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from raftmq.controller.session_tracker import SessionTracker


def tracker() -> SessionTracker:
    return SessionTracker(session_timeout_ms=4_000, disconnect_grace_ms=150)


def test_a_lost_stream_expires_at_its_grace_and_the_timeout_otherwise() -> None:
    t = tracker()
    t.heartbeat(1, 10, now_ms=1_000, stream_token=7)
    t.heartbeat(2, 20, now_ms=1_500, stream_token=8)
    assert t.next_expiry_ms(now_ms=1_000) == 5_001  # broker 1's session timeout
    assert t.disconnected(1, 10, stream_token=7, now_ms=2_000)
    assert t.next_expiry_ms(now_ms=2_000) == 2_150
    assert t.expired(now_ms=2_149) == []
    assert t.expired(now_ms=2_150) == [(1, 10)]
    # Once it has expired it no longer sets a wake-up: the next one is broker 2's timeout.
    assert t.next_expiry_ms(now_ms=2_150) == 5_501


def test_a_heartbeat_on_a_new_stream_cancels_the_grace() -> None:
    t = tracker()
    t.heartbeat(1, 10, now_ms=0, stream_token=1)
    assert t.disconnected(1, 10, stream_token=1, now_ms=100)
    t.heartbeat(1, 10, now_ms=120, stream_token=2)
    assert t.next_expiry_ms(now_ms=120) == 4_121
    assert t.expired(now_ms=250) == []


def test_the_end_of_a_replaced_stream_sets_no_grace() -> None:
    t = tracker()
    t.heartbeat(1, 10, now_ms=0, stream_token=2)
    assert not t.disconnected(1, 10, stream_token=1, now_ms=50)
    assert t.next_expiry_ms(now_ms=50) == 4_001


def test_no_sessions_no_wake_up() -> None:
    assert tracker().next_expiry_ms(now_ms=0) is None


@given(
    heartbeat_ms=st.integers(0, 10_000),
    lost_after_ms=st.none() | st.integers(0, 5_000),
    timeout_ms=st.integers(1, 5_000),
    grace_ms=st.integers(0, 1_000),
)
def test_next_expiry_is_the_first_moment_the_session_is_dead(
    heartbeat_ms: int, lost_after_ms: int | None, timeout_ms: int, grace_ms: int
) -> None:
    t = SessionTracker(session_timeout_ms=timeout_ms, disconnect_grace_ms=grace_ms)
    t.heartbeat(1, 1, now_ms=heartbeat_ms, stream_token=1)
    now_ms = heartbeat_ms
    if lost_after_ms is not None:
        now_ms = heartbeat_ms + lost_after_ms
        t.disconnected(1, 1, stream_token=1, now_ms=now_ms)
    expiry = t.next_expiry_ms(now_ms=now_ms)
    if expiry is None:  # already dead at now_ms (a grace of 0, or a lapsed timeout)
        assert t.expired(now_ms=now_ms) == [(1, 1)]
        return
    assert expiry > now_ms
    assert t.expired(now_ms=expiry - 1) == []
    assert t.expired(now_ms=expiry) == [(1, 1)]
