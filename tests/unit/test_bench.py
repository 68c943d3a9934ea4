"""The bench's pure helpers: percentiles, payloads, batch sizing and record counting.

The bench itself talks to a live cluster and prints figures; it is never timed in tests."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from raftmq.cli.bench import (
    BATCH_BYTES_MAX,
    KIND_MEASURED,
    batch_sizes,
    consume_ends,
    count_new_records,
    latency_summary_ms,
    limit_hint,
    make_values,
    percentile,
    quantile_key,
    read_stamp,
    records_per_batch,
    stamped_value,
)
from raftmq.message import Message
from raftmq.record_batch import encode_batch, stamp_batch


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
    assert sum(v <= p for v in ordered) >= math.ceil(q / 100 * len(ordered))


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


def test_make_values_sizes_determinism_and_variety() -> None:
    values = make_values(100, 37, seed=3)
    assert len(values) == 100
    assert all(len(v) == 37 for v in values)
    assert values == make_values(100, 37, seed=3)
    assert values != make_values(100, 37, seed=4)
    assert len(set(values)) > 90  # windows of a random buffer: practically all distinct
    assert make_values(3, 0) == [b"", b"", b""]
    assert make_values(0, 10) == []


def test_records_per_batch_fits_the_topic_limit() -> None:
    assert records_per_batch(1_000, 100) == 1_000
    big = records_per_batch(1_000, 16 << 10)
    assert 1 <= big < 1_000
    batch = encode_batch([Message(v, timestamp_ms=0) for v in make_values(big, 16 << 10)])
    assert len(batch) <= BATCH_BYTES_MAX
    assert records_per_batch(1_000, 4 << 20) == 1  # too big alone: the broker refuses it
    assert records_per_batch(5, 0) == 5


@given(st.integers(0, 10_000), st.integers(1, 1_000))
def test_batch_sizes_cover_every_message(messages: int, per_batch: int) -> None:
    sizes = batch_sizes(messages, per_batch)
    assert sum(sizes) == messages
    assert all(1 <= s <= per_batch for s in sizes)
    assert all(s == per_batch for s in sizes[:-1])


def _log(*counts: int, value_bytes: int = 10) -> bytes:
    """Batches of `counts` records at contiguous offsets, as a fetch returns them."""
    out = []
    offset = 0
    for n in counts:
        batch = encode_batch(
            [Message(v, b"k", timestamp_ms=1) for v in make_values(n, value_bytes)]
        )
        out.append(stamp_batch(batch, base_offset=offset, partition_leader_epoch=0))
        offset += n
    return b"".join(out)


def test_count_new_records_skips_what_was_already_read() -> None:
    data = _log(3, 4, 5)
    assert count_new_records(data, 0) == (12, 120, 12)
    # A fetch at offset 5 returns the batch holding it (offsets 3..6) from its start.
    assert count_new_records(data, 5) == (7, 70, 12)
    assert count_new_records(data, 12) == (0, 0, 12)
    assert count_new_records(b"", 7) == (0, 0, 7)


def test_count_new_records_stops_at_the_end_offset() -> None:
    data = _log(3, 4, 5)
    assert count_new_records(data, 0, 5) == (5, 50, 7)
    assert count_new_records(data, 5, 6) == (1, 10, 7)
    assert count_new_records(data, 0, 3) == (3, 30, 3)


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


def test_limit_hint_names_the_saturated_side() -> None:
    assert limit_hint(0.97, 60.0, 2).startswith("client CPU")
    assert limit_hint(0.4, 98.0, 2).startswith("machine CPU")
    assert limit_hint(0.2, 30.0, 2).startswith("no CPU saturated")
    assert limit_hint(0.2, None, 2).startswith("no CPU saturated")
