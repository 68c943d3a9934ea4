"""What the console's pages derive from one poll (console/cluster_view.py), the rates
(console/rates.py), the metrics it reads (console/prometheus.py) and the poller that
shares one snapshot between pages (console/cluster_watch.py)."""

from __future__ import annotations

import asyncio

import pytest
from raftmq.console.cluster_view import (
    LEVEL_BAD,
    LEVEL_OK,
    LEVEL_WARN,
    PartitionOffsets,
    QuorumView,
    Rates,
    Sample,
    VoterView,
    broker_rows,
    health_badges,
    leader_view_known,
    partition_health,
    partition_rows,
    topic_rows,
    voter_rows,
)
from raftmq.console.cluster_watch import ClusterWatch
from raftmq.console.prometheus import KIND_BROKER, KIND_CONTROLLER, parse_metrics
from raftmq.console.rates import RateWindow
from raftmq.metadata import BrokerRegistration, PartitionRecord, TopicRecord
from raftmq.topic_config import TopicConfig


def broker(
    broker_id: int, *, fenced: bool = False, shutting_down: bool = False
) -> BrokerRegistration:
    return BrokerRegistration(
        broker_id, "127.0.0.1", 9091 + broker_id, "", "x", 1, fenced, shutting_down
    )


def part(ar: tuple[int, ...], isr: tuple[int, ...], leader: int) -> PartitionRecord:
    return PartitionRecord(ar, isr, leader, 3, 5)


def topic(name: str, *partitions: PartitionRecord, min_isr: int = 1) -> TopicRecord:
    return TopicRecord(name, b"\x01" * 16, TopicConfig(min_insync_replicas=min_isr), partitions)


QUORUM = QuorumView(
    leader_id=2,
    term=7,
    commit_index=120,
    last_applied=120,
    voters=(
        VoterView(1, "follower", "127.0.0.1:9292", "127.0.0.1:9192", 118, 40),
        VoterView(2, "leader", "127.0.0.1:9293", "127.0.0.1:9193", -1, -1),
        VoterView(3, "unreachable", "127.0.0.1:9294", "", 90, 6000),
    ),
)


def sample(**changes: object) -> Sample:
    fields: dict[str, object] = {
        "taken_ms": 1_700_000_000_000,
        "cluster_id": "c1",
        "metadata_version": 42,
        "quorum": QUORUM,
        "brokers": (broker(1), broker(2, fenced=True), broker(3)),
        "topics": (
            topic(
                "orders",
                part((1, 2, 3), (1, 3), 1),  # broker 2 out of sync
                part((2, 3, 1), (3, 1), 3),
                part((3, 1, 2), (3, 1, 2), 3),
                min_isr=2,
            ),
            topic("logs", part((2,), (2,), -1)),  # offline: its only replica is fenced
            topic("__consumer_offsets", part((1, 2, 3), (1, 2, 3), 1)),
        ),
        "offsets": {
            ("orders", 0): PartitionOffsets(0, 10),
            ("orders", 1): PartitionOffsets(5, 8),
            ("orders", 2): PartitionOffsets(0, 0),
            ("__consumer_offsets", 0): PartitionOffsets(0, 3),
        },
    }
    fields.update(changes)
    return Sample(**fields)  # type: ignore[arg-type]


def test_partition_health_counts() -> None:
    health = partition_health(sample().topics)
    assert (health.partitions, health.under_replicated, health.under_min_isr, health.offline) == (
        5,
        2,
        0,
        1,
    )


def test_badges_in_a_fixed_order_with_levels() -> None:
    badges = {b.key: b for b in health_badges(sample())}
    assert list(badges) == [
        "controller-leader",
        "offline",
        "under-min-isr",
        "under-replicated",
        "fenced-brokers",
    ]
    assert badges["controller-leader"].value == "controller 2"
    assert badges["controller-leader"].level == LEVEL_OK
    assert (badges["offline"].value, badges["offline"].level) == ("1", LEVEL_BAD)
    assert badges["under-min-isr"].level == LEVEL_OK
    assert (badges["under-replicated"].value, badges["under-replicated"].level) == ("2", LEVEL_WARN)
    assert badges["fenced-brokers"].value == "1"


