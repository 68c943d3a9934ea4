"""raftmq: a Kafka-style log broker with a Raft controller quorum."""
