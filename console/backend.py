"""The console's only way to the cluster: `Backend`, and `ClientBackend`, which carries it
out with raftmq's public client (`AsyncAdmin`, `AsyncReader`, `AsyncWriter`, `AsyncConn`)
and the nodes' Prometheus endpoints — nothing a user's application could not do.

The pages (`console/app.py`) depend on the `Backend` protocol only; tests/cluster/
test_console.py runs them over `ClientBackend` and a real cluster, in process, and
tests/browser over a console process as `raftmq up` starts it.

Everything here runs on the console's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import aiohttp
import structlog
from raftmq.client import group_protocol as gp
from raftmq.client.admin import ClusterStatus, FirstOffset, LastOffset
from raftmq.client.async_admin import AsyncAdmin
from raftmq.client.async_conn import AsyncConn
from raftmq.client.async_reader import AsyncReader
from raftmq.client.async_writer import AsyncWriter
from raftmq.client.balancers import Murmur2
from raftmq.client.group_admin import GroupDescription, check_reset_to, reset_targets
from raftmq.client.protocol import EARLIEST, LATEST
from raftmq.client.writer import RequireAll
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

from .browse import RecordSource
from .cluster_view import PartitionOffsets, QuorumView, Sample, VoterView
from .cluster_watch import ClusterWatch
from .prometheus import METRICS_TEXT_BYTES_MAX, NodeMetrics, parse_metrics

ADMIN_TIMEOUT_MS = 5_000
OFFSETS_TIMEOUT_MS = 2_000
METRICS_TIMEOUT_S = 2.0
# Partitions whose offsets one poll asks for; beyond it, the rest show "?".
OFFSETS_PARTITIONS_MAX = 20_000
# A group's description is asked at most this often, however many pages show it.
GROUP_CACHE_MS = 1_000
GROUP_CACHE_ENTRIES_MAX = 256
PRODUCE_TIMEOUT_MS = 10_000
# A browsing reader fetches at most this much per request (the broker always returns a
# first batch whole, so a bigger record still arrives).
BROWSE_FETCH_BYTES_MAX = 1 << 20
BROWSE_FETCH_WAIT_MS = 250


class TailSource(RecordSource, Protocol):
    """A live tail: a record source started at the partition's end, closed by its
    stream."""

    @property
    def lag(self) -> int: ...

    async def close(self, timeout_ms: int | None = None) -> None: ...


class Backend(Protocol):
    """What the console's pages ask of the cluster. `watch` keeps the cluster's state;
    the rest are single calls. Errors are RaftmqError (shown in an error box)."""

    watch: ClusterWatch

    async def list_groups(self) -> list[gp.GroupListing]: ...

    async def describe_group(self, group_id: str) -> GroupDescription: ...

    async def create_topic(
        self, name: str, partitions: int, replication_factor: int, configs: dict[str, str]
    ) -> None: ...

    async def delete_topic(self, name: str) -> None: ...

    async def plan_reset(
        self, group_id: str, topic: str, to: str | int | datetime
    ) -> dict[int, int]:
        """The offsets a reset would commit (partition -> offset), without committing."""
        ...

    async def reset_offsets(
        self, group_id: str, topic: str, to: str | int | datetime
    ) -> dict[int, int]: ...

    def open_reader(self, topic: str, partition: int) -> TailSource:
        """A reader of one partition (at the log start until set_offset)."""
        ...

    async def partition_offsets(self, topic: str, partition: int) -> PartitionOffsets:
        """The partition's log start offset and high watermark, asked now (the browser
        must see a record written a moment ago, which the last poll may not)."""
        ...

    async def produce(self, message: Message) -> Message:
        """Write one message (acks=all); returns it with its partition and offset."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _CachedGroup:
    at_s: float
    description: GroupDescription


