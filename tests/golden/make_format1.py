"""Write `tests/golden/format1/`: the controller data dir of a raftmq from before versioned
records (on-disk format 1: a pysyncobj journal of pickled command objects and a snapshot
that pickles the state's classes). The tests check that today's controller refuses it.

This script runs against the *old* code, e.g. (the commit before the records change):

    git worktree add /tmp/raftmq-old 812cff3~3
    # a raftmq.* namespace made of the old folders, as pyproject.toml maps them
    mkdir -p /tmp/raftmq-old-path/raftmq && cd /tmp/raftmq-old-path/raftmq
    for f in /tmp/raftmq-old/common/*; do ln -s "$f" .; done
    ln -s /tmp/raftmq-old/controller controller; ln -s /tmp/raftmq-old/proto/raftmq/v1 v1
    PYTHONPATH=/tmp/raftmq-old-path .venv/bin/python tests/golden/make_format1.py OUT_DIR
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from raftmq.controller import metadata_state as ms
from raftmq.controller.quorum import ControllerQuorum, QuorumConfig

DEADLINE_S = 20.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def main(out: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    quorum = ControllerQuorum(
        QuorumConfig(
            node_id=1,
            raft_address=address,
            raft_bind=address,
            voters={1: address},
            data_dir=out,
            password="golden",
            grpc_host="127.0.0.1",
            grpc_port=19092,
            session_timeout_ms=600_000,
            leader_balance_interval_ms=0,
        )
    )
    try:
        wait_for(lambda: quorum.read(lambda s: s.controller_epoch) >= 1, "controller epoch")
        for b in (1, 2, 3):
            epoch = quorum.submit(
                ms.RegisterBroker(f"reg-{b}", b, "127.0.0.1", 9090 + b, "", f"inc-{b}")
            )
            assert epoch.ok, epoch
            assert quorum.submit(ms.UnfenceBroker(f"unfence-{b}", 1, b, epoch.value)).ok
        assert quorum.submit(ms.CreateTopic("create-a", "a", b"a" * 16, 3, 3)).ok
        # The old shell assigned its maintenance thread after SyncObj.__init__, so pysyncobj
        # tried to pickle it and every snapshot failed ("Failed to store full dump"). Set
        # it aside for one snapshot to get the file that code meant to write.
        maintenance = quorum.__dict__.pop("_maintenance")
        quorum.forceLogCompaction()
        wait_for((out / "raft.snapshot").exists, "the snapshot")
        quorum._maintenance = maintenance
        assert quorum.submit(ms.CreateTopic("create-b", "b", b"b" * 16, 2, 2)).ok
        assert quorum.submit(ms.DeleteTopic("delete-a", "a")).ok
    finally:
        quorum.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
