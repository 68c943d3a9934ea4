"""`raftmq produce` and `raftmq consume`: stdin lines in, messages out, through the client
library (`Writer`, `Reader`, `Admin`, `Conn`) like any other application. `consume
--group G` is a member of consumer group G (a `Reader` with `group_id`)."""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future

from raftmq.client.admin import Admin
from raftmq.client.balancers import Murmur2, RoundRobin
from raftmq.client.brokers import parse_brokers
from raftmq.client.conn import Conn, now_ms
from raftmq.client.reader import FirstOffset, LastOffset, Reader
from raftmq.client.writer import RequireAll, RequireNone, RequireOne, WriteError, Writer
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

READ_CHUNK_BYTES = 1 << 20
_ACKS = {"all": RequireAll, "1": RequireOne, "0": RequireNone}
# Stdin chunks written but not yet reported: bounds what a fast pipe keeps in memory
# (the Writer bounds its own buffer too).
PRODUCE_CHUNKS_IN_FLIGHT_MAX = 8
# One consume round asks every partition once, waiting up to this long in all when there
# is nothing new: the delay before a new message is seen, and the idle request rate.
CONSUME_ROUND_WAIT_MS = 500
CONSUME_PARTITION_WAIT_MS_MIN = 20
# consume --group commits what it printed this often, and on exit (the last message too).
CONSUME_GROUP_COMMIT_INTERVAL_MS = 1_000


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


def partition_count(brokers: list[str], topic: str, partition: int | None) -> int:
    """The topic's partition count; raises UNKNOWN_TOPIC_OR_PARTITION at once for a topic
    (or a `partition`) that does not exist, where a Writer or Reader would keep retrying."""
    with Admin(brokers) as admin:
        [record] = admin.describe_topics(topic)
    count = len(record.partitions)
    if partition is not None and not 0 <= partition < count:
        raise RaftmqError(
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
            f"{topic} has {count} partitions; there is no partition {partition}",
        )
    return count


# ---------------------------------------------------------------- produce


class KeyedOrRoundRobin:
    """Keyed messages go where the Java client's partitioner puts them (same key, same
    partition, also for Java and librdkafka `murmur2` producers); keyless ones round robin."""

    def __init__(self) -> None:
        self._keyed = Murmur2(consistent=True)
        self._keyless = RoundRobin()

    def balance(self, message: Message, partitions: Sequence[int]) -> int:
        chosen = self._keyless if message.key is None else self._keyed
        return chosen.balance(message, partitions)


def stdin_line_groups(fd: int) -> Iterator[list[bytes]]:
    """Lines grouped by what one read() returned: a pipe yields big groups (big batches),
    a person typing yields one line at a time (sent at once)."""
    tail = b""
    while True:
        chunk = os.read(fd, READ_CHUNK_BYTES)
        if not chunk:
            if tail:
                yield [tail]
            return
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        if lines:
            yield [line.rstrip(b"\r") for line in lines]


def _more_input_ready(fd: int) -> bool:
    """Can stdin be read without blocking (more lines, or end of input)?"""
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def to_messages(
    lines: list[bytes], separator: bytes | None, partition: int | None
) -> list[Message]:
    messages = []
    for line in lines:
        key: bytes | None = None
        value = line
        if separator is not None and separator in line:
            key, value = line.split(separator, 1)
        messages.append(Message(value, key, partition=partition))
    return messages


def _failures(future: Future[list[Message]]) -> dict[int, RaftmqError]:
    """id(message) -> why it was not written, for a completed write_messages future."""
    error = future.exception()
    if error is None:
        return {}
    if not isinstance(error, WriteError):
        raise error  # a bug, not a write outcome
    return {id(m): e for m, e in error.errors}


