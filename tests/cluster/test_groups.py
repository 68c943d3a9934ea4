"""Consumer groups against a real cluster (3 brokers, the coordinator on
`__consumer_offsets`), through the client library and the CLI:

- point to point: 3 members of one group on a 6-partition topic share the partitions
  with no overlap, and every message is read once;
- a member that is closed, or killed with kill -9 (a process of its own, stopped by PID),
  loses its partitions to the others (a closed one at once, a killed one within the
  session timeout);
- publish/subscribe: two groups each read every message;
- static membership: a member restarted with the same group_instance_id within the
  session timeout gets its partitions back with no rebalance (the group epoch stays);
- an application that stops polling for max_poll_interval_ms leaves, and rejoins when it
  reads again; explicit commits; the asyncio twins;
- the CLI: consume --group with --timeout-ms commits what it printed and a second run
  resumes after it; group describe shows the lag going down; reset-offsets on an empty
  group and its refusal on a live one; delete;
- a kill -9 of the coordinator's broker during consumption: no acknowledged message is
  skipped and committed offsets never go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from raftmq import Admin, AsyncAdmin, AsyncReader, Message, Reader, Writer
from raftmq.broker.group_coordinator import OFFSETS_TOPIC, partition_for
from raftmq.errors import ErrorCode, GroupIdNotFoundError, NonEmptyGroupError, RaftmqError
from raftmq.local_cluster import LocalCluster, wait_until

from tests.conftest import running_cluster

pytestmark = pytest.mark.cluster

SESSION_TIMEOUT_MS = 6_000
# Room for a loaded machine (2 cores shared with other work) on top of protocol times.
SLACK_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("groups"), controllers=1, brokers=3) as c:
        yield c


@pytest.fixture
def brokers(cluster: LocalCluster) -> list[str]:
    return cluster.layout.broker_endpoints


def make_topic(brokers: list[str], name: str, partitions: int) -> None:
    with Admin(brokers) as admin:
        admin.create_topic(name, partitions=partitions, replication_factor=3)


def produce(brokers: list[str], topic: str, count: int, *, start: int = 0) -> list[bytes]:
    values = [f"{topic}-{i}".encode() for i in range(start, start + count)]
    with Writer(brokers, topic=topic) as writer:
        writer.write_messages(*[Message(v, key=v) for v in values])
    return values


def owned(readers: list[Reader]) -> list[set[tuple[str, int]]]:
    return [set(r.assignment) for r in readers]


def shared_without_overlap(readers: list[Reader], partitions: set[tuple[str, int]]) -> bool:
    sets = owned(readers)
    return (
        all(sets)
        and sum(len(s) for s in sets) == len(partitions)
        and set().union(*sets) == partitions
    )


def read_everything(readers: list[Reader], count: int, *, timeout_s: float = 60) -> list[Message]:
    """Round robin over the readers (one thread, each read bounded) until `count`."""
    read: list[Message] = []
    deadline = time.monotonic() + timeout_s
    # Bound: the deadline.
    while len(read) < count:
        assert time.monotonic() < deadline, f"read {len(read)} of {count}"
        for reader in readers:
            try:
                read.append(reader.read_message(timeout_ms=200))
            except TimeoutError:
                continue
    return read


def describe(brokers: list[str], group: str) -> Any:
    with Admin(brokers) as admin:
        return admin.describe_group(group)


def wait_stable(brokers: list[str], group: str, members: int) -> Any:
    found: list[Any] = []

    def stable() -> bool:
        try:
            d = describe(brokers, group)
        except GroupIdNotFoundError:
            return False  # the members' first heartbeats have not created it yet
        found[:] = [d]
        return d.state == "stable" and len(d.members) == members

    wait_until(stable, timeout_s=30 + SLACK_S, what=f"{group} stable with {members} members")
    return found[0]


# ---------------------------------------------------------------- sharing


def test_three_members_share_six_partitions_without_overlap(brokers: list[str]) -> None:
    make_topic(brokers, "shared", 6)
    partitions = {("shared", p) for p in range(6)}
    readers = [
        Reader(brokers, group_id="sharing", topic="shared", auto_offset_reset="earliest")
        for _ in range(3)
    ]
    try:
        # Each member learns its assignment on its own heartbeat, so on the way there the
        # members can hold e.g. 1, 2 and 3 partitions without overlap: wait for the end.
        wait_until(
            lambda: (
                shared_without_overlap(readers, partitions)
                and sorted(len(s) for s in owned(readers)) == [2, 2, 2]
            ),
            timeout_s=30 + SLACK_S,
            what="three members owning two partitions each",
        )
        assert sorted(len(s) for s in owned(readers)) == [2, 2, 2]  # uniform
        described = wait_stable(brokers, "sharing", 3)
        by_member = {m.member_id: set(m.assignment) for m in described.members}
        assert sorted(map(len, by_member.values())) == [2, 2, 2]
        values = produce(brokers, "shared", 120)
        read = read_everything(readers, len(values))
        assert sorted(m.value or b"" for m in read) == sorted(values)  # each exactly once
        for reader in readers:
            mine = set(reader.assignment)
            stats = reader.stats()
            assert stats.group is not None and stats.group.lost == 0
            assert {(p.topic, p.partition) for p in stats.group.partitions} == mine
    finally:
        for reader in readers:
            reader.close()
    with Admin(brokers) as admin:
        after = admin.describe_group("sharing")
    assert after.state == "empty" and after.members == ()
    # close() committed everything that was read, up to the end of every partition.
    assert [(p.committed_offset, p.lag) for p in after.partitions] == [(20, 0)] * 6


def test_a_closed_member_hands_its_partitions_over_at_once(brokers: list[str]) -> None:
    make_topic(brokers, "handover", 6)
    partitions = {("handover", p) for p in range(6)}
    readers = [
        Reader(
            brokers,
            group_id="handing",
            topic="handover",
            session_timeout_ms=60_000,  # a closed member leaves: no session to wait for
        )
        for _ in range(3)
    ]
    try:
        wait_until(
            lambda: shared_without_overlap(readers, partitions),
            timeout_s=30 + SLACK_S,
            what="three members sharing the partitions",
        )
        closed = readers.pop()
        closed_at = time.monotonic()
        closed.close()
        wait_until(
            lambda: shared_without_overlap(readers, partitions),
            timeout_s=SLACK_S,
            what="the two others owning every partition",
        )
        # Far less than the 60 s session: the leave (epoch -1) was the signal.
        assert time.monotonic() - closed_at < SLACK_S
    finally:
        for reader in readers:
            reader.close()


MEMBER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from raftmq import Reader
    brokers, group, topic, session_ms = sys.argv[1].split(","), sys.argv[2], sys.argv[3], int(sys.argv[4])
    reader = Reader(brokers, group_id=group, topic=topic, session_timeout_ms=session_ms)
    shown = None
    while True:
        if reader.assignment != shown:
            shown = reader.assignment
            print(json.dumps(shown), flush=True)
        try:
            reader.read_message(timeout_ms=100)
        except TimeoutError:
            pass
    """
)


