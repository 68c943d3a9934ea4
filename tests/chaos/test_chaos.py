"""Seeded chaos runs against real processes: every fault kind at least once, then the one
checker (no lost / unseen / duplicated / inconsistent / aborted writes, ordering, replica
bytes; for the consumer groups: committed offsets never backwards nor too far, no
partition owned twice, every acknowledged message consumed by every group).

Part of the default suite (two short scenarios, about a minute and a half on 2 cores; the
group workload is smaller than `raftmq chaos`'s: 2 groups of 2 members). Network
faults need network namespaces (root, `ip`); without them that scenario is skipped and says
why. The long run is `-m soak` (RAFTMQ_CHAOS_DURATION_S, RAFTMQ_CHAOS_SEED), or the command
`raftmq chaos --duration SECONDS --seed N`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from raftmq.chaos.cluster import probe_netns
from raftmq.chaos.nemesis import (
    FAULT_KINDS,
    KILL_ALL,
    KILL_CONTROLLER_LEADER,
    KILL_PARTITION_LEADER,
    NETWORK_FAULT_KINDS,
    PARTITION_LEADER,
    PARTITION_MAJORITY_MINORITY,
    PAUSE_LEADER,
    RESTART,
    parse_fault_kinds,
    plan_schedule,
)
from raftmq.chaos.runner import ChaosRun, run_chaos_detailed
from raftmq.chaos.workload import WorkloadConfig

pytestmark = pytest.mark.chaos

PROCESS_FAULTS = (KILL_PARTITION_LEADER, KILL_CONTROLLER_LEADER, PAUSE_LEADER, KILL_ALL, RESTART)
NETWORK_FAULTS = (PARTITION_LEADER, PARTITION_MAJORITY_MINORITY)
# (seed, seconds of faults, kinds): the seeds are ones whose schedule fits every kind of the
# scenario into the duration (asserted below, so a change of the planner cannot silently
# drop a kind).
SCENARIOS = [
    pytest.param(3, 48.0, PROCESS_FAULTS, id="process-faults"),
    pytest.param(4, 22.0, NETWORK_FAULTS, id="network-faults"),
]
# One group per commit mode (explicit, auto), two members each.
SMALL_GROUPS = WorkloadConfig(groups=2, group_members=2)


def _our_namespaces() -> list[str]:
    """Network namespaces named after this test process (the harness's naming scheme)."""
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    prefix = f"raftmq-{os.getpid()}-"
    return [line.split()[0] for line in listing.splitlines() if line.startswith(prefix)]


def _assert_run_passed(run: ChaosRun) -> None:
    assert run.result.valid, f"history invalid, replay: {run.replay_command}\n{run.summary}"
    assert run.final_read.complete, (
        f"final read incomplete ({'; '.join(run.final_read.problems)}), "
        f"replay: {run.replay_command}"
    )
    assert not run.harness_problems, f"{run.harness_problems}, replay: {run.replay_command}"
    assert run.replicas, "no replica logs were read after the run"
    # Liveness: after every fault (and after the final heal) produce and leadership came
    # back, and the replicas converged.
    assert not run.liveness_problems, (
        "liveness: " + "; ".join(run.liveness_problems) + f"\nreplay: {run.replay_command}"
    )
    assert run.groups_drained, f"the groups did not drain, replay: {run.replay_command}"


def _assert_groups_exercised(run: ChaosRun) -> None:
    """A member was SIGKILLed during every fault and restarted with the same and with a new
    instance id; both groups (explicit and auto commits) consumed and rebalanced."""
    crashed_during = {(kind, start) for kind, start in run.group_chaos["faults"]}
    assert all((f.kind, f.start_ms) in crashed_during for f in run.faults), run.group_chaos
    assert run.group_chaos["restarts_same"] >= 1 and run.group_chaos["restarts_new"] >= 1
    groups = run.result.groups
    assert set(groups) == {"g0", "g1"}
    assert groups["g0"]["commits_ok"] > 0  # the explicit group's commits are in the history
    for figures in groups.values():
        assert figures["deliveries"] >= figures["values_consumed"] > 0
        assert figures["assignment_changes"] > 0 and figures["offset_reads_ok"] > 0
    assert sum(g["members_crashed"] for g in groups.values()) == run.group_chaos["crashes"]


@pytest.mark.parametrize(("seed", "duration_s", "kinds"), SCENARIOS)
def test_seeded_chaos_run_keeps_every_acknowledged_write(
    seed: int, duration_s: float, kinds: tuple[str, ...], tmp_path: Path
) -> None:
    netns = probe_netns()
    if NETWORK_FAULT_KINDS & set(kinds) and not netns.available:
        pytest.skip(f"network faults need network namespaces: {netns.reason}")
    assert {s.kind for s in plan_schedule(seed, duration_s, kinds)} == set(kinds)

    run = run_chaos_detailed(
        seed, duration_s, tmp_path / f"seed-{seed}", kinds, workload_config=SMALL_GROUPS
    )

    assert run.injected_kinds == set(kinds), run.summary
    _assert_run_passed(run)
    _assert_groups_exercised(run)
    # Every fault was healed and the cluster had leaders again before the final read.
    assert all(f.end_ms is not None for f in run.faults)
    assert all(f.recovered_leader_ms is not None for f in run.faults), run.summary
    if netns.available:
        assert _our_namespaces() == [], "a network namespace outlived the run"


def test_fault_kinds_cover_the_issue() -> None:
    # The two scenarios together inject every kind the nemesis knows.
    assert set(PROCESS_FAULTS) | set(NETWORK_FAULTS) == set(FAULT_KINDS)


@pytest.mark.soak
@pytest.mark.timeout(0)
def test_soak(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A long run: `pytest -m soak` (RAFTMQ_CHAOS_DURATION_S, default 600; RAFTMQ_CHAOS_SEED,
    default random; RAFTMQ_CHAOS_FAULTS, default all)."""
    if "soak" not in str(request.config.getoption("markexpr", "")):
        pytest.skip("long chaos run: select it with -m soak")
    duration_s = float(os.environ.get("RAFTMQ_CHAOS_DURATION_S", "600"))
    seed = int(os.environ.get("RAFTMQ_CHAOS_SEED") or secrets.randbelow(1_000_000))
    kinds = parse_fault_kinds(os.environ.get("RAFTMQ_CHAOS_FAULTS", "all"))
    run = run_chaos_detailed(seed, duration_s, tmp_path / f"seed-{seed}", kinds)
    _assert_run_passed(run)
