"""kcat (librdkafka's command-line client, Debian `kcat`) against raftmq's Kafka listener:
keyed messages with headers round-trip; a message our gRPC Writer stored reads identically
through kcat; `-L` lists every broker's Kafka address; a kcat consumer group of two members
splits the partitions and a restarted member resumes at the committed offsets."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from raftmq import Admin, LastOffset, Message, Writer
from raftmq.local_cluster import LocalCluster, wait_until

from .conftest import TIMEOUT_S, group_offsets, make_topic

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(
        shutil.which("kcat") is None, reason="kcat is not installed (Debian package kcat)"
    ),
]


def kcat(cluster: LocalCluster, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        ["kcat", "-b", ",".join(cluster.layout.kafka_endpoints), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def consume_json(cluster: LocalCluster, topic: str, *extra: str) -> list[dict[str, Any]]:
    out = kcat(cluster, "-C", "-t", topic, "-J", "-e", "-o", "beginning", *extra)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_keyed_messages_with_headers_round_trip(cluster: LocalCluster) -> None:
    topic = f"kcat-{uuid.uuid4().hex[:8]}"
    make_topic(cluster, topic, 1)
    lines = [f"key-{i}:value-{i}" for i in range(5)]
    kcat(cluster, "-P", "-t", topic, "-K:", "-H", "k=v", "-H", "trace=abc", stdin="\n".join(lines))
    got = consume_json(cluster, topic)
    assert [(m["key"], m["payload"], m["headers"], m["offset"]) for m in got] == [
        (f"key-{i}", f"value-{i}", ["k", "v", "trace", "abc"], i) for i in range(5)
    ]
    assert all(m["tstype"] == "create" and m["ts"] > 0 for m in got)


def test_a_grpc_writer_message_reads_identically_through_kcat(cluster: LocalCluster) -> None:
    topic = f"kcat-grpc-{uuid.uuid4().hex[:8]}"
    make_topic(cluster, topic, 1)
    written = [
        Message(
            key=b"grpc-key",
            value=b"from grpc",
            headers=[("h", b"1"), ("h", b"2"), ("other", b"x")],
            timestamp_ms=1_700_000_000_123,
        ),
        Message(key=None, value=b"no key", timestamp_ms=1_700_000_000_456),
    ]
    with Writer(cluster.layout.broker_endpoints, topic=topic) as writer:
        writer.write_messages(*written).result(timeout=TIMEOUT_S)
    got = consume_json(cluster, topic)
    assert [(m["key"], m["payload"], m.get("headers"), m["ts"], m["tstype"]) for m in got] == [
        ("grpc-key", "from grpc", ["h", "1", "h", "2", "other", "x"], 1_700_000_000_123, "create"),
        (None, "no key", None, 1_700_000_000_456, "create"),
    ]


def test_metadata_lists_the_three_brokers_kafka_addresses(cluster: LocalCluster) -> None:
    metadata = json.loads(kcat(cluster, "-L", "-J"))
    assert sorted((b["id"], b["name"]) for b in metadata["brokers"]) == [
        (i + 1, endpoint) for i, endpoint in enumerate(cluster.layout.kafka_endpoints)
    ]


# ---------------------------------------------------------------- a kcat consumer group

PARTITIONS = 4
_ASSIGNED = re.compile(r"assigned: (.*)$")


@dataclass
class KcatMember:
    """One `kcat -G` process: its JSON messages in `out`, librdkafka's notes in `err`.
    Stopped by PID with SIGTERM (kcat then closes the consumer: commits and leaves)."""

    cluster: LocalCluster
    topic: str
    group: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    out: Path = field(init=False)
    err: Path = field(init=False)

    def __post_init__(self) -> None:
        name = uuid.uuid4().hex[:6]
        self.out = self.directory / f"{name}.out"
        self.err = self.directory / f"{name}.err"

    def start(self) -> None:
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [
                    "kcat",
                    "-b",
                    ",".join(self.cluster.layout.kafka_endpoints),
                    "-G",
                    self.group,
                    "-J",
                    "-u",
                    "-X",
                    "auto.offset.reset=earliest",
                    "-X",
                    "auto.commit.interval.ms=200",
                    "-X",
                    "session.timeout.ms=6000",
                    self.topic,
                ],
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def partitions(self) -> set[int]:
        """The partitions of its latest assignment (empty before the first)."""
        found: set[int] = set()
        for line in self.err.read_text().splitlines():
            match = _ASSIGNED.search(line)
            if match:
                found = {int(p) for p in re.findall(r"\[(\d+)\]", match[1])}
            elif "revoked:" in line:
                found = set()
        return found

    def values(self) -> list[str]:
        lines = self.out.read_text().splitlines()
        return [json.loads(line)["payload"] for line in lines if line.strip()]

    def partitions_read(self) -> set[int]:
        lines = self.out.read_text().splitlines()
        return {json.loads(line)["partition"] for line in lines if line.strip()}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def produce(cluster: LocalCluster, topic: str, values: list[str]) -> None:
    stdin = "\n".join(f"{v}:{v}" for v in values)
    kcat(cluster, "-P", "-t", topic, "-K:", stdin=stdin)


def test_a_kcat_group_of_two_splits_commits_and_resumes(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    topic, group = f"kcat-group-{uuid.uuid4().hex[:8]}", f"kcat-g-{uuid.uuid4().hex[:8]}"
    make_topic(cluster, topic, PARTITIONS)
    a, b = KcatMember(cluster, topic, group, tmp_path), KcatMember(cluster, topic, group, tmp_path)
    try:
        a.start()
        b.start()
        wait_until(
            lambda: (
                bool(a.partitions())
                and bool(b.partitions())
                and not a.partitions() & b.partitions()
                and a.partitions() | b.partitions() == set(range(PARTITIONS))
            ),
            timeout_s=TIMEOUT_S,
            what="two kcat members splitting the partitions",
            interval_s=0.2,
        )
        first = [f"first-{i}" for i in range(20)]
        produce(cluster, topic, first)
        wait_until(
            lambda: sorted(a.values() + b.values()) == sorted(first),
            timeout_s=TIMEOUT_S,
            what="the two members reading every message once",
            interval_s=0.2,
        )
        assert a.partitions_read() <= a.partitions() and b.partitions_read() <= b.partitions()
        # Auto-commit (every 200 ms) covers what they read before both close.
        wait_until(
            lambda: (
                group_offsets(cluster, group, topic, PARTITIONS) == log_end_offsets(cluster, topic)
            ),
            timeout_s=TIMEOUT_S,
            what="the group's commits reaching the log end",
            interval_s=0.2,
        )
    finally:
        a.stop()
        b.stop()
    second = [f"second-{i}" for i in range(8)]
    produce(cluster, topic, second)
    c = KcatMember(cluster, topic, group, tmp_path)
    try:
        c.start()
        wait_until(
            lambda: sorted(c.values()) == sorted(second),
            timeout_s=TIMEOUT_S,
            what="a restarted member reading only what came after the commits",
            interval_s=0.2,
        )
        # A window for anything it would wrongly re-read (it comes with the same fetches).
        time.sleep(0.5)
        assert sorted(c.values()) == sorted(second)
    finally:
        c.stop()


def log_end_offsets(cluster: LocalCluster, topic: str) -> dict[int, int]:
    with Admin(cluster.layout.broker_endpoints) as admin:
        return dict(admin.list_offsets(topic, LastOffset))
