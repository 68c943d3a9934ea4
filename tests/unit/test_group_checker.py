"""The consumer-group checks of the chaos checker (`raftmq.chaos.group_checker`), on
synthetic histories: each anomaly found in a broken history and absent from its clean
twin, and the group ops' recording rules in `History`."""

from __future__ import annotations

from pathlib import Path

import pytest
from raftmq.chaos.checker import CheckResult, check
from raftmq.chaos.group_checker import GROUP_ANOMALY_KINDS, GROUP_FIGURES
from raftmq.chaos.history import (
    ASSIGN_LOST,
    ASSIGN_RELEASED,
    History,
    MalformedHistoryError,
    Op,
)

TOPIC = "t"
GROUP = "g0"
GRACE_MS = 1_000.0


class GroupRecorder:
    """Sends, group members' ops and committed-offset reads into one History; the clock
    is explicit (`at`) or advances 1 ms per op."""

    def __init__(self) -> None:
        self.history = History()
        self.time_ms = 0.0

    def at(self, time_ms: float) -> GroupRecorder:
        assert time_ms >= self.time_ms
        self.time_ms = time_ms
        return self

    def _tick(self) -> float:
        self.time_ms += 1.0
        return self.time_ms

    def send(self, value: str, partition: int, offset: int) -> Op:
        invoke = self.history.invoke_send("producer-0", TOPIC, value, time_ms=self._tick())
        return self.history.complete(
            invoke, "ok", partition=partition, offset=offset, time_ms=self._tick()
        )

    def start(self, process: str, group: str = GROUP) -> None:
        self.history.member_event(process, TOPIC, group=group, event="start", time_ms=self._tick())

    def crash(self, process: str, group: str = GROUP) -> None:
        self.history.member_event(process, TOPIC, group=group, event="crash", time_ms=self._tick())

    def close(self, process: str, group: str = GROUP) -> None:
        invoke = self.history.invoke_close(process, TOPIC, group=group, time_ms=self._tick())
        self.history.complete(invoke, "ok", time_ms=self._tick())

    def owns(
        self, process: str, *partitions: int, epoch: int = 1, dropped: str = "", group: str = GROUP
    ) -> Op:
        invoke_ms = self._tick()
        return self.history.observe_assignment(
            process,
            TOPIC,
            group=group,
            member_id=f"id-{process}",
            epoch=epoch,
            partitions=partitions,
            dropped=dropped,
            invoke_ms=invoke_ms,
            done_ms=invoke_ms + 0.01,
        )[1]

    def deliver(self, process: str, *reads: tuple[int, int, str], group: str = GROUP) -> Op:
        invoke = self.history.invoke_poll(process, TOPIC, group=group, time_ms=self._tick())
        return self.history.complete(invoke, "ok", reads=reads, time_ms=self._tick())

    def commit(
        self, process: str, partition: int, offset: int, outcome: str = "ok", group: str = GROUP
    ) -> tuple[Op, Op | None]:
        invoke = self.history.invoke_commit(
            process, TOPIC, group=group, partition=partition, offset=offset, time_ms=self._tick()
        )
        if outcome == "pending":
            return invoke, None
        assert outcome in ("ok", "fail", "info")
        done = self.history.complete(invoke, outcome, time_ms=self._tick())  # type: ignore[arg-type]
        return invoke, done

    def read_committed(self, *offsets: tuple[int, int], group: str = GROUP) -> Op:
        invoke = self.history.invoke_offsets("offsets-g0", TOPIC, group=group, time_ms=self._tick())
        return self.history.complete(invoke, "ok", offsets=offsets, time_ms=self._tick())

    def check(self, **kwargs: object) -> CheckResult:
        kwargs.setdefault("zombie_grace_ms", GRACE_MS)
        return check(self.history, **kwargs)  # type: ignore[arg-type]


def group_found(result: CheckResult) -> dict[str, int]:
    return {k: result.counts[k] for k in GROUP_ANOMALY_KINDS if result.counts[k]}


