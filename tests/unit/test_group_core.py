"""GroupCore, the consumer group's Reader core, driven by hand against `FakeCluster` (a
few lines of coordinator and broker behaviour, answering the calls the core asks for at a
manual clock). What it checks, per the coordinator's contract (broker.proto, "consumer
groups") and the kafka-go complaints in groups-and-idempotence.md:

- join: find the coordinator, join with epoch 0 and the member's own id, start new
  partitions at the committed offset or auto_offset_reset;
- auto commit: a message is committed only once the application comes back for the next
  one (#622), synchronously before the next one is returned, or every commit_interval_ms;
- explicit commit: the highest offset per partition wins and never moves backwards; a
  message not handed out by this ownership is never committed; a failed commit raises and
  does not advance what was committed; STALE_MEMBER_EPOCH heartbeats, then commits again;
- revoke before release: a revoked partition's buffered messages are never delivered
  (#1398), it stays owned until the application is done with its message and that was
  committed, then a heartbeat at once stops listing it; the wait is bounded;
- lost partitions (fenced, unknown member, a session without answers): dropped without a
  commit, buffers discarded, rejoin with epoch 0;
- NOT_COORDINATOR: find it again, with a growing bounded backoff;
- leave on close (epoch -1, or -2 for a static member), bounded when nobody answers;
- max_poll_interval_ms: an application that does not come back leaves the group, and
  rejoins when it reads again;
- lag and stats in group mode (kafka-go returns -1, #508).
"""

from __future__ import annotations

import pytest
from raftmq.client.group_core import (
    BACKOFF_MS,
    CommitError,
    GroupCall,
    GroupConfig,
    GroupCore,
    MemberState,
    reader_group_config,
)
from raftmq.client.group_protocol import (
    CommittedOffset,
    CoordinatorResult,
    FetchRequest,
    FindCoordinatorRequest,
    HeartbeatRequest,
    HeartbeatResult,
    ListOffsetsRequest,
    MetadataRequest,
    OffsetCommitRequest,
    OffsetCommitResult,
    OffsetFetchRequest,
    OffsetFetchResult,
    Request,
    Result,
    TopicPartition,
)
from raftmq.client.group_reader import WARNING_EVENTS
from raftmq.client.protocol import EARLIEST, ClusterMetadata, FetchResult, OffsetResult
from raftmq.client.reader_core import ReaderConfig
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.metadata import BrokerRegistration, PartitionRecord, TopicRecord
from raftmq.record_batch import encode_batch
from raftmq.topic_config import TopicConfig

TOPIC = "t"
COORDINATOR = "c:1"
T0: TopicPartition = (TOPIC, 0)
T1: TopicPartition = (TOPIC, 1)


def metadata(partitions: int, leaders: dict[int, int]) -> ClusterMetadata:
    brokers = {b: BrokerRegistration(b, f"b{b}", 1, "", "x", 1, fenced=False) for b in (1, 2)}
    parts = tuple(
        PartitionRecord((1, 2), (1, 2), leaders.get(i, 1), 1, 1) for i in range(partitions)
    )
    return ClusterMetadata(1, brokers, {TOPIC: TopicRecord(TOPIC, b"x" * 16, TopicConfig(), parts)})


