"""Bootstrap addresses and the cluster's metadata, for the sync shells (Writer, Reader,
Admin): connections to brokers by address, and a metadata fetch that tries the bootstrap
brokers and then every broker learnt, bounded in time."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

from raftmq import wire
from raftmq.client.conn import Conn
from raftmq.client.protocol import ClusterMetadata
from raftmq.errors import ErrorCode, RaftmqError

METADATA_TIMEOUT_MS = 5_000


def parse_brokers(brokers: Sequence[str] | str) -> list[str]:
    """["host:port", ...] or "host:port,host:port" -> a checked, non-empty list."""
    items = brokers.split(",") if isinstance(brokers, str) else list(brokers)
    addresses = [b.strip() for b in items if b.strip()]
    if not addresses:
        raise ValueError("at least one broker address (HOST:PORT) is required")
    for address in addresses:
        wire.parse_host_port(address)
    return addresses


def candidate_addresses(bootstrap: list[str], metadata: ClusterMetadata | None) -> list[str]:
    """Where to ask for metadata: the bootstrap brokers, then every other broker learnt
    (shuffled, to spread the load)."""
    learnt: list[str] = []
    if metadata is not None:
        learnt = [e for b in metadata.brokers if (e := metadata.endpoint(b)) and e not in bootstrap]
        random.shuffle(learnt)
    return [*bootstrap, *learnt]


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


def no_metadata(failures: list[str]) -> RaftmqError:
    return RaftmqError(
        ErrorCode.BROKER_NOT_AVAILABLE,
        "no broker answered a metadata request: " + "; ".join(failures[-3:]),
    )


class BrokerPool:
    """Conns by address (one gRPC channel each, shared), plus the latest metadata seen."""

    def __init__(self, bootstrap: Sequence[str] | str) -> None:
        self.bootstrap = parse_brokers(bootstrap)
        self._lock = threading.Lock()
        self._conns: dict[str, Conn] = {}
        self.metadata: ClusterMetadata | None = None

    def conn(self, address: str) -> Conn:
        with self._lock:
            conn = self._conns.get(address)
            if conn is None:
                conn = self._conns[address] = Conn(address)
            return conn

    def init_producer_id(self, producer_id: int, producer_epoch: int) -> tuple[int, int]:
        """InitProducerId at the first broker that answers (any broker can)."""
        failures = []
        for address in self._candidates():
            try:
                return self.conn(address).init_producer_id(producer_id, producer_epoch)
            except RaftmqError as e:
                if e.code != ErrorCode.BROKER_NOT_AVAILABLE:
                    raise
                failures.append(str(e))
        raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "; ".join(failures[-3:]))

    def _candidates(self) -> list[str]:
        return candidate_addresses(self.bootstrap, self.metadata)

    def fetch_metadata(
        self,
        topics: Sequence[str] = (),
        *,
        allow_auto_topic_creation: bool = False,
        timeout_ms: int = METADATA_TIMEOUT_MS,
    ) -> ClusterMetadata:
        """Ask the known brokers in turn; keep and return the newest answer."""
        failures = []
        for address in self._candidates():
            try:
                metadata = self.conn(address).metadata(
                    topics,
                    allow_auto_topic_creation=allow_auto_topic_creation,
                    timeout_ms=timeout_ms,
                )
            except RaftmqError as e:
                failures.append(str(e))
                continue
            if metadata.version == 0:
                failures.append(f"{address} has no metadata yet")
                continue
            with self._lock:
                self.metadata = merge_metadata(self.metadata, metadata, topics)
                return self.metadata
        raise no_metadata(failures)

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
