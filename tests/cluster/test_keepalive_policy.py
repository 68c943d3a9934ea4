"""Our servers accept keepalive pings every 2 s, with or without a call open, so that no
channel is sent GOAWAY `too_many_pings` (which closes its connection and makes gRPC double
the client's keepalive time from then on).

gRPC's server default tolerates a ping without data once every 5 minutes and sends that
GOAWAY on the third early one. The replica fetcher pinged every 2 s also without a call,
and on iomgr sockets a fetcher channel left without a stream (its partitions moved) got
the GOAWAY ~8 s later on every broker in every chaos run. `ports.GRPC_SERVER_OPTIONS`
allows a ping a second; the fetcher now pings only while a stream is open. A real server
and channels on 127.0.0.1; the channel's connectivity state shows whether its connection
survived (a GOAWAY leaves it IDLE)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from raftmq import wire
from raftmq.broker.replica_fetcher import _CHANNEL_OPTIONS as REPLICA_CHANNEL_OPTIONS
from raftmq.ports import GRPC_SERVER_OPTIONS, bind_grpc

pytestmark = pytest.mark.cluster

# Four pings 2 s apart: a server of gRPC's defaults sends the GOAWAY at the third.
IDLE_S = 9.0
PINGING_CLIENT_OPTIONS: list[tuple[str, int]] = [
    *wire.GRPC_OPTIONS,
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def _same(b: bytes) -> bytes:
    return b


async def _echo(requests: Any, context: Any) -> Any:
    async for request in requests:
        yield request


async def _round_trip(channel: grpc.aio.Channel, payload: bytes) -> None:
    method: Any = channel.stream_stream(
        "/t.Echo/E", request_serializer=_same, response_deserializer=_same
    )
    call = method()
    await call.write(payload)
    assert await asyncio.wait_for(call.read(), 10) == payload
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 10) is wire.AIO_EOF


async def _connection_outlives_idle_pings(channel_options: list[tuple[str, int]]) -> None:
    server = grpc.aio.server(options=GRPC_SERVER_OPTIONS)
    handler = grpc.stream_stream_rpc_method_handler(
        _echo, request_deserializer=_same, response_serializer=_same
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("t.Echo", {"E": handler})]
    )
    port = bind_grpc(server, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=channel_options
        ) as channel:
            await _round_trip(channel, b"before")
            assert channel.get_state() is grpc.ChannelConnectivity.READY
            await asyncio.sleep(IDLE_S)  # no call open: only keepalive pings, if any
            state = channel.get_state()
            assert state is grpc.ChannelConnectivity.READY, f"the connection closed: {state}"
            await _round_trip(channel, b"after")
    finally:
        await server.stop(None)


def test_a_client_pinging_every_2_s_without_calls_keeps_its_connection() -> None:
    asyncio.run(_connection_outlives_idle_pings(PINGING_CLIENT_OPTIONS))


def test_an_idle_replica_fetcher_channel_keeps_its_connection() -> None:
    asyncio.run(_connection_outlives_idle_pings(REPLICA_CHANNEL_OPTIONS))
