"""`Redial`: keeps a sync gRPC channel reconnecting while it is down.

On iomgr sockets (`raftmq.grpc_io`) the events of a sync channel's sockets are processed
only by a thread that polls gRPC for that channel, which a thread waiting on one of its
calls does, and between calls no thread does. A connection attempt made then does not
progress until its timer ends it (at least `wire.CONNECT_ATTEMPT_MS_MIN`), even when the
server answered at once; the channel stays in TRANSIENT_FAILURE, and every call on it
fails at once without trying the network. Measured after kill -9 of all six nodes of a
`raftmq up` cluster: a Writer's channels stayed down 4-9 s after the brokers listened
again, and its first write was acknowledged 7.1 s after the kill in each of three runs;
3.5 s in each of three with this and a 1 s metadata backoff, and 2.5-2.6 s once the
Writer also asked for metadata when `on_up` said a broker answered again. grpc.aio
channels are polled by grpc.aio's own thread and need none of this.

After a call found the connection down, `Redial` keeps one thread waiting on the channel
(a probe call with wait_for_ready, which polls the channel and makes it connect) until the
server answers the probe, or the Redial or its channel is closed; then the thread ends.
The probe names a method no server has (UNIMPLEMENTED is its answer). Nothing runs for a
healthy channel, so a serving connection's calls are not shared with a second poller.
(`grpc.channel_ready_future` would do the same on gRPC's connectivity thread, but that
thread may raise "Channel closed!" when its channel is closed while it wakes.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import grpc
import structlog
from raftmq import wire

__all__ = ["PROBE_METHOD", "TRANSPORT_FAILURE_CODES", "Redial"]

_log = structlog.get_logger("raftmq.redial")

# A call that ended with one of these may have found the connection down.
TRANSPORT_FAILURE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
PROBE_METHOD = "/raftmq.Redial/Probe"
PROBE_WAIT_MS = 1_000  # one probe waits this long for a connection, then another starts
PROBE_RETRY_MS = 50  # after a probe that failed at once (a connection lost under it)


def _as_is(payload: bytes) -> bytes:
    return payload


class _DoneCall(Protocol):
    """What `on_call_done` reads of a done call (a grpc or concurrent future)."""

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...


class Redial:
    """Watches one sync channel from a failed call until its server answers. Thread-safe."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        name: str = "",
        on_up: Callable[[], None] | None = None,
    ) -> None:
        """`on_up` is called (on the watching thread) when the server answered again."""
        self._probe = channel.unary_unary(
            PROBE_METHOD, request_serializer=_as_is, response_deserializer=_as_is
        )
        self._name = name
        self._on_up = on_up
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Invariant: at most one watching thread per channel at a time.
        self._thread: threading.Thread | None = None

    @property
    def watching(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def on_error(self, error: BaseException) -> None:
        """A call on the channel raised `error`: watch the channel if the transport may
        have failed."""
        if isinstance(error, grpc.RpcError) and wire.rpc_status(error) in TRANSPORT_FAILURE_CODES:
            self.down()

    def on_call_done(self, call: _DoneCall) -> None:
        """Done-callback for a call's future (unary or stream)."""
        if not call.cancelled() and (error := call.exception()) is not None:
            self.on_error(error)

    def down(self) -> None:
        """The channel may be down: watch it unless a watch already runs."""
        with self._lock:
            if self._closed.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            thread = threading.Thread(target=self._watch, name=f"redial {self._name}", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # the interpreter is shutting down: nothing to dial for
                return
            self._thread = thread

    def close(self) -> None:
        """No new watch; a running one ends with its probe (at once when the channel is
        closed next, as `Conn.close` does)."""
        self._closed.set()

    def _watch(self) -> None:
        try:
            answered = self._wait_for_answer()
            if answered and self._on_up is not None and not self._closed.is_set():
                self._on_up()
        except Exception:
            _log.exception("redial.watch_failed", channel=self._name)

    def _wait_for_answer(self) -> bool:
        """Probe until the server answers (True) or the channel is closed (False)."""
        # Bound: ends when the server answers or on close; each probe waits at most
        # PROBE_WAIT_MS, a failed one is followed by a pause of PROBE_RETRY_MS.
        while not self._closed.is_set():
            try:
                self._probe(b"", timeout=PROBE_WAIT_MS / 1000, wait_for_ready=True)
            except grpc.RpcError as e:
                status = wire.rpc_status(e)
                if status is grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # not connected yet
                if status is grpc.StatusCode.UNAVAILABLE:
                    self._closed.wait(PROBE_RETRY_MS / 1000)
                    continue
                # The server's answer (UNIMPLEMENTED), or CANCELLED: the channel closed.
                return status is not grpc.StatusCode.CANCELLED
            except ValueError:
                return False  # gRPC's answer to a call on a closed channel
            return True  # a server that implements the probe answered
        return False
