"""All partition replicas on this broker: turns metadata into leader/follower roles and
replica fetchers, fires the hooks that complete delayed operations and wake follower
sessions, runs the periodic duties (ISR changes, retention, high watermark checkpoints)
and sends ISR proposals to the controller.

Everything here runs on the broker's event loop (asyncio): the replicas are pure
(`PartitionReplica`), the hooks are plain calls, and no lock is needed.

Metadata is applied in proportion to what changed: a delta touches only the partitions it
names (and, when brokers change, the fetchers of the leaders that moved).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from raftmq import wire
from raftmq.broker.controller_link import ControllerLink
from raftmq.broker.log_cleaner import LogCleaner
from raftmq.broker.log_store import LogStore
from raftmq.broker.metadata_cache import MetadataDelta, MetadataImage
from raftmq.broker.partition_log import PartitionLog
from raftmq.broker.partition_replica import ROLE_FOLLOWER, ROLE_LEADER, PartitionReplica
from raftmq.broker.purgatory import Purgatory
from raftmq.broker.replica_fetcher import ReplicaFetcher
from raftmq.broker.replica_session import ReplicaSessions
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.lifecycle import run_guarded_async
from raftmq.metadata import NO_LEADER, PartitionRecord, TopicRecord
from raftmq.topic_config import TopicConfig
from raftmq.v1 import controller_pb2 as cpb

ISR_PROPOSALS_MAX = 10_000
ISR_PROPOSALS_IN_FLIGHT_MAX = 32
# How often led partitions with replicas outside the ISR are checked for an expansion.
EXPAND_INTERVAL_MS = 100
RETENTION_INTERVAL_MS = 5_000
# Retention work per partition per pass, so produce and fetch never wait long.
RETENTION_BATCHES_PER_PASS = 100
# Kafka's producer.id.expiration.ms: an idempotent producer silent this long is forgotten.
PRODUCER_ID_EXPIRATION_MS = 24 * 3600 * 1000

PartitionKey = tuple[bytes, int]
Replica = PartitionReplica[PartitionLog]


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class ReplicaManager:
    def __init__(
        self,
        *,
        broker_id: int,
        store: LogStore,
        controllers: ControllerLink,
        broker_epoch: Callable[[], int],
        replica_lag_time_max_ms: int,
        on_fatal: Callable[[str], None],
        produce_purgatory: Purgatory,
        fetch_purgatory: Purgatory,
        wait_durable: Callable[[], Awaitable[None]],
        now_ms: Callable[[], int] = monotonic_ms,
    ) -> None:
        self.broker_id = broker_id
        self.store = store
        self.controllers = controllers
        self.broker_epoch = broker_epoch
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        self.on_fatal = on_fatal
        self.produce_purgatory = produce_purgatory
        self.fetch_purgatory = fetch_purgatory
        self.wait_durable = wait_durable
        self.now_ms = now_ms
        self.sessions = ReplicaSessions()
        self.cleaner = LogCleaner(
            self.replicas,
            is_current=lambda r: self._replicas.get(r.key) is r,
            on_fatal=on_fatal,
        )
        # Replicas assigned to this broker, by (topic id, index) and by (name, index).
        # Invariant: every value of _by_name is a value of _replicas, under its topic's
        # current name (a deleted topic's partition never shadows a new one's).
        self._replicas: dict[PartitionKey, Replica] = {}
        self._by_name: dict[tuple[str, int], Replica] = {}
        # Keys of the replicas this broker leads, and of those whose ISR is short of
        # their AR (the only ones an ISR expansion can concern).
        self._led: set[PartitionKey] = set()
        self._under_replicated: set[PartitionKey] = set()
        # One fetcher per leader broker we follow something from.
        self._fetchers: dict[int, ReplicaFetcher] = {}
        # Brokers the latest metadata shows unfenced and not shutting down: the only ones
        # an ISR expansion may add.
        self._eligible_replicas: frozenset[int] = frozenset()
        self._proposals: asyncio.Queue[tuple[Replica, frozenset[int], int, int]] = asyncio.Queue(
            maxsize=ISR_PROPOSALS_MAX
        )
        self._first_image_applied = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        # Called with a replica whose role changed (or that is dropped), on the loop: the
        # group coordinator follows its partitions' leadership this way.
        self.role_listeners: list[Callable[[Replica], None]] = []
        self.isr_shrinks_proposed = 0
        self.isr_expands_proposed = 0
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=broker_id)

    def start(self) -> None:
        self.cleaner.start()
        loop = asyncio.get_running_loop()
        for name, target in (
            ("replica-duties", self._duty_loop),
            ("isr-proposals", self._proposal_loop),
        ):
            self._tasks.append(
                loop.create_task(
                    run_guarded_async(
                        target,
                        name=name,
                        stopping=lambda: self._stopping,
                        on_fatal=self.on_fatal,
                        log=self.log,
                    ),
                    name=name,
                )
            )

    async def stop(self) -> None:
        self._stopping = True
        await self.cleaner.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fetcher in list(self._fetchers.values()):
            await fetcher.stop()
        self._fetchers.clear()
        for session in self.sessions.sessions():
            self.sessions.close(session)
        replicas = list(self._replicas.values())
        for replica in replicas:
            replica.stop()
        self._complete_waiting([r.key for r in replicas])
        for replica in replicas:
            replica.log.checkpoint_high_watermark()

    # ------------------------------------------------------------ lookups

    def replica(self, topic: str, index: int) -> Replica:
        replica = self._by_name.get((topic, index))
        if replica is None:
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"{topic}-{index} is not hosted on broker {self.broker_id}",
            )
        return replica

    def replica_by_id(self, topic_id: bytes, index: int) -> Replica:
        replica = self._replicas.get((topic_id, index))
        if replica is None:
            raise RaftmqError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic id {topic_id.hex()} partition {index} is not hosted on broker "
                f"{self.broker_id}",
            )
        return replica

    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    def leader_replicas(self) -> list[Replica]:
        return [self._replicas[k] for k in self._led if k in self._replicas]

    def fetchers(self) -> dict[int, ReplicaFetcher]:
        return dict(self._fetchers)

    # ------------------------------------------------------------ hooks

    def on_appended(self, replica: Replica, *, high_watermark_advanced: bool) -> None:
        """A leader append: followers' sessions answer it at once; a moved HW completes
        waiting produce and fetch requests."""
        self.sessions.on_partition_changed(replica.key)
        if high_watermark_advanced:
            self.on_high_watermark_advanced(replica)

    def on_high_watermark_advanced(self, replica: Replica) -> None:
        key = replica.key
        self.produce_purgatory.check_and_complete(key)
        self.fetch_purgatory.check_and_complete(key)
        self.sessions.on_high_watermark_advanced(key)

    def _on_partition_state_changed(self, replica: Replica) -> None:
        """Role, epoch or ISR changed: waiting requests re-check (they may now fail)."""
        key = replica.key
        self.produce_purgatory.check_and_complete(key)
        self.fetch_purgatory.check_and_complete(key)
        self.sessions.on_partition_changed(key)

    def _complete_waiting(self, keys: list[PartitionKey]) -> None:
        self.produce_purgatory.complete_all(keys)
        self.fetch_purgatory.complete_all(keys)
        for key in keys:
            self.sessions.on_partition_changed(key)

    # ------------------------------------------------------------ metadata

    def apply_metadata(
        self, previous: MetadataImage, image: MetadataImage, delta: MetadataDelta
    ) -> None:
        """Called on the loop with every update, in version order."""
        if delta.brokers or delta.snapshot:
            self._eligible_replicas = frozenset(
                b.broker_id for b in image.brokers.values() if not b.fenced and not b.shutting_down
            )
        now_ms = self.now_ms()
        if delta.snapshot:
            self._apply_snapshot(image, now_ms)
        else:
            for name in delta.deleted_topics:
                old = previous.topics.get(name)
                if old is not None:
                    for index in range(len(old.partitions)):
                        self._drop((old.topic_id, index))
            for topic in delta.topics:
                old_topic = previous.topics.get(topic.name)
                if old_topic is not None and old_topic.topic_id != topic.topic_id:
                    for index in range(len(old_topic.partitions)):
                        self._drop((old_topic.topic_id, index))
                for index, state in enumerate(topic.partitions):
                    self._apply_partition(topic, index, state, image, now_ms)
            for name, topic_id, index, state in delta.partitions:
                current = image.topics.get(name)
                if current is not None and current.topic_id == topic_id:
                    self._apply_partition(current, index, state, image, now_ms)
        if delta.brokers and not delta.snapshot:
            self._reroute_moved_leaders(image)
        self._stop_idle_fetchers()

    def _apply_snapshot(self, image: MetadataImage, now_ms: int) -> None:
        wanted: set[PartitionKey] = set()
        for topic in image.topics.values():
            for index, state in enumerate(topic.partitions):
                if self.broker_id in state.ar:
                    wanted.add((topic.topic_id, index))
                self._apply_partition(topic, index, state, image, now_ms)
        for key in [k for k in self._replicas if k not in wanted]:
            self._drop(key)
        self._reroute_moved_leaders(image)
        if not self._first_image_applied:
            self._first_image_applied = True
            # Logs on disk for topics deleted while this broker was down.
            for topic_id, index in self.store.list_partitions():
                if (topic_id, index) not in wanted:
                    self.log.info(
                        "partition.orphan_deleted", topic_id=topic_id.hex(), partition=index
                    )
                    self.store.open_partition(topic_id, index).delete()

    def _apply_partition(
        self,
        topic: TopicRecord,
        index: int,
        state: PartitionRecord,
        image: MetadataImage,
        now_ms: int,
    ) -> None:
        key = (topic.topic_id, index)
        if self.broker_id not in state.ar:
            if key in self._replicas:
                self._drop(key)  # reassigned away (the log goes with it)
            return
        replica = self._open(topic.name, topic.topic_id, index, topic.config)
        was_leader = replica.role == ROLE_LEADER
        transition = replica.apply_metadata(state, topic.config, now_ms=now_ms)
        if replica.role == ROLE_LEADER:
            self._led.add(key)
        else:
            self._led.discard(key)
        if replica.role == ROLE_LEADER and len(state.isr) < len(state.ar):
            self._under_replicated.add(key)
        else:
            self._under_replicated.discard(key)
        if transition.role_changed:
            self._log_transition(replica, was_leader)
            self._route_fetching(replica, image)
            for listener in self.role_listeners:
                listener(replica)
        if transition.role_changed or transition.isr_changed:
            self._on_partition_state_changed(replica)
        if transition.high_watermark_advanced:
            self.on_high_watermark_advanced(replica)

    def _log_transition(self, replica: Replica, was_leader: bool) -> None:
        log = replica.log
        if replica.role == ROLE_LEADER:
            self.log.info(
                "partition.became_leader",
                topic=replica.topic,
                partition=replica.index,
                leader_epoch=replica.leader_epoch,
                isr=list(replica.isr),
                log_end_offset=log.log_end_offset,
                high_watermark=log.high_watermark,
            )
        else:
            self.log.info(
                "partition.became_follower",
                topic=replica.topic,
                partition=replica.index,
                leader=replica.leader_id,
                leader_epoch=replica.leader_epoch,
                log_end_offset=log.log_end_offset,
                was_leader=was_leader,
            )

    def _open(self, topic: str, topic_id: bytes, index: int, config: TopicConfig) -> Replica:
        key = (topic_id, index)
        replica = self._replicas.get(key)
        if replica is None:
            replica = PartitionReplica(
                broker_id=self.broker_id,
                topic=topic,
                topic_id=topic_id,
                index=index,
                log=self.store.open_partition(topic_id, index),
                config=config,
            )
            self._replicas[key] = replica
            self._by_name[(topic, index)] = replica
        return replica

    def _route_fetching(self, replica: Replica, image: MetadataImage) -> None:
        key = replica.key
        for other in self._fetchers.values():
            other.remove(key)
        if replica.role != ROLE_FOLLOWER or replica.leader_id == NO_LEADER:
            return
        endpoint = image.endpoint(replica.leader_id)
        if endpoint is None:
            return
        fetcher: ReplicaFetcher | None = self._fetchers.get(replica.leader_id)
        if fetcher is not None and fetcher.endpoint != endpoint:
            self._retire_fetcher(replica.leader_id)
            fetcher = None
        if fetcher is None:
            fetcher = ReplicaFetcher(
                broker_id=self.broker_id,
                leader_id=replica.leader_id,
                endpoint=endpoint,
                broker_epoch=self.broker_epoch,
                wait_durable=self.wait_durable,
                now_ms=self.now_ms,
                on_fatal=self.on_fatal,
            )
            fetcher.start()
            self._fetchers[replica.leader_id] = fetcher
        fetcher.add(replica, replica.leader_epoch)

    def _reroute_moved_leaders(self, image: MetadataImage) -> None:
        """A leader broker re-registered on another address: its fetcher is replaced."""
        for leader_id, fetcher in list(self._fetchers.items()):
            endpoint = image.endpoint(leader_id)
            if endpoint is not None and endpoint != fetcher.endpoint:
                keys = fetcher.keys()
                self._retire_fetcher(leader_id)
                for key in keys:
                    replica = self._replicas.get(key)
                    if replica is not None:
                        self._route_fetching(replica, image)

    def _retire_fetcher(self, leader_id: int) -> None:
        fetcher = self._fetchers.pop(leader_id)
        asyncio.get_running_loop().create_task(fetcher.stop())

    def _stop_idle_fetchers(self) -> None:
        for leader_id, fetcher in list(self._fetchers.items()):
            if len(fetcher) == 0:
                self._retire_fetcher(leader_id)

    def _drop(self, key: PartitionKey) -> None:
        replica = self._replicas.pop(key, None)
        if replica is None:
            return
        name_key = (replica.topic, replica.index)
        # A topic deleted and re-created under the same name in one metadata change: the
        # name already maps to the new partition, which must stay reachable.
        if self._by_name.get(name_key) is replica:
            del self._by_name[name_key]
        self._led.discard(key)
        self._under_replicated.discard(key)
        for fetcher in self._fetchers.values():
            fetcher.remove(key)
        replica.stop()
        for listener in self.role_listeners:
            listener(replica)
        self._complete_waiting([key])
        replica.log.delete()
        self.log.info("partition.deleted", topic=replica.topic, partition=replica.index)

    # ------------------------------------------------------------ duties

    async def _duty_loop(self) -> None:
        """ISR expansions every EXPAND_INTERVAL_MS (only partitions short of their AR),
        shrinks every quarter of replica.lag.time.max.ms, retention and HW checkpoints
        every RETENTION_INTERVAL_MS."""
        shrink_interval_ms = max(EXPAND_INTERVAL_MS, self.replica_lag_time_max_ms // 4)
        last_shrink_ms = last_retention_ms = self.now_ms()
        while not self._stopping:
            await asyncio.sleep(EXPAND_INTERVAL_MS / 1000)
            now = self.now_ms()
            if now - last_shrink_ms >= shrink_interval_ms:
                last_shrink_ms = now
                keys = list(self._led)
            else:
                keys = list(self._under_replicated)
            for key in keys:
                replica = self._replicas.get(key)
                if replica is not None:
                    self._maybe_propose_isr(replica, now)
            if now - last_retention_ms >= RETENTION_INTERVAL_MS:
                last_retention_ms = now
                await self._retention_pass()

    def _maybe_propose_isr(self, replica: Replica, now_ms: int) -> None:
        try:
            proposal = replica.isr_proposal(
                now_ms=now_ms,
                lag_time_max_ms=self.replica_lag_time_max_ms,
                eligible_replicas=self._eligible_replicas,
                waiting_followers=self.sessions.waiting_followers(replica.key),
            )
        except Exception:
            self.log.exception("partition.duty_failed", partition=replica.name)
            return
        if proposal is None:
            return
        if len(proposal) < len(replica.isr):
            self.isr_shrinks_proposed += 1
        else:
            self.isr_expands_proposed += 1
        self.log.info(
            "partition.isr_change_proposed",
            topic=replica.topic,
            partition=replica.index,
            isr=sorted(replica.isr),
            proposed=sorted(proposal),
            partition_epoch=replica.partition_epoch,
        )
        try:
            self._proposals.put_nowait(
                (replica, proposal, replica.leader_epoch, replica.partition_epoch)
            )
        except asyncio.QueueFull:
            replica.on_isr_proposal_failed(replica.partition_epoch)

    async def _retention_pass(self) -> None:
        wall_ms = int(time.time() * 1000)
        for replica in list(self._replicas.values()):
            if self._stopping:
                return
            log = replica.log
            try:
                removed = (
                    log.enforce_retention(
                        now_ms=wall_ms,
                        retention_ms=replica.config.retention_ms,
                        retention_bytes=replica.config.retention_bytes,
                        batches_max=RETENTION_BATCHES_PER_PASS,
                    )
                    if replica.config.deletes_by_retention
                    else 0
                )
                log.expire_producers(now_ms=wall_ms, expiration_ms=PRODUCER_ID_EXPIRATION_MS)
                log.checkpoint_high_watermark()
            except Exception:
                self.log.exception("log.retention_failed", partition=replica.name)
                continue
            if removed:
                self.log.info(
                    "log.retention_applied",
                    topic=replica.topic,
                    partition=replica.index,
                    removed=removed,
                )
            # Let requests in between partitions: retention never holds the loop long.
            await asyncio.sleep(0)

    async def _proposal_loop(self) -> None:
        in_flight = asyncio.Semaphore(ISR_PROPOSALS_IN_FLIGHT_MAX)
        tasks: set[asyncio.Task[None]] = set()
        while not self._stopping:
            replica, isr, leader_epoch, partition_epoch = await self._proposals.get()
            await in_flight.acquire()

            async def send(
                replica: Replica = replica,
                isr: frozenset[int] = isr,
                leader_epoch: int = leader_epoch,
                partition_epoch: int = partition_epoch,
            ) -> None:
                try:
                    await self._send_proposal(replica, isr, leader_epoch, partition_epoch)
                except Exception:
                    # This proposal is dropped (the partition proposes again at its next
                    # duty tick); the others go on.
                    self.log.exception("partition.isr_proposal_failed", partition=replica.name)
                    replica.on_isr_proposal_failed(partition_epoch)
                finally:
                    in_flight.release()

            task = asyncio.get_running_loop().create_task(send())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _send_proposal(
        self, replica: Replica, isr: frozenset[int], leader_epoch: int, partition_epoch: int
    ) -> None:
        """Send one AlterPartition until its outcome is known. A timeout or a lost reply
        leaves the outcome unknown: the controller may have committed it, so the proposal
        stays pending (the HW keeps using the maximal ISR, KIP-497) and is resent with the
        same request id, which the controller answers from its dedupe cache. Only a definite
        rejection clears it; new metadata for the partition supersedes it."""
        request = cpb.AlterPartitionRequest(
            broker_id=self.broker_id,
            broker_epoch=self.broker_epoch(),
            topic=replica.topic,
            topic_id=replica.topic_id,
            partition=replica.index,
            leader_epoch=leader_epoch,
            partition_epoch=partition_epoch,
            new_isr=sorted(isr),
            request_id=uuid.uuid4().hex,
        )
        backoff_ms = 100
        while not self._stopping and replica.proposal_pending(isr, partition_epoch):
            try:
                # A commit takes milliseconds: an attempt that takes longer is at an
                # unreachable controller, so fail over to the next one after 1.5 s.
                response = await self.controllers.call(
                    "AlterPartition", request, timeout_ms=5_000, rpc_timeout_ms=1_500
                )
                error = wire.error_from_pb(response.error)
            except RaftmqError as e:
                error = e
            if error is None:
                committed = wire.partition_from_pb(response.partition)
                if replica.on_isr_proposal_committed(committed):
                    self.on_high_watermark_advanced(replica)
                if len(committed.isr) < len(committed.ar):
                    self._under_replicated.add(replica.key)
                else:
                    self._under_replicated.discard(replica.key)
                self._on_partition_state_changed(replica)
                self.log.info(
                    "partition.isr_changed",
                    topic=replica.topic,
                    partition=replica.index,
                    isr=list(committed.isr),
                )
                return
            if error.code not in (ErrorCode.CONTROLLER_UNAVAILABLE, ErrorCode.NOT_CONTROLLER):
                self.log.info(
                    "partition.isr_change_rejected", partition=replica.name, error=error.code.name
                )
                replica.on_isr_proposal_failed(partition_epoch)
                return
            self.log.info("partition.isr_change_unknown", partition=replica.name, error=str(error))
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(2_000, backoff_ms * 2)
