"""How late the broker's event loop runs, and how long its thread waits for a CPU.

Everything a broker does runs on one asyncio loop, so a stall of that loop delays every
request at once: a produce waiting for its acks, a follower's push, a heartbeat. Two
figures tell the stalls and their cause apart:

- **lag**: every `LOOP_LAG_INTERVAL_S` a timer is due; how late the loop ran it is
  observed into a histogram. It is the time the loop spent on other callbacks plus the
  time its thread waited for a CPU.
- **CPU wait**: the time the loop's thread was ready to run but had no CPU (the kernel's
  schedstats, `/proc/self/task/TID/schedstat` field 2; Linux only). When lag rises and this
  rises with it, the machine's other processes took the cores (on a 2-core machine with a
  whole cluster on it, they do); when lag rises alone, the broker's own callbacks did.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from raftmq import schedstat

# A timer due this often: a stall longer than this is always seen whole.
LOOP_LAG_INTERVAL_S = 0.1
LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


async def sample_loop_lag(
    observe: Callable[[float], None], *, interval_s: float = LOOP_LAG_INTERVAL_S
) -> None:
    """Forever (until cancelled): sleep `interval_s`, then `observe` how many seconds
    after its due time the loop woke it."""
    assert interval_s > 0
    loop = asyncio.get_running_loop()
    while True:
        due_s = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        observe(max(0.0, loop.time() - due_s))


class CpuWaitMeter:
    """The run-queue wait of the thread that constructed it, as increments: `delta_s()`
    returns the seconds waited since the previous call (0.0 where the kernel has no
    schedstats). Call it from that same thread."""

    def __init__(self) -> None:
        self._path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._seen_s = schedstat.read_wait_s(self._path)

    def delta_s(self) -> float:
        now_s = schedstat.read_wait_s(self._path)
        if now_s is None or self._seen_s is None or now_s < self._seen_s:
            self._seen_s = now_s
            return 0.0
        delta_s, self._seen_s = now_s - self._seen_s, now_s
        return delta_s
