"""`raftmq produce` / `consume` without a cluster: partitioning, stdin chunking, and the
in-order report of written chunks (through the futures a Writer returns)."""

from __future__ import annotations

import json
import os
from concurrent.futures import Future

import pytest
from raftmq.cli.data import InOrderReport, KeyedOrRoundRobin, stdin_line_groups, to_messages
from raftmq.client.balancers import Murmur2
from raftmq.client.writer import RequireAll, RequireNone, WriteError
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message


def test_keyed_lines_follow_the_java_partitioner_and_keyless_ones_round_robin() -> None:
    balancer = KeyedOrRoundRobin()
    java = Murmur2(consistent=True)
    partitions = range(5)
    for key in (b"user1", b"", b"\xff" * 9):
        expected = java.balance(Message(b"v", key), partitions)
        assert {balancer.balance(Message(b"v", key), partitions) for _ in range(4)} == {expected}
    assert [balancer.balance(Message(b"v"), partitions) for _ in range(6)] == [0, 1, 2, 3, 4, 0]


def test_lines_become_messages_split_at_the_first_separator() -> None:
    messages = to_messages([b"k:v:w", b"plain", b":empty-key"], b":", None)
    assert [(m.key, m.value) for m in messages] == [
        (b"k", b"v:w"),
        (None, b"plain"),
        (b"", b"empty-key"),
    ]
    assert all(m.partition is None for m in messages)
    [pinned] = to_messages([b"a:b"], None, 2)
    assert (pinned.key, pinned.value, pinned.partition) == (None, b"a:b", 2)


def test_stdin_groups_follow_reads_and_keep_a_last_line_without_newline() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"one\r\ntwo\nthr")
        os.close(write_fd)
        write_fd = -1
        assert list(stdin_line_groups(read_fd)) == [[b"one", b"two"], [b"thr"]]
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def _written(messages: list[Message], first_offset: int) -> Future[list[Message]]:
    for i, m in enumerate(messages):
        m.partition, m.offset = 1, first_offset + i
    future: Future[list[Message]] = Future()
    future.set_result(messages)
    return future


def test_the_report_prints_chunks_in_input_order_and_failures_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = InOrderReport("t", json_lines=True, acks=RequireAll)
    first = [Message(b"a", b"k"), Message(b"b")]
    second = [Message(b"c"), Message(b"d")]
    pending: Future[list[Message]] = Future()
    report.add(pending, first)
    report.add(_written(second, 10), second)
    report.print_completed()
    assert capsys.readouterr().out == ""  # the first chunk is not done: nothing yet
    _written(first[:1], 5)
    cause = RaftmqError(ErrorCode.NOT_ENOUGH_REPLICAS, "ISR 1 < 2")
    pending.set_exception(WriteError([(first[1], cause)]))
    report.print_completed()
    out, err = capsys.readouterr()
    shown = [json.loads(line) for line in out.splitlines()]
    assert shown == [
        {"topic": "t", "partition": 1, "offset": 5, "key": "k", "value": "a"},
        {"topic": "t", "partition": 1, "offset": 10, "key": None, "value": "c"},
        {"topic": "t", "partition": 1, "offset": 11, "key": None, "value": "d"},
    ]
    assert err == "error: 1 message(s) to t failed: NOT_ENOUGH_REPLICAS: ISR 1 < 2\n"
    assert report.failed == 1


def test_acks_0_reports_no_offsets(capsys: pytest.CaptureFixture[str]) -> None:
    report = InOrderReport("t", json_lines=True, acks=RequireNone)
    messages = [Message(b"x")]
    report.add(_written(messages, -1), messages)
    report.print_completed(wait=True)
    assert json.loads(capsys.readouterr().out)["offset"] is None
