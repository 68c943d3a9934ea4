"""Run a whole raftmq cluster as local OS processes: `raftmq up`, the cluster tests and the
chaos suite all use this one launcher.

Every process is started in its own session (so a terminal's Ctrl-C reaches only the
launcher, which then stops the nodes in order) and is only ever signalled by its PID.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from raftmq import wire
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc

STOP_TIMEOUT_S = 10.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel says are free right now (bound together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class ManagedProcess:
    """One node process. `argv` excludes the interpreter; `wrapper` prefixes it (e.g.
    `ip netns exec NS`)."""

    name: str
    argv: list[str]
    log_path: Path
    wrapper: list[str] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "raftmq.cli.main", *self.argv],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.popen is not None
            os.kill(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL, then reap."""
        if self.popen is None:
            return
        self.signal(signal.SIGCONT)  # a paused process cannot be reaped otherwise
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        self._close_log()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait, then SIGKILL."""
        if self.popen is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass
class ClusterLayout:
    host: str
    controller_ports: list[int]
    raft_ports: list[int]
    broker_ports: list[int]
    # Per-node addresses (e.g. one network namespace per node); empty: every node on `host`.
    # Invariant: empty or one entry per controller / broker.
    controller_hosts: list[str] = field(default_factory=list)
    broker_hosts: list[str] = field(default_factory=list)

    def controller_host(self, index: int) -> str:
        return self.controller_hosts[index] if self.controller_hosts else self.host

    def broker_host(self, index: int) -> str:
        return self.broker_hosts[index] if self.broker_hosts else self.host

    @property
    def raft_endpoints(self) -> list[str]:
        return [f"{self.controller_host(i)}:{p}" for i, p in enumerate(self.raft_ports)]

    @property
    def voters(self) -> str:
        return ",".join(f"{i + 1}@{e}" for i, e in enumerate(self.raft_endpoints))

    @property
    def controller_endpoints(self) -> list[str]:
        return [f"{self.controller_host(i)}:{p}" for i, p in enumerate(self.controller_ports)]

    @property
    def broker_endpoints(self) -> list[str]:
        return [f"{self.broker_host(i)}:{p}" for i, p in enumerate(self.broker_ports)]


class LocalCluster:
    """Controllers and brokers as local processes under one data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        controllers: int = 3,
        brokers: int = 3,
        host: str = "127.0.0.1",
        broker_base_port: int | None = None,
        controller_base_port: int | None = None,
        session_timeout_ms: int = 4_000,
        broker_args: Sequence[str] = (),
        controller_args: Sequence[str] = (),
        controller_hosts: Sequence[str] = (),
        broker_hosts: Sequence[str] = (),
        wrappers: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`controller_hosts` / `broker_hosts` give each node its own address (default: all
        on `host`); `wrappers` prefixes a node's command line, by process name (e.g.
        `{"broker-1": ["ip", "netns", "exec", "ns1"]}`)."""
        assert controllers in (1, 3, 5)
        assert 0 <= brokers <= 64
        assert not controller_hosts or len(controller_hosts) == controllers
        assert not broker_hosts or len(broker_hosts) == brokers
        wrappers = wrappers or {}
        self.data_dir = data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if controller_base_port is None:
            ports = free_ports(2 * controllers)
            controller_ports, raft_ports = ports[:controllers], ports[controllers:]
        else:
            controller_ports = [controller_base_port + i for i in range(controllers)]
            raft_ports = [controller_base_port + 100 + i for i in range(controllers)]
        broker_ports = (
            free_ports(brokers)
            if broker_base_port is None
            else [broker_base_port + i for i in range(brokers)]
        )
        self.layout = ClusterLayout(
            host,
            controller_ports,
            raft_ports,
            broker_ports,
            controller_hosts=list(controller_hosts),
            broker_hosts=list(broker_hosts),
        )
        secret_path = self.data_dir / "raft.secret"
        if not secret_path.exists():
            secret_path.write_text(secrets.token_hex(16))
            secret_path.chmod(0o600)
        self.controllers: dict[int, ManagedProcess] = {}
        for i in range(controllers):
            node_id = i + 1
            name = f"controller-{node_id}"
            self.controllers[node_id] = ManagedProcess(
                name,
                [
                    "controller",
                    f"--node-id={node_id}",
                    f"--listen={self.layout.controller_endpoints[i]}",
                    f"--raft-listen={self.layout.raft_endpoints[i]}",
                    f"--voters={self.layout.voters}",
                    f"--data-dir={self.data_dir / name}",
                    f"--raft-secret-file={secret_path}",
                    f"--session-timeout-ms={session_timeout_ms}",
                    "--log-json",
                    *controller_args,
                ],
                self.data_dir / "logs" / f"{name}.log",
                wrapper=list(wrappers.get(name, ())),
            )
        self.brokers: dict[int, ManagedProcess] = {}
        for i in range(brokers):
            node_id = i + 1
            name = f"broker-{node_id}"
            self.brokers[node_id] = ManagedProcess(
                name,
                [
                    "broker",
                    f"--node-id={node_id}",
                    f"--listen={self.layout.broker_endpoints[i]}",
                    f"--controllers={','.join(self.layout.controller_endpoints)}",
                    f"--data-dir={self.data_dir / name}",
                    "--log-json",
                    *broker_args,
                ],
                self.data_dir / "logs" / f"{name}.log",
                wrapper=list(wrappers.get(name, ())),
            )

    @property
    def processes(self) -> list[ManagedProcess]:
        return [*self.controllers.values(), *self.brokers.values()]

    def process(self, name: str) -> ManagedProcess:
        for p in self.processes:
            if p.name == name:
                return p
        raise KeyError(name)

    def start(self) -> None:
        for p in self.processes:
            p.start()

    def stop(self) -> None:
        """Brokers first (their controlled shutdown needs the controllers), then
        controllers; each by PID, SIGTERM then SIGKILL."""
        for p in [*self.brokers.values(), *self.controllers.values()]:
            p.stop()

    def kill_all(self) -> None:
        for p in self.processes:
            p.kill()

    def describe(self, timeout_s: float = 2.0) -> pb.DescribeClusterResponse | None:
        """DescribeCluster from the first controller that answers, or None."""
        for endpoint in self.layout.controller_endpoints:
            with grpc.insecure_channel(endpoint, options=wire.GRPC_OPTIONS) as channel:
                stub = controller_pb2_grpc.ControllerServiceStub(channel)
                try:
                    response: pb.DescribeClusterResponse = stub.DescribeCluster(
                        pb.DescribeClusterRequest(), timeout=timeout_s
                    )
                except grpc.RpcError:
                    continue
                return response
        return None

    def wait_ready(self, timeout_s: float = 60.0, *, brokers: int | None = None) -> None:
        """Wait until the quorum has a leader and `brokers` (default: all) are unfenced."""
        wanted = len(self.brokers) if brokers is None else brokers

        def ready() -> bool:
            status = self.describe()
            if status is None or status.controller.leader_id < 0:
                return False
            live = [b for b in status.brokers if not b.fenced]
            return len(live) >= wanted

        wait_until(
            ready,
            timeout_s=timeout_s,
            what=f"the cluster ({wanted} live brokers)",
            on_timeout=self.tail_logs,
        )

    def tail_logs(self, lines: int = 20) -> str:
        out = []
        for p in self.processes:
            if p.log_path.exists():
                tail = p.log_path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {p.name} (pid {p.pid}, running={p.running}) ---")
                out.extend(tail)
        return "\n".join(out)


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` until true; raise TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    detail = f"\n{on_timeout()}" if on_timeout is not None else ""
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
