"""`raftmq up`: the embedded default cluster, as local processes on 127.0.0.1."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from raftmq.local_cluster import LocalCluster

READY_TIMEOUT_S = 90.0


def run_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    cluster = LocalCluster(
        data_dir,
        controllers=args.controllers,
        brokers=args.brokers,
        broker_base_port=args.base_port,
        controller_base_port=args.controller_base_port,
        broker_args=[f"--flush-policy={args.flush_policy}"],
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"Starting {args.controllers} controller(s) and {args.brokers} broker(s) "
        f"with data under {cluster.data_dir} ...",
        flush=True,
    )
    cluster.start()
    try:
        try:
            cluster.wait_ready(timeout_s=READY_TIMEOUT_S)
        except TimeoutError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        bootstrap = ",".join(cluster.layout.broker_endpoints)
        print(f"Controllers: {','.join(cluster.layout.controller_endpoints)}")
        print(f"Brokers:     {bootstrap}")
        print(f"Logs:        {cluster.data_dir / 'logs'}")
        print(f"\nraftmq is ready. Bootstrap address: {cluster.layout.broker_endpoints[0]}")
        print("Press Ctrl-C to stop.", flush=True)
        while not stopping.wait(1.0):
            dead = [p.name for p in cluster.processes if not p.running]
            if dead:
                print(
                    f"error: {', '.join(dead)} exited; see {cluster.data_dir / 'logs'}",
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        print("Stopping the cluster ...", flush=True)
        cluster.stop()
        print("Stopped.", flush=True)
