"""The nemesis: a seeded schedule of faults, injected one at a time into a cluster
(`FaultableCluster`, implemented by `raftmq.chaos.cluster.ChaosCluster`),
each healed before the next, plus the measurements of how fast the cluster recovered.

Fault kinds (`FAULT_KINDS`):

- `kill-partition-leader`: SIGKILL the broker leading a random partition; restart it after
  the hold time.
- `kill-controller-leader`: SIGKILL the controller quorum's Raft leader; restart it later.
- `pause-leader`: SIGSTOP the broker leading a random partition; SIGCONT after the hold.
- `partition-leader`: cut the broker leading a random partition off from every other node
  (clients still reach it: a stale leader must not acknowledge anything).
- `partition-majority-minority`: split the nodes in two; the minority side holds one
  controller and one or two brokers (two brokers: the controller majority keeps a single
  broker, so acks=all with min.insync.replicas=2 must stall on both sides).
- `kill-all`: SIGKILL every node, then restart them all.
- `restart`: stop one random node (SIGKILL or SIGTERM, seeded) and start it again.

The two network kinds (`partition-leader`, `partition-majority-minority`:
`NETWORK_FAULT_KINDS`) are only possible with network namespaces; the runner skips them
otherwise and says why.

Determinism: `plan_schedule` is a pure function of (seed, duration, kinds): the same seed
gives the same kinds, hold times, gaps and target seeds. Which node a fault hits depends
on the cluster's state at that moment (who leads what), chosen by a generator seeded from
the step, so a replay hits the same role, not necessarily the same process.

Recovery (both in ms since the fault started, see `FaultWindow`):
- leader: polled by `RecoveryMonitor` until every partition has a live leader and the
  controller quorum has a live leader. "Live" means the metadata names it, it is not
  fenced, and the nemesis is not holding it down (killed, paused or cut off): right after
  a SIGKILL the metadata still names the dead broker until its session expires.
- produce: `fill_produce_recovery`, from the history after the run: until the first ok
  completion of a send invoked after the fault took full effect (a cut of five node pairs
  or six kills take tens of milliseconds, during which sends still succeed), to a partition
  the fault affected (those led by the target broker when it struck; every partition for
  faults that do not target a partition leader).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from raftmq.chaos.history import FaultWindow, Op
from raftmq.v1 import controller_pb2 as pb

_log = structlog.get_logger("raftmq.chaos")

KILL_PARTITION_LEADER = "kill-partition-leader"
KILL_CONTROLLER_LEADER = "kill-controller-leader"
PAUSE_LEADER = "pause-leader"
PARTITION_LEADER = "partition-leader"
PARTITION_MAJORITY_MINORITY = "partition-majority-minority"
KILL_ALL = "kill-all"
RESTART = "restart"

FAULT_KINDS: tuple[str, ...] = (
    KILL_PARTITION_LEADER,
    KILL_CONTROLLER_LEADER,
    PAUSE_LEADER,
    PARTITION_LEADER,
    PARTITION_MAJORITY_MINORITY,
    KILL_ALL,
    RESTART,
)
NETWORK_FAULT_KINDS: frozenset[str] = frozenset({PARTITION_LEADER, PARTITION_MAJORITY_MINORITY})

# How long a fault lasts before it is healed, per kind (seconds, uniform). Long enough to
# outlast the cluster's session and ISR timeouts (3 s in the chaos tuning) about half the
# time, so that both "failover happened" and "it came back first" are exercised.
HOLD_S_RANGE: dict[str, tuple[float, float]] = {
    KILL_PARTITION_LEADER: (2.0, 6.0),
    KILL_CONTROLLER_LEADER: (2.0, 6.0),
    PAUSE_LEADER: (1.5, 6.0),
    PARTITION_LEADER: (3.0, 8.0),
    PARTITION_MAJORITY_MINORITY: (3.0, 8.0),
    KILL_ALL: (1.0, 4.0),
    RESTART: (1.0, 4.0),
}
# Quiet time between the recovery from one fault and the next fault.
GAP_S_RANGE = (1.5, 4.0)
# What planning assumes the recovery after a heal costs (processes restarting on 2 cores);
# the nemesis really waits for recovery, bounded by `RECOVERY_WAIT_S_MAX`.
EXPECTED_RECOVERY_S: dict[str, float] = {KILL_ALL: 8.0, KILL_PARTITION_LEADER: 3.0}
EXPECTED_RECOVERY_S_DEFAULT = 1.5
RECOVERY_WAIT_S_MAX = 40.0
# How long the nemesis looks for a target (e.g. a partition with a live leader) before it
# skips the step.
TARGET_WAIT_S_MAX = 15.0
STEPS_MAX = 10_000
MONITOR_INTERVAL_S = 0.1


class FaultKindError(ValueError):
    """An unknown fault kind on the command line."""


def parse_fault_kinds(text: str) -> tuple[str, ...]:
    """`all` or a comma-separated list of `FAULT_KINDS` -> the kinds, in `FAULT_KINDS` order."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words or words == ["all"]:
        return FAULT_KINDS
    unknown = [w for w in words if w not in FAULT_KINDS]
    if unknown:
        raise FaultKindError(
            f"unknown fault kind(s) {', '.join(unknown)}; known: all, {', '.join(FAULT_KINDS)}"
        )
    return tuple(k for k in FAULT_KINDS if k in words)


