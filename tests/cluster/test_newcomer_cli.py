"""What a newcomer does after reading the README: `raftmq up`, create a topic, produce
and consume from the command line. Real processes; `up` is stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import RaftmqUp

pytestmark = pytest.mark.cluster


def raftmq(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftmq.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )


def test_up_create_produce_consume_like_a_newcomer(raftmq_up: type[RaftmqUp]) -> None:
    up = raftmq_up()
    up.wait_for_line("raftmq is ready")
    process, env = up.process, up.env
    created = raftmq(
        "topic", "create", "demo", "--partitions", "3", "--replication-factor", "3", env=env
    )
    assert created.returncode == 0, created.stderr
    assert "Created topic 'demo'" in created.stdout
    # Without --partitions / --replication-factor, the cluster's defaults (as Kafka's
    # kafka-topics.sh): one partition, and RF 3 under `raftmq up` (it once said RF 1).
    defaults = raftmq("topic", "create", "defaults", "--json", env=env)
    assert defaults.returncode == 0, defaults.stderr
    described = json.loads(defaults.stdout)
    assert described["replication_factor"] == 3 and len(described["partitions"]) == 1

    lines = [f"hello-{i}" for i in range(30)]
    produced = raftmq("produce", "demo", "--json", env=env, stdin="\n".join(lines) + "\n")
    assert produced.returncode == 0, produced.stderr
    acks = [json.loads(line) for line in produced.stdout.splitlines()]
    assert sorted(a["value"] for a in acks) == sorted(lines)
    assert {a["partition"] for a in acks} == {0, 1, 2}

    consumed = raftmq(
        "consume",
        "demo",
        "--from-beginning",
        "--max-messages",
        "30",
        "--json",
        "--timeout-ms",
        "10000",
        env=env,
    )
    assert consumed.returncode == 0, consumed.stderr
    messages = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert {(m["partition"], m["offset"], m["value"]) for m in messages} == {
        (a["partition"], a["offset"], a["value"]) for a in acks
    }

    keyed = raftmq(
        "produce", "demo", "--key-separator", ":", "--json", env=env, stdin="user1:a\nuser1:b\n"
    )
    assert keyed.returncode == 0, keyed.stderr
    [first, second] = [json.loads(line) for line in keyed.stdout.splitlines()]
    assert first["key"] == "user1" and first["partition"] == second["partition"]
    assert second["offset"] == first["offset"] + 1

    status = raftmq("cluster", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    cluster = json.loads(status.stdout)
    assert cluster["controller"]["leader_id"] in (1, 2, 3)
    assert [b["state"] for b in cluster["brokers"]] == ["active"] * 3
    [topic] = [t for t in cluster["topics"] if t["name"] == "demo"]
    for p in topic["partitions"]:
        assert sorted(p["ar"]) == [1, 2, 3] and p["osr"] == [] and p["leader"] in p["isr"]

    missing = raftmq("produce", "nope", env=env, stdin="x\n")
    assert missing.returncode == 1 and "UNKNOWN_TOPIC_OR_PARTITION" in missing.stderr

    # Ctrl-C / SIGTERM stops everything cleanly.
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 0
