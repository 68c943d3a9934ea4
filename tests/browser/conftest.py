"""The browser tier's fixtures: Debian's Chromium driven by Playwright (never a browser
download), and a `raftmq up`-like cluster — LocalCluster with its console process — that
is stopped by PID when the module ends, also on failure."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from raftmq.local_cluster import LocalCluster

CHROMIUM = Path("/usr/bin/chromium")
# Chromium as root in a closed network: no sandbox (root), no GPU, no network of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}
# Where the screenshots go: CONSOLE_SCREENSHOTS=docs/console refreshes the README's (not a
# RAFTMQ_ variable: the servers refuse RAFTMQ_ variables they do not know).
SCREENSHOTS_ENV = "CONSOLE_SCREENSHOTS"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium; `.ci/run` installs it as root)")
    pytest.importorskip("playwright.sync_api", reason="playwright (the dev extras) is missing")
    return CHROMIUM


@pytest.fixture(scope="module")
def console_cluster(
    chromium: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """3 controllers, 3 brokers, metrics and the console, as `raftmq up` runs them."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("browser") / "cluster", metrics=True, console=True
    )
    try:
        cluster.start()
        cluster.wait_ready(90)
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture(scope="module")
def browser_context(chromium: Path) -> Iterator[Any]:
    """One headless Chromium with a fresh profile for the module."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="raftmq-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,  # type: ignore[arg-type]
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get(SCREENSHOTS_ENV)
    path = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
