"""Time budgets of the client's calls, shared by the cores and the shells. Pure.

An operation (a write until `write_timeout_ms`, a `read_message(timeout_ms=...)`) bounds
every call it makes by the time it has left: a broker that accepts connections and never
answers costs the operation its own bound, never a fixed RPC timeout on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass

# A call whose server side waits (acks=all, a fetch's long poll) gets this much longer as
# its gRPC deadline than the wait it asks for: the answer's round trip.
DEADLINE_MARGIN_MS = 2_000


@dataclass(frozen=True, slots=True)
class WaitBudget:
    """How long the server may wait (`wait_ms`: a produce's ack timeout, a fetch's
    max_wait_ms) and the call's own deadline (`timeout_ms`), both within what is left."""

    wait_ms: int
    timeout_ms: int


def wait_budget(remaining_ms: int | None, wait_max_ms: int) -> WaitBudget:
    """The budget of one call whose server waits up to `wait_max_ms`, when the operation
    has `remaining_ms` left (None: no bound). The server is told to answer early enough
    for its answer to arrive in time: it keeps DEADLINE_MARGIN_MS (or half of what is
    left, when less) for the round trip; the deadline never passes the operation's."""
    if remaining_ms is None:
        return WaitBudget(wait_max_ms, wait_max_ms + DEADLINE_MARGIN_MS)
    remaining_ms = max(1, remaining_ms)
    wait_ms = max(0, min(wait_max_ms, remaining_ms - min(DEADLINE_MARGIN_MS, remaining_ms // 2)))
    return WaitBudget(wait_ms, min(wait_ms + DEADLINE_MARGIN_MS, remaining_ms))


def call_timeout_ms(remaining_ms: int | None, timeout_max_ms: int) -> int:
    """One call's deadline: its own maximum, cut to what the operation has left (>= 1)."""
    if remaining_ms is None:
        return timeout_max_ms
    return max(1, min(timeout_max_ms, remaining_ms))


@dataclass(frozen=True, slots=True)
class Deadline:
    """An operation's bound: `timeout_ms` from when it started, at `at_ms` on the
    clients' monotonic clock."""

    at_ms: int
    timeout_ms: int

    @classmethod
    def after(cls, timeout_ms: int | None, *, now_ms: int) -> Deadline | None:
        return None if timeout_ms is None else cls(now_ms + timeout_ms, timeout_ms)
