"""A Kafka wire-protocol listener: an asyncio TCP server on the broker's event loop.

Per connection, two tasks: the reader takes frames off the socket, decodes each, and
starts its handler at once (so a long-polling fetch does not hold up a produce pipelined
behind it); the writer sends the answers strictly in request order, as Kafka clients
require. At most `inflight_requests_max` requests of one connection are in flight: past
that the reader stops reading, and TCP pushes back on the client.

What this listener refuses, and how (Kafka's broker does the same):
- a frame size below a header or above `frame_bytes_max`: the connection is closed
  before the body is read;
- an API key we do not serve, or a version of it we do not serve: closed (the client
  learns our versions from ApiVersions) — except ApiVersions itself, which is answered
  UNSUPPORTED_VERSION in its v0 format with the full list (KIP-511);
- a header or body that does not parse: closed;
- a handler that raises (a bug of ours): logged, closed; the broker keeps serving.
Nothing reaches the log before a request has been decoded whole and checked by the
handler, so none of these stores a byte.

The socket is bound when the listener is built (before the broker starts serving), with
SO_REUSEADDR and without SO_REUSEPORT: a taken port is PortInUseError at start, never a
silently shared port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from dataclasses import dataclass
from typing import Any

import structlog
from kio.schema.index import api_key_map
from raftmq.broker import kafka_codec
from raftmq.broker.broker_metrics import BrokerMetrics
from raftmq.broker.kafka_api import API_VERSIONS_KEY, KafkaApi, RequestContext
from raftmq.broker.kafka_codec import FRAME_BYTES_MAX, SIZE_PREFIX, KafkaDecodeError
from raftmq.ports import PortInUseError

INFLIGHT_REQUESTS_MAX = 32
# Kafka's connections.max.idle.ms default: a connection with nothing in flight and
# nothing received for this long is closed.
IDLE_TIMEOUT_MS = 600_000
CONNECTIONS_MAX = 10_000
LISTEN_BACKLOG = 1_024
# The smallest request: api_key, api_version, correlation_id.
FRAME_BYTES_MIN = 8


@dataclass(frozen=True, slots=True)
class KafkaListenerConfig:
    name: str
    bind: tuple[str, int]
    inflight_requests_max: int = INFLIGHT_REQUESTS_MAX
    idle_timeout_ms: int = IDLE_TIMEOUT_MS
    frame_bytes_max: int = FRAME_BYTES_MAX
    connections_max: int = CONNECTIONS_MAX


class _HangUpError(Exception):
    """End this connection (the reason is logged)."""


class KafkaListener:
    """One named Kafka listener. Built (and bound) on the broker's loop thread; `start`
    serves, `close` stops accepting and drops every connection."""

    def __init__(
        self,
        config: KafkaListenerConfig,
        api: KafkaApi,
        *,
        node_id: int,
        metrics: BrokerMetrics | None = None,
    ) -> None:
        """`metrics`: requests are counted and timed there as `kafka.<api>` (the gRPC
        API's are under their RPC names)."""
        assert config.inflight_requests_max >= 1 and config.frame_bytes_max >= FRAME_BYTES_MIN
        self.config = config
        self.api = api
        self.metrics = metrics
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=node_id, listener=config.name)
        self._socket = _bind_exclusive(*config.bind)
        self.port: int = self._socket.getsockname()[1]
        self._server: asyncio.Server | None = None
        # Invariant: len(_connections) <= connections_max.
        self._connections: set[asyncio.Task[None]] = set()
        # Counters for tests and metrics.
        self.connections_refused = 0
        self.requests_served = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, sock=self._socket, backlog=LISTEN_BACKLOG
        )
        self.log.info("kafka.listener_started", bind=f"{self.config.bind[0]}:{self.port}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self._socket.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def connections(self) -> int:
        return len(self._connections)

    # ------------------------------------------------------------ one connection

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        if len(self._connections) >= self.config.connections_max:
            self.connections_refused += 1
            self.log.warning("kafka.connection_refused", peer=peer, reason="too many connections")
            writer.close()
            return
        self._connections.add(task)
        try:
            await _Connection(self, reader, writer, peer).run()
        finally:
            self._connections.discard(task)


class _Connection:
    def __init__(
        self,
        listener: KafkaListener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        self.listener = listener
        self.api = listener.api
        self.config = listener.config
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.log = listener.log.bind(peer=peer)
        # Requests read, their answers not yet written: the order answers go out in.
        self._room = asyncio.Event()
        self.inflight: asyncio.Queue[tuple[RequestContext, asyncio.Future[Any] | bytes]] = (
            asyncio.Queue(maxsize=self.config.inflight_requests_max)
        )
        # Handlers started and not finished. Invariant: at most inflight_requests_max + 1
        # (the queue's bound, plus the one the writer is waiting for).
        self.handlers: set[asyncio.Future[Any]] = set()
        self.requests = 0

    async def run(self) -> None:
        self.log.debug("kafka.connection_opened")
        loop = asyncio.get_running_loop()
        reading = loop.create_task(self._read_requests())
        sending = loop.create_task(self._send_answers())
        reason = ""  # the client closed it between requests
        try:
            done, _ = await asyncio.wait([reading, sending], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if isinstance(error, _HangUpError):
                    reason = str(error)
                elif isinstance(error, ConnectionError | OSError):
                    reason = f"connection lost: {error}"
                elif error is not None:
                    reason = f"internal error: {error!r}"
                    self.log.error("kafka.connection_failed", exc_info=error)
        finally:
            # Drop what is in flight: a produce already appended stays appended (its
            # acks were owed to this connection, which is gone).
            for pending in (reading, sending, *self.handlers):
                pending.cancel()
            self.writer.close()
            # A client's own close is routine (debug); our closing it is worth a line.
            log = self.log.info if reason else self.log.debug
            log(
                "kafka.connection_closed",
                reason=reason or "closed by the client",
                requests=self.requests,
            )

    # ------------------------------------------------------------ reading

    async def _read_requests(self) -> None:
        idle_s = self.config.idle_timeout_ms / 1000
        # Bound: one iteration per request, until the client closes or misbehaves.
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    size_bytes = await self.reader.readexactly(SIZE_PREFIX.size)
            except TimeoutError:
                if self.inflight.empty():
                    raise _HangUpError(f"idle for {self.config.idle_timeout_ms} ms") from None
                continue
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise _HangUpError("the connection ended inside a size prefix") from None
                return  # a clean end between requests
            (size,) = SIZE_PREFIX.unpack(size_bytes)
            if not FRAME_BYTES_MIN <= size <= self.config.frame_bytes_max:
                raise _HangUpError(
                    f"frame of {size} bytes (allowed {FRAME_BYTES_MIN}.."
                    f"{self.config.frame_bytes_max})"
                )
            try:
                async with asyncio.timeout(idle_s):
                    frame = await self.reader.readexactly(size)
            except TimeoutError:
                raise _HangUpError(
                    f"a {size}-byte frame did not arrive within {idle_s:.0f} s"
                ) from None
            except asyncio.IncompleteReadError as e:
                raise _HangUpError(
                    f"the connection ended inside a frame ({len(e.partial)} of {size} bytes)"
                ) from None
            await self._dispatch(frame)

    async def _dispatch(self, frame: bytes) -> None:
        try:
            api_key, api_version, correlation_id = kafka_codec.read_header_fixed(frame)
        except KafkaDecodeError as e:
            raise _HangUpError(f"bad request header: {e}") from None
        handler = self.api.lookup(api_key, api_version)
        if handler is None:
            if api_key == API_VERSIONS_KEY:
                # KIP-511: answer in v0 (which every client reads), with the full list.
                ctx = self._context(api_key, 0, correlation_id, None)
                answer = kafka_codec.encode_response(
                    api_key, 0, correlation_id, self.api.unsupported_api_versions_response()
                )
                await self.inflight.put((ctx, answer))
                return
            known = self.api.version_range(api_key)
            raise _HangUpError(
                f"API key {api_key} version {api_version} is not served"
                + (f" (versions {known[0]}..{known[1]} are)" if known else "")
            )
        flexible = kafka_codec.is_flexible(api_key, api_version)
        assert flexible is not None, f"API {api_key} v{api_version} registered without a schema"
        try:
            header = kafka_codec.read_request_header(frame, flexible=flexible)
            request = kafka_codec.decode_request(header, frame)
        except KafkaDecodeError as e:
            raise _HangUpError(f"API key {api_key} v{api_version} does not parse: {e}") from None
        ctx = self._context(api_key, api_version, correlation_id, header.client_id)
        self.requests += 1
        self.listener.requests_served += 1
        # Wait for room first: the bound holds handlers, not just queue entries.
        while self.inflight.full():
            await self._room.wait()
            self._room.clear()
        task = asyncio.ensure_future(handler(ctx, request))
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)
        metrics = self.listener.metrics
        if metrics is not None:
            metrics.seen_client(self.peer)
            metrics.request_started()
            api = f"kafka.{api_key_map.get(api_key, api_key)}"
            started = time.perf_counter()

            def measured(_: asyncio.Future[Any]) -> None:
                metrics.request_done(api, time.perf_counter() - started)

            task.add_done_callback(measured)
        self.inflight.put_nowait((ctx, task))

    def _context(
        self, api_key: int, api_version: int, correlation_id: int, client_id: str | None
    ) -> RequestContext:
        return RequestContext(
            api_key=api_key,
            api_version=api_version,
            correlation_id=correlation_id,
            client_id=client_id,
            listener_name=self.config.name,
            peer=self.peer,
        )

    # ------------------------------------------------------------ writing

    async def _send_answers(self) -> None:
        # Bound: one iteration per request read; ends when the connection does.
        while True:
            ctx, item = await self.inflight.get()
            self._room.set()
            if isinstance(item, bytes):
                frame = item
            else:
                try:
                    response = await item
                except Exception as e:
                    self.log.error(
                        "kafka.request_failed",
                        api_key=ctx.api_key,
                        api_version=ctx.api_version,
                        correlation_id=ctx.correlation_id,
                        exc_info=e,
                    )
                    raise _HangUpError(f"request {ctx.correlation_id} failed: {e!r}") from None
                if response is None:
                    continue  # acks=0: no response at all
                frame = kafka_codec.encode_response(
                    ctx.api_key, ctx.api_version, ctx.correlation_id, response
                )
            self.writer.write(frame)
            await self.writer.drain()


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _bind_exclusive(host: str, port: int) -> socket.socket:
    """A listening socket on HOST:PORT, bound as `raftmq.ports` binds every server: with
    SO_REUSEADDR (a port in TIME_WAIT is free) and never SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from e
        raise OSError(f"cannot bind the Kafka listener {host}:{port}: {e}") from e
    return sock