class ClientBackend:
    """`Backend` over the public client. Create it inside the console's event loop."""

    def __init__(self, brokers: Sequence[str], metrics_urls: Sequence[str] = ()) -> None:
        self.brokers = list(brokers)
        self.metrics_urls = list(metrics_urls)
        self._admin = AsyncAdmin(self.brokers, timeout_ms=ADMIN_TIMEOUT_MS)
        # One connection per leader broker for the offsets poll, dropped when it fails
        # (a restarted broker is dialled afresh). Bounded by the brokers.
        self._conns: dict[str, AsyncConn] = {}
        self._http: aiohttp.ClientSession | None = None
        self._writer: AsyncWriter | None = None
        self._writer_lock = asyncio.Lock()
        self._groups: dict[str, _CachedGroup] = {}
        self.watch = ClusterWatch(self.poll)
        self._log = structlog.get_logger("raftmq.console")

    async def close(self) -> None:
        await self.watch.close()
        if self._writer is not None:
            await self._writer.close()
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()
        if self._http is not None:
            await self._http.close()
        await self._admin.close()

    # ------------------------------------------------------------ the poll

    async def poll(self) -> Sample:
        """One Sample: DescribeCluster, every partition's log start and high watermark
        (one ListOffsets pair per leader broker), and every metrics URL, the last two
        concurrently."""
        status = await self._admin.cluster_status()
        (offsets, problems), metrics = await asyncio.gather(
            self._offsets(status), self._scrape_all()
        )
        for m in metrics:
            if m.error:
                problems.append(f"metrics {m.url}: {m.error}")
        return Sample(
            taken_ms=int(time.time() * 1000),
            cluster_id=status.cluster_id,
            metadata_version=status.metadata_version,
            quorum=QuorumView(
                leader_id=status.controller_leader_id,
                term=status.controller_term,
                commit_index=status.controller_commit_index,
                last_applied=status.controller_last_applied,
                voters=tuple(
                    VoterView(
                        v.node_id,
                        v.state,
                        v.raft_address,
                        v.endpoint,
                        v.match_index,
                        v.last_contact_ms,
                    )
                    for v in status.voters
                ),
            ),
            brokers=status.brokers,
            topics=status.topics,
            offsets=offsets,
            metrics=tuple(metrics),
            problems=tuple(problems),
        )

    async def _offsets(
        self, status: ClusterStatus
    ) -> tuple[dict[tuple[str, int], PartitionOffsets], list[str]]:
        endpoints = {b.broker_id: f"{b.host}:{b.port}" for b in status.brokers if not b.fenced}
        by_leader: dict[str, list[tuple[str, int]]] = {}
        asked = 0
        skipped = 0
        for topic in status.topics:
            for index, p in enumerate(topic.partitions):
                endpoint = endpoints.get(p.leader)
                if endpoint is None:
                    continue  # offline, or its leader is fenced: nothing to ask
                if asked >= OFFSETS_PARTITIONS_MAX:
                    skipped += 1
                    continue
                asked += 1
                by_leader.setdefault(endpoint, []).append((topic.name, index))
        answers = await asyncio.gather(
            *(self._offsets_at(e, parts) for e, parts in by_leader.items())
        )
        offsets: dict[tuple[str, int], PartitionOffsets] = {}
        problems = [f"offsets of {skipped} partitions not asked (bound)"] if skipped else []
        for found, problem in answers:
            offsets.update(found)
            if problem:
                problems.append(problem)
        return offsets, problems

    async def _offsets_at(
        self, endpoint: str, partitions: list[tuple[str, int]]
    ) -> tuple[dict[tuple[str, int], PartitionOffsets], str]:
        conn = self._conns.get(endpoint)
        if conn is None:
            conn = self._conns[endpoint] = AsyncConn(endpoint)
        try:
            starts, ends = await asyncio.gather(
                conn.list_offsets(
                    [(t, i, EARLIEST) for t, i in partitions], timeout_ms=OFFSETS_TIMEOUT_MS
                ),
                conn.list_offsets(
                    [(t, i, LATEST) for t, i in partitions], timeout_ms=OFFSETS_TIMEOUT_MS
                ),
            )
        except RaftmqError as e:
            self._conns.pop(endpoint, None)
            await conn.close()
            return {}, f"offsets from {endpoint}: {e.message}"
        first = {(r.topic, r.partition): r.offset for r in starts if r.error is None}
        found = {}
        for r in ends:
            start = first.get((r.topic, r.partition))
            if r.error is None and start is not None:
                found[(r.topic, r.partition)] = PartitionOffsets(min(start, r.offset), r.offset)
        return found, ""

    async def _scrape_all(self) -> list[NodeMetrics]:
        if not self.metrics_urls:
            return []
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=METRICS_TIMEOUT_S)
            )
        return list(await asyncio.gather(*(self._scrape(self._http, u) for u in self.metrics_urls)))

    async def _scrape(self, http: aiohttp.ClientSession, url: str) -> NodeMetrics:
        try:
            async with http.get(url) as response:
                if response.status != 200:
                    return NodeMetrics(url, error=f"HTTP {response.status}")
                body = await response.content.read(METRICS_TEXT_BYTES_MAX + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return NodeMetrics(url, error=f"unreachable ({type(e).__name__})")
        if len(body) > METRICS_TEXT_BYTES_MAX:
            return NodeMetrics(url, error=f"more than {METRICS_TEXT_BYTES_MAX} bytes of metrics")
        return parse_metrics(url, body.decode("utf-8", errors="replace"))

    # ------------------------------------------------------------ groups

    async def list_groups(self) -> list[gp.GroupListing]:
        return await self._admin.list_groups()

    async def describe_group(self, group_id: str) -> GroupDescription:
        now_s = time.monotonic()
        cached = self._groups.get(group_id)
        if cached is not None and now_s - cached.at_s < GROUP_CACHE_MS / 1000:
            return cached.description
        description = await self._admin.describe_group(group_id)
        if len(self._groups) >= GROUP_CACHE_ENTRIES_MAX:
            self._groups.clear()
        self._groups[group_id] = _CachedGroup(time.monotonic(), description)
        return description

    async def plan_reset(
        self, group_id: str, topic: str, to: str | int | datetime
    ) -> dict[int, int]:
        check_reset_to(to)
        earliest = await self._admin.list_offsets(topic, FirstOffset)
        latest = await self._admin.list_offsets(topic, LastOffset)
        at_time = await self._admin.list_offsets(topic, to) if isinstance(to, datetime) else None
        return reset_targets(to, earliest, latest, at_time)

    async def reset_offsets(
        self, group_id: str, topic: str, to: str | int | datetime
    ) -> dict[int, int]:
        self._groups.pop(group_id, None)
        return await self._admin.reset_offsets(group_id, topic, to)

    # ------------------------------------------------------------ topics and messages

    async def create_topic(
        self, name: str, partitions: int, replication_factor: int, configs: dict[str, str]
    ) -> None:
        await self._admin.create_topic(
            name, partitions=partitions, replication_factor=replication_factor, configs=configs
        )
        await self.watch.poll_once()

    async def delete_topic(self, name: str) -> None:
        await self._admin.delete_topic(name)
        await self.watch.poll_once()

    async def partition_offsets(self, topic: str, partition: int) -> PartitionOffsets:
        first, last = await asyncio.gather(
            self._admin.list_offsets(topic, FirstOffset, partitions=[partition]),
            self._admin.list_offsets(topic, LastOffset, partitions=[partition]),
        )
        if partition not in first or partition not in last:
            raise RaftmqError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no leader that answers"
            )
        return PartitionOffsets(min(first[partition], last[partition]), last[partition])

    def open_reader(self, topic: str, partition: int) -> AsyncReader:
        return AsyncReader(
            self.brokers,
            topic=topic,
            partition=partition,
            max_bytes=BROWSE_FETCH_BYTES_MAX,
            max_wait_ms=BROWSE_FETCH_WAIT_MS,
            client_id="raftmq-console",
        )

    async def produce(self, message: Message) -> Message:
        async with self._writer_lock:
            if self._writer is None:
                # One writer for the console's life: one producer id, warm connections.
                # Keyed messages go where `raftmq produce` and the Java client put them.
                self._writer = AsyncWriter(
                    self.brokers,
                    balancer=Murmur2(),
                    required_acks=RequireAll,
                    linger_ms=0,
                    write_timeout_ms=PRODUCE_TIMEOUT_MS,
                )
        await self._writer.write_messages(message)
        return message