def test_a_killed_members_partitions_move_within_the_session_timeout(brokers: list[str]) -> None:
    make_topic(brokers, "killed", 6)
    partitions = {("killed", p) for p in range(6)}
    readers = [
        Reader(brokers, group_id="killing", topic="killed", session_timeout_ms=SESSION_TIMEOUT_MS)
        for _ in range(2)
    ]
    member = subprocess.Popen(
        [
            sys.executable,
            "-c",
            MEMBER_SCRIPT,
            ",".join(brokers),
            "killing",
            "killed",
            str(SESSION_TIMEOUT_MS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        described = wait_stable(brokers, "killing", 3)
        assert all(len(m.assignment) == 2 for m in described.members)
        assert sum(len(s) for s in owned(readers)) == 4  # the process holds the other two
        os.kill(member.pid, signal.SIGKILL)
        member.wait(timeout=10)
        killed_at = time.monotonic()
        wait_until(
            lambda: shared_without_overlap(readers, partitions),
            timeout_s=SESSION_TIMEOUT_MS / 1000 + SLACK_S,
            what="the survivors owning every partition",
        )
        moved_s = time.monotonic() - killed_at
        # Within the session timeout, plus what a loaded machine needs to hand over.
        assert moved_s < SESSION_TIMEOUT_MS / 1000 + SLACK_S
        assert sorted(len(s) for s in owned(readers)) == [3, 3]
    finally:
        if member.poll() is None:
            os.kill(member.pid, signal.SIGKILL)
            member.wait(timeout=10)
        if member.stdout is not None:
            member.stdout.close()
        for reader in readers:
            reader.close()


# ---------------------------------------------------------------- publish / subscribe


def test_two_groups_each_read_every_message(brokers: list[str]) -> None:
    make_topic(brokers, "broadcast", 3)
    values = produce(brokers, "broadcast", 90)
    for group in ("billing", "audit"):
        with Reader(
            brokers, group_id=group, topic="broadcast", auto_offset_reset="earliest"
        ) as reader:
            read = read_everything([reader], len(values))
        assert sorted(m.value or b"" for m in read) == sorted(values), group
    with Admin(brokers) as admin:
        groups = {g.group_id: g.state for g in admin.list_groups()}
        assert {"billing", "audit"} <= set(groups)
        for group in ("billing", "audit"):
            assert admin.describe_group(group).lag == 0


def test_several_topics_and_a_pattern_and_a_new_matching_topic_is_picked_up(
    brokers: list[str],
) -> None:
    make_topic(brokers, "multi-a", 2)
    make_topic(brokers, "multi-b", 1)
    values = produce(brokers, "multi-a", 10) + produce(brokers, "multi-b", 5)
    with Reader(
        brokers,
        group_id="multi",
        group_topics=["multi-a", "multi-b"],
        auto_offset_reset="earliest",
    ) as reader:
        read = read_everything([reader], len(values))
        assert sorted(m.value or b"" for m in read) == sorted(values)
        assert {m.topic for m in read} == {"multi-a", "multi-b"}
    make_topic(brokers, "orders.eu", 2)
    eu = produce(brokers, "orders.eu", 6)
    with Reader(
        brokers, group_id="orders", topic_pattern=r"orders\..*", auto_offset_reset="earliest"
    ) as reader:
        assert sorted(m.value or b"" for m in read_everything([reader], len(eu))) == sorted(eu)
        # A topic created later that matches: the coordinator assigns it, the member reads it.
        make_topic(brokers, "orders.us", 1)
        make_topic(brokers, "orders-not-matching", 1)
        wait_until(
            lambda: ("orders.us", 0) in reader.assignment,
            timeout_s=30 + SLACK_S,
            what="the new matching topic assigned",
        )
        us = produce(brokers, "orders.us", 4)
        produce(brokers, "orders-not-matching", 3)
        read = read_everything([reader], len(us))
        assert sorted(m.value or b"" for m in read) == sorted(us)
        assert {t for t, _ in reader.assignment} == {"orders.eu", "orders.us"}


# ---------------------------------------------------------------- static membership


def test_a_static_member_restarted_within_its_session_keeps_its_partitions(
    brokers: list[str],
) -> None:
    make_topic(brokers, "static", 4)
    partitions = {("static", p) for p in range(4)}
    options: dict[str, Any] = {
        "group_id": "statics",
        "topic": "static",
        "session_timeout_ms": 30_000,
    }
    first = Reader(brokers, group_instance_id="worker-1", **options)
    other = Reader(brokers, group_instance_id="worker-2", **options)
    restarted: Reader | None = None
    try:
        wait_until(
            lambda: shared_without_overlap([first, other], partitions),
            timeout_s=30 + SLACK_S,
            what="two static members sharing the partitions",
        )
        before = wait_stable(brokers, "statics", 2)
        kept, others = set(first.assignment), set(other.assignment)
        first.close()  # leaves with epoch -2: its partitions wait for it
        restarted = Reader(brokers, group_instance_id="worker-1", **options)
        wait_until(
            lambda: set(restarted.assignment) == kept,
            timeout_s=SLACK_S,
            what="the restarted member owning its partitions again",
        )
        after = describe(brokers, "statics")
        assert after.group_epoch == before.group_epoch  # no rebalance
        assert set(other.assignment) == others  # the other member never moved
        instances = {m.instance_id: set(m.assignment) for m in after.members}
        assert instances == {"worker-1": kept, "worker-2": others}
    finally:
        for reader in (first, other, restarted):
            if reader is not None:
                reader.close()


# ---------------------------------------------------------------- polling and committing


def test_a_member_that_stops_polling_leaves_and_rejoins_when_it_reads_again(
    brokers: list[str],
) -> None:
    make_topic(brokers, "polling", 2)
    partitions = {("polling", 0), ("polling", 1)}
    slow = Reader(
        brokers,
        group_id="pollers",
        topic="polling",
        auto_offset_reset="earliest",
        max_poll_interval_ms=3_000,
    )
    steady = Reader(brokers, group_id="pollers", topic="polling", auto_offset_reset="earliest")

    def slow_polls_and_they_share() -> bool:
        with contextlib.suppress(TimeoutError):
            slow.read_message(timeout_ms=100)  # the poll interval restarts at each read
        return shared_without_overlap([slow, steady], partitions)

    try:
        wait_until(slow_polls_and_they_share, timeout_s=30 + SLACK_S, what="two members sharing")
        produce(brokers, "polling", 10)
        slow.read_message(timeout_ms=10_000)  # ... and then it does not come back
        wait_until(
            lambda: set(steady.assignment) == partitions,
            timeout_s=3 + SLACK_S,
            what="the steady member owning both partitions",
        )
        stats = slow.stats().group
        assert stats is not None and stats.poll_timeouts == 1 and stats.state == "poll_timeout"
        # Its next read is a new membership: it joins again and gets its share back.
        wait_until(slow_polls_and_they_share, timeout_s=30 + SLACK_S, what="the slow member back")
        assert slow.stats().group.rejoins == 1  # type: ignore[union-attr]
    finally:
        slow.close()
        steady.close()


def test_explicit_commits_and_the_lag_in_group_mode(brokers: list[str]) -> None:
    make_topic(brokers, "explicit", 1)
    produce(brokers, "explicit", 10)
    with Reader(
        brokers, group_id="explicit-g", topic="explicit", auto_offset_reset="earliest"
    ) as reader:
        fetched = [reader.fetch_message(timeout_ms=10_000) for _ in range(4)]
        assert reader.read_lag() == 6
        assert reader.lag == 6
        assert describe(brokers, "explicit-g").partitions[0].committed_offset == -1
        reader.commit_messages(fetched[2], fetched[0])  # the highest commits the lower
        assert describe(brokers, "explicit-g").partitions[0].committed_offset == 3
        reader.commit_messages(fetched[1])  # lower than committed: nothing moves back
        assert describe(brokers, "explicit-g").partitions[0].committed_offset == 3
    # close() commits nothing for fetch_message: what was committed stays.
    assert describe(brokers, "explicit-g").partitions[0].committed_offset == 3
    with Reader(brokers, group_id="explicit-g", topic="explicit") as again:
        assert again.fetch_message(timeout_ms=10_000).offset == 3  # resumes after it


def test_the_asyncio_twins(brokers: list[str]) -> None:
    make_topic(brokers, "async-groups", 2)
    values = produce(brokers, "async-groups", 20)

    async def main() -> tuple[list[bytes], Any, list[str]]:
        read: list[bytes] = []
        async with AsyncReader(
            brokers, group_id="async-g", topic="async-groups", auto_offset_reset="earliest"
        ) as reader:
            # Bound: the values written.
            while len(read) < len(values):
                read.append((await reader.read_message(timeout_ms=10_000)).value or b"")
            lag = await reader.read_lag()
            assert lag == 0
        async with AsyncAdmin(brokers) as admin:
            described = await admin.describe_group("async-g")
            await admin.reset_offsets("async-g", "async-groups", "earliest")
            reset = await admin.describe_group("async-g")
            listed = [g.group_id for g in await admin.list_groups()]
            await admin.delete_group("async-g")
        return read, (described, reset), listed

    read, (described, reset), listed = asyncio.run(main())
    assert sorted(read) == sorted(values)
    assert described.lag == 0 and described.state == "empty"
    assert [p.committed_offset for p in reset.partitions] == [0, 0]
    assert "async-g" in listed
    with Admin(brokers) as admin, pytest.raises(GroupIdNotFoundError):
        admin.describe_group("async-g")


# ---------------------------------------------------------------- the CLI


def raftmq(brokers: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftmq.cli.main", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, RAFTMQ_BOOTSTRAP=",".join(brokers)),
        timeout=120,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_consume_group_commits_what_it_printed_and_a_second_run_resumes(
    brokers: list[str],
) -> None:
    make_topic(brokers, "cli-groups", 3)
    first = produce(brokers, "cli-groups", 30)
    run = raftmq(
        brokers, "consume", "cli-groups", "--group", "cli-g", "--from-beginning",
        "--timeout-ms", "3000", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    printed = json_lines(run.stdout)
    assert sorted(p["value"].encode() for p in printed) == sorted(first)
    assert set(printed[0]) == {"topic", "partition", "offset", "key", "value", "timestamp"}
    assert {p["topic"] for p in printed} == {"cli-groups"}
    described = json.loads(raftmq(brokers, "group", "describe", "cli-g", "--json").stdout)
    assert described["state"] == "empty" and described["lag"] == 0  # committed, and left
    second = produce(brokers, "cli-groups", 9, start=30)
    run = raftmq(
        brokers, "consume", "cli-groups", "--group", "cli-g", "--from-beginning",
        "--timeout-ms", "3000", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert sorted(p["value"].encode() for p in json_lines(run.stdout)) == sorted(second)
    run = raftmq(brokers, "consume", "cli-groups", "--group", "cli-g", "--max-messages", "1",
                 "--timeout-ms", "2000")  # fmt: skip
    assert (run.returncode, run.stdout) == (0, "")  # nothing new after the commits
    refused = raftmq(brokers, "consume", "cli-groups", "--group", "cli-g", "--partition", "1")
    assert refused.returncode == 2 and "--partition" in refused.stderr


def test_group_describe_shows_the_lag_going_down(brokers: list[str]) -> None:
    # One partition: a partition nothing was committed for has no lag to show ("-", as
    # Kafka's tool shows), so with several the first sum could count only some.
    make_topic(brokers, "lagging", 1)
    produce(brokers, "lagging", 20)
    with Reader(
        brokers, group_id="laggards", topic="lagging", auto_offset_reset="earliest"
    ) as reader:
        lags = []
        for _ in range(3):
            batch = [reader.fetch_message(timeout_ms=10_000) for _ in range(5)]
            reader.commit_messages(*batch)
            described = json.loads(
                raftmq(brokers, "group", "describe", "laggards", "--json").stdout
            )
            lags.append(described["lag"])
            assert described["state"] in ("stable", "reconciling")
            [member] = described["members"]
            assert member["assignment"] == [{"topic": "lagging", "partitions": [0]}]
            assert {p["member_id"] for p in described["partitions"]} == {member["member_id"]}
        assert lags == [15, 10, 5]
        text = raftmq(brokers, "group", "describe", "laggards")
        assert text.returncode == 0, text.stderr
        assert "COMMITTED" in text.stdout and "LOG-END" in text.stdout and "lag 5" in text.stdout
    listed = json.loads(raftmq(brokers, "group", "list", "--json").stdout)
    assert {"group_id": "laggards", "state": "empty"}.items() <= next(
        g for g in listed if g["group_id"] == "laggards"
    ).items()


def test_reset_offsets_of_an_empty_group_its_refusal_on_a_live_one_and_delete(
    brokers: list[str],
) -> None:
    make_topic(brokers, "resets", 2)
    produce(brokers, "resets", 10)
    with Reader(brokers, group_id="resetters", topic="resets", auto_offset_reset="earliest") as r:
        read_everything([r], 10)
        refused = raftmq(brokers, "group", "reset-offsets", "resetters", "--topic", "resets",
                         "--to-earliest")  # fmt: skip
        assert refused.returncode == 1 and "NON_EMPTY_GROUP" in refused.stderr
        with Admin(brokers) as admin, pytest.raises(NonEmptyGroupError):
            admin.delete_group("resetters")
    with Admin(brokers) as admin:
        ends = admin.list_offsets("resets")
    for flag, expected in (
        (["--to-earliest"], {0: 0, 1: 0}),
        (["--to-offset", "3"], {p: min(3, e) for p, e in ends.items()}),
        (["--to-latest"], ends),
        (["--to-time", "2000-01-01T00:00:00Z"], {0: 0, 1: 0}),
        (["--to-time", "2999-01-01T00:00:00Z"], ends),
    ):
        run = raftmq(brokers, "group", "reset-offsets", "resetters", "--topic", "resets",
                     *flag, "--json")  # fmt: skip
        assert run.returncode == 0, run.stderr
        answer = json.loads(run.stdout)
        assert {o["partition"]: o["offset"] for o in answer["offsets"]} == expected, flag
        described = describe(brokers, "resetters")
        assert {p.partition: p.committed_offset for p in described.partitions} == expected
    # A member starts from the reset offsets: at the ends, so there is nothing to read.
    with (
        Reader(brokers, group_id="resetters", topic="resets") as r,
        pytest.raises(TimeoutError),
    ):
        r.read_message(timeout_ms=2_000)
    deleted = raftmq(brokers, "group", "delete", "resetters")
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleted group 'resetters'" in deleted.stdout
    gone = raftmq(brokers, "group", "describe", "resetters")
    assert gone.returncode == 1 and ErrorCode.GROUP_ID_NOT_FOUND.name in gone.stderr
    listed = json.loads(raftmq(brokers, "group", "list", "--json").stdout)
    assert "resetters" not in {g["group_id"] for g in listed}


# ---------------------------------------------------------------- coordinator failover


def compacted_after(cluster: LocalCluster, broker_id: int, partition: int, since: datetime) -> bool:
    """Has broker `broker_id` compacted `__consumer_offsets`-`partition` since `since`
    (the `log.compacted` events of its JSON log)?"""
    path = cluster.data_dir / "logs" / f"broker-{broker_id}.log"
    for line in path.read_text(errors="replace").splitlines():
        if '"log.compacted"' not in line:
            continue
        event = json.loads(line)
        if (
            (event["topic"], event["partition"]) == (OFFSETS_TOPIC, partition)
            and event["records_removed"] > 0
            and datetime.fromisoformat(event["timestamp"]) > since
        ):
            return True
    return False


@pytest.mark.parametrize(
    "empty_neighbour",
    [False, True],
    ids=["alone", "with-a-compacted-empty-group"],
)
def test_a_kill_9_of_the_coordinators_broker_loses_no_message_and_no_commit(
    make_cluster: type[LocalCluster], empty_neighbour: bool
) -> None:
    """A cluster of its own (it kills a broker, and no other test's groups share the
    offsets partition). With `empty_neighbour`, that partition also holds a group that
    was used and is empty now, and was compacted before the kill, as a long-lived
    coordinator's partitions are."""
    cluster = make_cluster(controllers=1, brokers=3)
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    brokers = cluster.layout.broker_endpoints
    make_topic(brokers, "failover", 3)
    values = produce(brokers, "failover", 150)
    seen: set[bytes] = set()
    history: dict[int, list[int]] = {}

    def sample(admin: Admin) -> bool:
        """Record the group's committed offsets now, when the coordinator answers in
        time; True when some were committed."""
        try:
            described = admin.describe_group("failing")
        except RaftmqError:
            return False  # moving: the next sample sees it
        for p in described.partitions:
            if p.committed_offset >= 0:
                history.setdefault(p.partition, []).append(p.committed_offset)
        return bool(history)

    with (
        Reader(
            brokers,
            group_id="failing",
            topic="failover",
            auto_offset_reset="earliest",
            commit_interval_ms=100,
        ) as reader,
        Admin(brokers, timeout_ms=5_000) as admin,
    ):
        while len(seen) < 50:
            seen.add(reader.read_message(timeout_ms=10_000).value or b"")
        # The commit interval passes: the samples have commits to compare from here.
        wait_until(lambda: sample(admin), timeout_s=SLACK_S, what="first commits")
        killed = admin.describe_group("failing").coordinator_id
        if empty_neighbour:
            offsets_partitions = len(admin.describe_topics(OFFSETS_TOPIC)[0].partitions)
            partition = partition_for("failing", offsets_partitions)
            neighbour = next(
                g
                for i in range(10_000)
                if partition_for(g := f"neighbour-{i}", offsets_partitions) == partition
            )
            left_at = datetime.now(UTC)
            with Reader(
                brokers, group_id=neighbour, topic="failover", auto_offset_reset="earliest"
            ) as other:
                other.read_message(timeout_ms=10_000)
            wait_until(
                lambda: compacted_after(cluster, killed, partition, left_at),
                timeout_s=30 + SLACK_S,
                what=f"a compaction of {OFFSETS_TOPIC}-{partition}",
            )
        cluster.brokers[killed].kill()
        values += produce(brokers, "failover", 150, start=150)  # during the failover

        def loaded_elsewhere() -> bool:
            try:
                return admin.describe_group("failing").coordinator_id != killed
            except RaftmqError:
                return False  # not elected, or loading

        wait_until(
            loaded_elsewhere, timeout_s=30 + SLACK_S, what="a new coordinator that loaded the group"
        )
        deadline = time.monotonic() + 60 + SLACK_S
        # Bound: the deadline.
        while not set(values) <= seen:
            assert time.monotonic() < deadline, f"{len(set(values) - seen)} never read"
            with contextlib.suppress(TimeoutError):
                seen.add(reader.read_message(timeout_ms=1_000).value or b"")
            if len(seen) % 25 == 0:
                sample(admin)
        stats = reader.stats().group
        assert stats is not None and stats.state == "member"
    with Admin(brokers, timeout_ms=30_000) as admin:
        after = admin.describe_group("failing")
        sample(admin)
    assert after.coordinator_id != killed
    assert after.state == "empty" and after.lag == 0  # close committed it all
    assert history and all(h == sorted(h) for h in history.values())  # never backwards
