"""One consumer-group member of the chaos workload, as a process of its own, and the line
protocol it reports in.

Why a process: a crash must abandon the member *without* leaving the group (no close, no
leave heartbeat, no last commit), and the client has no in-process way to do that. The
runner SIGKILLs the process by PID; the coordinator has to notice by the session timeout.

`python -m raftmq.chaos.group_member CONFIG_JSON` (a `MemberConfig`) runs one group
`Reader` until its stdin says "stop" (or closes), then `close()`s it (commit, leave) and
exits. Meanwhile it writes one JSON object per line to stdout, each flushed before the
member does anything that depends on it (a delivery is written before anything can commit
it), stamped with the run clock (`RunClock(start_s=config.clock_start_s)`: CLOCK_MONOTONIC
is shared by every process of the machine):

- `{"f": "poll", "type": "invoke", "t": ms}`, then `{"f": "poll", "type": "ok", "t": ms,
  "reads": [[partition, offset, value], ...]}` or `{"f": "poll", "type": "fail", "t": ms,
  "error": NAME}`. Commit mode "auto": one `read_message` per poll (it commits the previous
  message, so each delivery is written before the call that commits it); "explicit": one
  `fetch_message`, then what is buffered (at most `POLL_MESSAGES_MAX`);
- "explicit" only, after each poll, one commit per partition it read (the highest offset
  + 1): `{"f": "commit", "type": "invoke", "t": ms, "partition": p, "offset": o}`, then
  `{"f": "commit", "type": "ok" | "fail" | "info", "t": ms, "error": NAME}` (`commit_outcome`);
- `{"f": "assign", "t0": ms, "t1": ms, "member_id": ..., "epoch": n, "partitions": [...],
  "dropped": "" | "released" | "lost"}`: `Reader.stats()` read between t0 and t1, by a
  sampler thread every `ASSIGN_SAMPLE_INTERVAL_MS`, written when it changed or at least
  every `ASSIGN_SAMPLE_MS_MAX` (see `raftmq.chaos.history`);
- `{"f": "close", "type": "invoke", "t": ms}` then `{"f": "close", "type": "ok" | "info",
  "t": ms, "error": ...}`;
- `{"f": "fatal", "error": text}`: an unexpected exception (a harness or client bug).

`MemberRecorder` is the runner's side: it turns those lines into `History` ops.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any, Protocol

from raftmq.chaos.history import (
    ASSIGN_LOST,
    ASSIGN_RELEASED,
    ASSIGN_SAMPLE_MS_MAX,
    CompletionType,
    History,
    MalformedHistoryError,
    Op,
    Read,
)
from raftmq.chaos.nemesis import RunClock
from raftmq.client.group_core import CommitError
from raftmq.client.reader_core import ReaderStats
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

COMMIT_MODES = ("explicit", "auto")
# Messages in one explicit poll (what `fetch_message` has buffered after the first).
POLL_MESSAGES_MAX = 500
ASSIGN_SAMPLE_INTERVAL_MS = 20
# After a poll the Reader failed: do not spin on it.
POLL_BACKOFF_S = 0.2
# CommitError causes after which the commit may still have happened: the client gave up
# waiting, or the member was fenced (its in-flight commit forgotten, not refused).
_UNKNOWN_COMMIT_CODES = frozenset(
    {
        ErrorCode.REQUEST_TIMED_OUT,
        ErrorCode.UNKNOWN_MEMBER_ID,
        ErrorCode.FENCED_MEMBER_EPOCH,
        ErrorCode.BROKER_NOT_AVAILABLE,
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
    }
)
STOP_LINE = "stop"


@dataclass(frozen=True, slots=True)
class MemberConfig:
    brokers: tuple[str, ...]
    topic: str
    group: str
    # The history process of this incarnation ("g0-m1.2").
    process: str
    # "" : a dynamic member.
    instance_id: str
    commit: str
    session_timeout_ms: int
    clock_start_s: float
    poll_wait_ms: int = 100
    fetch_wait_ms: int = 100
    fetch_bytes_max: int = 256 << 10
    commit_timeout_ms: int = 5_000
    close_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        assert self.commit in COMMIT_MODES, self.commit
        assert self.brokers and self.poll_wait_ms > 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> MemberConfig:
        obj = json.loads(text)
        obj["brokers"] = tuple(obj["brokers"])
        return MemberConfig(**obj)


def commit_outcome(error: RaftmqError) -> tuple[CompletionType, str]:
    """How a `commit_messages` that raised `error` completes: `info` when it may still have
    committed (`_UNKNOWN_COMMIT_CODES`, or a non-CommitError), else `fail` (the client's
    contract: the committed offset did not move). Pure."""
    if not isinstance(error, CommitError):
        return "info", error.code.name
    cause = error.errors[0][2]  # one partition per commit
    if cause.code in _UNKNOWN_COMMIT_CODES:
        return "info", cause.code.name
    return "fail", cause.code.name


class GroupMemberReader(Protocol):
    """What the member needs of a group `Reader` (tests pass a fake)."""

    def read_message(self, timeout_ms: int | None = None) -> Message: ...

    def fetch_message(self, timeout_ms: int | None = None) -> Message: ...

    def commit_messages(self, *messages: Message, timeout_ms: int | None = None) -> None: ...

    def stats(self) -> ReaderStats: ...

    def close(self, timeout_ms: int | None = None) -> None: ...


class EventWriter:
    """JSON lines to `out`, each written and flushed whole under a lock (two threads
    write: the member's and the sampler)."""

    def __init__(self, out: IO[str], clock: RunClock) -> None:
        self.out = out
        self.clock = clock
        self._lock = threading.Lock()

    def emit(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":"))
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def now_ms(self) -> float:
        return self.clock.now_ms()


