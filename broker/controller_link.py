"""The broker's asyncio client of the controller quorum: `AsyncEndpointPool` channels
with a fast redial (a restarted controller is found again within tens of milliseconds)
and `async_call_with_failover`'s rules (try controllers in turn, follow NOT_CONTROLLER
leader hints, bound every call in attempts and in time), so a waiting controller call
holds no thread of the broker. Used from the broker's event loop only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raftmq import wire
from raftmq.client.async_controller_client import AsyncEndpointPool, async_call_with_failover
from raftmq.client.controller_client import RETRY_CODES
from raftmq.errors import ErrorCode

_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *wire.GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class ControllerLink(AsyncEndpointPool):
    def __init__(self, endpoints: Sequence[str]) -> None:
        assert endpoints, "at least one controller endpoint is required"
        super().__init__(endpoints, service="controller", channel_options=_CHANNEL_OPTIONS)

    def order(self) -> list[str]:
        return self.ordering.order()

    def prefer(self, endpoint: str) -> None:
        self.ordering.prefer(endpoint)

    def demote(self, endpoint: str) -> None:
        """`endpoint` failed at the transport level: the next call starts at the next one."""
        self.ordering.demote(endpoint)

    async def call(
        self,
        method: str,
        request: Any,
        *,
        timeout_ms: int = 10_000,
        rpc_timeout_ms: int = 6_000,
        retry_codes: frozenset[ErrorCode] = RETRY_CODES,
    ) -> Any:
        """`async_call_with_failover` on this pool: returns the last response (the caller
        inspects its error); raises CONTROLLER_UNAVAILABLE when no controller answered."""
        return await async_call_with_failover(
            self,
            method,
            request,
            timeout_ms=timeout_ms,
            rpc_timeout_ms=rpc_timeout_ms,
            retry_codes=retry_codes,
        )
