"""The nemesis against an in-memory cluster: which nodes each fault kind hits, what counts
as down while it lasts, how it is healed, and when the recovery monitor sees leaders back.
No processes; each test takes well under a second."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Iterator

import pytest
from raftmq.chaos.nemesis import (
    KILL_ALL,
    KILL_CONTROLLER_LEADER,
    KILL_PARTITION_LEADER,
    PARTITION_LEADER,
    PARTITION_MAJORITY_MINORITY,
    PAUSE_LEADER,
    RESTART,
    FaultableCluster,
    FaultStep,
    InjectedFault,
    Nemesis,
    RecoveryMonitor,
    RunClock,
)
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as pb

TOPIC = "chaos"


class FakeCluster:
    """3 controllers, 3 brokers, one topic; faults change process state only. Like the
    real metadata, `describe` keeps naming a killed leader (its session has not expired)."""

    def __init__(self, leaders: dict[int, int], controller_leader: int = 1) -> None:
        self.controller_names = [f"controller-{i}" for i in (1, 2, 3)]
        self.broker_names = [f"broker-{i}" for i in (1, 2, 3)]
        self.leaders = dict(leaders)
        self.controller_leader = controller_leader
        self.down: set[str] = set()
        self._paused: set[str] = set()
        self.cuts: set[frozenset[str]] = set()
        self.calls: list[tuple[str, str]] = []
        # A restarted broker shows a new incarnation only once it registered (`register`).
        self.incarnations = {b: 0 for b in (1, 2, 3)}
        self.lock = threading.Lock()

    @property
    def node_names(self) -> list[str]:
        return [*self.controller_names, *self.broker_names]

    @property
    def paused(self) -> frozenset[str]:
        return frozenset(self._paused)

    def describe(self) -> pb.DescribeClusterResponse | None:
        with self.lock:
            return pb.DescribeClusterResponse(
                controller=pb.QuorumInfo(leader_id=self.controller_leader),
                brokers=[
                    cpb.BrokerInfo(id=b, incarnation_id=f"{b}-{n}")
                    for b, n in sorted(self.incarnations.items())
                ],
                topics=[
                    cpb.Topic(
                        name=TOPIC,
                        partitions=[
                            cpb.PartitionState(partition=p, leader=b)
                            for p, b in sorted(self.leaders.items())
                        ],
                    )
                ],
            )

    def describe_now(self) -> pb.DescribeClusterResponse:
        status = self.describe()
        assert status is not None
        return status

    def running(self, name: str) -> bool:
        return name not in self.down

    def _record(self, verb: str, name: str) -> None:
        self.calls.append((verb, name))

    def kill(self, name: str) -> None:
        self._record("kill", name)
        self._paused.discard(name)
        self.down.add(name)

    def stop(self, name: str) -> None:
        self._record("stop", name)
        self.down.add(name)

    def restart(self, name: str) -> None:
        if name in self.down:
            self._record("restart", name)
            self.down.discard(name)

    def register(self, broker_id: int) -> None:
        """The restarted broker's new incarnation registers with the controller."""
        with self.lock:
            self.incarnations[broker_id] += 1

    def pause(self, name: str) -> None:
        self._record("pause", name)
        self._paused.add(name)

    def resume(self, name: str) -> None:
        if name in self._paused:
            self._record("resume", name)
            self._paused.discard(name)

    def cut(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        side_b = list(group_b)
        for a in group_a:
            for b in side_b:
                if a != b:
                    self.cuts.add(frozenset((a, b)))

    def heal_network(self) -> None:
        self.cuts.clear()


def _nemesis(cluster: FakeCluster, *steps: FaultStep) -> Nemesis:
    faultable: FaultableCluster = cluster
    return Nemesis(faultable, steps, topic=TOPIC, clock=RunClock(), stopping=threading.Event())


@pytest.fixture
def monitor_of() -> Iterator[list[RecoveryMonitor]]:
    monitors: list[RecoveryMonitor] = []
    yield monitors
    for monitor in monitors:
        monitor.stop()


def _step(kind: str, seed: int = 1) -> FaultStep:
    return FaultStep(kind=kind, gap_s=0.0, hold_s=0.0, target_seed=seed)


def test_kill_partition_leader_hits_a_leader_and_restarts_it() -> None:
    cluster = FakeCluster({0: 1, 1: 2, 2: 1})
    nemesis = _nemesis(cluster)
    fault = nemesis._inject(_step(KILL_PARTITION_LEADER), random.Random(3))
    assert fault is not None
    (target,) = fault.window.targets
    assert target in ("broker-1", "broker-2")
    led = {p for p, b in cluster.leaders.items() if f"broker-{b}" == target}
    assert fault.affected_partitions == frozenset(led)
    assert nemesis.down_nodes() == {target}
    assert cluster.calls == [("kill", target)]
    nemesis._heal(fault)
    assert cluster.calls[-1] == ("restart", target)
    assert fault.window.end_ms is not None
    # Started again, but down until its new incarnation registered.
    assert nemesis.down_nodes() == {target}
    assert nemesis.observe(cluster.describe_now()) == {target}
    cluster.register(int(target.removeprefix("broker-")))
    assert nemesis.observe(cluster.describe_now()) == frozenset()
    assert nemesis.down_nodes() == frozenset()


def test_pause_leader_is_continued_at_heal() -> None:
    cluster = FakeCluster({0: 3, 1: 3, 2: 3})
    nemesis = _nemesis(cluster)
    fault = nemesis._inject(_step(PAUSE_LEADER), random.Random(1))
    assert fault is not None and fault.window.targets == ("broker-3",)
    assert cluster.paused == {"broker-3"}
    nemesis._heal(fault)
    assert cluster.paused == frozenset()


def test_kill_controller_leader_hits_the_raft_leader() -> None:
    cluster = FakeCluster({0: 1, 1: 2, 2: 3}, controller_leader=2)
    nemesis = _nemesis(cluster)
    fault = nemesis._inject(_step(KILL_CONTROLLER_LEADER), random.Random(1))
    assert fault is not None and fault.window.targets == ("controller-2",)
    assert fault.affected_partitions is None


def test_partition_leader_cuts_the_leader_from_every_other_node() -> None:
    cluster = FakeCluster({0: 2, 1: 2, 2: 2})
    nemesis = _nemesis(cluster)
    fault = nemesis._inject(_step(PARTITION_LEADER), random.Random(1))
    assert fault is not None and fault.window.targets == ("broker-2",)
    others = set(cluster.node_names) - {"broker-2"}
    assert cluster.cuts == {frozenset(("broker-2", n)) for n in others}
    nemesis._heal(fault)
    assert cluster.cuts == set()


@pytest.mark.parametrize("seed", range(12))
def test_majority_minority_split_keeps_the_controller_majority_on_one_side(seed: int) -> None:
    cluster = FakeCluster({0: 1, 1: 2, 2: 3})
    nemesis = _nemesis(cluster)
    fault = nemesis._inject(_step(PARTITION_MAJORITY_MINORITY), random.Random(seed))
    assert fault is not None
    minority = set(fault.window.targets)
    majority = set(cluster.node_names) - minority
    assert len([n for n in minority if n.startswith("controller")]) == 1
    assert 1 <= len([n for n in minority if n.startswith("broker")]) <= 2
    assert cluster.cuts == {frozenset((a, b)) for a in minority for b in majority}
    assert nemesis.down_nodes() == minority


def test_kill_all_restarts_controllers_before_brokers() -> None:
    cluster = FakeCluster({0: 1, 1: 2, 2: 3})
    nemesis = _nemesis(cluster)
    fault = nemesis._inject(_step(KILL_ALL), random.Random(1))
    assert fault is not None
    assert cluster.down == set(cluster.node_names)
    nemesis._heal(fault)
    restarted = [name for verb, name in cluster.calls if verb == "restart"]
    assert restarted == [*cluster.controller_names, *cluster.broker_names]


@pytest.mark.parametrize("seed", range(8))
def test_restart_stops_one_node_by_kill_or_term_and_starts_it(seed: int) -> None:
    cluster = FakeCluster({0: 1, 1: 2, 2: 3})
    nemesis = _nemesis(cluster)
    fault = nemesis._inject(_step(RESTART), random.Random(seed))
    assert fault is not None
    (target,) = fault.window.targets
    assert cluster.calls in ([("kill", target)], [("stop", target)])
    nemesis._heal(fault)
    assert cluster.down == set()


def test_heal_all_undoes_every_fault_and_closes_every_window() -> None:
    cluster = FakeCluster({0: 1, 1: 2, 2: 3})
    nemesis = _nemesis(cluster)
    rng = random.Random(5)
    faults = [nemesis._inject(_step(kind), rng) for kind in (PAUSE_LEADER, PARTITION_LEADER)]
    cluster.kill("controller-3")
    nemesis.heal_all()
    assert cluster.paused == frozenset() and cluster.cuts == set() and cluster.down == set()
    assert all(f is not None and f.window.end_ms is not None for f in faults)
    assert nemesis.down_nodes() == frozenset()


def _killed_leader_under_watch(
    monitor_of: list[RecoveryMonitor],
) -> tuple[FakeCluster, Nemesis, RecoveryMonitor, InjectedFault]:
    """broker-1 (leader of partitions 0 and 1) killed, with a monitor (not started)."""
    cluster = FakeCluster({0: 1, 1: 1, 2: 2})
    nemesis = _nemesis(cluster)
    monitor = RecoveryMonitor(cluster, nemesis, topic=TOPIC)
    monitor_of.append(monitor)
    fault = nemesis._inject(_step(KILL_PARTITION_LEADER), random.Random(0))
    assert fault is not None and fault.window.targets == ("broker-1",)
    return cluster, nemesis, monitor, fault


def _recovered_leader_ms(fault: InjectedFault, timeout_s: float = 5.0) -> float | None:
    """Wait (bounded) until the monitor credited `fault` with leader recovery."""
    deadline_s = time.monotonic() + timeout_s
    while fault.window.recovered_leader_ms is None and time.monotonic() < deadline_s:
        time.sleep(0.02)
    return fault.window.recovered_leader_ms


def test_monitor_sees_leaders_back_only_once_the_killed_leader_is_replaced(
    monitor_of: list[RecoveryMonitor],
) -> None:
    cluster, _, monitor, fault = _killed_leader_under_watch(monitor_of)
    monitor.start()
    # The metadata still names broker-1, which is down: never recovered, however long the
    # monitor looks (here: four polls).
    time.sleep(0.4)
    assert fault.window.recovered_leader_ms is None
    with cluster.lock:
        cluster.leaders = {0: 2, 1: 3, 2: 2}  # the controller moved leadership
    found_ms = _recovered_leader_ms(fault)
    assert found_ms is not None
    assert found_ms >= 400


def test_a_leader_restarted_before_its_session_expired_recovers_once_it_registered(
    monitor_of: list[RecoveryMonitor],
) -> None:
    # A short hold: the killed broker is started again while the metadata still names its
    # dead incarnation as leader. Leadership is back only once the new incarnation
    # registered, not when the process was launched.
    cluster, nemesis, monitor, fault = _killed_leader_under_watch(monitor_of)
    nemesis._heal(fault)
    assert cluster.running("broker-1")
    monitor.start()
    time.sleep(0.4)  # four monitor polls of unchanged metadata
    assert fault.window.recovered_leader_ms is None
    assert nemesis.down_nodes() == {"broker-1"}
    cluster.register(1)
    recovered_ms = _recovered_leader_ms(fault)
    assert recovered_ms is not None and recovered_ms >= 400
    assert nemesis.down_nodes() == frozenset()


def test_a_fault_on_a_broker_still_restarting_keeps_both_holds_apart() -> None:
    # kill-all strikes while a killed leader is still restarting (it was started again but
    # has not registered): the new kill must neither be healed by that broker's
    # registration nor lose track of the registration it still waits for.
    cluster = FakeCluster({0: 1, 1: 1, 2: 2})
    nemesis = _nemesis(cluster)
    first = nemesis._inject(_step(KILL_PARTITION_LEADER), random.Random(0))
    assert first is not None and first.window.targets == ("broker-1",)
    nemesis._heal(first)
    assert nemesis.down_nodes() == {"broker-1"}
    second = nemesis._inject(_step(KILL_ALL), random.Random(0))
    assert second is not None
    cluster.register(1)  # the first restart's registration lands during kill-all
    assert nemesis.observe(cluster.describe_now()) == set(cluster.node_names)
    nemesis._heal(second)
    brokers = {"broker-1", "broker-2", "broker-3"}
    assert nemesis.observe(cluster.describe_now()) == brokers  # nobody registered yet
    for broker_id in (1, 2, 3):
        cluster.register(broker_id)
    assert nemesis.observe(cluster.describe_now()) == frozenset()
