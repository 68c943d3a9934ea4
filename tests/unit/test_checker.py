"""The chaos history checker: one small history per anomaly kind (asserting the op indexes
it blames), a clean history, property tests over random consistent histories (always valid)
with one injected corruption (always found), JSONL round trip and the report files."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from raftmq.chaos.checker import ANOMALY_KINDS, STATS_KEYS, CheckResult, check, recovery_stats
from raftmq.chaos.history import (
    FaultWindow,
    History,
    HistoryFullError,
    MalformedHistoryError,
    Op,
    Read,
    ReplicaLog,
)
from raftmq.chaos.report import format_summary, timeline_series, write_report

TOPIC = "t"


class Recorder:
    """Records ops into a History with a fake clock that advances 1 ms per op."""

    def __init__(self) -> None:
        self.history = History()
        self.time_ms = 0.0

    def _tick(self) -> float:
        self.time_ms += 1.0
        return self.time_ms

    def invoke(self, value: str, *, process: str = "producer-0") -> Op:
        return self.history.invoke_send(process, TOPIC, value, time_ms=self._tick())

    def ok(self, invoke: Op, partition: int, offset: int) -> Op:
        return self.history.complete(
            invoke, "ok", partition=partition, offset=offset, time_ms=self._tick()
        )

    def send(self, value: str, partition: int, offset: int, *, process: str = "producer-0") -> Op:
        """An acked send; returns the ok op."""
        return self.ok(self.invoke(value, process=process), partition, offset)

    def send_info(self, value: str, *, process: str = "producer-0") -> Op:
        invoke = self.invoke(value, process=process)
        return self.history.complete(
            invoke, "info", error="REQUEST_TIMED_OUT", time_ms=self._tick()
        )

    def send_fail(self, value: str, *, process: str = "producer-0") -> Op:
        invoke = self.invoke(value, process=process)
        return self.history.complete(
            invoke, "fail", error="NOT_ENOUGH_REPLICAS", time_ms=self._tick()
        )

    def poll(self, *reads: Read, process: str = "consumer-0") -> Op:
        """An ok poll; returns the ok op."""
        invoke = self.history.invoke_poll(process, TOPIC, time_ms=self._tick())
        return self.history.complete(invoke, "ok", reads=reads, time_ms=self._tick())

    def seek(self, partition: int, offset: int, *, process: str = "consumer-0") -> Op:
        return self.history.seek(
            process, TOPIC, partition=partition, offset=offset, time_ms=self._tick()
        )[1]

    def check(self, **kwargs: object) -> CheckResult:
        return check(self.history, **kwargs)  # type: ignore[arg-type]


def found(result: CheckResult) -> dict[str, int]:
    """The anomaly kinds present, with their counts."""
    return {kind: n for kind, n in result.counts.items() if n}


# -- clean history -------------------------------------------------------------------------


def test_clean_history_is_valid() -> None:
    r = Recorder()
    r.send("a", 0, 0)
    r.send("b", 1, 0, process="producer-1")
    r.send("c", 0, 1)
    r.send_fail("x")
    r.send_info("y")  # indeterminate and never appended: fine
    r.send_info("z")  # indeterminate but appended: fine too
    r.send("d", 0, 3)
    r.poll((0, 0, "a"), (1, 0, "b"))
    r.poll((0, 1, "c"))
    r.seek(0, 0)  # rewind: allowed after a seek
    r.poll((0, 0, "a"), (0, 1, "c"), (0, 2, "z"), (0, 3, "d"), process="consumer-0")
    r.poll((1, 0, "b"), process="consumer-1")
    inflight = r.history.invoke_poll("consumer-1", TOPIC, time_ms=99.0)
    r.history.complete(inflight, "info", error="REQUEST_TIMED_OUT", time_ms=100.0)

    result = r.check()

    assert result.valid
    assert found(result) == {}
    assert all(entries == [] for entries in result.anomalies.values())
    assert set(result.counts) == set(ANOMALY_KINDS)
    assert set(result.stats) == set(STATS_KEYS)
    assert result.stats["send_ok"] == 4
    assert result.stats["send_fail"] == 1
    assert result.stats["send_info"] == 2
    assert result.stats["poll_ok"] == 5  # four reads and the seek
    assert result.stats["poll_info"] == 1
    assert result.stats["seeks"] == 1
    assert result.stats["values_acked"] == 4
    assert result.stats["values_indeterminate"] == 2
    assert result.stats["values_indeterminate_read"] == 1  # "z"
    assert result.stats["values_read"] == 5
    assert result.stats["reads_total"] == 8
    assert result.warnings == ()
    json.dumps(result.to_json_dict())  # serializable


def test_empty_history_is_valid() -> None:
    result = check([])
    assert result.valid
    assert found(result) == {}


# -- one test per anomaly ------------------------------------------------------------------


def test_lost_write_is_found_with_the_ack_and_the_read_beyond_it() -> None:
    r = Recorder()
    r.send("a", 0, 0)
    b_ok = r.send("b", 0, 1)
    # A deposed leader's acked write was truncated; a new leader put "x" (ack lost) at offset 1.
    r.send_info("x")
    r.send("c", 0, 2)
    read = r.poll((0, 0, "a"), (0, 1, "x"), (0, 2, "c"))

    result = r.check()

    assert not result.valid
    # A lost write always leaves another value (or a hole) at its offset.
    assert found(result) == {"lost": 1, "inconsistent_offsets": 1}
    [lost] = result.anomalies["lost"]
    assert lost["value"] == "b"
    assert (lost["partition"], lost["offset"]) == (0, 1)
    assert lost["send_ok_index"] == b_ok.index
    assert lost["read_beyond_op_index"] == read.index
    assert lost["op_indexes"] == [b_ok.index - 1, b_ok.index, read.index]
    assert "never read" in lost["explanation"]


def test_unread_acked_write_is_unseen_and_an_error_only_after_a_complete_final_read() -> None:
    r = Recorder()
    r.send("a", 0, 0)
    b_ok = r.send("b", 0, 1)
    r.poll((0, 0, "a"))

    result = r.check()
    assert not result.valid
    assert found(result) == {"unseen": 1}
    [unseen] = result.anomalies["unseen"]
    assert unseen["value"] == "b"
    assert unseen["max_read_offset"] == 0
    assert unseen["op_indexes"] == [b_ok.index - 1, b_ok.index]

    inconclusive = r.check(final_read_complete=False)
    assert inconclusive.valid
    assert inconclusive.counts["unseen"] == 1
    assert "unseen" not in inconclusive.error_kinds
    assert any("final read incomplete" in w for w in inconclusive.warnings)


def test_a_duplicate_makes_the_run_invalid() -> None:
    # The producers are idempotent: a retry of a send whose first attempt had landed must be
    # answered with the original offset. Here the log holds "a" twice.
    r = Recorder()
    a_ok = r.send("a", 0, 0)
    first = r.poll((0, 0, "a"), (0, 1, "a"))

    result = r.check()
    assert not result.valid
    assert "duplicate" in result.error_kinds
    assert found(result) == {"duplicate": 1}
    assert result.errors == {"duplicate": 1}
    [duplicate] = result.anomalies["duplicate"]
    assert duplicate["value"] == "a"
    assert duplicate["position_count"] == 2
    assert [(p["offset"], p["acked"]) for p in duplicate["positions"]] == [(0, True), (1, False)]
    assert duplicate["op_indexes"] == [a_ok.index, first.index]
    assert result.warnings == ()

    summary = format_summary(result, seed=5, faults=[], replay_command="raftmq chaos --seed 5")
    assert "  FAIL duplicate" in summary
    assert "RESULT: INVALID (duplicate 1)" in summary
    assert "raftmq chaos --seed 5" in summary


def test_a_duplicate_of_a_send_never_acknowledged_makes_the_run_invalid_too() -> None:
    # An indeterminate send read at two offsets: written twice, although never acked.
    r = Recorder()
    r.send_info("a")
    r.poll((0, 0, "a"), (0, 1, "a"))
    result = r.check()
    assert not result.valid
    assert result.errors == {"duplicate": 1}


def test_duplicates_are_only_a_warning_for_a_producer_that_is_not_idempotent() -> None:
    r = Recorder()
    r.send("a", 0, 0)
    r.poll((0, 0, "a"), (0, 1, "a"))
    lenient = r.check(duplicates_are_errors=False)
    assert lenient.valid
    assert "duplicate" not in lenient.error_kinds
    assert lenient.counts["duplicate"] == 1
    assert any("duplicated" in w for w in lenient.warnings)


def test_value_read_away_from_its_acked_offset_is_a_duplicate_position() -> None:
    r = Recorder()
    r.send_info("z")
    a_ok = r.send("a", 0, 1)  # the ack claims offset 1 ...
    read = r.poll((0, 0, "a"), (0, 1, "z"))  # ... but the log has it at 0
    result = r.check()
    assert found(result) == {"duplicate": 1, "inconsistent_offsets": 1}
    [inconsistent] = result.anomalies["inconsistent_offsets"]
    assert inconsistent["offset"] == 1
    assert inconsistent["op_indexes"] == [a_ok.index, read.index]
    assert not result.valid


def test_retried_send_whose_acknowledged_copy_was_truncated_is_not_only_a_duplicate() -> None:
    # The first attempt of "a" landed at offset 0 with its reply lost; the retry was acked
    # at offset 1, then a failover truncated the log to 1 and nothing reached offset 1 again.
    # "a" is still readable at 0, but the acknowledged write at offset 1 is gone.
    r = Recorder()
    r.send("a", 0, 1)
    r.poll((0, 0, "a"))
    result = r.check()
    assert found(result) == {"duplicate": 1, "unseen": 1}
    assert not result.valid
    [unseen] = result.anomalies["unseen"]
    assert (unseen["value"], unseen["offset"]) == ("a", 1)


def test_inconsistent_offsets_between_two_polls() -> None:
    r = Recorder()
    r.send_info("a")
    r.send_info("b")
    first = r.poll((0, 0, "a"), process="consumer-0")
    second = r.poll((0, 0, "b"), process="consumer-1")

    result = r.check()

    assert not result.valid
    assert found(result) == {"inconsistent_offsets": 1}
    [entry] = result.anomalies["inconsistent_offsets"]
    assert (entry["topic"], entry["partition"], entry["offset"]) == (TOPIC, 0, 0)
    assert [v["value"] for v in entry["values"]] == ["a", "b"]
    assert entry["op_indexes"] == [first.index, second.index]


def test_inconsistent_offsets_between_two_acks() -> None:
    r = Recorder()
    a_ok = r.send("a", 0, 0)
    b_ok = r.send("b", 0, 0, process="producer-1")
    read = r.poll((0, 0, "a"))

    result = r.check()

    # "b" was also never read although offset 0 was: it is lost too.
    assert found(result) == {"inconsistent_offsets": 1, "lost": 1}
    [entry] = result.anomalies["inconsistent_offsets"]
    assert entry["values"] == [
        {"value": "a", "acked_op_index": a_ok.index, "read_op_indexes": [read.index]},
        {"value": "b", "acked_op_index": b_ok.index, "read_op_indexes": []},
    ]
    assert entry["op_indexes"] == [a_ok.index, b_ok.index, read.index]


def test_aborted_read() -> None:
    r = Recorder()
    r.send("a", 0, 0)
    x_fail = r.send_fail("x")
    read = r.poll((0, 0, "a"), (0, 1, "x"))

    result = r.check()

    assert not result.valid
    assert found(result) == {"aborted_read": 1}
    [entry] = result.anomalies["aborted_read"]
    assert entry["value"] == "x"
    assert entry["send_fail_index"] == x_fail.index
    assert entry["read_op_index"] == read.index
    assert entry["send_error"] == "NOT_ENOUGH_REPLICAS"
    assert entry["op_indexes"] == [x_fail.index - 1, x_fail.index, read.index]


def test_unexpected_read() -> None:
    r = Recorder()
    read = r.poll((2, 0, "phantom"))
    result = r.check()
    assert not result.valid
    assert found(result) == {"unexpected_read": 1}
    assert result.anomalies["unexpected_read"][0]["op_indexes"] == [read.index]


def test_non_monotonic_send_after_completion() -> None:
    r = Recorder()
    a_ok = r.send("a", 0, 5)
    b_invoke = r.invoke("b")
    b_ok = r.ok(b_invoke, 0, 3)
    r.send_info("c")
    r.poll((0, 3, "b"), (0, 4, "c"), (0, 5, "a"))

    result = r.check()

    assert not result.valid
    assert found(result) == {"non_monotonic_send": 1}
    [entry] = result.anomalies["non_monotonic_send"]
    assert (entry["earlier_value"], entry["value"]) == ("a", "b")
    assert entry["op_indexes"] == [a_ok.index, b_invoke.index, b_ok.index]


def test_concurrent_sends_may_complete_in_any_offset_order() -> None:
    r = Recorder()
    a = r.invoke("a")
    b = r.invoke("b")  # invoked before "a" completed: no order between them
    r.ok(a, 0, 1)
    r.ok(b, 0, 0)
    # Another producer's order does not constrain this one.
    r.send("c", 0, 2, process="producer-1")
    r.send("d", 1, 0)  # another partition
    r.poll((0, 0, "b"), (0, 1, "a"), (0, 2, "c"), (1, 0, "d"))
    assert r.check().valid


def test_non_monotonic_poll_within_and_across_polls() -> None:
    r = Recorder()
    r.send("a", 0, 0)
    r.send("b", 0, 1)
    first = r.poll((0, 0, "a"), (0, 1, "b"))
    second = r.poll((0, 0, "a"))  # rewound without a seek
    third = r.poll((0, 1, "b"), (0, 1, "b"))  # re-read inside one poll

    result = r.check()

    assert not result.valid
    assert found(result) == {"non_monotonic_poll": 2}
    backwards, repeated = result.anomalies["non_monotonic_poll"]
    assert backwards["op_indexes"] == [first.index, second.index]
    assert (backwards["previous_offset"], backwards["offset"]) == (1, 0)
    assert repeated["op_indexes"] == [third.index]


def test_seek_allows_a_rewind_per_partition_or_for_the_whole_topic() -> None:
    r = Recorder()
    r.send("a", 0, 0)
    r.send("b", 1, 0)
    r.poll((0, 0, "a"), (1, 0, "b"))
    r.seek(0, 0)
    r.poll((0, 0, "a"))  # partition 0 was rewound by the seek
    assert r.check().valid
    r.poll((1, 0, "b"))  # partition 1 was not
    assert found(r.check()) == {"non_monotonic_poll": 1}
    r.seek(-1, 0)
    r.poll((0, 0, "a"), (1, 0, "b"))
    assert found(r.check()) == {"non_monotonic_poll": 1}


def test_poll_skip_over_an_offset_another_poll_read() -> None:
    r = Recorder()
    for offset, value in enumerate("abc"):
        r.send(value, 0, offset)
    r.poll((0, 0, "a"), (0, 1, "b"), (0, 2, "c"), process="consumer-0")
    from_op = r.poll((0, 0, "a"), process="consumer-1")
    to_op = r.poll((0, 2, "c"), process="consumer-1")

    result = r.check()

    assert not result.valid
    assert found(result) == {"poll_skip": 1}
    [entry] = result.anomalies["poll_skip"]
    assert entry["process"] == "consumer-1"
    assert (entry["from_offset"], entry["to_offset"]) == (0, 2)
    assert entry["skipped_offsets"] == [1]
    assert entry["op_indexes"] == [from_op.index, to_op.index]


def test_offset_gap_when_nobody_read_an_offset() -> None:
    r = Recorder()
    r.send("a", 0, 0)
    r.send("c", 0, 2)  # no send was acked at offset 1, and nobody read it
    read = r.poll((0, 0, "a"), (0, 2, "c"))

    result = r.check()

    assert not result.valid
    assert found(result) == {"offset_gap": 1}
    [entry] = result.anomalies["offset_gap"]
    assert (entry["missing_from_offset"], entry["missing_to_offset"]) == (1, 1)
    assert entry["missing_count"] == 1
    assert entry["op_indexes"] == [read.index]


def test_offset_gap_is_measured_from_the_lowest_offset_read() -> None:
    r = Recorder()
    r.send("a", 0, 7)  # offsets 0..6 deleted by retention: not a gap
    r.send("b", 0, 8)
    r.poll((0, 7, "a"), (0, 8, "b"))
    assert r.check().valid


def _replica(
    node: str,
    hw: int,
    sha: str,
    *,
    partition: int = 0,
    compared_below: int | None = None,
    sha_below_hw: str | None = None,
) -> ReplicaLog:
    """`sha`: the hash below `compared_below` (default: hw); `sha_below_hw`: below hw (the
    same as `sha` when both bounds are equal)."""
    bound = hw if compared_below is None else compared_below
    if sha_below_hw is None:
        sha_below_hw = sha if bound == hw else f"{sha}@{hw}"
    return ReplicaLog(
        node,
        TOPIC,
        partition,
        hw,
        sha,
        hw + 1,
        compared_below_offset=bound,
        batches_sha256_below_hw=sha_below_hw,
    )


def test_replica_divergence_is_checked_below_the_lowest_high_watermark() -> None:
    replicas = [
        # Partition 0: HWs 10, 10, 9, all hashed below 9; broker-2 differs from the others.
        _replica("broker-0", 10, "aa", compared_below=9),
        _replica("broker-1", 10, "aa", compared_below=9),
        _replica("broker-2", 9, "cc"),
        _replica("broker-0", 4, "dd", partition=1),
        _replica("broker-1", 4, "dd", partition=1),
    ]

    result = check([], replicas=replicas)

    assert not result.valid
    assert found(result) == {"replica_divergence": 1, "replica_hw_mismatch": 1}
    [divergence] = result.anomalies["replica_divergence"]
    assert (divergence["partition"], divergence["compared_below_offset"]) == (0, 9)
    assert divergence["sha256_by_node"] == {"broker-0": "aa", "broker-1": "aa", "broker-2": "cc"}
    [mismatch] = result.anomalies["replica_hw_mismatch"]
    assert mismatch["high_watermarks"] == {"broker-0": 10, "broker-1": 10, "broker-2": 9}


def test_replicas_with_equal_high_watermarks_are_compared_over_all_of_it() -> None:
    # broker-2 lags (HW 2): below 2 all agree, but broker-0 and broker-1 (HW 10) differ
    # between 2 and 10. One entry for the partition.
    replicas = [
        _replica("broker-0", 10, "aa", compared_below=2, sha_below_hw="x0"),
        _replica("broker-1", 10, "aa", compared_below=2, sha_below_hw="x1"),
        _replica("broker-2", 2, "aa"),
    ]
    result = check([], replicas=replicas)
    assert found(result) == {"replica_divergence": 1, "replica_hw_mismatch": 1}
    [divergence] = result.anomalies["replica_divergence"]
    assert divergence["compared_below_offset"] == 10
    assert divergence["sha256_by_node"] == {"broker-0": "x0", "broker-1": "x1"}


def test_replica_hw_mismatch_alone_is_a_warning() -> None:
    replicas = [_replica("broker-0", 3, "aa", compared_below=2), _replica("broker-1", 2, "aa")]
    result = check([], replicas=replicas)
    assert result.valid
    assert found(result) == {"replica_hw_mismatch": 1}
    assert any("high watermark" in w for w in result.warnings)


def test_recovery_stats_per_fault_kind() -> None:
    faults = [
        FaultWindow("kill-partition-leader", 0.0, 500.0, ("broker-1",), 300.0, 200.0),
        FaultWindow("kill-partition-leader", 1000.0, 1500.0, ("broker-2",), 900.0, 400.0),
        FaultWindow("kill-partition-leader", 2000.0, 2500.0, ("broker-0",), 100.0, None),
        FaultWindow("pause-leader", 3000.0, None, ("broker-1",)),
    ]
    stats = recovery_stats(faults)
    assert list(stats) == ["kill-partition-leader", "pause-leader"]
    kill = stats["kill-partition-leader"]
    assert (kill.count, kill.median_ms, kill.max_ms, kill.unrecovered) == (3, 300.0, 900.0, 0)
    assert (kill.leader_median_ms, kill.leader_max_ms, kill.leader_unrecovered) == (300.0, 400.0, 1)
    pause = stats["pause-leader"]
    assert (pause.median_ms, pause.unrecovered, pause.unhealed) == (None, 1, 1)

    result = check([], faults=faults)
    assert result.valid  # liveness is reported, not judged
    assert result.recovery == stats
    assert result.stats["faults"] == 4
    assert any("never healed" in w for w in result.warnings)


def test_anomaly_entries_are_capped_but_counts_are_exact() -> None:
    r = Recorder()
    r.poll(*((0, offset, f"phantom-{offset}") for offset in range(50)))
    result = r.check(anomalies_per_kind_max=10)
    assert result.counts["unexpected_read"] == 50
    assert len(result.anomalies["unexpected_read"]) == 10


# -- malformed histories -------------------------------------------------------------------


def test_malformed_histories_are_rejected() -> None:
    r = Recorder()
    a = r.invoke("a")
    with pytest.raises(MalformedHistoryError):
        r.invoke("a")  # values are unique per run
    r.ok(a, 0, 0)
    with pytest.raises(MalformedHistoryError):
        r.ok(a, 0, 1)  # completed twice
    b = r.invoke("b")
    with pytest.raises(MalformedHistoryError):
        r.history.complete(b, "ok", time_ms=1.0)  # an ok send needs its offset
    r.history.invoke_poll("consumer-0", TOPIC, time_ms=1.0)
    with pytest.raises(MalformedHistoryError):
        r.history.invoke_poll("consumer-0", TOPIC, time_ms=1.0)  # one poll at a time

    orphan = Op(0, "producer-0", "ok", "send", 0.0, TOPIC, "a", 0, 0)
    with pytest.raises(MalformedHistoryError):
        check([orphan])
    invoke = Op(0, "producer-0", "invoke", "send", 0.0, TOPIC, "a")
    with pytest.raises(MalformedHistoryError):
        check([invoke, dataclasses.replace(invoke, index=1)])


def test_history_is_bounded_but_pending_invokes_can_always_complete() -> None:
    history = History(ops_max=6)
    a = history.invoke_send("p", TOPIC, "a", time_ms=0.0)
    b = history.invoke_send("p", TOPIC, "b", time_ms=0.0)
    # 2 ops + 2 pending completions + 2 for another invoke/completion would exceed 6? No: = 6.
    c = history.invoke_send("p", TOPIC, "c", time_ms=0.0)
    with pytest.raises(HistoryFullError):
        history.invoke_send("p", TOPIC, "d", time_ms=0.0)
    for invoke in (a, b, c):
        history.complete(invoke, "info", time_ms=1.0)
    assert len(history) == 6
    assert history.pending() == ()


def test_history_records_from_many_threads() -> None:
    history = History()

    def produce(process: str) -> None:
        for n in range(200):
            invoke = history.invoke_send(process, TOPIC, f"{process}-{n}", time_ms=float(n))
            history.complete(invoke, "info", time_ms=float(n))

    threads = [threading.Thread(target=produce, args=(f"producer-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ops = history.ops()
    assert [op.index for op in ops] == list(range(8 * 200 * 2))
    assert check(history).stats["send_info"] == 8 * 200


def test_jsonl_round_trip(tmp_path: Path) -> None:
    r = Recorder()
    r.send("a", 0, 0)
    r.send_fail("x")
    r.send_info("y")
    r.poll((0, 0, "a"), (1, 4, 'ü, "quoted"'))
    r.seek(-1, 0)
    r.history.invoke_send("producer-9", TOPIC, "pending", partition=2, time_ms=0.5)
    path = tmp_path / "history.jsonl"

    r.history.to_jsonl(path)
    loaded = History.from_jsonl(path)

    assert loaded.ops() == r.history.ops()
    assert [op.value for op in loaded.pending()] == ["pending"]
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(r.history)


def test_jsonl_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"index": 0, "process": "p", "type": "ok", "f": "send"}\n', encoding="utf-8")
    with pytest.raises(MalformedHistoryError, match=r"history.jsonl:1"):
        History.from_jsonl(path)


# -- report --------------------------------------------------------------------------------


def _small_run() -> tuple[Recorder, list[FaultWindow]]:
    r = Recorder()
    for offset in range(40):
        r.send(f"v{offset}", 0, offset)
        r.time_ms += 90.0
    r.send_fail("x")
    r.send_info("y")
    r.poll(*((0, offset, f"v{offset}") for offset in range(40) if offset != 7))
    faults = [
        FaultWindow("kill-partition-leader", 500.0, 1500.0, ("broker-1",), 800.0, 600.0),
        FaultWindow("pause-leader", 2500.0, None, ("broker-2",)),
    ]
    return r, faults


def test_summary_names_the_anomalies_the_recovery_and_the_replay_command() -> None:
    r, faults = _small_run()
    result = r.check(faults=faults)

    summary = format_summary(result, seed=42, faults=faults, replay_command="make chaos SEED=42")

    assert summary.startswith("raftmq chaos check: INVALID (seed 42)")
    assert "faults injected: 2 (kill-partition-leader x1, pause-leader x1)" in summary
    assert "FAIL lost" in summary
    assert "'v7' acked at t/0@7" in summary
    assert "kill-partition-leader" in summary and "800 / 800" in summary
    assert "RESULT: INVALID (lost 1, offset_gap 1)" in summary
    assert summary.rstrip().endswith("make chaos SEED=42")

    valid = format_summary(check([]), seed=1, faults=[], replay_command="x")
    assert "RESULT: VALID" in valid and "replay" not in valid


def test_timeline_series_buckets_sends_per_second() -> None:
    r, _ = _small_run()
    series = timeline_series(r.history.ops())
    assert series.bucket_ms == 1000.0
    assert sum(series.acked_per_s) == 40
    assert sum(series.failed_per_s) == 1
    assert sum(series.indeterminate_per_s) == 1
    assert all(m is None or m == 1.0 for m in series.latency_median_ms)


def test_write_report_writes_the_three_files(tmp_path: Path) -> None:
    r, faults = _small_run()
    result = r.check(faults=faults)

    report_path = write_report(
        result,
        out_dir=tmp_path / "run",
        seed=42,
        history=r.history,
        faults=faults,
        replay_command="make chaos SEED=42",
        config={"brokers": 3, "data_dir": tmp_path},
    )

    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report_path.name == "report.json"
    assert report["valid"] is False
    assert report["seed"] == 42
    assert report["replay_command"] == "make chaos SEED=42"
    assert report["config"]["brokers"] == 3
    assert report["result"]["counts"]["lost"] == 1
    assert [f["kind"] for f in report["faults"]] == ["kill-partition-leader", "pause-leader"]
    assert History.from_jsonl(tmp_path / "run" / "history.jsonl").ops() == r.history.ops()
    if importlib.util.find_spec("matplotlib") is not None:
        png = (tmp_path / "run" / "timeline.png").read_bytes()
        assert png.startswith(b"\x89PNG")
        assert report["files"]["timeline"] == "timeline.png"


def test_write_report_without_matplotlib_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    report_path = write_report(
        check([]),
        out_dir=tmp_path,
        seed=1,
        history=[],
        faults=[],
        replay_command="x",
        config={},
    )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["files"]["timeline"] is None
    assert "matplotlib is not installed" in report["timeline_skipped_reason"]
    assert not (tmp_path / "timeline.png").exists()


# -- properties ----------------------------------------------------------------------------


@dataclass
class GeneratedRun:
    """A random run consistent with per-partition logs, and what it is made of."""

    ops: list[Op]
    logs: list[list[str]]
    acked: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)


@st.composite
def consistent_runs(draw: st.DrawFn, *, failed_min: int = 0) -> GeneratedRun:
    """Producers append each partition's log in order (one send in flight per producer), some
    acks are lost (info), some sends fail (at least `failed_min`) or time out without being
    appended; consumers poll contiguous ranges, sometimes seek back; a final reader reads
    every partition."""
    rng: random.Random = draw(st.randoms(use_true_random=False))
    partitions = draw(st.integers(1, 3))
    logs = [[f"p{p}-o{o}" for o in range(draw(st.integers(0, 10)))] for p in range(partitions)]
    producers = draw(st.integers(1, 3))
    consumers = draw(st.integers(0, 2))
    # Per producer: (value, outcome, partition, offset), log entries in offset order.
    queues: list[list[tuple[str, str, int, int]]] = [[] for _ in range(producers)]
    entries = sorted((o, p) for p in range(partitions) for o in range(len(logs[p])))
    for offset, partition in entries:
        outcome = rng.choice(("ok", "ok", "ok", "info"))
        queues[rng.randrange(producers)].append(
            (logs[partition][offset], outcome, partition, offset)
        )
    for n in range(draw(st.integers(failed_min, 3))):
        queue = queues[rng.randrange(producers)]
        outcome = "fail" if n < failed_min else rng.choice(("fail", "info"))
        queue.insert(rng.randint(0, len(queue)), (f"{outcome}-{n}", outcome, -1, -1))

    history = History()
    run = GeneratedRun(ops=[], logs=logs)
    time_ms = 0.0
    in_flight: dict[int, tuple[Op, tuple[str, str, int, int]]] = {}
    cursors = [[0] * partitions for _ in range(consumers)]
    polls_left = [rng.randint(0, 6) for _ in range(consumers)]
    while any(queues) or in_flight or any(polls_left):
        time_ms += rng.uniform(0.1, 50.0)
        actor = rng.randrange(producers + consumers)
        if actor < producers:
            if actor in in_flight:
                invoke, (value, outcome, partition, offset) = in_flight.pop(actor)
                if outcome == "ok":
                    run.acked.add(value)
                    history.complete(
                        invoke, "ok", partition=partition, offset=offset, time_ms=time_ms
                    )
                else:
                    if outcome == "fail":
                        run.failed.add(value)
                    history.complete(invoke, outcome, error="REQUEST_TIMED_OUT", time_ms=time_ms)  # type: ignore[arg-type]
            elif queues[actor]:
                send = queues[actor].pop(0)
                invoke = history.invoke_send(f"producer-{actor}", TOPIC, send[0], time_ms=time_ms)
                in_flight[actor] = (invoke, send)
            continue
        consumer = actor - producers
        if not polls_left[consumer]:
            continue
        polls_left[consumer] -= 1
        process = f"consumer-{consumer}"
        cursor = cursors[consumer]
        if rng.random() < 0.15:
            partition = rng.randrange(partitions)
            cursor[partition] = rng.randint(0, cursor[partition])
            history.seek(
                process, TOPIC, partition=partition, offset=cursor[partition], time_ms=time_ms
            )
            continue
        invoke = history.invoke_poll(process, TOPIC, time_ms=time_ms)
        reads: list[Read] = []
        for partition in rng.sample(range(partitions), rng.randint(0, partitions)):
            count = min(rng.randint(0, 3), len(logs[partition]) - cursor[partition])
            for offset in range(cursor[partition], cursor[partition] + count):
                reads.append((partition, offset, logs[partition][offset]))
            cursor[partition] += count
        history.complete(invoke, "ok", reads=reads, time_ms=time_ms + 1.0)
    for partition, log in enumerate(logs):
        for start in range(0, len(log), 4):
            invoke = history.invoke_poll("final-reader", TOPIC, time_ms=time_ms)
            reads = [(partition, o, log[o]) for o in range(start, min(start + 4, len(log)))]
            history.complete(invoke, "ok", reads=reads, time_ms=time_ms)
    run.ops = list(history.ops())
    return run


@settings(max_examples=120, deadline=None)
@given(consistent_runs())
def test_consistent_runs_are_valid(run: GeneratedRun) -> None:
    result = check(run.ops)
    assert found(result) == {}, result.anomalies
    assert result.valid
    assert result.stats["values_acked"] == len(run.acked)


def _without_value(ops: Sequence[Op], value: str) -> list[Op]:
    return [
        dataclasses.replace(op, reads=tuple(r for r in op.reads if r[2] != value))
        if op.reads
        else op
        for op in ops
    ]


@settings(max_examples=60, deadline=None)
@given(consistent_runs(), st.randoms(use_true_random=False))
def test_dropping_an_acked_value_from_the_reads_is_found(
    run: GeneratedRun, rng: random.Random
) -> None:
    assume(run.acked)
    value = rng.choice(sorted(run.acked))
    result = check(_without_value(run.ops, value))
    assert not result.valid
    reported = result.anomalies["lost"] + result.anomalies["unseen"]
    assert value in {entry["value"] for entry in reported}


@settings(max_examples=60, deadline=None)
@given(consistent_runs(), st.randoms(use_true_random=False))
def test_changing_a_value_at_an_offset_is_found(run: GeneratedRun, rng: random.Random) -> None:
    reading = [op for op in run.ops if op.reads]
    assume(reading)
    victim = rng.choice(reading)
    slot = rng.randrange(len(victim.reads))
    partition, offset, _ = victim.reads[slot]
    reads = list(victim.reads)
    reads[slot] = (partition, offset, "corrupt")
    ops = [dataclasses.replace(op, reads=tuple(reads)) if op is victim else op for op in run.ops]
    # Everything is read by the final reader, so the offset was observed at least twice
    # unless only the final reader read it and no ack named it.
    observations = sum(
        1 for op in run.ops for r in op.reads if (r[0], r[1]) == (partition, offset)
    ) + sum(
        1
        for op in run.ops
        if op.f == "send" and op.type == "ok" and (op.partition, op.offset) == (partition, offset)
    )

    result = check(ops)

    assert not result.valid
    assert "corrupt" in {entry["value"] for entry in result.anomalies["unexpected_read"]}
    if observations > 1:
        positions = {
            (e["partition"], e["offset"]) for e in result.anomalies["inconsistent_offsets"]
        }
        assert (partition, offset) in positions


@settings(max_examples=60, deadline=None)
@given(consistent_runs(failed_min=1), st.randoms(use_true_random=False))
def test_reading_a_failed_value_is_found(run: GeneratedRun, rng: random.Random) -> None:
    value = rng.choice(sorted(run.failed))
    partition = rng.randrange(len(run.logs))
    offset = len(run.logs[partition])  # appended at the end: no other anomaly
    last = run.ops[-1] if run.ops else None
    index = 0 if last is None else last.index + 1
    time_ms = 0.0 if last is None else last.time_ms
    ops = [
        *run.ops,
        Op(index, "intruder", "invoke", "poll", time_ms, TOPIC),
        Op(
            index + 1, "intruder", "ok", "poll", time_ms, TOPIC, reads=((partition, offset, value),)
        ),
    ]

    result = check(ops)

    assert found(result) == {"aborted_read": 1}
    [entry] = result.anomalies["aborted_read"]
    assert (entry["value"], entry["read_op_index"]) == (value, index + 1)
