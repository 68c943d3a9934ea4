"""Servers bind exclusively: a taken port is a clear error, never a shared one."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from raftmq import ports


def test_a_grpc_server_cannot_share_a_port_with_another() -> None:
    first = grpc.server(futures.ThreadPoolExecutor(1), options=ports.GRPC_SERVER_OPTIONS)
    second = grpc.server(futures.ThreadPoolExecutor(1), options=ports.GRPC_SERVER_OPTIONS)
    try:
        port = ports.bind_grpc(first, "127.0.0.1", 0)
        first.start()
        assert not ports.port_free("127.0.0.1", port)
        # grpcio's default (SO_REUSEPORT) would bind this without an error.
        with pytest.raises(ports.PortInUseError, match=f"127.0.0.1:{port} is already in use"):
            ports.bind_grpc(second, "127.0.0.1", port)
    finally:
        first.stop(None)
        second.stop(None)


def test_port_free_sees_any_listener() -> None:
    with ports.held_port() as port:
        assert not ports.port_free("127.0.0.1", port)
        assert ports.first_taken([("127.0.0.1", port)]) == ("127.0.0.1", port)
    assert ports.port_free("127.0.0.1", port)
