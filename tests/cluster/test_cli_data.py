"""`raftmq produce` / `consume` as processes against a real cluster: acks, pinned
partitions, keyed lines on the Java partitioner, failures on stderr with exit status 1,
out-of-range positions reset with a warning, and the idle timeout. (The newcomer flow is
tests/cluster/test_newcomer_cli.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from raftmq import Admin, Murmur2
from raftmq.local_cluster import LocalCluster
from raftmq.message import Message

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cli-data"), controllers=1, brokers=2)
    try:
        cluster.start()
        cluster.wait_ready(timeout_s=60)
        brokers = cluster.layout.broker_endpoints
        with Admin(brokers) as admin:
            admin.create_topic("lines", partitions=3, replication_factor=2)
            # Batches above 1000 bytes are refused (not retriable).
            admin.create_topic(
                "small", partitions=1, replication_factor=2, configs={"max.message.bytes": "1000"}
            )
        yield dict(os.environ, RAFTMQ_BOOTSTRAP=",".join(brokers))
    finally:
        cluster.kill_all()


def raftmq(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftmq.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_acks_and_a_pinned_partition(env: dict[str, str]) -> None:
    one = raftmq(env, "produce", "lines", "--acks", "1", "--partition", "1", "--batch-size",
                 "2", "--json", stdin="a\nb\nc\nd\ne\n")  # fmt: skip
    assert one.returncode == 0, one.stderr
    acked = json_lines(one.stdout)
    assert [a["value"] for a in acked] == ["a", "b", "c", "d", "e"]
    assert {a["partition"] for a in acked} == {1}
    first = acked[0]["offset"]
    assert [a["offset"] for a in acked] == list(range(first, first + 5))

    zero = raftmq(env, "produce", "lines", "--acks", "0", "--json", stdin="x\ny\n")
    assert zero.returncode == 0, zero.stderr
    assert [(a["value"], a["offset"]) for a in json_lines(zero.stdout)] == [
        ("x", None),
        ("y", None),
    ]


def test_keyed_lines_go_where_the_java_client_puts_them(env: dict[str, str]) -> None:
    keys = [f"user-{i}" for i in range(12)]
    produced = raftmq(env, "produce", "lines", "--key-separator", "=", "--json",
                      stdin="".join(f"{k}=v\n" for k in keys))  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    java = Murmur2(consistent=True)
    assert [(a["key"], a["partition"]) for a in json_lines(produced.stdout)] == [
        (k, java.balance(Message(b"v", k), range(3))) for k in keys
    ]


def test_failed_writes_go_to_stderr_and_exit_1(env: dict[str, str]) -> None:
    failed = raftmq(env, "produce", "small", "--json", stdin="x" * 2000 + "\n")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.startswith("error: 1 message(s) to small")
    assert "MESSAGE_TOO_LARGE" in failed.stderr


def test_an_out_of_range_offset_is_reset_with_a_warning(env: dict[str, str]) -> None:
    pinned = raftmq(env, "produce", "lines", "--partition", "2", "--json", stdin="p\nq\n")
    end = json_lines(pinned.stdout)[-1]["offset"] + 1
    consumed = raftmq(env, "consume", "lines", "--partition", "2", "--offset", "1000",
                      "--timeout-ms", "1000", "--json")  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout == ""
    assert consumed.stderr == (
        f"warning: offset 1000 of lines-2 is out of range; resetting to {end}\n"
    )


def test_consume_stops_at_max_messages_or_after_the_idle_timeout(env: dict[str, str]) -> None:
    raftmq(env, "produce", "lines", stdin="".join(f"m{i}\n" for i in range(9)))
    some = raftmq(env, "consume", "lines", "--from-beginning", "--max-messages", "4",
                  "--json")  # fmt: skip
    assert some.returncode == 0, some.stderr
    shown = json_lines(some.stdout)
    assert len(shown) == 4
    assert set(shown[0]) == {"topic", "partition", "offset", "key", "value", "timestamp"}
    idle = raftmq(env, "consume", "lines", "--timeout-ms", "800")  # from the end: nothing new
    assert (idle.returncode, idle.stdout, idle.stderr) == (0, "", "")
