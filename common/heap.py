"""The garbage collector in a long-running node: the startup heap is frozen.

CPython's cyclic collector walks every tracked object of a generation when it collects
it. A node's heap is mostly what importing grpc, protobuf, structlog, rocksdict and our
own modules made: about 58,000 objects (module dicts, functions, descriptors), which a
full (generation 2) collection took 41 ms to walk on the project's 2-core VM, while
40,000 small objects made at run time took 7 ms more. Every full collection pays for the
startup heap again, and the event loop, with every write in flight, waits meanwhile.

`freeze_startup_heap` collects once and moves every object alive at that point into the
permanent generation (`gc.freeze()`, which CPython added for servers such as Instagram's
to call once their startup is done): later collections skip those objects, which are
module state that lives as long as the process.
They are still freed by reference counting when dropped; only a reference cycle among
them would outlive its last outside reference, which is why this runs once, after startup,
and never again.

The command line's long-running client commands (`produce`, `consume`, `bench`, `chaos`)
do the same once their modules are imported (`log=False`: their stderr is the user's): a
full collection there walked ~36,000 objects of imports (~23 ms) while a Writer streamed,
ten times per million messages; 5-7 ms after the freeze.

`record_gc_pauses` times every collection from then on (`gc.callbacks`), and each node's
metrics refresh moves the pauses into its `raftmq_<node>_gc_pause_seconds` histogram
(`observe_gc_pauses`): a tail latency that lines up with long pauses is the collector's.
"""

from __future__ import annotations

import collections
import gc
import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Histogram

__all__ = [
    "GC_PAUSE_BUCKETS_S",
    "freeze_startup_heap",
    "gc_pause_histogram",
    "observe_gc_pauses",
    "record_gc_pauses",
]

_log = structlog.get_logger("raftmq.heap")

GC_PAUSE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Pauses timed and not yet observed (a refresh takes them every 0.5-1 s; a collection
# runs at most a few hundred times a second): past this, the oldest are dropped.
GC_PAUSES_PENDING_MAX = 10_000


class _GcPauses:
    """The collector's callback. It only appends to a bounded deque (one C call, no
    lock): a Prometheus metric takes a lock, and a collection can start in any thread at
    any allocation, also in one that holds that lock."""

    def __init__(self) -> None:
        self.installed = False
        self._started_s = 0.0
        # (generation, seconds), oldest first.
        self.pending: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=GC_PAUSES_PENDING_MAX
        )

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_s = time.perf_counter()
        else:
            self.pending.append((info["generation"], time.perf_counter() - self._started_s))


_pauses = _GcPauses()


def record_gc_pauses() -> None:
    """Time every collection of this process from now on (idempotent)."""
    if not _pauses.installed:
        _pauses.installed = True
        gc.callbacks.append(_pauses)


def gc_pause_histogram(node: str, registry: CollectorRegistry) -> Histogram:
    """The node's `raftmq_<node>_gc_pause_seconds` histogram, by generation."""
    return Histogram(
        f"raftmq_{node}_gc_pause_seconds",
        "Pauses of Python's cyclic garbage collector, by generation (0, 1, 2)",
        ["generation"],
        buckets=GC_PAUSE_BUCKETS_S,
        registry=registry,
    )


def observe_gc_pauses(histogram: Histogram) -> int:
    """Move the pauses timed since the last call into `histogram` (label `generation`);
    returns how many. Bound: at most GC_PAUSES_PENDING_MAX."""
    moved = 0
    # Bound: the deque's length when called, plus what collections add meanwhile (a
    # handful), up to GC_PAUSES_PENDING_MAX.
    while _pauses.pending and moved < GC_PAUSES_PENDING_MAX:
        generation, seconds = _pauses.pending.popleft()
        histogram.labels(str(generation)).observe(seconds)
        moved += 1
    return moved


def freeze_startup_heap(node: str, *, log: bool = True) -> int:
    """Collect, then freeze what is left (see the module doc); returns how many objects
    were frozen, and logs `heap.frozen` with that count and what the collection took
    (`log=False`: a command line process, whose stderr is the user's)."""
    started_s = time.perf_counter()
    collected = gc.collect()
    collect_ms = (time.perf_counter() - started_s) * 1000
    gc.freeze()
    frozen = gc.get_freeze_count()
    if not log:
        return frozen
    _log.info(
        "heap.frozen",
        node=node,
        objects=frozen,
        collected=collected,
        collect_ms=round(collect_ms, 1),
    )
    return frozen
