"""README's "Use any Kafka client" stays true: its API table equals a live ApiVersions
answer, and each of its kcat / confluent-kafka / kafka-go snippets runs against a real
cluster. A snippet is a fenced block whose first line is `# kafka-example: NAME` (or
`// kafka-example: NAME` in Go); its `localhost:9492` is pointed at the test cluster."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from raftmq.local_cluster import LocalCluster

from .conftest import TIMEOUT_S, go_build

pytestmark = pytest.mark.compat

README = Path(__file__).resolve().parents[2] / "README.md"
_SECTION = re.compile(r"^## Use any Kafka client\n(?P<body>.*?)^## ", re.DOTALL | re.MULTILINE)
_BLOCK = re.compile(
    r"```(?P<lang>\w+)\n(?:#|//) kafka-example: (?P<name>[\w-]+)\n(?P<code>.*?)```", re.DOTALL
)
_ROW = re.compile(r"^\| (?P<api>\w+) \| (?P<key>\d+) \| (?P<low>\d+)\u2013(?P<high>\d+) \|$", re.M)


def section() -> str:
    match = _SECTION.search(README.read_text())
    assert match, "README.md has no section 'Use any Kafka client'"
    return match["body"]


def snippets() -> dict[str, str]:
    return {m["name"]: m["code"] for m in _BLOCK.finditer(section())}


def pointed(code: str, cluster: LocalCluster) -> str:
    return code.replace("localhost:9492", cluster.layout.kafka_endpoints[0])


def api_versions_v0(endpoint: str) -> dict[int, tuple[int, int]]:
    """A bare ApiVersions v0 request: key -> (min, max) version the broker answers."""
    host, port = endpoint.rsplit(":", 1)
    header = struct.pack(">hhih", 18, 0, 1, 4) + b"test"
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
        sock.sendall(struct.pack(">i", len(header)) + header)
        with sock.makefile("rb") as answer:
            size = struct.unpack(">i", answer.read(4))[0]
            frame = answer.read(size)
    correlation_id, error_code, count = struct.unpack_from(">ihi", frame)
    assert (correlation_id, error_code) == (1, 0)
    rows = [struct.unpack_from(">hhh", frame, 10 + 6 * i) for i in range(count)]
    return {key: (low, high) for key, low, high in rows}


def test_every_snippet_is_run_here() -> None:
    assert set(snippets()) == {"kcat", "confluent-kafka", "kafka-go"}


def test_the_api_table_is_a_live_api_versions_answer(cluster: LocalCluster) -> None:
    table = {int(m["key"]): (int(m["low"]), int(m["high"])) for m in _ROW.finditer(section())}
    assert table == api_versions_v0(cluster.layout.kafka_endpoints[0])


def test_the_kcat_snippet(cluster: LocalCluster) -> None:
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (Debian package kcat)")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", pointed(snippets()["kcat"], cluster)],
        capture_output=True,
        text=True,
        timeout=2 * TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    read = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(m["key"], m["payload"], m["headers"]) for m in read] == [
        ("key-1", "hello", ["source", "readme"]),
        ("key-2", "world", ["source", "readme"]),
    ]
    assert " 3 brokers:" in lines


def test_the_confluent_kafka_snippet(cluster: LocalCluster) -> None:
    pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compile(pointed(snippets()["confluent-kafka"], cluster), "README.md", "exec")
        exec(code, {"__name__": "readme_confluent_kafka"})
    assert out.getvalue().strip() == "b'key-1' b'hello' [('source', b'readme')]"


def test_the_kafka_go_snippet(cluster: LocalCluster, tmp_path: Path) -> None:
    source = tmp_path / "readme_kafka_go"
    source.mkdir()
    (source / "main.go").write_text(pointed(snippets()["kafka-go"], cluster))
    binary = go_build(source, tmp_path)
    done = subprocess.run(
        [str(binary)], capture_output=True, text=True, timeout=2 * TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "message at offset 0: Key-A = Hello World!\n"
