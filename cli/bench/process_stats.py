"""CPU time, CPU waits and resident memory of server processes the bench started, from
/proc.

Linux only: off Linux (or for a process that is gone) every figure is None, and the
scenarios print "-" instead of guessing. CPU is user + system time (/proc/PID/stat
fields 14 and 15, in clock ticks) per wall second: 1.0 is one core busy, and a figure is
printed as a percentage of one core (Kafka's and `top`'s convention).

The run-queue wait is how long a process's main thread (a broker's event loop) was ready
to run but had no CPU (/proc/PID/schedstat, field 2, in ns; the kernel's schedstats), as
a share of the wall time. A node that waits for a CPU answers late however little work
it has: on a machine whose cores are all busy this, not the node's own CPU use, is what
its latency pays for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from raftmq import schedstat

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/PID/stat after the ")" that ends the command name: state is field 3, so utime
# (field 14) and stime (field 15) are at these indexes of the rest.
_UTIME_INDEX = 11
_STIME_INDEX = 12


def parse_stat_cpu_s(stat: str) -> float:
    """utime + stime in seconds from the text of /proc/PID/stat. The command name (field 2)
    may hold spaces and parentheses, so fields are counted from its last ')'."""
    rest = stat[stat.rindex(")") + 1 :].split()
    return (int(rest[_UTIME_INDEX]) + int(rest[_STIME_INDEX])) / _CLOCK_TICKS_PER_S


def parse_status_rss_bytes(status: str) -> int | None:
    """VmRSS from the text of /proc/PID/status, in bytes (None when absent)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            kib = line.split()[1]
            return int(kib) * 1024
    return None


def cpu_s(pid: int) -> float | None:
    """CPU seconds `pid` used so far, or None (no /proc, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return parse_stat_cpu_s(f.read())
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            return parse_status_rss_bytes(f.read())
    except (OSError, ValueError, IndexError):
        return None


def runqueue_wait_s(pid: int) -> float | None:
    """Seconds the main thread of `pid` has waited for a CPU so far, or None (no /proc, no
    schedstats in this kernel, or the process is gone)."""
    return schedstat.read_wait_s(f"/proc/{pid}/schedstat")


def cpu_cores(start_s: float | None, end_s: float | None, wall_s: float) -> float | None:
    """Seconds (of CPU, or of waiting for one) per wall second between two readings; None
    when either is missing or the process went backwards (a restart under the same name)."""
    if start_s is None or end_s is None or wall_s <= 0 or end_s < start_s:
        return None
    return round((end_s - start_s) / wall_s, 4)


@dataclass(frozen=True)
class NodeUsage:
    """Per process name, over an interval: `cores` used, and `runqueue` — the share of the
    wall time its main thread waited for a CPU (0.02: 2 % of the time). None: unknown."""

    cores: dict[str, float | None]
    runqueue: dict[str, float | None]


class ProcessCpuMeter:
    """CPU use and run-queue wait of named processes (name -> PID) over an interval:
    construct, then `stop()` (cores) or `usage()` (both). A process restarted in between
    has another PID and is reported as None."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self._pids = dict(pids)
        self._wall_s = time.perf_counter()
        self._start = {
            name: (cpu_s(pid) if pid is not None else None) for name, pid in pids.items()
        }
        self._start_wait = {
            name: (runqueue_wait_s(pid) if pid is not None else None) for name, pid in pids.items()
        }

    def stop(self) -> dict[str, float | None]:
        """name -> cores used since construction (None where unknown)."""
        return self.usage().cores

    def usage(self) -> NodeUsage:
        """Cores used and run-queue share since construction."""
        wall_s = time.perf_counter() - self._wall_s
        cores: dict[str, float | None] = {}
        runqueue: dict[str, float | None] = {}
        for name, pid in self._pids.items():
            cores[name] = cpu_cores(
                self._start[name], cpu_s(pid) if pid is not None else None, wall_s
            )
            runqueue[name] = cpu_cores(
                self._start_wait[name], runqueue_wait_s(pid) if pid is not None else None, wall_s
            )
        return NodeUsage(cores, runqueue)


def busiest(cores_by_name: Mapping[str, float | None]) -> tuple[str, float] | None:
    """The process that used the most CPU, with its cores; None when nothing is known."""
    known = [(cores, name) for name, cores in cores_by_name.items() if cores is not None]
    if not known:
        return None
    cores, name = max(known)
    return name, cores


def pct(cores: float | None) -> str:
    """0.0312 cores -> '3.1 %' (of one core); None -> '-'."""
    return "-" if cores is None else f"{cores * 100:.1f} %"
