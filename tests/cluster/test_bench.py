"""Every `raftmq bench` scenario, briefly, against a real cluster: the table, the "limited
by" line and the one JSON object on the last line of stdout. Figures are not asserted
(they come from `raftmq bench` on a quiet machine, never from a test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from raftmq import Admin
from raftmq.cli.main import main
from raftmq.local_cluster import LocalCluster

from tests.conftest import running_cluster

pytestmark = pytest.mark.cluster

# Two partitions, replicated twice: the multi-partition and replication paths, on a
# cluster small enough for a shared 2-core machine.
TOPIC_FLAGS = ["--partitions", "2", "--replication-factor", "2"]


@pytest.fixture(scope="module")
def bench_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("bench-cluster"), controllers=1, brokers=2) as c:
        yield c


@pytest.fixture(scope="module")
def bootstrap(bench_cluster: LocalCluster) -> str:
    return ",".join(bench_cluster.layout.broker_endpoints)


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str, str]:
    """Run `raftmq bench ARGV --json`: (the JSON object, the text above it, stderr)."""
    assert main(["bench", *argv, "--json"]) == 0, capsys.readouterr()
    captured = capsys.readouterr()
    *table, last = captured.out.rstrip("\n").split("\n")
    return json.loads(last), "\n".join(table), captured.err


def assert_latency(figures: dict[str, float] | None) -> None:
    assert figures is not None
    assert set(figures) == {"p50", "p99", "p999"}
    assert 0 < figures["p50"] <= figures["p99"] <= figures["p999"]


def test_produce_then_consume(capsys: pytest.CaptureFixture[str], bootstrap: str) -> None:
    target = ["--bootstrap", bootstrap, "--topic", "bench-pc", *TOPIC_FLAGS]
    produced, table, progress = bench(
        capsys, "produce", *target, "--messages", "3000", "--batch-size", "500", "--progress"
    )
    assert produced["scenario"] == "produce"
    assert produced["messages"] == 3000 and produced["error"] is None
    assert produced["msgs_per_s"] > 0 and produced["mb_per_s"] > 0
    assert_latency(produced["latency_ms"])
    assert "WRITE LATENCY" in table and "limited by: " in table
    assert "100% 3,000/3,000 msgs" in progress

    compressed, _, _ = bench(
        capsys, "produce", *target, "--messages", "1000", "--acks", "1", "--compression", "zstd"
    )
    assert (compressed["messages"], compressed["compression"]) == (1000, "zstd")

    consumed, table, progress = bench(capsys, "consume", *target, "--messages", "3500")
    assert consumed["scenario"] == "consume"
    assert consumed["messages"] == 3500 and consumed["error"] is None
    assert consumed["msgs_per_s"] > 0 and consumed["mb_per_s"] > 0
    assert "MSGS/S" in table and "limited by: " in table
    assert progress == ""  # stderr is not a terminal and --progress was not given


@pytest.mark.parametrize("client", ["sync", "async"])
def test_latency(capsys: pytest.CaptureFixture[str], bootstrap: str, client: str) -> None:
    result, table, _ = bench(
        capsys, "latency", "--bootstrap", bootstrap, "--topic", f"bench-l-{client}",
        *TOPIC_FLAGS, "--messages", "40", "--client", client,
    )  # fmt: skip
    assert result["scenario"] == "latency" and result["client"] == client
    call = "awaited AsyncWriter.write_messages" if client == "async" else "sync write_messages"
    assert f"one message per {call} call" in table
    assert result["messages"] == 40 and result["error"] is None
    assert_latency(result["latency_ms"])
    assert_latency(result["end_to_end_latency_ms"])
    assert "PRODUCE->CONSUME" in table and "limited by: " in table


def test_kafka_path_beside_the_grpc_path(
    capsys: pytest.CaptureFixture[str], bench_cluster: LocalCluster, bootstrap: str
) -> None:
    pytest.importorskip("confluent_kafka")
    result, table, _ = bench(
        capsys, "kafka", "--bootstrap", bootstrap, "--topic", "bench-k", *TOPIC_FLAGS,
        "--kafka-bootstrap", bench_cluster.layout.kafka_endpoints[0],
        "--messages", "2000", "--runs", "1",
    )  # fmt: skip
    assert result["scenario"] == "kafka" and result["error"] is None
    assert set(result["msgs_per_s"]) == {
        "grpc_produce", "kafka_produce", "grpc_consume", "kafka_consume"
    }  # fmt: skip
    assert all(v > 0 for v in result["msgs_per_s"].values())
    assert set(result["kafka_over_grpc"]) == {"produce", "consume"}
    assert "kafka/grpc produce: " in table
    # Both topics hold what each path wrote (bench produce also warms each partition up
    # with one message first).
    with Admin(bootstrap) as admin:
        assert sum(admin.list_offsets("bench-k-kafka").values()) == 2000
        assert 2000 <= sum(admin.list_offsets("bench-k-grpc").values()) <= 2000 + 2


def test_failover_on_its_own_quorum(capsys: pytest.CaptureFixture[str]) -> None:
    """The scenario starts (and stops, by PID) its own three controllers."""
    result, table, runs = bench(capsys, "failover", "--runs", "1")
    assert result["scenario"] == "failover"
    [row] = result["runs"]
    assert row["error"] is None and row["killed_leader"] != row["new_leader"]
    assert result["recovery_ms"] == {"median": row["failover_ms"], "max": row["failover_ms"]}
    assert "FAILOVER MS" in table and "limited by: " in table
    assert runs.startswith("run 1: killed controller")


@pytest.mark.parametrize(("client", "pipelined"), [("sync", True), ("async", False)])
def test_e2e_at_a_fixed_rate(
    capsys: pytest.CaptureFixture[str], bootstrap: str, client: str, pipelined: bool
) -> None:
    result, table, _ = bench(
        capsys, "e2e", "--bootstrap", bootstrap, "--topic", f"bench-e2e-{client}", *TOPIC_FLAGS,
        "--rate", "200", "--duration", "2", "--client", client,
        *(["--pipeline-partial-batches"] if pipelined else []),
    )  # fmt: skip
    assert result["scenario"] == "e2e" and result["error"] is None
    assert result["client"] == client
    assert result["pipeline_partial_batches"] is pipelined
    if pipelined:
        assert "batch sent, pipelined)" in table
    else:
        assert "batch sent, one at a time per partition while not full)" in table
    reader = "an AsyncReader per partition" if client == "async" else "a Reader per partition"
    assert reader in table
    assert result["messages_requested"] == 400
    assert result["messages"] == result["acknowledged"] == 400
    assert result["duplicates"] == 0 and result["failed"] == 0
    assert result["msgs_per_s"] > 0 and result["mb_per_s"] > 0
    assert_latency(result["latency_ms"])
    assert_latency(result["produce_latency_ms"])
    assert "PRODUCE->CONSUME" in table and "SENDER LATE" in table and "limited by: " in table


@pytest.mark.parametrize("target", ["partition-leader", "follower"])
def test_failover_of_a_broker_on_its_own_cluster(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """The scenario starts (and stops, by PID) its own 3 controllers and 3 brokers, kills a
    broker once, restarts it, and reads partition 0 back."""
    result, table, runs = bench(
        capsys, "failover", "--target", target, "--runs", "1", "--idle-ms", "200",
        "--partitions", "1",
    )  # fmt: skip
    assert (result["scenario"], result["target"]) == ("failover", target)
    [row] = result["runs"]
    assert row["error"] is None and row["recovery_ms"] is not None and row["recovery_ms"] > 0
    assert result["recovery_ms"] == {"median": row["recovery_ms"], "max": row["recovery_ms"]}
    if target == "partition-leader":
        assert row["killed"] == row["leader_before"] != row["leader_after"]
    else:
        assert row["killed"] != row["leader_before"] == row["leader_after"]
    # Nothing acknowledged lost, nothing twice (an error otherwise, and main() returns 1).
    assert result["error"] is None
    assert (result["lost"], result["duplicates"]) == (0, 0)
    assert result["readback"]["acknowledged"] > 0
    assert isinstance(result["false_fencings"], int) and result["fencings"] >= 1
    assert "RECOVERY MS" in table and "read-back of partition 0" in table
    assert "false fencings: " in table and "limited by: " in table
    assert runs.startswith("run 1: killed ")


def test_partitions_on_its_own_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    result, table, _ = bench(capsys, "partitions", "--count", "30", "--duration", "2")
    assert result["scenario"] == "partitions" and result["error"] is None
    assert result["partitions"] == 30
    assert result["created_s"] > 0 and result["created_s"] >= result["metadata_ready_s"]
    assert result["write"]["acknowledged"] == 30
    idle = result["idle"]
    brokers = {f"broker-{i}" for i in (1, 2, 3)}
    assert brokers <= set(idle["cpu_pct"]) and brokers <= set(idle["rss_mib"])
    assert all(idle["rss_mib"][b] > 0 for b in brokers)
    assert isinstance(result["false_fencings"], int)
    assert "IDLE CPU" in table and "limited by: " in table


def test_consumers_on_its_own_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    result, table, _ = bench(capsys, "consumers", "--count", "20", "--duration", "2")
    assert result["scenario"] == "consumers" and result["error"] is None
    assert result["count"] == 20
    assert result["long_polls"]["issued"] >= 20
    assert result["messages"] > 0 and result["msgs_per_s"] > 0
    assert_latency(result["latency_ms"])
    assert isinstance(result["isr_shrinks"], int)
    assert isinstance(result["false_fencings"], int)
    assert "LONG POLLS" in table and "ISR shrinks: " in table and "limited by: " in table


def test_rebalance_on_its_own_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    """A group of 3 members on 6 partitions: one leaves, one joins; the figures are the
    members' own view of every partition owned once again (not asserted: shape only)."""
    result, table, runs = bench(
        capsys, "rebalance", "--count", "6", "--members", "3", "--runs", "1"
    )
    assert result["scenario"] == "rebalance" and result["error"] is None
    assert (result["partitions"], result["members"]) == (6, 3)
    assert [(r["change"], r["members"]) for r in result["runs"]] == [("leave", 2), ("join", 3)]
    for change in ("leave", "join"):
        [row] = [r for r in result["runs"] if r["change"] == change]
        assert row["error"] is None and row["recovery_ms"] > 0 and row["moved"] >= 1
        figure = row["recovery_ms"]
        assert result[change] == {"runs": 1, "recovery_ms": {"median": figure, "max": figure}}
    every = sorted(r["recovery_ms"] for r in result["runs"])
    assert result["recovery_ms"] == {
        "median": round((every[0] + every[1]) / 2, 1),
        "max": every[1],
    }
    assert isinstance(result["target_met"], bool) and result["target_median_ms"] == 1000.0
    assert "RECOVERY MS" in table and "target (issue 11)" in table and "limited by: " in table
    assert runs.startswith("run 1: one member left")
