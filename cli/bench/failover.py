"""`raftmq bench failover [--target controller-leader]`: controller failover, SIGKILL of
the Raft leader -> the next committed metadata write. (`--target partition-leader` and
`--target follower` kill brokers instead: `broker_failover.py`.)

Starts its own 3-controller quorum (no brokers) in a temporary directory; for each run,
SIGKILLs the Raft leader and times kill -> the first committed metadata write (a
RegisterBroker of a fresh incarnation) answered by a survivor; then restarts the killed
controller and waits until it follows again. Reports every run and the median.

No broker is involved, so the client library (which talks to brokers) has no part here:
the probes are the controller RPCs a broker itself sends, on channels opened before the
kill (no TCP connect in the figure). Every process it started is stopped by PID in a
`finally` (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from raftmq import wire
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import RaftmqError
from raftmq.local_cluster import LocalCluster
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc

from .. import format as fmt
from . import broker_failover
from .common import CpuMeter, Result, footer_lines
from .progress import ProgressBar, progress_wanted

TARGET_CONTROLLER_LEADER = "controller-leader"
TARGETS = (TARGET_CONTROLLER_LEADER, *broker_failover.BROKER_TARGETS)
FAILOVER_RUNS_DEFAULT = 7
FAILOVER_RUNS_MAX = 100
FAILOVER_IDLE_MS_DEFAULT = 1_000
# kill -> committed write: a figure above this is a failure to elect, not a measurement.
FAILOVER_WRITE_TIMEOUT_S = 30.0
# Probes go out every 10 ms to each survivor: the resolution of the measurement. A probe
# forwarded to the dead leader hangs until the survivor notices (LEADER_CHANGED), so the
# number outstanding per survivor is bounded to keep the survivor's gRPC workers free.
FAILOVER_PROBE_INTERVAL_S = 0.01
FAILOVER_PROBE_RPC_TIMEOUT_S = 1.0
FAILOVER_PROBES_PER_ENDPOINT_MAX = 16
QUORUM_READY_TIMEOUT_S = 60.0
QUORUM_POLL_S = 0.05
CHANNEL_READY_TIMEOUT_S = 5.0
DESCRIBE_TIMEOUT_S = 1.0
# The fake broker the failover writes register. It never heartbeats, and a new
# registration starts fenced, so it leads nothing and causes no further writes.
BENCH_BROKER_ID = 9_000
# Reconnect fast to a restarted controller (gRPC's default backoff starts at 1 s).
_PROBE_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *wire.GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]
FAILOVER_WAITING = (
    "the Raft election: survivors wait an election timeout (raftMinTimeout..raftMaxTimeout, "
    "0.2-0.4 s in controller/quorum.py) after the leader's last heartbeat, then a vote "
    "round and the new leader's first commit"
)


def _describe_at(endpoint: str) -> pb.DescribeClusterResponse | None:
    """DescribeCluster from one controller over a fresh channel (no reconnect backoff to
    inherit from a channel that saw the process die), or None."""
    with grpc.insecure_channel(endpoint, options=wire.GRPC_OPTIONS) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        try:
            response: pb.DescribeClusterResponse = stub.DescribeCluster(
                pb.DescribeClusterRequest(), timeout=DESCRIBE_TIMEOUT_S
            )
        except grpc.RpcError:
            return None
        return response


def _quorum_stable(endpoints: dict[int, str]) -> tuple[int, int] | None:
    """(leader id, term) when every controller answers, all agree on the leader and term,
    the leader sees every voter, and each follower has applied the leader's commit index."""
    views = {node: _describe_at(endpoint) for node, endpoint in endpoints.items()}
    answered = {node: v for node, v in views.items() if v is not None}
    if len(answered) != len(endpoints):
        return None
    leaders = {(v.controller.leader_id, v.controller.term) for v in answered.values()}
    if len(leaders) != 1:
        return None
    [(leader_id, term)] = leaders
    leader_view = answered.get(leader_id)
    if leader_view is None:
        return None
    if any(voter.state == "unreachable" for voter in leader_view.controller.voters):
        return None
    commit_index = leader_view.controller.commit_index
    if any(v.controller.last_applied < commit_index for v in answered.values()):
        return None
    return leader_id, term