class FakeCluster:
    """The brokers and the coordinator one GroupCore talks to, answering at a manual clock:
    heartbeats with `assignment` at `epoch` (or the next of `heartbeat_errors`), commits
    into `committed` (or with `commit_errors`), fetches from `logs`. Calls of a type in
    `hold` stay unanswered in `pending` until a test answers them."""

    def __init__(self, core: GroupCore, *, partitions: int = 2) -> None:
        self.core = core
        self.now = 0
        self.logs: dict[TopicPartition, list[bytes]] = {(TOPIC, p): [] for p in range(partitions)}
        self.leaders: dict[int, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.assignment: frozenset[TopicPartition] = frozenset(self.logs)
        self.epoch = 1
        self.interval_ms = 1_000
        self.pending: list[GroupCall] = []
        self.hold: set[type] = set()
        self.heartbeat_errors: list[RaftmqError] = []
        self.commit_errors: dict[TopicPartition, RaftmqError] = {}
        # The next commit's error for the whole request (the coordinator's epoch checks).
        self.commit_request_error: RaftmqError | None = None
        self.requests: list[Request] = []

    # ------------------------------------------------------------ driving

    def produce(self, partition: int, *values: bytes) -> None:
        self.logs[(TOPIC, partition)].extend(values)

    def poll(self) -> list[GroupCall]:
        calls = self.core.poll(now_ms=self.now)
        self.pending += calls
        self.requests += [c.request for c in calls]
        return calls

    def step(self, ms: int = 10) -> None:
        """Advance the clock, let the core start its calls, answer those not held."""
        self.now += ms
        self.poll()
        for call in [c for c in self.pending if type(c.request) not in self.hold]:
            self.answer(call)

    def settle(self, steps: int = 20) -> None:
        for _ in range(steps):
            self.step()

    def answer(self, call: GroupCall, result: Result | None = None) -> None:
        self.pending.remove(call)
        self.core.on_result(call.call_id, result or self.result(call.request), now_ms=self.now)

    def fail(self, call: GroupCall) -> None:
        self.pending.remove(call)
        error = RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, f"{call.endpoint}: UNAVAILABLE")
        self.core.on_failure(call.call_id, error, now_ms=self.now)

    def sent(self, kind: type) -> list[Request]:
        return [r for r in self.requests if isinstance(r, kind)]

    def heartbeats(self) -> list[HeartbeatRequest]:
        return [r for r in self.requests if isinstance(r, HeartbeatRequest)]

    def commits(self) -> list[OffsetCommitRequest]:
        return [r for r in self.requests if isinstance(r, OffsetCommitRequest)]

    def read(self, *, auto: bool = True, steps: int = 40) -> Message:
        """What read_message (auto) / fetch_message does: come back, wait for a message."""
        core = self.core
        core.app_enter(now_ms=self.now)
        try:
            for _ in range(steps):
                message = core.next_message(now_ms=self.now, auto_commit=auto)
                if message is not None:
                    return message
                self.step()
            raise AssertionError(f"no message: {core.describe_wait()}")
        finally:
            core.app_exit(now_ms=self.now)

    def join(self) -> None:
        """Until the member owns `assignment` and every partition's position is known."""
        for _ in range(40):
            self.step()
            core = self.core
            if core.state is MemberState.MEMBER and all(f.resolved for f in core.feeds.values()):
                return
        raise AssertionError(self.core.describe_wait())

    # ------------------------------------------------------------ answers

    def result(self, request: Request) -> Result:
        if isinstance(request, FindCoordinatorRequest):
            return CoordinatorResult(request.group_id, None, 1, COORDINATOR)
        if isinstance(request, HeartbeatRequest):
            if request.member_epoch < 0:
                return HeartbeatResult(
                    None, request.member_id, request.member_epoch, 0, frozenset()
                )
            if self.heartbeat_errors:
                return HeartbeatResult(self.heartbeat_errors.pop(0), "", 0, 0, frozenset())
            return HeartbeatResult(
                None, request.member_id, self.epoch, self.interval_ms, self.assignment
            )
        if isinstance(request, OffsetCommitRequest):
            answers: dict[TopicPartition, RaftmqError | None] = {}
            if self.commit_request_error is not None:
                error, self.commit_request_error = self.commit_request_error, None
                return OffsetCommitResult(
                    error, {(o.topic, o.partition): error for o in request.offsets}
                )
            for o in request.offsets:
                tp = (o.topic, o.partition)
                answers[tp] = self.commit_errors.pop(tp, None)
                if answers[tp] is None:
                    self.committed[tp] = o.offset
            return OffsetCommitResult(None, answers)
        if isinstance(request, OffsetFetchRequest):
            return OffsetFetchResult(
                None,
                {
                    tp: CommittedOffset(self.committed.get(tp, -1), -1, "", 0)
                    for tp in request.partitions
                },
            )
        if isinstance(request, MetadataRequest):
            return metadata(len(self.logs), self.leaders)
        if isinstance(request, ListOffsetsRequest):
            return [
                OffsetResult(t, p, 0 if ts == EARLIEST else len(self.logs[(t, p)]), -1, 1, None)
                for t, p, ts in request.partitions
            ]
        assert isinstance(request, FetchRequest)
        results = []
        for t, p, offset, _ in request.partitions:
            log = self.logs[(t, p)]
            if offset > len(log):
                error = RaftmqError(ErrorCode.OFFSET_OUT_OF_RANGE, f"{offset} > {len(log)}")
                results.append(FetchResult(t, p, error, b"", -1, -1, -1))
                continue
            records = b""
            if offset < len(log):
                batch = encode_batch([Message(v) for v in log[offset:]], now_ms=1)
                records = offset.to_bytes(8, "big") + batch[8:]
            results.append(FetchResult(t, p, None, records, len(log), 0, len(log)))
        return results


def make(**options: object) -> tuple[GroupCore, FakeCluster]:
    partitions = int(options.pop("partitions", 2))  # type: ignore[call-overload]
    options.setdefault("auto_offset_reset", "earliest")
    config = GroupConfig(group_id="g", topics=(TOPIC,), **options)  # type: ignore[arg-type]
    core = GroupCore(config, ["b1:1"], member_id="m1", now_ms=0)
    return core, FakeCluster(core, partitions=partitions)


def offsets(commit: OffsetCommitRequest) -> dict[TopicPartition, int]:
    return {(o.topic, o.partition): o.offset for o in commit.offsets}


# ---------------------------------------------------------------- joining


def test_a_member_finds_the_coordinator_then_joins_with_epoch_0_and_its_own_id() -> None:
    core, cluster = make(instance_id="", session_timeout_ms=6_000)
    [find] = cluster.poll()
    assert isinstance(find.request, FindCoordinatorRequest) and find.endpoint == "b1:1"
    assert cluster.poll() == []  # one FindCoordinator at a time
    cluster.answer(find)
    [join] = cluster.poll()
    assert join.endpoint == COORDINATOR
    assert join.request == HeartbeatRequest(
        group_id="g",
        member_id="m1",
        member_epoch=0,
        instance_id="",
        rebalance_timeout_ms=30_000,
        session_timeout_ms=6_000,
        subscribed_topics=(TOPIC,),
        subscribed_pattern="",
        assignor="uniform",
        owned=(),
        client_id="raftmq-python",
    )
    cluster.epoch = 7
    cluster.answer(join)
    assert (core.state, core.member_epoch, core.assignment) == (MemberState.MEMBER, 7, [T0, T1])
    calls = cluster.poll()
    # New partitions: their committed offsets, and a heartbeat at once to say they are owned.
    assert {type(c.request) for c in calls} == {OffsetFetchRequest, HeartbeatRequest}
    [ack] = [c.request for c in calls if isinstance(c.request, HeartbeatRequest)]
    assert (ack.member_epoch, ack.owned) == (7, (T0, T1))


