"""`raftmq bench rebalance`'s pure parts: when the members' views count as "every partition
owned by exactly one member again", and its flags."""

from __future__ import annotations

import argparse

import pytest
from raftmq.cli.bench.rebalance import TOPIC, _check, ownership


def _views(*sizes: list[int]) -> list[list[tuple[str, int]]]:
    return [[(TOPIC, p) for p in partitions] for partitions in sizes]


def test_every_partition_once_and_balanced_is_owned() -> None:
    assert ownership(_views([0, 1], [2, 3], [4]), 5) is None
    assert ownership(_views([0, 1, 2], [3]), 4) == "unbalanced: 1..3 partitions per member"
    assert ownership(_views([0, 1], [2]), 4) == "1 partitions unowned, 0 owned twice"
    assert ownership(_views([0, 1], [1, 2]), 3) == "0 partitions unowned, 1 owned twice"
    # Another topic's partitions do not count.
    assert ownership([[(TOPIC, 0), ("other", 1)], [(TOPIC, 1)]], 2) is None


def test_flags_have_the_issues_defaults_and_bounds() -> None:
    args = argparse.Namespace(count=None, members=None, runs=None)
    assert _check(args) == (60, 10, 5)
    with pytest.raises(ValueError, match="--members"):
        _check(argparse.Namespace(count=6, members=1, runs=1))
    with pytest.raises(ValueError, match="--count"):
        _check(argparse.Namespace(count=0, members=3, runs=1))