def _wait_quorum_stable(endpoints: dict[int, str], timeout_s: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stable = _quorum_stable(endpoints)
        if stable is not None:
            return stable
        time.sleep(QUORUM_POLL_S)
    raise TimeoutError(f"the controller quorum was not stable within {timeout_s:.0f} s")


def _register_request() -> pb.RegisterBrokerRequest:
    """A committed metadata write: a new incarnation of the bench's fake broker."""
    return pb.RegisterBrokerRequest(
        broker_id=BENCH_BROKER_ID,
        endpoint=cpb.Endpoint(host="127.0.0.1", port=1),
        rack="bench",
        incarnation_id=uuid.uuid4().hex,
        request_id=uuid.uuid4().hex,
    )


def _probe_until_committed(
    stubs: Sequence[Any], request: pb.RegisterBrokerRequest, timeout_s: float
) -> tuple[float | None, int, str]:
    """Send `request` to every stub every FAILOVER_PROBE_INTERVAL_S (at most
    FAILOVER_PROBES_PER_ENDPOINT_MAX outstanding each) until one answers without error.

    Returns (perf_counter of the first successful answer or None, attempts, last error).
    The request is idempotent (one request id), so any success means it was committed.
    Callbacks run on gRPC threads; the shared state is guarded by `lock`."""
    lock = threading.Lock()
    committed = threading.Event()
    first_ok_s: list[float] = []
    last_error = [""]

    def on_done(future: Any) -> None:
        answered_s = time.perf_counter()
        try:
            response = future.result()
        except (grpc.RpcError, grpc.FutureCancelledError) as e:
            status = wire.rpc_status(e)
            with lock:
                last_error[0] = status.name if status is not None else type(e).__name__
            return
        error = wire.error_from_pb(response.error)
        with lock:
            if error is None:
                first_ok_s.append(answered_s)
                committed.set()
            else:
                last_error[0] = error.code.name

    pending: list[list[Any]] = [[] for _ in stubs]
    attempts = 0
    deadline = time.monotonic() + timeout_s
    try:
        while not committed.is_set() and time.monotonic() < deadline:
            for i, stub in enumerate(stubs):
                pending[i] = [f for f in pending[i] if not f.done()]
                if len(pending[i]) >= FAILOVER_PROBES_PER_ENDPOINT_MAX:
                    continue
                future = stub.RegisterBroker.future(request, timeout=FAILOVER_PROBE_RPC_TIMEOUT_S)
                future.add_done_callback(on_done)
                pending[i].append(future)
                attempts += 1
            committed.wait(FAILOVER_PROBE_INTERVAL_S)
    finally:
        for futures in pending:
            for f in futures:
                f.cancel()
    with lock:
        return (min(first_ok_s) if first_ok_s else None), attempts, last_error[0]


def _commit_once(endpoints: dict[int, str]) -> None:
    """One committed write through the ordinary controller client (a warm-up)."""
    pool = EndpointPool(list(endpoints.values()), service="controller")
    try:
        response = call_with_failover(pool, "RegisterBroker", _register_request())
        wire.raise_for(response.error)
    finally:
        pool.close()


def _kill_and_probe(
    cluster: LocalCluster, leader_id: int, survivors: list[str], idle_s: float
) -> tuple[float, float | None, int, str]:
    """SIGKILL the leader after `idle_s` and probe the survivors until a write commits:
    (killed at, committed at or None, probes, last error), perf_counter seconds."""
    channels = [grpc.insecure_channel(e, options=_PROBE_CHANNEL_OPTIONS) for e in survivors]
    try:
        for channel in channels:  # connected before the kill: no TCP connect in the figure
            grpc.channel_ready_future(channel).result(timeout=CHANNEL_READY_TIMEOUT_S)
        stubs = [controller_pb2_grpc.ControllerServiceStub(c) for c in channels]
        request = _register_request()
        # Idle on purpose: dependencies.md measured slower failovers after idling (the
        # follower<->follower link is only exercised by the election).
        time.sleep(idle_s)
        killed_s = time.perf_counter()
        cluster.controllers[leader_id].kill()
        committed_s, attempts, last_error = _probe_until_committed(
            stubs, request, FAILOVER_WRITE_TIMEOUT_S
        )
    finally:
        for channel in channels:
            channel.close()
    return killed_s, committed_s, attempts, last_error


def _failover_run(cluster: LocalCluster, number: int, idle_s: float) -> Result:
    """One kill/measure/restart cycle; its table row."""
    endpoints = {
        node: cluster.layout.controller_endpoints[node - 1] for node in sorted(cluster.controllers)
    }
    leader_id, term = _wait_quorum_stable(endpoints, QUORUM_READY_TIMEOUT_S)
    _commit_once(endpoints)
    survivors = {n: e for n, e in endpoints.items() if n != leader_id}
    killed_s, committed_s, attempts, last_error = _kill_and_probe(
        cluster, leader_id, list(survivors.values()), idle_s
    )
    new_view = next((v for v in map(_describe_at, survivors.values()) if v is not None), None)
    restarted_s = time.perf_counter()
    cluster.controllers[leader_id].start()
    new_leader, new_term = _wait_quorum_stable(endpoints, QUORUM_READY_TIMEOUT_S)
    row: Result = {
        "run": number,
        "killed_leader": leader_id,
        "term_before": term,
        "new_leader": new_view.controller.leader_id if new_view is not None else new_leader,
        "term_after": new_view.controller.term if new_view is not None else new_term,
        "failover_ms": None,
        "probes": attempts,
        "rejoin_ms": round((time.perf_counter() - restarted_s) * 1000, 1),
        "error": None,
    }
    if committed_s is None:
        row["error"] = (
            f"no committed write within {FAILOVER_WRITE_TIMEOUT_S:.0f} s (last: {last_error})"
        )
    else:
        row["failover_ms"] = round((committed_s - killed_s) * 1000, 1)
    return row


def _check(args: argparse.Namespace) -> tuple[int, int]:
    """(runs, idle ms) from the flags."""
    runs = int(getattr(args, "runs", None) or FAILOVER_RUNS_DEFAULT)
    if not 1 <= runs <= FAILOVER_RUNS_MAX:
        raise ValueError(f"--runs must be in [1, {FAILOVER_RUNS_MAX}]")
    idle_ms = getattr(args, "idle_ms", None)
    idle_ms = FAILOVER_IDLE_MS_DEFAULT if idle_ms is None else int(idle_ms)
    if not 0 <= idle_ms <= 60_000:
        raise ValueError("--idle-ms must be in [0, 60000]")
    return runs, idle_ms


def _run_line(row: Result) -> str:
    figure = "-" if row["failover_ms"] is None else f"{row['failover_ms']:.1f} ms"
    return (
        f"run {row['run']}: killed controller {row['killed_leader']} (term "
        f"{row['term_before']}), new leader {row['new_leader']} (term {row['term_after']}): "
        f"{figure}"
    )


def run(args: argparse.Namespace) -> Result:
    target = getattr(args, "target", None) or TARGET_CONTROLLER_LEADER
    if target not in TARGETS:
        raise ValueError(f"--target must be one of {', '.join(TARGETS)}")
    if target != TARGET_CONTROLLER_LEADER:
        return broker_failover.run(args)
    runs, idle_ms = _check(args)
    keep = bool(getattr(args, "keep_data", False))
    data_dir = Path(tempfile.mkdtemp(prefix="raftmq-bench-failover-"))
    cluster = LocalCluster(data_dir, controllers=3, brokers=0)
    rows: list[Result] = []
    error: str | None = None
    bar = ProgressBar("failover", runs, "runs", enabled=progress_wanted(args))
    meter = CpuMeter()
    try:
        cluster.start()
        for number in range(1, runs + 1):
            row = _failover_run(cluster, number, idle_ms / 1000)
            rows.append(row)
            bar.note(_run_line(row))
            bar.advance()
    except (TimeoutError, RaftmqError) as e:
        error = f"{type(e).__name__}: {e}\n{cluster.tail_logs(5)}"
    finally:
        # By PID, also on Ctrl-C: the quorum is ours alone.
        cluster.kill_all()
        bar.close()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    cpu = meter.stop(waiting=FAILOVER_WAITING)
    figures = [r["failover_ms"] for r in rows if r["failover_ms"] is not None]
    failed = [r for r in rows if r["error"]]
    if error is None and failed:
        error = f"{len(failed)} run(s) failed: {failed[0]['error']}"
    summary: Result = {"count": len(figures)}
    recovery_ms = None
    if figures:
        recovery_ms = {"median": round(statistics.median(figures), 1), "max": max(figures)}
        summary.update(median_ms=recovery_ms["median"], min_ms=min(figures), max_ms=max(figures))
    return {
        "scenario": "failover",
        "target": TARGET_CONTROLLER_LEADER,
        "controllers": 3,
        "runs_requested": runs,
        "idle_ms": idle_ms,
        "probe_interval_ms": FAILOVER_PROBE_INTERVAL_S * 1000,
        "recovery_ms": recovery_ms,
        "runs": rows,
        "failover": summary,
        "data_dir": str(data_dir) if keep else None,
        "cpu": cpu,
        "error": error,
    }


def render(result: Result) -> str:
    if result.get("target", TARGET_CONTROLLER_LEADER) != TARGET_CONTROLLER_LEADER:
        return broker_failover.render(result)
    lines = [
        f"bench failover: own 3-controller quorum, SIGKILL of the Raft leader -> first "
        f"committed write, after {result['idle_ms']} ms idle, probes every "
        f"{result['probe_interval_ms']:.0f} ms",
        fmt.table(
            ["RUN", "KILLED", "TERM", "NEW LEADER", "TERM", "FAILOVER MS", "REJOIN MS"],
            [
                [
                    r["run"],
                    r["killed_leader"],
                    r["term_before"],
                    r["new_leader"],
                    r["term_after"],
                    "-" if r["failover_ms"] is None else f"{r['failover_ms']:.1f}",
                    f"{r['rejoin_ms']:.0f}",
                ]
                for r in result["runs"]
            ],
        ),
    ]
    summary = result["failover"]
    if summary["count"]:
        lines.append(
            f"failover over {summary['count']} runs: median {summary['median_ms']:.1f} ms, "
            f"min {summary['min_ms']:.1f} ms, max {summary['max_ms']:.1f} ms"
        )
    lines += footer_lines(result)
    return "\n".join(lines)