def test_new_partitions_start_at_the_committed_offset_else_at_auto_offset_reset() -> None:
    for reset, t1_first in (("earliest", b"t1-0"), ("latest", b"t1-new")):
        _, cluster = make(auto_offset_reset=reset)
        cluster.produce(0, b"t0-0", b"t0-1", b"t0-2")
        cluster.produce(1, b"t1-0", b"t1-1")
        cluster.committed[T0] = 2
        cluster.join()
        cluster.settle()
        cluster.produce(1, b"t1-new")
        read = [cluster.read() for _ in range(2)]
        assert sorted(m.value or b"" for m in read) == sorted([b"t0-2", t1_first])


def test_a_pattern_subscription_is_sent_and_several_topics_are_accepted() -> None:
    config = GroupConfig(group_id="g", topics=("a", "b"), pattern=r"orders\..*")
    core = GroupCore(config, ["b1:1"], member_id="m1", now_ms=0)
    cluster = FakeCluster(core)
    cluster.settle(2)
    [join] = cluster.heartbeats()
    assert (join.subscribed_topics, join.subscribed_pattern) == (("a", "b"), r"orders\..*")


# ---------------------------------------------------------------- auto commit


def test_read_message_commits_a_message_only_when_the_application_comes_back() -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a", b"b", b"c")
    cluster.join()
    first = cluster.read()
    cluster.settle()
    assert cluster.commits() == []  # handed out, not processed yet: nothing committed
    cluster.hold.add(OffsetCommitRequest)
    core.app_enter(now_ms=cluster.now)  # the application comes back: `first` is processed
    # Synchronous (commit_interval_ms=0): the next message waits for the commit's answer.
    assert core.next_message(now_ms=cluster.now, auto_commit=True) is None
    cluster.step()
    [commit] = cluster.pending
    assert isinstance(commit.request, OffsetCommitRequest)
    assert offsets(commit.request) == {T0: first.offset + 1}
    assert (commit.request.member_id, commit.request.member_epoch) == ("m1", 1)
    assert core.next_message(now_ms=cluster.now, auto_commit=True) is None
    cluster.answer(commit)
    second = core.next_message(now_ms=cluster.now, auto_commit=True)
    core.app_exit(now_ms=cluster.now)
    assert second is not None and second.value == b"b"
    # Never beyond what was processed: `second` is held, so 1 is all that is committed.
    assert cluster.committed == {T0: 1}


def test_commit_interval_commits_in_the_background_every_interval() -> None:
    core, cluster = make(partitions=1, commit_interval_ms=1_000)
    cluster.produce(0, b"a", b"b", b"c")
    cluster.join()
    for _ in range(3):
        cluster.read()  # no wait for a commit between messages
    assert cluster.commits() == []
    core.app_enter(now_ms=cluster.now)  # done with the third
    core.app_exit(now_ms=cluster.now)
    cluster.step(1_000)
    [commit] = cluster.commits()
    assert offsets(commit) == {T0: 3}
    cluster.step(1_000)
    assert len(cluster.commits()) == 1  # nothing new processed: nothing sent


# ---------------------------------------------------------------- explicit commit


def test_commit_messages_commits_the_highest_offset_per_partition_and_never_goes_back() -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a", b"b", b"c")
    cluster.join()
    m0, m1, m2 = (cluster.read(auto=False) for _ in range(3))
    ticket = core.commit([m2, m0, m1], now_ms=cluster.now)
    cluster.settle(2)
    assert ticket.done and ticket.error is None
    assert [offsets(c) for c in cluster.commits()] == [{T0: 3}]
    late = core.commit([m0], now_ms=cluster.now)  # lower than what is committed
    assert late.done and late.error is None
    cluster.settle(2)
    assert len(cluster.commits()) == 1 and cluster.committed == {T0: 3}


def test_a_message_this_member_did_not_hand_out_is_never_committed() -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a", b"b")
    cluster.join()
    m0 = cluster.read(auto=False)
    ahead = Message(b"b", topic=TOPIC, partition=0, offset=1)  # fetched, not handed out
    elsewhere = Message(b"x", topic=TOPIC, partition=5, offset=0)  # not owned
    ticket = core.commit([ahead, elsewhere], now_ms=cluster.now)
    assert ticket.done and isinstance(ticket.error, CommitError)
    assert [(tp, o) for tp, o, _ in ticket.error.errors] == [(T0, 2), ((TOPIC, 5), 1)]
    assert {e.code for _, _, e in ticket.error.errors} == {ErrorCode.NOT_PARTITION_OWNER}
    cluster.settle(2)
    assert cluster.commits() == []
    with pytest.raises(ValueError, match="not read from a topic"):
        core.commit([Message(b"new")], now_ms=cluster.now)
    ticket = core.commit([m0], now_ms=cluster.now)  # what it did hand out commits
    cluster.settle(2)
    assert ticket.done and ticket.error is None and cluster.committed == {T0: 1}


