"""A gRPC client for a set of equivalent endpoints (the controller quorum, or the bootstrap
brokers for admin requests): it fails over between them, follows NOT_CONTROLLER leader
hints, and bounds every call in attempts and in time.

Thread-safe: channels are shared; the current endpoint index is advisory."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from raftmq import wire
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import broker_pb2_grpc, controller_pb2_grpc

ATTEMPTS_MAX = 8
BACKOFF_MS_MAX = 500
_RETRY_STATUS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

ResponseT = TypeVar("ResponseT")


class _HasError(Protocol):
    @property
    def error(self) -> Any: ...


class EndpointPool:
    """Channels to a fixed list of HOST:PORT endpoints plus those learnt from hints."""

    def __init__(self, endpoints: Sequence[str], *, service: str) -> None:
        assert endpoints, "at least one endpoint is required"
        assert service in ("controller", "broker")
        self.endpoints = list(endpoints)
        self.service = service
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._preferred = 0

    def stub(self, endpoint: str) -> Any:
        with self._lock:
            stub = self._stubs.get(endpoint)
            if stub is None:
                channel = grpc.insecure_channel(endpoint, options=wire.GRPC_OPTIONS)
                self._channels[endpoint] = channel
                module = controller_pb2_grpc if self.service == "controller" else broker_pb2_grpc
                stub = (
                    module.ControllerServiceStub(channel)
                    if self.service == "controller"
                    else module.BrokerServiceStub(channel)
                )
                self._stubs[endpoint] = stub
            return stub

    def order(self) -> list[str]:
        with self._lock:
            start = self._preferred % len(self.endpoints)
            return self.endpoints[start:] + self.endpoints[:start]

    def prefer(self, endpoint: str) -> None:
        with self._lock:
            if endpoint not in self.endpoints:
                self.endpoints.append(endpoint)
            self._preferred = self.endpoints.index(endpoint)

    def demote(self, endpoint: str) -> None:
        """`endpoint` failed at the transport level: if it is the preferred one, prefer
        the next (an unreachable endpoint must not cost every later call its timeout)."""
        with self._lock:
            if self.endpoints[self._preferred % len(self.endpoints)] == endpoint:
                self._preferred = (self._preferred + 1) % len(self.endpoints)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()


def call_with_failover(
    pool: EndpointPool,
    method: str,
    request: Any,
    *,
    timeout_ms: int = 10_000,
    retry_codes: frozenset[ErrorCode] = frozenset(
        {ErrorCode.NOT_CONTROLLER, ErrorCode.CONTROLLER_UNAVAILABLE}
    ),
    rpc_timeout_ms: int = 6_000,
) -> Any:
    """Call `method` on the pool, trying endpoints in turn. Retries transport failures and
    the `retry_codes` (following leader hints) until `timeout_ms` or ATTEMPTS_MAX rounds.
    Returns the last response (whose error the caller inspects); raises RaftmqError
    CONTROLLER_UNAVAILABLE / BROKER_NOT_AVAILABLE when no endpoint answered."""
    deadline = time.monotonic() + timeout_ms / 1000
    last_response: Any = None
    last_failure = ""
    backoff_ms = 50
    for _ in range(ATTEMPTS_MAX):
        for endpoint in pool.order():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            try:
                response = getattr(pool.stub(endpoint), method)(
                    request, timeout=min(remaining_s, rpc_timeout_ms / 1000)
                )
            except grpc.RpcError as e:
                status = wire.rpc_status(e)
                if status not in _RETRY_STATUS:
                    raise RaftmqError(
                        ErrorCode.UNKNOWN_SERVER_ERROR, f"{endpoint} {method}: {e}"
                    ) from e
                last_failure = f"{endpoint}: {status.name if status else e}"
                # The next call (of any caller sharing the pool) starts elsewhere.
                pool.demote(endpoint)
                continue
            error = response.error
            failure = wire.error_from_pb(error)
            code = ErrorCode.NONE if failure is None else failure.code
            if code in retry_codes:
                last_response = response
                last_failure = f"{endpoint}: {code.name} {error.message}"
                if code == ErrorCode.NOT_CONTROLLER and error.HasField("leader_endpoint"):
                    hint = f"{error.leader_endpoint.host}:{error.leader_endpoint.port}"
                    pool.prefer(hint)
                    break  # restart the round at the hinted leader
                continue
            pool.prefer(endpoint)
            return response
        if time.monotonic() >= deadline:
            break
        time.sleep(min(backoff_ms, max(0.0, (deadline - time.monotonic()) * 1000)) / 1000)
        backoff_ms = min(BACKOFF_MS_MAX, backoff_ms * 2) + random.randint(0, 20)
    if last_response is not None:
        return last_response
    unavailable = (
        ErrorCode.CONTROLLER_UNAVAILABLE
        if pool.service == "controller"
        else ErrorCode.BROKER_NOT_AVAILABLE
    )
    raise RaftmqError(
        unavailable,
        f"no {pool.service} answered {method} within {timeout_ms} ms "
        f"(tried {', '.join(pool.endpoints)}; last: {last_failure or 'none'})",
    )


def checked(response: ResponseT) -> ResponseT:
    """Raise the response's error, if any, as a RaftmqError."""
    wire.raise_for(getattr(response, "error"))  # noqa: B009
    return response


Call = Callable[..., Any]
