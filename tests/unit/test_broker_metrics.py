"""BrokerMetrics' per-request recording: what a scrape reads after requests were done."""

from __future__ import annotations

from pathlib import Path

import pytest
from raftmq.broker import broker_metrics
from raftmq.broker.broker_metrics import BrokerMetrics


def _sample(metrics: BrokerMetrics, name: str, api: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"api": api})


def test_requests_are_counted_and_timed_per_api(tmp_path: Path) -> None:
    metrics = BrokerMetrics(broker_id=1, data_dir=tmp_path, request_limit=8)
    for _ in range(3):
        metrics.request_started()
    assert metrics.registry.get_sample_value("raftmq_broker_requests_in_flight") == 3
    metrics.request_done("Fetch", 0.25)
    metrics.request_done("Fetch", 0.5)
    metrics.request_done("kafka.Produce", 0.001)
    assert metrics.registry.get_sample_value("raftmq_broker_requests_in_flight") == 0
    assert _sample(metrics, "raftmq_broker_requests_total", "Fetch") == 2
    assert _sample(metrics, "raftmq_broker_request_duration_seconds_count", "Fetch") == 2
    assert _sample(metrics, "raftmq_broker_request_duration_seconds_sum", "Fetch") == pytest.approx(
        0.75
    )
    assert _sample(metrics, "raftmq_broker_requests_total", "kafka.Produce") == 1


def test_past_the_cache_cap_requests_are_still_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_metrics, "API_CHILDREN_CACHED_MAX", 2)
    metrics = BrokerMetrics(broker_id=1, data_dir=tmp_path, request_limit=8)
    for api in ("a", "b", "c", "c", "d"):
        metrics.request_started()
        metrics.request_done(api, 0.01)
    assert [_sample(metrics, "raftmq_broker_requests_total", api) for api in "abcd"] == [
        1,
        1,
        2,
        1,
    ]


def test_bytes_and_records_per_topic_in_and_out(tmp_path: Path) -> None:
    metrics = BrokerMetrics(broker_id=1, data_dir=tmp_path, request_limit=8)
    metrics.produced("orders", 100, 3)
    metrics.produced("orders", 50, 1)
    metrics.fetched("orders", 150, 4)

    def value(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"topic": "orders"})

    assert value("raftmq_broker_topic_bytes_in_total") == 150
    assert value("raftmq_broker_topic_messages_in_total") == 4
    assert value("raftmq_broker_topic_bytes_out_total") == 150
    assert value("raftmq_broker_topic_messages_out_total") == 4
