"""The consumer-group part of the chaos workload: G groups of M members reading the chaos
topic, members crashed and restarted during every fault, the groups' committed offsets
read periodically, and the drain after the heal.

- Members: one process each (`raftmq.chaos.group_member`, so that a crash is a SIGKILL by
  PID: the member never leaves, the coordinator must notice by the session timeout). Even
  groups commit explicitly (`fetch_message` + `commit_messages`, one commit per partition
  read: each commit and its outcome is in the history), odd groups by `read_message`'s
  auto commit (kafka-go's default path: its commits are invisible, but the committed-offset
  reads and the deliveries still check it). Every member is static (a `group_instance_id`).
- `MemberChaos`: for every fault the nemesis injects, one member (of each group in turn, a
  seeded choice within it) is SIGKILLed shortly after the fault began and restarted
  `RESTART_DELAY_S_RANGE` later as a new process: alternately with the same instance id (a
  static member's restart: it takes the old member's place at once) and with a new one (a
  new member; the old one is evicted when its session expires), the first two restarts of
  a run covering both. Stopped at the final heal, which restarts whoever is down.
- `OffsetsWatcher`: every `offsets_read_interval_ms`, each group's committed offsets of the
  topic, read with the raw OffsetFetch at the group's coordinator (found and followed as the
  Admin does), recorded as `offsets` ops.
- `drain`: after the final read, until every group's committed offset of every partition
  reached the high watermark the final read found (bounded); then `stop` closes every
  member (commit, leave) and reads the offsets once more.

Every process is started and stopped by PID here; `close` kills whatever is left (also on
failure paths).
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import structlog
from raftmq.chaos.group_member import MemberConfig, MemberRecorder
from raftmq.chaos.history import MEMBER_CRASH, MEMBER_START, FaultWindow, History
from raftmq.chaos.nemesis import RunClock
from raftmq.client import group_protocol as gp
from raftmq.client.conn import now_ms, transport_error
from raftmq.client.controller_client import Backoff, EndpointPool
from raftmq.client.group_admin import CoordinatorCall, FindStep
from raftmq.errors import ErrorCode, RaftmqError

_log = structlog.get_logger("raftmq.chaos")

# A member's process, from spawn to its first line, and its graceful stop (close is bounded
# by the member's close_timeout_ms).
MEMBER_STOP_TIMEOUT_S = 20.0
# After a SIGKILL: the kernel reaps at once; the reader thread then sees end of file.
MEMBER_KILL_WAIT_S = 5.0
READER_JOIN_TIMEOUT_S = 5.0
# After a fault began, its member crash comes within this (every hold is >= 1 s).
CRASH_DELAY_S_RANGE = (0.1, 0.6)
RESTART_DELAY_S_RANGE = (1.0, 3.0)
CHAOS_INTERVAL_S = 0.05
OFFSETS_CALL_TIMEOUT_MS = 3_000
OFFSETS_RPC_TIMEOUT_MS = 2_000
DRAIN_POLL_S = 0.2
# Processes started in one run: a bound on restarts (one per fault, far fewer faults).
INCARNATIONS_MAX = 10_000


def read_committed(
    pool: EndpointPool, group: str, topic: str, partitions: int, *, timeout_ms: int
) -> dict[int, int]:
    """`group`'s committed offset of each partition of `topic` (-1: none), by the raw
    OffsetFetch at its coordinator, found and followed (`CoordinatorCall`, as the Admin).
    Raises RaftmqError when no answer came in time."""
    request = gp.OffsetFetchRequest(group)
    method, _ = gp.to_pb(request)
    plan = CoordinatorCall(
        group,
        method,
        pool.ordering,
        now_ms=now_ms(),
        timeout_ms=timeout_ms,
        rpc_timeout_ms=OFFSETS_RPC_TIMEOUT_MS,
    )
    # Bound: CoordinatorCall gives up after its attempts or timeout_ms.
    while (step := plan.next(now_ms=now_ms())) is not None:
        if isinstance(step, Backoff):
            time.sleep(step.wait_ms / 1000)
            continue
        find = isinstance(step, FindStep)
        asked: gp.Request = gp.FindCoordinatorRequest(group) if find else request
        method, message = gp.to_pb(asked)
        try:
            response = pool.call(step.endpoint, method, message, timeout_ms=step.timeout_ms)
        except grpc.RpcError as e:
            plan.on_transport_failure(step.endpoint, transport_error(step.endpoint, method, e))
            continue
        result = gp.from_pb(asked, response)
        if isinstance(result, gp.CoordinatorResult) and find:
            plan.on_coordinator(result)
        elif plan.on_answer(gp.coordinator_error(result)):
            assert isinstance(result, gp.OffsetFetchResult)
            if result.error is not None and result.error.code != ErrorCode.GROUP_ID_NOT_FOUND:
                raise result.error
            committed = {p: o.offset for (t, p), o in result.offsets.items() if t == topic}
            return {p: committed.get(p, gp.NO_OFFSET) for p in range(partitions)}
    raise plan.give_up()


@dataclass(frozen=True, slots=True)
class GroupsConfig:
    """What the group workload needs of the run's `WorkloadConfig` (`groups_config`)."""

    topic: str
    partitions: int
    groups: int
    members: int
    session_timeout_ms: int
    offsets_read_interval_ms: int
    poll_wait_ms: int
    fetch_bytes_max: int


