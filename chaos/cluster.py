"""The chaos harness: a raftmq cluster (3 controllers, 3 brokers) as real processes, each
node in its own network namespace when the test runs as root, so that the network between
two nodes can be cut and healed.

Network layout (`NetnsNetwork`): one bridge in the test process's namespace holding the
first address of a free 10.213.X.0/24, one namespace per node joined to the bridge by a
veth pair, nodes at .11, .12, ... The test process reaches every node through the bridge;
faults cut node-to-node traffic only (clients keep reaching every node, as clients of a
partitioned Kafka cluster often do, which is what exposes a stale leader).

A cut between nodes A and B is a blackhole route to B inside A's namespace and one to A
inside B's: packets on established connections are dropped (TCP retransmits until the
heal), new connections fail at once. Only `ip` is needed (`tc`'s prio/netem qdiscs and
iptables are often missing in containers; this works wherever namespaces do).

Every namespace, link and bridge is created under a name carrying this process's pid and a
random suffix, remembered, and deleted by that exact name in `close()`, also after a
failure half way through `create()`. Processes are only ever signalled by PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
import structlog
from raftmq import wire
from raftmq.chaos.history import ReplicaLog
from raftmq.client.conn import Conn
from raftmq.errors import RaftmqError
from raftmq.local_cluster import LocalCluster, ManagedProcess, wait_until
from raftmq.redial import Redial
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc

if TYPE_CHECKING:
    from raftmq.broker.partition_log import PartitionLog

_log = structlog.get_logger("raftmq.chaos")

CONTROLLERS = 3
BROKERS = 3
# Every `ip` invocation is bounded: a wedged netlink call must not hang a test run.
IP_COMMAND_TIMEOUT_S = 10.0
DESCRIBE_TIMEOUT_S = 1.0
# Environment switch to force the loopback fallback (e.g. to test it as root).
NETNS_ENV = "RAFTMQ_CHAOS_NETNS"
# Subnets are chosen among 10.213.X.0/24 under this lock so parallel runs never share one.
_SUBNET_LOCK_PATH = Path("/tmp/raftmq-chaos-subnet.lock")
_SUBNET_PREFIX = "10.213."
_BRIDGE_HOST = 1
_NODE_HOST_FIRST = 11
# Fixed ports: every node has its own address (or, on loopback, LocalCluster picks free ones).
_BASE_PORT = 9092


@dataclass(frozen=True, slots=True)
class NetnsSupport:
    """Whether network namespaces can be used here, and if not, why (printed verbatim)."""

    available: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ClusterTuning:
    """Timeouts of the cluster under test, short so that faults recover in a few seconds."""

    # Controller: fence a broker after this long without a heartbeat (heartbeats: 500 ms).
    session_timeout_ms: int = 3_000
    # Leader: drop a follower from the ISR after this long without catching up.
    replica_lag_time_max_ms: int = 3_000
    flush_policy: str = "interval"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raise RuntimeError with its stderr when `check` and it failed. A
    command that could not run or timed out counts as failed (returncode -1), so that
    cleanup paths (`check=False`) never raise."""
    try:
        result = subprocess.run(
            ["ip", *args],
            capture_output=True,
            text=True,
            timeout=IP_COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        result = subprocess.CompletedProcess(["ip", *args], -1, "", f"{type(exc).__name__}: {exc}")
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def probe_netns() -> NetnsSupport:
    """Try what `NetnsNetwork` needs (root, `ip`, namespaces, veths, a bridge) and that TCP
    really flows node to node and test process to node (a host whose firewall filters
    bridged traffic would otherwise fail every run with a vague timeout); undo it all.
    Costs about half a second."""
    if os.environ.get(NETNS_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return NetnsSupport(False, f"disabled by the environment ({NETNS_ENV}=0)")
    if os.geteuid() != 0:
        return NetnsSupport(False, "not running as root: network namespaces need CAP_SYS_ADMIN")
    if shutil.which("ip") is None:
        return NetnsSupport(False, "the `ip` command (iproute2) is not installed")
    network = NetnsNetwork(["probe-a", "probe-b"])
    try:
        network.create()
        problem = _reachability_problem(network)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return NetnsSupport(False, f"cannot build a network of namespaces: {exc}")
    finally:
        network.close()
    if problem is not None:
        return NetnsSupport(False, f"namespaces work but TCP does not cross the bridge: {problem}")
    return NetnsSupport(True, "network namespaces available: one per node, faults cut routes")


_PROBE_PORT = "7070"
_PROBE_TIMEOUT_S = 5.0
_PROBE_LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
s.settimeout(float(sys.argv[3]))
print("listening", flush=True)
for _ in range(2):
    s.accept()[0].close()
"""
_PROBE_CONNECTOR = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
"""


def _reachability_problem(network: NetnsNetwork) -> str | None:
    """None when a TCP connection works from the second node and from this process to a
    listener in the first node, else what failed. Bounded by `_PROBE_TIMEOUT_S` per step."""
    server, client = network.node_names[:2]
    address = network.addresses[server]
    timeout = str(_PROBE_TIMEOUT_S)
    listener = subprocess.Popen(
        [
            *network.wrapper(server),
            sys.executable,
            "-c",
            _PROBE_LISTENER,
            address,
            _PROBE_PORT,
            timeout,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        started, _, _ = select.select([listener.stdout], [], [], _PROBE_TIMEOUT_S)
        if not started or listener.stdout.readline().strip() != "listening":
            return "a listener inside a namespace did not start"
        connect = subprocess.run(
            [
                *network.wrapper(client),
                sys.executable,
                "-c",
                _PROBE_CONNECTOR,
                address,
                _PROBE_PORT,
                timeout,
            ],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S * 2,
            check=False,
        )
        if connect.returncode != 0:
            last = (connect.stderr.strip().splitlines() or ["no output"])[-1]
            return f"node to node: {last}"
        try:
            socket.create_connection((address, int(_PROBE_PORT)), timeout=_PROBE_TIMEOUT_S).close()
        except OSError as exc:
            return f"test process to node: {exc}"
        listener.wait(timeout=_PROBE_TIMEOUT_S)
        return None
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(timeout=_PROBE_TIMEOUT_S)
        for stream in (listener.stdout, listener.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    with _SUBNET_LOCK_PATH.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _used_third_octets() -> set[int]:
    """Third octets of every 10.213.X.* address or route in this namespace."""
    text = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show").stdout
    used: set[int] = set()
    for word in text.split():
        if word.startswith(_SUBNET_PREFIX):
            with contextlib.suppress(ValueError, IndexError):
                used.add(int(word.split("/")[0].split(".")[2]))
    return used


class NetnsNetwork:
    """One network namespace per node, bridged, with per-pair cuts. Not thread-safe: the
    runner's thread creates and closes it, the nemesis thread cuts and heals."""

    def __init__(self, node_names: Sequence[str]) -> None:
        assert node_names and len(set(node_names)) == len(node_names)
        assert len(node_names) <= 200, "one /24 holds the nodes"
        self.node_names = tuple(node_names)
        self.token = secrets.token_hex(3)
        pid = os.getpid()
        # Interface names are at most 15 bytes: "rmq" + 6 hex + role + index.
        self.bridge = f"rmqb{self.token}"
        self.namespaces = {n: f"raftmq-{pid}-{self.token}-{n}" for n in node_names}
        self.host_links = {n: f"rmq{self.token}h{i}" for i, n in enumerate(node_names)}
        self.node_links = {n: f"rmq{self.token}n{i}" for i, n in enumerate(node_names)}
        self.addresses: dict[str, str] = {}
        self.bridge_address = ""
        # What exists right now, by exact name: `close()` deletes exactly these.
        self._created_namespaces: list[str] = []
        self._created_links: list[str] = []
        self._bridge_created = False
        # Cut pairs, each as a sorted tuple of node names. Invariant: for every pair, both
        # blackhole routes are installed.
        self._cuts: set[tuple[str, str]] = set()

    def create(self) -> None:
        """Create the bridge, the namespaces and the links. On failure, everything created
        so far is deleted again and the error is raised."""
        try:
            with _subnet_lock():
                used = _used_third_octets()
                free = [x for x in range(1, 255) if x not in used]
                if not free:
                    raise RuntimeError("no free 10.213.X.0/24 subnet for the chaos network")
                octet = free[secrets.randbelow(len(free))]
                subnet = ipaddress.ip_network(f"{_SUBNET_PREFIX}{octet}.0/24")
                self.bridge_address = str(subnet[_BRIDGE_HOST])
                _ip("link", "add", self.bridge, "type", "bridge")
                self._bridge_created = True
                _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            for index, name in enumerate(self.node_names):
                address = str(subnet[_NODE_HOST_FIRST + index])
                namespace = self.namespaces[name]
                host_link, node_link = self.host_links[name], self.node_links[name]
                _ip("netns", "add", namespace)
                self._created_namespaces.append(namespace)
                _ip("link", "add", host_link, "type", "veth", "peer", "name", node_link)
                self._created_links.append(host_link)
                _ip("link", "set", node_link, "netns", namespace)
                _ip("link", "set", host_link, "master", self.bridge)
                _ip("link", "set", host_link, "up")
                in_ns = ("netns", "exec", namespace, "ip")
                _ip(*in_ns, "addr", "add", f"{address}/24", "dev", node_link)
                _ip(*in_ns, "link", "set", node_link, "up")
                _ip(*in_ns, "link", "set", "lo", "up")
                self.addresses[name] = address
        except BaseException:
            self.close()
            raise
        _log.info(
            "chaos_network.created",
            bridge=self.bridge,
            bridge_address=self.bridge_address,
            namespaces=list(self.namespaces.values()),
        )

    def wrapper(self, name: str) -> list[str]:
        """The argv prefix that runs a command inside `name`'s namespace (exec, same PID)."""
        return ["ip", "netns", "exec", self.namespaces[name]]

    def cut(self, a: str, b: str) -> None:
        """Drop all traffic between nodes `a` and `b`, both ways. Idempotent."""
        assert a != b
        pair = (min(a, b), max(a, b))
        if pair in self._cuts:
            return
        self._route("add", a, b)
        try:
            self._route("add", b, a)
        except RuntimeError:
            self._route("del", a, b, check=False)
            raise
        self._cuts.add(pair)

    def heal(self, a: str, b: str) -> None:
        pair = (min(a, b), max(a, b))
        if pair not in self._cuts:
            return
        self._route("del", a, b, check=False)
        self._route("del", b, a, check=False)
        self._cuts.discard(pair)

    def heal_all(self) -> None:
        for a, b in sorted(self._cuts):
            self.heal(a, b)

    @property
    def cuts(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._cuts)

    def _route(self, verb: str, source: str, destination: str, *, check: bool = True) -> None:
        _ip(
            "netns",
            "exec",
            self.namespaces[source],
            "ip",
            "route",
            verb,
            "blackhole",
            f"{self.addresses[destination]}/32",
            check=check,
        )

    def close(self) -> None:
        """Delete every link, namespace and the bridge this object created. Idempotent;
        never raises (it runs on failure paths), but logs what it could not delete."""
        self._cuts.clear()
        for link in reversed(self._created_links):
            # Deleting one end of a veth deletes both; the namespace deletes it too.
            _ip("link", "del", link, check=False)
        self._created_links.clear()
        for namespace in reversed(self._created_namespaces):
            result = _ip("netns", "del", namespace, check=False)
            if result.returncode != 0:
                _log.warning(
                    "chaos_network.delete_failed", namespace=namespace, error=result.stderr
                )
        self._created_namespaces.clear()
        if self._bridge_created:
            result = _ip("link", "del", self.bridge, check=False)
            if result.returncode != 0:
                _log.warning("chaos_network.delete_failed", link=self.bridge, error=result.stderr)
            self._bridge_created = False


class ChaosCluster:
    """3 controllers and 3 brokers as processes, in namespaces when `netns` is true.

    Node names are the process names: "controller-1".."controller-3", "broker-1".."broker-3".
    Use as a context manager: leaving it kills every process by PID and deletes the network,
    whatever happened. Process operations (kill/start/pause/...) are meant for one thread
    (the nemesis, then the runner); `describe` may be called from any thread.
    """

    def __init__(self, data_dir: Path, *, netns: bool, tuning: ClusterTuning) -> None:
        self.data_dir = data_dir
        self.tuning = tuning
        self.controller_names = [f"controller-{i + 1}" for i in range(CONTROLLERS)]
        self.broker_names = [f"broker-{i + 1}" for i in range(BROKERS)]
        self.network: NetnsNetwork | None = (
            NetnsNetwork([*self.controller_names, *self.broker_names]) if netns else None
        )
        self._local: LocalCluster | None = None
        self._paused: set[str] = set()
        # The runner's channels to controllers, each with its Redial (see raftmq.redial).
        self._channels: dict[str, tuple[grpc.Channel, Redial]] = {}
        # Conns to brokers for the runner's observations (not the workload's clients).
        self._broker_conns: dict[str, Conn] = {}
        self._channels_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Create the network (if any) and start every node (does not wait for readiness)."""
        broker_args = [
            f"--replica-lag-time-max-ms={self.tuning.replica_lag_time_max_ms}",
            f"--flush-policy={self.tuning.flush_policy}",
        ]
        if self.network is None:
            self._local = LocalCluster(
                self.data_dir,
                controllers=CONTROLLERS,
                brokers=BROKERS,
                session_timeout_ms=self.tuning.session_timeout_ms,
                broker_args=broker_args,
            )
        else:
            network = self.network
            network.create()
            self._local = LocalCluster(
                self.data_dir,
                controllers=CONTROLLERS,
                brokers=BROKERS,
                base_port=_BASE_PORT,
                session_timeout_ms=self.tuning.session_timeout_ms,
                broker_args=broker_args,
                controller_hosts=[network.addresses[n] for n in self.controller_names],
                broker_hosts=[network.addresses[n] for n in self.broker_names],
                wrappers={n: network.wrapper(n) for n in network.node_names},
            )
        self._local.start()
        _log.info(
            "chaos_cluster.started",
            netns=self.network is not None,
            pids={p.name: p.pid for p in self._local.processes},
        )

    def wait_ready(self, timeout_s: float) -> None:
        self.local.wait_ready(timeout_s=timeout_s)

    def close(self) -> None:
        """Kill every process (SIGCONT first, then SIGKILL, by PID), close channels, delete
        the network. Idempotent; safe on any failure path."""
        if self._local is not None:
            for process in self._local.processes:
                with contextlib.suppress(OSError):
                    process.kill()
        self._paused.clear()
        with self._channels_lock:
            for channel, redial in self._channels.values():
                redial.close()
                channel.close()
            self._channels.clear()
            for conn in self._broker_conns.values():
                conn.close()
            self._broker_conns.clear()
        if self.network is not None:
            self.network.close()

    def __enter__(self) -> ChaosCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- topology -------------------------------------------------------------------------

    @property
    def local(self) -> LocalCluster:
        assert self._local is not None, "start() first"
        return self._local

    @property
    def node_names(self) -> list[str]:
        return [*self.controller_names, *self.broker_names]

    @property
    def can_partition(self) -> bool:
        return self.network is not None

    @property
    def controller_endpoints(self) -> list[str]:
        return self.local.layout.controller_endpoints

    @property
    def broker_endpoints(self) -> list[str]:
        return self.local.layout.broker_endpoints

    def process(self, name: str) -> ManagedProcess:
        return self.local.process(name)

    @staticmethod
    def broker_name(broker_id: int) -> str:
        return f"broker-{broker_id}"

    @staticmethod
    def controller_name(controller_id: int) -> str:
        return f"controller-{controller_id}"

    def broker_data_dir(self, name: str) -> Path:
        return self.local.data_dir / name

    def log_paths(self) -> dict[str, Path]:
        return {p.name: p.log_path for p in self.local.processes}

    # --- faults ---------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL by PID (a paused process is continued first so it can be reaped)."""
        self._paused.discard(name)
        self.process(name).kill()
        _log.info("node.killed", node=name)

    def stop(self, name: str) -> None:
        """SIGTERM by PID and wait (bounded; SIGKILL after the launcher's stop timeout)."""
        self._paused.discard(name)
        self.process(name).stop()
        _log.info("node.stopped", node=name)

    def restart(self, name: str) -> None:
        """Start a node that is not running (same data dir, same address)."""
        process = self.process(name)
        if not process.running:
            process.start()
            _log.info("node.started", node=name, pid=process.pid)

    def pause(self, name: str) -> None:
        process = self.process(name)
        if process.running:
            process.signal(signal.SIGSTOP)
            self._paused.add(name)
            _log.info("node.paused", node=name, pid=process.pid)

    def resume(self, name: str) -> None:
        if name in self._paused:
            self.process(name).signal(signal.SIGCONT)
            self._paused.discard(name)
            _log.info("node.resumed", node=name)

    def cut(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Cut every link between a node of `group_a` and a node of `group_b`."""
        assert self.network is not None, "network faults need namespaces"
        side_b = list(group_b)
        for a in group_a:
            for b in side_b:
                if a != b:
                    self.network.cut(a, b)
        _log.info("network.cut", cuts=sorted(self.network.cuts))

    def heal_network(self) -> None:
        if self.network is not None and self.network.cuts:
            self.network.heal_all()
            _log.info("network.healed")

    @property
    def paused(self) -> frozenset[str]:
        return frozenset(self._paused)

    def running(self, name: str) -> bool:
        return self.process(name).running

    # --- observation ----------------------------------------------------------------------

    def _stub(self, endpoint: str) -> tuple[controller_pb2_grpc.ControllerServiceStub, Redial]:
        with self._channels_lock:
            known = self._channels.get(endpoint)
            if known is None:
                channel = grpc.insecure_channel(endpoint, options=wire.GRPC_CLIENT_OPTIONS)
                known = self._channels[endpoint] = (channel, Redial(channel, name=endpoint))
        channel, redial = known
        return controller_pb2_grpc.ControllerServiceStub(channel), redial

    def broker_conn(self, endpoint: str) -> Conn:
        """A Conn to the broker at `endpoint` (HOST:PORT), kept until `close`."""
        with self._channels_lock:
            conn = self._broker_conns.get(endpoint)
            if conn is None:
                conn = self._broker_conns[endpoint] = Conn(endpoint)
            return conn

    def describe(self, timeout_s: float = DESCRIBE_TIMEOUT_S) -> pb.DescribeClusterResponse | None:
        """Ask every controller at once; return the freshest answer (highest metadata
        version, then commit index), or None when none answered in `timeout_s`. A controller
        cut off in a minority answers from its stale state: the freshest answer is the
        majority's."""
        calls = []
        for endpoint in self.controller_endpoints:
            stub, redial = self._stub(endpoint)
            call = stub.DescribeCluster.future(pb.DescribeClusterRequest(), timeout=timeout_s)
            call.add_done_callback(redial.on_call_done)
            calls.append(call)
        best: pb.DescribeClusterResponse | None = None
        for call in calls:
            try:
                response: pb.DescribeClusterResponse = call.result()
            except grpc.RpcError:
                continue
            if response.error.code != 0:
                continue
            if best is None or (response.metadata_version, response.controller.commit_index) > (
                best.metadata_version,
                best.controller.commit_index,
            ):
                best = response
        return best

    def wait_until(self, condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
        """`raftmq.local_cluster.wait_until` with this cluster's log tails on timeout."""
        wait_until(condition, timeout_s=timeout_s, what=what, on_timeout=self.local.tail_logs)


def read_replica_logs(
    broker_data_dirs: dict[str, Path], *, topic: str, topic_id: bytes, partitions: int
) -> tuple[list[ReplicaLog], list[str]]:
    """Open each stopped broker's RocksDB store (`DIR/log`) and describe every replica of
    `topic`: its high watermark and log end offset as recovered from the store, and the
    SHA-256 of its stored batch bytes, in offset order, below the lowest high watermark of
    that partition's replicas (so that every replica is compared with every other) and
    below its own high watermark (for replicas that share it).

    Call only after the broker processes exited (RocksDB allows one writer). Returns the
    replica logs and problems found on the way (a store that cannot be opened, a replica
    missing from a store)."""
    # Imported here: the broker's storage stack is only needed at the end of a run.
    from raftmq.broker.log_store import FlushPolicy, LogStore

    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        logs: dict[int, list[tuple[str, PartitionLog]]] = {p: [] for p in range(partitions)}
        for node, data_dir in sorted(broker_data_dirs.items()):
            try:
                store = stack.enter_context(
                    LogStore(data_dir / "log", flush_policy=FlushPolicy.NONE)
                )
            except RaftmqError as exc:
                problems.append(f"{node}: cannot open its log store: {exc}")
                continue
            on_disk = set(store.list_partitions())
            for partition in range(partitions):
                if (topic_id, partition) not in on_disk:
                    problems.append(f"{node}: no log for {topic}/{partition} in its store")
                    continue
                log = store.open_partition(topic_id, partition)
                stack.callback(log.close)
                logs[partition].append((node, log))
        replicas: list[ReplicaLog] = []
        for partition, replica_logs in logs.items():
            if not replica_logs:
                continue
            bound = min(log.high_watermark for _, log in replica_logs)
            for node, log in replica_logs:
                below_bound, below_hw = _hash_stored(log, bound, log.high_watermark)
                replicas.append(
                    ReplicaLog(
                        node=node,
                        topic=topic,
                        partition=partition,
                        high_watermark=log.high_watermark,
                        batches_sha256=below_bound,
                        log_end_offset=log.log_end_offset,
                        compared_below_offset=bound,
                        batches_sha256_below_hw=below_hw,
                    )
                )
    return replicas, problems


def _hash_stored(log: PartitionLog, low: int, high: int) -> tuple[str, str]:
    """SHA-256 of the stored batches with base offset below `low`, and below `high`
    (low <= high), in one pass over the log."""
    assert low <= high
    below_low, below_high = hashlib.sha256(), hashlib.sha256()
    for base_offset, batch in log.stored_batches(high):
        below_high.update(batch)
        if base_offset < low:
            below_low.update(batch)
    return below_low.hexdigest(), below_high.hexdigest()
