"""The follower side of replication: one `ReplicaFetcher` per leader broker we follow
something from, holding one `ReplicaFetch` stream (an incremental fetch session, see
`raftmq.broker.replica_session`) that carries every partition followed from that leader.

The fetcher sends a partition's position when it joins and after each answer it applied
(records appended and made durable per the flush policy, a truncation, or an error retried
after a backoff); the leader pushes records as soon as it has them. A dead leader's
stream breaks at once (its process's connections are closed by the kernel), and the
fetcher redials with a short, bounded backoff while metadata moves the partitions to
their new leader.

An asyncio task on the broker's event loop; the partitions' decisions are made by
`PartitionReplica.on_fetch_reply` (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from raftmq import wire
from raftmq.broker.partition_replica import FetchReply, PartitionReplica
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.lifecycle import run_guarded_async
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc

PartitionKey = tuple[bytes, int]

# After an error for a partition (leader not ready, epoch mismatch), ask again after this.
PARTITION_BACKOFF_MS = 200
# After a local failure applying a partition's data (storage error, corrupt batch).
PARTITION_ERROR_BACKOFF_MS = 1_000
# Redialing a leader whose stream broke: from the first to the last backoff, doubling.
RECONNECT_BACKOFF_MS_MIN = 20
RECONNECT_BACKOFF_MS_MAX = 1_000
# Position messages queued for the stream; one message carries any number of positions.
OUTBOX_MESSAGES_MAX = 64

_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *wire.GRPC_OPTIONS,
    # Redial a restarted leader fast (gRPC's default first backoff is 1 s).
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MIN),
    ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MIN),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MAX),
    # A leader that is paused or cut off (no FIN) is noticed by keepalive pings on the
    # open stream; a channel without a call has nothing to notice and sends none.
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(slots=True)
class _Target:
    replica: PartitionReplica[Any]
    leader_epoch: int
    # The position must be (re)sent: the partition joined, or its last answer was applied.
    position_due: bool = True
    # Send the position only after this time (after an error).
    not_before_ms: int = 0


class ReplicaFetcher:
    def __init__(
        self,
        *,
        broker_id: int,
        leader_id: int,
        endpoint: str,
        broker_epoch: Callable[[], int],
        wait_durable: Callable[[], Awaitable[None]],
        now_ms: Callable[[], int],
        on_fatal: Callable[[str], None],
    ) -> None:
        self.broker_id = broker_id
        self.leader_id = leader_id
        self.endpoint = endpoint
        # Read when a stream opens: after a re-registration the leader must see the new one.
        self.broker_epoch = broker_epoch
        # Under the `batch` flush policy a follower's copy must be durable before its
        # position tells the leader it has the data (and may count toward the HW).
        self.wait_durable = wait_durable
        self.now_ms = now_ms
        self.on_fatal = on_fatal
        # Partitions followed from this leader; bounded by the partitions we replicate.
        self._targets: dict[PartitionKey, _Target] = {}
        self._removed: set[PartitionKey] = set()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self.streams_opened = 0
        self._answered = False
        # Serialises writes on the current stream (the read loop answers at once, the
        # send loop sends new, removed and backed-off partitions).
        self._write_lock = asyncio.Lock()
        self.log = structlog.get_logger("raftmq.broker").bind(
            node_id=broker_id, leader=leader_id, endpoint=endpoint
        )

    def __len__(self) -> int:
        return len(self._targets)

    def keys(self) -> list[PartitionKey]:
        return list(self._targets)

    def _is_stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            run_guarded_async(
                self._run,
                name=f"replica-fetcher-{self.leader_id}",
                stopping=self._is_stopping,
                on_fatal=self.on_fatal,
                log=self.log,
            ),
            name=f"replica-fetcher-{self.leader_id}",
        )

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close(grace=None)

    def add(self, replica: PartitionReplica[Any], leader_epoch: int) -> None:
        self._targets[replica.key] = _Target(replica, leader_epoch)
        self._removed.discard(replica.key)
        self._wakeup.set()

    def remove(self, key: PartitionKey) -> None:
        if self._targets.pop(key, None) is not None:
            self._removed.add(key)
            self._wakeup.set()

    # ------------------------------------------------------------ the stream

    async def _run(self) -> None:
        backoff_ms = RECONNECT_BACKOFF_MS_MIN
        # Bound: until stop(); each round opens one stream, then waits a backoff.
        while not self._stopping:
            if not self._targets:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            opened = await self._stream_once()
            if self._is_stopping():
                return
            backoff_ms = (
                RECONNECT_BACKOFF_MS_MIN
                if opened
                else min(RECONNECT_BACKOFF_MS_MAX, backoff_ms * 2)
            )
            await asyncio.sleep(backoff_ms / 1000)

    async def _stream_once(self) -> bool:
        """One stream, until it breaks. True if the leader answered at least once."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS)
        stub: Any = broker_pb2_grpc.BrokerServiceStub(self._channel)
        call = stub.ReplicaFetch()
        self.streams_opened += 1
        # A new stream is a new session: every partition's position is sent again.
        self._removed.clear()
        for target in self._targets.values():
            target.position_due = True
            target.not_before_ms = 0
        self._answered = False
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read_loop(call))
        sender = loop.create_task(self._send_loop(call))
        try:
            await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            call.cancel()
            for task in (reader, sender):
                task.cancel()
            results = await asyncio.gather(reader, sender, return_exceptions=True)
        for result in results:
            if isinstance(result, grpc.RpcError):
                self.log.info("replica.stream_broken", code=str(wire.rpc_status(result)))
            elif isinstance(result, Exception):
                # Not a transport failure: a bug. Raised so that run_guarded_async logs it
                # and counts it towards ending the process.
                raise result
        return self._answered

    async def _read_loop(self, call: Any) -> None:
        first = True
        # Bound: one iteration per answer, until the stream ends or breaks.
        while True:
            response = await call.read()
            if response is wire.AIO_EOF:
                self.log.info("replica.stream_ended")
                return
            if first and response.HasField("error") and response.error.code:
                self.log.warning(
                    "replica.session_refused", error=str(wire.error_from_pb(response.error))
                )
                return
            first = False
            self._answered = True
            await self._handle(response)
            # The positions of what was just applied go out at once, not via the send
            # loop (one task switch less on every acks=all produce).
            await self._send_due(call, first=False)

    async def _send_loop(self, call: Any) -> None:
        """Sends the first message, then whatever becomes due later (partitions added,
        removed, or ready again after a backoff)."""
        first = True
        while True:
            self._wakeup.clear()
            wake_at_ms = await self._send_due(call, first=first)
            first = False
            timeout_s = (
                None if wake_at_ms is None else max(0.0, (wake_at_ms - self.now_ms()) / 1000)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout_s)

    async def _send_due(self, call: Any, *, first: bool) -> int | None:
        """Send the positions that are due (and removals); returns when the next backed-off
        one is due (None: none waits)."""
        now = self.now_ms()
        request = pb.ReplicaFetchRequest()
        if first:
            request.replica_id = self.broker_id
            request.replica_broker_epoch = self.broker_epoch()
        wake_at_ms: int | None = None
        for key, target in self._targets.items():
            if not target.position_due:
                continue
            if target.not_before_ms > now:
                wake_at_ms = min(wake_at_ms or target.not_before_ms, target.not_before_ms)
                continue
            target.position_due = False
            fetch_offset, last_epoch = target.replica.follower_position()
            request.positions.append(
                pb.ReplicaPosition(
                    topic_id=key[0],
                    partition=key[1],
                    fetch_offset=fetch_offset,
                    last_fetched_epoch=last_epoch,
                    current_leader_epoch=target.leader_epoch,
                )
            )
        for key in self._removed:
            request.removed.append(pb.ReplicaPosition(topic_id=key[0], partition=key[1]))
        self._removed.clear()
        if first or request.positions or request.removed:
            async with self._write_lock:
                await call.write(request)
        return wake_at_ms

    async def _handle(self, response: pb.ReplicaFetchResponse) -> None:
        appended: list[_Target] = []
        for result in response.partitions:
            key = (bytes(result.topic_id), result.partition)
            target = self._targets.get(key)
            if target is None:
                continue
            try:
                reply = _reply_from_pb(result)
                outcome = target.replica.on_fetch_reply(reply, leader_epoch=target.leader_epoch)
            except Exception as e:
                # One partition's failure (a storage error, a corrupt batch from the
                # leader) stays with that partition: logged, retried after a backoff,
                # while the others keep replicating.
                self.log.error(
                    "replica.partition_failed",
                    partition=target.replica.name,
                    error=str(e),
                    exc_info=not isinstance(e, RaftmqError),
                )
                self._due(target, PARTITION_ERROR_BACKOFF_MS)
                continue
            if outcome.appended:
                appended.append(target)
            elif outcome.retry_after_error:
                self._due(target, PARTITION_BACKOFF_MS)
            elif outcome.truncated:
                self._due(target, 0)
        if appended:
            await self.wait_durable()
            for target in appended:
                if self._targets.get(target.replica.key) is target:
                    self._due(target, 0)

    def _due(self, target: _Target, backoff_ms: int) -> None:
        target.position_due = True
        target.not_before_ms = self.now_ms() + backoff_ms if backoff_ms else 0
        if backoff_ms:
            self._wakeup.set()  # the send loop waits for it (else the read loop sends it)


def _reply_from_pb(result: pb.PartitionFetchResult) -> FetchReply:
    error = wire.error_from_pb(result.error)
    return FetchReply(
        error=ErrorCode.NONE if error is None else error.code,
        records=bytes(result.records),
        high_watermark=result.high_watermark,
        log_start_offset=result.log_start_offset,
        log_end_offset=result.log_end_offset,
        diverging_epoch=(
            (result.diverging_epoch.epoch, result.diverging_epoch.end_offset)
            if result.has_diverging_epoch
            else None
        ),
    )
