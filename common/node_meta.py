"""The identity stamped into every node's data dir: `DATA_DIR/meta.json`, as Kafka's
`meta.properties`.

    {"format_version": 2, "cluster_id": "...", "node_id": 1, "role": "broker"}

Written atomically when a node first starts on an empty data dir (`claim`, before it
writes anything else there, so that any data dir of this format has one), with an empty
cluster id until the node learns it (a controller from the quorum's first committed
state, a broker from its registration), and checked at every start: a data dir of another
node, role or cluster, or one written by an older raftmq whose on-disk format this version
cannot read, is refused with a message naming both sides. Never misread, never silently
reused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

META_FILE = "meta.json"
# 1: the layout before meta.json existed (controller journals of commands, columnar
# record batches). 2: controller journals of versioned records, Kafka RecordBatch v2 logs.
FORMAT_VERSION = 2
ROLES = ("controller", "broker")
# What a node keeps in its data dir; their presence without meta.json means format 1.
_FORMAT_1_MARKERS = {"controller": ("raft.journal", "raft.snapshot"), "broker": ("log",)}


class DataDirError(Exception):
    """The data dir cannot be used by this node (another cluster, node or format)."""


@dataclass(frozen=True, slots=True)
class NodeMeta:
    # "" until the node learnt its cluster's id.
    cluster_id: str
    node_id: int
    role: str
    format_version: int = FORMAT_VERSION


def load(data_dir: Path) -> NodeMeta | None:
    """The stamped identity, or None when the data dir has none yet."""
    path = data_dir / META_FILE
    try:
        raw = json.loads(path.read_text())
        return NodeMeta(
            cluster_id=str(raw["cluster_id"]),
            node_id=int(raw["node_id"]),
            role=str(raw["role"]),
            format_version=int(raw["format_version"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataDirError(f"{path} is unreadable ({e}); it is not a raftmq data dir") from e


def stamp(data_dir: Path, meta: NodeMeta) -> None:
    """Write meta.json atomically (write a temporary file, fsync, rename)."""
    assert meta.role in ROLES
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / META_FILE
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        json.dump(asdict(meta), f, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def check(data_dir: Path, *, role: str, node_id: int, cluster_id: str = "") -> NodeMeta | None:
    """Refuse (DataDirError) a data dir this node must not use; return its stamp (None for
    a fresh dir). `cluster_id`: the id this node was told to join ("" when not given)."""
    assert role in ROLES
    meta = load(data_dir)
    if meta is None:
        present = [m for m in _FORMAT_1_MARKERS[role] if (data_dir / m).exists()]
        if present:
            raise DataDirError(
                f"{data_dir} was written by an older raftmq (on-disk format 1: "
                f"{', '.join(present)} without {META_FILE}); this version reads format "
                f"{FORMAT_VERSION} only. Move it aside and start with an empty data dir."
            )
        return None
    if meta.format_version != FORMAT_VERSION:
        raise DataDirError(
            f"{data_dir} has on-disk format {meta.format_version}; this raftmq reads format "
            f"{FORMAT_VERSION} only"
        )
    if meta.role != role:
        raise DataDirError(f"{data_dir} belongs to a {meta.role}, not to a {role}")
    if meta.node_id != node_id:
        raise DataDirError(f"{data_dir} belongs to {role} {meta.node_id}, not to {role} {node_id}")
    if cluster_id and meta.cluster_id and meta.cluster_id != cluster_id:
        raise DataDirError(cluster_mismatch(data_dir, meta.cluster_id, cluster_id))
    return meta


def claim(data_dir: Path, *, role: str, node_id: int, cluster_id: str = "") -> NodeMeta:
    """`check` the data dir, and stamp a fresh one at once (with `cluster_id`, possibly
    "" for now), before the node writes anything else into it."""
    meta = check(data_dir, role=role, node_id=node_id, cluster_id=cluster_id)
    if meta is None:
        meta = NodeMeta(cluster_id, node_id, role)
        stamp(data_dir, meta)
    return meta


def record_cluster_id(data_dir: Path, meta: NodeMeta, cluster_id: str) -> NodeMeta:
    """Stamp the cluster id the node just learnt into a data dir that had none."""
    assert cluster_id and not meta.cluster_id
    learnt = NodeMeta(cluster_id, meta.node_id, meta.role, meta.format_version)
    stamp(data_dir, learnt)
    return learnt


def cluster_mismatch(data_dir: Path, own_cluster_id: str, other_cluster_id: str) -> str:
    return (
        f"{data_dir} belongs to cluster {own_cluster_id}, but this node was asked to join "
        f"cluster {other_cluster_id}; refusing to mix them"
    )
