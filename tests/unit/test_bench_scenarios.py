"""The pure parts of the scenarios with a cluster of their own or a fixed rate (e2e,
failover of brokers, partitions, consumers): flag checks, value stamps, the read-back
check behind "nothing acknowledged lost", and the "limited by" verdicts. The scenarios
themselves run briefly in tests/cluster/test_bench.py; figures are never asserted."""

from __future__ import annotations

import argparse

import pytest
from raftmq.cli.bench import run_bench
from raftmq.cli.bench.broker_failover import (
    check_broker_failover,
    check_readback,
    limited_by,
    read_steady_value,
    readback_error,
    readback_warning,
    steady_value,
)
from raftmq.cli.bench.consumers import channel_count, consumers_plan
from raftmq.cli.bench.consumers import limited_by as consumers_limited_by
from raftmq.cli.bench.e2e import (
    E2E_DURATION_S_DEFAULT,
    e2e_limited_by,
    e2e_plan,
    e2e_value,
    read_e2e_value,
)
from raftmq.cli.bench.partitions import partitions_plan, readiness
from raftmq.cli.main import build_parser
from raftmq.metadata import NO_LEADER, PartitionRecord, TopicRecord
from raftmq.topic_config import TopicConfig


def bench_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


# ---------------------------------------------------------------- the parser


def test_failover_keeps_the_controller_leader_as_its_default_target() -> None:
    args = bench_args("failover")
    assert (args.target, args.runs, args.idle_ms) == ("controller-leader", None, 1_000)
    assert bench_args("failover", "--target", "follower", "--runs", "2").runs == 2
    with pytest.raises(SystemExit):
        bench_args("failover", "--target", "broker")


def test_the_new_scenarios_parse() -> None:
    assert bench_args("e2e", "--rate", "500").rate == 500
    assert bench_args("e2e").client == "sync"
    assert bench_args("e2e", "--client", "async").client == "async"
    assert bench_args("latency", "--client", "async").client == "async"
    with pytest.raises(SystemExit):
        bench_args("e2e", "--client", "threads")
    assert bench_args("partitions", "--count", "30").count == 30
    args = bench_args("consumers", "--count", "20", "--duration", "2")
    assert (args.count, args.duration, args.messages) == (20, 2.0, None)


def test_run_bench_rejects_bad_flags_before_starting_anything() -> None:
    for argv in (
        ["e2e", "--rate", "0"],
        ["e2e", "--messages", "10", "--duration", "1"],
        ["failover", "--target", "partition-leader", "--runs", "0"],
        ["partitions", "--count", "0"],
        ["consumers", "--count", "100000"],
    ):
        with pytest.raises(ValueError):
            run_bench(bench_args(*argv))


# ---------------------------------------------------------------- e2e


def test_e2e_runs_for_a_duration_unless_given_messages() -> None:
    assert e2e_plan(bench_args("e2e")) == (round(1_000 * E2E_DURATION_S_DEFAULT), 1_000.0)
    assert e2e_plan(bench_args("e2e", "--rate", "200", "--duration", "2")) == (400, 200.0)
    assert e2e_plan(bench_args("e2e", "--messages", "7")) == (7, 1_000.0)
    with pytest.raises(ValueError, match="longer than"):
        e2e_plan(bench_args("e2e", "--rate", "1", "--messages", "100000"))
    with pytest.raises(ValueError):
        e2e_plan(bench_args("e2e", "--duration", "0"))


def test_e2e_values_carry_the_send_time_and_sequence() -> None:
    value = e2e_value(123_456_789, 42, b"x" * 10)
    assert read_e2e_value(value) == (123_456_789, 42)
    assert read_e2e_value(b"zzzz" + value[4:]) is None  # another bench's value
    assert read_e2e_value(b"short") is None
    assert read_e2e_value(None) is None


