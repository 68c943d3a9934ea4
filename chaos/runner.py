"""One seeded chaos run, end to end, and the `raftmq chaos` command.

A run: start a fresh cluster (3 controllers, 3 brokers; one network namespace per node when
possible), create the topic (RF 3, 3 partitions, min.insync.replicas=2, unclean election
off), start the workload (producers, consumers, and the consumer groups' member processes,
`raftmq.chaos.group_workload`), wait until every group owns every partition, let the
nemesis inject its seeded faults one at a time (a group member is SIGKILLed and restarted
during each), heal everything, keep producing until produce works again on every
partition, stop the clients, wait until the replicas converged, read every partition to
its high watermark, let the groups drain (commit up to those high watermarks), close the
members, stop the brokers cleanly (SIGTERM), hash every replica's stored bytes below its
high watermark, check the history and write the report (report.json, history.jsonl,
timeline.png) next to the node logs (`cluster/logs/`, the members' in `members/`).

A run fails (exit 1) when the checker finds the history invalid (a duplicated value
included: the producers are idempotent Writers), or when the final read could not reach
every partition's high watermark or the groups could not drain: then the durability of
acknowledged writes, or their delivery to every group, is unverified, which must not pass
silently. Liveness problems (a fault after which
produce or leadership never came back, replicas that never converged after the heal) are
printed as `LIVENESS:` lines and returned in `ChaosRun.liveness_problems`; the test suite
fails on them, the command reports them without failing (its verdict is about safety).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
from raftmq.chaos.checker import ANOMALY_KINDS, CheckResult, check, recovery_stats
from raftmq.chaos.cluster import ChaosCluster, ClusterTuning, probe_netns, read_replica_logs
from raftmq.chaos.group_checker import GROUP_ANOMALY_KINDS
from raftmq.chaos.group_workload import GroupsConfig, GroupWorkload
from raftmq.chaos.history import FaultWindow, History, ReplicaLog, write_jsonl
from raftmq.chaos.nemesis import (
    NETWORK_FAULT_KINDS,
    FaultKindError,
    FaultStep,
    Nemesis,
    RecoveryMonitor,
    RunClock,
    fill_produce_recovery,
    parse_fault_kinds,
    plan_schedule,
)
from raftmq.chaos.report import HISTORY_FILE, format_campaign, format_summary, write_report
from raftmq.chaos.workload import FinalRead, Workload, WorkloadConfig, create_topic, final_read
from raftmq.errors import RaftmqError
from raftmq.metadata import NO_LEADER

_log = structlog.get_logger("raftmq.chaos")

READY_TIMEOUT_S = 90.0
TOPIC_READY_TIMEOUT_S = 60.0
# Clients run alone for this long before the first fault, so every partition has data.
WARMUP_S = 3.0
# After the last heal, producers keep going until every partition acknowledged a send
# invoked after the heal, at most this long.
POST_HEAL_PRODUCE_S_MAX = 30.0
CONVERGE_TIMEOUT_S = 60.0
# Followers learn the leader's high watermark one fetch (<= 500 ms long poll) after it
# moved: give them two fetches before the brokers are stopped.
CONVERGE_SETTLE_S = 1.2
FINAL_READ_TIMEOUT_S = 90.0
# Until every group owns every partition, before the first fault (the first FindCoordinator
# creates __consumer_offsets).
GROUPS_ASSIGNED_TIMEOUT_S = 45.0
# After the final read, until every group committed up to the high watermarks.
GROUPS_DRAIN_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.2
# One observation call of the runner to a broker (metadata, a one-byte fetch).
BROKER_CALL_TIMEOUT_MS = 3_000
# `--runs`: a bound on one campaign (each run takes a minute or more).
RUNS_MAX = 1_000
EXIT_OK = 0
EXIT_FAILED = 1


@dataclass(slots=True)
class ChaosRun:
    """Everything a run produced. `ok`: the history is valid and the final read complete."""

    seed: int
    duration_s: float
    kinds: tuple[str, ...]
    result: CheckResult
    faults: list[FaultWindow]
    final_read: FinalRead
    replicas: list[ReplicaLog]
    out_dir: Path
    report_path: Path
    summary: str
    replay_command: str
    notes: list[str] = field(default_factory=list)
    # Faults the cluster did not recover from, replicas that did not converge, ...
    liveness_problems: list[str] = field(default_factory=list)
    # What leaves the run unverified although the history may be valid: a replica log that
    # could not be read, a workload thread that died, no acknowledged send at all.
    harness_problems: list[str] = field(default_factory=list)
    # The producers' Writer counters summed (`Workload.writer_totals`): "retries" says how
    # often a send was resent, i.e. how much the duplicate check was exercised.
    writer_totals: dict[str, int] = field(default_factory=dict)
    # The groups committed up to the final read's high watermarks after the heal (True
    # without groups); what the member chaos did (`group_chaos_figures`).
    groups_drained: bool = True
    group_chaos: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result.valid and self.final_read.complete and not self.harness_problems

    @property
    def injected_kinds(self) -> set[str]:
        return {f.kind for f in self.faults}


def replay_command(seed: int, duration_s: float, kinds: Sequence[str]) -> str:
    return f"raftmq chaos --duration {duration_s:g} --seed {seed} --faults {','.join(kinds)}"


def run_chaos(
    seed: int,
    duration_s: float,
    out_dir: Path,
    faults: Sequence[str],
    *,
    emit: Callable[[str], None] = print,
) -> CheckResult:
    """Run one seeded chaos run into `out_dir` (see the module docstring); returns the
    checker's result. The summary, notes and, on failure, the replay command are passed to
    `emit` line by line."""
    return run_chaos_detailed(seed, duration_s, out_dir, faults, emit=emit).result


def run_chaos_detailed(
    seed: int,
    duration_s: float,
    out_dir: Path,
    faults: Sequence[str],
    *,
    emit: Callable[[str], None] = print,
    tuning: ClusterTuning | None = None,
    workload_config: WorkloadConfig | None = None,
) -> ChaosRun:
    """`run_chaos`, returning everything the run produced (for tests and tools)."""
    tuning = tuning or ClusterTuning()
    config = workload_config or WorkloadConfig()
    kinds = tuple(faults)
    replay = replay_command(seed, duration_s, kinds)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    liveness: list[str] = []
    harness: list[str] = []

    netns = probe_netns()
    network_kinds = [k for k in kinds if k in NETWORK_FAULT_KINDS]
    runnable = tuple(k for k in kinds if netns.available or k not in NETWORK_FAULT_KINDS)
    if network_kinds and not netns.available:
        note = f"SKIPPED network faults {', '.join(network_kinds)}: {netns.reason}"
        notes.append(note)
        emit(note)
    emit(
        f"raftmq chaos: seed {seed}, {duration_s:g} s of faults ({', '.join(runnable) or 'none'})"
        f", network: {'namespaces' if netns.available else 'loopback'}; report in {out_dir}"
    )
    steps = plan_schedule(seed, duration_s, runnable)
    unplanned = sorted(set(runnable) - {s.kind for s in steps})
    if unplanned:
        note = f"duration too short to plan every fault kind: no {', '.join(unplanned)}"
        notes.append(note)
        emit(note)

    clock = RunClock()
    history = History()
    nemesis: Nemesis | None = None
    cluster = ChaosCluster(out_dir / "cluster", netns=netns.available, tuning=tuning)
    try:
        with cluster:
            stages = _Stages(
                cluster,
                history=history,
                clock=clock,
                config=config,
                seed=seed,
                steps=steps,
                notes=notes,
                liveness=liveness,
                harness_problems=harness,
            )
            stages.run()
            nemesis = stages.nemesis
            final = stages.final
            replicas = stages.replicas
            writers = stages.writer_totals
            drained = stages.groups_drained
            group_chaos = stages.group_chaos
    except BaseException:
        # Keep what was recorded, for the post-mortem; the cluster is already torn down.
        write_jsonl(history.ops(), out_dir / HISTORY_FILE)
        emit(f"chaos run aborted (seed {seed}); partial history and node logs in {out_dir}")
        emit(f"replay: {replay}")
        raise
    assert nemesis is not None
    injected = nemesis.faults()
    ops = history.ops()
    fill_produce_recovery(injected, ops)
    windows = [f.window for f in injected]
    for kind, reason in nemesis.skipped:
        notes.append(f"a {kind} step was skipped: {reason}")
    for window in windows:
        where = f"{window.kind} at {window.start_ms / 1000:.1f} s ({', '.join(window.targets)})"
        if window.recovered_leader_ms is None:
            liveness.append(f"{where}: the cluster never had every leader back")
        if window.recovered_produce_ms is None:
            liveness.append(f"{where}: produce to the affected partitions never succeeded again")
    notes.extend(f"final read: {problem}" for problem in final.problems)
    if not any(op.f == "send" and op.type == "ok" for op in ops):
        harness.append("no send was acknowledged: the run verified nothing")
    if not replicas:
        harness.append("no replica log was read: replica divergence is unchecked")

    crashed_during = {(str(kind), float(start)) for kind, start in group_chaos.get("faults", ())}
    uncrashed = [w for w in windows if (w.kind, w.start_ms) not in crashed_during]
    if group_chaos and uncrashed:
        notes.append(
            f"{len(uncrashed)} faults without a group member crash (no member was up): "
            + ", ".join(f"{w.kind}@{w.start_ms / 1000:.1f}s" for w in uncrashed[:5])
        )
    result = check(
        ops,
        replicas=replicas,
        faults=windows,
        final_read_complete=final.complete,
        groups_drained=drained,
    )
    report_path = write_report(
        result,
        out_dir=out_dir,
        seed=seed,
        history=ops,
        faults=windows,
        replay_command=replay,
        config={
            "seed": seed,
            "duration_s": duration_s,
            "faults_requested": list(kinds),
            "faults_runnable": list(runnable),
            "network": {"namespaces": netns.available, "reason": netns.reason},
            "schedule": [asdict(s) for s in steps],
            "tuning": asdict(tuning),
            "workload": asdict(config),
            "final_read": {
                "complete": final.complete,
                "high_watermarks": final.high_watermarks,
                "problems": list(final.problems),
            },
            "affected_partitions": [
                None if f.affected_partitions is None else sorted(f.affected_partitions)
                for f in injected
            ],
            "notes": notes,
            "liveness_problems": liveness,
            "harness_problems": harness,
            "writers": writers,
            "groups_drained": drained,
            "group_chaos": group_chaos,
        },
    )
    summary = format_summary(result, seed=seed, faults=windows, replay_command=replay)
    run = ChaosRun(
        seed=seed,
        duration_s=duration_s,
        kinds=kinds,
        result=result,
        faults=windows,
        final_read=final,
        replicas=replicas,
        out_dir=out_dir,
        report_path=report_path,
        summary=summary,
        replay_command=replay,
        notes=notes,
        liveness_problems=liveness,
        harness_problems=harness,
        writer_totals=writers,
        groups_drained=drained,
        group_chaos=group_chaos,
    )
    for line in summary.rstrip("\n").splitlines():
        emit(line)
    emit(
        f"writers: {writers.get('writers', 0)} idempotent Writers wrote "
        f"{writers.get('batches', 0)} batches, resent {writers.get('retries', 0)} after a "
        f"failed attempt, failed {writers.get('errors', 0)} messages"
    )
    if group_chaos:
        emit(
            f"member chaos: {group_chaos['crashes']} members SIGKILLed during "
            f"{len(group_chaos['faults'])} faults, restarted {group_chaos['restarts_same']} "
            f"times with the same instance id and {group_chaos['restarts_new']} with a new one"
        )
    for note in notes:
        emit(f"note: {note}")
    for problem in liveness:
        emit(f"LIVENESS: {problem}")
    for problem in harness:
        emit(f"UNVERIFIED: {problem}")
    if result.valid and not run.ok:
        why = ""
        if not final.complete:
            why = "the final read did not reach every high watermark"
        elif not drained:
            why = "the consumer groups did not drain to the high watermarks"
        emit(f"RESULT: FAILED: {why or 'the run is unverified (see UNVERIFIED above)'}")
        emit(f"replay this run (seed {seed}):\n  {replay}")
    emit(f"report: {report_path}")
    if run.ok:
        # The node logs stay; the stores (megabytes) are only worth keeping for a failure.
        for name in cluster.node_names:
            shutil.rmtree(out_dir / "cluster" / name, ignore_errors=True)
    return run


class _Stages:
    """The phases of one run against a started cluster, in order (see the module
    docstring). Only `run` is public; every phase is bounded in time."""

    def __init__(
        self,
        cluster: ChaosCluster,
        *,
        history: History,
        clock: RunClock,
        config: WorkloadConfig,
        seed: int,
        steps: Sequence[FaultStep],
        notes: list[str],
        liveness: list[str],
        harness_problems: list[str],
    ) -> None:
        self.cluster = cluster
        self.history = history
        self.clock = clock
        self.config = config
        self.seed = seed
        self.steps = steps
        self.notes = notes
        self.liveness = liveness
        self.harness_problems = harness_problems
        self.stopping = threading.Event()
        self.nemesis: Nemesis | None = None
        self.final = FinalRead(False, {}, {}, ("not run",))
        self.replicas: list[ReplicaLog] = []
        self.writer_totals: dict[str, int] = {}
        self.groups_drained = True
        self.group_chaos: dict[str, Any] = {}

    def run(self) -> None:
        cluster = self.cluster
        cluster.start()
        cluster.wait_ready(READY_TIMEOUT_S)
        topic_id = create_topic(cluster.controller_endpoints, self.config)
        self._wait_topic_ready()
        workload = Workload(
            bootstrap=cluster.broker_endpoints,
            history=self.history,
            clock=self.clock,
            config=self.config,
            seed=self.seed,
        )
        groups: GroupWorkload | None = None
        if self.config.groups > 0 and self.config.group_members > 0:
            groups = GroupWorkload(
                bootstrap=cluster.broker_endpoints,
                history=self.history,
                clock=self.clock,
                config=groups_config(self.config),
                seed=self.seed,
                log_dir=cluster.data_dir.parent / "members",
            )
        try:
            self._run_workload(cluster, workload, groups, topic_id)
        finally:
            if groups is not None:
                groups.close()

    def _run_workload(
        self,
        cluster: ChaosCluster,
        workload: Workload,
        groups: GroupWorkload | None,
        topic_id: bytes,
    ) -> None:
        nemesis = Nemesis(
            cluster, self.steps, topic=self.config.topic, clock=self.clock, stopping=self.stopping
        )
        self.nemesis = nemesis
        monitor = RecoveryMonitor(cluster, nemesis, topic=self.config.topic)
        workload.start()
        if groups is not None:
            groups.start()
        monitor.start()
        try:
            time.sleep(WARMUP_S)
            if groups is not None:
                if not groups.wait_assigned(GROUPS_ASSIGNED_TIMEOUT_S):
                    self.notes.append(
                        f"the groups did not own every partition within "
                        f"{GROUPS_ASSIGNED_TIMEOUT_S:.0f} s of the start"
                    )
                groups.start_chaos(lambda: [f.window for f in nemesis.faults()])
            try:
                nemesis.run()
            finally:
                nemesis.heal_all()
                if groups is not None:
                    groups.stop_chaos()
            _log.info("nemesis.finished", faults=len(nemesis.faults()))
            self._wait_produce_after(self.clock.now_ms())
            nemesis_wait_s = 0.0
            while nemesis.leader_unrecovered() and nemesis_wait_s < POST_HEAL_PRODUCE_S_MAX:
                time.sleep(POLL_INTERVAL_S)
                nemesis_wait_s += POLL_INTERVAL_S
        finally:
            self.stopping.set()
            if not workload.stop_producers():
                self.notes.append("a producer did not stop in time (its send stays pending)")
            self.writer_totals = workload.writer_totals()
            workload.stop_consumers()
            monitor.stop()
            self.harness_problems.extend(
                f"a workload thread died: {error}" for error in workload.worker_errors()
            )
        unconverged = self._wait_converged()
        if unconverged is not None:
            self.liveness.append(
                f"replicas did not converge within {CONVERGE_TIMEOUT_S:.0f} s after the heal "
                f"(wanted: every broker unfenced, every ISR full, every leader's HW = its LEO; "
                f"last seen: {unconverged})"
            )
        self.final = final_read(
            cluster.broker_endpoints,
            self.history,
            self.clock,
            self.config,
            timeout_s=FINAL_READ_TIMEOUT_S,
        )
        _log.info("final_read.finished", complete=self.final.complete)
        if groups is not None:
            self._drain_groups(groups)
        # SIGTERM, one broker at a time: each exits cleanly (checkpointing its high
        # watermarks) before its store is opened here.
        for name in cluster.broker_names:
            cluster.stop(name)
        self.replicas, problems = read_replica_logs(
            {name: cluster.broker_data_dir(name) for name in cluster.broker_names},
            topic=self.config.topic,
            topic_id=topic_id,
            partitions=self.config.partitions,
        )
        self.harness_problems.extend(problems)
        for name in cluster.controller_names:
            cluster.stop(name)

    def _drain_groups(self, groups: GroupWorkload) -> None:
        """Let every group commit up to the final read's high watermarks, close the
        members, and keep what the member chaos did."""
        if self.final.complete:
            missing = groups.drain(self.final.high_watermarks, GROUPS_DRAIN_TIMEOUT_S)
        else:
            missing = "the final read is incomplete: no high watermarks to drain to"
        groups.stop()
        self.groups_drained = missing is None
        if missing is not None:
            self.harness_problems.append(
                f"the consumer groups did not drain within {GROUPS_DRAIN_TIMEOUT_S:.0f} s "
                f"after the heal ({missing}): every group consuming every acknowledged "
                "message is unverified"
            )
        self.harness_problems.extend(groups.problems)
        figures = groups.figures
        self.group_chaos = {
            "crashes": figures.crashes,
            "restarts_same": figures.restarts_same_instance,
            "restarts_new": figures.restarts_new_instance,
            "faults": [list(f) for f in figures.faults_with_crash],
        }

    def _wait_topic_ready(self) -> None:
        """Every partition led, with a full ISR, and visible to the brokers' metadata."""
        topic = self.config.topic

        def ready() -> bool:
            status = self.cluster.describe()
            if status is None:
                return False
            for t in status.topics:
                if t.name == topic:
                    return len(t.partitions) == self.config.partitions and all(
                        p.leader >= 0 and len(p.isr) == len(p.ar) for p in t.partitions
                    )
            return False

        def known_to_every_broker() -> bool:
            # The clients route by the brokers' metadata, which follows the controller's.
            for endpoint in self.cluster.broker_endpoints:
                try:
                    metadata = self.cluster.broker_conn(endpoint).metadata(
                        [topic], timeout_ms=BROKER_CALL_TIMEOUT_MS
                    )
                except RaftmqError:
                    return False
                known = metadata.topics.get(topic)
                if known is None or len(known.partitions) != self.config.partitions:
                    return False
                if any(p.leader == NO_LEADER for p in known.partitions):
                    return False
            return True

        self.cluster.wait_until(ready, timeout_s=TOPIC_READY_TIMEOUT_S, what=f"topic {topic}")
        self.cluster.wait_until(
            known_to_every_broker,
            timeout_s=TOPIC_READY_TIMEOUT_S,
            what=f"topic {topic} in every broker's metadata",
        )

    def _wait_produce_after(self, heal_ms: float) -> None:
        """Until every partition acknowledged a send invoked after `heal_ms` (bounded)."""
        deadline_s = time.monotonic() + POST_HEAL_PRODUCE_S_MAX
        wanted = set(range(self.config.partitions))
        while time.monotonic() < deadline_s:
            invoked_after = {
                op.value
                for op in self.history.ops()
                if op.f == "send" and op.type == "invoke" and op.time_ms >= heal_ms
            }
            acked = {
                op.partition
                for op in self.history.ops()
                if op.f == "send" and op.type == "ok" and op.value in invoked_after
            }
            if wanted <= acked:
                return
            time.sleep(POLL_INTERVAL_S * 2.5)
        self.liveness.append(
            f"produce did not succeed on every partition within {POST_HEAL_PRODUCE_S_MAX:.0f} s"
            " after the final heal"
        )

    def _wait_converged(self) -> str | None:
        """Until every broker is up and unfenced, every partition has its full AR in the ISR
        and its leader's high watermark equals its log end offset; then a settle time for
        followers to learn that high watermark. None when converged, else the last reason
        it had not (on timeout)."""
        topic = self.config.topic
        deadline_s = time.monotonic() + CONVERGE_TIMEOUT_S
        reason: str | None = "not checked"
        # Bound: the deadline; one DescribeCluster and one fetch per partition per pass.
        while time.monotonic() < deadline_s:
            reason = self._unconverged_reason(topic)
            if reason is None:
                time.sleep(CONVERGE_SETTLE_S)
                reason = self._unconverged_reason(topic)
                if reason is None:
                    return None
                continue
            _log.debug("replicas.not_converged", reason=reason)
            time.sleep(POLL_INTERVAL_S)
        return reason

    def _unconverged_reason(self, topic: str) -> str | None:
        status = self.cluster.describe()
        if status is None:
            return "no controller answered"
        if any(b.fenced for b in status.brokers) or len(status.brokers) < len(
            self.cluster.broker_names
        ):
            return "a broker is fenced or unregistered"
        partitions = next((t.partitions for t in status.topics if t.name == topic), None)
        if partitions is None:
            return "topic missing"
        for p in partitions:
            if p.leader < 0 or set(p.isr) != set(p.ar):
                return f"partition {p.partition}: leader {p.leader}, isr {list(p.isr)}"
        endpoints = {b.id: f"{b.endpoint.host}:{b.endpoint.port}" for b in status.brokers}
        try:
            for p in partitions:
                endpoint = endpoints.get(p.leader)
                if endpoint is None:
                    return f"partition {p.partition}: leader {p.leader} is not registered"
                # A consumer fetch of one byte at the leader the controller names: the
                # answer carries the leader's high watermark and log end offset.
                [fetched] = self.cluster.broker_conn(endpoint).fetch(
                    [(topic, p.partition, 0)], max_wait_ms=0, max_bytes=1, partition_max_bytes=1
                )
                if fetched.error is not None:
                    return f"partition {p.partition}: {fetched.error}"
                if fetched.high_watermark != fetched.log_end_offset:
                    return (
                        f"partition {p.partition}: high watermark {fetched.high_watermark} < "
                        f"log end offset {fetched.log_end_offset}"
                    )
        except RaftmqError as exc:
            return str(exc)
        return None


