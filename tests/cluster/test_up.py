"""`raftmq up` as a new user meets it: a supervisor that reports and restarts a killed
node, one cluster per set of ports and per data dir, and no node outliving it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from raftmq import Admin
from raftmq.local_cluster import layout_from_base_port, wait_until
from raftmq.ports import port_free

from tests.conftest import RaftmqUp, pid_alive

pytestmark = pytest.mark.cluster


def test_a_killed_broker_is_reported_restarted_and_rejoins(raftmq_up: type[RaftmqUp]) -> None:
    up = raftmq_up()
    up.wait_for_line("raftmq is ready")
    assert up.wait_for_line("Cluster id:").split()[-1] != "?"
    # One --base-port B moves every port: brokers B.., controllers B+100.., Raft B+200..
    b = up.base_port
    assert (
        up.wait_for_line("Brokers:").split()[-1]
        == f"127.0.0.1:{b},127.0.0.1:{b + 1},127.0.0.1:{b + 2}"
    )
    controllers = up.wait_for_line("Controllers:").split()[-1].split(",")
    assert controllers == [f"127.0.0.1:{b + 100 + i}" for i in range(3)]
    assert up.wait_for_line("Raft:").split()[-1].split(",") == [
        f"127.0.0.1:{b + 200 + i}" for i in range(3)
    ]
    assert not port_free("127.0.0.1", b + 100) and not port_free("127.0.0.1", b + 200)
    # The web console, at B+500, over the same cluster.
    assert up.wait_for_line("Console:") == f"Console: http://127.0.0.1:{b + 500}/"
    with urllib.request.urlopen(f"http://127.0.0.1:{b + 500}/brokers", timeout=30) as page:
        assert 'data-broker="3"' in page.read().decode()
    bootstrap = [f"127.0.0.1:{up.base_port}"]
    with Admin(bootstrap) as admin:
        admin.create_topic("watched", partitions=3, replication_factor=3)
    victim = up.pids()["broker-2"]
    mark = len(up.lines)
    os.kill(victim, signal.SIGKILL)
    report = up.wait_for_line(f"broker-2 (pid {victim}) was killed by SIGKILL", after=mark)
    assert "broker-2.log" in report and "Restarting it in" in report
    up.wait_for_line("broker-2 restarted (pid", after=mark)
    assert up.pids()["broker-2"] != victim and pid_alive(up.pids()["broker-2"])

    def rejoined() -> bool:
        with Admin(bootstrap, timeout_ms=3_000) as admin:
            [topic] = admin.describe_topics("watched")
            status = admin.cluster_status()
        brokers_ok = all(not b.fenced for b in status.brokers)
        return brokers_ok and all(2 in p.isr for p in topic.partitions)

    wait_until(rejoined, timeout_s=60, what="broker 2 back in every ISR")


def test_a_second_up_on_the_same_ports_fails_at_once(raftmq_up: type[RaftmqUp]) -> None:
    up = raftmq_up()
    up.wait_for_line("raftmq is ready")
    started = time.monotonic()
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "raftmq.cli.main",
            "up",
            "--data-dir",
            str(up.data_dir.parent / "other"),
            "--base-port",
            str(up.base_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert f"error: 127.0.0.1:{up.base_port} is already in use" in second.stderr
    assert time.monotonic() - started < 10
    # Nothing of the second cluster started: the first one still has exactly its brokers.
    with Admin([f"127.0.0.1:{up.base_port}"]) as admin:
        assert len(admin.cluster_status().brokers) == 3


def test_a_second_up_on_the_same_data_dir_is_refused(raftmq_up: type[RaftmqUp]) -> None:
    up = raftmq_up()
    up.wait_for_line("raftmq is ready")
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "raftmq.cli.main",
            "up",
            "--data-dir",
            str(up.data_dir),
            "--base-port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert "in use by another `raftmq up`" in second.stderr


def test_no_node_outlives_a_sigkilled_up(raftmq_up: type[RaftmqUp]) -> None:
    up = raftmq_up()
    up.wait_for_line("raftmq is ready")
    nodes = up.pids()  # the six nodes and the console, which must not outlive it either
    assert len(nodes) == 7 and "console" in nodes
    assert all(pid_alive(p) for p in nodes.values())
    os.kill(up.process.pid, signal.SIGKILL)
    up.process.wait(timeout=10)
    wait_until(
        lambda: not any(pid_alive(p) for p in nodes.values()),
        timeout_s=30,
        what="every node to exit after its launcher's SIGKILL",
    )
    # And their ports are free again.
    layout = layout_from_base_port(
        up.base_port, controllers=3, brokers=3, metrics=True, kafka=True, console=True
    )
    wait_until(
        lambda: all(port_free(h, p) for _, h, p in layout.listeners()),
        timeout_s=10,
        what="the ports to be released",
    )


def test_no_restart_stops_the_cluster_when_a_node_exits(raftmq_up: type[RaftmqUp]) -> None:
    up = raftmq_up(None, "--no-restart")
    up.wait_for_line("raftmq is ready")
    os.kill(up.pids()["broker-1"], signal.SIGKILL)
    up.wait_for_line("Stopping the cluster (--no-restart)")
    assert up.process.wait(timeout=60) == 1
