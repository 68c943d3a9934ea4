"""The campaign summary of `raftmq chaos --runs K`: totals over runs, recovery medians over
every individual fault (not medians of medians), and a failed run named by its seed. Pure."""

from __future__ import annotations

from pathlib import Path

from raftmq.chaos.checker import check
from raftmq.chaos.history import FaultWindow, History
from raftmq.chaos.report import format_campaign
from raftmq.chaos.runner import ChaosRun, campaign_figures
from raftmq.chaos.workload import FinalRead


def _run(
    seed: int,
    recoveries_ms: list[float],
    *,
    sends_ok: int,
    lost: bool = False,
    duplicate: bool = False,
) -> ChaosRun:
    history = History()
    for i in range(sends_ok):
        op = history.invoke_send("producer-0", "chaos", f"v{i}", partition=0, time_ms=float(i))
        history.complete(op, "ok", time_ms=float(i) + 0.5, offset=i)
    # (partition, offset, value); a lost write: offset 0 acked, never read, offset 1 read.
    reads = [(0, i, f"v{i}") for i in range(sends_ok) if not (lost and i == 0)]
    if duplicate:  # the last value written again after itself (a retry appended twice)
        reads.append((0, sends_ok, f"v{sends_ok - 1}"))
    poll = history.invoke_poll("consumer-0", "chaos", time_ms=1_000.0)
    history.complete(poll, "ok", time_ms=1_001.0, reads=reads)
    faults = [
        FaultWindow(
            "kill-all",
            start_ms=10.0,
            end_ms=20.0,
            recovered_produce_ms=ms,
            recovered_leader_ms=ms / 2,
        )
        for ms in recoveries_ms
    ]
    result = check(history, faults=faults)
    return ChaosRun(
        seed=seed,
        duration_s=60.0,
        kinds=("kill-all",),
        result=result,
        faults=faults,
        final_read=FinalRead(True, {0: len(reads)}, {0: len(reads)}, ()),
        replicas=[],
        out_dir=Path("/nonexistent"),
        report_path=Path("/nonexistent/report.json"),
        summary="",
        replay_command=f"raftmq chaos --seed {seed}",
    )


def test_campaign_totals_and_recovery_over_every_fault() -> None:
    runs = [_run(1, [100.0, 200.0, 900.0], sends_ok=3), _run(2, [300.0], sends_ok=2)]
    runs[0].writer_totals = {"writers": 1, "batches": 3, "retries": 4, "errors": 0}
    campaign = campaign_figures(runs, aborted=[])
    assert (campaign["runs"], campaign["valid"], campaign["send_ok"]) == (2, 2, 5)
    assert campaign["writer_retries"] == 4
    assert [run["writer_retries"] for run in campaign["per_run"]] == [4, 0]
    assert campaign["faults"] == 4
    assert campaign["anomalies"] == {}
    # Median of the four faults (250), not of the two run medians (200, 300).
    assert campaign["recovery"]["kill-all"]["median_ms"] == 250.0
    assert campaign["recovery"]["kill-all"]["max_ms"] == 900.0
    assert campaign["recovery"]["kill-all"]["leader_median_ms"] == 125.0
    text = format_campaign(campaign)
    assert text.startswith("campaign: 2 of 2 runs valid\n")
    assert "kill-all" in text and "250 / 900" in text
    assert "4 resent by the Writers" in text


def test_campaign_names_invalid_runs_and_aborted_seeds() -> None:
    runs = [_run(7, [100.0], sends_ok=3, lost=True), _run(8, [], sends_ok=1)]
    campaign = campaign_figures(runs, aborted=[9])
    assert (campaign["runs"], campaign["valid"], campaign["aborted_seeds"]) == (3, 1, [9])
    assert campaign["anomalies"]["lost"] == 1
    text = format_campaign(campaign)
    assert "1 of 3 runs valid, aborted seeds [9]" in text
    failed_line = next(line for line in text.splitlines() if line.strip().startswith("7 "))
    assert "FAILED" in failed_line and "lost 1" in failed_line


def test_a_run_with_a_duplicate_fails_the_campaign() -> None:
    runs = [_run(11, [100.0], sends_ok=3, duplicate=True), _run(12, [100.0], sends_ok=3)]
    assert not runs[0].ok
    campaign = campaign_figures(runs, aborted=[])
    assert (campaign["valid"], campaign["anomalies"]) == (1, {"duplicate": 1})
    text = format_campaign(campaign)
    failed_line = next(line for line in text.splitlines() if line.strip().startswith("11 "))
    assert "FAILED" in failed_line and "duplicate 1" in failed_line


def _group_run(seed: int, *, too_far: bool) -> ChaosRun:
    """A run whose one group member was handed v0 and committed 1 (or, too far, 2)."""
    run = _run(seed, [100.0], sends_ok=2)
    history = History()
    send = history.invoke_send("producer-0", "chaos", "v0", partition=0, time_ms=0.0)
    history.complete(send, "ok", time_ms=0.5, offset=0)
    history.member_event("g0-m0.0", "chaos", group="g0", event="start", time_ms=1.0)
    poll = history.invoke_poll("g0-m0.0", "chaos", group="g0", time_ms=2.0)
    history.complete(poll, "ok", time_ms=3.0, reads=[(0, 0, "v0")])
    commit = history.invoke_commit(
        "g0-m0.0", "chaos", group="g0", partition=0, offset=2 if too_far else 1, time_ms=4.0
    )
    history.complete(commit, "ok", time_ms=5.0)
    run.result = check(history, faults=run.faults)
    run.group_chaos = {"crashes": 0, "restarts_same": 1, "restarts_new": 2, "faults": []}
    return run


def test_campaign_reports_group_figures_and_group_anomalies() -> None:
    runs = [_group_run(21, too_far=False), _group_run(22, too_far=True)]
    assert runs[0].ok and not runs[1].ok
    campaign = campaign_figures(runs, aborted=[])
    assert campaign["valid"] == 1
    assert campaign["group_anomalies"]["committed_too_far"] == 1
    assert campaign["groups"]["deliveries"] == 2 and campaign["groups"]["commits_ok"] == 2
    assert campaign["groups"]["restarts_new_instance"] == 4
    assert campaign["per_run"][0]["groups"]["groups"] == 1
    text = format_campaign(campaign)
    assert "groups: 2 deliveries" in text and "committed_too_far 1" in text
    failed_line = next(line for line in text.splitlines() if line.strip().startswith("22 "))
    assert "FAILED" in failed_line and "committed_too_far 1" in failed_line