class MemberProcess:
    """One member incarnation: a `raftmq.chaos.group_member` process and the thread that
    records its lines. `start` once; then `crash` or `stop`."""

    def __init__(
        self,
        config: MemberConfig,
        *,
        history: History,
        clock: RunClock,
        log_path: Path,
        on_problem: Callable[[str], None],
    ) -> None:
        self.config = config
        self.history = history
        self.clock = clock
        self.log_path = log_path
        self.on_problem = on_problem
        self.recorder = MemberRecorder(
            history, process=config.process, group=config.group, topic=config.topic
        )
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._log: IO[str] | None = None

    @property
    def process(self) -> str:
        return self.config.process

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self.history.member_event(
            self.process,
            self.config.topic,
            group=self.config.group,
            event=MEMBER_START,
            time_ms=self.clock.now_ms(),
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "raftmq.chaos.group_member", self.config.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._thread = threading.Thread(
            target=self._read_lines, name=f"member-{self.process}", daemon=True
        )
        self._thread.start()
        _log.info("member.started", process=self.process, pid=self._proc.pid)

    def _read_lines(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            for line in proc.stdout:
                self.recorder.record(line, on_fatal=self._fatal)
        except Exception as exc:  # a protocol or pairing error: a harness bug
            self.on_problem(f"{self.process}: bad report from the member: {exc!r}")

    def _fatal(self, error: str) -> None:
        self.on_problem(f"{self.process} died of an unexpected error: {error}")

    def crash(self) -> None:
        """SIGKILL by PID, then the crash event (every line the process wrote was written
        before it, so its time is after every op of the member)."""
        proc = self._proc
        assert proc is not None
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=MEMBER_KILL_WAIT_S)
        self.history.member_event(
            self.process,
            self.config.topic,
            group=self.config.group,
            event=MEMBER_CRASH,
            time_ms=self.clock.now_ms(),
        )
        _log.info("member.crashed", process=self.process, pid=proc.pid)
        self._finish()

    def request_stop(self) -> None:
        """Ask the member to close (commit, leave) and exit; `wait_stopped` waits."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write("stop\n")
            proc.stdin.close()

    def wait_stopped(self, timeout_s: float) -> bool:
        """Wait for the exit; past `timeout_s` SIGKILL it (its close stays pending: info).
        True when it exited by itself with status 0."""
        proc = self._proc
        if proc is None:
            return True
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=MEMBER_KILL_WAIT_S)
            self.on_problem(f"{self.process} did not stop within {timeout_s:.0f} s: killed")
            self._finish()
            return False
        self._finish()
        if code != 0:
            self.on_problem(f"{self.process} exited with status {code} (see {self.log_path})")
        return code == 0

    def kill(self) -> None:
        """SIGKILL by PID without recording anything (cleanup on failure paths)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=MEMBER_KILL_WAIT_S)
        self._finish()

    def _finish(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=READER_JOIN_TIMEOUT_S)
        proc = self._proc
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(slots=True)
class _Slot:
    """One member position of a group; its incarnations follow one another."""

    group_index: int
    index: int
    instance_serial: int = 0
    incarnations: int = 0
    current: MemberProcess | None = None
    # Restart due at (monotonic s) while the slot is down.
    restart_at_s: float | None = None

    @property
    def group(self) -> str:
        return f"g{self.group_index}"

    @property
    def instance_id(self) -> str:
        return f"{self.group}-m{self.index}-i{self.instance_serial}"


