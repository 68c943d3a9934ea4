"""Shared fixtures: every cluster a test starts is stopped by PID, also on failure."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import settings
from raftmq.local_cluster import LocalCluster, free_base_port

# No per-example deadline: property tests check behaviour, never speed (a 200 ms deadline
# failed them on a loaded 2-core machine). Tests that set their own settings keep them.
settings.register_profile("raftmq", deadline=None)
settings.load_profile("raftmq")


READY_TIMEOUT_S = 60


@contextmanager
def running_cluster(data_dir: Path, **options: object) -> Iterator[LocalCluster]:
    """A LocalCluster started and ready (60 s bound), stopped by PID when the block ends,
    also on failure: the body of the module-scoped `cluster` fixtures."""
    cluster = LocalCluster(data_dir, **options)  # type: ignore[arg-type]
    try:
        cluster.start()
        cluster.wait_ready(timeout_s=READY_TIMEOUT_S)
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[type[LocalCluster]]:
    started: list[LocalCluster] = []

    class _Tracked(LocalCluster):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("data_dir", tmp_path / f"cluster-{len(started)}")  # type: ignore[arg-type]
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield _Tracked
    for cluster in started:
        cluster.kill_all()


class RaftmqUp:
    """A `raftmq up` process for tests: its output is collected line by line on a thread,
    its nodes' pids are read from the ready banner. Stopped by PID (and its nodes by
    theirs) when the test ends, also on failure."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.base_port = free_base_port()
        self.data_dir = data_dir
        self.env = dict(os.environ, RAFTMQ_BOOTSTRAP=f"127.0.0.1:{self.base_port}")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raftmq.cli.main",
                "up",
                "--data-dir",
                str(data_dir),
                "--base-port",
                str(self.base_port),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, text: str, *, timeout_s: float = 90, after: int = 0) -> str:
        """The first output line (from index `after` on) containing `text`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise AssertionError(f"no line with {text!r}:\n" + "\n".join(self.lines))
                self._changed.wait(min(remaining, 0.5))

    def pids(self) -> dict[str, int]:
        """Node name -> pid, from the latest lines that name them (banner and restarts)."""
        found: dict[str, int] = {}
        for line in self.lines:
            match = re.match(r"\s+(\S+)\s+pid (\d+)$", line) or re.match(
                r"(\S+) restarted \(pid (\d+)\)", line
            )
            if match:
                found[match.group(1)] = int(match.group(2))
        return found

    def stop(self) -> None:
        nodes = self.pids()
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for pid in nodes.values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def pid_alive(pid: int) -> bool:
    """Is `pid` a live (not zombie) process?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def raftmq_up(tmp_path: Path) -> Iterator[type[RaftmqUp]]:
    """Start `raftmq up` processes with `raftmq_up(data_dir, *flags)`; all stopped after."""
    started: list[RaftmqUp] = []

    class _Tracked(RaftmqUp):
        def __init__(self, data_dir: Path | None = None, *extra: str) -> None:
            super().__init__(data_dir or tmp_path / f"up-{len(started)}", *extra)
            started.append(self)

    yield _Tracked
    for up in started:
        up.stop()
