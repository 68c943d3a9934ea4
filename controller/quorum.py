"""The pysyncobj shell around `MetadataState`: replication, persistence, leadership.

Threads:
- pysyncobj's tick thread applies committed entries (`_apply_entry`), writes and loads
  snapshots (`_write_snapshot` / `_read_snapshot`) and reports role changes;
- gRPC worker threads read the state (under `lock`) and submit commands to the planner
  (`submit`, which blocks the caller, never the tick thread);
- the planner thread (leader only, `planner.Planner`) plans commands into entries;
- the maintenance thread runs this controller's duties: checking and stamping the cluster
  id, registering its own endpoint, and on the leader initializing the cluster, the
  controller epoch, session expiry and leader balancing.

Only `_state` is replicated. pysyncobj pickles no attribute of ours: snapshots go through
our serializer (`quorum_storage`), and the log holds encoded entries (`metadata_entry`).
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException, replicated
from raftmq import node_meta, ports, wire
from raftmq.controller import quorum_storage
from raftmq.controller.metadata_commands import (
    BeginControllerEpoch,
    Command,
    CommandResult,
    ElectLeaders,
    FenceBroker,
    InitializeCluster,
    RegisterController,
    UnfenceBroker,
)
from raftmq.controller.metadata_entry import (
    EntryOutcome,
    MetadataEntry,
    MetadataItem,
    decode_entry,
    encode_entry,
)
from raftmq.controller.metadata_records import MetadataFormatError
from raftmq.controller.metadata_state import MetadataState
from raftmq.controller.planner import Planner
from raftmq.controller.session_tracker import SessionTracker
from raftmq.lifecycle import guarded_thread

_RAFT_LEADER_STATE = 2
# pysyncobj's answers that mean an entry was certainly not (and will never be) applied.
_NEVER_APPLIED = {FAIL_REASON.DISCARDED, FAIL_REASON.QUEUE_FULL, FAIL_REASON.REQUEST_DENIED}
# A duty that did not take effect is proposed again after this long.
DUTY_RETRY_MS = 1_000
# How long `stop` waits for each of our threads.
THREAD_JOIN_S = 3.0
T = TypeVar("T")


def new_cluster_id() -> str:
    """A fresh cluster id as Kafka makes them: 22 characters, base64url of a uuid4."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


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
    # The cluster this controller belongs to (--cluster-id, else its data dir's stamp);
    # "" when it may join any. The first leader creates the cluster with this id, or a
    # fresh one.
    cluster_id: str = ""
    session_timeout_ms: int = 4_000
    # How often this controller looks at its duties.
    maintenance_interval_ms: int = 100
    # Automatic preferred-leader balancing (Kafka's auto.leader.rebalance), 0 disables.
    leader_balance_interval_ms: int = 10_000
    command_timeout_ms: int = 5_000
    # Snapshot (and truncate the journal) after this many entries or this long.
    log_compaction_entries_min: int = 10_000
    log_compaction_interval_s: int = 300


@dataclass(frozen=True, slots=True)
class VoterStatus:
    node_id: int
    raft_address: str
    state: str  # leader | follower | unreachable
    # The leader's view (-1 on other controllers, and for the leader itself): the last
    # Raft index it knows the voter holds, and how long ago the voter last answered it.
    match_index: int = -1
    last_contact_ms: int = -1


@dataclass(frozen=True, slots=True)
class QuorumStatus:
    leader_id: int
    term: int
    voters: tuple[VoterStatus, ...]
    commit_index: int
    last_applied: int


