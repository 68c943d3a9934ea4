"""The consumer-group half of `Admin` and `AsyncAdmin`, pure: the decisions of a call at a
group's coordinator (`CoordinatorCall`), a group's description with committed offsets,
log end offsets and lag per partition, and the targets of an offset reset. Both admins
carry these out, so the two cannot drift apart.

A group's coordinator is one broker (the leader of its partition of `__consumer_offsets`).
A call finds it through any broker (FindCoordinator), then calls it; NOT_COORDINATOR,
COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS and transport failures mean: back
off, find it again, call again — bounded in attempts and in time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from raftmq.client.controller_client import BACKOFF_MS, BACKOFF_MS_MAX, Backoff, EndpointOrder
from raftmq.client.group_protocol import (
    NO_OFFSET,
    CommittedOffset,
    CoordinatorResult,
    GroupDescriptionResult,
    GroupListing,
    MemberDescription,
    TopicPartition,
)
from raftmq.errors import ErrorCode, RaftmqError

COORDINATOR_ATTEMPTS_MAX = 20
COORDINATOR_RPC_TIMEOUT_MS = 6_000
RETRY_CODES = frozenset(
    {
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
    }
)
RESET_NAMES = ("earliest", "latest")

ResetTo = str | int | datetime


@dataclass(frozen=True, slots=True)
class FindStep:
    """Ask `endpoint` (any broker) where the group's coordinator is."""

    endpoint: str
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class CoordinatorStep:
    """Make the call at the coordinator, `endpoint`."""

    endpoint: str
    timeout_ms: int


class CoordinatorCall:
    """The decisions of one call at `group_id`'s coordinator, over the brokers of
    `ordering` (for FindCoordinator). Driven by `next` and the `on_*` answers; `give_up`
    when `next` returns None."""

    def __init__(
        self,
        group_id: str,
        method: str,
        ordering: EndpointOrder,
        *,
        now_ms: int,
        timeout_ms: int,
        rpc_timeout_ms: int = COORDINATOR_RPC_TIMEOUT_MS,
    ) -> None:
        self.group_id = group_id
        self.method = method
        self.ordering = ordering
        self.timeout_ms = timeout_ms
        self.rpc_timeout_ms = rpc_timeout_ms
        self._deadline_ms = now_ms + timeout_ms
        self.coordinator: str | None = None
        self._attempts = 0
        # Brokers that failed in transport during this call: asked again only when every
        # one has failed.
        self._unreachable: set[str] = set()
        self._backoff_ms = BACKOFF_MS
        self._back_off = False
        self.last_error: RaftmqError | None = None

    def next(self, *, now_ms: int) -> FindStep | CoordinatorStep | Backoff | None:
        remaining_ms = self._deadline_ms - now_ms
        if remaining_ms <= 0 or self._attempts >= COORDINATOR_ATTEMPTS_MAX:
            return None
        if self._back_off:
            self._back_off = False
            wait_ms = min(self._backoff_ms, remaining_ms)
            self._backoff_ms = min(BACKOFF_MS_MAX, self._backoff_ms * 2)
            return Backoff(wait_ms)
        self._attempts += 1
        timeout_ms = min(remaining_ms, self.rpc_timeout_ms)
        if self.coordinator is None:
            order = self.ordering.order()
            reachable = [e for e in order if e not in self._unreachable]
            if not reachable:
                self._unreachable.clear()
                reachable = order
            return FindStep(reachable[0], timeout_ms)
        return CoordinatorStep(self.coordinator, timeout_ms)

    def on_coordinator(self, result: CoordinatorResult) -> None:
        """FindCoordinator's answer. Raises what cannot be retried."""
        if result.error is None and result.endpoint is not None:
            self.coordinator = result.endpoint
            return
        error = result.error or RaftmqError(
            ErrorCode.COORDINATOR_NOT_AVAILABLE, f"no coordinator named for {self.group_id!r}"
        )
        if not error.retriable:
            raise error
        self.last_error = error  # e.g. the offsets topic is being created: ask again
        self._back_off = True

    def on_answer(self, error: RaftmqError | None) -> bool:
        """The coordinator's answer (its routing error, if any): True when it is final."""
        if error is None or error.code not in RETRY_CODES:
            return True
        self.last_error = error
        if error.code != ErrorCode.COORDINATOR_LOAD_IN_PROGRESS:
            self.coordinator = None  # it moved: find it again
        self._back_off = True
        return False

    def on_transport_failure(self, endpoint: str, error: RaftmqError) -> None:
        self.last_error = error
        if endpoint == self.coordinator:
            self.coordinator = None  # find it again: it may have moved with its partition
        else:
            self.ordering.demote(endpoint)  # later calls start elsewhere too
        self._unreachable.add(endpoint)
        self._back_off = True

    def give_up(self) -> RaftmqError:
        """The error to raise: the last one seen, or COORDINATOR_NOT_AVAILABLE."""
        last = self.last_error
        return RaftmqError(
            last.code if last is not None else ErrorCode.COORDINATOR_NOT_AVAILABLE,
            f"{self.method} for group {self.group_id!r} did not succeed within "
            f"{self.timeout_ms} ms (last error: {last})",
        )


