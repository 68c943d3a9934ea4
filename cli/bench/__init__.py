"""`raftmq bench SCENARIO`: throughput, latency and failover figures, one module each.

- `produce`: messages/s through the `Writer` (async, several calls in flight);
- `consume`: messages/s through `Reader`s, one per partition;
- `latency`: one message in flight, a sync `Writer` call each, and produce -> consume
  through a `Reader`;
- `e2e`: produce -> consume latency at a fixed rate (acks=all), a `Reader` per partition;
- `failover`: SIGKILL of the controller quorum's leader -> the next committed write
  (`--target controller-leader`, the default); of a partition's leader or of an ISR
  follower under a steady writer -> writes resume, nothing acknowledged lost
  (`--target partition-leader|follower`, on a cluster of its own);
- `partitions`: one topic of thousands of partitions: creation time, idle broker CPU and
  RSS, a write to every partition (own cluster);
- `consumers`: many idle long-polling fetches at one broker while producing through it:
  produce latency, ISR shrinks, fencings (own cluster);
- `rebalance`: a consumer group of 10 members on 60 partitions; one member leaves or
  joins -> every partition owned by exactly one member again (own cluster);
- `codec`: the record codec alone, on one core;
- `kafka`: the Kafka listener through confluent-kafka against the gRPC `Writer`/`Reader`,
  produce and consume alternating in one run.

Every figure comes from one CPython client process, which is often the bottleneck itself
(one thread holds the GIL at a time). Each scenario therefore also reports the client's
CPU seconds per wall second and, on Linux, the machine's CPU busy share over the run
(/proc/stat), and says which of the two, if either, was saturated.

Output: the scenario's table on stdout; with `--json`, then one JSON object on the last
line: the whole result, with `scenario` and, where they apply, `msgs_per_s`, `mb_per_s`,
`latency_ms` {`p50`, `p99`, `p999`}, `recovery_ms` {`median`, `max`} and
`false_fencings` (fencings of brokers the bench did not kill). A progress bar
goes to stderr on long runs, when stderr is a terminal or with `--progress`.

Bounds: every loop stops at a count and at a deadline (`RUN_DURATION_S_MAX`, the
`--timeout-ms` of each call); the scenarios with a cluster of their own (`cluster.py`) stop
every process they started, by PID, in a `finally` (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from types import ModuleType

from . import (
    codec,
    consume,
    consumers,
    e2e,
    failover,
    kafka_path,
    latency,
    partitions,
    produce,
    rebalance,
)
from .common import Result

SCENARIOS: dict[str, ModuleType] = {
    "produce": produce,
    "consume": consume,
    "latency": latency,
    "e2e": e2e,
    "failover": failover,
    "partitions": partitions,
    "consumers": consumers,
    "rebalance": rebalance,
    "codec": codec,
    "kafka": kafka_path,
}
MESSAGES_DEFAULT_BY_SCENARIO = {
    "produce": 200_000,
    "consume": 200_000,
    "latency": 5_000,
    "kafka": 200_000,
}

__all__ = ["SCENARIOS", "run_bench"]


def run_bench(args: argparse.Namespace) -> int:
    """Entry point of `raftmq bench SCENARIO`: prints the table (and the JSON line with
    --json); exits 1 when the run hit an error (the figures measured until then are still
    printed)."""
    scenario = SCENARIOS.get(args.mode)
    if scenario is None:
        raise ValueError(f"unknown bench scenario {args.mode!r}")
    # e2e and consumers tell "--messages not given" (then --duration counts) from a value.
    if getattr(args, "messages", None) is None and args.mode in MESSAGES_DEFAULT_BY_SCENARIO:
        args.messages = MESSAGES_DEFAULT_BY_SCENARIO[args.mode]
    run: Callable[[argparse.Namespace], Result] = scenario.run
    render: Callable[[Result], str] = scenario.render
    result = run(args)
    print(render(result), flush=True)
    if args.json:
        print(json.dumps(result), flush=True)
    return 1 if result.get("error") else 0
