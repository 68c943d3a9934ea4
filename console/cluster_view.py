"""What the console's pages show, pure: one poll of the cluster (`Sample`), the snapshot
pages render (`Snapshot`: the sample with its rates), and the rows derived from it —
health badges, brokers with their skew, topics, partitions with ISR and OSR, voters.

No I/O and no clock here: `console/backend.py` fills a Sample from the public client and
the brokers' metrics, `console/cluster_watch.py` keeps the latest Snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from raftmq.metadata import BrokerRegistration, PartitionRecord, TopicRecord

from .prometheus import KIND_BROKER, KIND_CONTROLLER, NodeMetrics

INTERNAL_TOPIC_PREFIX = "__"

LEVEL_OK = "ok"
LEVEL_WARN = "warn"
LEVEL_BAD = "bad"

RATES_FROM_METRICS = "brokers' metrics"
RATES_FROM_HIGH_WATERMARKS = "high-watermark deltas"


@dataclass(frozen=True, slots=True)
class VoterView:
    """One controller of the quorum, as DescribeCluster answers it. `match_index` and
    `last_contact_ms` are the Raft leader's view: -1 for the leader itself, and for every
    voter when a follower controller answered."""

    node_id: int
    state: str  # leader | follower | unreachable
    raft_address: str
    endpoint: str
    match_index: int
    last_contact_ms: int


@dataclass(frozen=True, slots=True)
class QuorumView:
    leader_id: int  # -1: no leader known
    term: int
    commit_index: int  # of the controller that answered
    last_applied: int
    voters: tuple[VoterView, ...]


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    # Invariant: log_start_offset <= high_watermark.
    log_start_offset: int
    high_watermark: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll of the cluster. `offsets` lacks partitions whose leader did not answer;
    `problems` says which parts of the poll failed."""

    taken_ms: int  # wall clock, epoch ms
    cluster_id: str
    metadata_version: int
    quorum: QuorumView
    brokers: tuple[BrokerRegistration, ...]
    topics: tuple[TopicRecord, ...]
    offsets: Mapping[tuple[str, int], PartitionOffsets] = field(default_factory=dict)
    metrics: tuple[NodeMetrics, ...] = ()
    problems: tuple[str, ...] = ()

    def topic(self, name: str) -> TopicRecord | None:
        return next((t for t in self.topics if t.name == name), None)

    def broker(self, broker_id: int) -> BrokerRegistration | None:
        return next((b for b in self.brokers if b.broker_id == broker_id), None)

    def broker_metrics(self) -> dict[int, NodeMetrics]:
        return {
            m.broker_id: m
            for m in self.metrics
            if m.kind == KIND_BROKER and m.broker_id is not None and not m.error
        }

    def controller_metrics(self) -> list[NodeMetrics]:
        return [m for m in self.metrics if m.kind == KIND_CONTROLLER]