@dataclass(frozen=True, slots=True)
class FaultStep:
    """One planned fault: wait `gap_s`, inject `kind`, hold it `hold_s`, heal."""

    kind: str
    gap_s: float
    hold_s: float
    # Seeds the choice of targets when the step runs (see the module docstring).
    target_seed: int


def plan_schedule(seed: int, duration_s: float, kinds: Sequence[str]) -> list[FaultStep]:
    """The faults of a run of about `duration_s` seconds. Pure.

    Every kind of `kinds` comes once first (in a seeded order), then kinds are drawn at
    random, as long as the planned time (gaps + holds + expected recoveries) fits. A
    duration too short for every kind plans only those that fit: the caller can compare.
    """
    assert duration_s >= 0
    assert all(k in FAULT_KINDS for k in kinds)
    if not kinds:
        return []
    rng = random.Random(seed)
    first_round = list(kinds)
    rng.shuffle(first_round)
    steps: list[FaultStep] = []
    planned_s = 0.0
    for index in range(STEPS_MAX):
        kind = first_round[index] if index < len(first_round) else rng.choice(list(kinds))
        low, high = HOLD_S_RANGE[kind]
        step = FaultStep(
            kind=kind,
            gap_s=round(rng.uniform(*GAP_S_RANGE), 3),
            hold_s=round(rng.uniform(low, high), 3),
            target_seed=rng.randrange(2**32),
        )
        cost_s = (
            step.gap_s + step.hold_s + EXPECTED_RECOVERY_S.get(kind, EXPECTED_RECOVERY_S_DEFAULT)
        )
        if planned_s + cost_s > duration_s:
            break
        steps.append(step)
        planned_s += cost_s
    return steps


class RunClock:
    """Milliseconds since the run started, from the monotonic clock: the one time base of
    the history, the fault windows and the recovery measurements. `time.monotonic` is
    CLOCK_MONOTONIC, shared by every process of the machine: a group member process keeps
    the same clock with `RunClock(start_s=...)` of the runner's `start_s`."""

    def __init__(self, *, start_s: float | None = None) -> None:
        self._start_s = time.monotonic() if start_s is None else start_s

    @property
    def start_s(self) -> float:
        """The `time.monotonic()` the run started at."""
        return self._start_s

    def now_ms(self) -> float:
        return round((time.monotonic() - self._start_s) * 1000.0, 3)


class FaultableCluster(Protocol):
    """What the nemesis needs from a cluster: its nodes, its metadata and the faults.
    `raftmq.chaos.cluster.ChaosCluster` is the real one; tests use an in-memory fake."""

    controller_names: list[str]
    broker_names: list[str]

    @property
    def node_names(self) -> list[str]: ...

    @property
    def paused(self) -> frozenset[str]: ...

    def describe(self) -> pb.DescribeClusterResponse | None:
        """The freshest metadata the controllers give, or None when none answers."""
        ...

    def running(self, name: str) -> bool: ...

    def kill(self, name: str) -> None: ...

    def stop(self, name: str) -> None: ...

    def restart(self, name: str) -> None:
        """Start `name` if it is not running."""
        ...

    def pause(self, name: str) -> None: ...

    def resume(self, name: str) -> None: ...

    def cut(self, group_a: Iterable[str], group_b: Iterable[str]) -> None: ...

    def heal_network(self) -> None: ...


