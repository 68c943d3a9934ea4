"""Run a whole raftmq cluster as local OS processes: `raftmq up`, the cluster tests and the
chaos suite all use this one launcher.

Every process is started in its own session (so a terminal's Ctrl-C reaches only the
launcher, which then stops the nodes in order) and is only ever signalled by its PID.
Nodes never outlive the launcher: each inherits the read end of a pipe whose write end
only the launcher process holds (`raftmq.lifecycle.NodeLifecycle.watch_launcher`); when the
launcher dies, even by SIGKILL, the kernel closes that end and every node stops.

Ports, from one base port B (`raftmq up --base-port`, default 9092):

    B + i        broker i+1, gRPC          (i < 64)
    B + 100 + i  controller i+1, gRPC      (i < 5)
    B + 200 + i  controller i+1, Raft      (i < 5)
    B + 300 + i  broker i+1, metrics       (HTTP /metrics; with metrics=True)
    B + 380 + i  controller i+1, metrics
    B + 400 + i  broker i+1, Kafka wire protocol (listener KAFKA; with kafka=True)
    B + 500      the web console           (HTTP; with console=True)
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from raftmq import wire
from raftmq.lifecycle import PARENT_FD_ENV
from raftmq.ports import port_free
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc

STOP_TIMEOUT_S = 10.0
BROKERS_MAX = 64
CONTROLLER_PORT_OFFSET = 100
RAFT_PORT_OFFSET = 200
BROKER_METRICS_PORT_OFFSET = 300
CONTROLLER_METRICS_PORT_OFFSET = 380
KAFKA_PORT_OFFSET = 400
CONSOLE_PORT_OFFSET = 500

CONSOLE_NAME = "console"
# How long `is_ready` waits for the console's port to accept a connection.
CONSOLE_PROBE_TIMEOUT_S = 0.5

_launcher_pipe_lock = threading.Lock()
_launcher_pipe_read_fd: int | None = None


def launcher_pipe_fd() -> int:
    """The read end of this process's launcher pipe, created once per process. The write
    end is deliberately never closed: only this process's exit closes it."""
    global _launcher_pipe_read_fd
    with _launcher_pipe_lock:
        if _launcher_pipe_read_fd is None:
            # Both ends are non-inheritable: a node receives only the read end (pass_fds).
            read_fd, _write_fd = os.pipe()
            _launcher_pipe_read_fd = read_fd
        return _launcher_pipe_read_fd


def free_base_port(
    *, controllers: int = 3, brokers: int = 3, host: str = "127.0.0.1", attempts: int = 50
) -> int:
    """A base port whose whole `raftmq up` layout (metrics and Kafka listeners included)
    is free right now (tests pick one so that parallel runs and other clusters do not
    collide)."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20_000, 60_000)
        # Every port `raftmq up` may use (metrics, Kafka and console included) must be free.
        layout = layout_from_base_port(
            base,
            controllers=controllers,
            brokers=brokers,
            host=host,
            metrics=True,
            kafka=True,
            console=True,
        )
        if all(port_free(h, p) for _, h, p in layout.listeners()):
            return base
    raise RuntimeError(f"no free port layout found in {attempts} attempts")


def describe_exit(returncode: int) -> str:
    """'exited with status 1' / 'was killed by SIGKILL'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


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
    # time.monotonic() of the last start.
    started_s: float = 0.0
    _log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self._close_log()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        parent_fd = launcher_pipe_fd()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_FD_ENV: str(parent_fd)})
        self.popen = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "raftmq.cli.main", *self.argv],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            pass_fds=(parent_fd,),
        )
        self.started_s = time.monotonic()

    @property
    def returncode(self) -> int | None:
        """The exit status of the last run once it ended (negative: killed by that signal)."""
        return self.popen.poll() if self.popen is not None else None

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


def layout_from_base_port(
    base_port: int,
    *,
    controllers: int,
    brokers: int,
    host: str = "127.0.0.1",
    metrics: bool = False,
    kafka: bool = False,
    console: bool = False,
) -> ClusterLayout:
    """Every port of a local cluster from one base port (see the module docstring)."""
    highest = highest_port_offset(
        controllers, metrics=metrics, brokers=brokers, kafka=kafka, console=console
    )
    assert base_port > 0 and base_port + highest <= 65535
    assert brokers <= BROKERS_MAX <= CONTROLLER_PORT_OFFSET
    return ClusterLayout(
        host,
        controller_ports=[base_port + CONTROLLER_PORT_OFFSET + i for i in range(controllers)],
        raft_ports=[base_port + RAFT_PORT_OFFSET + i for i in range(controllers)],
        broker_ports=[base_port + i for i in range(brokers)],
        broker_metrics_ports=(
            [base_port + BROKER_METRICS_PORT_OFFSET + i for i in range(brokers)] if metrics else []
        ),
        controller_metrics_ports=(
            [base_port + CONTROLLER_METRICS_PORT_OFFSET + i for i in range(controllers)]
            if metrics
            else []
        ),
        kafka_ports=[base_port + KAFKA_PORT_OFFSET + i for i in range(brokers)] if kafka else [],
        console_port=base_port + CONSOLE_PORT_OFFSET if console else None,
    )


