"""The pure parts of the chaos suite's consumer-group workload, without a cluster: how a
member process reports its polls, commits, assignment and close (a fake group Reader), how
the runner turns those lines into history ops, and how commit errors map to outcomes."""

from __future__ import annotations

import io
import json
import threading

import pytest
from raftmq.chaos.checker import check
from raftmq.chaos.group_member import (
    AssignmentSampler,
    EventWriter,
    MemberConfig,
    MemberLoop,
    MemberRecorder,
    commit_outcome,
)
from raftmq.chaos.history import ASSIGN_LOST, ASSIGN_RELEASED, History, MalformedHistoryError
from raftmq.chaos.nemesis import RunClock
from raftmq.client.group_core import CommitError, GroupStats, PartitionStats
from raftmq.client.reader_core import ReaderStats
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

TOPIC = "chaos"
GROUP = "g0"


def _config(commit: str) -> MemberConfig:
    return MemberConfig(
        brokers=("127.0.0.1:1",),
        topic=TOPIC,
        group=GROUP,
        process="g0-m0.0",
        instance_id="g0-m0-i0",
        commit=commit,
        session_timeout_ms=3_000,
        clock_start_s=0.0,
    )


class _FakeGroupReader:
    """Hands out the messages of `batches` (each a list of (partition, offset)): a read
    with time left takes the next batch when nothing is buffered; `timeout_ms=0` only what
    is buffered. After the batches it sets `done` (the member's stop). Commits succeed
    unless `commit_errors` has an error for that partition."""

    def __init__(
        self,
        batches: list[list[tuple[int, int]]],
        done: threading.Event,
        commit_errors: dict[int, RaftmqError] | None = None,
    ) -> None:
        self.batches = batches
        self.done = done
        self.commit_errors = commit_errors or {}
        self.buffer: list[Message] = []
        self.committed: list[tuple[int, int]] = []
        self.closed = False
        self.owned = [0, 1]
        self.revoked = 0
        self.lost = 0
        self.epoch = 1

    def _next(self, timeout_ms: int | None) -> Message:
        if not self.buffer and timeout_ms != 0:
            if not self.batches:
                self.done.set()
                raise TimeoutError("nothing")
            self.buffer = [
                Message(f"v{p}-{o}", topic=TOPIC, partition=p, offset=o)
                for p, o in self.batches.pop(0)
            ]
        if not self.buffer:
            raise TimeoutError("nothing buffered")
        return self.buffer.pop(0)

    def read_message(self, timeout_ms: int | None = None) -> Message:
        return self._next(timeout_ms)

    def fetch_message(self, timeout_ms: int | None = None) -> Message:
        return self._next(timeout_ms)

    def commit_messages(self, *messages: Message, timeout_ms: int | None = None) -> None:
        [message] = messages
        assert message.partition is not None
        error = self.commit_errors.get(message.partition)
        if error is not None:
            raise error
        self.committed.append((message.partition, message.offset + 1))

    def stats(self) -> ReaderStats:
        partitions = [PartitionStats(TOPIC, p, 0, -1, 0, 0, False) for p in self.owned]
        group = GroupStats(GROUP, "member-id", self.epoch, "member", None, partitions)
        group.revoked, group.lost = self.revoked, self.lost
        return ReaderStats(group=group)

    def close(self, timeout_ms: int | None = None) -> None:
        self.closed = True


def _record(out: io.StringIO, history: History) -> MemberRecorder:
    recorder = MemberRecorder(history, process="g0-m0.0", group=GROUP, topic=TOPIC)
    for line in out.getvalue().splitlines():
        recorder.record(line)
    return recorder


def test_an_explicit_member_commits_each_partition_it_read_after_recording_it() -> None:
    done = threading.Event()
    reader = _FakeGroupReader([[(0, 0), (1, 0), (0, 1)], [(1, 1)]], done)
    out = io.StringIO()
    MemberLoop(reader, EventWriter(out, RunClock()), _config("explicit"), done).run()

    assert reader.committed == [(0, 2), (1, 1), (1, 2)]
    assert reader.closed
    kinds = [(o["f"], o.get("type")) for o in map(json.loads, out.getvalue().splitlines())]
    first_commit = kinds.index(("commit", "invoke"))
    assert kinds[:first_commit].count(("poll", "ok")) == 1  # delivered before committed
    assert kinds[-2:] == [("close", "invoke"), ("close", "ok")]

    history = History()
    recorder = _record(out, history)
    assert recorder.partitions == (0, 1) and recorder.assignments >= 1
    ops = history.ops()
    commits = [op for op in ops if op.f == "commit" and op.type == "ok"]
    assert [(op.partition, op.offset) for op in commits] == [(0, 2), (1, 1), (1, 2)]
    assert history.pending() == ()
    result = check(history, groups_drained=False)
    assert result.counts["committed_too_far"] == 0
    assert result.groups[GROUP]["deliveries"] == 4
    assert result.groups[GROUP]["commits_ok"] == 3


