"""The bench's cluster watching, on made-up observations: which broker fencings the bench
caused (it killed that broker) and which are false ones, ISR shrinks and leader changes;
and the /proc parsing behind the server CPU and RSS figures."""

from __future__ import annotations

import os

import pytest
from raftmq import schedstat
from raftmq.cli.bench.cluster import partitions_not_full
from raftmq.cli.bench.process_stats import (
    ProcessCpuMeter,
    busiest,
    cpu_cores,
    cpu_s,
    parse_stat_cpu_s,
    parse_status_rss_bytes,
    pct,
    runqueue_wait_s,
)
from raftmq.cli.bench.watcher import FencingTracker, PartitionTracker
from raftmq.metadata import NO_LEADER, BrokerRegistration, PartitionRecord, TopicRecord
from raftmq.topic_config import TopicConfig


def broker(broker_id: int, incarnation: str, *, fenced: bool = False) -> BrokerRegistration:
    return BrokerRegistration(broker_id, "127.0.0.1", 9000 + broker_id, "", incarnation, 1, fenced)


def topic(name: str, *partitions: tuple[int, tuple[int, ...]]) -> TopicRecord:
    """A topic of RF 3 whose partitions have these (leader, isr)."""
    return TopicRecord(
        name,
        b"\0" * 16,
        TopicConfig(),
        tuple(PartitionRecord((1, 2, 3), isr, leader, 0, 0) for leader, isr in partitions),
    )


# ---------------------------------------------------------------- fencings


def test_a_broker_seen_fenced_that_was_not_killed_is_a_false_fencing() -> None:
    tracker = FencingTracker()
    assert tracker.observe(1.0, [broker(1, "a"), broker(2, "b")]) == []  # first sight
    [event] = tracker.observe(2.0, [broker(1, "a", fenced=True), broker(2, "b")])
    assert (event.broker_id, event.incarnation_id, event.expected, event.at_s) == (
        1,
        "a",
        False,
        2.0,
    )
    assert (tracker.count, tracker.false_count) == (1, 1)
    # Staying fenced is not another fencing; coming back and being fenced again is.
    assert tracker.observe(3.0, [broker(1, "a", fenced=True)]) == []
    assert tracker.observe(4.0, [broker(1, "a")]) == []
    assert len(tracker.observe(5.0, [broker(1, "a", fenced=True)])) == 1
    assert tracker.false_count == 2


def test_the_killed_broker_is_expected_until_it_is_back_as_a_new_incarnation() -> None:
    tracker = FencingTracker()
    tracker.observe(0.0, [broker(1, "a"), broker(2, "b")])
    tracker.expect(1)
    [fenced] = tracker.observe(1.0, [broker(1, "a", fenced=True), broker(2, "b")])
    assert fenced.expected
    # The restart registers a new incarnation, fenced until it has caught up.
    assert tracker.observe(2.0, [broker(1, "a2", fenced=True)]) == []
    tracker.observe(3.0, [broker(1, "a2")])
    # Back in service: a later fencing of the same broker is not the bench's doing.
    [later] = tracker.observe(4.0, [broker(1, "a2", fenced=True)])
    assert not later.expected
    assert (tracker.count, tracker.false_count) == (2, 1)
    assert tracker.first_fenced_after(1, 0.5) == 1.0
    assert tracker.first_fenced_after(1, 1.5) == 4.0
    assert tracker.first_fenced_after(2, 0.0) is None


def test_an_incarnation_replaced_between_polls_counts_as_its_fencing() -> None:
    tracker = FencingTracker()
    tracker.observe(0.0, [broker(3, "c")])
    tracker.expect(3)
    # Killed, fenced, restarted and unfenced, all between two polls.
    [event] = tracker.observe(1.0, [broker(3, "c2")])
    assert (event.incarnation_id, event.expected) == ("c", True)
    [after] = tracker.observe(2.0, [broker(3, "c2", fenced=True)])
    assert not after.expected


def test_an_expectation_of_a_broker_never_seen_ends_once_it_was_down_and_back() -> None:
    tracker = FencingTracker()
    tracker.expect(2)
    tracker.observe(0.0, [broker(2, "b")])  # still up: the kill has not shown yet
    tracker.observe(1.0, [broker(2, "b", fenced=True)])
    tracker.observe(2.0, [broker(2, "b2")])
    [event] = tracker.observe(3.0, [broker(2, "b2", fenced=True)])
    assert not event.expected
    assert tracker.false_count == 1


# ---------------------------------------------------------------- partitions