@dataclass(frozen=True, slots=True)
class Rates:
    """Messages and bytes per second. From the brokers' counters when metrics are
    scraped; else messages in from the sum of high-watermark increases, and no out rate
    (nothing but a broker knows what consumers read)."""

    source: str
    messages_in_per_s: float | None = None
    messages_out_per_s: float | None = None
    bytes_in_per_s: float | None = None
    bytes_out_per_s: float | None = None
    # Messages in per topic, from high-watermark deltas (always).
    topic_in_per_s: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What pages render. `sample` is the last successful poll (None before the first);
    `error` says why the latest poll failed ("" when it worked)."""

    version: int
    sample: Sample | None
    rates: Rates
    error: str = ""


# ---------------------------------------------------------------- overview


@dataclass(frozen=True, slots=True)
class Badge:
    key: str  # a stable id, e.g. "under-replicated" (the tests and the CSS use it)
    label: str
    value: str
    level: str  # ok | warn | bad
    href: str = ""


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    partitions: int
    under_replicated: int
    under_min_isr: int
    offline: int


def is_internal(topic_name: str) -> bool:
    return topic_name.startswith(INTERNAL_TOPIC_PREFIX)


def _under_replicated(p: PartitionRecord) -> bool:
    return len(p.isr) < len(p.ar)


def _under_min_isr(topic: TopicRecord, p: PartitionRecord) -> bool:
    return len(p.isr) < topic.config.min_insync_replicas


def _offline(p: PartitionRecord) -> bool:
    return p.leader < 0


def partition_health(topics: tuple[TopicRecord, ...]) -> PartitionHealth:
    partitions = under_replicated = under_min = offline = 0
    for topic in topics:
        for p in topic.partitions:
            partitions += 1
            under_replicated += _under_replicated(p)
            under_min += _under_min_isr(topic, p)
            offline += _offline(p)
    return PartitionHealth(partitions, under_replicated, under_min, offline)


def health_badges(sample: Sample) -> list[Badge]:
    """The overview's badges, in a fixed order."""
    health = partition_health(sample.topics)
    fenced = sum(1 for b in sample.brokers if b.fenced)
    leader = sample.quorum.leader_id

    def count(key: str, label: str, n: int, level_if_any: str, href: str) -> Badge:
        return Badge(key, label, str(n), level_if_any if n else LEVEL_OK, href)

    return [
        Badge(
            "controller-leader",
            "Controller leader",
            f"controller {leader}" if leader >= 0 else "none",
            LEVEL_OK if leader >= 0 else LEVEL_BAD,
            "/controllers",
        ),
        count("offline", "Offline partitions", health.offline, LEVEL_BAD, "/topics"),
        count("under-min-isr", "Under min ISR", health.under_min_isr, LEVEL_BAD, "/topics"),
        count(
            "under-replicated", "Under-replicated", health.under_replicated, LEVEL_WARN, "/topics"
        ),
        count("fenced-brokers", "Fenced brokers", fenced, LEVEL_WARN, "/brokers"),
    ]


# ---------------------------------------------------------------- brokers


def broker_state(b: BrokerRegistration) -> str:
    if b.shutting_down:
        return "shutting down"
    return "fenced" if b.fenced else "unfenced"


@dataclass(frozen=True, slots=True)
class BrokerRow:
    broker_id: int
    address: str
    rack: str
    state: str  # unfenced | fenced | shutting down
    partitions: int  # replicas hosted (assigned)
    leaders: int
    # (count - mean) / mean over the registered brokers, in percent; None: no partitions.
    partition_skew_pct: float | None
    leader_skew_pct: float | None
    # From the broker's metrics (its partition logs' bytes, its disk's free bytes); None:
    # no metrics for this broker.
    log_size_bytes: float | None
    disk_free_bytes: float | None


def _skew_pct(count: int, total: int, brokers: int) -> float | None:
    if brokers == 0 or total == 0:
        return None
    mean = total / brokers
    return (count - mean) * 100 / mean


def broker_rows(sample: Sample) -> list[BrokerRow]:
    replicas: dict[int, int] = {}
    leaders: dict[int, int] = {}
    for topic in sample.topics:
        for p in topic.partitions:
            for r in p.ar:
                replicas[r] = replicas.get(r, 0) + 1
            if p.leader >= 0:
                leaders[p.leader] = leaders.get(p.leader, 0) + 1
    n = len(sample.brokers)
    total_replicas = sum(replicas.get(b.broker_id, 0) for b in sample.brokers)
    total_leaders = sum(leaders.get(b.broker_id, 0) for b in sample.brokers)
    metrics = sample.broker_metrics()
    rows = []
    for b in sorted(sample.brokers, key=lambda b: b.broker_id):
        m = metrics.get(b.broker_id)
        rows.append(
            BrokerRow(
                broker_id=b.broker_id,
                address=f"{b.host}:{b.port}",
                rack=b.rack,
                state=broker_state(b),
                partitions=replicas.get(b.broker_id, 0),
                leaders=leaders.get(b.broker_id, 0),
                partition_skew_pct=_skew_pct(replicas.get(b.broker_id, 0), total_replicas, n),
                leader_skew_pct=_skew_pct(leaders.get(b.broker_id, 0), total_leaders, n),
                log_size_bytes=m.log_size_bytes if m is not None else None,
                disk_free_bytes=m.disk_free_bytes if m is not None else None,
            )
        )
    return rows


# ---------------------------------------------------------------- topics and partitions


@dataclass(frozen=True, slots=True)
class TopicRow:
    name: str
    internal: bool
    partitions: int
    replication_factor: int
    under_replicated: int
    under_min_isr: int
    offline: int
    messages: int | None  # sum of (high watermark - log start); None if any is unknown
    in_per_s: float | None


