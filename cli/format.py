"""Turning metadata responses into the CLI's JSON objects and aligned tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as pb

_FENCED_STATE = {True: "fenced", False: "active"}


def topic_json(topic: cpb.Topic) -> dict[str, Any]:
    """The topic shape shared by `topic describe --json` and `cluster status --json`."""
    return {
        "name": topic.name,
        "topic_id": topic.topic_id.hex(),
        "replication_factor": topic.replication_factor,
        "config": {
            "min.insync.replicas": topic.config.min_insync_replicas,
            "retention.ms": topic.config.retention_ms,
            "retention.bytes": topic.config.retention_bytes,
            "max.message.bytes": topic.config.max_message_bytes,
            "unclean.leader.election.enable": topic.config.unclean_leader_election_enable,
            "cleanup.policy": topic.config.cleanup_policy or "delete",
            "delete.retention.ms": topic.config.delete_retention_ms,
        },
        "partitions": [
            {
                "partition": p.partition,
                "leader": p.leader,
                "leader_epoch": p.leader_epoch,
                "partition_epoch": p.partition_epoch,
                "ar": list(p.ar),
                "isr": list(p.isr),
                "osr": list(p.osr),
            }
            for p in sorted(topic.partitions, key=lambda p: p.partition)
        ],
    }


def broker_state(b: cpb.BrokerInfo) -> str:
    if b.shutting_down:
        return "shutdown"
    return _FENCED_STATE[b.fenced]


def partition_health(topics: Sequence[cpb.Topic]) -> dict[str, int]:
    """Kafka's three health counts: partitions with ISR < AR, with ISR below
    min.insync.replicas (acks=all writes fail there), and without a leader."""
    counts = {"under_replicated": 0, "under_min_isr": 0, "offline": 0}
    for topic in topics:
        for p in topic.partitions:
            counts["under_replicated"] += len(p.isr) < len(p.ar)
            counts["under_min_isr"] += len(p.isr) < topic.config.min_insync_replicas
            counts["offline"] += p.leader < 0
    return counts


def cluster_json(response: pb.DescribeClusterResponse) -> dict[str, Any]:
    return {
        "cluster_id": response.cluster_id,
        "partitions": partition_health(response.topics),
        "controller": {
            "leader_id": response.controller.leader_id,
            "term": response.controller.term,
            "voters": [
                {
                    "id": v.id,
                    "state": v.state,
                    "raft_address": v.raft_address,
                    "endpoint": f"{v.endpoint.host}:{v.endpoint.port}" if v.endpoint.host else "",
                    "match_index": v.match_index,
                    "last_contact_ms": v.last_contact_ms,
                }
                for v in response.controller.voters
            ],
            "commit_index": response.controller.commit_index,
        },
        "metadata_version": response.metadata_version,
        "brokers": [
            {
                "id": b.id,
                "endpoint": f"{b.endpoint.host}:{b.endpoint.port}",
                "state": broker_state(b),
                "rack": b.rack,
                "broker_epoch": b.broker_epoch,
            }
            for b in response.brokers
        ],
        "topics": [topic_json(t) for t in response.topics],
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def topic_table(topics: Sequence[dict[str, Any]]) -> str:
    rows = [
        [t["name"], p["partition"], p["leader"], p["leader_epoch"], p["ar"], p["isr"], p["osr"]]
        for t in topics
        for p in t["partitions"]
    ]
    return table(["TOPIC", "PARTITION", "LEADER", "EPOCH", "AR", "ISR", "OSR"], rows)


def cluster_text(status: dict[str, Any]) -> str:
    controller = status["controller"]
    health = status["partitions"]
    parts = [
        f"Cluster id: {status['cluster_id'] or '(not initialized yet)'}",
        f"Partitions: {health['under_replicated']} under-replicated, "
        f"{health['under_min_isr']} under min ISR, {health['offline']} offline",
        f"Controller quorum: leader {controller['leader_id']}, term {controller['term']}, "
        f"metadata version {status['metadata_version']}",
        table(
            ["VOTER", "STATE", "RAFT", "ENDPOINT"],
            [[v["id"], v["state"], v["raft_address"], v["endpoint"]] for v in controller["voters"]],
        ),
        "",
        "Brokers:",
        table(
            ["ID", "ENDPOINT", "STATE", "RACK", "EPOCH"],
            [
                [b["id"], b["endpoint"], b["state"], b["rack"] or "-", b["broker_epoch"]]
                for b in status["brokers"]
            ],
        )
        if status["brokers"]
        else "(none registered)",
        "",
        "Topics:",
        topic_table(status["topics"]) if status["topics"] else "(none)",
    ]
    return "\n".join(parts)