def clean_run() -> GroupRecorder:
    """Two members share partitions 0 and 1; partition 1 moves from a to b by a release;
    every acked value is handed to someone, commits and reads only grow."""
    r = GroupRecorder()
    for offset in range(3):
        r.send(f"p0-{offset}", 0, offset)
        r.send(f"p1-{offset}", 1, offset)
    r.start("g0-m0.0")
    r.start("g0-m1.0")
    r.owns("g0-m0.0", 0, 1)
    r.owns("g0-m1.0")
    r.deliver("g0-m0.0", (0, 0, "p0-0"), (1, 0, "p1-0"))
    r.commit("g0-m0.0", 0, 1)
    r.commit("g0-m0.0", 1, 1)
    r.read_committed((0, 1), (1, 1))
    r.owns("g0-m0.0", 0, 1, epoch=1)
    r.owns("g0-m0.0", 0, epoch=2, dropped=ASSIGN_RELEASED)  # 1 revoked and released
    r.owns("g0-m1.0", 1, epoch=2)
    r.deliver("g0-m1.0", (1, 1, "p1-1"), (1, 2, "p1-2"))
    r.commit("g0-m1.0", 1, 3)
    r.owns("g0-m1.0", 1, epoch=2)
    r.deliver("g0-m0.0", (0, 1, "p0-1"), (0, 2, "p0-2"))
    r.commit("g0-m0.0", 0, 3, outcome="info")  # may or may not have happened
    r.owns("g0-m0.0", 0, epoch=2)
    r.read_committed((0, 3), (1, 3))
    r.close("g0-m0.0")
    r.close("g0-m1.0")
    return r


def test_a_clean_group_history_is_valid_with_its_figures() -> None:
    result = clean_run().check()
    assert result.valid, result.warnings
    assert group_found(result) == {}
    figures = result.groups[GROUP]
    assert set(figures) == set(GROUP_FIGURES)
    assert figures["members_started"] == 2 and figures["members_closed"] == 2
    assert figures["deliveries"] == 6 and figures["values_consumed"] == 6
    assert (figures["commits_ok"], figures["commits_info"]) == (3, 1)
    assert figures["offset_reads_ok"] == 2
    # m0: {0,1} then {0}; m1: {} then {1}.
    assert figures["assignment_changes"] == 3
    assert result.stats["group_deliveries"] == 6
    # Group deliveries are reads: no per-consumer poll figures, but values read.
    assert result.stats["poll_ok"] == 0 and result.stats["values_read"] == 6


# -- committed offsets never regress -----------------------------------------------------


def test_a_committed_offset_read_lower_than_an_earlier_read_regressed() -> None:
    r = clean_run()
    r.read_committed((0, 2), (1, 3))  # partition 0 was read at 3 before
    result = r.check()
    assert group_found(result) == {"committed_offset_regressed": 1}
    [entry] = result.anomalies["committed_offset_regressed"]
    assert (entry["partition"], entry["earlier_offset"], entry["offset"]) == (0, 3, 2)
    assert not result.valid


def test_a_read_showing_nothing_after_an_acknowledged_commit_regressed() -> None:
    r = GroupRecorder()
    r.send("a", 0, 0)
    r.owns("g0-m0.0", 0)
    r.deliver("g0-m0.0", (0, 0, "a"))
    r.commit("g0-m0.0", 0, 1)
    r.owns("g0-m0.0", 0)
    r.read_committed((0, -1))  # the acknowledged commit is gone
    [entry] = r.check().anomalies["committed_offset_regressed"]
    assert (entry["earlier_source"], entry["source"]) == ("commit", "read")


