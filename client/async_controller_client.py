"""`async_call_with_failover`: `call_with_failover` for asyncio (grpc.aio), carrying out the
same `FailoverCall` decisions over an `AsyncEndpointPool`. One event loop only."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
from raftmq import wire
from raftmq.client.controller_client import (
    RETRY_CODES,
    RPC_TIMEOUT_MS,
    Backoff,
    EndpointOrder,
    FailoverCall,
    now_ms,
)
from raftmq.errors import ErrorCode
from raftmq.v1 import broker_pb2_grpc, controller_pb2_grpc


class AsyncEndpointPool:
    """grpc.aio channels to a fixed list of HOST:PORT endpoints plus those learnt from
    hints; the same ordering as `EndpointPool`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        service: str,
        channel_options: Sequence[tuple[str, int]] = tuple(wire.GRPC_CLIENT_OPTIONS),
    ) -> None:
        assert service in ("controller", "broker")
        self.ordering = EndpointOrder(endpoints)
        self.service = service
        self.channel_options = list(channel_options)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}

    def stub(self, endpoint: str) -> Any:
        stub = self._stubs.get(endpoint)
        if stub is None:
            channel = grpc.aio.insecure_channel(endpoint, options=self.channel_options)
            self._channels[endpoint] = channel
            stub = (
                controller_pb2_grpc.ControllerServiceStub(channel)
                if self.service == "controller"
                else broker_pb2_grpc.BrokerServiceStub(channel)
            )
            self._stubs[endpoint] = stub
        return stub

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._stubs.clear()


async def async_call_with_failover(
    pool: AsyncEndpointPool,
    method: str,
    request: Any,
    *,
    timeout_ms: int = 10_000,
    retry_codes: frozenset[ErrorCode] = RETRY_CODES,
    rpc_timeout_ms: int = RPC_TIMEOUT_MS,
) -> Any:
    """As `call_with_failover`."""
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
            await asyncio.sleep(step.wait_ms / 1000)
            continue
        try:
            response = await getattr(pool.stub(step.endpoint), method)(
                request, timeout=step.timeout_ms / 1000
            )
        except grpc.RpcError as e:
            plan.on_transport_failure(step.endpoint, e)
            continue
        if plan.on_response(step.endpoint, response):
            return response
    return plan.give_up()