def test_a_failed_commit_raises_and_does_not_advance_what_was_committed() -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a", b"b")
    cluster.join()
    m0 = cluster.read(auto=False)
    cluster.commit_errors[T0] = RaftmqError(ErrorCode.OFFSET_METADATA_TOO_LARGE, "too big")
    ticket = core.commit([m0], now_ms=cluster.now)
    cluster.settle(2)
    assert ticket.done and isinstance(ticket.error, CommitError)
    assert ticket.error.code == ErrorCode.OFFSET_METADATA_TOO_LARGE
    assert cluster.committed == {} and core.feeds[T0].committed == -1
    assert core.current_stats().group is not None
    assert core.current_stats().group.commit_errors == 1  # type: ignore[union-attr]
    cluster.settle(2)
    assert len(cluster.commits()) == 1  # not retried by itself
    again = core.commit([m0], now_ms=cluster.now)  # the application asks again
    cluster.settle(2)
    assert again.done and again.error is None and cluster.committed == {T0: 1}


def test_a_commit_times_out_without_moving_what_was_committed() -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a")
    cluster.join()
    m0 = cluster.read(auto=False)
    cluster.hold.add(OffsetCommitRequest)
    ticket = core.commit([m0], now_ms=cluster.now, timeout_ms=500)
    cluster.settle(10)
    assert not ticket.done
    cluster.step(500)
    assert ticket.done and isinstance(ticket.error, CommitError)
    assert ticket.error.code == ErrorCode.REQUEST_TIMED_OUT
    assert core.feeds[T0].committed == -1


@pytest.mark.parametrize("whole_request", [True, False])
def test_stale_member_epoch_heartbeats_then_commits_again_at_the_new_epoch(
    whole_request: bool,
) -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a")
    cluster.join()
    m0 = cluster.read(auto=False)
    stale = RaftmqError(ErrorCode.STALE_MEMBER_EPOCH, "epoch 1 < 2")
    if whole_request:
        cluster.commit_request_error = stale
    else:
        cluster.commit_errors[T0] = stale
    cluster.epoch = 2
    ticket = core.commit([m0], now_ms=cluster.now)
    cluster.settle(3)
    assert ticket.done and ticket.error is None
    first, second = cluster.commits()
    assert (first.member_epoch, second.member_epoch) == (1, 2)
    heartbeat_between = [
        r
        for r in cluster.requests[cluster.requests.index(first) : cluster.requests.index(second)]
        if isinstance(r, HeartbeatRequest)
    ]
    assert heartbeat_between


# ---------------------------------------------------------------- revocation


def test_a_revoked_partition_is_released_after_its_processed_offset_is_committed() -> None:
    core, cluster = make()
    cluster.produce(0, b"a0", b"a1", b"a2")
    cluster.produce(1, b"b0")
    cluster.join()
    cluster.settle()
    held = cluster.read()
    while held.partition != 0:
        held = cluster.read()
    # The coordinator moves t-0 elsewhere while the application holds a message of it.
    cluster.assignment = frozenset({T1})
    cluster.epoch = 2
    cluster.step(1_000)  # the heartbeat that brings the revocation
    feed = core.feeds[T0]
    assert feed.revoking and feed.reader.buffered == 0  # buffered t-0 messages dropped
    cluster.step(1_000)
    assert T0 in core.assignment  # not released: the application still holds its message
    assert cluster.heartbeats()[-1].owned == (T0, T1)  # so it is still listed as owned
    cluster.hold.add(OffsetCommitRequest)
    core.app_enter(now_ms=cluster.now)  # done with it: now it is processed
    cluster.step()
    [commit] = [c for c in cluster.pending if isinstance(c.request, OffsetCommitRequest)]
    assert offsets(commit.request) == {T0: held.offset + 1}
    assert commit.request.member_epoch == 2  # accepted while revoking, at the current epoch
    assert T0 in core.assignment  # not before the commit is answered
    # Whatever it reads meanwhile is never a message of the revoked partition.
    other = core.next_message(now_ms=cluster.now, auto_commit=False)
    assert other is not None and other.partition == 1
    cluster.answer(commit)
    assert core.assignment == [T1]
    heartbeats = len(cluster.heartbeats())
    cluster.step(1)  # at once, not at the next interval
    assert len(cluster.heartbeats()) == heartbeats + 1
    assert cluster.heartbeats()[-1].owned == (T1,)
    core.app_exit(now_ms=cluster.now)
    assert core.current_stats().group.revoked == 1  # type: ignore[union-attr]


def test_buffered_messages_of_a_revoked_partition_are_never_delivered() -> None:
    core, cluster = make()
    cluster.produce(0, *[f"a{i}".encode() for i in range(5)])
    cluster.join()
    cluster.settle()
    assert core.feeds[T0].reader.buffered == 5
    cluster.assignment = frozenset({T1})
    cluster.step(1_000)
    cluster.settle()
    assert core.assignment == [T1]  # nothing held, nothing processed: released at once
    cluster.produce(1, b"b0")
    assert cluster.read().partition == 1
    assert core.current_stats().messages == 1  # the dropped ones never counted as read


