"""The pure parts of the chaos suite, without processes: the seeded schedule, the metadata
views the nemesis decides by, produce-recovery measurement, how the workload records the
Writer's outcomes and the Reader's deliveries (fakes of both), and replica hashing on a
real RocksDB store."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from raftmq.broker.log_store import FlushPolicy, LogStore
from raftmq.chaos import workload
from raftmq.chaos.checker import check
from raftmq.chaos.cluster import NetnsNetwork, read_replica_logs
from raftmq.chaos.history import History, Op
from raftmq.chaos.nemesis import (
    FAULT_KINDS,
    HOLD_S_RANGE,
    KILL_ALL,
    PAUSE_LEADER,
    FaultKindError,
    RunClock,
    cluster_led,
    live_leaders,
    parse_fault_kinds,
    plan_schedule,
    produce_recovery_ms,
)
from raftmq.chaos.workload import (
    Producer,
    WorkloadConfig,
    _Worker,
    poll,
    send_outcome,
)
from raftmq.client.writer import WriteError
from raftmq.errors import ErrorCode, OutcomeUnknownError, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import encode_batch
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as pb

TOPIC_ID = bytes(range(16))


# --- schedule --------------------------------------------------------------------------------


def test_schedule_is_a_pure_function_of_the_seed() -> None:
    assert plan_schedule(7, 120, FAULT_KINDS) == plan_schedule(7, 120, FAULT_KINDS)
    assert plan_schedule(7, 120, FAULT_KINDS) != plan_schedule(8, 120, FAULT_KINDS)


@pytest.mark.parametrize("seed", range(20))
def test_schedule_starts_with_every_kind_once_and_fits_the_duration(seed: int) -> None:
    steps = plan_schedule(seed, 120, FAULT_KINDS)
    assert sorted(s.kind for s in steps[: len(FAULT_KINDS)]) == sorted(FAULT_KINDS)
    assert sum(s.gap_s + s.hold_s for s in steps) <= 120
    for step in steps:
        low, high = HOLD_S_RANGE[step.kind]
        assert low <= step.hold_s <= high


def test_schedule_of_a_short_run_plans_only_what_fits() -> None:
    assert plan_schedule(1, 0, FAULT_KINDS) == []
    assert plan_schedule(1, 60, ()) == []
    assert {s.kind for s in plan_schedule(1, 300, (KILL_ALL,))} == {KILL_ALL}


def test_fault_kinds_parse_all_or_a_list_and_refuse_unknown_kinds() -> None:
    assert parse_fault_kinds("all") == FAULT_KINDS
    assert parse_fault_kinds(" kill-all, pause-leader ") == (PAUSE_LEADER, KILL_ALL)
    with pytest.raises(FaultKindError, match="kill-everything"):
        parse_fault_kinds("kill-all,kill-everything")


# --- metadata views ----------------------------------------------------------------------------


def _status(
    leaders: list[int], *, fenced: tuple[int, ...] = (), controller: int = 1
) -> pb.DescribeClusterResponse:
    return pb.DescribeClusterResponse(
        controller=pb.QuorumInfo(leader_id=controller),
        brokers=[cpb.BrokerInfo(id=b, fenced=b in fenced) for b in (1, 2, 3)],
        topics=[
            cpb.Topic(
                name="chaos",
                partitions=[
                    cpb.PartitionState(partition=i, leader=leader)
                    for i, leader in enumerate(leaders)
                ],
            )
        ],
    )


def test_a_leader_is_live_only_when_unfenced_and_not_held_down() -> None:
    status = _status([1, 2, -1], fenced=(2,))
    assert live_leaders(status, "chaos", frozenset()) == {0: 1}
    assert live_leaders(status, "chaos", frozenset({"broker-1"})) == {}


def test_cluster_is_led_when_every_partition_and_the_quorum_have_live_leaders() -> None:
    assert cluster_led(_status([1, 2, 3]), "chaos", frozenset())
    # A killed leader the metadata still names (its session has not expired yet).
    assert not cluster_led(_status([1, 2, 3]), "chaos", frozenset({"broker-3"}))
    assert not cluster_led(_status([1, 2, 3], controller=-1), "chaos", frozenset())
    assert not cluster_led(_status([1, 2, 3], controller=2), "chaos", frozenset({"controller-2"}))
    assert not cluster_led(_status([1, 2, 3]), "other-topic", frozenset())


# --- produce recovery --------------------------------------------------------------------------


def _sends(events: list[tuple[float, str, str, int]]) -> list[Op]:
    """(time_ms, "invoke"|"ok"|"info", value, partition) -> ops of a history."""
    history = History()
    invokes: dict[str, Op] = {}
    offsets: dict[int, int] = {}
    for time_ms, kind, value, partition in events:
        if kind == "invoke":
            invokes[value] = history.invoke_send(
                "producer-0", "chaos", value, partition=partition, time_ms=time_ms
            )
        elif kind == "ok":
            offset = offsets.get(partition, 0)
            offsets[partition] = offset + 1
            history.complete(invokes[value], "ok", time_ms=time_ms, offset=offset)
        else:
            history.complete(invokes[value], "info", time_ms=time_ms, error="REQUEST_TIMED_OUT")
    return list(history.ops())


def test_produce_recovery_counts_only_sends_invoked_after_the_fault() -> None:
    ops = _sends(
        [
            (90.0, "invoke", "early", 0),  # in flight when the fault struck
            (100.0, "invoke", "a", 0),
            (150.0, "ok", "early", 0),
            (300.0, "invoke", "b", 1),
            (400.0, "ok", "b", 1),
            (2000.0, "info", "a", 0),
            (2100.0, "invoke", "c", 0),
            (2500.0, "ok", "c", 0),
        ]
    )
    assert produce_recovery_ms(ops, 100.0, None) == 300.0
    assert produce_recovery_ms(ops, 100.0, frozenset({0})) == 2400.0
    assert produce_recovery_ms(ops, 100.0, frozenset({2})) is None
    # Sends invoked before the fault took full effect do not count, the clock still starts
    # at the fault.
    assert produce_recovery_ms(ops, 100.0, None, invoked_from_ms=350.0) == 2400.0


# --- send outcomes ---------------------------------------------------------------------------


def _write_error(error: RaftmqError) -> WriteError:
    return WriteError([(Message("v"), error)])


def test_a_send_fails_only_when_the_writer_says_not_written() -> None:
    for not_written in (
        RaftmqError(ErrorCode.NOT_ENOUGH_REPLICAS, "refused before the append"),
        # Never sent: no leader could be found before the deadline.
        RaftmqError(ErrorCode.REQUEST_TIMED_OUT, "not written within write_timeout_ms"),
        RaftmqError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "no such topic"),
    ):
        assert send_outcome(_write_error(not_written)) == ("fail", not_written.code.name)
        assert send_outcome(not_written) == ("fail", not_written.code.name)


def test_a_send_whose_outcome_is_unknown_is_info_named_after_its_cause() -> None:
    moved = RaftmqError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "leadership moved after the append")
    maybe = OutcomeUnknownError("gave up after 3 attempts", cause=moved)
    assert send_outcome(_write_error(maybe)) == ("info", "NOT_LEADER_OR_FOLLOWER")
    assert send_outcome(OutcomeUnknownError("timed out")) == ("info", "REQUEST_TIMED_OUT")


class _FakeWriter:
    """Answers each write with the next outcome: an offset (written) or an error; None
    never answers."""

    def __init__(self, outcomes: list[int | RaftmqError | None]) -> None:
        self.outcomes = outcomes

    def write_messages(self, *messages: Message) -> Future[list[Message]]:
        future: Future[list[Message]] = Future()
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, int):
            for message in messages:
                message.offset = outcome
            future.set_result(list(messages))
        elif outcome is not None:
            future.set_exception(WriteError([(m, outcome) for m in messages]))
        return future


def test_each_send_is_one_history_op_completed_by_the_writers_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The backstop for a Writer that never answers, shortened for the test.
    monkeypatch.setattr(workload, "SEND_OUTCOME_GRACE_S", 0.05)
    history = History()
    producer = Producer(
        0,
        bootstrap=["127.0.0.1:1"],
        history=history,
        clock=RunClock(),
        config=WorkloadConfig(send_timeout_ms=1),
        seed=1,
        stopping=threading.Event(),
    )
    writer = _FakeWriter(
        [
            7,
            RaftmqError(ErrorCode.NOT_ENOUGH_REPLICAS, "refused"),
            OutcomeUnknownError("timed out"),
            None,
        ]
    )
    for _ in range(4):
        producer._send_one(writer)
    completions = [op for op in history.ops() if op.type != "invoke"]
    assert [(op.value, op.type, op.offset, op.error) for op in completions] == [
        ("producer-0-0", "ok", 7, ""),
        ("producer-0-1", "fail", -1, "NOT_ENOUGH_REPLICAS"),
        ("producer-0-2", "info", -1, "REQUEST_TIMED_OUT"),
        ("producer-0-3", "info", -1, "REQUEST_TIMED_OUT"),
    ]
    invokes = [op for op in history.ops() if op.type == "invoke"]
    assert all(
        op.partition == done.partition for op, done in zip(invokes, completions, strict=True)
    )


# --- polls -------------------------------------------------------------------------------------


class _FakeReader:
    """A Reader of partition 0 whose fetches return the given messages (or raise): a read
    with time left performs the next fetch when nothing is buffered; a read with no time
    left only hands out what is buffered, as the Reader does."""

    topic = "chaos"

    def __init__(self, fetches: list[list[int] | RaftmqError]) -> None:
        self.fetches = fetches
        self.buffer: list[Message] = []

    def read_message(self, timeout_ms: int | None = None) -> Message:
        if not self.buffer and timeout_ms != 0 and self.fetches:
            fetched = self.fetches.pop(0)
            if isinstance(fetched, RaftmqError):
                raise fetched
            self.buffer = [Message(f"v{o}", partition=0, offset=o) for o in fetched]
        if self.buffer:
            return self.buffer.pop(0)
        raise TimeoutError("no message within the wait")


def test_a_poll_is_what_the_reader_delivers_within_its_wait() -> None:
    history = History()
    reader = _FakeReader(
        [[0, 1, 2], [], RaftmqError(ErrorCode.OFFSET_OUT_OF_RANGE, "beyond the log"), [3]]
    )
    outcomes = [
        poll(reader, history, clock=RunClock(), process="consumer-0", wait_ms=100) for _ in range(4)
    ]
    assert outcomes == ["ok", "ok", "fail", "ok"]
    done = [op for op in history.ops() if op.type != "invoke"]
    assert [(op.type, [r[1] for r in op.reads], op.error) for op in done] == [
        ("ok", [0, 1, 2], ""),
        ("ok", [], ""),  # nothing came in time: an empty poll
        ("fail", [], "OFFSET_OUT_OF_RANGE"),
        ("ok", [3], ""),
    ]
    assert done[0].reads[0] == (0, 0, "v0")


# --- harness helpers ---------------------------------------------------------------------------


def test_network_names_fit_the_kernel_limits_and_carry_a_unique_suffix() -> None:
    names = [f"controller-{i}" for i in (1, 2, 3)] + [f"broker-{i}" for i in (1, 2, 3)]
    first, second = NetnsNetwork(names), NetnsNetwork(names)
    for network in (first, second):
        for link in [network.bridge, *network.host_links.values(), *network.node_links.values()]:
            assert len(link) <= 15, link  # IFNAMSIZ - 1
    assert first.token != second.token
    assert set(first.namespaces.values()).isdisjoint(second.namespaces.values())
    first.close()  # nothing created: a no-op


def _write_replica(data_dir: Path, values: list[bytes], *, high_watermark: int) -> None:
    with LogStore(data_dir / "log", flush_policy=FlushPolicy.NONE) as store:
        log = store.open_partition(TOPIC_ID, 0)
        for value in values:
            log.append_as_leader(encode_batch([Message(value, timestamp_ms=1_000)]), leader_epoch=0)
        log.maybe_advance_high_watermark(high_watermark)
        log.close()


def test_replicas_are_hashed_below_the_lowest_high_watermark_of_the_partition(
    tmp_path: Path,
) -> None:
    _write_replica(tmp_path / "broker-1", [b"a", b"b", b"c"], high_watermark=3)
    _write_replica(tmp_path / "broker-2", [b"a", b"b"], high_watermark=2)
    # Alone at its HW: compared with the others only below the lowest HW.
    _write_replica(tmp_path / "broker-3", [b"a", b"x", b"c", b"d"], high_watermark=4)
    replicas, problems = read_replica_logs(
        {n: tmp_path / n for n in ("broker-1", "broker-2", "broker-3")},
        topic="chaos",
        topic_id=TOPIC_ID,
        partitions=1,
    )
    assert problems == []
    by_node = {r.node: r for r in replicas}
    assert (by_node["broker-1"].high_watermark, by_node["broker-1"].log_end_offset) == (3, 3)
    # Every replica is compared below 2 (broker-2's HW), so broker-3's divergent second
    # batch shows although no other replica shares its HW.
    assert {r.compared_below_offset for r in replicas} == {2}
    assert by_node["broker-1"].batches_sha256 == by_node["broker-2"].batches_sha256
    assert by_node["broker-1"].batches_sha256 != by_node["broker-3"].batches_sha256
    result = check([], replicas=replicas)
    assert result.counts["replica_divergence"] == 1
    assert result.counts["replica_hw_mismatch"] == 1


def test_a_replica_missing_from_a_store_is_reported(tmp_path: Path) -> None:
    _write_replica(tmp_path / "broker-1", [b"a"], high_watermark=1)
    replicas, problems = read_replica_logs(
        {"broker-1": tmp_path / "broker-1"}, topic="chaos", topic_id=TOPIC_ID, partitions=2
    )
    assert [r.partition for r in replicas] == [0]
    assert problems == ["broker-1: no log for chaos/1 in its store"]


# --- workers -------------------------------------------------------------------------------


class _Crashing(_Worker):
    def _work(self) -> None:
        raise ValueError("unpacked two results")


def test_a_worker_that_dies_keeps_its_error_for_the_runner() -> None:
    worker = _Crashing(
        "producer",
        7,
        bootstrap=["127.0.0.1:1"],
        history=History(),
        clock=RunClock(),
        config=WorkloadConfig(),
        stopping=threading.Event(),
    )
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert worker.error == "producer-7: ValueError: unpacked two results"
