"""The data dir's identity: stamped once, checked at every start, never misread."""

from __future__ import annotations

from pathlib import Path

import pytest
from raftmq import node_meta
from raftmq.node_meta import DataDirError, NodeMeta


def test_a_fresh_data_dir_is_accepted_and_stamped_once(tmp_path: Path) -> None:
    assert node_meta.check(tmp_path, role="broker", node_id=1) is None
    node_meta.stamp(tmp_path, NodeMeta("cluster-a", 1, "broker"))
    assert node_meta.check(tmp_path, role="broker", node_id=1) == NodeMeta("cluster-a", 1, "broker")
    assert node_meta.check(tmp_path, role="broker", node_id=1, cluster_id="cluster-a") is not None


def test_another_cluster_is_refused_naming_both_ids(tmp_path: Path) -> None:
    node_meta.stamp(tmp_path, NodeMeta("cluster-a", 1, "controller"))
    with pytest.raises(DataDirError, match=r"belongs to cluster cluster-a.*cluster cluster-b"):
        node_meta.check(tmp_path, role="controller", node_id=1, cluster_id="cluster-b")


@pytest.mark.parametrize(
    ("role", "node_id", "message"),
    [
        ("controller", 1, "belongs to a broker"),
        ("broker", 2, "belongs to broker 1, not to broker 2"),
    ],
)
def test_another_node_or_role_is_refused(
    tmp_path: Path, role: str, node_id: int, message: str
) -> None:
    node_meta.stamp(tmp_path, NodeMeta("c", 1, "broker"))
    with pytest.raises(DataDirError, match=message):
        node_meta.check(tmp_path, role=role, node_id=node_id)


@pytest.mark.parametrize(("role", "marker"), [("broker", "log"), ("controller", "raft.journal")])
def test_a_data_dir_of_the_old_format_is_refused(tmp_path: Path, role: str, marker: str) -> None:
    (tmp_path / marker).mkdir()
    with pytest.raises(DataDirError, match=r"older raftmq .*format 1"):
        node_meta.check(tmp_path, role=role, node_id=1)


def test_a_newer_format_and_garbage_are_refused(tmp_path: Path) -> None:
    node_meta.stamp(tmp_path, NodeMeta("c", 1, "broker", format_version=99))
    with pytest.raises(DataDirError, match="format 99"):
        node_meta.check(tmp_path, role="broker", node_id=1)
    (tmp_path / node_meta.META_FILE).write_text("{not json")
    with pytest.raises(DataDirError, match="unreadable"):
        node_meta.check(tmp_path, role="broker", node_id=1)


def test_a_node_killed_before_it_learnt_its_cluster_restarts(tmp_path: Path) -> None:
    """The data dir is stamped before the node writes into it: a controller killed before
    the cluster id was committed (journal, no id yet) is not taken for an old format."""
    meta = node_meta.claim(tmp_path, role="controller", node_id=1)
    assert meta.cluster_id == ""
    (tmp_path / "raft.journal").write_bytes(b"...")
    assert node_meta.check(tmp_path, role="controller", node_id=1, cluster_id="c1") == meta
    learnt = node_meta.record_cluster_id(tmp_path, meta, "c1")
    assert node_meta.check(tmp_path, role="controller", node_id=1) == learnt
    with pytest.raises(DataDirError, match="belongs to cluster c1"):
        node_meta.check(tmp_path, role="controller", node_id=1, cluster_id="c2")
