"""Every Python example of README.md runs against a real cluster, so the docs never rot.

An example is a ```python block whose first line is `# example: NAME`; its
`localhost:9092..9094` addresses are pointed at the test cluster's brokers."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import raftmq
from raftmq import Admin, LastOffset, Message, WriteError, Writer
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.local_cluster import LocalCluster

pytestmark = pytest.mark.cluster

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"```python\n# example: (?P<name>[\w-]+)\n(?P<code>.*?)```", re.DOTALL)


def examples() -> dict[str, str]:
    return {m["name"]: m["code"] for m in _BLOCK.finditer(README.read_text())}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path_factory.mktemp("readme"),
        broker_args=["--default-replication-factor=3"],
    )
    try:
        cluster.start()
        cluster.wait_ready(timeout_s=60)
        with Admin(cluster.layout.broker_endpoints) as admin:
            admin.create_topic("topic-A", partitions=1, replication_factor=3)
        yield cluster
    finally:
        cluster.kill_all()


def run(name: str, cluster: LocalCluster) -> str:
    """Run example `name` with its addresses pointed at `cluster`; return what it printed."""
    endpoints = cluster.layout.broker_endpoints
    code = re.sub(r"localhost:909([2-4])", lambda m: endpoints[int(m[1]) - 2], examples()[name])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md example {name}", "exec"), {"__name__": f"readme_{name}"})
    return out.getvalue()


class FirstWriteFindsNoLeader(Writer):
    """A Writer whose first write fails as one to a brand-new topic may (its leader is
    not elected yet): retriable, nothing written. Later writes are real."""

    writes = 0

    def write_messages(self, *messages: Message) -> Any:
        type(self).writes += 1
        if type(self).writes == 1:
            no_leader = RaftmqError(ErrorCode.LEADER_NOT_AVAILABLE, "topic-B-0 has no leader yet")
            raise WriteError([(m, no_leader) for m in messages])
        return super().write_messages(*messages)


def test_every_example_is_run_here() -> None:
    assert set(examples()) == {
        "writer",
        "async-writes",
        "auto-create",
        "multiple-topics",
        "reader",
        "asyncio",
        "admin",
        "consumer-group",
        "explicit-commit",
        "commit-interval",
    }


def test_the_examples_in_order(cluster: LocalCluster) -> None:
    run("writer", cluster)
    printed = run("async-writes", cluster)
    assert printed.count("stored") > 0 and "failed" not in printed
    # The auto-create example's retry path runs: its first write fails (retriable).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(raftmq, "Writer", FirstWriteFindsNoLeader, raising=False)
        run("auto-create", cluster)
    assert FirstWriteFindsNoLeader.writes == 2
    run("multiple-topics", cluster)
    brokers = cluster.layout.broker_endpoints
    with Admin(brokers) as admin:
        assert set(admin.list_topics()) >= {"topic-A", "topic-B", "topic-C"}
        end = admin.list_offsets("topic-A", LastOffset)[0]
        assert admin.list_offsets("topic-B", LastOffset) == {0: 2 + 1}  # auto-create, multiple
    assert end == 3 + 100 + 1
    lines = run("reader", cluster).splitlines()
    assert lines[0].startswith("message at offset 42: ")
    assert len(lines) == end - 42
    assert run("asyncio", cluster).strip() == "[b'hello', b'world']"
    printed = run("admin", cluster).splitlines()
    assert printed[1] == "{0: 0, 1: 0, 2: 0}"
    # The consumer group examples share one group: the first reads topic-A from its start
    # (no commits yet), each later one only what was written after the group's commits.
    lines = run("consumer-group", cluster).splitlines()
    assert len(lines) == end
    assert lines[0] == "message at topic/partition/offset topic-A/0/0: b'Key-A' = b'Hello World!'"
    after = [Message(f"after-{i}".encode()) for i in range(5)]
    with Writer(brokers, topic="topic-A") as writer:
        writer.write_messages(*after[:3])
    lines = run("explicit-commit", cluster).splitlines()
    assert [line.rsplit(" = ", 1)[1] for line in lines] == [
        "b'after-0'",
        "b'after-1'",
        "b'after-2'",
    ]
    assert lines[0].startswith(f"message at topic/partition/offset topic-A/0/{end}: ")
    with Writer(brokers, topic="topic-A") as writer:
        writer.write_messages(*after[3:])
    lines = run("commit-interval", cluster).splitlines()
    assert [line.rsplit(" = ", 1)[1] for line in lines] == ["b'after-3'", "b'after-4'"]
    with Admin(brokers) as admin:
        group = admin.describe_group("consumer-group-id")
    assert (group.state, group.lag) == ("empty", 0)  # each close committed, then left
    assert [p.committed_offset for p in group.partitions] == [end + 5]
