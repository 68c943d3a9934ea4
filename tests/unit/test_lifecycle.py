"""Threads that never die silently, and the stop paths of a node process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from raftmq.lifecycle import CRASHES_MAX, run_guarded


def test_a_crashing_loop_is_restarted_until_it_returns() -> None:
    calls: list[int] = []

    def loop() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("storage error")

    fatal: list[str] = []
    run_guarded(loop, name="t", stopping=threading.Event(), on_fatal=fatal.append)
    assert len(calls) == 3
    assert fatal == []


def test_a_loop_that_keeps_crashing_ends_the_process() -> None:
    def loop() -> None:
        raise RuntimeError("corrupt batch")

    fatal: list[str] = []
    started = time.monotonic()
    run_guarded(loop, name="replica-fetcher-2", stopping=threading.Event(), on_fatal=fatal.append)
    assert len(fatal) == 1
    assert "replica-fetcher-2" in fatal[0] and "corrupt batch" in fatal[0]
    assert f"crashed {CRASHES_MAX + 1} times" in fatal[0]
    # The backoff doubles from 0.1 s: the five waits take about 3 s, never a tight loop.
    assert time.monotonic() - started >= 3.0


def test_stopping_ends_the_restarts() -> None:
    stopping = threading.Event()
    calls: list[int] = []

    def loop() -> None:
        calls.append(1)
        stopping.set()
        raise RuntimeError("boom")

    fatal: list[str] = []
    run_guarded(loop, name="t", stopping=stopping, on_fatal=fatal.append)
    assert calls == [1] and fatal == []


_NODE = """
import os, sys, time
from raftmq.log import configure_logging
configure_logging(json=True)  # to stderr, as nodes log
from raftmq.lifecycle import NodeLifecycle
lifecycle = NodeLifecycle()
lifecycle.watch_launcher()
print("ready", flush=True)
stopped = lifecycle.stopping.wait(30)
print("stopped" if stopped else "timeout", lifecycle.reason, flush=True)
"""

_LAUNCHER = """
import os, subprocess, sys, time
r, w = os.pipe()
node = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=dict(os.environ, RAFTMQ_PARENT_FD=str(r)),
                        pass_fds=(r,), stdout=subprocess.PIPE, text=True)
print(node.pid, flush=True)
print(node.stdout.readline().strip(), flush=True)
time.sleep(60)
"""


def test_a_node_stops_when_its_launcher_is_killed() -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, _NODE], stdout=subprocess.PIPE, text=True
    )
    node_pid = -1
    try:
        assert launcher.stdout is not None
        node_pid = int(launcher.stdout.readline())
        assert launcher.stdout.readline().strip() == "ready"
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(node_pid):
            time.sleep(0.05)
        assert not _alive(node_pid), "the node outlived its launcher"
    finally:
        launcher.kill()
        launcher.wait(timeout=10)
        if launcher.stdout is not None:
            launcher.stdout.close()
        if node_pid > 0 and _alive(node_pid):
            subprocess.run(["kill", "-9", str(node_pid)], check=False)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
