"""A broker that must not start says why and exits non-zero, before serving anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from raftmq import node_meta, ports
from raftmq.local_cluster import LocalCluster, free_ports

pytestmark = pytest.mark.cluster


def run_broker(tmp_path: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    [controller_port] = free_ports(1)  # nobody listens there: the broker must not get that far
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "raftmq.cli.main",
            "broker",
            "--node-id=1",
            f"--listen=127.0.0.1:{port}",
            f"--controllers=127.0.0.1:{controller_port}",
            f"--data-dir={tmp_path / 'broker-1'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_broker_on_a_taken_port_exits_at_once(tmp_path: Path) -> None:
    with ports.held_port() as port:
        result = run_broker(tmp_path, port)
    assert result.returncode == 1
    assert f"error: 127.0.0.1:{port} is already in use" in result.stderr


def test_a_broker_with_another_clusters_data_dir_exits_naming_both(tmp_path: Path) -> None:
    node_meta.stamp(tmp_path / "broker-1", node_meta.NodeMeta("cluster-a", 1, "broker"))
    [port] = free_ports(1)
    result = run_broker(tmp_path, port, "--cluster-id=cluster-b")
    assert result.returncode == 1
    assert "belongs to cluster cluster-a" in result.stderr and "cluster-b" in result.stderr


def test_a_broker_with_an_old_format_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broker-1" / "log").mkdir(parents=True)
    [port] = free_ports(1)
    result = run_broker(tmp_path, port)
    assert result.returncode == 1
    assert "written by an older raftmq" in result.stderr


def test_a_broker_of_another_cluster_is_refused_by_the_quorum(
    tmp_path: Path, make_cluster: type[LocalCluster]
) -> None:
    # A fresh data dir (nothing to compare locally) with --cluster-id of another cluster:
    # the quorum refuses the registration, and the broker exits naming both ids.
    cluster = make_cluster(controllers=1, brokers=0, cluster_id="cluster-real")
    cluster.start()
    cluster.wait_ready(timeout_s=60, brokers=0)
    [port] = free_ports(1)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "raftmq.cli.main",
            "broker",
            "--node-id=1",
            f"--listen=127.0.0.1:{port}",
            f"--controllers={','.join(cluster.layout.controller_endpoints)}",
            f"--data-dir={tmp_path / 'foreign-broker'}",
            "--cluster-id=cluster-other",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "cluster-other" in result.stderr and "cluster-real" in result.stderr
    assert ports.port_free("127.0.0.1", port)  # it stopped serving