def highest_port_offset(
    controllers: int,
    *,
    metrics: bool,
    brokers: int = 0,
    kafka: bool = False,
    console: bool = False,
) -> int:
    """The largest offset from the base port a cluster uses."""
    if console:
        return CONSOLE_PORT_OFFSET
    if kafka and brokers:
        return KAFKA_PORT_OFFSET + brokers - 1
    if metrics:
        return CONTROLLER_METRICS_PORT_OFFSET + controllers - 1
    return RAFT_PORT_OFFSET + controllers - 1


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
    # Prometheus endpoints; empty: metrics off. Invariant: empty or one per node.
    broker_metrics_ports: list[int] = field(default_factory=list)
    controller_metrics_ports: list[int] = field(default_factory=list)
    # Kafka wire-protocol listeners of the brokers; empty: off. Invariant: empty or one
    # per broker.
    kafka_ports: list[int] = field(default_factory=list)
    # The web console's HTTP port, on `host`; None: no console.
    console_port: int | None = None

    @property
    def console_url(self) -> str | None:
        if self.console_port is None:
            return None
        return f"http://{self.host}:{self.console_port}/"

    def metrics_urls(self) -> list[tuple[str, str]]:
        """(node name, http://HOST:PORT/metrics) of every node with metrics."""
        out = [
            (f"broker-{i + 1}", f"http://{self.broker_host(i)}:{p}/metrics")
            for i, p in enumerate(self.broker_metrics_ports)
        ]
        out += [
            (f"controller-{i + 1}", f"http://{self.controller_host(i)}:{p}/metrics")
            for i, p in enumerate(self.controller_metrics_ports)
        ]
        return out

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

    @property
    def kafka_endpoints(self) -> list[str]:
        """Each broker's Kafka listener, "HOST:PORT" (the bootstrap of any Kafka client)."""
        return [f"{self.broker_host(i)}:{p}" for i, p in enumerate(self.kafka_ports)]

    def listeners(self) -> list[tuple[str, str, int]]:
        """(node name, host, port) of every port the cluster binds."""
        out = [(f"broker-{i + 1}", self.broker_host(i), p) for i, p in enumerate(self.broker_ports)]
        for i, (grpc_port, raft_port) in enumerate(
            zip(self.controller_ports, self.raft_ports, strict=True)
        ):
            out.append((f"controller-{i + 1}", self.controller_host(i), grpc_port))
            out.append((f"controller-{i + 1}", self.controller_host(i), raft_port))
        out += [
            (f"broker-{i + 1}", self.broker_host(i), p)
            for i, p in enumerate(self.broker_metrics_ports)
        ]
        out += [
            (f"controller-{i + 1}", self.controller_host(i), p)
            for i, p in enumerate(self.controller_metrics_ports)
        ]
        out += [(f"broker-{i + 1}", self.broker_host(i), p) for i, p in enumerate(self.kafka_ports)]
        if self.console_port is not None:
            out.append((CONSOLE_NAME, self.host, self.console_port))
        return out


