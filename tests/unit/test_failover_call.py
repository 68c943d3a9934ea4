"""FailoverCall, driven by hand: the decisions `call_with_failover` (threads) and
`async_call_with_failover` (asyncio, AsyncAdmin) both carry out."""

from __future__ import annotations

import random

import grpc
import pytest
from raftmq import wire
from raftmq.client.controller_client import (
    ATTEMPTS_MAX,
    Attempt,
    Backoff,
    EndpointOrder,
    FailoverCall,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import controller_pb2 as pb

A, B, C = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"


class _Status(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode) -> None:
        self.status = status

    def code(self) -> grpc.StatusCode:
        return self.status


def plan(timeout_ms: int = 10_000, rpc_timeout_ms: int = 6_000) -> FailoverCall:
    return FailoverCall(
        EndpointOrder([A, B, C]),
        "CreateTopic",
        service="broker",
        now_ms=0,
        timeout_ms=timeout_ms,
        rpc_timeout_ms=rpc_timeout_ms,
        rng=random.Random(1),
    )


def answer(code: ErrorCode = ErrorCode.NONE, hint: str | None = None) -> pb.CreateTopicResponse:
    endpoint = None if hint is None else wire.parse_host_port(hint)
    return pb.CreateTopicResponse(
        error=wire.error_to_pb(code, code.name, leader_endpoint=endpoint)
        if code != ErrorCode.NONE
        else wire.ok_pb()
    )


def test_transport_failures_move_on_and_an_answer_is_final() -> None:
    p = plan(rpc_timeout_ms=1_000)
    assert p.next(now_ms=0) == Attempt(A, 1_000)
    p.on_transport_failure(A, _Status(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert p.next(now_ms=1_000) == Attempt(B, 1_000)
    assert p.on_response(B, answer())
    assert p.ordering.order()[0] == B  # the next call starts where this one succeeded


def test_controller_unavailable_is_retried_and_a_not_controller_hint_is_followed() -> None:
    p = plan()
    assert p.next(now_ms=0) == Attempt(A, 6_000)
    assert not p.on_response(A, answer(ErrorCode.CONTROLLER_UNAVAILABLE))
    assert p.next(now_ms=1) == Attempt(B, 6_000)
    assert not p.on_response(B, answer(ErrorCode.NOT_CONTROLLER, hint=C))
    step = p.next(now_ms=2)
    assert isinstance(step, Backoff)  # then the round restarts at the hinted endpoint
    assert p.next(now_ms=2 + step.wait_ms) == Attempt(C, 6_000)
    assert p.on_response(C, answer())


def test_it_gives_up_after_its_rounds_or_its_time_with_the_last_retriable_answer() -> None:
    p = plan(timeout_ms=60_000)
    now, attempts = 0, 0
    while (step := p.next(now_ms=now)) is not None:
        if isinstance(step, Backoff):
            now += step.wait_ms
            continue
        attempts += 1
        assert not p.on_response(step.endpoint, answer(ErrorCode.CONTROLLER_UNAVAILABLE))
    assert attempts == 3 * ATTEMPTS_MAX
    assert p.give_up().error.code == ErrorCode.CONTROLLER_UNAVAILABLE

    p = plan(timeout_ms=500)
    assert p.next(now_ms=400) == Attempt(A, 100)  # never past the call's deadline
    p.on_transport_failure(A, _Status(grpc.StatusCode.UNAVAILABLE))
    assert p.next(now_ms=500) is None
    with pytest.raises(RaftmqError, match=r"no broker answered CreateTopic within 500 ms"):
        p.give_up()


def test_an_unexpected_status_is_not_retried() -> None:
    p = plan()
    p.next(now_ms=0)
    with pytest.raises(RaftmqError) as e:
        p.on_transport_failure(A, _Status(grpc.StatusCode.UNIMPLEMENTED))
    assert e.value.code == ErrorCode.UNKNOWN_SERVER_ERROR
