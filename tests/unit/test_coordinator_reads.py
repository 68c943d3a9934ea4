"""The group coordinator's reads (OffsetFetch, describe) never show a record the high
watermark has not passed, on asyncio with an in-memory replica whose high watermark the
test moves by hand.

The chaos run of seed 6104 (committed_offset_regressed): an OffsetFetch waited for the
high watermark to pass the writes before it, and in the meantime two commits were appended
(and replayed into the shard's state) that never committed; the fetch answered with their
offsets, the coordinator's broker died before the followers had them, and the next
coordinator answered the older offsets — committed offsets went backwards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from raftmq.broker.group_coordinator import (
    OFFSETS_TOPIC,
    GroupCoordinator,
    partition_for,
)
from raftmq.broker.group_shard import ClassicCommitRequest, CommitOffset, CommitResponse
from raftmq.broker.partition_replica import ROLE_LEADER

PARTITIONS = 1
WAIT_S_MAX = 5.0


@dataclass
class ManualLog:
    log_end_offset: int = 0
    high_watermark: int = 0

    def stored_batches(self, end: int) -> list[Any]:
        return []


@dataclass
class ManualReplica:
    """Appends stay above the high watermark until the test moves it (`replicate`)."""

    topic: str = OFFSETS_TOPIC
    index: int = 0
    role: str = ROLE_LEADER
    leader_epoch: int = 1
    log: ManualLog = field(default_factory=ManualLog)
    moved: asyncio.Event = field(default_factory=asyncio.Event)

    def append_as_leader(self, batch: bytes, **_: Any) -> Any:
        self.log.log_end_offset += 1
        return SimpleNamespace(next_offset=self.log.log_end_offset, high_watermark_advanced=False)

    def replicate(self, upto: int) -> None:
        assert upto <= self.log.log_end_offset
        self.log.high_watermark = upto
        self.moved.set()


class ManualHandler:
    def __init__(self) -> None:
        self.replicas = SimpleNamespace(on_appended=lambda *a, **k: None)

    async def wait_replicated(self, replica: ManualReplica, end_offset: int, **_: Any) -> None:
        while replica.log.high_watermark < end_offset:
            replica.moved.clear()
            await replica.moved.wait()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S_MAX):
        while not condition():
            await asyncio.sleep(0.001)


def image() -> Any:
    topics = {
        OFFSETS_TOPIC: SimpleNamespace(partitions=[SimpleNamespace(leader=1)]),
        "t": SimpleNamespace(partitions=[SimpleNamespace(leader=1) for _ in range(2)]),
    }
    return SimpleNamespace(topics=topics, brokers={})


def admin_commit(offset: int) -> ClassicCommitRequest:
    """A commit of a group without members (generation -1), as `group reset-offsets`."""
    return ClassicCommitRequest("g", "", -1, (CommitOffset("t", 1, offset),))


async def started(replica: ManualReplica) -> GroupCoordinator:
    coordinator = GroupCoordinator(
        broker_id=1,
        handler=ManualHandler(),  # type: ignore[arg-type]
        metadata=image,
        controllers=None,  # type: ignore[arg-type]
        on_fatal=lambda why: (_ for _ in ()).throw(AssertionError(why)),
    )
    coordinator.on_replica_role(replica)  # type: ignore[arg-type]
    await until(lambda: not coordinator._shards[replica.index].loading)
    return coordinator


def committed(answer: tuple[Any, dict[tuple[str, int], Any]]) -> int:
    error, offsets = answer
    assert error is None
    return int(offsets[("t", 1)].offset)


def test_an_offset_fetch_never_shows_a_commit_appended_while_it_waited() -> None:
    async def main() -> None:
        replica = ManualReplica(index=partition_for("g", PARTITIONS))
        coordinator = await started(replica)
        pending: list[asyncio.Future[Any]] = []

        def spawn(call: Awaitable[Any]) -> asyncio.Future[Any]:
            pending.append(asyncio.ensure_future(call))
            return pending[-1]

        try:
            first = spawn(coordinator.classic_commit(admin_commit(370)))
            await until(lambda: replica.log.log_end_offset == 1)
            # The fetch arrives while 370 is not yet committed: it waits for it...
            read = spawn(coordinator.fetch_offsets("g", [("t", 1)]))
            await asyncio.sleep(0.01)
            assert not read.done()
            # ... and meanwhile 371 is appended (and replayed), but never committed.
            second = spawn(coordinator.classic_commit(admin_commit(371)))
            await until(lambda: replica.log.log_end_offset == 2)

            replica.replicate(1)
            response: CommitResponse = await asyncio.wait_for(first, WAIT_S_MAX)
            assert response.error is None and response.partitions[("t", 1)] is None
            # What the fetch shows is committed: 370, not the 371 still above the HW (the
            # broker may die before any follower has it, and the next coordinator, loading
            # the followers' log, would answer 370 again).
            assert committed(await asyncio.wait_for(read, WAIT_S_MAX)) == 370
            assert not second.done()

            # A fetch that arrives after 371 was appended waits until it is committed.
            later = spawn(coordinator.fetch_offsets("g", [("t", 1)]))
            await asyncio.sleep(0.01)
            assert not later.done()
            replica.replicate(2)
            assert committed(await asyncio.wait_for(later, WAIT_S_MAX)) == 371
            response = await asyncio.wait_for(second, WAIT_S_MAX)
            assert response.error is None
        finally:
            for task in pending:
                task.cancel()
            await coordinator.stop()

    asyncio.run(main())
