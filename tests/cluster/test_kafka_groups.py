"""Kafka's classic group protocol on a real cluster (3 brokers, the Kafka listener on
each), with Kafka clients nobody here wrote:

- kafka-python: two KafkaConsumers of one group split a 4-partition topic with no
  overlap and commit; one closes (LeaveGroup) and the other takes every partition; a
  consumer started later resumes at the committed offsets (it reads only what came
  after); `raftmq group describe` shows the classic group with its members;
- confluent-kafka (librdkafka): the same split, close and resume; a static member
  (group.instance.id) restarting keeps its partitions without a rebalance;
- a kill -9 of the coordinator's broker under two kafka-python members: a new
  coordinator loads the group (at the same generation or later), the members carry on,
  every message is read and committed offsets never go backwards.

Each consumer polls on a thread of its own (a member blocks in its join until the round
completes, which needs the other member's join too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from raftmq import Admin, Message, Writer
from raftmq.errors import RaftmqError
from raftmq.local_cluster import LocalCluster, wait_until

from tests.conftest import running_cluster

pytestmark = [
    pytest.mark.cluster,
    # kafka-python 3.x reads its bundled schemas with importlib.resources.read_text.
    pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning"),
]

PARTITIONS = 4
SESSION_TIMEOUT_MS = 6_000
# Room for a loaded machine (2 cores shared with other work) on top of protocol times.
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("kafka-groups"), controllers=1, brokers=3) as c:
        yield c


def make_topic(cluster: LocalCluster, name: str) -> None:
    with Admin(cluster.layout.broker_endpoints) as admin:
        admin.create_topic(name, partitions=PARTITIONS, replication_factor=3)


def produce(cluster: LocalCluster, topic: str, start: int, count: int) -> set[bytes]:
    values = [f"{topic}-{i}".encode() for i in range(start, start + count)]
    with Writer(cluster.layout.broker_endpoints, topic=topic) as writer:
        writer.write_messages(*[Message(v, key=v) for v in values])
    return set(values)


@dataclass
class Member:
    """A consumer on its own thread: `poll` returns [(partition, offset, value)] and
    commits what it returned; `assignment` returns the partitions it owns."""

    name: str
    poll: Callable[[], list[tuple[int, int, bytes]]]
    assignment: Callable[[], set[int]]
    close: Callable[[], None]
    seen: list[tuple[int, int, bytes]] = field(default_factory=list)
    owned: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                got = self.poll()
                owned = self.assignment()
                with self.lock:
                    self.seen.extend(got)
                    self.owned = owned
        except BaseException as e:  # reported by the test thread
            self.error = e
        finally:
            self.close()

    def shut(self) -> None:
        """Stop polling and close the consumer (a LeaveGroup), on its own thread."""
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=TIMEOUT_S)
        assert not self.thread.is_alive(), f"{self.name} did not close"
        assert self.error is None, self.error

    def values(self) -> set[bytes]:
        with self.lock:
            return {v for _, _, v in self.seen}

    def partitions(self) -> set[int]:
        with self.lock:
            return set(self.owned)


def kafka_python_member(cluster: LocalCluster, topic: str, group: str, name: str) -> Member:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=cluster.layout.kafka_endpoints,
        group_id=group,
        client_id=name,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=500,
    )

    def poll() -> list[tuple[int, int, bytes]]:
        batches = consumer.poll(timeout_ms=200)
        got = [(r.partition, r.offset, r.value) for rs in batches.values() for r in rs]
        if got:
            consumer.commit()
        return got

    return Member(
        name,
        poll,
        lambda: {tp.partition for tp in consumer.assignment()},
        consumer.close,
    )


def confluent_member(
    cluster: LocalCluster, topic: str, group: str, name: str, *, instance_id: str = ""
) -> Member:
    from confluent_kafka import Consumer

    config: dict[str, str | int | bool] = {
        "bootstrap.servers": ",".join(cluster.layout.kafka_endpoints),
        "group.id": group,
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 500,
    }
    if instance_id:
        config["group.instance.id"] = instance_id
    consumer = Consumer(config)
    consumer.subscribe([topic])

    def poll() -> list[tuple[int, int, bytes]]:
        messages = consumer.consume(num_messages=100, timeout=0.2)
        got = []
        for m in messages:
            if m.error() is None:
                got.append((m.partition(), m.offset(), m.value()))
        if got:
            consumer.commit(asynchronous=False)
        return got

    return Member(
        name,
        poll,
        lambda: {tp.partition for tp in consumer.assignment()},
        consumer.close,
    )


def raftmq(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftmq.cli.main", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, RAFTMQ_BOOTSTRAP=",".join(cluster.layout.broker_endpoints)),
        timeout=120,
        check=False,
    )


def split_close_resume(
    cluster: LocalCluster,
    make: Callable[[LocalCluster, str, str, str], Member],
    topic: str,
    group: str,
) -> None:
    make_topic(cluster, topic)
    first = produce(cluster, topic, 0, 40)
    a, b = make(cluster, topic, group, "a"), make(cluster, topic, group, "b")
    a.start()
    b.start()
    try:
        # Two members split the partitions with no overlap and read everything.
        wait_until(
            lambda: (
                a.partitions()
                and b.partitions()
                and not a.partitions() & b.partitions()
                and a.partitions() | b.partitions() == set(range(PARTITIONS))
                and first <= a.values() | b.values()
            ),
            timeout_s=TIMEOUT_S,
            what="two members splitting the partitions and reading every message",
        )
        described = json.loads(raftmq(cluster, "group", "describe", group, "--json").stdout)
        assert described["state"] == "stable" and described["assignor"].startswith("classic:")
        owners = [
            {p for a in m["assignment"] if a["topic"] == topic for p in a["partitions"]}
            for m in described["members"]
        ]
        assert len(owners) == 2 and not owners[0] & owners[1]
        # One closes: the other takes every partition and reads what comes next.
        a.shut()
        wait_until(
            lambda: b.partitions() == set(range(PARTITIONS)),
            timeout_s=TIMEOUT_S,
            what="the remaining member owning every partition",
        )
        second = produce(cluster, topic, 40, 20)
        wait_until(
            lambda: second <= b.values(), timeout_s=TIMEOUT_S, what="the survivor reading on"
        )
    finally:
        for m in (a, b):
            if m.thread is not None and m.thread.is_alive():
                m.shut()
    # A member started later resumes at the committed offsets: only what came after.
    third = produce(cluster, topic, 60, 8)
    c = make(cluster, topic, group, "c")
    c.start()
    try:
        wait_until(lambda: third <= c.values(), timeout_s=TIMEOUT_S, what="the restart reading")
        # A window for anything it would wrongly re-read (it comes with the same fetches).
        time.sleep(0.5)
        assert c.values() == third, sorted(c.values() - third)[:5]
    finally:
        c.shut()
    described = json.loads(raftmq(cluster, "group", "describe", group, "--json").stdout)
    assert described["state"] == "empty" and described["lag"] == 0


def test_kafka_python_consumers_split_commit_and_resume(cluster: LocalCluster) -> None:
    split_close_resume(cluster, kafka_python_member, "kp-topic", "kp-group")


def test_confluent_kafka_consumers_split_commit_and_resume(cluster: LocalCluster) -> None:
    split_close_resume(cluster, confluent_member, "ck-topic", "ck-group")


def test_a_static_member_restarting_keeps_its_partitions_without_a_rebalance(
    cluster: LocalCluster,
) -> None:
    """KIP-345 with librdkafka: a static member does not leave on close; its next
    incarnation (same group.instance.id, within the session timeout) takes its place at
    the same generation, and the other member's assignment never moves."""
    topic, group = "static-topic", "static-group"
    make_topic(cluster, topic)
    produce(cluster, topic, 0, 20)
    a = confluent_member(cluster, topic, group, "a", instance_id="i-a")
    b = confluent_member(cluster, topic, group, "b", instance_id="i-b")
    a.start()
    b.start()
    try:
        wait_until(
            lambda: (
                a.partitions()
                and b.partitions()
                and a.partitions() | b.partitions() == set(range(PARTITIONS))
            ),
            timeout_s=TIMEOUT_S,
            what="two static members splitting the partitions",
        )
        before = json.loads(raftmq(cluster, "group", "describe", group, "--json").stdout)
        mine, theirs = a.partitions(), b.partitions()
        a.shut()
        again = confluent_member(cluster, topic, group, "a2", instance_id="i-a")
        again.start()
        try:
            wait_until(
                lambda: again.partitions() == mine,
                timeout_s=SESSION_TIMEOUT_MS / 1000,
                what="the new incarnation owning what the old one had",
            )
            after = json.loads(raftmq(cluster, "group", "describe", group, "--json").stdout)
            assert after["group_epoch"] == before["group_epoch"]  # no rebalance
            assert b.partitions() == theirs
            assert len(after["members"]) == 2
        finally:
            again.shut()
    finally:
        for m in (a, b):
            if m.thread is not None and m.thread.is_alive():
                m.shut()


