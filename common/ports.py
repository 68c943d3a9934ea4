"""Listening ports, bound exclusively.

grpcio servers set SO_REUSEPORT by default: a second server binds a taken port without an
error and the kernel splits connections between the two (two `raftmq up` clusters once
silently shared controller ports that way). Every server of ours binds through here, with
`grpc.so_reuseport` = 0, so that a taken port is a clear error at start.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from typing import Any

from raftmq import wire

# A client may send a keepalive ping this often without data in between, also while it has
# no call open. gRPC's server default tolerates one every 5 minutes and answers the third
# early one with GOAWAY `too_many_pings`: the connection closes, and the client doubles its
# keepalive time from then on. Our own channels ping every 2 s (the replica fetcher, to
# notice a paused leader), and on iomgr sockets an idle one was sent that GOAWAY ~8 s
# after its last call, on every broker in every chaos run.
KEEPALIVE_PING_INTERVAL_MS_MIN = 1_000

# Server options: the channel limits of `wire.GRPC_OPTIONS`, exclusive binding, and the
# keepalive policy above.
GRPC_SERVER_OPTIONS: list[tuple[str, int]] = [
    *wire.GRPC_OPTIONS,
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_PING_INTERVAL_MS_MIN),
]


class PortInUseError(OSError):
    """A HOST:PORT another process already listens on."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"{host}:{port} is already in use")
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return f"{self.host}:{self.port} is already in use"


def bind_grpc(server: Any, host: str, port: int) -> int:
    """`server.add_insecure_port` for HOST:PORT; raises PortInUseError when the port is
    taken (the server must have been created with GRPC_SERVER_OPTIONS). Returns the port
    bound (the kernel's choice when `port` is 0)."""
    address = f"{host}:{port}"
    try:
        bound = int(server.add_insecure_port(address))
    except RuntimeError as e:
        # grpcio only says "Failed to bind"; tell a taken port from other causes ourselves.
        if port and not port_free(host, port):
            raise PortInUseError(host, port) from e
        raise OSError(f"cannot bind the gRPC listener {address}: {e}") from e
    if bound == 0:
        if port and not port_free(host, port):
            raise PortInUseError(host, port)
        raise OSError(f"cannot bind the gRPC listener {address}")
    return bound


def port_free(host: str, port: int) -> bool:
    """True if a listener could bind HOST:PORT now (bound the way servers bind it:
    SO_REUSEADDR, no SO_REUSEPORT, so a port in TIME_WAIT counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError:
            return False
    return True


def first_taken(endpoints: Iterable[tuple[str, int]]) -> tuple[str, int] | None:
    """The first (host, port) that is not free, or None when every one is."""
    for host, port in endpoints:
        if not port_free(host, port):
            return host, port
    return None


@contextlib.contextmanager
def held_port(host: str = "127.0.0.1") -> Any:
    """A listening socket on a free port, for tests that need a taken port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        s.listen(1)
        yield s.getsockname()[1]
