"""`ProduceStream`: the sync Writer's produce requests pipelined on one long-lived
`ProduceStream` call per broker (see `request_stream.py`). Answers carry the request's
correlation id; an acks=0 request gets none."""

from __future__ import annotations

from collections.abc import Callable

from raftmq.client.conn import Conn
from raftmq.client.request_stream import RequestStream
from raftmq.errors import RaftmqError
from raftmq.v1 import broker_pb2 as pb

__all__ = ["Answer", "ProduceStream"]

# Called once per request with its response or with the error that ended the stream.
Answer = Callable[[pb.ProduceResponse | RaftmqError], None]


class ProduceStream(RequestStream[pb.ProduceRequest, pb.ProduceResponse]):
    """One open ProduceStream call on `conn`'s channel."""

    def __init__(self, conn: Conn) -> None:
        super().__init__(conn, "ProduceStream", pb.ProduceStreamRequest)
