"""raftmq.grpc_io: the gRPC I/O engine default is set before grpc loads, leaves a user's
choice alone, and names experiments the installed grpcio knows (a fresh interpreter runs
a real grpc.aio round trip over 127.0.0.1 and must not log "Unknown experiment")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from raftmq.grpc_io import GRPC_EXPERIMENTS_ENV, IOMGR_EXPERIMENTS, use_iomgr


def test_sets_the_default_when_unset_and_grpc_not_loaded() -> None:
    environ: dict[str, str] = {}
    assert use_iomgr(environ, modules={}) is True
    assert environ == {GRPC_EXPERIMENTS_ENV: IOMGR_EXPERIMENTS}


def test_leaves_the_users_choice_even_an_empty_one() -> None:
    for chosen in ("", "event_engine_client", "-some_other"):
        environ = {GRPC_EXPERIMENTS_ENV: chosen}
        assert use_iomgr(environ, modules={}) is False
        assert environ == {GRPC_EXPERIMENTS_ENV: chosen}


def test_does_nothing_once_grpc_is_loaded() -> None:
    # gRPC core has read the variable already: setting it now would only mislead.
    environ: dict[str, str] = {}
    assert use_iomgr(environ, modules={"grpc": object()}) is False
    assert environ == {}


_ROUND_TRIP = textwrap.dedent(
    """
    import asyncio, os, sys
    import raftmq  # first: sets the default before grpc loads
    import grpc, grpc.aio

    def same(b):
        return b

    async def main():
        async def echo(requests, context):
            async for request in requests:
                yield request

        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handler = grpc.stream_stream_rpc_method_handler(
            echo, request_deserializer=same, response_serializer=same)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("t.Echo", {"Echo": handler})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(
                    "/t.Echo/Echo", request_serializer=same, response_deserializer=same)()
                for i in range(20):
                    await call.write(b"%d" % i)
                    assert await asyncio.wait_for(call.read(), 10) == b"%d" % i
                await call.done_writing()
        finally:
            await server.stop(None)
        print("GRPC_EXPERIMENTS=" + os.environ.get("GRPC_EXPERIMENTS", "<unset>"))

    asyncio.run(main())
    """
)


def test_a_fresh_process_gets_iomgr_and_grpc_knows_the_experiments() -> None:
    env = {k: v for k, v in os.environ.items() if k != GRPC_EXPERIMENTS_ENV}
    env["GRPC_VERBOSITY"] = "ERROR"
    done = subprocess.run(
        [sys.executable, "-c", _ROUND_TRIP],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"GRPC_EXPERIMENTS={IOMGR_EXPERIMENTS}"
    # grpcio logs this (at ERROR) for a name it does not have: the pin in pyproject.toml
    # moved to a release that dropped the experiments, and grpc_io needs another look.
    assert "Unknown experiment" not in done.stderr, done.stderr
