"""raftmq: a Kafka-style log broker with a Raft controller quorum.

The client library, as kafka-go's API made pythonic:

    from raftmq import Writer, Reader, Message, Conn, Admin
    from raftmq import AsyncWriter, AsyncReader, AsyncConn, AsyncAdmin
    from raftmq import RoundRobin, LeastBytes, Hash, Murmur2, CRC32
    from raftmq import FirstOffset, LastOffset, RequireAll, RequireOne, RequireNone
    from raftmq.errors import RaftmqError, OutcomeUnknownError, ...

Names are imported on first use, so that `import raftmq.errors` (servers, tools) does not
load the client and gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from raftmq.grpc_io import use_iomgr

# Before anything imports grpc: gRPC core reads its engine choice once, at load.
use_iomgr()

from raftmq.message import Message  # noqa: E402

if TYPE_CHECKING:
    from raftmq.client.admin import Admin
    from raftmq.client.async_admin import AsyncAdmin
    from raftmq.client.async_conn import AsyncConn
    from raftmq.client.async_reader import AsyncReader
    from raftmq.client.async_writer import AsyncWriter
    from raftmq.client.balancers import CRC32, Balancer, Hash, LeastBytes, Murmur2, RoundRobin
    from raftmq.client.conn import Conn
    from raftmq.client.reader import FirstOffset, LastOffset, Reader
    from raftmq.client.writer import RequireAll, RequireNone, RequireOne, WriteError, Writer
    from raftmq.errors import OutcomeUnknownError, RaftmqError

_LAZY = {
    "Admin": "raftmq.client.admin",
    "AsyncAdmin": "raftmq.client.async_admin",
    "AsyncConn": "raftmq.client.async_conn",
    "AsyncReader": "raftmq.client.async_reader",
    "AsyncWriter": "raftmq.client.async_writer",
    "Balancer": "raftmq.client.balancers",
    "CRC32": "raftmq.client.balancers",
    "Conn": "raftmq.client.conn",
    "FirstOffset": "raftmq.client.reader",
    "Hash": "raftmq.client.balancers",
    "LastOffset": "raftmq.client.reader",
    "LeastBytes": "raftmq.client.balancers",
    "Murmur2": "raftmq.client.balancers",
    "OutcomeUnknownError": "raftmq.errors",
    "RaftmqError": "raftmq.errors",
    "Reader": "raftmq.client.reader",
    "RequireAll": "raftmq.client.writer",
    "RequireNone": "raftmq.client.writer",
    "RequireOne": "raftmq.client.writer",
    "RoundRobin": "raftmq.client.balancers",
    "WriteError": "raftmq.client.writer",
    "Writer": "raftmq.client.writer",
}

__all__ = [
    "CRC32",
    "Admin",
    "AsyncAdmin",
    "AsyncConn",
    "AsyncReader",
    "AsyncWriter",
    "Balancer",
    "Conn",
    "FirstOffset",
    "Hash",
    "LastOffset",
    "LeastBytes",
    "Message",
    "Murmur2",
    "OutcomeUnknownError",
    "RaftmqError",
    "Reader",
    "RequireAll",
    "RequireNone",
    "RequireOne",
    "RoundRobin",
    "WriteError",
    "Writer",
]
assert set(__all__) == {"Message", *_LAZY}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raftmq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