def test_e2e_names_a_late_sender_only_when_it_matters() -> None:
    hint = "no CPU saturated"
    assert e2e_limited_by(hint, 0.05, {"p50": 1.0, "p99": 2.0, "p999": 3.0}).startswith(hint)
    late = e2e_limited_by(hint, 5.0, {"p50": 1.0, "p99": 8.0, "p999": 9.0})
    assert late.startswith("the bench's sender") and late.endswith(hint)
    # Late by 5 ms against a p99 of 100 ms: the cluster, not the sender, set the figure.
    assert e2e_limited_by(hint, 5.0, {"p50": 50.0, "p99": 100.0, "p999": 120.0}).startswith(hint)
    assert e2e_limited_by(hint, None, None) == hint


def test_e2e_says_which_path_holds_the_latency() -> None:
    e2e = {"p50": 3.0, "p99": 10.0, "p999": 12.0}
    writes = e2e_limited_by("x", 0.1, e2e, {"p50": 3.0, "p99": 9.5, "p999": 11.0})
    assert writes.endswith("the write path (replication and the high watermark) holds most of it")
    reads = e2e_limited_by("x", 0.1, e2e, {"p50": 1.0, "p99": 2.0, "p999": 3.0})
    assert "the read path" in reads


# ---------------------------------------------------------------- broker failover


def test_broker_failover_flags() -> None:
    assert check_broker_failover(bench_args("failover", "--target", "follower")) == (5, 1_000)
    args = bench_args("failover", "--target", "follower", "--runs", "3", "--idle-ms", "0")
    assert check_broker_failover(args) == (3, 0)
    with pytest.raises(ValueError):
        check_broker_failover(bench_args("failover", "--runs", "51"))
    with pytest.raises(ValueError):
        check_broker_failover(bench_args("failover", "--idle-ms", "-1"))


def test_steady_values_round_trip_and_probes_are_not_steady_writes() -> None:
    assert read_steady_value(steady_value(99)) == 99
    assert read_steady_value(b"bfp1" + steady_value(99)[4:]) is None
    assert read_steady_value(b"warm-up") is None
    assert read_steady_value(None) is None


def test_the_readback_finds_nothing_wrong_in_a_clean_log() -> None:
    acked = {0: 10, 1: 11, 2: 12}
    stored = {0: [10], 1: [11], 2: [12], 3: [13]}  # 3: maybe written, and stored
    check = check_readback(acked, {3, 4}, {5}, stored)
    assert (check["lost"], check["duplicates"], check["misplaced"]) == (0, 0, 0)
    assert (check["maybe_written"], check["maybe_written_stored"]) == (2, 1)
    assert readback_error(check) is None and readback_warning(check) is None


def test_the_readback_counts_loss_duplicates_phantoms_and_wrong_offsets() -> None:
    acked = {0: 10, 1: 11, 2: 12, 3: 14}
    stored = {1: [11, 20], 2: [12], 3: [13], 5: [15], 9: [16]}
    check = check_readback(acked, set(), {5}, stored)
    assert check["lost"] == 1 and check["examples"]["lost"] == [0]
    assert check["duplicates"] == 1 and check["examples"]["duplicated"] == [1]
    assert check["misplaced"] == 1 and check["examples"]["misplaced"] == [3]
    assert check["not_written_but_stored"] == 1
    assert check["unexpected"] == 1
    error = readback_error(check)
    assert error is not None
    assert "1 acknowledged message(s) lost" in error and "1 duplicate(s)" in error
    # Stored once, at another offset than reported: shown, not an error of its own.
    assert "another offset" not in error
    assert "sequences [3]" in str(readback_warning(check))


def _row(**figures: float | None) -> dict[str, float | None]:
    row: dict[str, float | None] = {
        "recovery_ms": None,
        "fenced_seen_ms": None,
        "new_leader_seen_ms": None,
        "probe_ms": None,
        "isr_shrink_seen_ms": None,
    }
    row.update(figures)
    return row


