"""freeze_startup_heap: what was alive is frozen, garbage cycles are collected first."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import structlog.testing
from prometheus_client import CollectorRegistry, Histogram
from raftmq.heap import (
    GC_PAUSE_BUCKETS_S,
    freeze_startup_heap,
    observe_gc_pauses,
    record_gc_pauses,
)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session keeps the collector as it was


def test_it_collects_garbage_cycles_then_freezes_what_is_alive(unfrozen: None) -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    dead = weakref.ref(a)
    del a, b  # a cycle: only the collector can free it
    alive = [_Node() for _ in range(100)]

    frozen = freeze_startup_heap("test")

    assert dead() is None, "the garbage cycle must be collected before the freeze"
    assert frozen == gc.get_freeze_count() >= len(alive)
    # A later full collection does not walk the frozen objects.
    assert all(not any(o is x for x in gc.get_objects(generation=2)) for o in alive[:3])


def test_gc_pauses_are_timed_and_moved_into_the_histogram() -> None:
    registry = CollectorRegistry()
    histogram = Histogram(
        "test_gc_pause_seconds",
        "pauses",
        ["generation"],
        buckets=GC_PAUSE_BUCKETS_S,
        registry=registry,
    )
    record_gc_pauses()
    record_gc_pauses()  # idempotent: one callback
    observe_gc_pauses(histogram)  # what earlier tests' collections left
    gc.collect()
    gc.collect(0)

    assert observe_gc_pauses(histogram) >= 2
    count = registry.get_sample_value
    assert (count("test_gc_pause_seconds_count", {"generation": "2"}) or 0) >= 1
    assert count("test_gc_pause_seconds_count", {"generation": "0"}) >= 1
    assert (count("test_gc_pause_seconds_sum", {"generation": "2"}) or 0) > 0


def test_a_command_line_process_freezes_without_logging(unfrozen: None) -> None:
    alive = [_Node() for _ in range(10)]
    with structlog.testing.capture_logs() as logs:
        frozen = freeze_startup_heap("cli", log=False)
        assert frozen == gc.get_freeze_count() >= len(alive)
    assert logs == [], "the command line's stderr is the user's"
    with structlog.testing.capture_logs() as logs:
        freeze_startup_heap("broker")
    assert [e["event"] for e in logs] == ["heap.frozen"]