def groups_config(config: WorkloadConfig) -> GroupsConfig:
    """The group workload's part of a run's configuration."""
    return GroupsConfig(
        topic=config.topic,
        partitions=config.partitions,
        groups=config.groups,
        members=config.group_members,
        session_timeout_ms=config.group_session_timeout_ms,
        offsets_read_interval_ms=config.offsets_read_interval_ms,
        poll_wait_ms=config.consumer_max_wait_ms,
        fetch_bytes_max=config.fetch_bytes_max,
    )


def main(args: argparse.Namespace) -> int:
    """`raftmq chaos --duration SECONDS --seed N [--runs K] --out DIR --faults kind,...|all`.

    Run k (0-based) uses seed N + k and writes into DIR/seed-(N+k), so that many seeds can
    share one DIR; with more than one run, a campaign summary over all of them is printed
    and written to DIR/campaign.json. Exit 0: every run valid; 1: a history was invalid, a
    final read incomplete or a run aborted."""
    from raftmq.log import configure_logging

    configure_logging(level="WARNING")
    try:
        kinds = parse_fault_kinds(args.faults)
    except FaultKindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.duration <= 0:
        print("error: --duration must be positive", file=sys.stderr)
        return 2
    if not 1 <= args.runs <= RUNS_MAX:
        print(f"error: --runs must be between 1 and {RUNS_MAX}", file=sys.stderr)
        return 2
    first_seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    out_root = Path(args.out)
    runs: list[ChaosRun] = []
    aborted: list[int] = []
    # SIGTERM unwinds like Ctrl-C, so the cluster's processes are killed by PID and its
    # network namespaces deleted on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    for seed in range(first_seed, first_seed + args.runs):
        try:
            runs.append(
                run_chaos_detailed(
                    seed, float(args.duration), out_root / f"seed-{seed}", kinds, emit=_print_flush
                )
            )
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the cluster is already torn down
            print(f"interrupted during seed {seed}", file=sys.stderr)
            aborted.append(seed)
            break
        except Exception as exc:  # a harness failure, not a history anomaly: say how to replay
            print(f"error: chaos run aborted: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(
                f"seed {seed}; replay: {replay_command(seed, args.duration, kinds)}",
                file=sys.stderr,
            )
            aborted.append(seed)
    if args.runs > 1:
        campaign = campaign_figures(runs, aborted)
        out_root.mkdir(parents=True, exist_ok=True)
        path = out_root / "campaign.json"
        path.write_text(json.dumps(campaign, indent=2) + "\n")
        print(format_campaign(campaign), end="", flush=True)
        print(f"campaign report: {path}", flush=True)
    return EXIT_OK if not aborted and all(run.ok for run in runs) else EXIT_FAILED


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _print_flush(line: str) -> None:
    print(line, flush=True)


