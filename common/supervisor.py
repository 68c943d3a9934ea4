"""`raftmq up` as a supervisor: a node that exits is reported (how it ended, its log) and
restarted with a bounded backoff; a node that keeps crashing right after it starts is
left down with a clear message, never restarted in a tight loop.

`RestartPolicy` is the pure decision (exit -> restart after a delay, or give up);
`Supervisor` is the thin shell that polls the processes and applies it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from raftmq.local_cluster import ManagedProcess, describe_exit


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    backoff_ms_initial: int = 500
    backoff_ms_max: int = 30_000
    # A run at least this long counts as healthy: the crash count starts again at zero.
    healthy_after_ms: int = 60_000
    # This many consecutive short runs (crashes) and the node is left down.
    crashes_max: int = 5

    def restart_delay_ms(self, crashes: int) -> int:
        """Delay before the restart that follows the `crashes`-th consecutive crash."""
        assert crashes >= 1
        return min(self.backoff_ms_max, self.backoff_ms_initial << (crashes - 1))


@dataclass(slots=True)
class _NodeState:
    # Consecutive runs shorter than healthy_after_ms. Invariant: 0 <= crashes <= crashes_max.
    crashes: int = 0
    # monotonic seconds at which to start the node again; None when none is scheduled.
    restart_at_s: float | None = None
    given_up: bool = False
    restarts: int = 0


@dataclass
class Supervisor:
    """Polls `processes` (call `poll` about every 200 ms from one thread)."""

    processes: Sequence[ManagedProcess]
    report: Callable[[str], None]
    policy: RestartPolicy = RestartPolicy()
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _NodeState] = field(default_factory=dict)

    def poll(self) -> None:
        now_s = self.clock()
        for process in self.processes:
            state = self._states.setdefault(process.name, _NodeState())
            if state.given_up or process.running:
                continue
            if state.restart_at_s is None:
                self._on_exit(process, state, now_s)
            elif now_s >= state.restart_at_s:
                state.restart_at_s = None
                state.restarts += 1
                process.start()
                self.report(f"{process.name} restarted (pid {process.pid}).")

    def _on_exit(self, process: ManagedProcess, state: _NodeState, now_s: float) -> None:
        returncode = process.returncode
        how = describe_exit(returncode if returncode is not None else -1)
        uptime_ms = int((now_s - process.started_s) * 1000)
        state.crashes = 1 if uptime_ms >= self.policy.healthy_after_ms else state.crashes + 1
        if state.crashes >= self.policy.crashes_max:
            state.given_up = True
            self.report(
                f"{process.name} (pid {process.pid}) {how}; it ended within "
                f"{self.policy.healthy_after_ms // 1000} s of starting {state.crashes} times in "
                f"a row, so it is left down. Its log: {process.log_path}. Fix the cause, then "
                "restart `raftmq up`."
            )
            return
        delay_ms = self.policy.restart_delay_ms(state.crashes)
        state.restart_at_s = now_s + delay_ms / 1000
        self.report(
            f"{process.name} (pid {process.pid}) {how} after {uptime_ms / 1000:.1f} s; "
            f"log: {process.log_path}. Restarting it in {delay_ms / 1000:g} s."
        )

    def given_up(self) -> list[str]:
        return [name for name, s in self._states.items() if s.given_up]