class InOrderReport:
    """Prints each written chunk's outcome in input order: one JSON object per message
    (with --json), one stderr line per failure cause. Main thread only."""

    def __init__(self, topic: str, *, json_lines: bool, acks: int) -> None:
        self.topic = topic
        self.json_lines = json_lines
        self.acks = acks
        self.failed = 0
        self._pending: deque[tuple[Future[list[Message]], list[Message]]] = deque()

    def add(self, future: Future[list[Message]], messages: list[Message]) -> None:
        self._pending.append((future, messages))

    def print_completed(self, *, wait: bool = False, keep_max: int | None = None) -> None:
        """Print the chunks at the head that completed; `wait`: all of them, waiting;
        `keep_max`: wait until at most that many remain."""
        while self._pending:
            future, messages = self._pending[0]
            must = wait or (keep_max is not None and len(self._pending) > keep_max)
            if not must and not future.done():
                return
            self._pending.popleft()
            self._print(future, messages)
        sys.stdout.flush()

    def _print(self, future: Future[list[Message]], messages: list[Message]) -> None:
        failures = _failures(future)
        if self.json_lines:
            written = [self._json(m) for m in messages if id(m) not in failures]
            sys.stdout.write("".join(written))
        by_cause: dict[int, tuple[RaftmqError, list[Message]]] = {}
        for m in messages:
            if id(m) in failures:
                cause = failures[id(m)]
                by_cause.setdefault(id(cause), (cause, []))[1].append(m)
        for cause, failed in by_cause.values():
            self._print_failure(cause, failed)

    def _print_failure(self, cause: RaftmqError, failed: list[Message]) -> None:
        """One stderr line for the messages that failed for one cause (one batch)."""
        self.failed += len(failed)
        # The Writer sets a partition only on written messages; --partition pins one.
        partition = failed[0].partition
        where = self.topic if partition is None else f"{self.topic}-{partition}"
        print(
            f"error: {len(failed)} message(s) to {where} failed: {cause.code.name}: "
            f"{cause.message}",
            file=sys.stderr,
        )

    def _json(self, m: Message) -> str:
        shown = {
            "topic": self.topic,
            "partition": m.partition,
            "offset": m.offset if self.acks != RequireNone else None,
            "key": _text(m.key),
            "value": _text(m.value),
        }
        return json.dumps(shown) + "\n"


def produce(args: argparse.Namespace) -> int:
    brokers = parse_brokers(args.bootstrap)
    partition_count(brokers, args.topic, args.partition)
    acks = _ACKS[args.acks]
    separator = args.key_separator.encode() if args.key_separator else None
    report = InOrderReport(args.topic, json_lines=args.json, acks=acks)
    fd = sys.stdin.fileno()
    with Writer(
        brokers,
        topic=args.topic,
        balancer=KeyedOrRoundRobin(),
        required_acks=acks,
        batch_size=args.batch_size,
        # A line typed by a person goes out at once; a pipe's chunk arrives in one call
        # and fills its batches without waiting.
        linger_ms=0,
        idempotent=acks == RequireAll,
        write_timeout_ms=args.timeout_ms,
        async_=True,
    ) as writer:
        for lines in stdin_line_groups(fd):
            messages = to_messages(lines, separator, args.partition)
            report.add(writer.write_messages(*messages), messages)
            if _more_input_ready(fd):
                report.print_completed(keep_max=PRODUCE_CHUNKS_IN_FLIGHT_MAX)
            else:  # someone typing: answer this line before waiting for the next
                report.print_completed(wait=True)
        writer.flush()
        report.print_completed(wait=True)
    return 1 if report.failed else 0


# ---------------------------------------------------------------- consume


def start_offset(args: argparse.Namespace) -> int:
    if args.offset is not None:
        return int(args.offset)
    return FirstOffset if args.from_beginning else LastOffset


class PartitionFeed:
    """One partition's Reader, polled by the consume loop."""

    def __init__(self, brokers: list[str], topic: str, partition: int, offset: int) -> None:
        self.brokers = brokers
        self.topic = topic
        self.partition = partition
        self.reader = Reader(brokers, topic, partition, start_offset=offset)

    def poll(self, wait_ms: int) -> list[Message]:
        """What one fetch returns: waits up to `wait_ms` for a first message, then takes
        the ones that fetch brought along (timeout 0: buffered messages only)."""
        try:
            messages = [self.reader.read_message(timeout_ms=wait_ms)]
        except TimeoutError:
            return []
        except RaftmqError as e:
            if e.code != ErrorCode.OFFSET_OUT_OF_RANGE:
                raise
            self._reset_out_of_range()
            return []
        # Bound: the messages of the fetch above.
        while True:
            try:
                messages.append(self.reader.read_message(timeout_ms=0))
            except TimeoutError:
                return messages

    def _reset_out_of_range(self) -> None:
        """To the log start when the position fell below it (retention), else to the end."""
        position = self.reader.offset
        with Conn.dial_leader(self.brokers, self.topic, self.partition) as conn:
            first, last = conn.read_offsets()
        reset = first if position < first else last
        print(
            f"warning: offset {position} of {self.topic}-{self.partition} is out of range; "
            f"resetting to {reset}",
            file=sys.stderr,
        )
        self.reader.set_offset(reset)

    def close(self) -> None:
        self.reader.close()


