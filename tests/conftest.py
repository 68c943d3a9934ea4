"""Shared fixtures: every cluster a test starts is stopped by PID, also on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from raftmq.local_cluster import LocalCluster


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
