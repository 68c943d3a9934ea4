"""`raftmq group list | describe | reset-offsets | delete`: consumer groups through the
client library's `Admin`, like any other application. Text tables by default, one JSON
document with `--json`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from raftmq.client.admin import Admin
from raftmq.client.brokers import parse_brokers
from raftmq.client.group_admin import GroupDescription, ResetTo
from raftmq.client.group_protocol import TopicPartition

from . import format as fmt


def _admin(args: argparse.Namespace) -> Admin:
    return Admin(parse_brokers(args.bootstrap), timeout_ms=args.timeout_ms)


def _partitions_json(tps: Iterable[TopicPartition]) -> list[dict[str, Any]]:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(tps):
        by_topic.setdefault(topic, []).append(partition)
    return [{"topic": t, "partitions": ps} for t, ps in by_topic.items()]


def _partitions_text(tps: Iterable[TopicPartition]) -> str:
    return ",".join(f"{t}-{p}" for t, p in sorted(tps)) or "-"


def description_json(d: GroupDescription) -> dict[str, Any]:
    """`group describe --json`."""
    return {
        "group_id": d.group_id,
        "state": d.state,
        "group_epoch": d.group_epoch,
        "assignment_epoch": d.assignment_epoch,
        "assignor": d.assignor,
        "coordinator_id": d.coordinator_id,
        "members": [
            {
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "client_id": m.client_id,
                "member_epoch": m.member_epoch,
                "assignment": _partitions_json(m.assignment),
                "revoking": _partitions_json(m.revoking),
                "target": _partitions_json(m.target),
                "subscribed_topics": list(m.subscribed_topics),
                "subscribed_pattern": m.subscribed_pattern,
            }
            for m in d.members
        ],
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed_offset": p.committed_offset,
                "log_end_offset": p.log_end_offset,
                "lag": p.lag,
                "member_id": p.member_id,
            }
            for p in d.partitions
        ],
        "lag": d.lag,
    }


def description_text(d: GroupDescription) -> str:
    head = (
        f"Group {d.group_id}  state {d.state}  epoch {d.group_epoch}  assignor "
        f"{d.assignor or '-'}  coordinator {d.coordinator_id}  lag {d.lag}"
    )
    members = (
        fmt.table(
            ["MEMBER", "INSTANCE", "CLIENT", "EPOCH", "ASSIGNMENT", "REVOKING"],
            [
                [
                    m.member_id,
                    m.instance_id or "-",
                    m.client_id or "-",
                    m.member_epoch,
                    _partitions_text(m.assignment),
                    _partitions_text(m.revoking),
                ]
                for m in d.members
            ],
        )
        if d.members
        else "(no members)"
    )

    def shown(value: int | None) -> object:
        return "-" if value is None or value < 0 else value

    partitions = (
        fmt.table(
            ["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "MEMBER"],
            [
                [
                    p.topic,
                    p.partition,
                    shown(p.committed_offset),
                    shown(p.log_end_offset),
                    shown(p.lag),
                    p.member_id or "-",
                ]
                for p in d.partitions
            ],
        )
        if d.partitions
        else "(no partitions)"
    )
    return "\n".join([head, "", members, "", partitions])


def cmd_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        groups = admin.list_groups()
    if args.json:
        print(
            json.dumps(
                [
                    {"group_id": g.group_id, "state": g.state, "coordinator_id": g.coordinator_id}
                    for g in groups
                ]
            )
        )
    else:
        print(
            fmt.table(
                ["GROUP", "STATE", "COORDINATOR"],
                [[g.group_id, g.state, g.coordinator_id] for g in groups],
            )
            if groups
            else "(no groups)"
        )
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        description = admin.describe_group(args.group)
    print(json.dumps(description_json(description)) if args.json else description_text(description))
    return 0


def reset_to(args: argparse.Namespace) -> ResetTo:
    """The reset target of `group reset-offsets` (exactly one --to-* flag is given)."""
    if args.to_earliest:
        return "earliest"
    if args.to_latest:
        return "latest"
    if args.to_offset is not None:
        return int(args.to_offset)
    try:
        return datetime.fromisoformat(args.to_time)
    except ValueError as e:
        raise ValueError(
            f"--to-time wants an ISO 8601 time such as 2026-01-02T03:04:05Z, got {args.to_time!r}"
        ) from e


def cmd_reset_offsets(args: argparse.Namespace) -> int:
    to = reset_to(args)
    with _admin(args) as admin:
        offsets = admin.reset_offsets(args.group, args.topic, to)
    if args.json:
        print(
            json.dumps(
                {
                    "group_id": args.group,
                    "topic": args.topic,
                    "offsets": [{"partition": p, "offset": o} for p, o in offsets.items()],
                }
            )
        )
    else:
        print(f"Reset the offsets of group {args.group!r} on {args.topic!r}:")
        print(fmt.table(["PARTITION", "OFFSET"], [[p, o] for p, o in offsets.items()]))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        admin.delete_group(args.group)
    print(json.dumps({"deleted": args.group}) if args.json else f"Deleted group {args.group!r}.")
    return 0
