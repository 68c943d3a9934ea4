"""A controller's Prometheus metrics (see `raftmq.metrics`): its Raft state and the
cluster health the quorum's metadata shows. Refreshed by the controller's main thread
every half second; a scrape only reads them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from raftmq.controller.metadata_state import MetadataState
from raftmq.controller.quorum import QuorumStatus
from raftmq.heap import gc_pause_histogram, observe_gc_pauses


class ControllerMetrics:
    def __init__(self, *, node_id: int) -> None:
        self.node_id = node_id
        self.registry = r = CollectorRegistry()
        self.gc_pause = gc_pause_histogram("controller", r)
        self.is_leader = Gauge(
            "raftmq_controller_is_leader", "1 while this controller is the Raft leader", registry=r
        )
        self.term = Gauge("raftmq_controller_raft_term", "The Raft term", registry=r)
        self.leader_id = Gauge(
            "raftmq_controller_raft_leader_id", "The Raft leader's node id (-1: none)", registry=r
        )
        self.commit_index = Gauge(
            "raftmq_controller_raft_commit_index", "The Raft commit index", registry=r
        )
        self.last_applied = Gauge(
            "raftmq_controller_raft_last_applied", "The last Raft entry applied here", registry=r
        )
        self.leader_changes = Counter(
            "raftmq_controller_leader_changes",
            "Changes of Raft leader this controller saw",
            registry=r,
        )
        self.metadata_version = Gauge(
            "raftmq_controller_metadata_version", "The metadata version applied here", registry=r
        )
        self.live_brokers = Gauge(
            "raftmq_controller_live_brokers", "Registered brokers not fenced", registry=r
        )
        self.fenced_brokers = Gauge(
            "raftmq_controller_fenced_brokers", "Registered brokers fenced", registry=r
        )
        self.topics = Gauge("raftmq_controller_topics", "Topics", registry=r)
        self.partitions = Gauge("raftmq_controller_partitions", "Partitions", registry=r)
        self.offline = Gauge(
            "raftmq_controller_offline_partitions", "Partitions without a leader", registry=r
        )
        self.under_replicated = Gauge(
            "raftmq_controller_under_replicated_partitions",
            "Partitions whose ISR is smaller than their AR",
            registry=r,
        )
        self.under_min_isr = Gauge(
            "raftmq_controller_under_min_isr_partitions",
            "Partitions whose ISR is smaller than min.insync.replicas",
            registry=r,
        )
        self._last_leader: int | None = None

    def refresh(self, status: QuorumStatus, state: MetadataState) -> None:
        """From the controller's main thread (state read under the quorum's lock)."""
        observe_gc_pauses(self.gc_pause)
        self.is_leader.set(1 if status.leader_id == self.node_id else 0)
        self.term.set(status.term)
        self.leader_id.set(status.leader_id)
        self.commit_index.set(status.commit_index)
        self.last_applied.set(status.last_applied)
        if self._last_leader is not None and status.leader_id != self._last_leader:
            self.leader_changes.inc()
        self._last_leader = status.leader_id
        self.metadata_version.set(state.version)
        fenced = sum(1 for b in state.brokers.values() if b.fenced)
        self.fenced_brokers.set(fenced)
        self.live_brokers.set(len(state.brokers) - fenced)
        offline = under_replicated = under_min = count = 0
        for topic in state.topics.values():
            for p in topic.partitions:
                count += 1
                offline += p.leader < 0
                under_replicated += len(p.isr) < len(p.ar)
                under_min += len(p.isr) < topic.config.min_insync_replicas
        self.topics.set(len(state.topics))
        self.partitions.set(count)
        self.offline.set(offline)
        self.under_replicated.set(under_replicated)
        self.under_min_isr.set(under_min)
