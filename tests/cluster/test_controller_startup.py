"""A controller process that must not start exits at once, non-zero, saying why: a taken
gRPC or Raft port, a data dir of the old format, another cluster's data dir. And one that
runs stops when its launcher is gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from raftmq import node_meta
from raftmq.lifecycle import PARENT_FD_ENV
from raftmq.local_cluster import ManagedProcess, free_ports, wait_until
from raftmq.ports import held_port

pytestmark = pytest.mark.cluster

GOLDEN = Path(__file__).parents[1] / "golden"
# "At once": well before any Raft election or retry loop could have helped.
EXIT_WITHIN_S = 15.0


def run_controller(
    tmp_path: Path, *, grpc_port: int, raft_port: int, data_dir: Path, extra: tuple[str, ...] = ()
) -> tuple[int, str]:
    """Start one controller, wait (bounded) for it to exit: (exit status, its output)."""
    raft = f"127.0.0.1:{raft_port}"
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    process = ManagedProcess(
        "controller-1",
        [
            "controller",
            "--node-id=1",
            f"--listen=127.0.0.1:{grpc_port}",
            f"--raft-listen={raft}",
            f"--voters=1@{raft}",
            f"--data-dir={data_dir}",
            f"--raft-secret-file={secret}",
            *extra,
        ],
        tmp_path / "controller-1.log",
    )
    process.start()
    try:
        assert process.popen is not None
        try:
            status = process.popen.wait(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the controller still runs after {EXIT_WITHIN_S} s")
    finally:
        process.kill()  # by PID; a no-op once it exited
    return status, process.log_path.read_text()


def test_a_taken_grpc_port_ends_the_controller_with_a_clear_error(tmp_path) -> None:
    [raft_port] = free_ports(1)
    with held_port() as port:
        status, output = run_controller(
            tmp_path, grpc_port=port, raft_port=raft_port, data_dir=tmp_path / "c1"
        )
    assert status != 0
    assert f"error: 127.0.0.1:{port} is already in use" in output


def test_a_taken_raft_port_ends_the_controller_with_a_clear_error(tmp_path) -> None:
    [grpc_port] = free_ports(1)
    with held_port() as port:
        status, output = run_controller(
            tmp_path, grpc_port=grpc_port, raft_port=port, data_dir=tmp_path / "c1"
        )
    assert status != 0
    assert f"error: 127.0.0.1:{port} is already in use" in output


def test_a_data_dir_of_the_old_format_is_refused(tmp_path) -> None:
    data_dir = tmp_path / "c1"
    shutil.copytree(GOLDEN / "format1", data_dir)
    grpc_port, raft_port = free_ports(2)
    status, output = run_controller(
        tmp_path, grpc_port=grpc_port, raft_port=raft_port, data_dir=data_dir
    )
    assert status == 1
    assert "error:" in output and "older raftmq" in output and "format 1" in output


def test_a_data_dir_of_another_cluster_is_refused(tmp_path) -> None:
    data_dir = tmp_path / "c1"
    node_meta.stamp(data_dir, node_meta.NodeMeta("cluster-a", 1, "controller"))
    grpc_port, raft_port = free_ports(2)
    status, output = run_controller(
        tmp_path,
        grpc_port=grpc_port,
        raft_port=raft_port,
        data_dir=data_dir,
        extra=("--cluster-id=cluster-b",),
    )
    assert status == 1
    assert "cluster-a" in output and "cluster-b" in output


def test_a_controller_stops_when_its_launcher_is_gone(tmp_path) -> None:
    """The launcher holds the write end of a pipe whose read end the controller watches:
    when the launcher dies (here: closes it), the controller stops on its own."""
    grpc_port, raft_port = free_ports(2)
    raft = f"127.0.0.1:{raft_port}"
    (tmp_path / "secret").write_text("s3cret")
    read_fd, write_fd = os.pipe()
    log = (tmp_path / "controller-1.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raftmq.cli.main",
            "controller",
            "--node-id=1",
            f"--listen=127.0.0.1:{grpc_port}",
            f"--raft-listen={raft}",
            f"--voters=1@{raft}",
            f"--data-dir={tmp_path / 'c1'}",
            f"--raft-secret-file={tmp_path / 'secret'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, **{PARENT_FD_ENV: str(read_fd)}),
        pass_fds=(read_fd,),
    )
    os.close(read_fd)
    try:
        wait_until(
            lambda: b"controller.started" in (tmp_path / "controller-1.log").read_bytes(),
            timeout_s=EXIT_WITHIN_S,
            what="the controller to start",
        )
        assert process.poll() is None
        os.close(write_fd)
        write_fd = -1
        assert process.wait(timeout=EXIT_WITHIN_S) == 0
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=EXIT_WITHIN_S)
        log.close()
