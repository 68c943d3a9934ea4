"""All partitions on this broker: turns metadata images into leader/follower roles and
replica fetchers, runs the periodic duties (ISR changes, retention, high watermark
checkpoints) and sends ISR proposals to the controller."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable

import structlog
from raftmq import wire
from raftmq.broker.log_store import LogStore
from raftmq.broker.metadata_cache import MetadataImage
from raftmq.broker.partition import (
    ROLE_FOLLOWER,
    ROLE_LEADER,
    BrokerSignals,
    Partition,
    now_ms,
)
from raftmq.broker.replica_fetcher import ReplicaFetcher
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.lifecycle import guarded_thread
from raftmq.metadata import NO_LEADER
from raftmq.topic_config import TopicConfig
from raftmq.v1 import controller_pb2 as cpb

ISR_PROPOSALS_MAX = 10_000
DUTY_INTERVAL_MS = 100
RETENTION_INTERVAL_MS = 5_000
# Kafka's producer.id.expiration.ms: an idempotent producer silent this long is forgotten.
PRODUCER_ID_EXPIRATION_MS = 24 * 3600 * 1000

PartitionKey = tuple[bytes, int]


class ReplicaManager:
    def __init__(
        self,
        *,
        broker_id: int,
        store: LogStore,
        controllers: EndpointPool,
        broker_epoch: Callable[[], int],
        replica_lag_time_max_ms: int,
        on_fatal: Callable[[str], None],
    ) -> None:
        self.broker_id = broker_id
        self.store = store
        self.controllers = controllers
        self.broker_epoch = broker_epoch
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        self.on_fatal = on_fatal
        self.signals = BrokerSignals()
        self._lock = threading.Lock()
        # Partitions assigned to this broker, by (topic id, index) and by (name, index).
        # Invariant: every value of _by_name is a value of _partitions, under its own
        # topic's current name (a deleted topic's partition never shadows a new one's).
        self._partitions: dict[PartitionKey, Partition] = {}
        self._by_name: dict[tuple[str, int], Partition] = {}
        # One fetcher per leader broker we follow something from. Owned by the metadata
        # thread (apply_image), and by stop() once that thread has ended: no other thread
        # reads or changes it, so a fetcher is never stopped while a partition is added.
        self._fetchers: dict[int, ReplicaFetcher] = {}
        self._proposals: queue.Queue[tuple[Partition, frozenset[int], int, int]] = queue.Queue(
            maxsize=ISR_PROPOSALS_MAX
        )
        self._stopping = threading.Event()
        self._first_image_applied = False
        # Brokers the latest metadata image shows unfenced and not shutting down: the only
        # ones an ISR expansion may add (set on the metadata thread, read by the duties).
        self._eligible_replicas: frozenset[int] = frozenset()
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=broker_id)
        self._threads = [
            guarded_thread(
                self._duty_loop,
                name="replica-duties",
                stopping=self._stopping,
                on_fatal=on_fatal,
                log=self.log,
            ),
            guarded_thread(
                self._proposal_loop,
                name="isr-proposals",
                stopping=self._stopping,
                on_fatal=on_fatal,
                log=self.log,
            ),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for fetcher in list(self._fetchers.values()):
            fetcher.stop()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout=3)
        with self._lock:
            partitions = list(self._partitions.values())
        for p in partitions:
            p.stop()
            with p.lock:
                p.log.checkpoint_high_watermark()

    # ------------------------------------------------------------ lookups

    def partition(self, topic: str, index: int) -> Partition:
        with self._lock:
            p = self._by_name.get((topic, index))
        if p is None:
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"{topic}-{index} is not hosted on broker {self.broker_id}",
            )
        return p

    def partition_by_id(self, topic_id: bytes, index: int) -> Partition:
        with self._lock:
            p = self._partitions.get((topic_id, index))
        if p is None:
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic id {topic_id.hex()} partition {index} is not hosted on broker "
                f"{self.broker_id}",
            )
        return p

    def partitions(self) -> list[Partition]:
        with self._lock:
            return list(self._partitions.values())

    # ------------------------------------------------------------ metadata

    def apply_image(self, image: MetadataImage) -> None:
        """Called on the metadata thread with every new image, in version order."""
        self._eligible_replicas = frozenset(
            b.broker_id for b in image.brokers.values() if not b.fenced and not b.shutting_down
        )
        wanted: dict[PartitionKey, tuple[str, int]] = {}
        for topic in image.topics.values():
            for index, state in enumerate(topic.partitions):
                if self.broker_id not in state.ar:
                    continue
                key = (topic.topic_id, index)
                wanted[key] = (topic.name, index)
                partition = self._get_or_open(topic.name, topic.topic_id, index, topic.config)
                role = partition.apply_metadata(state, topic.config)
                if role is not None:
                    self._route_fetching(partition, image)
        # Partitions of deleted topics (or no longer assigned here) lose their data.
        with self._lock:
            gone = [k for k in self._partitions if k not in wanted]
        for key in gone:
            self._drop(key)
        # Fetchers left with nothing to follow from their leader are stopped.
        for leader_id, fetcher in list(self._fetchers.items()):
            if len(fetcher) == 0:
                fetcher.stop()
                del self._fetchers[leader_id]
        if not self._first_image_applied:
            self._first_image_applied = True
            # Logs on disk for topics deleted while this broker was down.
            for topic_id, index in self.store.list_partitions():
                if (topic_id, index) not in wanted:
                    self.log.info(
                        "partition.orphan_deleted", topic_id=topic_id.hex(), partition=index
                    )
                    self.store.open_partition(topic_id, index).delete()

    def _get_or_open(
        self, topic: str, topic_id: bytes, index: int, config: TopicConfig
    ) -> Partition:
        key = (topic_id, index)
        with self._lock:
            partition = self._partitions.get(key)
            if partition is None:
                partition = Partition(
                    broker_id=self.broker_id,
                    topic=topic,
                    topic_id=topic_id,
                    index=index,
                    log=self.store.open_partition(topic_id, index),
                    config=config,
                    signals=self.signals,
                    propose_isr=self._enqueue_proposal,
                )
                self._partitions[key] = partition
                self._by_name[(topic, index)] = partition
            return partition

    def _route_fetching(self, partition: Partition, image: MetadataImage) -> None:
        key = (partition.topic_id, partition.index)
        for other in self._fetchers.values():
            other.remove(key)
        if partition.role != ROLE_FOLLOWER or partition.leader_id == NO_LEADER:
            return
        endpoint = image.endpoint(partition.leader_id)
        if endpoint is None:
            return
        fetcher: ReplicaFetcher | None = self._fetchers.get(partition.leader_id)
        if fetcher is not None and fetcher.endpoint != endpoint:
            # The leader restarted on another address.
            fetcher.stop()
            del self._fetchers[partition.leader_id]
            fetcher = None
        if fetcher is None:
            fetcher = ReplicaFetcher(
                broker_id=self.broker_id,
                leader_id=partition.leader_id,
                endpoint=endpoint,
                wait_durable=self.store.wait_durable,
                broker_epoch=self.broker_epoch,
                on_fatal=self.on_fatal,
            )
            fetcher.start()
            self._fetchers[partition.leader_id] = fetcher
        fetcher.add(partition, partition.leader_epoch)

    def _drop(self, key: PartitionKey) -> None:
        with self._lock:
            partition = self._partitions.pop(key, None)
            if partition is None:
                return
            name_key = (partition.topic, partition.index)
            # A topic deleted and re-created under the same name in one metadata change:
            # the name already maps to the new partition, which must stay reachable.
            if self._by_name.get(name_key) is partition:
                del self._by_name[name_key]
        for fetcher in self._fetchers.values():
            fetcher.remove(key)
        partition.stop()
        with partition.lock:
            partition.log.delete()
        partition.log_ctx.info("partition.deleted")

    # ------------------------------------------------------------ duties

    def _duty_loop(self) -> None:
        last_retention_ms = 0
        while not self._stopping.wait(DUTY_INTERVAL_MS / 1000):
            now = now_ms()
            eligible = self._eligible_replicas
            for partition in self.partitions():
                try:
                    partition.maybe_change_isr(
                        now=now,
                        lag_time_max_ms=self.replica_lag_time_max_ms,
                        eligible_replicas=eligible,
                    )
                except Exception:
                    self.log.exception("partition.duty_failed", partition=partition.name)
            if now - last_retention_ms >= RETENTION_INTERVAL_MS:
                last_retention_ms = now
                wall_ms = int(time.time() * 1000)
                for partition in self.partitions():
                    try:
                        with partition.lock:
                            removed = partition.log.enforce_retention(
                                now_ms=wall_ms,
                                retention_ms=partition.config.retention_ms,
                                retention_bytes=partition.config.retention_bytes,
                            )
                            partition.log.expire_producers(
                                now_ms=wall_ms, expiration_ms=PRODUCER_ID_EXPIRATION_MS
                            )
                            partition.log.checkpoint_high_watermark()
                    except Exception:
                        self.log.exception("log.retention_failed", partition=partition.name)
                        continue
                    if removed:
                        partition.log_ctx.info("log.retention_applied", removed=removed)

    def _enqueue_proposal(
        self, partition: Partition, isr: frozenset[int], leader_epoch: int, partition_epoch: int
    ) -> None:
        try:
            self._proposals.put_nowait((partition, isr, leader_epoch, partition_epoch))
        except queue.Full:
            partition.on_isr_proposal_failed(partition_epoch)

    def _proposal_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                partition, isr, leader_epoch, partition_epoch = self._proposals.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._send_proposal(partition, isr, leader_epoch, partition_epoch)
            except Exception:
                # This proposal is dropped (the partition proposes again on its next duty
                # tick); the loop goes on with the others.
                self.log.exception("partition.isr_proposal_failed", partition=partition.name)
                partition.on_isr_proposal_failed(partition_epoch)

    def _send_proposal(
        self, partition: Partition, isr: frozenset[int], leader_epoch: int, partition_epoch: int
    ) -> None:
        """Send one AlterPartition until its outcome is known. A timeout or a lost reply
        leaves the outcome unknown: the controller may have committed it, so the proposal
        stays pending (the HW keeps using the maximal ISR, KIP-497) and is resent with the
        same request id, which the controller answers from its dedupe cache. Only a definite
        rejection clears it; new metadata for the partition supersedes it."""
        request = cpb.AlterPartitionRequest(
            broker_id=self.broker_id,
            broker_epoch=self.broker_epoch(),
            topic=partition.topic,
            topic_id=partition.topic_id,
            partition=partition.index,
            leader_epoch=leader_epoch,
            partition_epoch=partition_epoch,
            new_isr=sorted(isr),
            request_id=uuid.uuid4().hex,
        )
        backoff_ms = 100
        while not self._stopping.is_set() and partition.proposal_pending(isr, partition_epoch):
            try:
                # A commit takes milliseconds: an attempt that takes longer is at an
                # unreachable controller, so fail over to the next one after 1.5 s.
                response = call_with_failover(
                    self.controllers,
                    "AlterPartition",
                    request,
                    timeout_ms=5_000,
                    rpc_timeout_ms=1_500,
                )
                error = wire.error_from_pb(response.error)
            except RaftmqError as e:
                error = e
            if error is None:
                partition.on_isr_proposal_committed(wire.partition_from_pb(response.partition))
                return
            if error.code not in (ErrorCode.CONTROLLER_UNAVAILABLE, ErrorCode.NOT_CONTROLLER):
                self.log.info(
                    "partition.isr_change_rejected", partition=partition.name, error=error.code.name
                )
                partition.on_isr_proposal_failed(partition_epoch)
                return
            self.log.info(
                "partition.isr_change_unknown", partition=partition.name, error=str(error)
            )
            self._stopping.wait(backoff_ms / 1000)
            backoff_ms = min(2_000, backoff_ms * 2)

    def leader_partitions(self) -> list[Partition]:
        return [p for p in self.partitions() if p.role == ROLE_LEADER]
