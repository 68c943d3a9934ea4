"""Broker sessions as the controller leader sees them. Pure: `now_ms` is passed in.

Only the Raft leader tracks heartbeats, in memory; only the *changes* (fence a broker
whose session expired, unfence it on return) go through the Raft log. A newly elected
leader has no heartbeat history, so `reset` starts every session clock at the election:
otherwise it would fence the whole cluster at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Session:
    broker_epoch: int
    last_heartbeat_ms: int


class SessionTracker:
    def __init__(self, *, session_timeout_ms: int) -> None:
        assert session_timeout_ms > 0
        self.session_timeout_ms = session_timeout_ms
        # broker id -> its live session; bounded by the number of registered brokers.
        self._sessions: dict[int, _Session] = {}

    def reset(self, brokers: Iterable[tuple[int, int]], *, now_ms: int) -> None:
        """Start every (broker_id, broker_epoch) session afresh: called on becoming leader."""
        self._sessions = {b: _Session(epoch, now_ms) for b, epoch in brokers}

    def heartbeat(self, broker_id: int, broker_epoch: int, *, now_ms: int) -> None:
        self._sessions[broker_id] = _Session(broker_epoch, now_ms)

    def forget(self, broker_id: int) -> None:
        self._sessions.pop(broker_id, None)

    def expired(self, *, now_ms: int) -> list[tuple[int, int]]:
        """(broker_id, broker_epoch) of every session older than the timeout."""
        deadline_ms = now_ms - self.session_timeout_ms
        return [
            (b, s.broker_epoch)
            for b, s in sorted(self._sessions.items())
            if s.last_heartbeat_ms < deadline_ms
        ]

    def is_live(self, broker_id: int, *, now_ms: int) -> bool:
        session = self._sessions.get(broker_id)
        return session is not None and session.last_heartbeat_ms >= now_ms - self.session_timeout_ms
