"""Followers pull from leaders: one fetcher thread per (this broker, leader broker) pair
carries every partition this broker follows from that leader in one long-poll Fetch, as
Kafka's replica fetcher does, so thousands of partitions cost one RPC loop per leader."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from raftmq import wire
from raftmq.broker.partition import Partition, now_ms
from raftmq.broker.replication import truncation_offset
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.lifecycle import guarded_thread
from raftmq.v1 import broker_pb2 as pb
from raftmq.v1 import broker_pb2_grpc

FETCH_MAX_WAIT_MS = 500
FETCH_BYTES_MAX = 16 << 20
PARTITION_FETCH_BYTES_MAX = 4 << 20
# After an error for a partition (leader not ready, epoch mismatch), retry after this.
PARTITION_BACKOFF_MS = 200
# After a local failure applying a partition's data (storage error, corrupt batch).
PARTITION_ERROR_BACKOFF_MS = 1_000
# After a transport failure for the whole leader.
LEADER_BACKOFF_MS_MAX = 1_000

PartitionKey = tuple[bytes, int]


@dataclass(slots=True)
class FetchTarget:
    partition: Partition
    leader_epoch: int
    backoff_until_ms: int = 0


class ReplicaFetcher:
    def __init__(
        self,
        *,
        broker_id: int,
        leader_id: int,
        endpoint: str,
        wait_durable: Callable[[], None],
        broker_epoch: Callable[[], int],
        on_fatal: Callable[[str], None],
    ) -> None:
        self.broker_id = broker_id
        # Under the `batch` flush policy a follower's copy must be durable before its next
        # fetch offset tells the leader it has the data (and may count toward the HW).
        self.wait_durable = wait_durable
        self.leader_id = leader_id
        self.endpoint = endpoint
        # Read at every fetch: after a re-registration the leader must see the new epoch.
        self.broker_epoch = broker_epoch
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        # Partitions followed from this leader; bounded by the partitions we replicate.
        self._targets: dict[PartitionKey, FetchTarget] = {}
        self._channel = grpc.insecure_channel(endpoint, options=wire.GRPC_OPTIONS)
        self._stub: Any = broker_pb2_grpc.BrokerServiceStub(self._channel)
        self.log = structlog.get_logger("raftmq.broker").bind(
            node_id=broker_id, leader=leader_id, endpoint=endpoint
        )
        self._thread = guarded_thread(
            self._run,
            name=f"replica-fetcher-{leader_id}",
            stopping=self._stopping,
            on_fatal=on_fatal,
            log=self.log,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        self._thread.join(timeout=FETCH_MAX_WAIT_MS / 1000 + 3)
        self._channel.close()

    def add(self, partition: Partition, leader_epoch: int) -> None:
        with self._lock:
            self._targets[(partition.topic_id, partition.index)] = FetchTarget(
                partition, leader_epoch
            )
        self._wakeup.set()

    def remove(self, key: PartitionKey) -> None:
        with self._lock:
            self._targets.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._targets)

    def _run(self) -> None:
        backoff_ms = 50
        while not self._stopping.is_set():
            with self._lock:
                targets = dict(self._targets)
            now = now_ms()
            ready = {k: t for k, t in targets.items() if t.backoff_until_ms <= now}
            if not ready:
                self._wakeup.wait(PARTITION_BACKOFF_MS / 1000 if targets else 1.0)
                self._wakeup.clear()
                continue
            request = pb.FetchRequest(
                replica_id=self.broker_id,
                replica_broker_epoch=self.broker_epoch(),
                max_wait_ms=FETCH_MAX_WAIT_MS,
                min_bytes=1,
                max_bytes=FETCH_BYTES_MAX,
            )
            for target in ready.values():
                fetch_offset, last_epoch = target.partition.follower_fetch_position()
                request.partitions.append(
                    pb.PartitionFetchData(
                        topic=target.partition.topic,
                        topic_id=target.partition.topic_id,
                        partition=target.partition.index,
                        fetch_offset=fetch_offset,
                        current_leader_epoch=target.leader_epoch,
                        last_fetched_epoch=last_epoch,
                        partition_max_bytes=PARTITION_FETCH_BYTES_MAX,
                    )
                )
            try:
                response = self._stub.Fetch(request, timeout=FETCH_MAX_WAIT_MS / 1000 + 5)
            except grpc.RpcError as e:
                code = wire.rpc_status(e)
                self.log.debug("replica.fetch_failed", code=str(code))
                self._stopping.wait(backoff_ms / 1000)
                backoff_ms = min(LEADER_BACKOFF_MS_MAX, backoff_ms * 2)
                continue
            backoff_ms = 50
            appended = False
            for result in response.partitions:
                found = ready.get((bytes(result.topic_id), result.partition))
                if found is not None:
                    appended |= self._handle_guarded(found, result)
            if appended:
                self.wait_durable()

    def _handle_guarded(self, target: FetchTarget, result: pb.PartitionFetchResult) -> bool:
        """`_handle`, with one partition's failure (a storage error, a corrupt batch from
        the leader) confined to that partition: it is logged and retried after a backoff,
        while the other partitions of this leader keep replicating."""
        try:
            return self._handle(target, result)
        except Exception as e:
            target.backoff_until_ms = now_ms() + PARTITION_ERROR_BACKOFF_MS
            self.log.error(
                "replica.partition_failed",
                partition=target.partition.name,
                error=str(e),
                exc_info=not isinstance(e, RaftmqError),
            )
            return False

    def _handle(self, target: FetchTarget, result: pb.PartitionFetchResult) -> bool:
        """Apply one partition's fetch result; True if records were appended."""
        partition = target.partition
        error = wire.error_from_pb(result.error)
        code = ErrorCode.NONE if error is None else error.code
        if code == ErrorCode.NONE:
            if result.has_diverging_epoch:
                epoch, end_offset = result.diverging_epoch.epoch, result.diverging_epoch.end_offset
                if epoch < 0:
                    partition.restart_at(end_offset, leader_epoch=target.leader_epoch)
                    return False
                own_epoch, own_end, leo = partition.follower_truncation_input(epoch)
                offset = truncation_offset(
                    diverging_epoch=epoch,
                    diverging_end_offset=end_offset,
                    follower_epoch=own_epoch,
                    follower_epoch_end_offset=own_end,
                    log_end_offset=leo,
                )
                partition.truncate(
                    offset,
                    leader_epoch=target.leader_epoch,
                    reason=f"diverging epoch {epoch} ends at {end_offset} on the leader",
                )
                return False
            partition.append_from_leader(
                bytes(result.records),
                leader_epoch=target.leader_epoch,
                leader_high_watermark=result.high_watermark,
            )
            return bool(result.records)
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            fetch_offset, _ = partition.follower_fetch_position()
            if fetch_offset < result.log_start_offset:
                partition.restart_at(result.log_start_offset, leader_epoch=target.leader_epoch)
            elif fetch_offset > result.log_end_offset >= 0:
                partition.truncate(
                    result.log_end_offset,
                    leader_epoch=target.leader_epoch,
                    reason="fetch offset beyond the leader's log end",
                )
            target.backoff_until_ms = now_ms() + PARTITION_BACKOFF_MS
            return False
        # Not leader (yet), epoch mismatch, unknown partition: metadata will move us.
        target.backoff_until_ms = now_ms() + PARTITION_BACKOFF_MS
        self.log.debug("replica.fetch_error", partition=partition.name, error=code.name)
        return False