@dataclass(slots=True)
class GroupFigures:
    crashes: int = 0
    restarts_same_instance: int = 0
    restarts_new_instance: int = 0
    # The faults (kind, start ms) during which a member was crashed.
    faults_with_crash: list[tuple[str, float]] = field(default_factory=list)


class GroupWorkload:
    """The members, their chaos and the offsets watcher of one run (module docstring)."""

    def __init__(
        self,
        *,
        bootstrap: Sequence[str],
        history: History,
        clock: RunClock,
        config: GroupsConfig,
        seed: int,
        log_dir: Path,
    ) -> None:
        self.bootstrap = list(bootstrap)
        self.history = history
        self.clock = clock
        self.config = config
        self.log_dir = log_dir
        self.rng = random.Random(f"{seed}-groups")
        self.figures = GroupFigures()
        self.problems: list[str] = []
        self._problems_lock = threading.Lock()
        self._lock = threading.Lock()
        self.slots = [_Slot(g, m) for g in range(config.groups) for m in range(config.members)]
        self._retired: list[MemberProcess] = []
        self._watcher = OffsetsWatcher(self)
        self._chaos: MemberChaos | None = None
        # The restart modes still owed to cover both in the first two restarts.
        self._modes = ["same", "new"]
        self.rng.shuffle(self._modes)

    @property
    def groups(self) -> list[str]:
        return [f"g{g}" for g in range(self.config.groups)]

    def commit_mode(self, group_index: int) -> str:
        return "explicit" if group_index % 2 == 0 else "auto"

    def problem(self, text: str) -> None:
        with self._problems_lock:
            self.problems.append(text)
        _log.warning("group_workload.problem", problem=text)

    # -- members ----------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        assert slot.incarnations < INCARNATIONS_MAX
        process = f"{slot.group}-m{slot.index}.{slot.incarnations}"
        slot.incarnations += 1
        config = MemberConfig(
            brokers=tuple(self.bootstrap),
            topic=self.config.topic,
            group=slot.group,
            process=process,
            instance_id=slot.instance_id,
            commit=self.commit_mode(slot.group_index),
            session_timeout_ms=self.config.session_timeout_ms,
            clock_start_s=self.clock.start_s,
            poll_wait_ms=self.config.poll_wait_ms,
            fetch_wait_ms=self.config.poll_wait_ms,
            fetch_bytes_max=self.config.fetch_bytes_max,
        )
        member = MemberProcess(
            config,
            history=self.history,
            clock=self.clock,
            log_path=self.log_dir / f"{process}.log",
            on_problem=self.problem,
        )
        member.start()
        slot.current = member
        slot.restart_at_s = None

    def start(self) -> None:
        with self._lock:
            for slot in self.slots:
                self._spawn(slot)
        self._watcher.start()

    def assigned(self) -> bool:
        """Every group's live members together own every partition (as they last said)."""
        wanted = set(range(self.config.partitions))
        with self._lock:
            owned: dict[str, set[int]] = {g: set() for g in self.groups}
            for slot in self.slots:
                if slot.current is not None:
                    owned[slot.group].update(slot.current.recorder.partitions)
        return all(partitions == wanted for partitions in owned.values())

    def wait_assigned(self, timeout_s: float) -> bool:
        deadline_s = time.monotonic() + timeout_s
        # Bound: the deadline.
        while time.monotonic() < deadline_s:
            if self.assigned():
                return True
            time.sleep(DRAIN_POLL_S)
        return self.assigned()

    def crash_one(self) -> str | None:
        """SIGKILL one live member and schedule its restart; the process name, or None when
        no member is up. The groups take turns (both commit modes see crashes alike); within
        the group a seeded choice, a group with no member down first."""
        with self._lock:
            live = [s for s in self.slots if s.current is not None]
            if not live:
                return None
            turn = self.figures.crashes % self.config.groups
            down_groups = {s.group for s in self.slots if s.current is None}
            preferred = (
                [s for s in live if s.group_index == turn and s.group not in down_groups]
                or [s for s in live if s.group not in down_groups]
                or live
            )
            slot = self.rng.choice(preferred)
            member = slot.current
            assert member is not None
            member.crash()
            self._retired.append(member)
            slot.current = None
            slot.restart_at_s = time.monotonic() + self.rng.uniform(*RESTART_DELAY_S_RANGE)
            self.figures.crashes += 1
            return member.process

    def restart_due(self, *, now_s: float | None = None) -> None:
        """Start every member whose restart is due (all of them with `now_s` = inf)."""
        now = time.monotonic() if now_s is None else now_s
        with self._lock:
            for slot in self.slots:
                if slot.current is None and slot.restart_at_s is not None:
                    if slot.restart_at_s > now:
                        continue
                    mode = self._modes.pop() if self._modes else self.rng.choice(["same", "new"])
                    if mode == "new":
                        slot.instance_serial += 1
                        self.figures.restarts_new_instance += 1
                    else:
                        self.figures.restarts_same_instance += 1
                    self._spawn(slot)

    def start_chaos(self, faults: Callable[[], list[FaultWindow]]) -> None:
        """Crash and restart members during every fault `faults()` shows (the nemesis's)."""
        self._chaos = MemberChaos(self, faults)
        self._chaos.start()

    def stop_chaos(self) -> None:
        """No more crashes; every member that is down starts again now."""
        if self._chaos is not None:
            self._chaos.stop()
        self.restart_due(now_s=float("inf"))

    # -- drain and stop ---------------------------------------------------------------------

    def committed(self) -> dict[str, dict[int, int]]:
        """The latest committed offsets the watcher read, per group."""
        return self._watcher.latest()

    def drain(self, high_watermarks: dict[int, int], timeout_s: float) -> str | None:
        """Until every group committed up to `high_watermarks` on every partition (read by
        the watcher after this call began). None when drained, else what was missing."""
        since_ms = self.clock.now_ms()
        deadline_s = time.monotonic() + timeout_s
        missing = "no read of the committed offsets yet"
        # Bound: the deadline.
        while time.monotonic() < deadline_s:
            reads = self._watcher.latest(since_ms=since_ms)
            behind = {
                group: {
                    p: (reads.get(group, {}).get(p, -1), hw)
                    for p, hw in sorted(high_watermarks.items())
                    if max(0, reads.get(group, {}).get(p, -1)) < hw
                }
                for group in self.groups
            }
            behind = {g: b for g, b in behind.items() if b or g not in reads}
            if not behind:
                return None
            missing = "; ".join(
                f"{g}: " + (", ".join(f"p{p} {c}/{hw}" for p, (c, hw) in b.items()) or "unread")
                for g, b in behind.items()
            )
            time.sleep(DRAIN_POLL_S)
        return f"committed/high watermark still behind: {missing}"

    def stop(self) -> None:
        """Close every member (commit, leave; bounded), read the offsets one last time, stop
        the watcher."""
        with self._lock:
            members = [s.current for s in self.slots if s.current is not None]
            for slot in self.slots:
                slot.current = None
        for member in members:
            member.request_stop()
        deadline_s = time.monotonic() + MEMBER_STOP_TIMEOUT_S
        for member in members:
            member.wait_stopped(max(0.1, deadline_s - time.monotonic()))
        self._retired.extend(members)
        self._watcher.stop()
        self._watcher.read_all()

    def close(self) -> None:
        """Kill whatever is left, by PID; idempotent (every failure path calls it)."""
        if self._chaos is not None:
            self._chaos.stop()
        self._watcher.stop()
        with self._lock:
            members = [s.current for s in self.slots if s.current is not None]
            for slot in self.slots:
                slot.current = None
        for member in [*members, *self._retired]:
            member.kill()
        self._watcher.close()


