"""`raftmq cluster status` shows the cluster id, in JSON and in text."""

from __future__ import annotations

from raftmq.cli import format as fmt
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as pb


def status(cluster_id: str) -> pb.DescribeClusterResponse:
    return pb.DescribeClusterResponse(
        cluster_id=cluster_id,
        controller=pb.QuorumInfo(
            leader_id=1, term=3, voters=[pb.QuorumVoter(id=1, state="leader")]
        ),
        metadata_version=7,
    )


def test_the_cluster_id_is_in_the_json_and_the_text() -> None:
    shown = fmt.cluster_json(status("MkU3OEVBNTcwNTJENDM2Qg"))
    assert shown["cluster_id"] == "MkU3OEVBNTcwNTJENDM2Qg"
    assert fmt.cluster_text(shown).splitlines()[0] == "Cluster id: MkU3OEVBNTcwNTJENDM2Qg"


def test_a_quorum_without_a_cluster_id_yet_says_so() -> None:
    text = fmt.cluster_text(fmt.cluster_json(status("")))
    assert text.splitlines()[0] == "Cluster id: (not initialized yet)"


def test_the_partition_health_counts_are_at_the_top() -> None:
    response = status("c")
    topic = response.topics.add(name="t", config=cpb.TopicConfig(min_insync_replicas=2))
    topic.partitions.add(partition=0, ar=[1, 2, 3], isr=[1, 2, 3], leader=1)  # healthy
    topic.partitions.add(partition=1, ar=[1, 2, 3], isr=[1, 2], leader=1)  # under-replicated
    topic.partitions.add(partition=2, ar=[1, 2, 3], isr=[3], leader=3)  # and under min ISR
    topic.partitions.add(partition=3, ar=[1, 2, 3], isr=[2], leader=-1)  # offline too
    shown = fmt.cluster_json(response)
    assert shown["partitions"] == {"under_replicated": 3, "under_min_isr": 2, "offline": 1}
    assert fmt.cluster_text(shown).splitlines()[1] == (
        "Partitions: 3 under-replicated, 2 under min ISR, 1 offline"
    )