def test_acknowledged_commits_regress_only_in_real_time_order() -> None:
    r = GroupRecorder()
    for offset in range(5):
        r.send(f"v{offset}", 0, offset)
    r.owns("g0-m0.0", 0)
    r.owns("g0-m1.0")
    r.deliver("g0-m0.0", *((0, o, f"v{o}") for o in range(5)))
    # Two commits in flight together may be acknowledged in either order...
    slow = r.history.invoke_commit(
        "g0-m0.0", TOPIC, group=GROUP, partition=0, offset=5, time_ms=r._tick()
    )
    fast = r.history.invoke_commit(
        "g0-m1.0", TOPIC, group=GROUP, partition=0, offset=2, time_ms=r._tick()
    )
    r.history.complete(slow, "ok", time_ms=r._tick())
    r.history.complete(fast, "ok", time_ms=r._tick())
    assert group_found(r.check()) == {"committed_too_far": 1}  # m1 was handed nothing
    # ...but one invoked after the higher one was acknowledged must not be lower.
    r.deliver("g0-m1.0", (0, 0, "v0"), (0, 1, "v1"))
    r.commit("g0-m1.0", 0, 2)
    found = group_found(r.check())
    assert found["committed_offset_regressed"] == 1


# -- never committed too far ---------------------------------------------------------------


def test_a_commit_beyond_what_the_member_was_handed_is_too_far() -> None:
    r = GroupRecorder()
    for offset in range(3):
        r.send(f"v{offset}", 0, offset)
    r.owns("g0-m0.0", 0)
    r.deliver("g0-m0.0", (0, 0, "v0"), (0, 1, "v1"))
    r.commit("g0-m0.0", 0, 2)  # one past the last handed out: fine
    r.commit("g0-m0.0", 0, 3, outcome="fail")  # beyond it, whatever the outcome
    result = r.check()
    [entry] = result.anomalies["committed_too_far"]
    assert (entry["offset"], entry["delivered_max_offset"]) == (3, 1)
    assert not result.valid


def test_a_commit_counts_only_what_that_member_was_handed_before_it() -> None:
    r = GroupRecorder()
    r.send("v0", 0, 0)
    r.owns("g0-m0.0", 0)
    r.deliver("g0-m1.0", (0, 0, "v0"))  # another member's delivery does not count
    r.commit("g0-m0.0", 0, 1, outcome="pending")  # a crashed member's commit counts too
    assert group_found(r.check()) == {"committed_too_far": 1}


def test_a_committed_offset_read_beyond_the_groups_deliveries_is_too_far() -> None:
    r = GroupRecorder()
    for offset in range(3):
        r.send(f"v{offset}", 0, offset)
    r.deliver("g0-m0.0", (0, 0, "v0"))
    r.read_committed((0, 1))
    assert group_found(r.check()) == {"group_unconsumed": 2}
    r.read_committed((0, 3))  # nobody was handed offsets 1 and 2
    r.deliver("g0-m1.0", (0, 1, "v1"), (0, 2, "v2"))  # later: does not excuse the read
    result = r.check()
    [entry] = result.anomalies["committed_too_far"]
    assert (entry["offset"], entry["delivered_max_offset"]) == (3, 0)
    assert group_found(result) == {"committed_too_far": 1}


# -- no partition owned by two members at once --------------------------------------------


def test_a_partition_owned_by_two_members_at_once() -> None:
    r = GroupRecorder()
    r.owns("g0-m0.0", 0)
    r.owns("g0-m1.0", 0)  # while m0 still has it
    r.owns("g0-m0.0", 0)
    r.owns("g0-m1.0", 0)
    r.owns("g0-m0.0", dropped=ASSIGN_RELEASED)
    result = r.check()
    [entry] = result.anomalies["partition_double_owned"]
    assert (entry["first_process"], entry["second_process"]) == ("g0-m0.0", "g0-m1.0")
    assert entry["first_ended_by"] == ASSIGN_RELEASED
    assert not result.valid


def test_a_released_partition_may_move_and_come_back() -> None:
    r = GroupRecorder()
    r.owns("g0-m0.0", 0, 1)
    r.owns("g0-m0.0", 0, 1)
    r.owns("g0-m0.0", 0, dropped=ASSIGN_RELEASED)
    r.owns("g0-m1.0", 1)
    r.owns("g0-m1.0", 1)
    r.owns("g0-m1.0", dropped=ASSIGN_RELEASED)
    r.owns("g0-m0.0", 0, 1)
    r.owns("g0-m0.0", 0, 1)
    assert group_found(r.check()) == {}


