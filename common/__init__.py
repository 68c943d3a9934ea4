"""raftmq: a Kafka-style log broker with a Raft controller quorum."""

from raftmq.message import Message

__all__ = ["Message"]
