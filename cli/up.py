"""`raftmq up`: the embedded default cluster, as local processes on 127.0.0.1, supervised.

Every port comes from `--base-port` (layout in `raftmq.local_cluster`) and all of them are
checked before anything starts. A node that exits is reported and restarted with a
backoff (`raftmq.supervisor`); `--no-restart` stops the whole cluster instead, for scripts
that want to notice. The web console (`raftmq console`, port base+500; `--no-console`: none)
is one more supervised process. One `raftmq up` per data dir: a lock file keeps a second one
out.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from raftmq import ports
from raftmq.local_cluster import (
    BROKERS_MAX,
    LocalCluster,
    describe_exit,
    highest_port_offset,
    layout_from_base_port,
)
from raftmq.supervisor import Supervisor

READY_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.2
LOCK_FILE = "up.lock"


class UpError(Exception):
    """`raftmq up` cannot start (printed as `error: ...`, exit status 1)."""


def _say(line: str) -> None:
    print(line, flush=True)


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold DATA_DIR/up.lock (flock: released by the kernel when this process dies)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    with path.open("a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise UpError(
                f"{data_dir} is in use by another `raftmq up` (pid {holder}); stop it or "
                "pick another --data-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.brokers <= BROKERS_MAX:
        raise UpError(f"--brokers must be in [1, {BROKERS_MAX}], got {args.brokers}")
    offset = highest_port_offset(
        args.controllers,
        metrics=True,
        brokers=args.brokers,
        kafka=True,
        console=not args.no_console,
    )
    if args.base_port < 1 or args.base_port + offset > 65535:
        raise UpError(
            f"--base-port {args.base_port} puts ports outside [1, 65535] "
            f"(the cluster uses base..base+{offset})"
        )


def run_up(args: argparse.Namespace) -> int:
    try:
        _check_args(args)
        layout = layout_from_base_port(
            args.base_port,
            controllers=args.controllers,
            brokers=args.brokers,
            metrics=True,
            kafka=True,
            console=not args.no_console,
        )
        data_dir = Path(args.data_dir)
        with _data_dir_lock(data_dir):
            taken = [(n, h, p) for n, h, p in layout.listeners() if not ports.port_free(h, p)]
            if taken:
                name, host, port = taken[0]
                raise UpError(
                    f"{host}:{port} is already in use (needed by {name}); another cluster may "
                    "be running there: stop it or pick another --base-port"
                )
            return _run(args, data_dir)
    except UpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _print_ready(cluster: LocalCluster, *, no_restart: bool) -> None:
    status = cluster.describe()
    layout = cluster.layout
    _say(f"Cluster id:  {status.cluster_id if status is not None else '?'}")
    _say(f"Controllers: {','.join(layout.controller_endpoints)}")
    _say(f"Raft:        {','.join(layout.raft_endpoints)}")
    _say(f"Brokers:     {','.join(layout.broker_endpoints)}")
    _say(f"Kafka:       {','.join(layout.kafka_endpoints)}")
    _say(f"Logs:        {cluster.data_dir / 'logs'}")
    for name, url in layout.metrics_urls():
        _say(f"Metrics:     {name:<13} {url}")
    for p in cluster.processes:
        _say(f"  {p.name:<13} pid {p.pid}")
    _say(f"\nraftmq is ready. Bootstrap address: {layout.broker_endpoints[0]}")
    _say(f"Kafka bootstrap: {layout.kafka_endpoints[0]}")
    if layout.console_url is not None:
        _say(f"Console: {layout.console_url}")
    if no_restart:
        _say("Press Ctrl-C to stop. A node that exits stops the cluster (--no-restart).")
    else:
        _say("Press Ctrl-C to stop. A node that exits is restarted.")


def _run(args: argparse.Namespace, data_dir: Path) -> int:
    cluster = LocalCluster(
        data_dir,
        controllers=args.controllers,
        brokers=args.brokers,
        base_port=args.base_port,
        metrics=True,
        kafka=True,
        console=not args.no_console,
        broker_args=[
            f"--flush-policy={args.flush_policy}",
            # Auto-created topics are replicated like the topics people create by hand.
            f"--default-replication-factor={min(3, args.brokers)}",
            *(["--log-direct-io"] if args.log_direct_io else []),
        ],
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _say(
        f"Starting {args.controllers} controller(s) and {args.brokers} broker(s) "
        f"with data under {cluster.data_dir} ..."
    )
    cluster.start()
    supervisor = Supervisor(cluster.processes, report=_say)
    ready_deadline_s = time.monotonic() + READY_TIMEOUT_S
    ready = False
    try:
        # Bound: until a signal; the readiness wait is bounded by READY_TIMEOUT_S.
        while not stopping.wait(POLL_INTERVAL_S):
            if args.no_restart:
                dead = [p for p in cluster.processes if not p.running]
                for p in dead:
                    code = p.returncode
                    print(
                        f"error: {p.name} (pid {p.pid}) "
                        f"{describe_exit(code if code is not None else -1)}; "
                        f"log: {p.log_path}. Stopping the cluster (--no-restart).",
                        file=sys.stderr,
                    )
                if dead:
                    return 1
            else:
                supervisor.poll()
            if not ready:
                if cluster.is_ready():
                    ready = True
                    _print_ready(cluster, no_restart=args.no_restart)
                elif time.monotonic() >= ready_deadline_s:
                    print(
                        f"error: the cluster was not ready within {READY_TIMEOUT_S:.0f} s\n"
                        f"{cluster.tail_logs()}",
                        file=sys.stderr,
                    )
                    return 1
        return 0
    finally:
        _say("Stopping the cluster ...")
        cluster.stop()
        _say("Stopped.")
