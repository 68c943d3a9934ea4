"""The compat tier: Kafka clients nobody here wrote, against real raftmq brokers' Kafka
listeners. Each module shares one cluster (one controller, three brokers, replication 3),
stopped by PID at the module's end, also on failure. A test whose client is missing is
skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftmq import Admin
from raftmq.local_cluster import LocalCluster, wait_until

# Room for a loaded 2-core machine on top of protocol times.
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path_factory.mktemp("compat"),
        controllers=1,
        brokers=3,
        broker_args=["--default-replication-factor=3"],
    )
    try:
        cluster.start()
        cluster.wait_ready(timeout_s=90)
        yield cluster
    finally:
        cluster.kill_all()


def make_topic(cluster: LocalCluster, name: str, partitions: int) -> None:
    """Create `name` (replication 3) and wait until every partition has a leader."""
    with Admin(cluster.layout.broker_endpoints) as admin:
        admin.create_topic(name, partitions=partitions, replication_factor=3)
    wait_for_leaders(cluster, name, partitions)


def wait_for_leaders(cluster: LocalCluster, topic: str, partitions: int) -> None:
    """Until Metadata through the Kafka listener shows a leader for every partition."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": ",".join(cluster.layout.kafka_endpoints)})

    def ready() -> bool:
        found = admin.list_topics(topic, timeout=10).topics.get(topic)
        return (
            found is not None
            and found.error is None
            and len(found.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in found.partitions.values())
        )

    wait_until(ready, timeout_s=TIMEOUT_S, what=f"leaders of {topic}", interval_s=0.2)


def wait_for_file_lines(path: Path, count: int, timeout_s: float = TIMEOUT_S) -> list[str]:
    """The first `count` lines of `path` once it has them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise TimeoutError(f"{path} has fewer than {count} lines")


KAFKA_GO = Path("/usr/share/gocode/src/github.com/segmentio/kafka-go")


def go_build(source: Path, work: Path) -> Path:
    """Compile the Go main package in `source` against kafka-go 0.2.1 with Debian's Go in
    GOPATH mode (offline) into `work`; skips the test when Go or kafka-go is missing."""
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (Debian package golang-go)")
    if not KAFKA_GO.is_dir():
        pytest.skip(f"kafka-go 0.2.1 missing at {KAFKA_GO} (golang-github-segmentio-kafka-go-dev)")
    binary = work / "bin" / source.name
    env = dict(
        os.environ,
        GOPATH=f"{work}:/usr/share/gocode",
        GO111MODULE="off",
        GOFLAGS="",
        GOCACHE=str(work / "cache"),
    )
    built = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


def group_offsets(cluster: LocalCluster, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets of `topic` (OffsetFetch through the Kafka listener)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": ",".join(cluster.layout.kafka_endpoints), "group.id": group}
    )
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=TIMEOUT_S
        )
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}
