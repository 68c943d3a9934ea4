"""The message browser's scan: read one partition from a start, keep what the search
matches, and stop at a bound — the page is full, `scan_max` records were read, the
partition's end (its high watermark when the scan began), or `BROWSE_TIME_MS_MAX`.

The scan reads through a `RecordSource` (an `AsyncReader` of one partition, or the
tests' in-memory one) and turns each kept record into a bounded `ShownRecord` at once,
so a page of 1 MiB values costs a page of 2 KiB previews, not 100 MiB.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from raftmq.errors import RaftmqError
from raftmq.message import Message

from .records import BrowseQuery, ShownRecord, show_record

BROWSE_TIME_MS_MAX = 5_000
# One read waits at most this long for a record before the scan calls the partition done.
READ_WAIT_MS = 1_500

STOP_PAGE_FULL = "page full"
STOP_SCAN_LIMIT = "scan limit"
STOP_END = "end of partition"
STOP_TIME_LIMIT = "time limit"
STOP_NO_RECORD = "no record came"
STOP_ERROR = "error"


class RecordSource(Protocol):
    """What the scan reads: `AsyncReader` (one partition) has this shape."""

    def set_offset(self, offset: int) -> None: ...

    def set_offset_at(self, when: datetime) -> None: ...

    async def read_message(self, timeout_ms: int | None = None) -> Message: ...


@dataclass(frozen=True, slots=True)
class BrowseResult:
    records: tuple[ShownRecord, ...]
    scanned: int  # records read, matching or not
    first_offset: int | None  # of the records read
    last_offset: int | None
    next_offset: int | None  # where the next page starts; None: nothing was read
    stopped: str  # one of STOP_*
    detail: str = ""  # why it stopped, when that needs words (an error, a clamp)
    log_start_offset: int = 0
    high_watermark: int = 0


def start_offset(
    query: BrowseQuery, log_start_offset: int, high_watermark: int
) -> tuple[int | None, str]:
    """Where a scan starts (None: at `query.from_time_ms`, the source resolves it) and a
    note for the page when the asked offset had to move into the log."""
    if query.offset is not None:
        if query.offset < log_start_offset:
            return log_start_offset, (
                f"offset {query.offset} is below the log start offset {log_start_offset}: "
                f"reading from {log_start_offset}"
            )
        return query.offset, ""
    if query.from_time_ms is not None:
        return None, ""
    if query.filter.active:
        return log_start_offset, ""  # a search starts at the beginning
    return max(log_start_offset, high_watermark - query.limit), ""  # the newest page


async def scan(
    source: RecordSource,
    query: BrowseQuery,
    *,
    log_start_offset: int,
    high_watermark: int,
    time_ms_max: int = BROWSE_TIME_MS_MAX,
    read_wait_ms: int = READ_WAIT_MS,
    clock: Callable[[], float] = time.monotonic,
) -> BrowseResult:
    def result(stopped: str, detail: str = "") -> BrowseResult:
        return BrowseResult(
            tuple(records),
            scanned,
            first,
            last,
            last + 1 if last is not None else start,
            stopped,
            detail or note,
            log_start_offset,
            high_watermark,
        )

    records: list[ShownRecord] = []
    scanned = 0
    first: int | None = None
    last: int | None = None
    start, note = start_offset(query, log_start_offset, high_watermark)
    if start is not None:
        if start >= high_watermark:
            return result(STOP_END, note or f"the high watermark is {high_watermark}")
        source.set_offset(start)
    else:
        assert query.from_time_ms is not None
        source.set_offset_at(datetime.fromtimestamp(query.from_time_ms / 1000, tz=UTC))
    deadline_s = clock() + time_ms_max / 1000
    # Bound: every pass reads one record or stops; at most scan_max passes read, and the
    # time bound ends the rest.
    while True:
        if len(records) >= query.limit:
            return result(STOP_PAGE_FULL)
        if scanned >= query.scan_max:
            return result(STOP_SCAN_LIMIT)
        if last is not None and last + 1 >= high_watermark:
            return result(STOP_END)
        remaining_ms = int((deadline_s - clock()) * 1000)
        if remaining_ms <= 0:
            return result(STOP_TIME_LIMIT)
        try:
            message = await source.read_message(timeout_ms=min(remaining_ms, read_wait_ms))
        except TimeoutError as e:
            if clock() >= deadline_s:
                return result(STOP_TIME_LIMIT)
            return result(STOP_NO_RECORD, str(e))
        except RaftmqError as e:
            return result(STOP_ERROR, f"{e.code.name}: {e.message}")
        scanned += 1
        first = message.offset if first is None else first
        last = message.offset
        if query.filter.matches(message):
            records.append(show_record(message, query.fmt))
