"""How a node process (controller or broker) stops, and the threads that must never die
silently.

A node stops when
- it gets SIGTERM or SIGINT (a controlled shutdown);
- the launcher that started it is gone (`raftmq up`, the test launcher or the chaos
  harness was killed, maybe with SIGKILL): the launcher hands each node the read end of
  a pipe whose write end only the launcher holds, so EOF on it means the launcher died;
- a background thread hits an error it cannot survive (`fatal`): the node then exits
  non-zero, so that a supervisor restarts it, rather than look healthy and not be.

Every stop path ends in the node's own shutdown sequence; `fatal` and a dead launcher also
arm a hard deadline (`os._exit`) in case that sequence hangs on the broken component.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable

import structlog

# The environment variable that carries the launcher pipe's read end (a file descriptor).
PARENT_FD_ENV = "RAFTMQ_PARENT_FD"
EXIT_FATAL = 70  # EX_SOFTWARE
# After `fatal` or the launcher's death, the shutdown sequence gets this long.
HARD_EXIT_AFTER_S = 15.0
# A guarded thread that crashes this often within CRASH_WINDOW_S ends the process.
CRASHES_MAX = 5
CRASH_WINDOW_S = 60.0
CRASH_BACKOFF_S_MAX = 5.0

_log = structlog.get_logger("raftmq.lifecycle")


class NodeLifecycle:
    """The stop state of one node process. Thread-safe."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        # Set by the first stop request; later ones do not change it.
        self.exit_code = 0
        self.reason = ""
        self._lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from whichever thread requests the stop) once the node is
        asked to stop, e.g. to wake an event loop: `loop.call_soon_threadsafe(...)`."""
        with self._lock:
            if not self.stopping.is_set():
                self._on_stop.append(callback)
                return
        callback()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT request a controlled stop. Call from the main thread."""

        def on_signal(signum: int, frame: object) -> None:
            self.request_stop(f"signal {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def request_stop(self, reason: str, *, exit_code: int = 0) -> None:
        with self._lock:
            if self.stopping.is_set():
                return
            self.reason = reason
            self.exit_code = exit_code
            self.stopping.set()
            callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            callback()
        _log.info("node.stop_requested", reason=reason, exit_code=exit_code)

    def fatal(self, reason: str) -> None:
        """End the process non-zero: an error the node cannot recover from by itself."""
        self._arm_hard_exit(EXIT_FATAL)
        self.request_stop(reason, exit_code=EXIT_FATAL)
        _log.error("node.fatal_error", reason=reason)

    def watch_launcher(self) -> None:
        """If started by a launcher (PARENT_FD_ENV set), stop when that launcher is gone."""
        text = os.environ.get(PARENT_FD_ENV)
        if not text:
            return
        fd = int(text)

        def watch() -> None:
            # Bound: one read that returns only at EOF (the launcher never writes).
            with contextlib.suppress(OSError):
                while os.read(fd, 1):
                    pass
            # Stop first, log last: the launcher's death may have closed our output too.
            self._arm_hard_exit(0)
            self.request_stop("the launcher exited", exit_code=0)

        threading.Thread(target=watch, name="launcher-watch", daemon=True).start()

    def _arm_hard_exit(self, exit_code: int) -> None:
        timer = threading.Timer(HARD_EXIT_AFTER_S, os._exit, args=(exit_code,))
        timer.daemon = True
        timer.start()


def run_guarded(
    target: Callable[[], None],
    *,
    name: str,
    stopping: threading.Event,
    on_fatal: Callable[[str], None],
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> None:
    """Run `target` (a thread's loop) until it returns or `stopping` is set. An unexpected
    exception is logged (`thread.crashed`) and the loop restarted after a backoff; more than
    CRASHES_MAX crashes within CRASH_WINDOW_S call `on_fatal` (the process should end, so
    that its supervisor restarts it) and return. The thread never dies silently."""
    logger = log or _log
    crashes: list[float] = []
    backoff_s = 0.1
    while not stopping.is_set():
        try:
            target()
            return
        except Exception as e:
            now = time.monotonic()
            crashes = [t for t in crashes if now - t < CRASH_WINDOW_S] + [now]
            logger.exception("thread.crashed", thread=name, crashes=len(crashes))
            if len(crashes) > CRASHES_MAX:
                on_fatal(
                    f"thread {name} crashed {len(crashes)} times in {CRASH_WINDOW_S:.0f} s: {e!r}"
                )
                return
        stopping.wait(backoff_s)
        backoff_s = min(CRASH_BACKOFF_S_MAX, backoff_s * 2)


def guarded_thread(
    target: Callable[[], None],
    *,
    name: str,
    stopping: threading.Event,
    on_fatal: Callable[[str], None],
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> threading.Thread:
    """A daemon thread (not started) that runs `target` under `run_guarded`."""
    return threading.Thread(
        target=run_guarded,
        kwargs={
            "target": target,
            "name": name,
            "stopping": stopping,
            "on_fatal": on_fatal,
            "log": log,
        },
        name=name,
        daemon=True,
    )


async def run_guarded_async(
    target: Callable[[], Awaitable[None]],
    *,
    name: str,
    stopping: Callable[[], bool],
    on_fatal: Callable[[str], None],
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> None:
    """`run_guarded` for an asyncio task's loop: an unexpected exception is logged and the
    loop restarted after a backoff; too many crashes call `on_fatal`. Cancellation ends it."""
    logger = log or _log
    crashes: list[float] = []
    backoff_s = 0.1
    while not stopping():
        try:
            await target()
            return
        except Exception as e:
            now = time.monotonic()
            crashes = [t for t in crashes if now - t < CRASH_WINDOW_S] + [now]
            logger.exception("task.crashed", task=name, crashes=len(crashes))
            if len(crashes) > CRASHES_MAX:
                on_fatal(
                    f"task {name} crashed {len(crashes)} times in {CRASH_WINDOW_S:.0f} s: {e!r}"
                )
                return
        await asyncio.sleep(backoff_s)
        backoff_s = min(CRASH_BACKOFF_S_MAX, backoff_s * 2)
