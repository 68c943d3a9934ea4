"""Bootstrap addresses and the cluster's metadata, for the sync shells (Writer, Reader,
Admin): connections to brokers by address, and a metadata fetch that tries the brokers a
leader hint named, the bootstrap brokers, then every broker learnt, bounded in time."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import structlog
from raftmq import wire
from raftmq.client.conn import Conn, now_ms
from raftmq.client.deadlines import call_timeout_ms
from raftmq.client.produce_stream import ProduceStream
from raftmq.client.protocol import ClusterMetadata
from raftmq.errors import ErrorCode, RaftmqError

_log = structlog.get_logger("raftmq.client")

# One attempt's bound (the whole call's is the caller's `timeout_ms`): a broker that does
# not answer costs this, then the next one is asked.
METADATA_TIMEOUT_MS = 5_000
INIT_PRODUCER_ID_TIMEOUT_MS = 10_000


def parse_brokers(brokers: Sequence[str] | str) -> list[str]:
    """["host:port", ...] or "host:port,host:port" -> a checked, non-empty list."""
    items = brokers.split(",") if isinstance(brokers, str) else list(brokers)
    addresses = [b.strip() for b in items if b.strip()]
    if not addresses:
        raise ValueError("at least one broker address (HOST:PORT) is required")
    for address in addresses:
        wire.parse_host_port(address)
    return addresses


def candidate_addresses(
    bootstrap: list[str], metadata: ClusterMetadata | None, prefer: Sequence[str] = ()
) -> list[str]:
    """Where to ask: the `prefer`red brokers (leader hints: they know the newest state),
    the bootstrap brokers, then every other broker learnt (shuffled, to spread the
    load); each once."""
    learnt: list[str] = []
    if metadata is not None:
        learnt = [e for b in metadata.brokers if (e := metadata.endpoint(b)) and e not in bootstrap]
        random.shuffle(learnt)
    return list(dict.fromkeys([*prefer, *bootstrap, *learnt]))


def attempts(
    addresses: Sequence[str],
    *,
    timeout_ms: int | None,
    attempt_timeout_ms: int,
    clock: Callable[[], int] = now_ms,
) -> Iterator[tuple[str, int]]:
    """(address, that attempt's timeout) for each address in turn, while the call's
    `timeout_ms` (None: no bound but each attempt's) has time left. Both pools' loops."""
    deadline_ms = None if timeout_ms is None else clock() + timeout_ms
    for address in addresses:
        remaining_ms = None if deadline_ms is None else deadline_ms - clock()
        if remaining_ms is not None and remaining_ms <= 0:
            return
        yield address, call_timeout_ms(remaining_ms, attempt_timeout_ms)


def merge_metadata(
    current: ClusterMetadata | None, answer: ClusterMetadata, topics: Sequence[str]
) -> ClusterMetadata:
    """The view after an answer to a metadata request for `topics` (an older answer than
    the view is ignored)."""
    if current is None:
        return answer
    if answer.version < current.version:
        return current
    return current.merged(answer, topics)


def no_metadata(failures: list[str], timeout_ms: int | None) -> RaftmqError:
    within = f" within {timeout_ms} ms" if timeout_ms is not None else ""
    return RaftmqError(
        ErrorCode.BROKER_NOT_AVAILABLE,
        f"no broker answered a metadata request{within}: "
        + ("; ".join(failures[-3:]) or "no time left to ask"),
    )


def no_producer_id(failures: list[str], timeout_ms: int | None) -> RaftmqError:
    within = f" within {timeout_ms} ms" if timeout_ms is not None else ""
    return RaftmqError(
        ErrorCode.BROKER_NOT_AVAILABLE,
        f"no broker answered InitProducerId{within}: "
        + ("; ".join(failures[-3:]) or "no time left to ask"),
    )


class BrokerPool:
    """Conns by address (one gRPC channel each, shared), their produce streams, plus the
    latest metadata seen."""

    def __init__(
        self,
        bootstrap: Sequence[str] | str,
        *,
        on_reconnect: Callable[[str], None] | None = None,
    ) -> None:
        """`on_reconnect(address)`: the broker at `address` answers again after a call
        found it unreachable (called on a thread of its Conn)."""
        self.bootstrap = parse_brokers(bootstrap)
        self._on_reconnect = on_reconnect
        self._lock = threading.Lock()
        self._conns: dict[str, Conn] = {}
        # At most one open stream per address; a failed one is replaced on next use.
        self._streams: dict[str, ProduceStream] = {}
        # Addresses whose broker has no ProduceStream (it answered UNIMPLEMENTED): the
        # Writer sends to them with unary Produce calls. Only grows.
        self._unary_only: set[str] = set()
        self._closed = False
        self.metadata: ClusterMetadata | None = None

    def conn(self, address: str) -> Conn:
        """The Conn to `address`; after `close`, raises BROKER_NOT_AVAILABLE (a closing
        Writer's sender may still try)."""
        with self._lock:
            if self._closed:
                raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "the client was closed")
            conn = self._conns.get(address)
            if conn is None:
                on_reconnect = self._on_reconnect
                conn = self._conns[address] = Conn(
                    address,
                    on_reconnect=None if on_reconnect is None else partial(on_reconnect, address),
                )
            return conn

    def produce_stream(self, address: str) -> ProduceStream | None:
        """The open produce stream to `address` (a new one if none is, or it failed);
        None if that broker has no ProduceStream (send it unary Produce calls instead).
        After `close`, raises BROKER_NOT_AVAILABLE."""
        conn = self.conn(address)
        with self._lock:
            if self._closed:
                raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "the client was closed")
            if address in self._unary_only:
                return None
            stream = self._streams.get(address)
            if stream is not None and stream.unimplemented:
                self._unary_only.add(address)
                del self._streams[address]
                _log.info("produce_stream.unsupported", endpoint=address)
                return None
            if stream is None or stream.failed:
                stream = self._streams[address] = ProduceStream(conn)
            return stream

    def expire_streams(self, now_ms: int) -> int | None:
        """Fail the streams with a request past its deadline; the next deadline (None:
        no request is waiting for an answer)."""
        with self._lock:
            streams = list(self._streams.values())
        deadlines = [d for s in streams if (d := s.expire(now_ms)) is not None]
        return min(deadlines, default=None)

    def init_producer_id(
        self, producer_id: int, producer_epoch: int, *, timeout_ms: int | None = None
    ) -> tuple[int, int]:
        """InitProducerId at the first broker that answers (any broker can), within
        `timeout_ms` in all (None: each attempt's own bound)."""
        failures = []
        for address, attempt_ms in attempts(
            self._candidates(),
            timeout_ms=timeout_ms,
            attempt_timeout_ms=INIT_PRODUCER_ID_TIMEOUT_MS,
        ):
            try:
                return self.conn(address).init_producer_id(
                    producer_id, producer_epoch, timeout_ms=attempt_ms
                )
            except RaftmqError as e:
                if e.code != ErrorCode.BROKER_NOT_AVAILABLE:
                    raise
                failures.append(e.message)
        raise no_producer_id(failures, timeout_ms)

    def _candidates(self, prefer: Sequence[str] = ()) -> list[str]:
        return candidate_addresses(self.bootstrap, self.metadata, prefer)

    def fetch_metadata(
        self,
        topics: Sequence[str] = (),
        *,
        allow_auto_topic_creation: bool = False,
        timeout_ms: int | None = None,
        prefer: Sequence[str] = (),
    ) -> ClusterMetadata:
        """Ask the brokers in turn (`prefer` first), within `timeout_ms` in all (None:
        each attempt's own bound); keep and return the newest answer."""
        failures = []
        for address, attempt_ms in attempts(
            self._candidates(prefer), timeout_ms=timeout_ms, attempt_timeout_ms=METADATA_TIMEOUT_MS
        ):
            try:
                metadata = self.conn(address).metadata(
                    topics,
                    allow_auto_topic_creation=allow_auto_topic_creation,
                    timeout_ms=attempt_ms,
                )
            except RaftmqError as e:
                failures.append(e.message)
                continue
            if metadata.version == 0:
                failures.append(f"{address} has no metadata yet")
                continue
            with self._lock:
                self.metadata = merge_metadata(self.metadata, metadata, topics)
                return self.metadata
        raise no_metadata(failures, timeout_ms)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            streams = list(self._streams.values())
            self._streams.clear()
            conns = list(self._conns.values())
            self._conns.clear()
        # Outside the lock: a closed stream answers its pending requests (their callbacks
        # may use the pool).
        for stream in streams:
            stream.close()
        for conn in conns:
            conn.close()