def test_a_drop_between_two_observations_splits_a_run() -> None:
    """m0 lists partition 0 before and after a drop: it may have released it meanwhile,
    so m1's ownership in between is not an overlap."""
    r = GroupRecorder()
    r.owns("g0-m0.0", 0, 1)
    r.owns("g0-m0.0", 0, 1)
    r.at(100.0).owns("g0-m1.0", 0)
    r.owns("g0-m1.0", 0)
    r.owns("g0-m1.0", dropped=ASSIGN_RELEASED)
    r.at(200.0).owns("g0-m0.0", 0, 1, dropped=ASSIGN_RELEASED)
    r.owns("g0-m0.0", 0, 1)
    assert group_found(r.check()) == {}
    # Without the drop, m0 owned partition 0 throughout: that is an overlap.
    r = GroupRecorder()
    r.owns("g0-m0.0", 0, 1)
    r.owns("g0-m0.0", 0, 1)
    r.at(100.0).owns("g0-m1.0", 0)
    r.owns("g0-m1.0", 0)
    r.owns("g0-m1.0", dropped=ASSIGN_RELEASED)
    r.at(200.0).owns("g0-m0.0", 0, 1)
    r.close("g0-m0.0")  # a graceful end: no session lag to allow for
    assert group_found(r.check()) == {"partition_double_owned": 1}


def test_one_observation_is_not_compared() -> None:
    r = GroupRecorder()
    r.owns("g0-m0.0", 0)
    r.owns("g0-m1.0", 0)
    r.owns("g0-m1.0", 0)
    r.owns("g0-m0.0", dropped=ASSIGN_RELEASED)
    assert group_found(r.check()) == {}


def test_a_crashed_members_ownership_ends_at_its_crash() -> None:
    r = GroupRecorder()
    r.owns("g0-m0.0", 0)
    r.owns("g0-m0.0", 0)
    r.at(50.0).crash("g0-m0.0")
    # Its successor takes over after the crash (a static member at once, a dynamic one
    # after the session timeout): no overlap.
    r.at(60.0).owns("g0-m0.1", 0)
    r.owns("g0-m0.1", 0)
    assert group_found(r.check()) == {}


@pytest.mark.parametrize("ended_by", ["crash", ASSIGN_LOST])
def test_an_ungraceful_end_is_allowed_the_coordinators_session_lag(ended_by: str) -> None:
    def run(second_starts_ms: float) -> CheckResult:
        r = GroupRecorder()
        r.owns("g0-m0.0", 0)
        r.at(second_starts_ms).owns("g0-m1.0", 0)
        r.owns("g0-m1.0", 0)
        r.at(5_000.0).owns("g0-m0.0", 0)  # m0's last view with the partition
        if ended_by == "crash":
            r.crash("g0-m0.0")
        else:
            r.owns("g0-m0.0", dropped=ASSIGN_LOST)
        r.owns("g0-m1.0", 0)
        return r.check()

    # m1 got it less than the grace before m0 noticed: a zombie overlap, allowed.
    within = run(5_000.0 - GRACE_MS / 2)
    assert group_found(within) == {}
    assert within.groups[GROUP]["zombie_overlaps"] == 1
    assert any("overlaps of partition ownership" in w for w in within.warnings)
    # Longer than that: the coordinator cannot have expired m0's session yet.
    beyond = run(5_000.0 - GRACE_MS * 2)
    assert group_found(beyond) == {"partition_double_owned": 1}


def test_members_of_different_groups_may_own_the_same_partition() -> None:
    r = GroupRecorder()
    r.owns("g0-m0.0", 0)
    r.owns("g1-m0.0", 0, group="g1")
    r.owns("g0-m0.0", 0)
    r.owns("g1-m0.0", 0, group="g1")
    assert group_found(r.check()) == {}


