"""Which of gRPC core's I/O engines raftmq's processes use: chosen before gRPC loads.

grpcio 1.80 moved Python onto gRPC core's EventEngine for client and server connections
(the experiments `event_engine_client` and `event_engine_listener`, on by default since).
There a socket read happens on an EventEngine thread, which hands the completion to
grpc.aio's poller thread, which wakes the asyncio loop: three threads woken per message.
With both experiments off, the poller thread reads the socket itself (iomgr, what gRPC
Python ran on until 1.79): two.

Measured with grpcio 1.85.4 on the project's 2-core VM:

- a grpc.aio stream ping-pong between two processes (100 B each way, uvloop):
  p50 290-345 us -> 166-212 us, client CPU 0.22 -> 0.14-0.17 ms and 7.3 -> 4.1 context
  switches per round trip;
- `raftmq bench latency` (one acks=all write in flight), three alternating pairs of fresh
  `raftmq up` clusters: p50 2.34 / 2.51 / 2.68 ms -> 1.76 / 2.19 / 2.29 ms, p99
  4.45 / 4.95 / 5.12 -> 3.18 / 3.95 / 4.23 ms;
- `bench produce` and `bench e2e --rate 1000` (CPU-bound on both cores) did not change
  beyond their run-to-run noise.

gRPC core reads GRPC_EXPERIMENTS once, when `grpc` is first imported, so `use_iomgr()`
must run before that: `raftmq/__init__` calls it, and every raftmq module is imported
through it. It only sets a default: a GRPC_EXPERIMENTS already in the environment (even
an empty one, which means gRPC's own defaults) is left as it is, and a process that
imported grpc before raftmq keeps the engine it started with. Child processes (`raftmq
up`'s nodes) inherit the variable.

The experiment names are those of grpcio 1.85 (pyproject.toml pins that minor release); a
gRPC that no longer knows them logs "Unknown experiment" at startup, which
tests/unit/test_grpc_io.py catches.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

__all__ = ["GRPC_EXPERIMENTS_ENV", "IOMGR_EXPERIMENTS", "use_iomgr"]

GRPC_EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"
# A leading "-" turns a default-on experiment off.
IOMGR_EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def use_iomgr(
    environ: MutableMapping[str, str] = os.environ, modules: Mapping[str, object] = sys.modules
) -> bool:
    """Ask gRPC core for iomgr sockets unless the user chose, or grpc is already loaded.

    Returns whether this call set the variable.
    """
    if GRPC_EXPERIMENTS_ENV in environ or "grpc" in modules:
        return False
    environ[GRPC_EXPERIMENTS_ENV] = IOMGR_EXPERIMENTS
    return True
