"""`raftmq console`: the console's process. Binds its HTTP listener exclusively (a taken
port is `PortInUseError`, an exit with a clear message), serves `console/app.py` until
SIGTERM / SIGINT or until the launcher that started it (`raftmq up`) is gone, then ends
every event stream and closes its cluster clients.
"""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from raftmq.lifecycle import NodeLifecycle
from raftmq.ports import PortInUseError

from .app import ConsoleConfig, make_app
from .backend import ClientBackend

# Open event streams get this long to end when the console stops (each one ends at its
# next wake-up, at most a poll interval away).
SHUTDOWN_TIMEOUT_S = 5.0

_log = structlog.get_logger("raftmq.console")


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    bootstrap: Sequence[str]
    listen: tuple[str, int]
    read_only: bool = False
    # Prometheus endpoints of the nodes (http://HOST:PORT/metrics): rates and disk figures.
    metrics_urls: Sequence[str] = field(default_factory=tuple)


def console_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def run_console(options: ConsoleOptions) -> int:
    """The process's main: returns the exit status. Call from the main thread."""
    lifecycle = NodeLifecycle()
    lifecycle.install_signal_handlers()
    lifecycle.watch_launcher()
    return asyncio.run(_serve(options, lifecycle))


async def _serve(options: ConsoleOptions, lifecycle: NodeLifecycle) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(stop_requested.set)

    lifecycle.on_stop(wake)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lifecycle.request_stop, f"signal {signum.name}")
    host, port = options.listen
    backend = ClientBackend(options.bootstrap, options.metrics_urls)
    app = make_app(
        backend,
        ConsoleConfig(
            read_only=options.read_only,
            listen_host=host,
            listen_port=port,
            metrics=bool(options.metrics_urls),
        ),
    )
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    # SO_REUSEADDR (aiohttp's default) only lets a port in TIME_WAIT be bound again; no
    # SO_REUSEPORT, so a second console on a taken port fails here instead of sharing it.
    site = web.TCPSite(runner, host, port, reuse_port=False)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        if e.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from None
        raise OSError(f"cannot bind the console's listener {host}:{port}: {e}") from e
    _log.info(
        "console.started",
        url=console_url(host, port),
        bootstrap=list(options.bootstrap),
        read_only=options.read_only,
        metrics_urls=len(options.metrics_urls),
    )
    await stop_requested.wait()
    _log.info("console.stopping", reason=lifecycle.reason)
    await runner.cleanup()
    _log.info("console.stopped", exit_code=lifecycle.exit_code)
    return lifecycle.exit_code
