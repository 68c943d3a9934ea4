"""The seed's kafka-go examples, adapted to kafka-go 0.2.1 (Debian's
golang-github-segmentio-kafka-go-dev, Produce v2 / Fetch v2 message sets, Metadata v1,
the classic group protocol at v0-v2) in `kafka_go/`, compiled once per session with
Debian's Go in GOPATH mode (offline) and run against raftmq's Kafka listener.

0.2.1 cannot express "one Writer for several topics": its WriterConfig has one Topic and
its Message.Topic is read-only (see kafka_go/main.go for the other differences)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftmq import Admin, LastOffset, Message, Reader, Writer
from raftmq.local_cluster import LocalCluster, wait_until

from .conftest import TIMEOUT_S, go_build, group_offsets, make_topic

pytestmark = pytest.mark.compat

SOURCE = Path(__file__).parent / "kafka_go"
SEED_MESSAGES = [("Key-A", "Hello World!"), ("Key-B", "One!"), ("Key-C", "Two!")]


@pytest.fixture(scope="session")
def kafka_go(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled examples; skipped when Go or kafka-go 0.2.1's sources are missing."""
    return go_build(SOURCE, tmp_path_factory.mktemp("kafka-go"))


def run(binary: Path, cluster: LocalCluster, example: str, *args: str) -> list[str]:
    """Run one example; its printed lines (it fails the test on a non-zero exit)."""
    done = subprocess.run(
        [str(binary), example, "-brokers", ",".join(cluster.layout.kafka_endpoints), *args],
        capture_output=True,
        text=True,
        timeout=3 * TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{example} exited {done.returncode}:\n{done.stderr}"
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def topic_a(cluster: LocalCluster) -> Iterator[str]:
    """The seed's topic-A: 3 partitions, replication 3, 60 messages written by our Writer
    to partition 0 (so a Reader from offset 42 has something to read)."""
    make_topic(cluster, "topic-A", 3)
    with Writer(cluster.layout.broker_endpoints, topic="topic-A") as writer:
        writer.write_messages(
            *[
                Message(f"value-{i}".encode(), key=f"key-{i}".encode(), partition=0)
                for i in range(60)
            ]
        ).result(timeout=TIMEOUT_S)
    yield "topic-A"


def test_a_reader_from_an_offset(kafka_go: Path, cluster: LocalCluster, topic_a: str) -> None:
    lines = run(
        kafka_go, cluster, "reader-offset", "-topic", topic_a, "-offset", "42", "-count", "18"
    )
    assert lines == [f"message at offset {i}: key-{i} = value-{i}" for i in range(42, 60)]


def test_a_writer_with_least_bytes_and_acks_all(kafka_go: Path, cluster: LocalCluster) -> None:
    topic = f"go-writer-{uuid.uuid4().hex[:8]}"
    make_topic(cluster, topic, 3)
    assert run(kafka_go, cluster, "writer", "-topic", topic) == ["wrote 3 messages"]
    got = read_all(cluster, topic, 3)
    assert sorted(got) == sorted(SEED_MESSAGES)


def test_auto_topic_creation(kafka_go: Path, cluster: LocalCluster) -> None:
    topic = f"go-auto-{uuid.uuid4().hex[:8]}"
    lines = run(kafka_go, cluster, "auto-create", "-topic", topic)
    assert lines[-1] == "wrote 3 messages", lines
    got = read_all(cluster, topic, 1)
    # The seed's loop retries a write that timed out, which may have been stored: a
    # non-idempotent producer is at-least-once, so every message is there, maybe twice.
    assert set(got) == set(SEED_MESSAGES), (lines, got)


def test_one_writer_for_several_topics() -> None:
    pytest.skip(
        "kafka-go 0.2.1 cannot express it: WriterConfig has a single Topic and "
        "Message.Topic is read-only (the seed's example needs kafka-go >= 0.4)"
    )


def test_a_consumer_group_explicit_commit_and_commit_interval_resume_in_turn(
    kafka_go: Path, cluster: LocalCluster
) -> None:
    """Three runs share one group over a 3-partition topic: the consumer group (ReadMessage
    commits each message), explicit commit (FetchMessage + CommitMessages), commit
    interval (commits each second and on Close). Each run reads only what the runs before
    it did not commit, and the group's committed offsets end at the log end."""
    topic, group = f"go-group-{uuid.uuid4().hex[:8]}", f"go-g-{uuid.uuid4().hex[:8]}"
    make_topic(cluster, topic, 3)
    values = [f"v{i}" for i in range(30)]
    with Writer(cluster.layout.broker_endpoints, topic=topic) as writer:
        writer.write_messages(
            *[Message(v.encode(), key=v.encode(), partition=i % 3) for i, v in enumerate(values)]
        ).result(timeout=TIMEOUT_S)
    seen: list[str] = []
    for example, count, linger in (
        ("consumer-group", 12, "0s"),
        ("explicit-commit", 9, "0s"),
        # Two commit ticks before Close: 0.2.1's Close may drop the last queued commits.
        ("commit-interval", 9, "3s"),
    ):
        lines = run(
            kafka_go,
            cluster,
            example,
            *("-topic", topic, "-group", group, "-count", str(count), "-linger", linger),
        )
        assert len(lines) == count and all(
            line.startswith(f"message at topic/partition/offset {topic}/") for line in lines
        ), lines
        seen += [line.rsplit(" = ", 1)[1] for line in lines]
    assert sorted(seen) == sorted(values)
    with Admin(cluster.layout.broker_endpoints) as admin:
        ends = admin.list_offsets(topic, LastOffset)
    committed = group_offsets(cluster, group, topic, 3)
    assert committed == ends, (committed, ends)


_SUBSCRIBED = re.compile(r"subscribed to partitions: map\[(?P<offsets>[^\]]*)\]")


_MESSAGE = re.compile(r"^message at topic/partition/offset [^/]+/(\d+)/\d+: .* = (.*)$", re.M)


class GoMember:
    """One `kafka_go group-member` process (ReadMessage commits each message): its
    messages on stdout, kafka-go's log (assignments) on stderr, both in files. Stopped by
    PID with SIGTERM, on which it closes its Reader and leaves the group."""

    def __init__(self, binary: Path, cluster: LocalCluster, topic: str, group: str, out: Path):
        self.out, self.err = out.with_suffix(".out"), out.with_suffix(".err")
        with self.out.open("wb") as stdout, self.err.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "group-member",
                    *("-brokers", ",".join(cluster.layout.kafka_endpoints)),
                    *("-topic", topic, "-group", group, "-count", "0", "-timeout", "5m"),
                ],
                stdout=stdout,
                stderr=stderr,
            )

    def partitions(self) -> set[int]:
        """Its latest assignment, from kafka-go's "subscribed to partitions" log line."""
        found = _SUBSCRIBED.findall(self.err.read_text())
        return {int(item.split(":")[0]) for item in found[-1].split()} if found else set()

    def read(self) -> list[tuple[int, str]]:
        """(partition, value) of every message it printed."""
        found = _MESSAGE.findall(self.out.read_text())
        return [(int(partition), value) for partition, value in found]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        assert self.process.returncode == 0, self.err.read_text()[-2000:]


