"""A gRPC client for a set of equivalent endpoints (the controller quorum, or the bootstrap
brokers for admin requests): it fails over between them, follows NOT_CONTROLLER leader
hints, and bounds every call in attempts and in time.

The decisions of one call — which endpoint next and with what timeout, when to back off,
what a failure or an answer means, when to give up — are `FailoverCall`'s, with no I/O
and no clock of its own. `call_with_failover` (threads, `EndpointPool`) and
`async_call_with_failover` (asyncio, `AsyncEndpointPool` in `async_controller_client`)
only carry them out, so the two cannot drift apart.

Thread-safe: channels are shared; the current endpoint index is advisory."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from raftmq import wire
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.redial import Redial
from raftmq.v1 import broker_pb2_grpc, controller_pb2_grpc

ATTEMPTS_MAX = 8
BACKOFF_MS = 50
BACKOFF_MS_MAX = 500
RPC_TIMEOUT_MS = 6_000
_RETRY_STATUS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
RETRY_CODES = frozenset({ErrorCode.NOT_CONTROLLER, ErrorCode.CONTROLLER_UNAVAILABLE})

ResponseT = TypeVar("ResponseT")


class _HasError(Protocol):
    @property
    def error(self) -> Any: ...


class EndpointOrder:
    """Which of a fixed list of HOST:PORT endpoints (plus those learnt from hints) to try
    first: the one that answered last, or the hinted leader. Shared by every call of a
    pool, sync or async. Thread-safe."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        assert endpoints, "at least one endpoint is required"
        self._lock = threading.Lock()
        self.endpoints = list(endpoints)
        self._preferred = 0

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


class EndpointPool:
    """Channels to a fixed list of HOST:PORT endpoints plus those learnt from hints."""

    def __init__(self, endpoints: Sequence[str], *, service: str) -> None:
        assert service in ("controller", "broker")
        self.ordering = EndpointOrder(endpoints)
        self.service = service
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}
        # Reconnect each channel after a call found it down (see raftmq.redial).
        self._redials: dict[str, Redial] = {}

    @property
    def endpoints(self) -> list[str]:
        return self.ordering.endpoints

    def stub(self, endpoint: str) -> Any:
        with self._lock:
            stub = self._stubs.get(endpoint)
            if stub is None:
                channel = grpc.insecure_channel(endpoint, options=wire.GRPC_CLIENT_OPTIONS)
                self._channels[endpoint] = channel
                self._redials[endpoint] = Redial(channel, name=endpoint)
                stub = (
                    controller_pb2_grpc.ControllerServiceStub(channel)
                    if self.service == "controller"
                    else broker_pb2_grpc.BrokerServiceStub(channel)
                )
                self._stubs[endpoint] = stub
            return stub

    def order(self) -> list[str]:
        return self.ordering.order()

    def prefer(self, endpoint: str) -> None:
        self.ordering.prefer(endpoint)

    def demote(self, endpoint: str) -> None:
        self.ordering.demote(endpoint)

    def call(self, endpoint: str, method: str, request: Any, *, timeout_ms: int) -> Any:
        """One unary call at `endpoint`; raises grpc.RpcError as the stub does."""
        try:
            return getattr(self.stub(endpoint), method)(request, timeout=timeout_ms / 1000)
        except grpc.RpcError as e:
            with self._lock:
                redial = self._redials.get(endpoint)
            if redial is not None:
                redial.on_error(e)
            raise

    def close(self) -> None:
        with self._lock:
            for redial in self._redials.values():
                redial.close()
            for channel in self._channels.values():
                channel.close()
            self._redials.clear()
            self._channels.clear()
            self._stubs.clear()