def _read(message: Message) -> Read:
    assert message.partition is not None, "a group Reader sets the partition"
    value = b"" if message.value is None else message.value
    return (message.partition, message.offset, value.decode("utf-8", "replace"))


class AssignmentSampler:
    """Reads the member's assignment every `ASSIGN_SAMPLE_INTERVAL_MS` and writes it when
    it changed, or at least every `ASSIGN_SAMPLE_MS_MAX`. One daemon thread."""

    def __init__(self, reader: GroupMemberReader, events: EventWriter, topic: str) -> None:
        self.reader = reader
        self.events = events
        self.topic = topic
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="assign-sampler", daemon=True)
        self._last: tuple[str, int, tuple[int, ...]] | None = None
        self._last_ms = 0.0
        self._counters = (0, 0)  # (revoked, lost) at the last written sample

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5.0)

    def sample(self) -> None:
        """One sample (written or not, see the class docstring)."""
        t0 = self.events.now_ms()
        stats = self.reader.stats()
        t1 = self.events.now_ms()
        group = stats.group
        if group is None:
            return
        partitions = tuple(sorted(p.partition for p in group.partitions if p.topic == self.topic))
        state = (group.member_id, group.member_epoch, partitions)
        counters = (group.revoked, group.lost)
        changed = state != self._last or counters != self._counters
        if not changed and t1 - self._last_ms < ASSIGN_SAMPLE_MS_MAX - ASSIGN_SAMPLE_INTERVAL_MS:
            return
        dropped = ""
        if counters[1] > self._counters[1]:
            dropped = ASSIGN_LOST
        elif counters[0] > self._counters[0]:
            dropped = ASSIGN_RELEASED
        self.events.emit(
            {
                "f": "assign",
                "t0": t0,
                "t1": t1,
                "member_id": group.member_id,
                "epoch": group.member_epoch,
                "partitions": list(partitions),
                "dropped": dropped,
            }
        )
        self._last, self._last_ms, self._counters = state, t1, counters

    def _run(self) -> None:
        # Bound: until stop(); one stats() per interval.
        while not self._stopping.wait(ASSIGN_SAMPLE_INTERVAL_MS / 1000):
            self.sample()


class MemberLoop:
    """The member's application: polls, records, commits (explicit mode), until
    `stopping`; then closes the Reader."""

    def __init__(
        self,
        reader: GroupMemberReader,
        events: EventWriter,
        config: MemberConfig,
        stopping: threading.Event,
    ) -> None:
        self.reader = reader
        self.events = events
        self.config = config
        self.stopping = stopping

    def run(self) -> None:
        sampler = AssignmentSampler(self.reader, self.events, self.config.topic)
        sampler.sample()
        sampler.start()
        try:
            # Bound: until `stopping`; each poll and commit has a deadline.
            while not self.stopping.is_set():
                messages = self.poll()
                if messages is None:
                    self.stopping.wait(POLL_BACKOFF_S)
                elif self.config.commit == "explicit":
                    self.commit(messages)
        finally:
            sampler.stop()
        self.close()

    def poll(self) -> list[Message] | None:
        """One recorded poll: the messages handed out (maybe none), or None on an error."""
        emit, now = self.events.emit, self.events.now_ms
        emit({"f": "poll", "type": "invoke", "t": now()})
        wait_ms = self.config.poll_wait_ms
        messages: list[Message] = []
        try:
            if self.config.commit == "auto":
                messages.append(self.reader.read_message(timeout_ms=wait_ms))
            else:
                messages.append(self.reader.fetch_message(timeout_ms=wait_ms))
                # What is buffered, without a request; an error here loses nothing (the
                # next poll meets it again).
                with contextlib.suppress(TimeoutError, RaftmqError):
                    while len(messages) < POLL_MESSAGES_MAX:
                        messages.append(self.reader.fetch_message(timeout_ms=0))
        except TimeoutError:
            pass
        except RaftmqError as exc:
            emit({"f": "poll", "type": "fail", "t": now(), "error": exc.code.name})
            return None
        emit({"f": "poll", "type": "ok", "t": now(), "reads": [list(_read(m)) for m in messages]})
        return messages

    def commit(self, messages: Sequence[Message]) -> None:
        """One recorded commit per partition of `messages` (its highest offset + 1)."""
        emit, now = self.events.emit, self.events.now_ms
        by_partition: dict[int, Message] = {}
        for m in messages:
            assert m.partition is not None
            if m.partition not in by_partition or m.offset > by_partition[m.partition].offset:
                by_partition[m.partition] = m
        for partition, highest in sorted(by_partition.items()):
            emit(
                {
                    "f": "commit",
                    "type": "invoke",
                    "t": now(),
                    "partition": partition,
                    "offset": highest.offset + 1,
                }
            )
            try:
                self.reader.commit_messages(highest, timeout_ms=self.config.commit_timeout_ms)
            except RaftmqError as exc:
                outcome, error = commit_outcome(exc)
                emit({"f": "commit", "type": outcome, "t": now(), "error": error})
            else:
                emit({"f": "commit", "type": "ok", "t": now()})

    def close(self) -> None:
        emit, now = self.events.emit, self.events.now_ms
        emit({"f": "close", "type": "invoke", "t": now()})
        try:
            self.reader.close(timeout_ms=self.config.close_timeout_ms)
        except RaftmqError as exc:
            emit({"f": "close", "type": "info", "t": now(), "error": exc.code.name})
            return
        emit({"f": "close", "type": "ok", "t": now()})