# -- every acknowledged message consumed by every group ----------------------------------


def test_an_acked_value_a_group_never_had_is_unconsumed_once_the_groups_drained() -> None:
    r = clean_run()
    r.send("late", 0, 3)
    r.deliver("g1-m0.0", *((0, o, f"p0-{o}") for o in range(3)), group="g1")
    r.deliver("g1-m0.0", *((1, o, f"p1-{o}") for o in range(3)), (0, 3, "late"), group="g1")
    result = r.check()
    [entry] = result.anomalies["group_unconsumed"]
    assert (entry["group"], entry["value"]) == (GROUP, "late")
    assert not result.valid
    assert result.groups["g1"]["values_consumed"] == 7
    undrained = r.check(groups_drained=False)
    assert undrained.valid and undrained.counts["group_unconsumed"] == 1
    assert any("groups did not drain" in w for w in undrained.warnings)


def test_redeliveries_are_counted_not_errors() -> None:
    r = clean_run()
    r.deliver("g0-m1.0", (1, 1, "p1-1"))  # read again after a rebalance
    result = r.check()
    assert result.valid
    assert result.groups[GROUP]["redeliveries"] == 1


def test_a_group_member_reading_another_value_at_a_position_is_inconsistent() -> None:
    r = clean_run()
    r.deliver("g0-m1.0", (1, 1, "not-p1-1"))
    result = r.check()
    assert result.counts["inconsistent_offsets"] == 1
    assert result.counts["unexpected_read"] == 1


# -- recording rules -------------------------------------------------------------------------


def test_group_ops_follow_the_pairing_rules() -> None:
    history = History()
    with pytest.raises(MalformedHistoryError):
        history.invoke_commit("m", TOPIC, group="", partition=0, offset=1, time_ms=0.0)
    with pytest.raises(MalformedHistoryError):
        history.invoke_commit("m", TOPIC, group=GROUP, partition=-1, offset=1, time_ms=0.0)
    first = history.invoke_commit("m", TOPIC, group=GROUP, partition=0, offset=1, time_ms=0.0)
    with pytest.raises(MalformedHistoryError):  # one commit per member at a time
        history.invoke_commit("m", TOPIC, group=GROUP, partition=1, offset=1, time_ms=0.0)
    history.invoke_poll("m", TOPIC, group=GROUP, time_ms=0.0)  # a poll meanwhile is fine
    done = history.complete(first, "ok", time_ms=1.0)
    assert (done.partition, done.offset, done.group) == (0, 1, GROUP)
    with pytest.raises(MalformedHistoryError):
        history.seek("m", TOPIC, partition=0, offset=0, time_ms=1.0)  # a poll is outstanding
    with pytest.raises(MalformedHistoryError):
        history.member_event("m", TOPIC, group=GROUP, event="close", time_ms=1.0)
    with pytest.raises(MalformedHistoryError):
        history.observe_assignment(
            "m", TOPIC, group=GROUP, member_id="x", epoch=1, partitions=[0],
            dropped="stolen", invoke_ms=1.0, done_ms=1.0,
        )  # fmt: skip
    with pytest.raises(MalformedHistoryError):  # only an ok offsets op carries offsets
        check([Op(0, "m", "invoke", "assign", 0.0, TOPIC, group=GROUP, offsets=((0, 1),))])
    orphan = Op(0, "m", "ok", "commit", 0.0, TOPIC, partition=0, offset=1, group=GROUP)
    with pytest.raises(MalformedHistoryError):
        check([orphan])


def test_group_ops_round_trip_through_jsonl(tmp_path: Path) -> None:
    r = clean_run()
    r.commit("g0-m1.0", 1, 3, outcome="pending")
    path = tmp_path / "history.jsonl"
    r.history.to_jsonl(path)
    loaded = History.from_jsonl(path)
    assert loaded.ops() == r.history.ops()
    assert [op.f for op in loaded.pending()] == ["commit"]
    assert check(loaded).groups == r.check().groups
