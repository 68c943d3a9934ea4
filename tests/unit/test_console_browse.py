"""The message browser's plan and scan (console/browse.py) over an in-memory partition and
a manual clock: where a page starts, which bound stops it, what the next page is."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from raftmq.console.browse import (
    STOP_END,
    STOP_ERROR,
    STOP_NO_RECORD,
    STOP_PAGE_FULL,
    STOP_SCAN_LIMIT,
    STOP_TIME_LIMIT,
    BrowseResult,
    scan,
    start_offset,
)
from raftmq.console.records import VALUE_SHOWN_BYTES_MAX, BrowseQuery, parse_browse_query
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class MemoryPartition:
    """A partition's records at offsets [log_start, log_start + len(values)); a read past
    the end waits its whole timeout (on the manual clock) and raises TimeoutError, as
    AsyncReader does."""

    def __init__(
        self,
        values: list[bytes],
        *,
        log_start: int = 0,
        clock: Clock,
        read_cost_s: float = 0.001,
        fail_at: int | None = None,
    ) -> None:
        self.messages = []
        for i, value in enumerate(values):
            offset = log_start + i
            message = Message(value, f"key-{offset}".encode(), partition=0, timestamp_ms=offset)
            message.offset = offset
            self.messages.append(message)
        self.log_start = log_start
        self.clock = clock
        self.read_cost_s = read_cost_s
        self.fail_at = fail_at
        self.position: int | None = None
        self.reads = 0

    def set_offset(self, offset: int) -> None:
        self.position = offset

    def set_offset_at(self, when: datetime) -> None:
        wanted_ms = int(when.timestamp() * 1000)
        later = [m.offset for m in self.messages if m.timestamp_ms >= wanted_ms]
        self.position = later[0] if later else self.log_start + len(self.messages)

    async def read_message(self, timeout_ms: int | None = None) -> Message:
        assert self.position is not None, "read before a seek"
        assert timeout_ms is not None and timeout_ms > 0
        if self.fail_at is not None and self.position == self.fail_at:
            raise RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "leader moved")
        index = self.position - self.log_start
        if index >= len(self.messages):
            self.clock.now_s += timeout_ms / 1000
            raise TimeoutError(f"no message within {timeout_ms} ms")
        self.clock.now_s += self.read_cost_s
        self.reads += 1
        self.position += 1
        return self.messages[index]


def run_scan(
    partition: MemoryPartition, query: BrowseQuery, *, high_watermark: int | None = None
) -> BrowseResult:
    end = partition.log_start + len(partition.messages)
    return asyncio.run(
        scan(
            partition,
            query,
            log_start_offset=partition.log_start,
            high_watermark=end if high_watermark is None else high_watermark,
            clock=partition.clock,
        )
    )


def q(**params: str) -> BrowseQuery:
    return parse_browse_query(params, partitions=1)


def test_start_offset_plans() -> None:
    assert start_offset(q(), 10, 100) == (80, "")  # the newest page
    assert start_offset(q(), 10, 15) == (10, "")  # fewer than a page
    assert start_offset(q(offset="50"), 10, 100) == (50, "")
    offset, note = start_offset(q(offset="3"), 10, 100)
    assert offset == 10 and "below the log start offset 10" in note
    assert start_offset(q(value="x"), 10, 100) == (10, "")  # a search from the start
    assert start_offset(q(time="2026-01-01T00:00:00Z"), 10, 100) == (None, "")


def test_the_newest_page_ends_at_the_high_watermark() -> None:
    partition = MemoryPartition([b"v%d" % i for i in range(50)], clock=Clock())
    result = run_scan(partition, q(limit="10"))
    assert [r.offset for r in result.records] == list(range(40, 50))
    assert result.stopped == STOP_PAGE_FULL
    assert result.next_offset == 50


def test_a_page_from_an_offset_and_the_next_one() -> None:
    partition = MemoryPartition([b"v%d" % i for i in range(30)], log_start=100, clock=Clock())
    first = run_scan(partition, q(offset="105", limit="10"))
    assert [r.offset for r in first.records] == list(range(105, 115))
    assert first.next_offset == 115
    last = run_scan(partition, q(offset="125", limit="10"))
    assert [r.offset for r in last.records] == list(range(125, 130))
    assert last.stopped == STOP_END


def test_an_offset_below_the_log_start_reads_from_it_and_says_so() -> None:
    partition = MemoryPartition([b"a", b"b"], log_start=7, clock=Clock())
    result = run_scan(partition, q(offset="0"))
    assert [r.offset for r in result.records] == [7, 8]
    assert "below the log start offset 7" in result.detail


def test_an_offset_at_or_past_the_end_reads_nothing() -> None:
    partition = MemoryPartition([b"a"], clock=Clock())
    result = run_scan(partition, q(offset="5"))
    assert result.records == () and result.stopped == STOP_END
    assert partition.reads == 0 and "high watermark is 1" in result.detail


def test_the_scan_stops_at_the_high_watermark_it_began_with() -> None:
    # Records past the high watermark the page was planned with are not read.
    partition = MemoryPartition([b"v%d" % i for i in range(10)], clock=Clock())
    result = run_scan(partition, q(offset="0"), high_watermark=4)
    assert [r.offset for r in result.records] == [0, 1, 2, 3]
    assert result.stopped == STOP_END


def test_a_search_keeps_matches_and_stops_at_the_scan_limit() -> None:
    values = [b"needle" if i % 7 == 0 else b"hay" for i in range(200)]
    partition = MemoryPartition(values, clock=Clock())
    result = run_scan(partition, q(value="needle", scan="50"))
    assert [r.offset for r in result.records] == [0, 7, 14, 21, 28, 35, 42, 49]
    assert result.scanned == 50 and result.stopped == STOP_SCAN_LIMIT
    assert result.next_offset == 50  # the next page goes on from there


def test_a_search_by_key_and_header() -> None:
    partition = MemoryPartition([b"x"] * 20, clock=Clock())
    result = run_scan(partition, q(key="key-1", scan="20"))
    assert [r.offset for r in result.records] == [1, *range(10, 20)]


def test_a_slow_partition_stops_at_the_time_limit() -> None:
    partition = MemoryPartition([b"x"] * 10_000, clock=Clock(), read_cost_s=0.01)
    result = run_scan(partition, q(value="never", scan="10000"))
    assert result.stopped == STOP_TIME_LIMIT
    assert 400 <= result.scanned <= 600  # 5 s of 10 ms reads


def test_from_a_time() -> None:
    partition = MemoryPartition([b"x"] * 10, clock=Clock())
    # Record i has timestamp i ms: 1970-01-01T00:00:00.004Z is offset 4.
    result = run_scan(partition, q(time="1970-01-01T00:00:00.004Z", limit="3"))
    assert [r.offset for r in result.records] == [4, 5, 6]


def test_a_time_after_every_record_reads_nothing_and_says_why() -> None:
    partition = MemoryPartition([b"x"] * 3, clock=Clock())
    result = run_scan(partition, q(time="2030-01-01T00:00:00Z"))
    assert result.records == () and result.stopped == STOP_NO_RECORD
    assert result.next_offset is None


def test_an_error_ends_the_page_with_what_was_read() -> None:
    partition = MemoryPartition([b"x"] * 10, clock=Clock(), fail_at=3)
    result = run_scan(partition, q(offset="0"))
    assert [r.offset for r in result.records] == [0, 1, 2]
    assert result.stopped == STOP_ERROR and "NOT_LEADER_OR_FOLLOWER" in result.detail


@pytest.mark.parametrize("size", [10, VALUE_SHOWN_BYTES_MAX * 100])
def test_kept_records_are_previews(size: int) -> None:
    partition = MemoryPartition([b"y" * size], clock=Clock())
    [record] = run_scan(partition, q()).records
    assert len(record.value.text) <= VALUE_SHOWN_BYTES_MAX
    assert record.value.size_bytes == size and record.value.truncated == (
        size > VALUE_SHOWN_BYTES_MAX
    )
