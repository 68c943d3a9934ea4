"""The bench's own cluster, for the scenarios that kill brokers or load one on purpose
(`failover --target partition-leader|follower`, `partitions`, `consumers`): `raftmq up`'s
defaults (3 controllers, 3 brokers, flush policy `interval`, auto-created topics with
replication factor 3) on free ports under a temporary directory.

Used as a context manager: every process it started is stopped by PID when the block
ends, also on an exception or Ctrl-C (`LocalCluster.kill_all`), and the directory is
removed unless `keep_data`. Everything else the scenarios do goes through the client
library (`Admin`, `Writer`, `Reader`, `Conn`), so they measure whichever broker and
controller engine is installed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from raftmq.client.admin import Admin, ClusterStatus
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.local_cluster import LocalCluster
from raftmq.metadata import NO_LEADER, TopicRecord

CONTROLLERS = 3
BROKERS = 3
# What `raftmq up` passes its brokers (cli/up.py), so that the figures are `raftmq up`'s.
UP_BROKER_ARGS = ("--flush-policy=interval", f"--default-replication-factor={min(3, BROKERS)}")
CLUSTER_READY_TIMEOUT_S = 60.0
POLL_S = 0.1
ADMIN_TIMEOUT_MS = 5_000


def partitions_not_full(topic: TopicRecord) -> list[int]:
    """Partitions without a leader, or whose ISR is not every assigned replica."""
    return [
        i for i, p in enumerate(topic.partitions) if p.leader == NO_LEADER or len(p.isr) < len(p.ar)
    ]


def brokers_unfenced(status: ClusterStatus) -> set[int]:
    return {b.broker_id for b in status.brokers if not b.fenced}


class BenchCluster:
    """3 controllers and 3 brokers as processes of this one bench run."""

    def __init__(self, name: str, *, keep_data: bool = False) -> None:
        self.keep_data = keep_data
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"raftmq-bench-{name}-"))
        self.local = LocalCluster(
            self.data_dir, controllers=CONTROLLERS, brokers=BROKERS, broker_args=UP_BROKER_ARGS
        )

    def __enter__(self) -> BenchCluster:
        try:
            self.local.start()
            self.local.wait_ready(timeout_s=CLUSTER_READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process by PID (SIGKILL: nothing of this cluster is kept), then
        remove the data unless asked to keep it."""
        self.local.kill_all()
        if not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def bootstrap(self) -> list[str]:
        return list(self.local.layout.broker_endpoints)

    def endpoint(self, broker_id: int) -> str:
        return self.local.layout.broker_endpoints[broker_id - 1]

    def broker_pids(self) -> dict[str, int | None]:
        return {p.name: p.pid for p in self.local.brokers.values()}

    def pids(self) -> dict[str, int | None]:
        """Every node's PID by name (controller-1, ..., broker-1, ...)."""
        return {p.name: p.pid for p in self.local.processes}

    def kill_broker(self, broker_id: int) -> float:
        """SIGKILL one broker by PID; returns perf_counter just before the signal."""
        killed_s = time.perf_counter()
        self.local.brokers[broker_id].kill()
        return killed_s

    def restart_broker(self, broker_id: int) -> None:
        self.local.brokers[broker_id].start()

    def tail_logs(self, lines: int = 5) -> str:
        return self.local.tail_logs(lines)

    def admin(self, *, timeout_ms: int = ADMIN_TIMEOUT_MS) -> Admin:
        return Admin(self.bootstrap, timeout_ms=timeout_ms)


def wait_full_isr(
    admin: Admin,
    topic: str,
    *,
    timeout_s: float,
    brokers: int = BROKERS,
    poll_s: float = POLL_S,
    on_poll: Callable[[TopicRecord], None] | None = None,
) -> TopicRecord:
    """Wait until `brokers` brokers are unfenced and every partition of `topic` has a
    leader and its whole AR in the ISR; returns the topic. `on_poll` sees every answer.
    Raises RaftmqError (LEADER_NOT_AVAILABLE) naming what was still missing."""
    deadline = time.monotonic() + timeout_s
    missing = "its metadata"
    # Bound: timeout_s.
    while time.monotonic() < deadline:
        try:
            status = admin.cluster_status()
        except RaftmqError as e:
            missing = f"an answer ({e})"
        else:
            live = brokers_unfenced(status)
            record = next((t for t in status.topics if t.name == topic), None)
            if record is None:
                missing = f"topic {topic!r} in the metadata"
            else:
                if on_poll is not None:
                    on_poll(record)
                not_full = partitions_not_full(record)
                if len(live) >= brokers and not not_full:
                    return record
                missing = (
                    f"{brokers} unfenced brokers (have {sorted(live)})"
                    if len(live) < brokers
                    else f"a leader and a full ISR on {len(not_full)} partition(s), e.g. "
                    f"{not_full[:5]}"
                )
        time.sleep(poll_s)
    raise RaftmqError(
        ErrorCode.LEADER_NOT_AVAILABLE,
        f"topic {topic!r} not fully in sync after {timeout_s:.0f} s: waiting for {missing}",
    )


def create_topic(admin: Admin, name: str, partitions: int, *, min_insync_replicas: int = 2) -> None:
    """Create `name` with RF 3 and min.insync.replicas (raftmq up's bench setup)."""
    admin.create_topic(
        name,
        partitions=partitions,
        replication_factor=BROKERS,
        configs={"min.insync.replicas": str(min_insync_replicas)},
    )