def summary_figures(run: ChaosRun) -> dict[str, Any]:
    """The figures a person compares across runs (ops by outcome, faults per kind, recovery
    medians/maxima, anomaly counts), as one JSON-friendly dict."""
    stats = run.result.stats
    return {
        "seed": run.seed,
        "ok": run.ok,
        "valid": run.result.valid,
        "final_read_complete": run.final_read.complete,
        "send_ok": stats["send_ok"],
        "send_fail": stats["send_fail"],
        "send_info": stats["send_info"],
        "poll_ok": stats["poll_ok"],
        "writer_retries": run.writer_totals.get("retries", 0),
        "faults": {k: r.count for k, r in run.result.recovery.items()},
        "recovery": {k: r.to_json_dict() for k, r in run.result.recovery.items()},
        "anomalies": {k: n for k, n in run.result.counts.items() if n},
        "groups": group_totals(run),
        "groups_drained": run.groups_drained,
        "liveness_problems": list(run.liveness_problems),
        "harness_problems": list(run.harness_problems),
    }


# The group figures a run and a campaign report (summed over the groups of a run).
GROUP_SUMMARY_FIGURES = (
    "deliveries",
    "redeliveries",
    "commits_ok",
    "commits_fail",
    "commits_info",
    "offset_reads_ok",
    "assignment_changes",
    "assignments_lost",
    "members_crashed",
    "zombie_overlaps",
)


