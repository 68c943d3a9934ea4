"""The bench's pure helpers: percentiles, payloads, chunking, the consume split, latency
stamps, the "limited by" line and the progress bar.

The bench itself talks to a live cluster and prints figures; it is never timed in tests
(tests/cluster/test_bench.py runs every scenario briefly and checks its output)."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from raftmq.cli.bench.common import (
    chunk_sizes,
    distinct_values,
    footer_lines,
    headline_latency_ms,
    latency_summary_ms,
    limit_hint,
    make_values,
    percentile,
    quantile_key,
    steal_note,
)
from raftmq.cli.bench.consume import consume_ends
from raftmq.cli.bench.latency import KIND_MEASURED, read_stamp, stamped_value
from raftmq.cli.bench.progress import REDRAW_INTERVAL_S, ProgressBar, render_bar


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0) == 1
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile([7.0], 50) == 7.0
    # Nearest rank on an even count: the lower middle, a value that was observed.
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200), st.floats(0, 100))
def test_percentile_is_an_observed_value_and_monotone(values: list[float], q: float) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert p in ordered
    assert ordered[0] <= p <= ordered[-1]
    assert percentile(ordered, min(100.0, q + 1)) >= p
    # At least q% of the samples are <= p (the definition of the nearest rank).
    assert sum(v <= p for v in ordered) >= math.ceil(Fraction(str(q)) * len(ordered) / 100)


def test_percentile_of_nothing_is_a_programmer_error() -> None:
    with pytest.raises(AssertionError):
        percentile([], 50)


def test_quantile_keys() -> None:
    assert quantile_key(50) == "p50_ms"
    assert quantile_key(99.0) == "p99_ms"
    assert quantile_key(99.9) == "p999_ms"


def test_latency_summary_in_ms() -> None:
    summary = latency_summary_ms([0.004, 0.001, 0.002, 0.003], (50.0, 99.9))
    assert summary == {
        "count": 4,
        "mean_ms": 2.5,
        "p50_ms": 2.0,
        "p999_ms": 4.0,
        "max_ms": 4.0,
    }
    assert latency_summary_ms([]) == {"count": 0}


def test_the_json_latency_is_p50_p99_p999_in_ms() -> None:
    samples_s = [i / 1000 for i in range(1, 1001)]
    assert headline_latency_ms(samples_s) == {"p50": 500.0, "p99": 990.0, "p999": 999.0}
    assert headline_latency_ms([]) is None


def test_distinct_values_are_bounded_in_count_and_bytes() -> None:
    assert distinct_values(200_000, 100) == 10_000
    assert distinct_values(50, 100) == 50
    assert distinct_values(200_000, 16 << 10) == 1_024
    assert distinct_values(10, 64 << 20) == 1


def test_make_values_sizes_determinism_and_variety() -> None:
    values = make_values(100, 37, seed=3)
    assert len(values) == 100
    assert all(len(v) == 37 for v in values)
    assert values == make_values(100, 37, seed=3)
    assert values != make_values(100, 37, seed=4)
    assert len(set(values)) == 100
    assert make_values(3, 0) == [b"", b"", b""]
    assert make_values(0, 10) == []


@given(st.integers(0, 10_000), st.integers(1, 1_000))
def test_chunk_sizes_cover_every_message(messages: int, per_batch: int) -> None:
    sizes = chunk_sizes(messages, per_batch)
    assert sum(sizes) == messages
    assert all(1 <= s <= per_batch for s in sizes)
    assert all(s == per_batch for s in sizes[:-1])


@given(
    st.dictionaries(
        st.integers(0, 20), st.tuples(st.integers(0, 100), st.integers(0, 100)), min_size=1
    ),
    st.integers(0, 500),
)
def test_consume_ends_hold_exactly_the_target(
    ranges: dict[int, tuple[int, int]], target: int
) -> None:
    starts = {p: start for p, (start, _) in ranges.items()}
    ends = {p: start + length for p, (start, length) in ranges.items()}
    result = consume_ends(starts, ends, target)
    assert set(result) == set(starts)
    assert all(starts[p] <= result[p] <= ends[p] for p in starts)
    available = sum(ends[p] - starts[p] for p in starts)
    assert sum(result[p] - starts[p] for p in starts) == min(target, available)
    # Even: a partition is short of another's share only when it has no more data.
    shares = {p: result[p] - starts[p] for p in starts}
    for p in starts:
        if result[p] < ends[p]:
            assert shares[p] >= max(shares.values()) - 1


def test_stamped_values_round_trip() -> None:
    value = stamped_value(123_456_789, KIND_MEASURED, b"x" * 20)
    assert len(value) == 9 + 20
    assert read_stamp(value) == (123_456_789, KIND_MEASURED)
    assert read_stamp(b"short") is None
    assert read_stamp(None) is None


def test_steal_time_is_named_once_it_is_notable() -> None:
    assert steal_note(None) is None and steal_note(4.9) is None
    note = steal_note(21.4)
    assert note is not None and note.startswith("note: the hypervisor took 21% of the CPUs'")
    cpu = {
        "client_cpu_cores": 0.2,
        "machine_cpu_busy_pct": 74.0,
        "machine_cpu_steal_pct": 21.0,
        "cpus": 2,
        "limited_by": "x",
    }
    lines = footer_lines({"cpu": cpu})
    assert "74% busy over 2 cores, 21% of the time stolen by the hypervisor" in lines[0]
    # Whatever the scenario's own verdict, the warning is its own line.
    assert lines[1] == "limited by: x" and lines[2] == steal_note(21.0)
    cpu["machine_cpu_steal_pct"] = 1.0
    assert len(footer_lines({"cpu": cpu})) == 2  # nothing to warn of
    del cpu["machine_cpu_steal_pct"]  # a result saved before steal was measured
    assert footer_lines({"cpu": cpu})[0].endswith("74% busy over 2 cores")


def test_limit_hint_names_the_saturated_side() -> None:
    assert limit_hint(0.97, 60.0, 2).startswith("client CPU")
    assert limit_hint(0.4, 98.0, 2).startswith("machine CPU")
    assert limit_hint(0.2, 30.0, 2).startswith("no CPU saturated")
    assert limit_hint(0.2, None, 2).startswith("no CPU saturated")


def test_the_progress_bar_shows_share_count_rate_and_eta() -> None:
    assert render_bar("produce", 50, 200, "msgs", 2.0) == (
        "produce [########......................]  25% 50/200 msgs  25/s  ETA 6 s"
    )
    assert render_bar("x", 7, 7, "runs", 1.0).endswith("100% 7/7 runs  7/s")
    assert render_bar("x", 0, 0, "msgs", 0.0).startswith("x [" + "#" * 30 + "] 100%")


def test_the_progress_bar_redraws_at_most_every_interval_and_ends_its_line() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = ProgressBar("run", 10, "msgs", enabled=True, stream=out, clock=lambda: now[0])
    bar.advance(1)
    bar.advance(1)  # within the interval: not drawn
    assert out.getvalue().count("\r") == 1
    now[0] += REDRAW_INTERVAL_S
    bar.note("run 1: 300 ms")
    assert "\nrun 1: 300 ms\n" in out.getvalue().replace("\r", "\n")
    bar.advance(8)
    bar.close()
    last = out.getvalue().rsplit("\r", 1)[-1]
    assert "100% 10/10 msgs" in last and last.endswith("\n")


def test_a_disabled_progress_bar_prints_only_its_notes() -> None:
    out = io.StringIO()
    bar = ProgressBar("run", 2, "runs", enabled=False, stream=out)
    bar.advance()
    bar.note("run 1: 300 ms")
    bar.close()
    assert out.getvalue() == "run 1: 300 ms\n"
