"""Every Python example of README.md runs against a real cluster, so the docs never rot.

An example is a ```python block whose first line is `# example: NAME`; its
`localhost:9092..9094` addresses are pointed at the test cluster's brokers."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftmq import Admin, LastOffset
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


def test_every_example_is_run_here() -> None:
    assert set(examples()) == {
        "writer",
        "async-writes",
        "auto-create",
        "multiple-topics",
        "reader",
        "asyncio",
        "admin",
    }


def test_the_examples_in_order(cluster: LocalCluster) -> None:
    run("writer", cluster)
    printed = run("async-writes", cluster)
    assert printed.count("stored") > 0 and "failed" not in printed
    run("auto-create", cluster)
    run("multiple-topics", cluster)
    brokers = cluster.layout.broker_endpoints
    with Admin(brokers) as admin:
        assert set(admin.list_topics()) >= {"topic-A", "topic-B", "topic-C"}
        end = admin.list_offsets("topic-A", LastOffset)[0]
    assert end == 3 + 100 + 1
    lines = run("reader", cluster).splitlines()
    assert lines[0].startswith("message at offset 42: ")
    assert len(lines) == end - 42
    assert run("asyncio", cluster).strip() == "[b'hello', b'world']"
    printed = run("admin", cluster).splitlines()
    assert printed[1] == "{0: 0, 1: 0, 2: 0}"
