"""Write `tests/golden/records_v1/` (a single-node controller's data dir: meta.json, a
snapshot and the journal entries after it) and `records_v1.expected.json` (the state it
holds, canonical JSON), with the controller of this version (entry and snapshot schema 1).

Run from the repository root: `.venv/bin/python tests/golden/make_records_v1.py`. The
files are checked in; `tests/unit/test_controller_golden.py` loads them with the current
code and compares. Regenerate them only together with a new schema version, keeping the
old directory (the point is that old data stays readable).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from raftmq.controller import metadata_commands as mc
from raftmq.controller.quorum import ControllerQuorum, QuorumConfig
from raftmq.local_cluster import free_ports, wait_until

GOLDEN = Path(__file__).parent
CLUSTER_ID = "R29sZGVuQ2x1c3RlcklkMQ"


def submit(quorum: ControllerQuorum, command: mc.Command) -> mc.CommandResult:
    result = quorum.submit(command)
    assert result.ok, (command, result)
    return result


def epoch_of(quorum: ControllerQuorum, broker_id: int) -> int:
    return quorum.read(lambda s: s.brokers[broker_id].broker_epoch)


def main() -> None:
    data_dir = GOLDEN / "records_v1"
    shutil.rmtree(data_dir, ignore_errors=True)
    address = f"127.0.0.1:{free_ports(1)[0]}"
    stopping = threading.Event()
    fatal: list[str] = []
    quorum = ControllerQuorum(
        QuorumConfig(
            node_id=1,
            raft_address=address,
            raft_bind=address,
            voters={1: address},
            data_dir=data_dir,
            password="golden",
            grpc_host="127.0.0.1",
            grpc_port=19092,
            cluster_id=CLUSTER_ID,
            session_timeout_ms=600_000,
            leader_balance_interval_ms=0,
        ),
        stopping=stopping,
        on_fatal=fatal.append,
    )
    try:
        quorum.start()
        wait_until(
            lambda: quorum.read(lambda s: s.controller_epoch >= 1 and 1 in s.controllers),
            timeout_s=20,
            what="cluster id, controller epoch and registration",
        )
        term = quorum.read(lambda s: s.controller_epoch)
        for b in (1, 2, 3):
            epoch = submit(
                quorum,
                mc.RegisterBroker(
                    f"reg-{b}", b, "127.0.0.1", 9090 + b, f"r{b}", f"inc-{b}", CLUSTER_ID
                ),
            ).value
            assert isinstance(epoch, int)
            submit(quorum, mc.UnfenceBroker(f"unfence-{b}", term, b, epoch, epoch))
        submit(quorum, mc.CreateTopic("create-orders", "orders", b"orders-topic-id!", 3, 3))
        submit(
            quorum,
            mc.CreateTopic(
                "create-logs", "logs", b"logs-topic-id-16", 2, 2, (("retention.ms", "60000"),)
            ),
        )
        orders = quorum.read(lambda s: s.topics["orders"])
        p0 = orders.partitions[0]
        submit(
            quorum,
            mc.AlterPartition(
                "shrink-orders-0",
                p0.leader,
                epoch_of(quorum, p0.leader),
                "orders",
                orders.topic_id,
                0,
                p0.leader_epoch,
                p0.partition_epoch,
                (p0.leader,),
            ),
        )
        submit(quorum, mc.FenceBroker("fence-3", term, 3, epoch_of(quorum, 3)))
        submit(quorum, mc.AllocateProducerIds("pids-1", 1, epoch_of(quorum, 1)))
        quorum.forceLogCompaction()
        wait_until((data_dir / "raft.snapshot").exists, timeout_s=20, what="the snapshot")
        # After the snapshot: these stay in the journal.
        submit(quorum, mc.DeleteTopic("delete-logs", "logs"))
        epoch = epoch_of(quorum, 3)
        submit(quorum, mc.UnfenceBroker("unfence-3-again", term, 3, epoch, epoch))
        submit(quorum, mc.CreateTopic("create-events", "events", b"events-topic-id!", 1, 3))
        submit(quorum, mc.ControlledShutdown("shutdown-2", 2, epoch_of(quorum, 2)))
        submit(
            quorum, mc.RegisterBroker("reg-2b", 2, "127.0.0.1", 9092, "r2", "inc-2b", CLUSTER_ID)
        )
        submit(quorum, mc.AllocateProducerIds("pids-3", 3, epoch_of(quorum, 3)))
        state = quorum.read(lambda s: s.to_dict())
    finally:
        quorum.stop()
    assert not fatal, fatal
    (GOLDEN / "records_v1.expected.json").write_text(
        json.dumps(state, indent=1, sort_keys=True) + "\n"
    )


if __name__ == "__main__":
    main()
