"""Routing over the cluster: bootstrap from brokers, keep metadata, send each request to
the partition's leader, and on NOT_LEADER / stale epoch / unavailable refresh metadata and
retry, bounded both in attempts and in time. The CLI, the benchmark and the chaos
workloads use it; the full Reader/Writer will build on it."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Sequence

from raftmq.client.connection import (
    ACKS_ALL,
    ClusterMetadata,
    Connection,
    FetchResult,
)
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.metadata import NO_LEADER

RETRY_BACKOFF_MS = 100
RETRY_BACKOFF_MS_MAX = 1_000


class ClusterClient:
    def __init__(
        self,
        bootstrap: Sequence[str],
        *,
        request_timeout_ms: int = 30_000,
        retries_max: int = 20,
    ) -> None:
        assert bootstrap, "at least one bootstrap broker is required"
        self.bootstrap = list(bootstrap)
        self.request_timeout_ms = request_timeout_ms
        self.retries_max = retries_max
        self._lock = threading.Lock()
        self._connections: dict[str, Connection] = {}
        self._metadata: ClusterMetadata | None = None

    def close(self) -> None:
        with self._lock:
            for connection in self._connections.values():
                connection.close()
            self._connections.clear()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connection(self, endpoint: str) -> Connection:
        with self._lock:
            connection = self._connections.get(endpoint)
            if connection is None:
                connection = Connection(endpoint)
                self._connections[endpoint] = connection
            return connection

    # ------------------------------------------------------------ metadata

    def refresh_metadata(self) -> ClusterMetadata:
        """Ask the known brokers in turn (bootstrap first, then every broker learnt)."""
        learnt: list[str] = []
        if self._metadata is not None:
            learnt = [
                e
                for b in self._metadata.brokers
                if (e := self._metadata.endpoint(b)) and e not in self.bootstrap
            ]
            random.shuffle(learnt)  # spread metadata load over the brokers
        endpoints = [*self.bootstrap, *learnt]
        failures = []
        for endpoint in endpoints:
            try:
                metadata = self.connection(endpoint).metadata(timeout_ms=5_000)
            except RaftmqError as e:
                failures.append(str(e))
                continue
            if metadata.version == 0:
                failures.append(f"{endpoint} has no metadata yet")
                continue
            if self._metadata is None or metadata.version >= self._metadata.version:
                self._metadata = metadata
            return self._metadata
        raise RaftmqError(
            ErrorCode.BROKER_NOT_AVAILABLE,
            "no broker answered a metadata request: " + "; ".join(failures[-3:]),
        )

    def metadata(self) -> ClusterMetadata:
        return self._metadata if self._metadata is not None else self.refresh_metadata()

    def partition_count(self, topic: str, *, wait_ms: int = 5_000) -> int:
        """Partitions of `topic`, waiting up to `wait_ms` for a just-created topic."""
        deadline = time.monotonic() + wait_ms / 1000
        metadata = self.metadata()
        while topic not in metadata.topics:
            if time.monotonic() >= deadline:
                raise RaftmqError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} does not exist"
                )
            time.sleep(0.1)
            metadata = self.refresh_metadata()
        return len(metadata.topics[topic].partitions)

    def leader_endpoint(self, topic: str, partition: int) -> str:
        metadata = self.metadata()
        t = metadata.topics.get(topic)
        if t is None:
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} does not exist"
            )
        if not 0 <= partition < len(t.partitions):
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"{topic} has {len(t.partitions)} partitions; there is no partition {partition}",
            )
        leader = t.partitions[partition].leader
        endpoint = metadata.endpoint(leader) if leader != NO_LEADER else None
        if endpoint is None:
            raise RaftmqError(ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no leader")
        return endpoint

    # ------------------------------------------------------------ retries

    def _retry_wait(self, attempt: int, deadline: float, error: RaftmqError) -> None:
        if not error.retriable or attempt >= self.retries_max or time.monotonic() >= deadline:
            raise error
        backoff_ms = min(RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS * (2 ** min(attempt, 4)))
        time.sleep(min(backoff_ms / 1000, max(0.0, deadline - time.monotonic())))
        with contextlib.suppress(RaftmqError):  # the next attempt reports what is wrong
            self.refresh_metadata()

    def produce(
        self,
        topic: str,
        partition: int,
        batch: bytes,
        *,
        acks: int = ACKS_ALL,
        timeout_ms: int | None = None,
    ) -> int:
        """Send one batch to the partition's leader; returns its base offset. Retries
        retriable errors (a retry after an unknown outcome may duplicate the batch:
        idempotent producers come later)."""
        timeout_ms = timeout_ms or self.request_timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000
        attempt = 0
        while True:
            attempt += 1
            try:
                endpoint = self.leader_endpoint(topic, partition)
                remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                [result] = self.connection(endpoint).produce(
                    [(topic, partition, batch)], acks=acks, timeout_ms=min(remaining_ms, 30_000)
                )
                if result.error is None:
                    return result.base_offset
                raise result.error
            except RaftmqError as e:
                self._retry_wait(attempt, deadline, e)

    def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        max_wait_ms: int = 500,
        max_bytes: int = 4 << 20,
    ) -> FetchResult:
        """Fetch from the leader; retries leader changes. OFFSET_OUT_OF_RANGE is returned
        in the result (the caller decides how to reset)."""
        deadline = time.monotonic() + (self.request_timeout_ms + max_wait_ms) / 1000
        attempt = 0
        while True:
            attempt += 1
            try:
                endpoint = self.leader_endpoint(topic, partition)
                [result] = self.connection(endpoint).fetch(
                    [(topic, partition, offset)],
                    max_wait_ms=max_wait_ms,
                    max_bytes=max_bytes,
                    partition_max_bytes=max_bytes,
                )
                if result.error is None or result.error.code == ErrorCode.OFFSET_OUT_OF_RANGE:
                    return result
                raise result.error
            except RaftmqError as e:
                self._retry_wait(attempt, deadline, e)

    def list_offset(self, topic: str, partition: int, timestamp: int) -> int:
        """-2: earliest, -1: latest (high watermark), else the first offset at/after it."""
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        attempt = 0
        while True:
            attempt += 1
            try:
                endpoint = self.leader_endpoint(topic, partition)
                [(_, _, offset, error)] = self.connection(endpoint).list_offsets(
                    [(topic, partition, timestamp)]
                )
                if error is None:
                    return offset
                raise error
            except RaftmqError as e:
                self._retry_wait(attempt, deadline, e)
