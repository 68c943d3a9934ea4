"""The pysyncobj shell around `MetadataState`: replication, persistence, leadership.

Threads: pysyncobj's tick thread applies committed commands (`_apply_replicated`) and
reports role changes; gRPC worker threads read the state (under `lock`) and submit
commands (`submit`, which blocks the caller, never the tick thread); one maintenance
thread runs the leader's duties (controller epoch, session expiry, leader balancing).

pysyncobj pickles every attribute set *after* its own `__init__` into snapshots, so the
lock, condition, logger and configuration are assigned before `super().__init__()` and
only `_state` after it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pysyncobj import SyncObj, SyncObjConf, SyncObjException, replicated
from raftmq.controller.metadata_state import (
    BeginControllerEpoch,
    Command,
    CommandResult,
    ElectLeaders,
    FenceBroker,
    MetadataState,
    RegisterController,
    UnfenceBroker,
)
from raftmq.controller.session_tracker import SessionTracker
from raftmq.errors import ErrorCode

_RAFT_LEADER_STATE = 2
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QuorumConfig:
    node_id: int
    raft_address: str  # host:port by which the other voters know this node
    raft_bind: str  # host:port the Raft transport binds (never 0.0.0.0 unless asked)
    voters: dict[int, str]  # node id -> raft host:port, including this node
    data_dir: Path
    password: str | None
    grpc_host: str
    grpc_port: int
    session_timeout_ms: int = 4_000
    # How often the leader looks for expired sessions and pending duties.
    maintenance_interval_ms: int = 100
    # Automatic preferred-leader balancing (Kafka's auto.leader.rebalance), 0 disables.
    leader_balance_interval_ms: int = 10_000
    command_timeout_ms: int = 5_000


@dataclass(frozen=True, slots=True)
class VoterStatus:
    node_id: int
    raft_address: str
    state: str  # leader | follower | unreachable


@dataclass(frozen=True, slots=True)
class QuorumStatus:
    leader_id: int
    term: int
    voters: tuple[VoterStatus, ...]
    commit_index: int
    last_applied: int


def _sync_obj_conf(config: QuorumConfig, on_state_changed: Callable[[int, int], None]) -> Any:
    """pysyncobj tuned as ../shared/dependencies.md measured: its defaults give ~10 commits/s
    and multi-second failovers; this gave 0.27-0.38 s leader kill -> next commit."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return SyncObjConf(
        password=config.password,
        appendEntriesUseBatch=False,
        raftMinTimeout=0.2,
        raftMaxTimeout=0.4,
        appendEntriesPeriod=0.05,
        autoTickPeriod=0.01,
        connectionTimeout=30,
        connectionRetryTime=0.5,
        # An isolated leader steps down after this; it is fenced by the epoch regardless.
        leaderFallbackTimeout=1.0,
        journalFile=str(config.data_dir / "raft.journal"),
        fullDumpFile=str(config.data_dir / "raft.snapshot"),
        # Snapshots by fork() are unsafe in a process that runs gRPC threads.
        useFork=False,
        logCompactionMinEntries=20_000,
        logCompactionMinTime=600,
        bindAddress=config.raft_bind,
        onStateChanged=on_state_changed,
        commandsQueueSize=10_000,
    )