def test_failover_verdicts_follow_the_runs_own_timings() -> None:
    detection = limited_by(
        "partition-leader",
        [_row(recovery_ms=4000, fenced_seen_ms=3900, new_leader_seen_ms=3900, probe_ms=3950)],
    )
    assert detection.startswith("failure detection: kill -> killed broker seen fenced at 3900 ms")
    assert "backoff" not in detection
    both = limited_by(
        "partition-leader",
        [_row(recovery_ms=5500, fenced_seen_ms=3900, new_leader_seen_ms=3900, probe_ms=4000)],
    )
    assert both.startswith("failure detection") and "1500 ms before the Writer" in both
    backoff = limited_by(
        "partition-leader",
        [_row(recovery_ms=1500, fenced_seen_ms=300, new_leader_seen_ms=300, probe_ms=400)],
    )
    assert backoff.startswith("the Writer's retry and metadata backoff")
    stall = limited_by(
        "follower", [_row(recovery_ms=4000, fenced_seen_ms=3900, isr_shrink_seen_ms=3900)]
    )
    assert stall.startswith("the ISR shrink: ")
    assert limited_by("follower", [_row()]) == "no run recovered: see the error"


# ---------------------------------------------------------------- partitions and consumers


def test_partitions_flags() -> None:
    assert partitions_plan(bench_args("partitions")) == (3_000, 10.0)
    assert partitions_plan(bench_args("partitions", "--count", "30", "--duration", "2")) == (
        30,
        2.0,
    )
    with pytest.raises(ValueError):
        partitions_plan(bench_args("partitions", "--duration", "0.5"))


def test_readiness_counts_led_and_fully_in_sync_partitions() -> None:
    partitions = (
        PartitionRecord((1, 2, 3), (1, 2, 3), 1, 0, 0),
        PartitionRecord((2, 3, 1), (2, 3), 2, 0, 0),
        PartitionRecord((3, 1, 2), (3, 1, 2), NO_LEADER, 0, 0),
    )
    assert readiness(TopicRecord("t", b"\0" * 16, TopicConfig(), partitions)) == (2, 1)


def test_consumers_flags_and_channels() -> None:
    assert consumers_plan(bench_args("consumers")) == (1_000, 20.0, None)
    assert consumers_plan(bench_args("consumers", "--messages", "50")) == (1_000, 20.0, 50)
    assert [channel_count(n) for n in (1, 128, 129, 1_000, 10_000)] == [1, 1, 2, 8, 8]


def _consumers_result(**fields: object) -> dict[str, object]:
    result: dict[str, object] = {
        "broker": 1,
        "long_polls": {"errors": {}},
        "write_failures": {},
        "isr_shrinks": 0,
    }
    result.update(fields)
    return result


def test_consumers_verdicts() -> None:
    cpu = {"broker-1": 0.95, "broker-2": 0.1}
    quiet = {"broker-1": 0.004, "broker-2": None}
    assert consumers_limited_by(_consumers_result(), cpu, quiet).startswith("broker-1's CPU")
    waiting = consumers_limited_by(
        _consumers_result(
            long_polls={"errors": {"RESOURCE_EXHAUSTED": 7}},
            isr_shrinks=3,
            write_failures={"OutcomeUnknownError": 1},
        ),
        {"broker-1": 0.07},
        quiet,
    )
    assert waiting.startswith("waiting, not CPU: broker-1")
    assert "RESOURCE_EXHAUSTED 7" in waiting and "3 ISR shrink(s)" in waiting
    calm = consumers_limited_by(_consumers_result(), {"broker-1": 0.3}, quiet)
    assert calm.startswith("no CPU saturated")


def test_consumers_names_the_event_loops_that_waited_for_a_cpu_busiest_first() -> None:
    verdict = consumers_limited_by(
        _consumers_result(),
        {"broker-1": 0.5},
        {"broker-1": 0.146, "broker-2": 0.031, "broker-3": 0.019, "controller-1": None},
    )
    assert verdict.startswith("CPU contention: event loops waited for a CPU (broker-1 14.6 %,")
    assert "broker-2 3.1 %" in verdict and "broker-3" not in verdict  # under 2 %: not named
    assert "expire in step" in verdict