# ---------------------------------------------------------------- describe


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition a group reads: what it committed, where the log ends, how far
    behind it is, and which member consumes it now."""

    topic: str
    partition: int
    committed_offset: int  # -1: nothing committed
    log_end_offset: int  # the high watermark; -1 if it could not be asked
    lag: int | None  # log_end_offset - committed_offset; None without both
    member_id: str  # "" when no member is assigned it


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str  # empty, assigning, reconciling, stable
    group_epoch: int
    assignment_epoch: int
    assignor: str
    coordinator_id: int
    members: tuple[MemberDescription, ...]
    partitions: tuple[PartitionLag, ...]

    @property
    def lag(self) -> int:
        """The sum of the partitions' lags (those with a committed offset)."""
        return sum(p.lag for p in self.partitions if p.lag is not None)


def described_topics(
    description: GroupDescriptionResult, committed: dict[TopicPartition, CommittedOffset]
) -> list[str]:
    """The topics whose log end offsets a description shows: those with committed
    offsets, assigned partitions, or subscribed by name."""
    topics = {t for t, _ in committed}
    for m in description.members:
        topics.update(t for t, _ in (*m.assignment, *m.target, *m.revoking))
        topics.update(m.subscribed_topics)
    return sorted(topics)


def group_description(
    description: GroupDescriptionResult,
    committed: dict[TopicPartition, CommittedOffset],
    log_end_offsets: dict[TopicPartition, int],
) -> GroupDescription:
    """A group's description: its members, and per partition (of every topic it reads)
    the committed offset, log end offset, lag and owning member."""
    owner: dict[TopicPartition, str] = {}
    for m in description.members:
        for tp in (*m.revoking, *m.assignment):
            owner[tp] = m.member_id
    rows = []
    for tp in sorted({*committed, *log_end_offsets, *owner}):
        offset = committed[tp].offset if tp in committed else NO_OFFSET
        end = log_end_offsets.get(tp, -1)
        lag = max(0, end - offset) if offset >= 0 and end >= 0 else None
        rows.append(PartitionLag(tp[0], tp[1], offset, end, lag, owner.get(tp, "")))
    return GroupDescription(
        group_id=description.group_id,
        state=description.state,
        group_epoch=description.group_epoch,
        assignment_epoch=description.assignment_epoch,
        assignor=description.assignor,
        coordinator_id=description.coordinator_id,
        members=description.members,
        partitions=tuple(rows),
    )


def merged_listings(listings: list[GroupListing]) -> list[GroupListing]:
    """The groups every broker listed, once each (a group whose coordinator moves may show
    at two brokers for a moment: the first answer wins), by id."""
    seen: dict[str, GroupListing] = {}
    for g in listings:
        seen.setdefault(g.group_id, g)
    return [seen[g] for g in sorted(seen)]


# ---------------------------------------------------------------- reset


def check_reset_to(to: ResetTo) -> None:
    """`reset_offsets(to=...)`: "earliest", "latest", an offset >= 0, or a datetime."""
    if isinstance(to, bool) or not isinstance(to, str | int | datetime):
        raise ValueError(f"to= must be 'earliest', 'latest', an offset or a datetime, not {to!r}")
    if isinstance(to, str) and to not in RESET_NAMES:
        raise ValueError(f"to= must be 'earliest' or 'latest' (or an offset, a datetime): {to!r}")
    if isinstance(to, int) and to < 0:
        raise ValueError(f"to= an offset must be >= 0, got {to}")


def reset_targets(
    to: ResetTo,
    earliest: dict[int, int],
    latest: dict[int, int],
    at_time: dict[int, int] | None = None,
) -> dict[int, int]:
    """partition -> the offset to commit: the log start, the high watermark, an offset
    (clamped into [log start, high watermark], as Kafka's tool does), or the first offset
    at or after a time (the high watermark where no message is that recent)."""
    check_reset_to(to)
    targets: dict[int, int] = {}
    for partition in sorted(latest):
        first, last = earliest.get(partition, 0), latest[partition]
        if to == "earliest":
            target = first
        elif to == "latest":
            target = last
        elif isinstance(to, datetime):
            assert at_time is not None
            found = at_time.get(partition, -1)
            target = found if found >= 0 else last
        else:
            assert isinstance(to, int)
            target = min(max(to, first), last)
        targets[partition] = target
    return targets