def test_isr_shrinks_and_leader_changes_of_the_watched_topics() -> None:
    tracker = PartitionTracker(frozenset({"t"}))
    assert tracker.observe(0.0, [topic("t", (1, (1, 2, 3)), (2, (1, 2, 3)))]) == []
    [shrink] = tracker.observe(
        1.0, [topic("t", (1, (1, 3)), (2, (1, 2, 3))), topic("other", (1, (1,)))]
    )
    assert (shrink.topic, shrink.partition, shrink.isr_before, shrink.isr_after) == (
        "t",
        0,
        (1, 2, 3),
        (1, 3),
    )
    # An expansion is no shrink; a leader change is recorded.
    assert tracker.observe(2.0, [topic("t", (1, (1, 2, 3)), (3, (1, 3)))]) == [tracker.shrinks[-1]]
    assert tracker.shrink_count == 2
    [change] = tracker.leader_changes
    assert (change.partition, change.leader_before, change.leader_after) == (1, 2, 3)
    assert tracker.first_shrink_after("t", 0, 0.5, without=2) == 1.0
    assert tracker.first_shrink_after("t", 0, 0.5, without=3) is None
    assert tracker.first_shrink_after("t", 1, 0.0) == 2.0
    assert tracker.first_leader_change_after("t", 1, 0.0) == 2.0
    assert tracker.first_leader_change_after("t", 0, 0.0) is None


def test_a_partition_going_offline_is_no_new_leader() -> None:
    tracker = PartitionTracker()
    tracker.observe(0.0, [topic("t", (1, (1, 2)))])
    tracker.observe(1.0, [topic("t", (NO_LEADER, (1,)))])
    assert tracker.first_leader_change_after("t", 0, 0.0) is None
    tracker.observe(2.0, [topic("t", (2, (2,)))])
    assert tracker.first_leader_change_after("t", 0, 0.0) == 2.0


def test_partitions_not_full_wants_a_leader_and_every_replica_in_sync() -> None:
    t = topic("t", (1, (1, 2, 3)), (NO_LEADER, (1, 2, 3)), (2, (2, 3)))
    assert partitions_not_full(t) == [1, 2]


# ---------------------------------------------------------------- /proc


def test_cpu_seconds_from_proc_stat_with_an_awkward_command_name() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    fields = ["S", *["0"] * 10, str(3 * ticks), str(ticks), *["0"] * 30]
    stat = "4242 (raft (mq) x) " + " ".join(fields)
    assert parse_stat_cpu_s(stat) == pytest.approx(4.0)


def test_rss_from_proc_status() -> None:
    status = "Name:\tpython\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\nThreads:\t3\n"
    assert parse_status_rss_bytes(status) == 2048 * 1024
    assert parse_status_rss_bytes("Name:\tkthread\n") is None


def test_cpu_readings_of_this_process_and_of_none() -> None:
    assert cpu_s(os.getpid()) is not None
    assert cpu_s(2**22 + 12345) is None  # above pid_max: no such process


def test_run_queue_wait_from_proc_schedstat() -> None:
    assert schedstat.parse_wait_s("7000000000 250000000 1234\n") == pytest.approx(0.25)
    assert schedstat.read_wait_s("/proc/self/task/0/no-such-file") is None
    assert runqueue_wait_s(2**22 + 12345) is None
    if os.path.exists(f"/proc/{os.getpid()}/schedstat"):
        assert (runqueue_wait_s(os.getpid()) or 0.0) >= 0.0


def test_a_meter_gives_cores_and_run_queue_shares_per_name() -> None:
    meter = ProcessCpuMeter({"me": os.getpid(), "gone": 2**22 + 12345, "unknown": None})
    sum(i * i for i in range(200_000))  # some CPU to measure
    usage = meter.usage()
    assert usage.cores["gone"] is None and usage.runqueue["unknown"] is None
    if os.path.exists(f"/proc/{os.getpid()}/schedstat"):
        assert usage.cores["me"] is not None and usage.cores["me"] > 0
        assert usage.runqueue["me"] is not None and 0.0 <= usage.runqueue["me"] <= 1.0


def test_cpu_cores_and_their_rendering() -> None:
    assert cpu_cores(1.0, 1.5, 10.0) == 0.05
    assert cpu_cores(None, 1.5, 10.0) is None
    assert cpu_cores(2.0, 1.0, 10.0) is None  # another process under the same name
    assert busiest({"a": 0.1, "b": None, "c": 0.3}) == ("c", 0.3)
    assert busiest({"a": None}) is None
    assert pct(0.0312) == "3.1 %"
    assert pct(None) == "-"
