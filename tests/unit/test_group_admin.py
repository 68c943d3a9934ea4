"""The consumer-group half of Admin, pure: `CoordinatorCall`'s decisions (find, call,
follow NOT_COORDINATOR with a backoff, give up in bounds), a group's description with
committed offset, log end offset and lag per partition, offset reset targets, and the
`raftmq group` output built from them."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest
from raftmq.cli.groups import description_json, description_text, reset_to
from raftmq.client.controller_client import Backoff, EndpointOrder
from raftmq.client.group_admin import (
    CoordinatorCall,
    CoordinatorStep,
    FindStep,
    check_reset_to,
    described_topics,
    group_description,
    merged_listings,
    reset_targets,
)
from raftmq.client.group_protocol import (
    CommittedOffset,
    CoordinatorResult,
    GroupDescriptionResult,
    GroupListing,
    MemberDescription,
)
from raftmq.errors import ErrorCode, RaftmqError


def plan(timeout_ms: int = 10_000) -> CoordinatorCall:
    return CoordinatorCall(
        "g", "DescribeGroups", EndpointOrder(["b1:1", "b2:1"]), now_ms=0, timeout_ms=timeout_ms
    )


def found(endpoint: str = "c:1") -> CoordinatorResult:
    return CoordinatorResult("g", None, 3, endpoint)


def test_a_call_finds_the_coordinator_then_calls_it() -> None:
    call = plan()
    assert call.next(now_ms=0) == FindStep("b1:1", 6_000)
    call.on_coordinator(found())
    assert call.next(now_ms=10) == CoordinatorStep("c:1", 6_000)
    assert call.on_answer(None)  # final


def test_not_coordinator_backs_off_and_finds_it_again() -> None:
    call = plan()
    call.next(now_ms=0)
    call.on_coordinator(found())
    call.next(now_ms=0)
    moved = RaftmqError(ErrorCode.NOT_COORDINATOR, "moved")
    assert not call.on_answer(moved)
    assert call.next(now_ms=0) == Backoff(50)
    assert isinstance(call.next(now_ms=50), FindStep)
    call.on_coordinator(found("c:2"))
    assert call.next(now_ms=60) == CoordinatorStep("c:2", 6_000)
    loading = RaftmqError(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, "loading")
    assert not call.on_answer(loading)
    assert call.next(now_ms=60) == Backoff(100)  # doubled
    assert call.next(now_ms=160) == CoordinatorStep("c:2", 6_000)  # same coordinator
    # Other errors are the answer (the caller raises them).
    assert call.on_answer(RaftmqError(ErrorCode.GROUP_ID_NOT_FOUND, "no such group"))


def test_an_unreachable_broker_is_passed_over_and_a_fatal_find_raises() -> None:
    call = plan()
    first = call.next(now_ms=0)
    assert first == FindStep("b1:1", 6_000)
    call.on_transport_failure("b1:1", RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "down"))
    assert isinstance(call.next(now_ms=0), Backoff)
    step = call.next(now_ms=100)
    assert isinstance(step, FindStep) and step.endpoint == "b2:1"
    with pytest.raises(RaftmqError, match="INVALID_GROUP_ID"):
        call.on_coordinator(
            CoordinatorResult("g", RaftmqError(ErrorCode.INVALID_GROUP_ID, "empty"), -1, None)
        )


def test_a_call_gives_up_within_its_timeout_naming_the_last_error() -> None:
    call = plan(timeout_ms=1_000)
    now = 0
    # Bound: the call's timeout (1 s), each pass at least a backoff.
    while (step := call.next(now_ms=now)) is not None:
        if isinstance(step, Backoff):
            now += step.wait_ms
            continue
        assert step.timeout_ms <= 1_000 - now
        call.on_coordinator(
            CoordinatorResult(
                "g", RaftmqError(ErrorCode.COORDINATOR_NOT_AVAILABLE, "electing"), -1, None
            )
        )
    assert now >= 1_000
    error = call.give_up()
    assert error.code == ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert "electing" in str(error) and "within 1000 ms" in str(error)


def member(member_id: str, *partitions: int, revoking: tuple[int, ...] = ()) -> MemberDescription:
    return MemberDescription(
        member_id=member_id,
        instance_id="",
        client_id="raftmq-python",
        member_epoch=4,
        assignment=tuple(("t", p) for p in partitions),
        revoking=tuple(("t", p) for p in revoking),
        target=tuple(("t", p) for p in partitions),
        subscribed_topics=("t",),
        subscribed_pattern="",
    )


def description() -> GroupDescriptionResult:
    return GroupDescriptionResult(
        "g",
        None,
        "reconciling",
        5,
        5,
        "uniform",
        2,
        (member("m1", 0), member("m2", 1, revoking=(2,))),
    )


def test_a_description_shows_committed_offset_log_end_and_lag_per_partition() -> None:
    committed = {("t", 0): CommittedOffset(7, -1, "", 1), ("old", 0): CommittedOffset(3, -1, "", 1)}
    assert described_topics(description(), committed) == ["old", "t"]
    ends = {("t", 0): 10, ("t", 1): 4, ("t", 2): 0}
    d = group_description(description(), committed, ends)
    assert [(p.topic, p.partition, p.committed_offset, p.log_end_offset, p.lag, p.member_id)
            for p in d.partitions] == [
        ("old", 0, 3, -1, None, ""),  # a deleted topic: its commit shows, without an end
        ("t", 0, 7, 10, 3, "m1"),
        ("t", 1, -1, 4, None, "m2"),  # nothing committed: no lag to show
        ("t", 2, -1, 0, None, "m2"),  # still revoking: its member holds it
    ]  # fmt: skip
    assert d.lag == 3
    shown = description_json(d)
    assert shown["lag"] == 3 and shown["state"] == "reconciling"
    assert shown["members"][1]["revoking"] == [{"topic": "t", "partitions": [2]}]
    text = description_text(d)
    assert "state reconciling" in text and "lag 3" in text
    assert "t-2" in text  # m2's revoking column
    row = next(line for line in text.splitlines() if line.startswith("t      1"))
    assert row.split()[2:5] == ["-", "4", "-"]


def test_groups_listed_by_two_brokers_show_once() -> None:
    listed = merged_listings(
        [
            GroupListing("b", "stable", 1),
            GroupListing("a", "empty", 2),
            GroupListing("b", "stable", 3),
        ]
    )
    assert listed == [GroupListing("a", "empty", 2), GroupListing("b", "stable", 1)]


def test_reset_targets_follow_kafkas_tool() -> None:
    earliest, latest = {0: 2, 1: 0}, {0: 9, 1: 5}
    assert reset_targets("earliest", earliest, latest) == {0: 2, 1: 0}
    assert reset_targets("latest", earliest, latest) == {0: 9, 1: 5}
    assert reset_targets(7, earliest, latest) == {0: 7, 1: 5}  # clamped into each log
    assert reset_targets(1, earliest, latest) == {0: 2, 1: 1}
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert reset_targets(when, earliest, latest, {0: 4, 1: -1}) == {0: 4, 1: 5}
    for bad in ("smallest", -1, True, 1.5):
        with pytest.raises(ValueError, match="to="):
            check_reset_to(bad)  # type: ignore[arg-type]


def flags(**given: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "to_earliest": False,
        "to_latest": False,
        "to_offset": None,
        "to_time": None,
    }
    values.update(given)
    return argparse.Namespace(**values)


def test_reset_offsets_flags() -> None:
    assert reset_to(flags(to_earliest=True)) == "earliest"
    assert reset_to(flags(to_latest=True)) == "latest"
    assert reset_to(flags(to_offset=0)) == 0
    assert reset_to(flags(to_time="2026-01-02T03:04:05Z")) == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="ISO 8601"):
        reset_to(flags(to_time="yesterday"))