def broker_name(broker_id: int) -> str:
    return f"broker-{broker_id}"


def controller_name(controller_id: int) -> str:
    return f"controller-{controller_id}"


# --- pure views of the cluster metadata --------------------------------------------------


def partition_leaders(status: pb.DescribeClusterResponse, topic: str) -> dict[int, int]:
    """partition -> leader broker id (-1: none) of `topic` in a DescribeCluster answer."""
    for t in status.topics:
        if t.name == topic:
            return {p.partition: p.leader for p in t.partitions}
    return {}


def live_leaders(
    status: pb.DescribeClusterResponse, topic: str, down: frozenset[str]
) -> dict[int, int]:
    """The partitions of `topic` whose leader is live: named, unfenced, not held down."""
    unfenced = {b.id for b in status.brokers if not b.fenced}
    return {
        partition: leader
        for partition, leader in partition_leaders(status, topic).items()
        if leader >= 0 and leader in unfenced and broker_name(leader) not in down
    }


def cluster_led(status: pb.DescribeClusterResponse, topic: str, down: frozenset[str]) -> bool:
    """Every partition of `topic` and the controller quorum have a live leader."""
    leaders = partition_leaders(status, topic)
    controller = status.controller.leader_id
    return (
        bool(leaders)
        and len(live_leaders(status, topic, down)) == len(leaders)
        and controller >= 0
        and controller_name(controller) not in down
    )


# --- produce recovery, from the history --------------------------------------------------


@dataclass(slots=True)
class InjectedFault:
    """A fault as injected: its window (shared with the report), which partitions it
    affected (None: all) and when its injection had completed (ms since run start)."""

    window: FaultWindow
    affected_partitions: frozenset[int] | None
    # Invariant: None or >= window.start_ms.
    effective_ms: float | None = None


def produce_recovery_ms(
    ops: Sequence[Op],
    start_ms: float,
    partitions: frozenset[int] | None,
    *,
    invoked_from_ms: float | None = None,
) -> float | None:
    """ms from `start_ms` until the first ok completion of a send invoked at or after
    `invoked_from_ms` (default `start_ms`), to one of `partitions` (None: any). None if
    there is no such send. Pure."""
    invoked_from_ms = start_ms if invoked_from_ms is None else invoked_from_ms
    invoked_after: set[str] = set()
    for op in ops:
        if op.f != "send":
            continue
        if op.type == "invoke":
            if op.time_ms >= invoked_from_ms and (partitions is None or op.partition in partitions):
                invoked_after.add(op.value)
        elif op.type == "ok" and op.value in invoked_after:
            # Ops are in real-time order: the first one found is the earliest.
            return round(op.time_ms - start_ms, 3)
    return None


def fill_produce_recovery(faults: Sequence[InjectedFault], ops: Sequence[Op]) -> None:
    """Set `recovered_produce_ms` of every fault window (None where produce never recovered)."""
    for fault in faults:
        fault.window.recovered_produce_ms = produce_recovery_ms(
            ops,
            fault.window.start_ms,
            fault.affected_partitions,
            invoked_from_ms=fault.effective_ms,
        )


# --- the executor --------------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    # Node name -> why a fault holds it down now ("killed", "stopped", "paused", "cut off").
    down: dict[str, str] = field(default_factory=dict)
    faults: list[InjectedFault] = field(default_factory=list)
    # Brokers started again after a kill or stop -> their incarnation id before it. Until
    # the metadata shows a new incarnation, unfenced, a restarted broker counts as down
    # too: the metadata names the dead incarnation as leader until its session expires,
    # and the new process serves nothing before it registered. Independent of `down`: a
    # later fault may hit a broker that is still restarting.
    restarting: dict[str, str] = field(default_factory=dict)
    # Broker name -> the incarnation id the metadata showed last.
    incarnations: dict[str, str] = field(default_factory=dict)


