"""The pysyncobj shell in-process, as a single-node quorum on 127.0.0.1: snapshots in our
own format that load again, the golden data of schema 1, refusal of the format-1 journal
and snapshot (and of anything unreadable at run time), the cluster id, the Raft port, and
the lock around broker sessions."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from raftmq import node_meta
from raftmq.controller import metadata_commands as mc
from raftmq.controller.metadata_records import MetadataFormatError
from raftmq.controller.quorum import ControllerQuorum, QuorumConfig
from raftmq.controller.quorum_storage import SNAPSHOT_MAGIC
from raftmq.controller.session_tracker import SessionTracker
from raftmq.local_cluster import free_ports, wait_until
from raftmq.node_meta import DataDirError, NodeMeta
from raftmq.ports import PortInUseError, held_port

# pysyncobj's journal (MetaStorer.getMeta) opens raft.journal.meta without closing it.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <_io.FileIO name='.*raft\.journal\.meta'"
    ":pytest.PytestUnraisableExceptionWarning"
)
GOLDEN = Path(__file__).parents[1] / "golden"
WAIT_S = 20


class Node:
    """One in-process controller and what its lifecycle would have been told."""

    def __init__(self, data_dir: Path, *, start: bool = True, **config: Any) -> None:
        self.stopping = threading.Event()
        self.fatal: list[str] = []
        address = config.pop("raft_address", f"127.0.0.1:{free_ports(1)[0]}")
        self.quorum = ControllerQuorum(
            QuorumConfig(
                node_id=1,
                raft_address=address,
                raft_bind=address,
                voters={1: address},
                data_dir=data_dir,
                password="test",
                grpc_host="127.0.0.1",
                grpc_port=19092,
                **{"session_timeout_ms": 600_000, "leader_balance_interval_ms": 0, **config},
            ),
            stopping=self.stopping,
            on_fatal=self.fatal.append,
        )
        if start:
            self.quorum.start()

    def state(self, fn: Callable[[Any], Any]) -> Any:
        return self.quorum.read(fn)

    def wait_ready(self) -> None:
        wait_until(
            lambda: self.state(lambda s: s.controller_epoch >= 1 and 1 in s.controllers),
            timeout_s=WAIT_S,
            what="the single-node quorum's first duties",
        )


@pytest.fixture
def make_node() -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(data_dir: Path, **kwargs: Any) -> Node:
        node = Node(data_dir, **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.quorum.stop()


def submit(node: Node, command: mc.Command) -> mc.CommandResult:
    return node.quorum.submit(command, timeout_ms=10_000)


def register_and_unfence(node: Node, broker_id: int) -> int:
    result = submit(node, mc.RegisterBroker(f"reg-{broker_id}", broker_id, "h", 9000, "", "inc"))
    assert result.ok and isinstance(result.value, int), result
    term = node.state(lambda s: s.controller_epoch)
    unfence = mc.UnfenceBroker(f"unfence-{broker_id}", term, broker_id, result.value, result.value)
    assert submit(node, unfence).ok
    return result.value


def test_first_leader_creates_the_cluster_and_stamps_the_data_dir(tmp_path, make_node) -> None:
    node = make_node(tmp_path / "c1")
    node.wait_ready()
    cluster_id = node.state(lambda s: s.cluster_id)
    assert len(cluster_id) == 22  # Kafka's form: base64url of a uuid4
    wait_until((tmp_path / "c1" / "meta.json").exists, timeout_s=WAIT_S, what="meta.json")
    assert node_meta.load(tmp_path / "c1") == NodeMeta(cluster_id, 1, "controller")
    assert not node.fatal


def test_a_given_cluster_id_is_used(tmp_path, make_node) -> None:
    node = make_node(tmp_path / "c1", cluster_id="my-cluster")
    node.wait_ready()
    assert node.state(lambda s: s.cluster_id) == "my-cluster"


def test_snapshots_are_ours_and_load_again(tmp_path, make_node) -> None:
    node = make_node(tmp_path / "c1")
    node.wait_ready()
    register_and_unfence(node, 1)
    assert submit(node, mc.CreateTopic("t", "t", b"t" * 16, 4, 1)).ok
    node.quorum.forceLogCompaction()
    snapshot = tmp_path / "c1" / "raft.snapshot"
    wait_until(snapshot.exists, timeout_s=WAIT_S, what="a snapshot")
    assert snapshot.read_bytes().startswith(SNAPSHOT_MAGIC)
    assert submit(node, mc.DeleteTopic("d", "t")).ok  # in the journal, after the snapshot
    assert submit(node, mc.CreateTopic("u", "u", b"u" * 16, 2, 1)).ok
    expected = node.state(lambda s: s.to_dict())
    node.quorum.stop()
    again = make_node(tmp_path / "c1", start=False)
    wait_until(
        lambda: again.state(lambda s: s.version) >= expected["version"],
        timeout_s=WAIT_S,
        what="the journal replayed onto the snapshot",
    )
    assert again.state(lambda s: s.to_dict()) == expected


def test_golden_records_v1_load_into_the_expected_state(tmp_path, make_node) -> None:
    """Files written by schema version 1 (tests/golden/make_records_v1.py): a snapshot and
    the journal after it. Today's code must read them into exactly the same state."""
    data_dir = tmp_path / "records_v1"
    shutil.copytree(GOLDEN / "records_v1", data_dir)
    expected = json.loads((GOLDEN / "records_v1.expected.json").read_text())
    assert node_meta.check(data_dir, role="controller", node_id=1) is not None
    # No duties (no start()): only what the files hold.
    node = make_node(data_dir, start=False, cluster_id=expected["cluster_id"])
    wait_until(
        lambda: node.state(lambda s: s.version) >= expected["version"],
        timeout_s=WAIT_S,
        what="the golden journal replayed",
    )
    assert node.state(lambda s: s.to_dict()) == expected
    node.state(lambda s: s.check_invariants())
    assert not node.fatal


