"""A sync channel whose server went away and came back reconnects without a call made
(`raftmq.redial`), and a Conn starts that watch on a call that found its broker down.

On iomgr sockets nothing polls a sync channel between calls, so without the watch its
connection attempts stall until their timers end them. The servers are real OS processes
on 127.0.0.1 (a server in this process would poll the client's sockets from its own
threads), killed and restarted by PID on the same port."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from raftmq import wire
from raftmq.client.conn import Conn
from raftmq.errors import RaftmqError
from raftmq.local_cluster import free_ports
from raftmq.redial import Redial
from raftmq.v1 import broker_pb2 as pb

pytestmark = pytest.mark.cluster

# A gRPC server that answers nothing (every method UNIMPLEMENTED) until it is killed.
SERVER = """
import sys, time
import raftmq
import grpc
from concurrent import futures
from raftmq.ports import bind_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
bind_grpc(server, "127.0.0.1", int(sys.argv[1]))
server.start()
print("serving", flush=True)
time.sleep(120)
"""
WAIT_S = 15.0  # bound of every wait below; a reconnect takes ~1 s (backoff at most 1 s)


class Server:
    """One server process on `port`, started and killed by PID."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.port)], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "serving"

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=WAIT_S)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server(free_ports(1)[0])
    s.start()
    try:
        yield s
    finally:
        s.kill()


def _state(channel: grpc.Channel) -> grpc.ChannelConnectivity:
    # Reads the state without asking the channel to connect.
    code = channel._channel.check_connectivity_state(False)  # type: ignore[attr-defined]
    return {c.value[0]: c for c in grpc.ChannelConnectivity}[code]


def _wait(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.02)


def _failed_call(channel: grpc.Channel) -> grpc.RpcError:
    method = channel.unary_unary("/t.T/M")
    with pytest.raises(grpc.RpcError) as failure:
        method(b"", timeout=2)
    return failure.value


def _watched_after_its_server_died(
    channel: grpc.Channel, server: Server
) -> tuple[Redial, threading.Event]:
    """A Redial on a connected `channel`, started by a call after `server` was killed;
    and the event its `on_up` sets."""
    grpc.channel_ready_future(channel).result(timeout=WAIT_S)
    up = threading.Event()
    redial = Redial(channel, on_up=up.set)
    server.kill()
    error = _failed_call(channel)
    assert wire.rpc_status(error) is grpc.StatusCode.UNAVAILABLE
    redial.on_error(error)
    assert redial.watching
    return redial, up


def test_a_watched_channel_reconnects_without_a_call(server: Server) -> None:
    with grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=wire.GRPC_CLIENT_OPTIONS
    ) as channel:
        redial, up = _watched_after_its_server_died(channel, server)
        server.start()
        _wait(lambda: _state(channel) is grpc.ChannelConnectivity.READY, "READY again")
        _wait(lambda: not redial.watching, "the watch ended once the server answered")
        assert up.is_set()
        redial.close()


def test_an_answer_from_the_server_starts_no_watch(server: Server) -> None:
    with grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=wire.GRPC_CLIENT_OPTIONS
    ) as channel:
        redial = Redial(channel)
        error = _failed_call(channel)
        assert wire.rpc_status(error) is grpc.StatusCode.UNIMPLEMENTED
        redial.on_error(error)
        redial.on_error(ValueError("not a call's error"))
        assert not redial.watching


def test_closing_ends_a_watch_on_a_channel_that_stays_down_without_calling_on_up(
    server: Server,
) -> None:
    with grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=wire.GRPC_CLIENT_OPTIONS
    ) as channel:
        redial, up = _watched_after_its_server_died(channel, server)
        redial.close()
        channel.close()  # ends the probe waiting on it
        _wait(lambda: not redial.watching, "the watch ended")
        assert not up.is_set()
        redial.down()  # closed: no new watch
        assert not redial.watching


def test_a_conn_watches_its_channel_after_its_broker_went_away(server: Server) -> None:
    with Conn(f"127.0.0.1:{server.port}") as conn:
        grpc.channel_ready_future(conn._channel).result(timeout=WAIT_S)
        server.kill()
        with pytest.raises(RaftmqError, match="UNAVAILABLE"):
            conn.metadata([], timeout_ms=2_000)
        assert conn._redial.watching
        server.start()
        _wait(lambda: _state(conn._channel) is grpc.ChannelConnectivity.READY, "READY again")
        with pytest.raises(RaftmqError, match="UNIMPLEMENTED"):  # it answers: no Broker service
            conn.metadata([], timeout_ms=2_000)


def test_a_conn_watches_its_channel_after_a_call_future_failed(server: Server) -> None:
    with Conn(f"127.0.0.1:{server.port}") as conn:
        grpc.channel_ready_future(conn._channel).result(timeout=WAIT_S)
        server.kill()
        future = conn.call_future("Metadata", pb.MetadataRequest(), timeout_ms=2_000)
        with pytest.raises(grpc.RpcError):
            future.result(timeout=WAIT_S)
        _wait(lambda: conn._redial.watching, "a watch from the future's callback")