def test_the_wait_for_a_revoked_partition_is_bounded_by_half_the_rebalance_timeout() -> None:
    core, cluster = make(rebalance_timeout_ms=4_000)
    cluster.produce(0, b"a0")
    cluster.join()
    held = cluster.read()
    assert held.partition == 0
    cluster.assignment = frozenset({T1})
    cluster.step(1_000)
    cluster.step(1_999)
    assert T0 in core.assignment
    cluster.step(1)  # 2 s after the revocation: released without the application
    assert core.assignment == [T1]
    assert cluster.commits() == []  # the held message was not processed: not committed


# ---------------------------------------------------------------- losing partitions


@pytest.mark.parametrize("code", [ErrorCode.FENCED_MEMBER_EPOCH, ErrorCode.UNKNOWN_MEMBER_ID])
def test_lost_partitions_are_dropped_without_a_commit_and_the_member_rejoins(
    code: ErrorCode,
) -> None:
    core, cluster = make(commit_interval_ms=60_000)
    cluster.produce(0, b"a0", b"a1", b"a2")
    cluster.join()
    m0 = cluster.read()
    cluster.read()  # m0 processed now (interval: not committed yet)
    assert core.feeds[(TOPIC, m0.partition or 0)].commit_wanted is not None
    cluster.heartbeat_errors.append(RaftmqError(code, "fenced"))
    joins = len([h for h in cluster.heartbeats() if h.member_epoch == 0])
    cluster.step(1_000)
    assert (core.state, core.assignment) == (MemberState.JOINING, [])
    assert core.next_message(now_ms=cluster.now, auto_commit=True) is None  # buffer gone
    cluster.step()
    rejoin = [h for h in cluster.heartbeats() if h.member_epoch == 0]
    assert len(rejoin) == joins + 1
    assert (rejoin[-1].member_id, rejoin[-1].owned) == ("m1", ())
    cluster.join()
    # The old ownership's message is not committed through the new one.
    late = core.commit([m0], now_ms=cluster.now)
    assert isinstance(late.error, CommitError)
    assert late.error.code == ErrorCode.NOT_PARTITION_OWNER
    for _ in range(61):  # past the commit interval: still nothing of the lost ownership
        cluster.step(1_000)
    assert cluster.commits() == []
    assert core.current_stats().group.lost == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("whole_request", [True, False])
def test_a_commit_answered_unknown_member_loses_the_partitions(whole_request: bool) -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a", b"b")
    cluster.join()
    m0 = cluster.read(auto=False)
    evicted = RaftmqError(ErrorCode.UNKNOWN_MEMBER_ID, "evicted")
    if whole_request:
        cluster.commit_request_error = evicted
    else:
        cluster.commit_errors[T0] = evicted
    ticket = core.commit([m0], now_ms=cluster.now)
    cluster.step()
    cluster.step()
    assert ticket.done and isinstance(ticket.error, CommitError)
    assert cluster.heartbeats()[-1].member_epoch == 0
    assert cluster.committed == {}


def test_a_zombie_commit_refused_as_not_owner_is_never_retried() -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a", b"b")
    cluster.join()
    m0 = cluster.read(auto=False)
    cluster.commit_errors[T0] = RaftmqError(ErrorCode.NOT_PARTITION_OWNER, "not yours at 1")
    ticket = core.commit([m0], now_ms=cluster.now)
    cluster.settle(3)
    assert isinstance(ticket.error, CommitError)
    assert ticket.error.code == ErrorCode.NOT_PARTITION_OWNER
    assert len(cluster.commits()) == 1
    assert cluster.committed == {}


def test_no_heartbeat_answered_for_a_session_timeout_loses_the_partitions() -> None:
    core, cluster = make(session_timeout_ms=3_000)
    cluster.produce(0, b"a")
    cluster.join()
    cluster.hold.add(HeartbeatRequest)
    failed = 0
    for _ in range(40):
        cluster.step(100)
        for call in [c for c in cluster.pending if isinstance(c.request, HeartbeatRequest)]:
            cluster.fail(call)
            failed += 1
        if core.state is MemberState.JOINING:
            break
    assert failed > 1 and core.state is MemberState.JOINING
    assert core.assignment == [] and cluster.now >= 3_000
    assert cluster.commits() == []


def number(data: dict[str, object], key: str) -> int:
    value = data[key]
    assert isinstance(value, int), (key, value)
    return value