def test_no_controller_leader_is_bad() -> None:
    quorum = QuorumView(-1, 7, 0, 0, QUORUM.voters)
    [leader, *_] = health_badges(sample(quorum=quorum))
    assert (leader.value, leader.level) == ("none", LEVEL_BAD)


def test_broker_rows_state_counts_and_skew() -> None:
    s = sample(brokers=(broker(1), broker(2, fenced=True), broker(3, shutting_down=True)))
    rows = {r.broker_id: r for r in broker_rows(s)}
    assert [rows[i].state for i in (1, 2, 3)] == ["unfenced", "fenced", "shutting down"]
    # Replicas: 1 -> 4, 2 -> 5, 3 -> 4 (13 over 3 brokers); leaders: 1 -> 2, 3 -> 2.
    assert [rows[i].partitions for i in (1, 2, 3)] == [4, 5, 4]
    assert [rows[i].leaders for i in (1, 2, 3)] == [2, 0, 2]
    assert rows[2].leader_skew_pct == pytest.approx(-100)
    assert rows[1].leader_skew_pct == pytest.approx(50)
    assert rows[1].log_size_bytes is None  # no metrics scraped


def test_broker_rows_take_disk_figures_from_metrics() -> None:
    text = 'raftmq_broker_info{broker_id="3"} 1.0\nraftmq_broker_log_size_bytes 2048.0\n'
    s = sample(metrics=(parse_metrics("http://b3/metrics", text),))
    rows = {r.broker_id: r for r in broker_rows(s)}
    assert rows[3].log_size_bytes == 2048 and rows[1].log_size_bytes is None


def test_partition_rows_show_osr_and_fenced_replicas() -> None:
    s = sample()
    orders = s.topic("orders")
    assert orders is not None
    first, second, third = partition_rows(s, orders)
    assert first.osr == (2,) and first.isr == (1, 3)
    assert [(r.broker_id, r.in_sync, r.leader, r.fenced) for r in first.replicas] == [
        (1, True, True, False),
        (2, False, False, True),
        (3, True, False, False),
    ]
    assert first.messages == 10 and second.messages == 3 and third.osr == ()
    assert not first.under_min_isr and not first.offline
    logs = s.topic("logs")
    assert logs is not None
    [offline] = partition_rows(s, logs)
    assert offline.offline and offline.messages is None


def test_topic_rows_internal_last_and_unknown_counts() -> None:
    rows = topic_rows(sample(), Rates("x", topic_in_per_s={"orders": 2.5}))
    assert [r.name for r in rows] == ["logs", "orders", "__consumer_offsets"]
    logs, orders, offsets = rows
    assert orders.messages == 13 and orders.in_per_s == 2.5 and orders.under_replicated == 2
    assert logs.messages is None  # its partition's offsets are unknown (offline)
    assert offsets.internal


def test_voter_rows_from_the_leaders_view() -> None:
    rows = voter_rows(sample())
    assert [(r.node_id, r.role) for r in rows] == [
        (1, "follower"),
        (2, "leader"),
        (3, "unreachable"),
    ]
    follower, leader, gone = rows
    assert (leader.log_index, leader.behind, leader.last_contact_ms) == (120, None, None)
    assert (follower.log_index, follower.behind, follower.last_contact_ms) == (118, 2, 40)
    assert gone.behind == 30 and gone.endpoint == ""
    assert leader_view_known(sample())


def test_voter_rows_when_a_follower_answered() -> None:
    voters = tuple(
        VoterView(v.node_id, v.state, v.raft_address, v.endpoint, -1, -1) for v in QUORUM.voters
    )
    s = sample(quorum=QuorumView(2, 7, 120, 120, voters))
    assert not leader_view_known(s)
    assert all(r.behind is None and r.last_contact_ms is None for r in voter_rows(s))


# ---------------------------------------------------------------- rates


def test_rate_window_counters_restart_and_new_sources() -> None:
    window = RateWindow(counter_resets=True, window_ms=10_000)
    assert window.per_second() is None
    window.add(0, {"a": 100})
    window.add(500, {"a": 150})
    assert window.per_second() is None  # the samples span less than RATE_SPAN_MS_MIN
    window.add(1000, {"a": 200, "b": 1_000_000})  # b is new: it adds nothing yet
    window.add(2000, {"a": 10, "b": 1_000_100})  # a restarted: +10
    # After the first step: +50, +50, +110 over 1.5 s.
    assert window.per_second() == pytest.approx((50 + 110) * 1000 / 1500)