class MemberChaos:
    """Crashes a member during every fault and restarts it later (module docstring). One
    daemon thread; `stop` joins it."""

    def __init__(self, workload: GroupWorkload, faults: Callable[[], list[FaultWindow]]) -> None:
        self.workload = workload
        self.faults = faults
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="member-chaos", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=MEMBER_STOP_TIMEOUT_S)

    def _run(self) -> None:
        workload = self.workload
        seen = 0
        crashes_due: list[tuple[float, FaultWindow]] = []
        try:
            # Bound: until stop(); each pass at most a few kills and starts.
            while not self._stopping.wait(CHAOS_INTERVAL_S):
                faults = self.faults()
                for fault in faults[seen:]:
                    delay_s = workload.rng.uniform(*CRASH_DELAY_S_RANGE)
                    crashes_due.append((time.monotonic() + delay_s, fault))
                seen = len(faults)
                now_s = time.monotonic()
                for due in [d for d in crashes_due if d[0] <= now_s]:
                    crashes_due.remove(due)
                    fault = due[1]
                    crashed = workload.crash_one()
                    if crashed is not None:
                        workload.figures.faults_with_crash.append((fault.kind, fault.start_ms))
                        _log.info("member.crashed_during", fault=fault.kind, process=crashed)
                workload.restart_due()
        except Exception as exc:  # a harness bug: the run must say so
            workload.problem(f"member chaos failed: {type(exc).__name__}: {exc}")
            _log.exception("member_chaos.failed")