def test_a_member_kept_out_of_the_group_keeps_joining_and_says_why_with_backoff() -> None:
    """The chaos run seed 6002: a static member lost its partitions, then every join was
    answered COORDINATOR_NOT_AVAILABLE for 90 s (its offsets partition below
    min.insync.replicas) and nothing said so. It keeps joining, warns (group.join_stalled)
    after 5 s out of the group and then at doubling intervals, and joins once it can."""
    core, cluster = make(partitions=1, instance_id="worker-1", session_timeout_ms=3_000)
    cluster.join()
    core.events.clear()
    unavailable = RaftmqError(
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        "the group's records could not be replicated: NOT_ENOUGH_REPLICAS",
    )
    cluster.heartbeat_errors = [unavailable] * 10_000
    joins_before = len([h for h in cluster.heartbeats() if h.member_epoch == 0])
    lost_ms = None
    for _ in range(9_000):  # bound: 90 s at 10 ms a step
        cluster.step()
        if lost_ms is None and core.state is MemberState.JOINING:
            lost_ms = cluster.now
    assert lost_ms is not None and core.state is MemberState.JOINING
    events = list(core.events)
    assert [n for n, _ in events if n == "group.partitions_lost"] == ["group.partitions_lost"]
    stalled = [d for n, d in events if n == "group.join_stalled"]
    # At 5, 15, 35 and 75 s out of the group (each step is 10 ms).
    assert [number(d, "out_of_group_ms") // 1_000 for d in stalled] == [5, 15, 35, 75]
    assert all("COORDINATOR_NOT_AVAILABLE" in str(d["error"]) for d in stalled)
    assert all(d["instance_id"] == "worker-1" for d in stalled)
    attempts = [number(d, "attempts") for d in stalled]
    assert attempts == sorted(attempts) and attempts[0] >= 3
    # Never given up: a join about every second (the backoff is bounded).
    joins = len([h for h in cluster.heartbeats() if h.member_epoch == 0]) - joins_before
    assert joins >= 60
    # The coordinator can write again: the member is back with its partition.
    cluster.heartbeat_errors.clear()
    cluster.step(1_000)  # past the backoff (at most BACKOFF_MS_MAX)
    cluster.join()
    assert core.assignment == [T0]
    [joined] = [d for n, d in core.events if n == "group.joined"]
    assert number(joined, "out_of_group_ms") >= 85_000
    # Out of the group again: the warnings start over from 5 s.
    core.events.clear()
    cluster.heartbeat_errors = [RaftmqError(ErrorCode.UNKNOWN_MEMBER_ID, "evicted")]
    cluster.heartbeat_errors += [unavailable] * 10_000
    for _ in range(600):  # bound: 6 s
        cluster.step()
    stalled = [d for n, d in core.events if n == "group.join_stalled"]
    assert [number(d, "out_of_group_ms") // 1_000 for d in stalled] == [5]


def test_a_join_without_an_answer_is_said_so_not_the_reason_of_the_loss() -> None:
    core, cluster = make(partitions=1, session_timeout_ms=3_000)
    cluster.join()
    cluster.hold.add(HeartbeatRequest)
    for _ in range(1_000):  # bound: 10 s; lost after 3 s, then the join is not answered
        cluster.step()
    [stalled] = [d for n, d in core.events if n == "group.join_stalled"]
    assert stalled["error"] == "the join heartbeat is not answered yet"
    assert core.last_error is not None and "no heartbeat answered" in str(core.last_error)


def test_the_shells_log_a_stalled_join_as_a_warning() -> None:
    assert "group.join_stalled" in WARNING_EVENTS


# ---------------------------------------------------------------- the coordinator


def test_not_coordinator_finds_the_coordinator_again_after_a_backoff() -> None:
    core, cluster = make()
    cluster.join()
    finds = len(cluster.sent(FindCoordinatorRequest))
    moved = RaftmqError(ErrorCode.NOT_COORDINATOR, "broker 1 is not the coordinator of g")
    cluster.heartbeat_errors.append(moved)
    cluster.step(1_000)  # the heartbeat answered NOT_COORDINATOR
    assert core.coordinator is None
    # Backing off first (fetching goes on meanwhile: the partitions are still owned).
    assert not [c for c in cluster.poll() if isinstance(c.request, FindCoordinatorRequest)]
    cluster.step(BACKOFF_MS)
    assert len(cluster.sent(FindCoordinatorRequest)) == finds + 1
    cluster.settle(5)
    assert core.state is MemberState.MEMBER and core.coordinator == COORDINATOR
    assert core.assignment == [T0, T1]  # a coordinator move loses nothing


def test_the_backoff_doubles_up_to_its_bound_and_resets_after_an_answer() -> None:
    core, cluster = make()
    cluster.hold.add(FindCoordinatorRequest)
    electing = CoordinatorResult(
        "g", RaftmqError(ErrorCode.COORDINATOR_NOT_AVAILABLE, "electing"), -1, None
    )
    [find] = cluster.poll()
    waits = []
    for _ in range(7):
        answered_ms = cluster.now
        cluster.answer(find, electing)
        calls: list[GroupCall] = []
        while not calls:  # Bound: the backoff is at most BACKOFF_MS_MAX
            cluster.now += 10
            calls = cluster.poll()
        [find] = calls
        waits.append(cluster.now - answered_ms)
    assert waits == [50, 100, 200, 400, 800, 1_000, 1_000]
    cluster.hold.clear()
    cluster.answer(find)
    cluster.join()  # answers reset the backoff
    cluster.heartbeat_errors.append(RaftmqError(ErrorCode.NOT_COORDINATOR, "moved"))
    cluster.step(1_000)
    assert core.coordinator is None
    cluster.hold.add(FindCoordinatorRequest)
    cluster.now += BACKOFF_MS - 10
    cluster.poll()
    assert not [c for c in cluster.pending if isinstance(c.request, FindCoordinatorRequest)]
    cluster.now += 10
    cluster.poll()
    assert [c for c in cluster.pending if isinstance(c.request, FindCoordinatorRequest)]


def test_unreleased_instance_id_is_retried_and_a_fatal_error_is_raised() -> None:
    _, cluster = make(instance_id="i-1")
    cluster.heartbeat_errors.append(RaftmqError(ErrorCode.UNRELEASED_INSTANCE_ID, "held"))
    cluster.join()
    assert [h.member_epoch for h in cluster.heartbeats()][:2] == [0, 0]
    core2, cluster2 = make(assignor="range")
    cluster2.heartbeat_errors.append(RaftmqError(ErrorCode.UNSUPPORTED_ASSIGNOR, "range?"))
    cluster2.settle(3)
    assert core2.state is MemberState.FAILED
    with pytest.raises(RaftmqError, match="UNSUPPORTED_ASSIGNOR"):
        core2.next_message(now_ms=cluster2.now, auto_commit=True)


# ---------------------------------------------------------------- leaving


@pytest.mark.parametrize(("instance_id", "epoch"), [("", -1), ("worker-1", -2)])
def test_close_commits_what_was_processed_then_leaves(instance_id: str, epoch: int) -> None:
    core, cluster = make(partitions=1, instance_id=instance_id, commit_interval_ms=60_000)
    cluster.produce(0, b"a", b"b", b"c")
    cluster.join()
    cluster.read()
    last = cluster.read()  # held by the application when it closes: processed on close
    core.close(now_ms=cluster.now)
    assert not core.done
    cluster.settle(5)
    assert core.done and core.close_error is None
    assert cluster.committed == {T0: last.offset + 1}
    leave = cluster.heartbeats()[-1]
    assert (leave.member_epoch, leave.instance_id) == (epoch, instance_id)
    assert cluster.requests.index(cluster.commits()[-1]) < cluster.requests.index(leave)


def test_close_is_bounded_when_the_coordinator_never_answers() -> None:
    core, cluster = make(partitions=1)
    cluster.produce(0, b"a")
    cluster.join()
    m0 = cluster.read(auto=False)
    cluster.hold |= {OffsetCommitRequest, HeartbeatRequest, FindCoordinatorRequest}
    core.commit([m0], now_ms=cluster.now, timeout_ms=10)  # processed, not committed
    closed_ms = cluster.now
    core.close(now_ms=closed_ms, timeout_ms=2_000)
    cluster.step()
    assert cluster.pending and all(c.timeout_ms <= 2_000 for c in cluster.pending)
    cluster.step(closed_ms + 1_999 - cluster.now)
    assert not core.done
    cluster.step(1)
    assert core.done
    assert isinstance(core.close_error, CommitError)
    assert [(tp, o) for tp, o, _ in core.close_error.errors] == [(T0, 1)]


def test_closing_a_member_that_never_joined_is_immediate() -> None:
    core, cluster = make()
    core.close(now_ms=0)
    assert core.done and cluster.poll() == []


# ---------------------------------------------------------------- max poll interval


def test_an_application_that_does_not_come_back_in_time_leaves_and_rejoins_later() -> None:
    core, cluster = make(partitions=1, max_poll_interval_ms=5_000)
    cluster.produce(0, b"a", b"b", b"c")
    cluster.join()
    cluster.read()
    held = cluster.read()  # the first is processed and committed; this one is held
    commits = len(cluster.commits())
    for _ in range(6):
        cluster.step(1_000)  # heartbeats go on meanwhile (the background)
    assert core.state is MemberState.POLL_TIMEOUT
    leave = cluster.heartbeats()[-1]
    assert leave.member_epoch == -1
    assert len(cluster.commits()) == commits  # the held message was never processed
    assert cluster.committed == {T0: held.offset}
    assert core.current_stats().group.poll_timeouts == 1  # type: ignore[union-attr]
    again = cluster.read()  # the application comes back: a new membership
    after_leave = cluster.heartbeats()[cluster.heartbeats().index(leave) + 1 :]
    assert after_leave[0].member_epoch == 0 and after_leave[0].owned == ()
    assert again.offset == held.offset  # from the committed offset: it is read again


def test_a_slow_application_inside_a_read_is_not_a_poll_timeout() -> None:
    core, cluster = make(partitions=1, max_poll_interval_ms=2_000)
    cluster.join()
    core.app_enter(now_ms=cluster.now)  # blocked in read_message: nothing to read
    for _ in range(5):
        cluster.step(1_000)
    assert core.state is MemberState.MEMBER
    core.app_exit(now_ms=cluster.now)


# ---------------------------------------------------------------- fetching, lag, stats


def test_one_fetch_per_leader_carries_every_partition_it_leads() -> None:
    _, cluster = make(partitions=3)
    cluster.leaders = {0: 1, 1: 2, 2: 1}
    cluster.hold.add(FetchRequest)
    cluster.join()
    for _ in range(10):  # the positions are resolved first (ListOffsets)
        cluster.step()
    fetches = [c.request for c in cluster.pending if isinstance(c.request, FetchRequest)]
    assert sorted(sorted(p for _, p, _, _ in f.partitions) for f in fetches) == [[0, 2], [1]]
    by_endpoint = {
        c.endpoint: sorted(p for _, p, _, _ in c.request.partitions)
        for c in cluster.pending
        if isinstance(c.request, FetchRequest)
    }
    assert by_endpoint == {"b1:1": [0, 2], "b2:1": [1]}  # one in flight per leader


def test_fetched_records_of_a_partition_revoked_meanwhile_are_dropped() -> None:
    core, cluster = make()
    cluster.produce(0, b"a0")
    cluster.join()
    cluster.hold.add(FetchRequest)
    for _ in range(10):  # the positions are resolved first (ListOffsets)
        cluster.step()
    [fetch] = [c for c in cluster.pending if isinstance(c.request, FetchRequest)]
    answer = cluster.result(fetch.request)
    cluster.assignment = frozenset({T1})
    cluster.step(1_000)
    cluster.answer(fetch, answer)
    assert core.next_message(now_ms=cluster.now, auto_commit=True) is None


def test_an_out_of_range_position_resets_by_auto_offset_reset() -> None:
    _, cluster = make(partitions=1)
    cluster.produce(0, b"a", b"b")
    cluster.committed[T0] = 9  # beyond the log (a topic made anew)
    cluster.join()
    assert cluster.read().value == b"a"  # earliest


def test_lag_sums_the_owned_partitions_and_read_lag_asks_their_leaders() -> None:
    core, cluster = make()
    assert core.lag == -1
    cluster.produce(0, b"a", b"b", b"c")
    cluster.produce(1, b"x")
    cluster.join()
    cluster.settle()
    assert cluster.read().value == b"a"
    assert core.lag == 3  # 2 behind on t-0, 1 on t-1, as of the last fetches
    cluster.produce(1, b"y", b"z")
    core.ask_lag()
    for _ in range(10):
        answer = core.lag_answer()
        if answer is not None:
            break
        cluster.step()
    assert answer == 5
    stats = core.current_stats()
    assert stats.offset == -1 and stats.group is not None
    assert [(p.partition, p.offset, p.high_watermark) for p in stats.group.partitions] == [
        (0, 1, 3),
        (1, 0, 1),
    ]
    assert (stats.group.member_id, stats.group.member_epoch, stats.group.state) == (
        "m1",
        1,
        "member",
    )


def test_a_member_that_owns_nothing_has_no_lag() -> None:
    core, cluster = make()
    cluster.assignment = frozenset()
    cluster.join()
    assert core.lag == 0


# ---------------------------------------------------------------- arguments


def reader_args(**given: object) -> GroupConfig | None:
    args: dict[str, object] = {
        "topic": None,
        "partition": None,
        "start_offset": None,
        "group_id": None,
        "group_topics": None,
        "topic_pattern": None,
        "group_instance_id": None,
        "reader": ReaderConfig(),
        "assignor": "uniform",
        "auto_offset_reset": "latest",
        "commit_interval_ms": 0,
        "session_timeout_ms": 0,
        "heartbeat_interval_ms": 0,
        "rebalance_timeout_ms": 30_000,
        "max_poll_interval_ms": 300_000,
        "client_id": "c",
    }
    args.update(given)
    return reader_group_config(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"group_id": "g", "topic": "t", "partition": 0}, "exclusive"),
        ({"group_id": "g", "topic": "t", "start_offset": -2}, "auto_offset_reset"),
        ({"group_id": "g", "topic": "t", "group_topics": ["u"]}, "not both"),
        ({"group_id": "g", "group_topics": "t"}, "list of topic names"),
        ({"topic": "t", "group_topics": ["t"]}, "needs a consumer group"),
        ({"topic": "t", "group_instance_id": "i"}, "needs a consumer group"),
        ({}, "needs topic="),
    ],
)
def test_reader_arguments_of_the_other_mode_are_refused(
    given: dict[str, object], error: str
) -> None:
    with pytest.raises(TypeError, match=error):
        reader_args(**given)


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"group_id": "", "topic": "t"}, "group_id"),
        ({"group_id": "g"}, "needs topic="),
        ({"group_id": "g", "topic_pattern": "("}, "not a regex"),
        ({"group_id": "g", "topic": "t", "auto_offset_reset": "smallest"}, "auto_offset_reset"),
        ({"group_id": "g", "topic": "t", "assignor": "sticky"}, "assignor"),
        ({"group_id": "g", "topic": "t", "session_timeout_ms": 500}, "session_timeout_ms"),
        ({"group_id": "g", "topic": "t", "max_poll_interval_ms": 0}, "max_poll_interval_ms"),
        ({"group_id": "g", "topic": "t", "commit_interval_ms": -1}, "commit_interval_ms"),
    ],
)
def test_bad_group_options_are_value_errors(given: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        reader_args(**given)


def test_reader_arguments_make_a_group_config_or_none() -> None:
    assert reader_args(topic="t") is None
    config = reader_args(group_id="g", group_topics=["a", "b"], group_instance_id="i")
    assert config is not None
    assert (config.topics, config.instance_id, config.leave_epoch) == (("a", "b"), "i", -2)
    pattern = reader_args(group_id="g", topic_pattern=r"orders\..*")
    assert pattern is not None and pattern.pattern == r"orders\..*"


def test_the_application_wakes_the_background_up_only_when_it_has_work() -> None:
    core, cluster = make(partitions=1, commit_interval_ms=1_000)
    cluster.produce(0, b"a", b"b", b"c")
    cluster.join()
    cluster.settle()
    core.take_poll_wanted()
    cluster.read()
    cluster.read()  # the first is processed now, but commits wait for the interval
    assert not core.take_poll_wanted()
    cluster.read()  # the buffer is empty now: fetch again
    assert core.take_poll_wanted()
    sync, sync_cluster = make(partitions=1)
    sync_cluster.produce(0, b"a", b"b", b"c")
    sync_cluster.join()
    sync_cluster.settle()
    sync_cluster.read()
    sync.take_poll_wanted()
    sync.app_enter(now_ms=sync_cluster.now)  # synchronous: its commit is due now
    assert sync.take_poll_wanted()
    sync.app_exit(now_ms=sync_cluster.now)