def _consumed_line(m: Message, *, json_lines: bool) -> str:
    if not json_lines:
        return f"{_text(m.value)}\n"
    shown = {
        "topic": m.topic,
        "partition": m.partition,
        "offset": m.offset,
        "key": _text(m.key),
        "value": _text(m.value),
        "timestamp": m.timestamp_ms,
    }
    return json.dumps(shown) + "\n"


def consume_group(args: argparse.Namespace) -> int:
    """`consume TOPIC --group G`: the partitions G's coordinator assigns this member; a
    group without committed offsets starts at the end, or the beginning with
    --from-beginning. Ends after --max-messages, or --timeout-ms without a message (or
    Ctrl-C): it then commits what it printed and leaves the group."""
    if args.offset is not None or args.partition is not None:
        raise ValueError(
            "--group: the group's coordinator assigns partitions and the group's commits "
            "say where to start (--offset and --partition do not apply; see `raftmq group "
            "reset-offsets`)"
        )
    brokers = parse_brokers(args.bootstrap)
    partition_count(brokers, args.topic, None)  # an unknown topic fails now, not later
    left = args.max_messages
    reader = Reader(
        brokers,
        group_id=args.group,
        topic=args.topic,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        commit_interval_ms=CONSUME_GROUP_COMMIT_INTERVAL_MS,
        client_id="raftmq-cli",
    )
    try:
        # Bound: until --max-messages were printed or --timeout-ms passed without one
        # (neither given: until interrupted, like kafka-console-consumer).
        while left is None or left > 0:
            try:
                message = reader.read_message(timeout_ms=args.timeout_ms)
            except TimeoutError:
                return 0
            sys.stdout.write(_consumed_line(message, json_lines=args.json))
            sys.stdout.flush()  # printed before the next read marks it processed
            if left is not None:
                left -= 1
        return 0
    finally:
        reader.close()  # commits what was printed, the last message too; leaves the group


def consume(args: argparse.Namespace) -> int:
    if getattr(args, "group", None) is not None:
        return consume_group(args)
    brokers = parse_brokers(args.bootstrap)
    count = partition_count(brokers, args.topic, args.partition)
    partitions = [args.partition] if args.partition is not None else list(range(count))
    wait_ms = max(CONSUME_PARTITION_WAIT_MS_MIN, CONSUME_ROUND_WAIT_MS // len(partitions))
    feeds = [PartitionFeed(brokers, args.topic, p, start_offset(args)) for p in partitions]
    left = args.max_messages
    idle_ms = args.timeout_ms
    idle_deadline_ms = None if idle_ms is None else now_ms() + idle_ms
    try:
        # Bound: until --max-messages were printed or --timeout-ms passed without one
        # (neither given: until interrupted, like kafka-console-consumer).
        while True:
            for feed in feeds:
                remaining_ms = wait_ms if idle_deadline_ms is None else idle_deadline_ms - now_ms()
                messages = feed.poll(max(1, min(wait_ms, remaining_ms)))
                if left is not None:
                    messages = messages[:left]
                    left -= len(messages)
                sys.stdout.write("".join(_consumed_line(m, json_lines=args.json) for m in messages))
                sys.stdout.flush()
                if left == 0:
                    return 0
                if messages and idle_ms is not None:
                    idle_deadline_ms = now_ms() + idle_ms
            if idle_deadline_ms is not None and now_ms() >= idle_deadline_ms:
                return 0
    finally:
        for feed in feeds:
            feed.close()
