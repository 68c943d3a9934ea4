"""`FetchStream`: the sync Reader's fetches on one long-lived `FetchStream` call per broker
(see `request_stream.py`), instead of a unary Fetch call each: a long poll is one message
each way on an open stream. The broker answers each fetch when it completes, so fetches
of several threads on one stream do not wait for each other."""

from __future__ import annotations

from concurrent.futures import Future

from raftmq.client.conn import Conn, now_ms
from raftmq.client.deadlines import DEADLINE_MARGIN_MS
from raftmq.client.request_stream import RequestStream, no_answer_error
from raftmq.errors import RaftmqError
from raftmq.v1 import broker_pb2 as pb

__all__ = ["STALLED_MS", "FetchStream"]

# A fetch without an answer this long past its deadline ends its stream (see `fetch`).
STALLED_MS = DEADLINE_MARGIN_MS


class FetchStream(RequestStream[pb.FetchRequest, pb.FetchResponse]):
    """One open FetchStream call on `conn`'s channel."""

    def __init__(self, conn: Conn) -> None:
        super().__init__(conn, "FetchStream", pb.FetchStreamRequest)

    def fetch(self, request: pb.FetchRequest, *, timeout_ms: int) -> pb.FetchResponse | RaftmqError:
        """Send `request` and wait for its answer, at most `timeout_ms`: the response, or
        BROKER_NOT_AVAILABLE (no answer in time, or the stream ended).

        A fetch that ran out of time fails alone, the way its unary call would: the
        caller's budget can be a few milliseconds at the end of a `read_message` timeout,
        and a late answer is no sign of a dead broker. The stream is given up on
        (`expire`) only when a request has had no answer for STALLED_MS past its own
        deadline: the broker promised to answer within max_wait_ms."""
        answer: Future[pb.FetchResponse | RaftmqError] = Future()
        self.send(request, timeout_ms=timeout_ms + STALLED_MS, on_answer=answer.set_result)
        deadline_ms = now_ms() + timeout_ms
        # Bound: the request's deadline.
        while (left_ms := deadline_ms - now_ms()) > 0:
            try:
                return answer.result(timeout=left_ms / 1000)
            except TimeoutError:
                pass
        self.expire(now_ms())  # an earlier request stalled: the stream is dead
        if answer.done():
            return answer.result()
        return no_answer_error(self.endpoint, self.method)