def test_a_group_of_two_splits_commits_and_a_restarted_member_resumes(
    kafka_go: Path, cluster: LocalCluster, tmp_path: Path
) -> None:
    topic, group = f"go-split-{uuid.uuid4().hex[:8]}", f"go-s-{uuid.uuid4().hex[:8]}"
    partitions = 4
    make_topic(cluster, topic, partitions)

    def write(values: list[str]) -> None:
        with Writer(cluster.layout.broker_endpoints, topic=topic) as writer:
            writer.write_messages(
                *[Message(v.encode(), partition=i % partitions) for i, v in enumerate(values)]
            ).result(timeout=TIMEOUT_S)

    a = GoMember(kafka_go, cluster, topic, group, tmp_path / "a")
    b = GoMember(kafka_go, cluster, topic, group, tmp_path / "b")
    try:
        wait_until(
            lambda: (
                bool(a.partitions())
                and bool(b.partitions())
                and not a.partitions() & b.partitions()
                and a.partitions() | b.partitions() == set(range(partitions))
            ),
            timeout_s=TIMEOUT_S,
            what="two kafka-go members splitting the partitions",
            interval_s=0.2,
        )
        first = [f"first-{i}" for i in range(20)]
        write(first)
        wait_until(
            lambda: sorted(v for _, v in a.read() + b.read()) == sorted(first),
            timeout_s=TIMEOUT_S,
            what="the two members reading every message once",
            interval_s=0.2,
        )
        assert {p for p, _ in a.read()} <= a.partitions()
        assert {p for p, _ in b.read()} <= b.partitions()
    finally:
        a.stop()
        b.stop()
    second = [f"second-{i}" for i in range(8)]
    write(second)
    lines = run(
        kafka_go, cluster, "consumer-group", "-topic", topic, "-group", group, "-count", "8"
    )
    assert sorted(line.rsplit(" = ", 1)[1] for line in lines) == sorted(second)
    with Admin(cluster.layout.broker_endpoints) as admin:
        ends = admin.list_offsets(topic, LastOffset)
    assert group_offsets(cluster, group, topic, partitions) == ends


def read_all(cluster: LocalCluster, topic: str, partitions: int) -> list[tuple[str, str]]:
    """Every message of `topic` through our gRPC Reader, as (key, value) strings."""
    with Admin(cluster.layout.broker_endpoints) as admin:
        ends = admin.list_offsets(topic, LastOffset)
    got = []
    for partition in range(partitions):
        if not ends.get(partition):
            continue
        with Reader(
            cluster.layout.broker_endpoints, topic=topic, partition=partition, start_offset=0
        ) as reader:
            for _ in range(ends[partition]):
                m = reader.read_message(timeout_ms=int(TIMEOUT_S * 1000))
                got.append(((m.key or b"").decode(), m.value.decode()))
    return got
