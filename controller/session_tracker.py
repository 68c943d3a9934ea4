"""Broker sessions as the controller leader sees them. Pure: `now_ms` is passed in.

Only the Raft leader tracks heartbeats, in memory; only the *changes* (fence a broker
whose session expired, unfence it on return) go through the Raft log. A newly elected
leader has no heartbeat history, so `reset` starts every session clock at the election:
otherwise it would fence the whole cluster at once.

A session expires when no heartbeat came for `session_timeout_ms` (a paused or cut-off
broker), or `disconnect_grace_ms` after the broker's session stream broke without a
goodbye (its process died: the kernel closed the connection) unless a heartbeat came
since. Each stream has a token, so that the end of a stream the broker already replaced
is not taken for the loss of the broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# A broker whose stream broke but that is alive redials within milliseconds.
DISCONNECT_GRACE_MS_DEFAULT = 150


@dataclass(slots=True)
class _Session:
    broker_epoch: int
    last_heartbeat_ms: int
    # The stream the last heartbeat came on (None: a unary heartbeat).
    stream_token: int | None = None
    # Invariant: None, or >= last_heartbeat_ms (a heartbeat clears it).
    disconnected_at_ms: int | None = None


class SessionTracker:
    def __init__(
        self, *, session_timeout_ms: int, disconnect_grace_ms: int = DISCONNECT_GRACE_MS_DEFAULT
    ) -> None:
        assert session_timeout_ms > 0 and disconnect_grace_ms >= 0
        self.session_timeout_ms = session_timeout_ms
        self.disconnect_grace_ms = disconnect_grace_ms
        # broker id -> its live session; bounded by the number of registered brokers.
        self._sessions: dict[int, _Session] = {}

    def reset(self, brokers: Iterable[tuple[int, int]], *, now_ms: int) -> None:
        """Start every (broker_id, broker_epoch) session afresh: called on becoming leader."""
        self._sessions = {b: _Session(epoch, now_ms) for b, epoch in brokers}

    def heartbeat(
        self, broker_id: int, broker_epoch: int, *, now_ms: int, stream_token: int | None = None
    ) -> None:
        self._sessions[broker_id] = _Session(broker_epoch, now_ms, stream_token)

    def disconnected(
        self, broker_id: int, broker_epoch: int, *, stream_token: int, now_ms: int
    ) -> bool:
        """The session stream `stream_token` broke without a goodbye. True if it was the
        broker's current stream (its session now expires after the grace)."""
        session = self._sessions.get(broker_id)
        if (
            session is None
            or session.broker_epoch != broker_epoch
            or session.stream_token != stream_token
        ):
            return False
        session.disconnected_at_ms = max(now_ms, session.last_heartbeat_ms)
        return True

    def forget(self, broker_id: int) -> None:
        self._sessions.pop(broker_id, None)

    def expired(self, *, now_ms: int) -> list[tuple[int, int]]:
        """(broker_id, broker_epoch) of every session that timed out or lost its stream."""
        return [
            (b, s.broker_epoch) for b, s in sorted(self._sessions.items()) if self._dead(s, now_ms)
        ]

    def next_expiry_ms(self, *, now_ms: int) -> int | None:
        """The earliest time after `now_ms` at which a session now live expires, unless a
        heartbeat comes first (None: none will). The controller checks sessions then, so a
        broker whose stream broke is fenced when its grace ends, not at the next round."""
        due = [e for s in self._sessions.values() if (e := self._expiry_ms(s)) > now_ms]
        return min(due, default=None)

    def _expiry_ms(self, session: _Session) -> int:
        """The first time at which `_dead(session, t)` holds."""
        timeout_at = session.last_heartbeat_ms + self.session_timeout_ms + 1
        lost_at = session.disconnected_at_ms
        return (
            timeout_at if lost_at is None else min(timeout_at, lost_at + self.disconnect_grace_ms)
        )

    def _dead(self, session: _Session, now_ms: int) -> bool:
        if session.last_heartbeat_ms < now_ms - self.session_timeout_ms:
            return True
        lost_at = session.disconnected_at_ms
        return lost_at is not None and now_ms - lost_at >= self.disconnect_grace_ms

    def is_live(self, broker_id: int, *, now_ms: int) -> bool:
        session = self._sessions.get(broker_id)
        return session is not None and not self._dead(session, now_ms)