class LocalCluster:
    """Controllers and brokers as local processes under one data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        controllers: int = 3,
        brokers: int = 3,
        host: str = "127.0.0.1",
        base_port: int | None = None,
        cluster_id: str = "",
        session_timeout_ms: int = 4_000,
        broker_args: Sequence[str] = (),
        controller_args: Sequence[str] = (),
        controller_hosts: Sequence[str] = (),
        broker_hosts: Sequence[str] = (),
        wrappers: Mapping[str, Sequence[str]] | None = None,
        metrics: bool = False,
        kafka: bool = True,
        console: bool = False,
        console_args: Sequence[str] = (),
    ) -> None:
        """`base_port`: every port from it (see the module docstring); None: free ports the
        kernel picks. `controller_hosts` / `broker_hosts` give each node its own address
        (default: all on `host`); `wrappers` prefixes a node's command line, by process
        name (e.g. `{"broker-1": ["ip", "netns", "exec", "ns1"]}`). `cluster_id`: passed
        to every node (""): the quorum's first leader creates one). `kafka`: each broker
        also serves Kafka's wire protocol (`layout.kafka_endpoints`). `console`: also run
        `raftmq console` on `host` (port B+500, or a free one) over the brokers and the
        nodes' metrics; it is one of `processes`, started last and stopped first."""
        assert controllers in (1, 3, 5)
        assert 0 <= brokers <= BROKERS_MAX
        assert not controller_hosts or len(controller_hosts) == controllers
        assert not broker_hosts or len(broker_hosts) == brokers
        wrappers = wrappers or {}
        self.data_dir = data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if base_port is None:
            ports = free_ports(
                2 * controllers
                + brokers
                + (controllers + brokers if metrics else 0)
                + (brokers if kafka else 0)
                + (1 if console else 0)
            )
            self.layout = ClusterLayout(
                host,
                controller_ports=ports[:controllers],
                raft_ports=ports[controllers : 2 * controllers],
                broker_ports=ports[2 * controllers : 2 * controllers + brokers],
            )
            rest = ports[2 * controllers + brokers :]
            if metrics:
                self.layout.broker_metrics_ports = rest[:brokers]
                self.layout.controller_metrics_ports = rest[brokers : brokers + controllers]
                rest = rest[brokers + controllers :]
            if kafka:
                self.layout.kafka_ports = rest[:brokers]
            if console:
                self.layout.console_port = ports[-1]
        else:
            self.layout = layout_from_base_port(
                base_port,
                controllers=controllers,
                brokers=brokers,
                host=host,
                metrics=metrics,
                kafka=kafka,
                console=console,
            )
        self.layout.controller_hosts = list(controller_hosts)
        self.layout.broker_hosts = list(broker_hosts)
        cluster_args = [f"--cluster-id={cluster_id}"] if cluster_id else []
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
                    *(
                        [
                            f"--metrics-listen={self.layout.controller_host(i)}:{self.layout.controller_metrics_ports[i]}"
                        ]
                        if self.layout.controller_metrics_ports
                        else []
                    ),
                    "--log-json",
                    *cluster_args,
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
                    *(
                        [
                            f"--metrics-listen={self.layout.broker_host(i)}:{self.layout.broker_metrics_ports[i]}"
                        ]
                        if self.layout.broker_metrics_ports
                        else []
                    ),
                    *(
                        [f"--kafka-listen={self.layout.kafka_endpoints[i]}"]
                        if self.layout.kafka_ports
                        else []
                    ),
                    "--log-json",
                    *cluster_args,
                    *broker_args,
                ],
                self.data_dir / "logs" / f"{name}.log",
                wrapper=list(wrappers.get(name, ())),
            )

        self.console: ManagedProcess | None = None
        if self.layout.console_port is not None:
            self.console = ManagedProcess(
                CONSOLE_NAME,
                [
                    "console",
                    f"--bootstrap={','.join(self.layout.broker_endpoints)}",
                    f"--listen={host}:{self.layout.console_port}",
                    *(
                        [f"--metrics={','.join(url for _, url in self.layout.metrics_urls())}"]
                        if self.layout.metrics_urls()
                        else []
                    ),
                    "--log-json",
                    *console_args,
                ],
                self.data_dir / "logs" / f"{CONSOLE_NAME}.log",
            )

    @property
    def processes(self) -> list[ManagedProcess]:
        console = [self.console] if self.console is not None else []
        return [*self.controllers.values(), *self.brokers.values(), *console]

    def process(self, name: str) -> ManagedProcess:
        for p in self.processes:
            if p.name == name:
                return p
        raise KeyError(name)

    def start(self) -> None:
        for p in self.processes:
            p.start()

    def stop(self) -> None:
        """The console, then brokers (their controlled shutdown needs the controllers),
        then controllers; each by PID, SIGTERM then SIGKILL."""
        console = [self.console] if self.console is not None else []
        for p in [*console, *self.brokers.values(), *self.controllers.values()]:
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

    def is_ready(self, *, brokers: int | None = None) -> bool:
        """The quorum has a leader, `brokers` (default: all) are unfenced and the console
        (if any) accepts connections."""
        wanted = len(self.brokers) if brokers is None else brokers
        status = self.describe()
        if status is None or status.controller.leader_id < 0:
            return False
        if sum(1 for b in status.brokers if not b.fenced) < wanted:
            return False
        return self.console_listening()

    def console_listening(self) -> bool:
        """True when there is no console, or its port accepts a connection (a connect,
        never a bind: a probe must not take the port from the console starting)."""
        port = self.layout.console_port
        if port is None:
            return True
        try:
            with socket.create_connection(
                (self.layout.host, port), timeout=CONSOLE_PROBE_TIMEOUT_S
            ):
                return True
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 60.0, *, brokers: int | None = None) -> None:
        """Wait until the quorum has a leader and `brokers` (default: all) are unfenced."""
        wanted = len(self.brokers) if brokers is None else brokers
        wait_until(
            lambda: self.is_ready(brokers=wanted),
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