def test_an_auto_committing_member_polls_one_message_at_a_time() -> None:
    done = threading.Event()
    reader = _FakeGroupReader([[(0, 0), (0, 1)]], done)
    out = io.StringIO()
    MemberLoop(reader, EventWriter(out, RunClock()), _config("auto"), done).run()

    history = History()
    _record(out, history)
    polls = [op for op in history.ops() if op.f == "poll" and op.type == "ok"]
    # One read_message per poll (it commits the previous message, so each delivery is
    # written before the call that commits it); the last poll found nothing.
    assert [len(op.reads) for op in polls] == [1, 1, 0]
    assert not any(op.f == "commit" for op in history.ops())
    assert reader.committed == []  # the Reader commits by itself


def test_commit_errors_map_to_fail_or_unknown() -> None:
    tp = (TOPIC, 0)
    refused = CommitError([(tp, 5, RaftmqError(ErrorCode.NOT_PARTITION_OWNER, "not yours"))])
    timed_out = CommitError([(tp, 5, RaftmqError(ErrorCode.REQUEST_TIMED_OUT, "no answer"))])
    fenced = CommitError([(tp, 5, RaftmqError(ErrorCode.UNKNOWN_MEMBER_ID, "gone"))])
    assert commit_outcome(refused) == ("fail", "NOT_PARTITION_OWNER")
    assert commit_outcome(timed_out) == ("info", "REQUEST_TIMED_OUT")
    assert commit_outcome(fenced) == ("info", "UNKNOWN_MEMBER_ID")
    other = RaftmqError(ErrorCode.UNKNOWN_SERVER_ERROR, "the reader failed")
    assert commit_outcome(other) == ("info", "UNKNOWN_SERVER_ERROR")

    done = threading.Event()
    reader = _FakeGroupReader([[(0, 0), (1, 0)]], done, commit_errors={1: refused})
    out = io.StringIO()
    MemberLoop(reader, EventWriter(out, RunClock()), _config("explicit"), done).run()
    history = History()
    _record(out, history)
    outcomes = [(op.partition, op.type, op.error) for op in history.ops() if op.f == "commit"]
    assert (1, "fail", "NOT_PARTITION_OWNER") in outcomes and (0, "ok", "") in outcomes


def test_the_sampler_writes_changes_and_how_partitions_left() -> None:
    done = threading.Event()
    reader = _FakeGroupReader([], done)
    out = io.StringIO()
    sampler = AssignmentSampler(reader, EventWriter(out, RunClock()), TOPIC)
    sampler.sample()
    sampler.sample()  # unchanged and soon after: not written
    reader.owned, reader.revoked, reader.epoch = [0], 1, 2
    sampler.sample()
    reader.owned, reader.lost, reader.epoch = [], 1, 3
    sampler.sample()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(o["partitions"], o["epoch"], o["dropped"]) for o in lines] == [
        ([0, 1], 1, ""),
        ([0], 2, ASSIGN_RELEASED),
        ([], 3, ASSIGN_LOST),
    ]
    assert all(o["t0"] <= o["t1"] for o in lines)


def test_the_recorder_refuses_a_broken_report() -> None:
    recorder = MemberRecorder(History(), process="g0-m0.0", group=GROUP, topic=TOPIC)
    with pytest.raises(MalformedHistoryError):
        recorder.record('{"f": "commit", "type": "ok", "t": 1.0}')
    with pytest.raises(MalformedHistoryError):
        recorder.record('{"f": "teleport", "type": "invoke", "t": 1.0}')
    fatal: list[str] = []
    recorder.record('{"f": "fatal", "error": "ValueError: boom"}', on_fatal=fatal.append)
    assert fatal == ["ValueError: boom"] and recorder.fatal == "ValueError: boom"


def test_member_config_round_trips_through_json() -> None:
    config = _config("auto")
    assert MemberConfig.from_json(config.to_json()) == config