def _watch_stdin(stdin: IO[str], stopping: threading.Event) -> None:
    # "stop" or end of file (the runner went away): stop.
    for line in stdin:
        if line.strip() == STOP_LINE:
            break
    stopping.set()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one member (see the module docstring); exit 0 once closed, 1 on a fatal error."""
    from raftmq import Reader
    from raftmq.log import configure_logging

    # The client's warnings go to stderr (the runner keeps them in the member's log).
    configure_logging(level="WARNING")
    args = list(sys.argv[1:] if argv is None else argv)
    config = MemberConfig.from_json(args[0])
    events = EventWriter(sys.stdout, RunClock(start_s=config.clock_start_s))
    stopping = threading.Event()
    threading.Thread(target=_watch_stdin, args=(sys.stdin, stopping), daemon=True).start()
    try:
        reader = Reader(
            list(config.brokers),
            group_id=config.group,
            topic=config.topic,
            group_instance_id=config.instance_id or None,
            auto_offset_reset="earliest",
            session_timeout_ms=config.session_timeout_ms,
            max_wait_ms=config.fetch_wait_ms,
            max_bytes=config.fetch_bytes_max,
            client_id=config.process,
        )
        MemberLoop(reader, events, config, stopping).run()
    except Exception as exc:
        events.emit({"f": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        raise
    return 0


class MemberRecorder:
    """The runner's side of one member process: each line it wrote becomes history ops
    (`record`). Not thread-safe: one reader thread per member calls it."""

    def __init__(self, history: History, *, process: str, group: str, topic: str) -> None:
        self.history = history
        self.process = process
        self.group = group
        self.topic = topic
        self._pending: dict[str, Op] = {}
        # The last assignment the member wrote (partitions), and how many it wrote.
        self.partitions: tuple[int, ...] = ()
        self.assignments = 0
        self.fatal: str | None = None

    def record(self, line: str, on_fatal: Callable[[str], None] | None = None) -> None:
        """One line of the member's stdout. Raises MalformedHistoryError (or ValueError,
        KeyError) on a line that breaks the protocol."""
        obj = json.loads(line)
        f = obj["f"]
        history, process, group, topic = self.history, self.process, self.group, self.topic
        if f == "assign":
            history.observe_assignment(
                process,
                topic,
                group=group,
                member_id=str(obj["member_id"]),
                epoch=int(obj["epoch"]),
                partitions=[int(p) for p in obj["partitions"]],
                dropped=str(obj["dropped"]),
                invoke_ms=float(obj["t0"]),
                done_ms=float(obj["t1"]),
            )
            self.partitions = tuple(obj["partitions"])
            self.assignments += 1
            return
        if f == "fatal":
            self.fatal = str(obj["error"])
            if on_fatal is not None:
                on_fatal(self.fatal)
            return
        op_type, time_ms = obj["type"], float(obj["t"])
        if op_type == "invoke":
            if f == "poll":
                invoke = history.invoke_poll(process, topic, group=group, time_ms=time_ms)
            elif f == "commit":
                invoke = history.invoke_commit(
                    process,
                    topic,
                    group=group,
                    partition=int(obj["partition"]),
                    offset=int(obj["offset"]),
                    time_ms=time_ms,
                )
            elif f == "close":
                invoke = history.invoke_close(process, topic, group=group, time_ms=time_ms)
            else:
                raise MalformedHistoryError(f"{process}: unknown op {f!r}")
            self._pending[f] = invoke
            return
        pending = self._pending.pop(f, None)
        if pending is None or op_type not in ("ok", "fail", "info"):
            raise MalformedHistoryError(f"{process}: {f} {op_type} without its invoke")
        reads = [(int(p), int(o), str(v)) for p, o, v in obj.get("reads", ())]
        history.complete(
            pending, op_type, time_ms=time_ms, reads=reads, error=str(obj.get("error", ""))
        )


if __name__ == "__main__":
    sys.exit(main())
