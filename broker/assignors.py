"""Server-side partition assignors (KIP-848): the coordinator computes every member's
target from the members' subscriptions and the topics' partition counts.

- `range`: per topic, the members subscribed to it (by member id) get contiguous ranges,
  the first ones one more when it does not divide (Kafka's RangeAssignor).
- `uniform` (the default): balanced over all partitions and *sticky*: a member keeps the
  partitions of its previous target while it stays within its share, so a rebalance moves
  as few partitions as possible (Kafka's UniformAssignor, homogeneous or not).

Pure and deterministic: the same inputs give the same assignment on every coordinator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

TopicPartition = tuple[str, int]
ASSIGNORS = ("uniform", "range")


def assign(
    assignor: str,
    subscriptions: Mapping[str, frozenset[str]],
    partition_counts: Mapping[str, int],
    previous: Mapping[str, frozenset[TopicPartition]],
) -> dict[str, frozenset[TopicPartition]]:
    """member id -> its target. `subscriptions`: member -> the existing topics it
    subscribes to; `partition_counts`: topic -> partitions; `previous`: the last target."""
    assert assignor in ASSIGNORS, assignor
    if assignor == "range":
        return _range(subscriptions, partition_counts)
    return _uniform(subscriptions, partition_counts, previous)


def _range(
    subscriptions: Mapping[str, frozenset[str]], partition_counts: Mapping[str, int]
) -> dict[str, frozenset[TopicPartition]]:
    result: dict[str, set[TopicPartition]] = {m: set() for m in subscriptions}
    topics = sorted({t for ts in subscriptions.values() for t in ts if t in partition_counts})
    for topic in topics:
        members = sorted(m for m, ts in subscriptions.items() if topic in ts)
        count = partition_counts[topic]
        per_member, extra = divmod(count, len(members))
        start = 0
        for i, member in enumerate(members):
            size = per_member + (1 if i < extra else 0)
            result[member].update((topic, p) for p in range(start, start + size))
            start += size
    return {m: frozenset(ps) for m, ps in result.items()}


def _uniform(
    subscriptions: Mapping[str, frozenset[str]],
    partition_counts: Mapping[str, int],
    previous: Mapping[str, frozenset[TopicPartition]],
) -> dict[str, frozenset[TopicPartition]]:
    members = sorted(subscriptions)
    if not members:
        return {}
    # Each partition, and the members that may take it.
    eligible: dict[TopicPartition, list[str]] = {}
    for topic, count in sorted(partition_counts.items()):
        subscribers = [m for m in members if topic in subscriptions[m]]
        if subscribers:
            for p in range(count):
                eligible[(topic, p)] = subscribers
    # A member's share: what it would get if every partition were split evenly among the
    # members that may take it (rounded up), so that no member is starved.
    share: dict[str, float] = dict.fromkeys(members, 0.0)
    for subscribers in eligible.values():
        for m in subscribers:
            share[m] += 1 / len(subscribers)
    quota = {m: math.ceil(share[m] - 1e-9) for m in members}
    result: dict[str, set[TopicPartition]] = {m: set() for m in members}
    taken: set[TopicPartition] = set()
    # Sticky: keep previous partitions within the quota (in partition order).
    for m in members:
        for tp in sorted(previous.get(m, frozenset())):
            if (
                tp in eligible
                and m in eligible[tp]
                and tp not in taken
                and len(result[m]) < quota[m]
            ):
                result[m].add(tp)
                taken.add(tp)
    # The rest: each to the eligible member with the fewest, ties by member id. Partitions
    # with the fewest eligible members first, so that constrained ones find room.
    pending = sorted(
        (tp for tp in eligible if tp not in taken), key=lambda tp: (len(eligible[tp]), tp)
    )
    for tp in pending:
        member = min(eligible[tp], key=lambda m: (len(result[m]), m))
        result[member].add(tp)
    # Rebalance the sticky overhang: a member two above another eligible member gives one.
    _even_out(result, eligible)
    return {m: frozenset(ps) for m, ps in result.items()}


def _even_out(
    result: dict[str, set[TopicPartition]], eligible: Mapping[TopicPartition, list[str]]
) -> None:
    # Bound: every move lowers the sum of squares of the counts, which is finite.
    moved = True
    while moved:
        moved = False
        for giver in sorted(result, key=lambda m: (-len(result[m]), m)):
            for tp in sorted(result[giver]):
                taker = min(eligible[tp], key=lambda m: (len(result[m]), m))
                if len(result[taker]) + 1 < len(result[giver]):
                    result[giver].discard(tp)
                    result[taker].add(tp)
                    moved = True
                    break
            if moved:
                break