# kafka-python leaves the sockets of a broker that died to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_kill_9_of_the_coordinators_broker_under_kafka_python_members(
    make_cluster: type[LocalCluster],
) -> None:
    """A cluster of its own (it kills a broker)."""
    cluster = make_cluster(controllers=1, brokers=3)
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    topic, group = "kp-failover", "kp-failing"
    make_topic(cluster, topic)
    values = produce(cluster, topic, 0, 100)
    history: dict[int, list[int]] = {}

    def sample(admin: Admin) -> int | None:
        """Record the committed offsets; the coordinator's id, None while it moves."""
        try:
            described = admin.describe_group(group)
        except RaftmqError:
            return None
        for p in described.partitions:
            if p.committed_offset >= 0:
                history.setdefault(p.partition, []).append(p.committed_offset)
        return described.coordinator_id

    a = kafka_python_member(cluster, topic, group, "a")
    b = kafka_python_member(cluster, topic, group, "b")
    a.start()
    b.start()
    try:
        with Admin(cluster.layout.broker_endpoints, timeout_ms=5_000) as admin:
            wait_until(
                lambda: values <= a.values() | b.values() and sample(admin) is not None,
                timeout_s=TIMEOUT_S,
                what="both members reading and committing",
            )
            before = admin.describe_group(group)
            killed = before.coordinator_id
            cluster.brokers[killed].kill()
            values |= produce(cluster, topic, 100, 100)  # during the failover
            wait_until(
                lambda: sample(admin) not in (None, killed),
                timeout_s=TIMEOUT_S,
                what="a new coordinator that loaded the group",
            )
            wait_until(
                lambda: values <= a.values() | b.values(),
                timeout_s=TIMEOUT_S,
                what="every message read after the failover",
            )
            wait_until(
                lambda: (
                    a.partitions()
                    and b.partitions()
                    and a.partitions() | b.partitions() == set(range(PARTITIONS))
                ),
                timeout_s=TIMEOUT_S,
                what="the members sharing the partitions again",
            )
            after = admin.describe_group(group)
            sample(admin)
        assert after.coordinator_id != killed
        assert after.group_epoch >= before.group_epoch  # continued, never restarted at 0
        assert history and all(h == sorted(h) for h in history.values())  # never backwards
        assert not a.partitions() & b.partitions()
    finally:
        for m in (a, b):
            if m.thread is not None and m.thread.is_alive():
                m.shut()
