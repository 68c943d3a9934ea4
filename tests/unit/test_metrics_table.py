"""README's metrics table is the one deploy/metrics_table.py generates from the metric
objects the nodes register, and it covers what operators look for first."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
tool = runpy.run_path(str(ROOT / "deploy" / "metrics_table.py"), run_name="metrics_table")


def test_the_readme_holds_the_generated_table() -> None:
    text = (ROOT / "README.md").read_text()
    assert tool["readme_with_table"](text) == text, (
        "README.md's metrics table is stale: run `python deploy/metrics_table.py --write`"
    )


def test_the_table_names_the_health_metrics_operators_alert_on() -> None:
    names = {row[1].strip("`") for row in tool["rows"]()}
    for wanted in (
        "raftmq_controller_offline_partitions",
        "raftmq_controller_under_replicated_partitions",
        "raftmq_controller_under_min_isr_partitions",
        "raftmq_controller_raft_term",
        "raftmq_controller_leader_changes_total",
        "raftmq_broker_isr_shrinks_total",
        "raftmq_broker_request_duration_seconds",
        "raftmq_group_lag",
    ):
        assert wanted in names
    # Counters are exposed with Prometheus' _total suffix; every metric says what it is.
    for _, name, kind, _, meaning in tool["rows"]():
        assert meaning
        assert (kind == "counter") == name.strip("`").endswith("_total"), name