class ControllerQuorum(SyncObj):  # type: ignore[misc]
    """One controller's Raft member. Construct (binds the Raft port, replays the journal
    and snapshot), then `start()` the planner and maintenance threads; `stop()` at the end.

    Raises DataDirError for a journal or snapshot this version cannot read, PortInUseError
    when the Raft port is taken."""

    def __init__(
        self,
        config: QuorumConfig,
        *,
        stopping: threading.Event,
        on_fatal: Callable[[str], None],
    ) -> None:
        assert config.voters.get(config.node_id) == config.raft_address
        config.data_dir.mkdir(parents=True, exist_ok=True)
        quorum_storage.check_files(config.data_dir)
        # Everything the tick thread touches exists before SyncObj.__init__ starts it.
        self.config = config
        self.lock = threading.RLock()
        # Notified (under `lock`) after every applied entry that changed the state.
        self.changed = threading.Condition(self.lock)
        self.log = structlog.get_logger("raftmq.controller").bind(node_id=config.node_id)
        self._stopping = stopping
        self._on_fatal = on_fatal
        # Why this node stopped taking part ("" while healthy): an unreadable entry or
        # snapshot, or a quorum of another cluster. Set once; nothing is applied after it.
        self._refused = ""
        self._state = MetadataState()
        self.planner = Planner(self, apply_timeout_ms=config.command_timeout_ms, logger=self.log)
        # Written by gRPC threads (heartbeats) and the maintenance thread: every call of
        # `sessions` holds `_sessions_lock`.
        self._sessions_lock = threading.Lock()
        self.sessions = SessionTracker(session_timeout_ms=config.session_timeout_ms)
        # A stream lost during a maintenance wait is seen within its grace.
        assert 0 < config.maintenance_interval_ms <= self.sessions.disconnect_grace_ms
        self._id_by_address = {addr: node for node, addr in config.voters.items()}
        # The id this node proposes if it is the quorum's first leader.
        self._cluster_id_candidate = config.cluster_id or new_cluster_id()
        self._cluster_id_checked = False
        self._became_leader_term = -1
        self._fence_proposed_ms: dict[int, int] = {}
        # duty name -> when it was last proposed; a handful of names.
        self._duty_proposed_ms: dict[str, int] = {}
        self._last_balance_ms = 0
        self._threads: list[threading.Thread] = []
        others = [addr for node, addr in config.voters.items() if node != config.node_id]
        super().__init__(config.raft_address, others, self._sync_obj_conf())
        try:
            self.waitBinded()
        except SyncObjException as e:
            # The tick thread gave up binding and ended: close the socket and journal here.
            self._doDestroy()
            host, port = wire.parse_host_port(config.raft_bind)
            if not ports.port_free(host, port):
                raise ports.PortInUseError(host, port) from e
            raise OSError(f"cannot bind the Raft listener {config.raft_bind}") from e

    def _sync_obj_conf(self) -> Any:
        """pysyncobj tuned as ../shared/dependencies.md measured: its defaults give ~10
        commits/s and multi-second failovers; this gave 0.27-0.38 s leader kill -> next
        commit."""
        config = self.config
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
            journalFile=str(config.data_dir / quorum_storage.JOURNAL_FILE),
            fullDumpFile=str(config.data_dir / quorum_storage.SNAPSHOT_FILE),
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            # Snapshots by fork() are unsafe in a process that runs gRPC threads (and
            # pysyncobj never forks with a custom serializer).
            useFork=False,
            logCompactionMinEntries=config.log_compaction_entries_min,
            logCompactionMinTime=config.log_compaction_interval_s,
            # A snapshot stalls the tick thread: voters take turns, never all at once.
            logCompactionSplit=len(config.voters) > 1,
            bindAddress=config.raft_bind,
            # A taken Raft port is an error at start, not a retry every second.
            maxBindRetries=1,
            onStateChanged=self._on_state_changed,
            commandsQueueSize=10_000,
        )

    def start(self) -> None:
        """Start the planner and maintenance threads (guarded: a crash is logged and the
        loop restarted; repeated crashes end the process through `on_fatal`)."""
        assert not self._threads
        for name, target in (
            ("controller-planner", lambda: self.planner.run(self._stopping)),
            ("controller-maintenance", self._maintenance_loop),
        ):
            thread = guarded_thread(
                target, name=name, stopping=self._stopping, on_fatal=self._on_fatal, log=self.log
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop our threads (sets `stopping`, normally set already by the lifecycle) and
        pysyncobj."""
        self._stopping.set()
        with self.lock:
            self.changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=THREAD_JOIN_S)
        self.destroy()
        # pysyncobj's tick thread closes the journal on its way out; wait (bounded) so that
        # another quorum may open the same data dir right after (tests, restarts).
        deadline = time.monotonic() + THREAD_JOIN_S
        while self.tick_thread_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    # ------------------------------------------------------------ replication

    @replicated  # type: ignore[untyped-decorator]
    def _apply_entry(self, blob: bytes) -> EntryOutcome | None:
        """Apply one committed entry. Runs on the pysyncobj tick thread on every node, in
        log order. An entry this version cannot read stops this node for good (it applies
        nothing more, and ends the process): never a guess at what it meant."""
        if self._refused:
            return None
        try:
            entry = decode_entry(blob)
        except MetadataFormatError as e:
            self._refuse(f"the Raft log holds an entry this raftmq cannot read: {e}")
            return None
        with self.lock:
            try:
                outcome = self._state.apply_entry(entry)
            except Exception as e:
                self._refuse(f"replaying a committed entry failed: {e!r}")
                return None
            if outcome.applied and any(item.records for item in entry.items):
                self.changed.notify_all()
        return outcome

    def _refuse(self, reason: str) -> None:
        if not self._refused:
            self._refused = reason
            self.log.error("metadata.refused", reason=reason)
            self._on_fatal(reason)

    def propose(self, blob: bytes, on_applied: Callable[[EntryOutcome | None], None]) -> None:
        """Append an encoded entry (planner.MetadataLog). Any thread but the tick thread's
        callbacks may call it; forwarded by pysyncobj if this node does not lead."""

        def done(result: Any, error: Any) -> None:
            if error == FAIL_REASON.SUCCESS and isinstance(result, EntryOutcome):
                on_applied(result)
            elif error in _NEVER_APPLIED:
                on_applied(EntryOutcome(False, ()))
            else:
                on_applied(None)

        self._apply_entry(blob, callback=done)

    def committed_state(self) -> MetadataState:
        """A scratch copy of the applied state, for the planner."""
        with self.lock:
            return self._state.scratch_copy()

    def submit(self, command: Command, *, timeout_ms: int | None = None) -> CommandResult:
        """Plan and commit `command` on this node, which must lead (else NOT_CONTROLLER);
        wait until applied. From gRPC threads. CONTROLLER_UNAVAILABLE when the outcome
        is unknown: a retry with the same request id is safe."""
        return self.planner.submit(command, timeout_ms=timeout_ms or self.config.command_timeout_ms)

    # ------------------------------------------------------------ snapshots

    def _write_snapshot(self, path: str, raft: Any) -> None:
        """pysyncobj's serializer (tick thread): our state, in our versioned format."""
        if self._refused:
            raise RuntimeError(f"no snapshot of a refused state: {self._refused}")
        with self.lock:
            state = self._state.to_dict()
        data = quorum_storage.encode_snapshot(raft, state)
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.log.info("snapshot.written", version=state["version"], snapshot_bytes=len(data))

    def _read_snapshot(self, path: str) -> Any:
        """pysyncobj's deserializer (tick thread): at start, or a snapshot the leader sent.
        A file that is not ours is refused (pysyncobj would carry on without it)."""
        try:
            raft, state = quorum_storage.decode_snapshot(Path(path).read_bytes())
        except (OSError, MetadataFormatError) as e:
            self._refuse(f"{path}: {e}")
            raise
        with self.lock:
            self._state = state
            self.changed.notify_all()
        self.log.info("snapshot.loaded", version=state.version)
        return raft

    # ------------------------------------------------------------ reads

    def read(self, fn: Callable[[MetadataState], T]) -> T:
        """Run `fn` on this node's state under the lock (reads are local, like Kafka's)."""
        with self.lock:
            return fn(self._state)

    def state_while_locked(self) -> MetadataState:
        """For callers already holding `lock` (e.g. waiting on `changed`)."""
        return self._state

    def is_leader(self) -> bool:
        return not self._refused and bool(self._isLeader())

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
        leading = leader_id == self.config.node_id
        # pysyncobj keeps, on the leader, when each follower last answered (monotonic s).
        responses: dict[Any, float] = dict(getattr(self, "_SyncObj__lastResponseTime", {}))
        contact_ms = {
            getattr(node, "id", str(node)): int((time.monotonic() - at) * 1000)
            for node, at in responses.items()
        }
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
            own = node == self.config.node_id
            voters.append(
                VoterStatus(
                    node,
                    addr,
                    role,
                    match_index=int(raw.get(f"match_idx_server_{addr}", -1))
                    if leading and not own
                    else -1,
                    last_contact_ms=contact_ms.get(addr, -1) if leading and not own else -1,
                )
            )
        return QuorumStatus(
            leader_id=leader_id,
            term=int(raw.get("raft_term", 0)),
            voters=tuple(voters),
            commit_index=int(raw.get("commit_idx", 0)),
            last_applied=int(raw.get("last_applied", 0)),
        )

    # ------------------------------------------------------------ duties

    def _on_state_changed(self, old_state: int, new_state: int) -> None:
        """pysyncobj tick thread: never block here."""
        if new_state == _RAFT_LEADER_STATE:
            self.log.info("controller.leader_elected", term=self.term())
        elif old_state == _RAFT_LEADER_STATE:
            self.log.info("controller.leadership_lost", term=self.term())

    def _maintenance_loop(self) -> None:
        """Every `maintenance_interval_ms`, and exactly when a session is due to expire if
        that comes sooner: a lost session stream's grace ends between two rounds, and the
        fence then waited up to a round more (100 ms of a ~250 ms failover). A stream lost
        during a wait is seen at the next round, within the grace: the grace (150 ms) is
        longer than a round. Bound: until `stopping`; every wait is at least 1 ms (only
        sessions expiring after now count)."""
        interval_ms = self.config.maintenance_interval_ms
        while True:
            now_ms = int(time.monotonic() * 1000)
            with self._sessions_lock:
                expiry_ms = self.sessions.next_expiry_ms(now_ms=now_ms)
            wait_ms = interval_ms if expiry_ms is None else min(interval_ms, expiry_ms - now_ms)
            assert wait_ms > 0
            if self._stopping.wait(wait_ms / 1000):
                return
            self._maintain(int(time.monotonic() * 1000))

    def _due(self, duty: str, now_ms: int) -> bool:
        """Rate-limit a duty: True at most once per DUTY_RETRY_MS."""
        if now_ms - self._duty_proposed_ms.get(duty, -DUTY_RETRY_MS) < DUTY_RETRY_MS:
            return False
        self._duty_proposed_ms[duty] = now_ms
        return True

    def _maintain(self, now_ms: int) -> None:
        if self._refused:
            return
        with self.lock:
            cluster_id = self._state.cluster_id
            registered = self._state.controllers.get(self.config.node_id)
            controller_epoch = self._state.controller_epoch
            brokers = {
                b.broker_id: (b.broker_epoch, b.fenced) for b in self._state.brokers.values()
            }
        leader = self.is_leader()
        if not cluster_id:
            # The quorum's first state: its leader creates the cluster before anything else.
            if leader and self._due("initialize", now_ms):
                candidate = self._cluster_id_candidate
                self.planner.enqueue(InitializeCluster(f"init-{candidate}", candidate))
            return
        if not self._check_cluster_id(cluster_id):
            return
        own = (self.config.grpc_host, self.config.grpc_port)
        if (registered is None or (registered.host, registered.port) != own) and self._due(
            "register", now_ms
        ):
            self._register_endpoint()
        if not leader:
            self._became_leader_term = -1
            return
        term = self.term()
        if self._became_leader_term != term:
            # A fresh leader knows no heartbeats: every session starts now.
            self._became_leader_term = term
            with self._sessions_lock:
                self.sessions.reset(((b, e) for b, (e, _) in brokers.items()), now_ms=now_ms)
            self._fence_proposed_ms.clear()
            self._last_balance_ms = now_ms
        if controller_epoch < term:
            if self._due("epoch", now_ms):
                self.planner.enqueue(BeginControllerEpoch(f"epoch-{term}", term))
            return  # act only once our epoch is committed, fencing older leaders
        for broker_id, broker_epoch in self._expired_sessions(brokers, now_ms):
            last_ms = self._fence_proposed_ms.get(broker_id, -DUTY_RETRY_MS)
            if now_ms - last_ms >= DUTY_RETRY_MS:
                self._fence_proposed_ms[broker_id] = now_ms
                self.log.info("broker.session_expired", broker_id=broker_id)
                # A fresh request id each time: a broker can be fenced, unfenced and lost
                # again within one epoch and term, and a request id seen before gets its
                # first result and no records. A retry is harmless (a fenced broker's
                # fence plans nothing).
                request_id = f"fence-{broker_id}-{broker_epoch}-{term}-{uuid.uuid4().hex}"
                self.planner.enqueue(FenceBroker(request_id, term, broker_id, broker_epoch))
        interval_ms = self.config.leader_balance_interval_ms
        if interval_ms > 0 and now_ms - self._last_balance_ms >= interval_ms:
            self._last_balance_ms = now_ms
            self.planner.enqueue(ElectLeaders(uuid.uuid4().hex, term, True))

    def _expired_sessions(
        self, brokers: dict[int, tuple[int, bool]], now_ms: int
    ) -> list[tuple[int, int]]:
        """(broker id, epoch) of unfenced brokers whose session expired. Sessions of
        incarnations the state no longer knows are dropped, in the same critical section
        (a heartbeat of a new incarnation must not slip in between)."""
        expired = []
        with self._sessions_lock:
            for broker_id, broker_epoch in self.sessions.expired(now_ms=now_ms):
                current = brokers.get(broker_id)
                if current is None or current[0] != broker_epoch:
                    self.sessions.forget(broker_id)
                elif not current[1]:
                    expired.append((broker_id, broker_epoch))
        return expired

    def _check_cluster_id(self, cluster_id: str) -> bool:
        """Once the quorum's cluster id is applied: refuse a quorum of another cluster
        (the process ends, naming both), stamp the data dir of a new controller."""
        if self._cluster_id_checked:
            return True
        own = self.config.cluster_id
        if own and own != cluster_id:
            self._refuse(
                f"controller {self.config.node_id} belongs to cluster {own} (its data dir or "
                f"--cluster-id), but the quorum it joined is cluster {cluster_id}; refusing "
                "to mix them"
            )
            return False
        meta = node_meta.load(self.config.data_dir)
        if meta is None or not meta.cluster_id:
            node_meta.stamp(
                self.config.data_dir,
                node_meta.NodeMeta(cluster_id, self.config.node_id, "controller"),
            )
            self.log.info("data_dir.stamped", cluster_id=cluster_id)
        self._cluster_id_checked = True
        return True

    def _register_endpoint(self) -> None:
        """Commit this controller's gRPC endpoint: an unconditional entry (valid in any
        state), proposed on every controller and forwarded by pysyncobj to the leader."""
        command = RegisterController(
            "", self.config.node_id, self.config.grpc_host, self.config.grpc_port
        )
        records, result = self.read(lambda s: s.plan(command))
        if not records:
            return
        entry = MetadataEntry(None, (MetadataItem("", tuple(records), result),))

        def done(outcome: EntryOutcome | None) -> None:
            if outcome is None or not outcome.applied:
                self.log.info("controller.registration_unconfirmed")

        self.propose(encode_entry(entry), done)

    def on_session_stream_lost(self, broker_id: int, broker_epoch: int, stream_token: int) -> None:
        """From gRPC threads: a broker's session stream broke without a goodbye (its
        process died, or its connection did). The session then expires after a short
        grace unless the broker heartbeats again (on a new stream) meanwhile."""
        now_ms = int(time.monotonic() * 1000)
        with self._sessions_lock:
            current = self.sessions.disconnected(
                broker_id, broker_epoch, stream_token=stream_token, now_ms=now_ms
            )
        if current and self.is_leader():
            self.log.info("broker.session_stream_lost", broker_id=broker_id)

    def on_heartbeat(
        self,
        broker_id: int,
        broker_epoch: int,
        *,
        metadata_version: int,
        want_fence: bool,
        stream_token: int | None = None,
    ) -> None:
        """Leader only, from gRPC threads: record the heartbeat; unfence a returning broker
        that does not ask to stay fenced (the plan checks it has caught up)."""
        now_ms = int(time.monotonic() * 1000)
        with self._sessions_lock:
            self.sessions.heartbeat(
                broker_id, broker_epoch, now_ms=now_ms, stream_token=stream_token
            )
        with self.lock:
            broker = self._state.brokers.get(broker_id)
            epoch = self._state.controller_epoch
        if broker is not None and broker.fenced and not want_fence and epoch == self.term():
            self.planner.enqueue(
                UnfenceBroker(uuid.uuid4().hex, epoch, broker_id, broker_epoch, metadata_version)
            )
