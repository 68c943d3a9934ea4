"""The leader's planner against an in-memory log: batching, conflicts and re-planning,
unknown outcomes, the entry size bound and plans applied in parts."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from raftmq.controller.metadata_commands import (
    BeginControllerEpoch,
    Command,
    CommandResult,
    CreateTopic,
    FenceBroker,
    InitializeCluster,
    RegisterBroker,
    UnfenceBroker,
)
from raftmq.controller.metadata_entry import (
    EntryOutcome,
    MetadataEntry,
    MetadataItem,
    decode_entry,
)
from raftmq.controller.metadata_records import TopicCreated
from raftmq.controller.metadata_state import MetadataState
from raftmq.controller.planner import REPLANS_MAX, Planner
from raftmq.errors import ErrorCode
from raftmq.local_cluster import wait_until
from raftmq.topic_config import TopicConfig

TIMEOUT_MS = 5_000


class FakeLog:
    """A replicated log in memory: a proposal is applied at once, after any entries a
    test made "get in first" (another leader's), unless the test makes it get lost."""

    def __init__(self, state: MetadataState) -> None:
        self.state = state
        self.leader = True
        self.proposed: list[MetadataEntry] = []
        self.proposed_bytes: list[int] = []
        # Entries that get in before the next proposals (one list per proposal).
        self.get_in_first: list[list[MetadataEntry]] = []
        self.unconfirmed = 0  # the next N proposals end with an unknown outcome
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def is_leader(self) -> bool:
        return self.leader

    def committed_state(self) -> MetadataState:
        with self.lock:
            return self.state.scratch_copy()

    def propose(self, blob: bytes, on_applied: Callable[[EntryOutcome | None], None]) -> None:
        assert self.gate.wait(10)
        with self.lock:
            entry = decode_entry(blob)
            self.proposed.append(entry)
            self.proposed_bytes.append(len(blob))
            for other in self.get_in_first.pop(0) if self.get_in_first else []:
                assert self.state.apply_entry(other).applied
            outcome = self.state.apply_entry(entry)
            if self.unconfirmed:  # committed, but the leader lost its answer
                self.unconfirmed -= 1
                outcome = None
        on_applied(outcome)


def initialized(brokers: int) -> MetadataState:
    state = MetadataState()
    for command in (InitializeCluster("init", "c"), BeginControllerEpoch("epoch", 1)):
        apply(state, command)
    for b in range(1, brokers + 1):
        apply(state, RegisterBroker(f"reg-{b}", b, "h", 9000 + b, "", f"inc-{b}"))
        epoch = state.brokers[b].broker_epoch
        apply(state, UnfenceBroker(f"unfence-{b}", 1, b, epoch, epoch))
    return state


def apply(state: MetadataState, command: Command) -> None:
    records, result = state.plan(command)
    assert result.ok, result
    state.apply_item(MetadataItem(command.request_id, tuple(records), result))


@pytest.fixture
def make_planner() -> Iterator[Callable[..., tuple[Planner, FakeLog]]]:
    stopping = threading.Event()
    threads: list[threading.Thread] = []

    def make(brokers: int = 3, **kwargs: int) -> tuple[Planner, FakeLog]:
        log = FakeLog(initialized(brokers))
        planner = Planner(log, **{"apply_timeout_ms": TIMEOUT_MS, **kwargs})
        thread = threading.Thread(target=planner.run, args=(stopping,), daemon=True)
        thread.start()
        threads.append(thread)
        return planner, log

    yield make
    stopping.set()
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive()


def create(name: str, partitions: int = 1, rf: int = 1, request_id: str = "") -> CreateTopic:
    return CreateTopic(
        request_id or f"create-{name}", name, name.encode().ljust(16, b"-"), partitions, rf
    )


def test_one_entry_per_batch_and_commands_of_a_batch_see_each_other(make_planner) -> None:
    planner, log = make_planner()
    log.gate.clear()  # hold the first proposal so that the next commands queue up
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(planner.submit, create("a"), timeout_ms=TIMEOUT_MS)
        wait_until(lambda: len(log.proposed) == 0 and planner.queued() == 0, timeout_s=5, what="a")
        twice = [
            pool.submit(planner.submit, create("b", request_id=f"b-{i}"), timeout_ms=TIMEOUT_MS)
            for i in range(2)
        ]
        wait_until(lambda: planner.queued() == 2, timeout_s=5, what="two queued commands")
        log.gate.set()
        assert first.result(timeout=5).ok
        results = sorted((f.result(timeout=5) for f in twice), key=lambda r: r.error)
    assert results[0].ok and results[1].error == ErrorCode.TOPIC_ALREADY_EXISTS
    assert [len(e.items) for e in log.proposed] == [1, 2]
    assert all(e.expected_version is not None for e in log.proposed)


def test_a_skipped_entry_is_planned_again_against_the_newer_state(make_planner) -> None:
    planner, log = make_planner()
    # Another leader's entry, planned against the same version, creates the topic first.
    records, result = log.state.plan(create("t"))
    theirs = MetadataEntry(log.state.version, (MetadataItem("theirs", tuple(records), result),))
    log.get_in_first = [[theirs]]
    answer = planner.submit(create("t", request_id="ours"), timeout_ms=TIMEOUT_MS)
    assert answer.error == ErrorCode.TOPIC_ALREADY_EXISTS
    assert len(log.proposed) == 2 and log.proposed[1].expected_version == log.state.version


def created_topic_entry(name: str) -> MetadataEntry:
    """An unconditional entry (as another controller's) that changes the version."""
    record = TopicCreated(name, name.encode().ljust(16, b"-"), TopicConfig(), ((1,),))
    return MetadataEntry(None, (MetadataItem("", (record,), CommandResult()),))


def test_skipped_too_often_is_a_definite_not_applied(make_planner) -> None:
    planner, log = make_planner()
    # Before each proposal, another controller's entry changes the version.
    log.get_in_first = [[created_topic_entry(f"other-{i}")] for i in range(REPLANS_MAX)]
    answer = planner.submit(create("t"), timeout_ms=TIMEOUT_MS)
    assert answer.error == ErrorCode.CONTROLLER_UNAVAILABLE and "not applied" in answer.message
    assert "t" not in log.state.topics and len(log.proposed) == REPLANS_MAX
    # The request id is not remembered: a retry is planned afresh and succeeds.
    assert planner.submit(create("t"), timeout_ms=TIMEOUT_MS).ok


def test_an_unconfirmed_commit_has_an_unknown_outcome_and_a_retry_is_safe(make_planner) -> None:
    planner, log = make_planner()
    log.unconfirmed = 1
    command = create("t", request_id="same")
    first = planner.submit(command, timeout_ms=TIMEOUT_MS)
    assert first.error == ErrorCode.CONTROLLER_UNAVAILABLE and "unknown" in first.message
    # It did commit (the fake only lost the answer): the retry gets the first result.
    assert "t" in log.state.topics
    version = log.state.version
    assert planner.submit(command, timeout_ms=TIMEOUT_MS).ok
    assert log.state.version == version


def test_not_the_leader_answers_not_controller_at_once(make_planner) -> None:
    planner, log = make_planner()
    log.leader = False
    assert planner.submit(create("t"), timeout_ms=TIMEOUT_MS).error == ErrorCode.NOT_CONTROLLER
    assert not log.proposed


def test_not_yet_initialized_is_answered_without_an_entry(make_planner) -> None:
    planner, log = make_planner()
    log.state = MetadataState()
    answer = planner.submit(RegisterBroker("r", 1, "h", 1, "", "i"), timeout_ms=TIMEOUT_MS)
    assert answer.error == ErrorCode.CONTROLLER_UNAVAILABLE and "not initialized" in answer.message
    assert not log.proposed


def test_entries_stay_within_the_size_bound(make_planner) -> None:
    planner, log = make_planner(entry_bytes_max=1_500)
    log.gate.clear()  # hold the first proposal so that the next commands queue up
    # Random names: entries that compress poorly.
    names = [f"t{i}-{secrets.token_hex(12)}" for i in range(30)]
    with ThreadPoolExecutor(max_workers=30) as pool:
        first = pool.submit(planner.submit, create(names[0]), timeout_ms=TIMEOUT_MS)
        wait_until(lambda: planner.queued() == 0, timeout_s=5, what="the first command taken")
        rest = [pool.submit(planner.submit, create(n), timeout_ms=TIMEOUT_MS) for n in names[1:]]
        wait_until(lambda: planner.queued() == 29, timeout_s=5, what="29 queued commands")
        log.gate.set()
        assert all(f.result(timeout=10).ok for f in [first, *rest])
    assert len(log.state.topics) == 30
    # One batch of 29 commands, more than one entry of them.
    assert len(log.proposed) > 2 and max(log.proposed_bytes) <= 1_500


def test_a_change_too_large_for_one_entry_is_applied_in_parts(make_planner) -> None:
    planner, log = make_planner(entry_bytes_max=600)
    for i in range(4):
        assert planner.submit(create(f"t{i}", partitions=40, rf=3), timeout_ms=TIMEOUT_MS).ok
    before = len(log.proposed)
    epoch = log.state.brokers[2].broker_epoch
    fence = FenceBroker("fence-2", 1, 2, epoch)
    assert planner.submit(fence, timeout_ms=TIMEOUT_MS).ok
    parts = log.proposed[before:]
    assert len(parts) >= 2 and max(log.proposed_bytes) <= 600
    assert [i.request_id for e in parts for i in e.items][-1] == "fence-2"
    assert log.state.brokers[2].fenced
    assert all(2 not in p.isr and p.leader != 2 for _, _, p in log.state.partitions())
    log.state.check_invariants()


def test_a_single_record_too_large_is_refused(make_planner) -> None:
    planner, log = make_planner(entry_bytes_max=300)
    answer = planner.submit(create("big", partitions=10_000, rf=3), timeout_ms=TIMEOUT_MS)
    assert answer.error == ErrorCode.INVALID_REQUEST and "too large" in answer.message
    assert "big" not in log.state.topics and not log.proposed


def test_duties_are_committed_without_a_waiting_caller(make_planner) -> None:
    planner, log = make_planner()
    assert planner.enqueue(BeginControllerEpoch("epoch-7", 7))
    wait_until(lambda: log.state.controller_epoch == 7, timeout_s=5, what="the duty")


def test_a_full_queue_is_a_retriable_refusal() -> None:
    log = FakeLog(initialized(1))
    planner = Planner(log, apply_timeout_ms=TIMEOUT_MS, queue_commands_max=1)
    assert planner.enqueue(create("a"))  # nobody plans: the queue stays full
    assert not planner.enqueue(create("b"))
    answer = planner.submit(create("c"), timeout_ms=TIMEOUT_MS)
    assert answer.error == ErrorCode.CONTROLLER_UNAVAILABLE and answer.error.retriable
    assert "busy" in answer.message


def test_a_leader_deposed_while_waiting_gives_up_on_its_entry(make_planner) -> None:
    """pysyncobj says nothing more about an entry once its leader is deposed: the planner
    stops waiting then (not at its long apply timeout) and serves the next command."""
    planner, log = make_planner(apply_timeout_ms=600_000)
    propose = log.propose

    def lose_leadership(blob: bytes, on_applied: Callable[[EntryOutcome | None], None]) -> None:
        log.leader = False  # appended, then deposed
        log.propose = propose  # type: ignore[method-assign]

    log.propose = lose_leadership  # type: ignore[method-assign]
    answer = planner.submit(create("t"), timeout_ms=TIMEOUT_MS)
    assert answer.error == ErrorCode.CONTROLLER_UNAVAILABLE and "unknown" in answer.message
    log.leader = True  # elected again: a planner still waiting would not answer this
    assert planner.submit(create("u"), timeout_ms=TIMEOUT_MS).ok