class OffsetsWatcher:
    """Reads every group's committed offsets every `offsets_read_interval_ms` and records
    them (`offsets` ops, process "offsets-GROUP"). One daemon thread."""

    def __init__(self, workload: GroupWorkload) -> None:
        self.workload = workload
        self.pool = EndpointPool(workload.bootstrap, service="broker")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="offsets-watcher", daemon=True)
        self._lock = threading.Lock()
        # group -> (invoke time of the read, what it read)
        self._latest: dict[str, tuple[float, dict[int, int]]] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=OFFSETS_CALL_TIMEOUT_MS / 1000 * 4)

    def close(self) -> None:
        self.pool.close()

    def latest(self, *, since_ms: float = -1.0) -> dict[str, dict[int, int]]:
        """The last committed offsets read per group, by reads invoked at or after
        `since_ms` (run clock)."""
        with self._lock:
            return {g: dict(o) for g, (t, o) in self._latest.items() if t >= since_ms}

    def read_all(self) -> None:
        for group in self.workload.groups:
            self.read(group)

    def read(self, group: str) -> None:
        workload = self.workload
        config = workload.config
        history, clock = workload.history, workload.clock
        invoke = history.invoke_offsets(
            f"offsets-{group}", config.topic, group=group, time_ms=clock.now_ms()
        )
        try:
            offsets = read_committed(
                self.pool,
                group,
                config.topic,
                config.partitions,
                timeout_ms=OFFSETS_CALL_TIMEOUT_MS,
            )
        except RaftmqError as exc:
            history.complete(invoke, "fail", time_ms=clock.now_ms(), error=exc.code.name)
            return
        history.complete(invoke, "ok", time_ms=clock.now_ms(), offsets=sorted(offsets.items()))
        with self._lock:
            self._latest[group] = (invoke.time_ms, offsets)

    def _run(self) -> None:
        interval_s = self.workload.config.offsets_read_interval_ms / 1000
        try:
            # Bound: until stop(); each read is bounded by OFFSETS_CALL_TIMEOUT_MS.
            while not self._stopping.wait(interval_s):
                for group in self.workload.groups:
                    self.read(group)
        except Exception as exc:
            self.workload.problem(f"offsets watcher failed: {type(exc).__name__}: {exc}")
            _log.exception("offsets_watcher.failed")
