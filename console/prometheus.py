"""What the console reads from a node's Prometheus text (`--metrics URL`), pure.

A broker is recognised by `raftmq_broker_info{broker_id=...}`, a controller by
`raftmq_controller_is_leader`; the names are the ones `broker/broker_metrics.py` and
`controller/controller_metrics.py` export. Anything else in the text is ignored, and a
text that cannot be parsed is an error for that URL only.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

KIND_BROKER = "broker"
KIND_CONTROLLER = "controller"
KIND_UNKNOWN = "unknown"
# A scrape reads at most this much of an answer (a broker with thousands of groups' lag
# gauges stays far below it).
METRICS_TEXT_BYTES_MAX = 8 << 20


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    """One node's scrape. Totals are counters (they restart at 0 with the process)."""

    url: str
    kind: str = KIND_UNKNOWN
    error: str = ""  # the scrape failed: every figure below is None
    broker_id: int | None = None
    log_size_bytes: float | None = None
    disk_free_bytes: float | None = None
    messages_in_total: float | None = None
    messages_out_total: float | None = None
    bytes_in_total: float | None = None
    bytes_out_total: float | None = None
    controller_is_leader: bool | None = None
    controller_term: float | None = None
    controller_leader_id: float | None = None
    controller_commit_index: float | None = None
    controller_last_applied: float | None = None


# Sample name -> field (summed over label sets: topics).
_BROKER_SAMPLES = {
    "raftmq_broker_log_size_bytes": "log_size_bytes",
    "raftmq_broker_disk_free_bytes": "disk_free_bytes",
    "raftmq_broker_topic_messages_in_total": "messages_in_total",
    "raftmq_broker_topic_messages_out_total": "messages_out_total",
    "raftmq_broker_topic_bytes_in_total": "bytes_in_total",
    "raftmq_broker_topic_bytes_out_total": "bytes_out_total",
}
_CONTROLLER_SAMPLES = {
    "raftmq_controller_raft_term": "controller_term",
    "raftmq_controller_raft_leader_id": "controller_leader_id",
    "raftmq_controller_raft_commit_index": "controller_commit_index",
    "raftmq_controller_raft_last_applied": "controller_last_applied",
}


def parse_metrics(url: str, text: str) -> NodeMetrics:
    """The figures of one node's /metrics text."""
    values: dict[str, float] = {}
    broker_id: int | None = None
    is_leader: bool | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name
                if name == "raftmq_broker_info":
                    text_id = sample.labels.get("broker_id", "")
                    broker_id = int(text_id) if text_id.isdigit() else None
                elif name == "raftmq_controller_is_leader":
                    is_leader = sample.value >= 1
                field = _BROKER_SAMPLES.get(name) or _CONTROLLER_SAMPLES.get(name)
                if field is not None:
                    values[field] = values.get(field, 0.0) + float(sample.value)
    except (ValueError, TypeError, IndexError) as e:
        return NodeMetrics(url, error=f"unreadable metrics: {e}")
    if broker_id is not None:
        return NodeMetrics(
            url,
            KIND_BROKER,
            broker_id=broker_id,
            log_size_bytes=values.get("log_size_bytes"),
            disk_free_bytes=values.get("disk_free_bytes"),
            # A counter with no label set yet (nothing produced) is a 0, not unknown.
            messages_in_total=values.get("messages_in_total", 0.0),
            messages_out_total=values.get("messages_out_total", 0.0),
            bytes_in_total=values.get("bytes_in_total", 0.0),
            bytes_out_total=values.get("bytes_out_total", 0.0),
        )
    if is_leader is not None:
        return NodeMetrics(
            url,
            KIND_CONTROLLER,
            controller_is_leader=is_leader,
            controller_term=values.get("controller_term"),
            controller_leader_id=values.get("controller_leader_id"),
            controller_commit_index=values.get("controller_commit_index"),
            controller_last_applied=values.get("controller_last_applied"),
        )
    return NodeMetrics(url, error="no raftmq broker or controller metrics at this URL")