def format1_copy(tmp_path: Path, *, files: tuple[str, ...], stamped: bool) -> Path:
    data_dir = tmp_path / "format1"
    data_dir.mkdir()
    for name in files:
        shutil.copy(GOLDEN / "format1" / name, data_dir / name)
    if stamped:  # as if meta.json had been copied in: the files themselves must be refused
        node_meta.stamp(data_dir, NodeMeta("some-cluster", 1, "controller"))
    return data_dir


def test_a_format1_data_dir_is_refused(tmp_path) -> None:
    data_dir = format1_copy(
        tmp_path, files=("raft.journal", "raft.journal.meta", "raft.snapshot"), stamped=False
    )
    with pytest.raises(DataDirError, match="older raftmq"):
        node_meta.check(data_dir, role="controller", node_id=1)


def test_a_format1_journal_is_refused_even_with_a_meta_json(tmp_path) -> None:
    data_dir = format1_copy(tmp_path, files=("raft.journal", "raft.journal.meta"), stamped=True)
    with pytest.raises(DataDirError) as refused:
        Node(data_dir)
    message = str(refused.value)
    assert "raft.journal entry" in message and "metadata_state." in message
    assert "older raftmq" in message and "format 1" in message


def test_a_format1_snapshot_is_refused_even_with_a_meta_json(tmp_path) -> None:
    data_dir = format1_copy(tmp_path, files=("raft.snapshot",), stamped=True)
    with pytest.raises(DataDirError, match="not a versioned raftmq snapshot"):
        Node(data_dir)


def test_an_unreadable_snapshot_at_run_time_is_fatal(tmp_path, make_node) -> None:
    """The deserializer also runs when a leader sends a snapshot: pysyncobj would log the
    failure and carry on, so the shell stops applying and ends the process."""
    node = make_node(tmp_path / "c1")
    node.wait_ready()
    with pytest.raises(MetadataFormatError):
        node.quorum._read_snapshot(str(GOLDEN / "format1" / "raft.snapshot"))
    assert node.fatal and "not a versioned raftmq snapshot" in node.fatal[0]
    version = node.state(lambda s: s.version)
    assert not node.quorum.is_leader()
    node.quorum.propose(b"anything", lambda outcome: None)
    assert node.state(lambda s: s.version) == version


def test_an_unreadable_entry_at_run_time_is_fatal_and_nothing_after_it_applies(
    tmp_path, make_node
) -> None:
    node = make_node(tmp_path / "c1")
    node.wait_ready()
    version = node.state(lambda s: s.version)
    # What an old journal hands the replicated method: a pickled command object.
    old_style = mc.CreateTopic("old", "old", b"o" * 16, 1, 1)
    node.quorum._apply_entry(old_style, callback=lambda result, error: None)
    wait_until(lambda: bool(node.fatal), timeout_s=WAIT_S, what="the refusal")
    assert "older raftmq" in node.fatal[0]
    assert node.state(lambda s: (s.version, "old" in s.topics)) == (version, False)


def test_a_quorum_of_another_cluster_is_fatal_naming_both_ids(tmp_path, make_node) -> None:
    data_dir = tmp_path / "records_v1"
    shutil.copytree(GOLDEN / "records_v1", data_dir)
    expected = json.loads((GOLDEN / "records_v1.expected.json").read_text())
    node = make_node(data_dir, cluster_id="another-cluster")
    wait_until(lambda: bool(node.fatal), timeout_s=WAIT_S, what="the cluster id refusal")
    assert "another-cluster" in node.fatal[0] and expected["cluster_id"] in node.fatal[0]
    assert not node.quorum.is_leader()