def test_rate_window_high_watermarks_that_go_down_add_nothing() -> None:
    window = RateWindow(counter_resets=False, window_ms=10_000)
    window.add(0, {"p": 100})
    window.add(1000, {"p": 90})
    window.add(2000, {"p": 100})
    assert window.per_second() == 10.0


def test_rate_window_forgets_old_steps_and_ignores_a_stopped_clock() -> None:
    window = RateWindow(counter_resets=True, window_ms=3_000)
    for t in range(0, 10_001, 1000):
        window.add(t, {"a": t})  # 1 per ms until 10 s
    window.add(10_000, {"a": 999_999})  # same clock: ignored
    assert window.per_second() == 1000.0


# ---------------------------------------------------------------- metrics


BROKER_TEXT = """
# TYPE raftmq_broker_info gauge
raftmq_broker_info{broker_id="2"} 1.0
raftmq_broker_log_size_bytes 4096.0
raftmq_broker_disk_free_bytes 1e9
# TYPE raftmq_broker_topic_messages_in counter
raftmq_broker_topic_messages_in_total{topic="a"} 10.0
raftmq_broker_topic_messages_in_total{topic="b"} 5.0
raftmq_broker_topic_messages_in_created{topic="a"} 1.7e9
"""


def test_parse_broker_and_controller_metrics() -> None:
    m = parse_metrics("u", BROKER_TEXT)
    assert (m.kind, m.broker_id, m.log_size_bytes, m.disk_free_bytes) == (KIND_BROKER, 2, 4096, 1e9)
    assert m.messages_in_total == 15 and m.messages_out_total == 0
    c = parse_metrics(
        "u",
        "raftmq_controller_is_leader 1.0\nraftmq_controller_raft_term 4.0\n"
        "raftmq_controller_raft_commit_index 77.0\n",
    )
    assert (c.kind, c.controller_is_leader, c.controller_term, c.controller_commit_index) == (
        KIND_CONTROLLER,
        True,
        4,
        77,
    )


def test_metrics_of_something_else_or_garbage_are_an_error_for_that_url() -> None:
    assert parse_metrics("u", "node_load1 0.5\n").error
    assert parse_metrics("u", "this is { not prometheus").error


# ---------------------------------------------------------------- the shared poller


class FakeCluster:
    def __init__(self) -> None:
        self.polls = 0
        self.fail = False

    async def poll(self) -> Sample:
        self.polls += 1
        if self.fail:
            raise ConnectionError("controllers unreachable")
        return sample(taken_ms=self.polls)


def test_watch_polls_on_demand_keeps_the_last_good_sample_and_sleeps_when_idle() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        clock = [0.0]
        watch = ClusterWatch(
            cluster.poll, interval_ms=1000, idle_after_ms=5000, clock=lambda: clock[0]
        )
        watch.start()
        assert cluster.polls == 0  # nobody looked yet: no poll
        first = await watch.current()  # the first look wakes the poll loop
        assert first.sample is not None and first.version == 1 and cluster.polls == 1
        assert await watch.current() is first  # fresh: no second poll
        cluster.fail = True
        await watch.poll_once()
        failed = watch.snapshot
        assert failed.error == "controllers unreachable"
        assert failed.sample is first.sample and failed.version == 2
        cluster.fail = False
        await watch.poll_once()
        assert watch.snapshot.error == "" and watch.snapshot.version == 3
        # Idle: a minute after the last look, the poll loop is asleep.
        clock[0] = 60.0
        assert not watch._active()
        with watch.watching():
            assert watch._active()
        await watch.close()

    asyncio.run(scenario())


def test_wait_newer_wakes_on_the_next_snapshot_or_times_out() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        watch = ClusterWatch(cluster.poll)
        waiter = asyncio.ensure_future(watch.wait_newer(0, 5.0))
        await asyncio.sleep(0)
        await watch.poll_once()
        assert (await waiter).version == 1
        assert (await watch.wait_newer(1, 0.01)).version == 1

    asyncio.run(scenario())
