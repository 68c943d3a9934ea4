"""The broker's event loop monitor: lag from a timer due at a known time, CPU wait from
the kernel's schedstats of the loop's thread."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time

from raftmq import schedstat
from raftmq.broker.broker import event_loop_factory
from raftmq.broker.loop_monitor import CpuWaitMeter, sample_loop_lag


def test_a_blocked_loop_shows_as_lag_of_at_least_the_block() -> None:
    lags: list[float] = []

    async def run() -> None:
        sampler = asyncio.create_task(sample_loop_lag(lags.append, interval_s=0.005))
        await asyncio.sleep(0.02)  # some samples of an idle loop
        time.sleep(0.08)  # a callback that holds the loop for 80 ms
        await asyncio.sleep(0.02)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

    asyncio.run(run())
    assert len(lags) >= 2 and all(lag >= 0.0 for lag in lags)
    # The timer due during the block ran once the block ended, late by what was left of
    # it: at least the block less one sampling interval.
    assert max(lags) >= 0.08 - 0.005


def test_cpu_wait_comes_as_increments_of_this_thread() -> None:
    path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    before_s = schedstat.read_wait_s(path)
    meter = CpuWaitMeter()
    sum(i * i for i in range(200_000))
    first = meter.delta_s()
    time.sleep(0.01)
    second = meter.delta_s()
    after_s = schedstat.read_wait_s(path)
    assert first >= 0.0 and second >= 0.0
    if before_s is None or after_s is None:
        assert first == second == 0.0  # no schedstats here: nothing to count
        return
    # The increments are the kernel's own total, read in between: never more than it grew.
    assert first + second <= after_s - before_s + 1e-9


def test_the_broker_runs_on_uvloop_where_it_is_installed() -> None:
    factory = event_loop_factory()
    if sys.platform == "win32":
        assert factory is None  # not a dependency there: asyncio's own loop
        return
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        loop_module = runner.run(_running_loop_module())
    assert loop_module == "uvloop"


async def _running_loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
