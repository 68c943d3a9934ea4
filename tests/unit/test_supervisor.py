"""`raftmq up`'s supervisor: restart with a bounded backoff, leave a crash-looping node down.

The processes here are stand-ins with the three things the supervisor reads (`running`,
`returncode`, `started_s`) and one it does (`start`); the clock is manual."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from raftmq.local_cluster import ManagedProcess
from raftmq.supervisor import RestartPolicy, Supervisor


@dataclass
class FakeProcess:
    name: str
    clock: list[float]
    running: bool = True
    returncode: int | None = None
    started_s: float = 0.0
    pid: int = 100
    log_path: Path = Path("/logs/x.log")
    starts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.running = True
        self.returncode = None
        self.started_s = self.clock[0]
        self.pid += 1
        self.starts.append(self.clock[0])

    def die(self, returncode: int) -> None:
        self.running = False
        self.returncode = returncode


def make(
    policy: RestartPolicy | None = None,
) -> tuple[Supervisor, FakeProcess, list[float], list[str]]:
    clock = [0.0]
    process = FakeProcess("broker-1", clock)
    reports: list[str] = []
    supervisor = Supervisor(
        [cast(ManagedProcess, cast(Any, process))],
        report=reports.append,
        policy=policy or RestartPolicy(),
        clock=lambda: clock[0],
    )
    return supervisor, process, clock, reports


def test_backoff_doubles_and_is_capped() -> None:
    policy = RestartPolicy(backoff_ms_initial=500, backoff_ms_max=4_000)
    assert [policy.restart_delay_ms(n) for n in range(1, 6)] == [500, 1000, 2000, 4000, 4000]


def test_a_killed_node_is_reported_and_restarted_after_the_backoff() -> None:
    supervisor, process, clock, reports = make()
    clock[0] = 100.0
    process.die(-9)
    supervisor.poll()
    assert "broker-1 (pid 100) was killed by SIGKILL after 100.0 s" in reports[0]
    assert "/logs/x.log" in reports[0] and "Restarting it in 0.5 s" in reports[0]
    clock[0] = 100.4
    supervisor.poll()
    assert process.starts == []  # not before the backoff
    clock[0] = 100.5
    supervisor.poll()
    assert process.starts == [100.5] and process.running
    assert reports[-1] == "broker-1 restarted (pid 101)."


def test_a_crash_looping_node_is_left_down_after_the_limit() -> None:
    supervisor, process, clock, reports = make(RestartPolicy(crashes_max=3))
    for _ in range(10):  # bounded: the supervisor must give up long before this
        clock[0] += 1.0
        if process.running:
            process.die(1)
        supervisor.poll()
        clock[0] += 10.0
        supervisor.poll()
    assert len(process.starts) == 2  # crashes 1 and 2 restart; the 3rd gives up
    assert supervisor.given_up() == ["broker-1"]
    assert "left down" in reports[-1] and "exited with status 1" in reports[-1]


def test_a_long_healthy_run_resets_the_crash_count() -> None:
    supervisor, process, clock, _ = make(RestartPolicy(crashes_max=2, healthy_after_ms=60_000))
    for _ in range(5):
        clock[0] += 120.0  # each run lasts two minutes: healthy
        process.die(-9)
        supervisor.poll()
        clock[0] += 1.0
        supervisor.poll()
    assert len(process.starts) == 5
    assert supervisor.given_up() == []