def test_a_taken_raft_port_is_a_clear_error(tmp_path) -> None:
    with held_port() as port:
        started = time.monotonic()
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port} is already in use"):
            Node(tmp_path / "c1", raft_address=f"127.0.0.1:{port}")
        assert time.monotonic() - started < 5


def test_a_heartbeat_unfences_only_once_metadata_reached_the_registration(
    tmp_path, make_node
) -> None:
    node = make_node(tmp_path / "c1")
    node.wait_ready()
    result = submit(node, mc.RegisterBroker("reg", 1, "h", 9000, "", "inc"))
    epoch = result.value
    assert isinstance(epoch, int)
    node.quorum.on_heartbeat(1, epoch, metadata_version=epoch - 1, want_fence=False)
    # Queued after the heartbeat's unfence attempt: once answered, that one was applied.
    assert submit(node, mc.DeleteTopic("probe", "no-such-topic")).error.name == (
        "UNKNOWN_TOPIC_OR_PARTITION"
    )
    assert node.state(lambda s: s.brokers[1].fenced)
    node.quorum.on_heartbeat(1, epoch, metadata_version=epoch, want_fence=True)
    assert submit(node, mc.DeleteTopic("probe-2", "no-such-topic")).error.name == (
        "UNKNOWN_TOPIC_OR_PARTITION"
    )
    assert node.state(lambda s: s.brokers[1].fenced)
    node.quorum.on_heartbeat(1, epoch, metadata_version=epoch, want_fence=False)
    wait_until(
        lambda: not node.state(lambda s: s.brokers[1].fenced), timeout_s=WAIT_S, what="unfence"
    )


class InterleavingTracker(SessionTracker):
    """Walks its sessions in Python code, one switch point per session, so that a
    heartbeat on another thread can run in the middle (CPython's sorted() over a dict is
    atomic only by accident of the GIL)."""

    def expired(self, *, now_ms: int) -> list[tuple[int, int]]:
        expired = []
        for broker_id, session in self._sessions.items():
            time.sleep(0)
            if session.last_heartbeat_ms < now_ms - self.session_timeout_ms:
                expired.append((broker_id, session.broker_epoch))
        return expired


def test_heartbeats_of_new_brokers_while_sessions_expire(tmp_path, make_node) -> None:
    node = make_node(tmp_path / "c1")
    node.wait_ready()
    quorum = node.quorum
    quorum.sessions = InterleavingTracker(session_timeout_ms=1)
    for broker_id in range(200):
        quorum.on_heartbeat(broker_id, 1, metadata_version=0, want_fence=False)
    stop = threading.Event()
    errors: list[BaseException] = []

    def heartbeats() -> None:
        broker_ids = iter(range(1_000, 1_000_000))
        while not stop.is_set():
            try:
                quorum.on_heartbeat(next(broker_ids), 1, metadata_version=0, want_fence=False)
            except BaseException as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=heartbeats) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        brokers = {b: (1, False) for b in range(200)}
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not errors:
            quorum._expired_sessions(brokers, int(time.monotonic() * 1000) + 10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    assert not errors, errors


def test_a_broker_fenced_unfenced_and_lost_again_in_one_term_is_fenced_again(
    tmp_path, make_node
) -> None:
    """A pause fences a broker, its return unfences it, and then it dies: all in one
    broker epoch and one controller term. The second fence must not be taken for a
    duplicate of the first (a request id seen before gets no records), or the dead broker
    keeps leading until it registers again (chaos seeds 9113 and 9118: 4.6-5.9 s)."""
    node = make_node(tmp_path / "c1", session_timeout_ms=300)
    node.wait_ready()
    epoch = register_and_unfence(node, 1)

    def fenced() -> bool:
        return bool(node.state(lambda s: s.brokers[1].fenced))

    node.quorum.on_heartbeat(1, epoch, metadata_version=epoch, want_fence=False)
    wait_until(fenced, timeout_s=WAIT_S, what="the first fence (no heartbeats: a pause)")
    # It comes back: heartbeats unfence it (the plan checks its metadata caught up).
    version = node.state(lambda s: s.version)
    node.quorum.on_heartbeat(1, epoch, metadata_version=version, want_fence=False)
    wait_until(lambda: not fenced(), timeout_s=WAIT_S, what="the unfence")
    term = node.state(lambda s: s.controller_epoch)
    # ... and dies: no more heartbeats. Same broker epoch, same term.
    wait_until(fenced, timeout_s=WAIT_S, what="the second fence")
    assert node.state(lambda s: (s.brokers[1].broker_epoch, s.controller_epoch)) == (epoch, term)