def topic_rows(sample: Sample, rates: Rates) -> list[TopicRow]:
    rows = []
    for topic in sorted(sample.topics, key=lambda t: (is_internal(t.name), t.name)):
        health = partition_health((topic,))
        spans = [sample.offsets.get((topic.name, i)) for i in range(len(topic.partitions))]
        messages = (
            sum(o.high_watermark - o.log_start_offset for o in spans if o is not None)
            if all(o is not None for o in spans)
            else None
        )
        rows.append(
            TopicRow(
                name=topic.name,
                internal=is_internal(topic.name),
                partitions=len(topic.partitions),
                replication_factor=topic.replication_factor,
                under_replicated=health.under_replicated,
                under_min_isr=health.under_min_isr,
                offline=health.offline,
                messages=messages,
                in_per_s=rates.topic_in_per_s.get(topic.name),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class ReplicaView:
    broker_id: int
    in_sync: bool
    leader: bool
    fenced: bool  # its broker is fenced (or unknown to the cluster)


@dataclass(frozen=True, slots=True)
class PartitionRow:
    index: int
    leader: int  # -1: offline
    leader_epoch: int
    partition_epoch: int
    replicas: tuple[ReplicaView, ...]  # AR, in AR order
    isr: tuple[int, ...]
    osr: tuple[int, ...]
    log_start_offset: int | None  # None: its leader did not answer this poll
    high_watermark: int | None
    under_min_isr: bool

    @property
    def offline(self) -> bool:
        return self.leader < 0

    @property
    def messages(self) -> int | None:
        if self.log_start_offset is None or self.high_watermark is None:
            return None
        return self.high_watermark - self.log_start_offset


def partition_rows(sample: Sample, topic: TopicRecord) -> list[PartitionRow]:
    fenced = {b.broker_id for b in sample.brokers if b.fenced}
    known = {b.broker_id for b in sample.brokers}
    rows = []
    for index, p in enumerate(topic.partitions):
        offsets = sample.offsets.get((topic.name, index))
        rows.append(
            PartitionRow(
                index=index,
                leader=p.leader,
                leader_epoch=p.leader_epoch,
                partition_epoch=p.partition_epoch,
                replicas=tuple(
                    ReplicaView(r, r in p.isr, r == p.leader, r in fenced or r not in known)
                    for r in p.ar
                ),
                isr=p.isr,
                osr=p.osr,
                log_start_offset=offsets.log_start_offset if offsets is not None else None,
                high_watermark=offsets.high_watermark if offsets is not None else None,
                under_min_isr=_under_min_isr(topic, p),
            )
        )
    return rows


# ---------------------------------------------------------------- controllers


@dataclass(frozen=True, slots=True)
class VoterRow:
    node_id: int
    role: str  # leader | follower | unreachable
    raft_address: str
    endpoint: str
    term: int  # the quorum's term, as the answering controller knows it
    # The leader's commit index for the leader; for a follower, what the leader knows it
    # holds (match index). None when the answer does not say (a follower answered).
    log_index: int | None
    behind: int | None  # commit index - match index, for followers
    last_contact_ms: int | None  # None: the leader itself, or unknown


def voter_rows(sample: Sample) -> list[VoterRow]:
    quorum = sample.quorum
    rows = []
    for v in sorted(quorum.voters, key=lambda v: v.node_id):
        leading = v.node_id == quorum.leader_id
        known = v.match_index >= 0
        log_index = quorum.commit_index if leading else (v.match_index if known else None)
        rows.append(
            VoterRow(
                node_id=v.node_id,
                role=v.state,
                raft_address=v.raft_address,
                endpoint=v.endpoint,
                term=quorum.term,
                log_index=log_index,
                behind=max(0, quorum.commit_index - v.match_index)
                if known and not leading
                else None,
                last_contact_ms=v.last_contact_ms
                if v.last_contact_ms >= 0 and not leading
                else None,
            )
        )
    return rows


def leader_view_known(sample: Sample) -> bool:
    """Did the Raft leader answer (so that match indexes and contacts are its view)?"""
    return any(v.match_index >= 0 or v.last_contact_ms >= 0 for v in sample.quorum.voters)
