"""The kernel's scheduler statistics of one thread (Linux `/proc/.../schedstat`): how long
it ran and how long it was ready to run but waited for a CPU (the run queue).

A process's main thread: `/proc/PID/schedstat`; any thread of this process:
`/proc/self/task/TID/schedstat`. Off Linux, or in a kernel without schedstats, or for a
thread that is gone, the readings are None.
"""

from __future__ import annotations


def parse_wait_s(schedstat: str) -> float:
    """Run-queue wait in seconds from a schedstat file's text ("run_ns wait_ns
    timeslices")."""
    return int(schedstat.split()[1]) / 1e9


def read_wait_s(path: str) -> float | None:
    """The run-queue wait in seconds so far of the thread whose schedstat is at `path`."""
    try:
        with open(path, encoding="ascii") as f:
            return parse_wait_s(f.read())
    except (OSError, ValueError, IndexError):
        return None