def group_totals(run: ChaosRun) -> dict[str, int]:
    """A run's group figures summed over its groups, plus how its members were restarted."""
    stats = run.result.stats
    totals = {name: stats[f"group_{name}"] for name in GROUP_SUMMARY_FIGURES}
    totals["groups"] = len(run.result.groups)
    totals["restarts_same_instance"] = int(run.group_chaos.get("restarts_same", 0))
    totals["restarts_new_instance"] = int(run.group_chaos.get("restarts_new", 0))
    return totals


def campaign_figures(runs: Sequence[ChaosRun], aborted: Sequence[int]) -> dict[str, Any]:
    """Many runs in one dict: each run's figures, anomaly totals, and recovery per fault kind
    over every fault of every run (medians of the individual faults, not of run medians)."""
    anomalies: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for run in runs:
        anomalies.update({k: n for k, n in run.result.counts.items() if n})
        groups.update(group_totals(run))
    recovery = recovery_stats(w for run in runs for w in run.faults)
    return {
        "runs": len(runs) + len(aborted),
        "valid": sum(1 for run in runs if run.ok),
        "aborted_seeds": list(aborted),
        "send_ok": sum(run.result.stats["send_ok"] for run in runs),
        "send_fail": sum(run.result.stats["send_fail"] for run in runs),
        "send_info": sum(run.result.stats["send_info"] for run in runs),
        "writer_retries": sum(run.writer_totals.get("retries", 0) for run in runs),
        "faults": sum(len(run.faults) for run in runs),
        "anomalies": dict(sorted(anomalies.items())),
        "group_anomalies": {
            k: anomalies.get(k, 0) for k in ANOMALY_KINDS if k in GROUP_ANOMALY_KINDS
        },
        "groups": dict(groups),
        "groups_undrained_seeds": [run.seed for run in runs if not run.groups_drained],
        "recovery": {k: r.to_json_dict() for k, r in recovery.items()},
        "per_run": [summary_figures(run) for run in runs],
    }


__all__ = [
    "ChaosRun",
    "campaign_figures",
    "group_totals",
    "groups_config",
    "main",
    "replay_command",
    "run_chaos",
    "run_chaos_detailed",
    "summary_figures",
]
