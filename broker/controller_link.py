"""The broker's asyncio client of the controller quorum: the same failover rules as
`raftmq.client.controller_client.call_with_failover` (try endpoints in turn, follow
NOT_CONTROLLER leader hints, bound every call in attempts and in time), on `grpc.aio`
channels, so a waiting controller call holds no thread of the broker.

Used from the broker's event loop only."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import grpc
from raftmq import wire
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import controller_pb2_grpc

ATTEMPTS_MAX = 8
BACKOFF_MS_MAX = 500
_RETRY_STATUS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
DEFAULT_RETRY_CODES = frozenset({ErrorCode.NOT_CONTROLLER, ErrorCode.CONTROLLER_UNAVAILABLE})

_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *wire.GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class ControllerLink:
    """aio channels to the controllers (a fixed list plus addresses learnt from hints)."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        assert endpoints, "at least one controller endpoint is required"
        self.endpoints = list(endpoints)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._preferred = 0

    def stub(self, endpoint: str) -> Any:
        stub = self._stubs.get(endpoint)
        if stub is None:
            channel = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
            self._channels[endpoint] = channel
            stub = self._stubs[endpoint] = controller_pb2_grpc.ControllerServiceStub(channel)
        return stub

    def order(self) -> list[str]:
        start = self._preferred % len(self.endpoints)
        return self.endpoints[start:] + self.endpoints[:start]

    def prefer(self, endpoint: str) -> None:
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)
        self._preferred = self.endpoints.index(endpoint)

    def demote(self, endpoint: str) -> None:
        """`endpoint` failed at the transport level: the next call starts at the next one."""
        if self.endpoints[self._preferred % len(self.endpoints)] == endpoint:
            self._preferred = (self._preferred + 1) % len(self.endpoints)

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        for channel in channels:
            await channel.close(grace=None)

    async def call(
        self,
        method: str,
        request: Any,
        *,
        timeout_ms: int = 10_000,
        rpc_timeout_ms: int = 6_000,
        retry_codes: frozenset[ErrorCode] = DEFAULT_RETRY_CODES,
    ) -> Any:
        """Call `method`, trying controllers in turn; retries transport failures and
        `retry_codes` (following leader hints) until `timeout_ms` or ATTEMPTS_MAX rounds.
        Returns the last response (the caller inspects its error); raises RaftmqError
        CONTROLLER_UNAVAILABLE when no controller answered."""
        deadline = time.monotonic() + timeout_ms / 1000
        last_response: Any = None
        last_failure = ""
        backoff_ms = 50
        for _ in range(ATTEMPTS_MAX):
            for endpoint in self.order():
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                try:
                    response = await getattr(self.stub(endpoint), method)(
                        request, timeout=min(remaining_s, rpc_timeout_ms / 1000)
                    )
                except grpc.RpcError as e:
                    status = wire.rpc_status(e)
                    if status not in _RETRY_STATUS:
                        raise RaftmqError(
                            ErrorCode.UNKNOWN_SERVER_ERROR, f"{endpoint} {method}: {e}"
                        ) from e
                    last_failure = f"{endpoint}: {status.name if status else e}"
                    self.demote(endpoint)
                    continue
                error = response.error
                failure = wire.error_from_pb(error)
                code = ErrorCode.NONE if failure is None else failure.code
                if code in retry_codes:
                    last_response = response
                    last_failure = f"{endpoint}: {code.name} {error.message}"
                    if code == ErrorCode.NOT_CONTROLLER and error.HasField("leader_endpoint"):
                        self.prefer(f"{error.leader_endpoint.host}:{error.leader_endpoint.port}")
                        break  # restart the round at the hinted leader
                    continue
                self.prefer(endpoint)
                return response
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                break
            await asyncio.sleep(min(backoff_ms, remaining_ms) / 1000)
            backoff_ms = min(BACKOFF_MS_MAX, backoff_ms * 2) + random.randint(0, 20)
        if last_response is not None:
            return last_response
        raise RaftmqError(
            ErrorCode.CONTROLLER_UNAVAILABLE,
            f"no controller answered {method} within {timeout_ms} ms "
            f"(tried {', '.join(self.endpoints)}; last: {last_failure or 'none'})",
        )