class ControllerQuorum(SyncObj):  # type: ignore[misc]
    def __init__(self, config: QuorumConfig) -> None:
        assert config.voters.get(config.node_id) == config.raft_address
        # --- not replicated (set before SyncObj.__init__ so it is never pickled) ---
        self.config = config
        self.lock = threading.RLock()
        # Notified (under `lock`) after every applied command that changed the state.
        self.changed = threading.Condition(self.lock)
        self.log = structlog.get_logger("raftmq.controller").bind(node_id=config.node_id)
        self.sessions = SessionTracker(session_timeout_ms=config.session_timeout_ms)
        self._id_by_address = {addr: node for node, addr in config.voters.items()}
        self._became_leader_term = -1
        self._fence_proposed_ms: dict[int, int] = {}
        self._last_balance_ms = 0
        self._last_register_ms = 0
        self._stopping = threading.Event()
        others = [addr for node, addr in config.voters.items() if node != config.node_id]
        super().__init__(
            config.raft_address, others, _sync_obj_conf(config, self._on_state_changed)
        )
        # --- replicated state (pickled into snapshots) ---
        self._state = MetadataState()
        self._maintenance = threading.Thread(
            target=self._maintenance_loop, name="controller-maintenance", daemon=True
        )
        self._maintenance.start()

    # ------------------------------------------------------------ replication

    @replicated  # type: ignore[untyped-decorator]
    def _apply_replicated(self, command: Command) -> CommandResult:
        """Runs on the pysyncobj tick thread on every node, in log order."""
        with self.lock:
            version = self._state.version
            result = self._state.apply(command)
            if self._state.version != version:
                self.changed.notify_all()
        if result.ok:
            self.log.debug("command.applied", command=type(command).__name__)
        return result

    def submit(self, command: Command, *, timeout_ms: int | None = None) -> CommandResult:
        """Replicate a command and wait until this node applied it. Called from gRPC threads
        (never from the tick thread). Forwarded by pysyncobj when this node is a follower.
        On a timeout or leader change the outcome is unknown: CONTROLLER_UNAVAILABLE, and a
        retry with the same request id is safe."""
        timeout_s = (timeout_ms or self.config.command_timeout_ms) / 1000
        try:
            result: CommandResult = self._apply_replicated(command, sync=True, timeout=timeout_s)
        except SyncObjException as e:
            return CommandResult(
                ErrorCode.CONTROLLER_UNAVAILABLE,
                f"the controller quorum did not commit the command ({e.errorCode}); "
                "retry with the same request id",
            )
        return result

    def _submit_async(self, command: Command) -> None:
        """Fire-and-forget proposal, safe from any thread (including the tick thread)."""

        def done(result: CommandResult | None, error: Any) -> None:
            # pysyncobj reports FAIL_REASON.SUCCESS (0) on success.
            if error != 0 or result is None:
                self.log.info("command.not_committed", command=type(command).__name__, error=error)
            elif not result.ok:
                self.log.info(
                    "command.rejected", command=type(command).__name__, error=result.error.name
                )

        try:
            self._apply_replicated(command, callback=done)
        except SyncObjException as e:  # queue full
            self.log.warning("command.dropped", command=type(command).__name__, error=str(e))

    # ------------------------------------------------------------ reads

    def read(self, fn: Callable[[MetadataState], T]) -> T:
        """Run `fn` on this node's state under the lock (reads are local, like Kafka's)."""
        with self.lock:
            return fn(self._state)

    def state_while_locked(self) -> MetadataState:
        """For callers already holding `lock` (e.g. waiting on `changed`)."""
        return self._state

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def leader_id(self) -> int:
        leader = self._getLeader()
        if leader is None:
            return -1
        return self._id_by_address.get(str(getattr(leader, "address", leader)), -1)

    def has_reachable_leader(self) -> bool:
        """True if this node leads, or is connected to the node it believes leads. (An
        isolated pysyncobj follower keeps its last leader forever: it starts no election
        while connected to nobody.)"""
        leader = self._getLeader()
        if leader is None:
            return False
        if self._isLeader():
            return True
        return bool(self.isNodeConnected(leader))

    def term(self) -> int:
        return int(self.raftCurrentTerm)

    def status(self) -> QuorumStatus:
        raw = self.getStatus()
        leader_id = self.leader_id()
        voters = []
        for node, addr in sorted(self.config.voters.items()):
            if node == self.config.node_id:
                reachable = True
            else:
                reachable = raw.get(f"partner_node_status_server_{addr}", 0) == 2
            if node == leader_id and reachable:
                role = "leader"
            elif reachable:
                role = "follower"
            else:
                role = "unreachable"
            voters.append(VoterStatus(node, addr, role))
        return QuorumStatus(
            leader_id=leader_id,
            term=int(raw.get("raft_term", 0)),
            voters=tuple(voters),
            commit_index=int(raw.get("commit_idx", 0)),
            last_applied=int(raw.get("last_applied", 0)),
        )

    # ------------------------------------------------------------ leader duties

    def _on_state_changed(self, old_state: int, new_state: int) -> None:
        """pysyncobj tick thread: never block here."""
        if new_state == _RAFT_LEADER_STATE:
            self.log.info("controller.leader_elected", term=self.term())
        elif old_state == _RAFT_LEADER_STATE:
            self.log.info("controller.leadership_lost", term=self.term())

    def _maintenance_loop(self) -> None:
        interval_s = self.config.maintenance_interval_ms / 1000
        while not self._stopping.wait(interval_s):
            try:
                self._maintain()
            except Exception:
                self.log.exception("controller.maintenance_failed")

    def _maintain(self) -> None:
        now_ms = int(time.monotonic() * 1000)
        with self.lock:
            registered = self._state.controllers.get(self.config.node_id)
            controller_epoch = self._state.controller_epoch
            brokers = {
                b.broker_id: (b.broker_epoch, b.fenced) for b in self._state.brokers.values()
            }
        if (
            registered is None
            or (registered.host, registered.port) != (self.config.grpc_host, self.config.grpc_port)
        ) and now_ms - self._last_register_ms >= 1_000:
            self._last_register_ms = now_ms
            self._submit_async(
                RegisterController(
                    f"ctrl-{self.config.node_id}-{self.config.grpc_host}:{self.config.grpc_port}",
                    self.config.node_id,
                    self.config.grpc_host,
                    self.config.grpc_port,
                )
            )
        if not self.is_leader():
            self._became_leader_term = -1
            return
        term = self.term()
        if self._became_leader_term != term:
            # A fresh leader knows no heartbeats: every session starts now.
            self._became_leader_term = term
            self.sessions.reset(((b, e) for b, (e, _) in brokers.items()), now_ms=now_ms)
            self._fence_proposed_ms.clear()
            self._last_balance_ms = now_ms
        if controller_epoch < term:
            self._submit_async(BeginControllerEpoch(f"epoch-{term}", term))
            return  # act only once our epoch is committed, fencing older leaders
        for broker_id, broker_epoch in self.sessions.expired(now_ms=now_ms):
            current = brokers.get(broker_id)
            if current is None or current[0] != broker_epoch:
                self.sessions.forget(broker_id)
                continue
            if current[1]:
                continue  # already fenced
            last_ms = self._fence_proposed_ms.get(broker_id, 0)
            if now_ms - last_ms >= 1_000:
                self._fence_proposed_ms[broker_id] = now_ms
                self.log.info("broker.session_expired", broker_id=broker_id)
                self._submit_async(
                    FenceBroker(
                        f"fence-{broker_id}-{broker_epoch}-{term}", term, broker_id, broker_epoch
                    )
                )
        interval_ms = self.config.leader_balance_interval_ms
        if interval_ms > 0 and now_ms - self._last_balance_ms >= interval_ms:
            self._last_balance_ms = now_ms
            self._submit_async(ElectLeaders(uuid.uuid4().hex, term, True))

    def on_heartbeat(self, broker_id: int, broker_epoch: int, *, want_fence: bool) -> None:
        """Leader only: record the heartbeat; unfence a returning broker that caught up."""
        now_ms = int(time.monotonic() * 1000)
        self.sessions.heartbeat(broker_id, broker_epoch, now_ms=now_ms)
        with self.lock:
            broker = self._state.brokers.get(broker_id)
            epoch = self._state.controller_epoch
        if broker is not None and broker.fenced and not want_fence and epoch == self.term():
            self._submit_async(UnfenceBroker(uuid.uuid4().hex, epoch, broker_id, broker_epoch))

    def stop(self) -> None:
        self._stopping.set()
        self._maintenance.join(timeout=2)
        self.destroy()