@dataclass(frozen=True, slots=True)
class Attempt:
    """Call `endpoint` now, with this deadline."""

    endpoint: str
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait this long before the next round of endpoints."""

    wait_ms: int


class FailoverCall:
    """The decisions of one call of `method` over an `EndpointOrder`: rounds of the
    endpoints (starting at the preferred one) until an answer that is not one of the
    `retry_codes`, at most ATTEMPTS_MAX rounds and `timeout_ms` in all, each attempt at
    most `rpc_timeout_ms`; a backoff between rounds; a NOT_CONTROLLER hint restarts the
    round at the hinted leader. Driven by `next` / `on_transport_failure` /
    `on_response`, then `give_up` when `next` returns None."""

    def __init__(
        self,
        ordering: EndpointOrder,
        method: str,
        *,
        service: str,
        now_ms: int,
        timeout_ms: int,
        retry_codes: frozenset[ErrorCode] = RETRY_CODES,
        rpc_timeout_ms: int = RPC_TIMEOUT_MS,
        rng: random.Random | None = None,
    ) -> None:
        self.ordering = ordering
        self.method = method
        self.service = service
        self.timeout_ms = timeout_ms
        self.retry_codes = retry_codes
        self.rpc_timeout_ms = rpc_timeout_ms
        self._rng = rng or random.Random()
        self._deadline_ms = now_ms + timeout_ms
        self._round: list[str] = []
        self._rounds = 0
        self._backed_off = True  # no backoff before the first round
        self._backoff_ms = BACKOFF_MS
        # The last answer with a retry code (returned if nothing better comes).
        self.last_response: Any = None
        self._last_failure = ""

    def next(self, *, now_ms: int) -> Attempt | Backoff | None:
        """The next attempt, a backoff, or None: give up (`give_up`)."""
        remaining_ms = self._deadline_ms - now_ms
        if remaining_ms <= 0:
            return None
        if not self._round:
            if self._rounds >= ATTEMPTS_MAX:
                return None
            if not self._backed_off:
                self._backed_off = True
                wait_ms = min(self._backoff_ms, remaining_ms)
                self._backoff_ms = min(BACKOFF_MS_MAX, self._backoff_ms * 2) + self._rng.randint(
                    0, 20
                )
                return Backoff(wait_ms)
            self._round = self.ordering.order()
            self._rounds += 1
            self._backed_off = False
        return Attempt(self._round.pop(0), min(remaining_ms, self.rpc_timeout_ms))

    def on_transport_failure(self, endpoint: str, e: Exception) -> None:
        """The attempt at `endpoint` failed in transport: retried elsewhere when the status
        says the endpoint may be down or slow; raises UNKNOWN_SERVER_ERROR otherwise."""
        status = wire.rpc_status(e)
        if status not in _RETRY_STATUS:
            raise RaftmqError(
                ErrorCode.UNKNOWN_SERVER_ERROR, f"{endpoint} {self.method}: {e}"
            ) from e
        self._last_failure = f"{endpoint}: {status.name if status else e}"
        # The next call (of any caller sharing the order) starts elsewhere.
        self.ordering.demote(endpoint)

    def on_response(self, endpoint: str, response: Any) -> bool:
        """An answer from `endpoint`: True when it is final (the caller returns it)."""
        error = response.error
        failure = wire.error_from_pb(error)
        code = ErrorCode.NONE if failure is None else failure.code
        if code not in self.retry_codes:
            self.ordering.prefer(endpoint)
            return True
        self.last_response = response
        self._last_failure = f"{endpoint}: {code.name} {error.message}"
        if code == ErrorCode.NOT_CONTROLLER and error.HasField("leader_endpoint"):
            self.ordering.prefer(f"{error.leader_endpoint.host}:{error.leader_endpoint.port}")
            self._round = []  # restart the round at the hinted leader
        return False

    def give_up(self) -> Any:
        """The last answer with a retry code, if any; else raises CONTROLLER_UNAVAILABLE /
        BROKER_NOT_AVAILABLE (no endpoint answered)."""
        if self.last_response is not None:
            return self.last_response
        unavailable = (
            ErrorCode.CONTROLLER_UNAVAILABLE
            if self.service == "controller"
            else ErrorCode.BROKER_NOT_AVAILABLE
        )
        raise RaftmqError(
            unavailable,
            f"no {self.service} answered {self.method} within {self.timeout_ms} ms "
            f"(tried {', '.join(self.ordering.endpoints)}; "
            f"last: {self._last_failure or 'none'})",
        )


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def call_with_failover(
    pool: EndpointPool,
    method: str,
    request: Any,
    *,
    timeout_ms: int = 10_000,
    retry_codes: frozenset[ErrorCode] = RETRY_CODES,
    rpc_timeout_ms: int = RPC_TIMEOUT_MS,
) -> Any:
    """Call `method` on the pool, trying endpoints in turn. Retries transport failures and
    the `retry_codes` (following leader hints) until `timeout_ms` or ATTEMPTS_MAX rounds.
    Returns the last response (whose error the caller inspects); raises RaftmqError
    CONTROLLER_UNAVAILABLE / BROKER_NOT_AVAILABLE when no endpoint answered."""
    plan = FailoverCall(
        pool.ordering,
        method,
        service=pool.service,
        now_ms=now_ms(),
        timeout_ms=timeout_ms,
        retry_codes=retry_codes,
        rpc_timeout_ms=rpc_timeout_ms,
    )
    # Bound: FailoverCall gives up after ATTEMPTS_MAX rounds or timeout_ms.
    while (step := plan.next(now_ms=now_ms())) is not None:
        if isinstance(step, Backoff):
            time.sleep(step.wait_ms / 1000)
            continue
        try:
            response = pool.call(step.endpoint, method, request, timeout_ms=step.timeout_ms)
        except grpc.RpcError as e:
            plan.on_transport_failure(step.endpoint, e)
            continue
        if plan.on_response(step.endpoint, response):
            return response
    return plan.give_up()


def checked(response: ResponseT) -> ResponseT:
    """Raise the response's error, if any, as a RaftmqError."""
    wire.raise_for(getattr(response, "error"))  # noqa: B009
    return response


Call = Callable[..., Any]
