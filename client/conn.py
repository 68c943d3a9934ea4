"""`Conn`: one connection to one broker, with the raw calls (kafka-go's `Conn`).

No routing and no retries: a Conn talks to exactly the broker it was opened to. Bound to a
topic and partition (`Conn(address, topic=..., partition=...)`, or `Conn.dial_leader`),
it also has kafka-go's conveniences: `write_messages`, `read_batch`, `read_offsets`. The
Writer, Reader and Admin route and retry on top of it. Thread-safe (gRPC channels are).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import grpc
from raftmq import wire
from raftmq.client import protocol
from raftmq.client.deadlines import DEADLINE_MARGIN_MS
from raftmq.client.protocol import (
    ACKS_ALL,
    EARLIEST,
    LATEST,
    ClusterMetadata,
    FetchResult,
    OffsetResult,
    ProduceResult,
)
from raftmq.compression import CODEC_NONE
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message
from raftmq.record_batch import decode_batches, encode_batch
from raftmq.redial import Redial
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc

__all__ = [
    "DEADLINE_MARGIN_MS",
    "Conn",
    "closed_error",
    "decode_from",
    "now_ms",
    "transport_error",
    "wall_ms",
]


def closed_error(endpoint: str, method: str) -> RaftmqError:
    return RaftmqError(
        ErrorCode.BROKER_NOT_AVAILABLE, f"{endpoint} {method}: the connection was closed"
    )


def transport_error(endpoint: str, method: str, e: grpc.RpcError) -> RaftmqError:
    code = wire.rpc_status(e)
    return RaftmqError(
        ErrorCode.BROKER_NOT_AVAILABLE, f"{endpoint} {method} failed: {code.name if code else e}"
    )


class Conn:
    """One gRPC channel to one broker (HOST:PORT). Use as a context manager, or `close()`."""

    def __init__(
        self,
        address: str,
        *,
        topic: str | None = None,
        partition: int = 0,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """`on_reconnect` is called (on a thread of the Conn's) when the broker answers
        again after a call found it unreachable."""
        wire.parse_host_port(address)
        self.address = address
        self.topic = topic
        self.partition = partition
        self._channel = grpc.insecure_channel(address, options=wire.GRPC_CLIENT_OPTIONS)
        self._stub: Any = broker_pb2_grpc.BrokerServiceStub(self._channel)
        # Reconnects the channel after a call found it down (see raftmq.redial).
        self._redial = Redial(self._channel, name=address, on_up=on_reconnect)
        self._closed = False

    @classmethod
    def dial_leader(
        cls, brokers: Sequence[str], topic: str, partition: int, *, timeout_ms: int = 10_000
    ) -> Conn:
        """A Conn to the current leader of `topic`-`partition`, found through `brokers`."""
        failures = []
        for address in brokers:
            with cls(address) as bootstrap:
                try:
                    metadata = bootstrap.metadata([topic], timeout_ms=timeout_ms)
                except RaftmqError as e:
                    failures.append(str(e))
                    continue
            leader, _ = metadata.leader(topic, partition)
            if leader is None:
                if topic not in metadata.topics:
                    raise RaftmqError(
                        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} does not exist"
                    )
                raise RaftmqError(
                    ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no leader now"
                )
            return cls(leader, topic=topic, partition=partition)
        raise RaftmqError(ErrorCode.BROKER_NOT_AVAILABLE, "; ".join(failures) or "no brokers")

    def close(self) -> None:
        """Close the channel; calls in progress fail (BROKER_NOT_AVAILABLE), later ones too."""
        self._closed = True
        self._redial.close()
        self._channel.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ raw calls

    def call(self, method: str, request: Any, *, timeout_ms: int) -> Any:
        """One unary RPC; a transport failure raises BROKER_NOT_AVAILABLE."""
        try:
            return getattr(self._stub, method)(request, timeout=timeout_ms / 1000)
        except grpc.RpcError as e:
            self._redial.on_error(e)
            raise transport_error(self.address, method, e) from e
        except ValueError as e:  # gRPC's answer to a call on a closed channel
            if not self._closed:
                raise
            raise closed_error(self.address, method) from e

    def call_future(self, method: str, request: Any, *, timeout_ms: int) -> Future[Any]:
        """The same call without blocking: a future of the response (or of grpc.RpcError)."""
        try:
            future: Future[Any] = getattr(self._stub, method).future(
                request, timeout=timeout_ms / 1000
            )
        except ValueError as e:
            if not self._closed:
                raise
            raise closed_error(self.address, method) from e
        future.add_done_callback(self._redial.on_call_done)
        return future

    def open_stream(self, method: str, requests: Iterator[Any]) -> Any:
        """Open a stream-stream RPC fed by `requests` (no deadline: the caller bounds what
        it waits for); iterate the result for the answers, `cancel()` it to end it."""
        try:
            call = getattr(self._stub, method)(requests)
        except ValueError as e:
            if not self._closed:
                raise
            raise closed_error(self.address, method) from e
        call.add_done_callback(self._redial.on_call_done)
        return call

    def produce(
        self,
        batches: Sequence[tuple[str, int, bytes]],
        *,
        acks: int = ACKS_ALL,
        timeout_ms: int = 30_000,
        leader_epoch: int = -1,
    ) -> list[ProduceResult]:
        """Send (topic, partition, one encoded batch) triples in one request."""
        request = protocol.produce_request(
            [(t, p, leader_epoch, b) for t, p, b in batches], acks=acks, timeout_ms=timeout_ms
        )
        response = self.call("Produce", request, timeout_ms=timeout_ms + DEADLINE_MARGIN_MS)
        return protocol.produce_results(response)

    def fetch(
        self,
        partitions: Sequence[tuple[str, int, int]],
        *,
        max_wait_ms: int = 500,
        min_bytes: int = 1,
        max_bytes: int = 16 << 20,
        partition_max_bytes: int = 4 << 20,
        leader_epoch: int = -1,
        timeout_ms: int | None = None,
    ) -> list[FetchResult]:
        """Fetch (topic, partition, offset) as a consumer: only data below the high
        watermark; a long poll of up to `max_wait_ms` until `min_bytes` are there. The
        call's deadline is `timeout_ms` (default: max_wait_ms + DEADLINE_MARGIN_MS)."""
        request = protocol.fetch_request(
            [(t, p, o, leader_epoch) for t, p, o in partitions],
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            partition_max_bytes=partition_max_bytes,
        )
        if timeout_ms is None:
            timeout_ms = max_wait_ms + DEADLINE_MARGIN_MS
        response = self.call("Fetch", request, timeout_ms=timeout_ms)
        return protocol.fetch_results(response)

    def list_offsets(
        self, partitions: Sequence[tuple[str, int, int]], *, timeout_ms: int = 10_000
    ) -> list[OffsetResult]:
        """(topic, partition, timestamp ms | EARLIEST | LATEST) each."""
        response = self.call(
            "ListOffsets", protocol.list_offsets_request(partitions), timeout_ms=timeout_ms
        )
        return protocol.offset_results(response)

    def metadata(
        self,
        topics: Sequence[str] = (),
        *,
        allow_auto_topic_creation: bool = False,
        timeout_ms: int = 10_000,
    ) -> ClusterMetadata:
        response = self.call(
            "Metadata",
            pb.MetadataRequest(
                topics=list(topics), allow_auto_topic_creation=allow_auto_topic_creation
            ),
            timeout_ms=timeout_ms,
        )
        return protocol.cluster_metadata(response)

    def init_producer_id(
        self, producer_id: int = -1, producer_epoch: int = -1, *, timeout_ms: int = 10_000
    ) -> tuple[int, int]:
        """A new producer id (or, given one, its next epoch): (producer id, epoch)."""
        response = self.call(
            "InitProducerId",
            pb.InitProducerIdRequest(producer_id=producer_id, producer_epoch=producer_epoch),
            timeout_ms=timeout_ms,
        )
        wire.raise_for(response.error)
        return response.producer_id, response.producer_epoch

    def admin(self, method: str, request: Any, *, timeout_ms: int = 15_000) -> Any:
        """CreateTopic / DeleteTopic / DescribeTopics / DescribeCluster, forwarded by the
        broker to the controller quorum. Raises the response's error."""
        response = self.call(method, request, timeout_ms=timeout_ms)
        wire.raise_for(response.error)
        return response

    # ------------------------------------------------------------ kafka-go conveniences

    def _bound(self) -> str:
        if self.topic is None:
            raise ValueError("this Conn is not bound to a topic: pass topic= (or dial_leader)")
        return self.topic

    def write_messages(
        self, *messages: Message, compression: int = CODEC_NONE, timeout_ms: int = 30_000
    ) -> int:
        """Write `messages` as one batch (acks=all, not idempotent) to the bound partition;
        return the base offset. Raises the broker's error."""
        topic = self._bound()
        [result] = self.produce(
            [(topic, self.partition, encode_batch(messages, compression=compression))],
            timeout_ms=timeout_ms,
        )
        if result.error is not None:
            raise result.error
        return result.base_offset

    def read_batch(
        self, offset: int, *, min_bytes: int = 1, max_bytes: int = 1 << 20, max_wait_ms: int = 500
    ) -> list[Message]:
        """Messages of the bound partition from `offset` on (at most about `max_bytes`,
        waiting up to `max_wait_ms` for `min_bytes`). Raises the broker's error."""
        topic = self._bound()
        [result] = self.fetch(
            [(topic, self.partition, offset)],
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            partition_max_bytes=max_bytes,
        )
        if result.error is not None:
            raise result.error
        return decode_from(result.records, topic, self.partition, offset)

    def read_offsets(self) -> tuple[int, int]:
        """(first, last) of the bound partition: its log start offset and high watermark."""
        topic = self._bound()
        first, last = self.list_offsets(
            [(topic, self.partition, EARLIEST), (topic, self.partition, LATEST)]
        )
        for result in (first, last):
            if result.error is not None:
                raise result.error
        return first.offset, last.offset


def decode_from(records: bytes, topic: str, partition: int, offset: int) -> list[Message]:
    """The messages at or after `offset` in a fetch response's records, with their topic and
    partition set (a fetch may begin with a batch that starts before `offset`). The codec
    fills in topic and partition and skips the records before `offset`: no Python loop
    over the messages."""
    return decode_batches(records, topic=topic, partition=partition, min_offset=offset)


def now_ms() -> int:
    """The clients' monotonic clock (timeouts, backoffs)."""
    return time.monotonic_ns() // 1_000_000


def wall_ms() -> int:
    """Milliseconds since the epoch (message times)."""
    return time.time_ns() // 1_000_000
