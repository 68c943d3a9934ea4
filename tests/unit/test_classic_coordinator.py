"""The group coordinator's shell for classic groups (`GroupCoordinator.classic_*`), on
asyncio with an in-memory replica: JoinGroups that wait are parked and answered when the
round completes (by another member's request or by the tick), SyncGroups wait for the
leader, and a coordinator change answers whatever waits with NOT_COORDINATOR."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from raftmq.broker.classic_group import BeatRequest, JoinRequest, SyncRequest
from raftmq.broker.consumer_protocol import encode_assignment
from raftmq.broker.group_coordinator import (
    OFFSETS_TOPIC,
    GroupConfig,
    GroupCoordinator,
    partition_for,
)
from raftmq.broker.group_shard import ClassicCommitRequest, CommitOffset
from raftmq.broker.partition_replica import ROLE_LEADER
from raftmq.errors import ErrorCode

PARTITIONS = 1


@dataclass
class FakeLog:
    log_end_offset: int = 0
    high_watermark: int = 0

    def stored_batches(self, end: int) -> list[Any]:
        return []


@dataclass
class FakeReplica:
    """Every append is replicated at once (the high watermark follows the log end)."""

    topic: str = OFFSETS_TOPIC
    index: int = 0
    role: str = ROLE_LEADER
    leader_epoch: int = 1
    log: FakeLog = field(default_factory=FakeLog)
    batches: list[bytes] = field(default_factory=list)

    def append_as_leader(self, batch: bytes, **_: Any) -> Any:
        self.batches.append(batch)
        self.log.log_end_offset += 1
        self.log.high_watermark = self.log.log_end_offset
        return SimpleNamespace(next_offset=self.log.log_end_offset, high_watermark_advanced=True)


class FakeHandler:
    def __init__(self) -> None:
        self.replicas = SimpleNamespace(on_appended=lambda *a, **k: None)

    async def wait_replicated(self, *a: Any, **k: Any) -> None:
        return None


def image() -> Any:
    partitions = [SimpleNamespace(leader=1) for _ in range(PARTITIONS)]
    topics = {
        OFFSETS_TOPIC: SimpleNamespace(partitions=partitions),
        "t": SimpleNamespace(partitions=[SimpleNamespace(leader=1) for _ in range(4)]),
    }
    return SimpleNamespace(topics=topics, brokers={})


async def started() -> tuple[GroupCoordinator, FakeReplica]:
    coordinator = GroupCoordinator(
        broker_id=1,
        handler=FakeHandler(),  # type: ignore[arg-type]
        metadata=image,
        controllers=None,  # type: ignore[arg-type]
        on_fatal=lambda why: (_ for _ in ()).throw(AssertionError(why)),
        config=GroupConfig(initial_rebalance_delay_ms=50),
    )
    replica = FakeReplica(index=partition_for("g", PARTITIONS))
    coordinator.on_replica_role(replica)  # type: ignore[arg-type]
    coordinator.start()
    for _ in range(100):
        if not coordinator._shards[replica.index].loading:
            break
        await asyncio.sleep(0.01)
    return coordinator, replica


def join(member_id: str = "", instance: str = "") -> JoinRequest:
    return JoinRequest(
        "g",
        member_id,
        "consumer",
        (("range", b"sub"),),
        10_000,
        5_000,
        instance_id=instance,
        client_id="cli",
    )


async def two_members(coordinator: GroupCoordinator) -> dict[str, Any]:
    first = await asyncio.gather(coordinator.classic_join(join()), coordinator.classic_join(join()))
    assert all(r.error is not None and r.error.code == ErrorCode.MEMBER_ID_REQUIRED for r in first)
    assert first[0].member_id.startswith("cli-") and first[0].member_id != first[1].member_id
    # The first round of a new group ends on the tick after the initial delay: both
    # joins wait until then.
    answers = await asyncio.wait_for(
        asyncio.gather(*(coordinator.classic_join(join(r.member_id)) for r in first)), 5
    )
    return {a.member_id: a for a in answers}


def test_joins_wait_for_the_round_and_syncs_for_the_leader() -> None:
    async def main() -> None:
        coordinator, replica = await started()
        try:
            answers = await two_members(coordinator)
            generations = {a.generation_id for a in answers.values()}
            assert generations == {1} and all(a.error is None for a in answers.values())
            leader = next(iter(answers.values())).leader_id
            follower = next(m for m in answers if m != leader)
            assert answers[leader].members and not answers[follower].members
            plan = {
                leader: encode_assignment(frozenset({("t", 0), ("t", 1)})),
                follower: encode_assignment(frozenset({("t", 2), ("t", 3)})),
            }
            waiting = asyncio.ensure_future(coordinator.classic_sync(SyncRequest("g", follower, 1)))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            mine = await coordinator.classic_sync(
                SyncRequest("g", leader, 1, assignments=tuple(plan.items()))
            )
            theirs = await asyncio.wait_for(waiting, 5)
            assert (mine.assignment, theirs.assignment) == (plan[leader], plan[follower])
            assert await coordinator.classic_heartbeat(BeatRequest("g", follower, 1)) is None
            ok = await coordinator.classic_commit(
                ClassicCommitRequest(
                    "g", follower, 1, (CommitOffset("t", 2, 5), CommitOffset("t", 0, 5))
                )
            )
            assert ok.partitions[("t", 2)] is None
            assert ok.partitions[("t", 0)].code == ErrorCode.NOT_PARTITION_OWNER  # type: ignore[union-attr]
            error, offsets = await coordinator.fetch_offsets("g", [("t", 2)])
            assert error is None and offsets[("t", 2)].offset == 5  # type: ignore[union-attr]
            assert replica.batches, "snapshots and offsets went through the log"
            _, listings = coordinator.group_listings()
            assert [(g.group_id, g.state, g.group_type) for g in listings] == [
                ("g", "Stable", "classic")
            ]
        finally:
            await coordinator.stop()

    asyncio.run(main())


def test_a_coordinator_change_answers_waiting_requests_not_coordinator() -> None:
    async def main() -> None:
        coordinator, replica = await started()
        try:
            first = await coordinator.classic_join(join())
            waiting = asyncio.ensure_future(coordinator.classic_join(join(first.member_id)))
            await asyncio.sleep(0.01)
            assert not waiting.done()
            replica.role = "follower"
            coordinator.on_replica_role(replica)  # type: ignore[arg-type]
            answer = await asyncio.wait_for(waiting, 5)
            assert answer.error is not None and answer.error.code == ErrorCode.NOT_COORDINATOR
            again = await coordinator.classic_join(join(first.member_id))
            assert again.error is not None and again.error.code == ErrorCode.NOT_COORDINATOR
        finally:
            await coordinator.stop()

    asyncio.run(main())