class Nemesis:
    """Runs a planned schedule against a cluster, one fault at a time.

    `run` is called on one thread (the runner's); `down_nodes`, `faults` and
    `mark_leader_recovered` are thread-safe (the recovery monitor calls them).
    """

    def __init__(
        self,
        cluster: FaultableCluster,
        steps: Sequence[FaultStep],
        *,
        topic: str,
        clock: RunClock,
        stopping: threading.Event,
    ) -> None:
        self.cluster = cluster
        self.steps = list(steps)
        self.topic = topic
        self.clock = clock
        self.stopping = stopping
        self._lock = threading.Lock()
        self._held = _Held()
        self._cut_nodes: set[str] = set()
        # Steps skipped because no target was found in time (kind, reason).
        self.skipped: list[tuple[str, str]] = []

    # --- shared state ---------------------------------------------------------------------

    def down_nodes(self) -> frozenset[str]:
        with self._lock:
            return self._down_locked()

    def _down_locked(self) -> frozenset[str]:
        return frozenset(self._held.down) | frozenset(self._held.restarting)

    def faults(self) -> list[InjectedFault]:
        with self._lock:
            return list(self._held.faults)

    def leader_unrecovered(self) -> bool:
        with self._lock:
            return any(f.window.recovered_leader_ms is None for f in self._held.faults)

    def snapshot_for_monitor(self) -> tuple[list[InjectedFault], frozenset[str]]:
        """The faults still waiting for leader recovery and the nodes held down, taken
        together so that a fault injected later is never credited with this observation."""
        with self._lock:
            pending = [f for f in self._held.faults if f.window.recovered_leader_ms is None]
            return pending, self._down_locked()

    def observe(self, status: pb.DescribeClusterResponse) -> frozenset[str]:
        """Learn from fresh metadata: remember each broker's incarnation, and stop holding
        down a restarted broker once a new incarnation of it registered and is unfenced.
        Returns the nodes held down now. Thread-safe (the monitor and the nemesis call it)."""
        with self._lock:
            held = self._held
            for broker in status.brokers:
                name = broker_name(broker.id)
                old = held.restarting.get(name)
                if old is not None and broker.incarnation_id != old and not broker.fenced:
                    del held.restarting[name]
                    _log.info("broker.came_back", broker=name)
                held.incarnations[name] = broker.incarnation_id
            return self._down_locked()

    def restarting(self) -> bool:
        with self._lock:
            return bool(self._held.restarting)

    def mark_leader_recovered(self, faults: Sequence[InjectedFault], now_ms: float) -> None:
        with self._lock:
            for fault in faults:
                if fault.window.recovered_leader_ms is None:
                    fault.window.recovered_leader_ms = round(
                        max(0.0, now_ms - fault.window.start_ms), 3
                    )
                    _log.info(
                        "fault.leader_recovered",
                        kind=fault.window.kind,
                        recovered_leader_ms=fault.window.recovered_leader_ms,
                    )

    def _begin(
        self,
        kind: str,
        targets: Sequence[str],
        down: dict[str, str],
        affected: frozenset[int] | None,
    ) -> InjectedFault:
        # The window opens and the nodes count as down *before* the fault acts, so the
        # monitor never sees the fault's effect without its window.
        with self._lock:
            fault = InjectedFault(
                FaultWindow(kind=kind, start_ms=self.clock.now_ms(), targets=tuple(targets)),
                affected,
            )
            self._held.faults.append(fault)
            self._held.down.update(down)
        _log.info("fault.injected", kind=kind, targets=list(targets), affected=affected)
        return fault

    def _took_effect(self, fault: InjectedFault) -> InjectedFault:
        with self._lock:
            fault.effective_ms = self.clock.now_ms()
        return fault

    def _end(self, fault: InjectedFault, healed: Sequence[str]) -> None:
        with self._lock:
            held = self._held
            if fault.window.end_ms is None:
                fault.window.end_ms = self.clock.now_ms()
            for name in healed:
                reason = held.down.pop(name, None)
                if reason in ("killed", "stopped") and name in self.cluster.broker_names:
                    # The incarnation the metadata showed last is the one that died ("" if
                    # none was ever seen: then any incarnation counts as new).
                    held.restarting[name] = held.incarnations.get(name, "")
        _log.info("fault.healed", kind=fault.window.kind, targets=list(fault.window.targets))

    # --- the schedule ---------------------------------------------------------------------

    def run(self) -> None:
        """Execute every step (stops early when `stopping` is set). Heals each fault before
        the next; `heal_all` must still be called afterwards (also on failure)."""
        for step in self.steps:
            if self.stopping.wait(step.gap_s):
                return
            rng = random.Random(step.target_seed)
            fault = self._inject(step, rng)
            if fault is None:
                continue
            self._took_effect(fault)
            if self.stopping.wait(step.hold_s):
                return
            self._heal(fault)
            self._wait_recovered()

    def _wait_recovered(self) -> None:
        deadline_s = time.monotonic() + RECOVERY_WAIT_S_MAX
        # Bound: RECOVERY_WAIT_S_MAX / MONITOR_INTERVAL_S polls.
        while self.leader_unrecovered() and time.monotonic() < deadline_s:
            if self.stopping.wait(MONITOR_INTERVAL_S):
                return
        if self.leader_unrecovered():
            _log.warning("fault.recovery_timed_out", wait_s=RECOVERY_WAIT_S_MAX)

    def _status(self) -> pb.DescribeClusterResponse | None:
        status = self.cluster.describe()
        if status is not None:
            self.observe(status)
        return status

    def _wait_for_target(
        self, kind: str, choose: Callable[[pb.DescribeClusterResponse], bool]
    ) -> bool:
        """Poll the metadata until `choose` found a target (True), bounded."""
        deadline_s = time.monotonic() + TARGET_WAIT_S_MAX
        while time.monotonic() < deadline_s and not self.stopping.is_set():
            status = self._status()
            if status is not None and choose(status):
                return True
            self.stopping.wait(0.2)
        reason = f"no target found within {TARGET_WAIT_S_MAX:.0f} s"
        self.skipped.append((kind, reason))
        _log.warning("fault.skipped", kind=kind, reason=reason)
        return False

    def _choose_partition_leader(
        self, kind: str, rng: random.Random
    ) -> tuple[str, frozenset[int]] | None:
        """A broker leading a random partition (live, running) and every partition it leads."""
        found: list[tuple[str, frozenset[int]]] = []

        def choose(status: pb.DescribeClusterResponse) -> bool:
            down = self.down_nodes()
            leaders = live_leaders(status, self.topic, down)
            candidates = sorted(
                (p, b) for p, b in leaders.items() if self.cluster.running(broker_name(b))
            )
            if not candidates:
                return False
            _, broker = rng.choice(candidates)
            led = frozenset(
                p for p, b in partition_leaders(status, self.topic).items() if b == broker
            )
            found.append((broker_name(broker), led))
            return True

        return found[0] if self._wait_for_target(kind, choose) else None

    def _inject(self, step: FaultStep, rng: random.Random) -> InjectedFault | None:
        cluster = self.cluster
        kind = step.kind
        if kind in (KILL_PARTITION_LEADER, PAUSE_LEADER, PARTITION_LEADER):
            chosen = self._choose_partition_leader(kind, rng)
            if chosen is None:
                return None
            broker, led = chosen
            if kind == KILL_PARTITION_LEADER:
                fault = self._begin(kind, [broker], {broker: "killed"}, led)
                cluster.kill(broker)
            elif kind == PAUSE_LEADER:
                fault = self._begin(kind, [broker], {broker: "paused"}, led)
                cluster.pause(broker)
            else:
                others = [n for n in cluster.node_names if n != broker]
                fault = self._begin(kind, [broker], {broker: "cut off"}, led)
                cluster.cut([broker], others)
            return fault
        if kind == KILL_CONTROLLER_LEADER:
            leader: list[str] = []

            def choose(status: pb.DescribeClusterResponse) -> bool:
                leader_id = status.controller.leader_id
                name = controller_name(leader_id)
                if leader_id < 0 or name in self.down_nodes() or not cluster.running(name):
                    return False
                leader.append(name)
                return True

            if not self._wait_for_target(kind, choose):
                return None
            fault = self._begin(kind, leader, {leader[0]: "killed"}, None)
            cluster.kill(leader[0])
            return fault
        if kind == PARTITION_MAJORITY_MINORITY:
            return self._inject_split(rng)
        if kind == KILL_ALL:
            self._status()  # the incarnations that die here
            names = cluster.node_names
            fault = self._begin(kind, names, dict.fromkeys(names, "killed"), None)
            for name in names:
                cluster.kill(name)
            return fault
        assert kind == RESTART, kind
        name = rng.choice(cluster.node_names)
        graceful = rng.random() < 0.5
        status = self._status()
        restarted_led: frozenset[int] | None = None
        if status is not None and name in cluster.broker_names:
            restarted_led = frozenset(
                p
                for p, b in partition_leaders(status, self.topic).items()
                if broker_name(b) == name
            )
        fault = self._begin(
            kind, [name], {name: "stopped" if graceful else "killed"}, restarted_led or None
        )
        if graceful:
            cluster.stop(name)
        else:
            cluster.kill(name)
        return fault

    def _inject_split(self, rng: random.Random) -> InjectedFault:
        cluster = self.cluster
        status = self._status()
        controllers = list(cluster.controller_names)
        brokers = list(cluster.broker_names)
        # Half the time the minority holds the current leaders: that is where a stale
        # leader can do harm.
        leader_controller = (
            controller_name(status.controller.leader_id)
            if status is not None and status.controller.leader_id > 0
            else None
        )
        if leader_controller in controllers and rng.random() < 0.5:
            minority_controller = leader_controller
        else:
            minority_controller = rng.choice(controllers)
        leaders = sorted(set(partition_leaders(status, self.topic).values())) if status else []
        leader_brokers = [broker_name(b) for b in leaders if b >= 0]
        broker_count = 1 if rng.random() < 0.5 else 2
        first = (
            rng.choice(leader_brokers)
            if leader_brokers and rng.random() < 0.5
            else rng.choice(brokers)
        )
        minority_brokers = [first]
        if broker_count == 2:
            minority_brokers.append(rng.choice([b for b in brokers if b != first]))
        minority = [minority_controller, *sorted(minority_brokers)]
        majority = [n for n in cluster.node_names if n not in minority]
        led: frozenset[int] | None = None
        if status is not None:
            led = frozenset(
                p
                for p, b in partition_leaders(status, self.topic).items()
                if broker_name(b) in minority_brokers
            )
        fault = self._begin(
            PARTITION_MAJORITY_MINORITY, minority, dict.fromkeys(minority, "cut off"), led or None
        )
        cluster.cut(minority, majority)
        return fault

    def _heal(self, fault: InjectedFault) -> None:
        cluster = self.cluster
        kind = fault.window.kind
        targets = list(fault.window.targets)
        if kind == PAUSE_LEADER:
            for name in targets:
                cluster.resume(name)
        elif kind in NETWORK_FAULT_KINDS:
            cluster.heal_network()
        else:
            # Controllers first: restarted brokers register with them.
            for name in sorted(targets, key=lambda n: not n.startswith("controller")):
                cluster.restart(name)
        self._end(fault, targets)

    def heal_all(self) -> None:
        """Undo every fault: continue paused nodes, heal the network, start every node that
        is not running, close every open window. Idempotent; call it on every path."""
        cluster = self.cluster
        for name in cluster.paused:
            cluster.resume(name)
        cluster.heal_network()
        for name in sorted(cluster.node_names, key=lambda n: not n.startswith("controller")):
            cluster.restart(name)
        with self._lock:
            open_faults = [f for f in self._held.faults if f.window.end_ms is None]
        for fault in open_faults:
            self._end(fault, list(fault.window.targets))
        with self._lock:
            # Restarted brokers stay down until they registered again (see `observe`).
            self._held.down.clear()


class RecoveryMonitor:
    """Polls the metadata while some fault waits for leader recovery, and records when every
    partition and the controller quorum have a live leader again. One daemon thread."""

    def __init__(self, cluster: FaultableCluster, nemesis: Nemesis, *, topic: str) -> None:
        self.cluster = cluster
        self.nemesis = nemesis
        self.topic = topic
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recovery-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        # Bound: runs until stop(); one DescribeCluster round (<= 1 s) per interval.
        while not self._stopping.wait(MONITOR_INTERVAL_S):
            pending, down = self.nemesis.snapshot_for_monitor()
            if not pending and not self.nemesis.restarting():
                continue
            status = self.cluster.describe()
            if status is None:
                continue
            # Only brokers that came back leave `down`: a node held down by a fault
            # injected after the snapshot stays out of this observation.
            down &= self.nemesis.observe(status)
            if pending and cluster_led(status, self.topic, down):
                self.nemesis.mark_leader_recovered(pending, self.nemesis.clock.now_ms())
