"""Producer ids for idempotent producers (`InitProducerId`), handed out from blocks the
controller quorum commits to its Raft log (KRaft's `AllocateProducerIds`): a block is
never handed out twice, even across controller failovers, so no two producers of the
cluster ever share an id. The next block is fetched in the background once 90 % of the
current one is used, so a request rarely waits for the quorum.

Epochs: a new producer starts at epoch 0. A producer that asks with its own id and epoch
(KIP-360, after it lost track of its sequences) gets the next epoch; at the end of the
int16 epoch space it gets a new id instead.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import structlog
from raftmq import wire
from raftmq.broker.controller_link import ControllerLink
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import controller_pb2 as ctl

EPOCH_MAX = 2**15 - 1
PREFETCH_AT = 0.9
ALLOCATE_TIMEOUT_MS = 10_000

_log = structlog.get_logger("raftmq.broker")


class ProducerIdManager:
    """Runs on the broker's event loop; concurrent requests share one allocation."""

    def __init__(
        self, *, broker_id: int, broker_epoch: Callable[[], int], controllers: ControllerLink
    ) -> None:
        self.broker_id = broker_id
        self.broker_epoch = broker_epoch
        self.controllers = controllers
        # The current block: ids [next_id, end_id) are free. Invariant: next_id <= end_id.
        self._next_id = 0
        self._end_id = 0
        self._block_size = 0
        # A block fetched ahead of need (first id, count), or None.
        self._prefetched: tuple[int, int] | None = None
        # The allocation in progress (prefetch or on demand), shared by every waiter.
        self._allocating: asyncio.Task[tuple[int, int]] | None = None

    async def init_producer_id(self, producer_id: int, producer_epoch: int) -> tuple[int, int]:
        """(producer id, epoch) for a new producer (-1, -1) or an epoch bump. Raises
        RaftmqError (retriable when the quorum is unavailable)."""
        if producer_id >= 0:
            if not 0 <= producer_epoch <= EPOCH_MAX:
                raise RaftmqError(
                    ErrorCode.INVALID_REQUEST,
                    f"producer epoch {producer_epoch} is outside [0, {EPOCH_MAX}]",
                )
            if producer_epoch < EPOCH_MAX:
                return producer_id, producer_epoch + 1
            # The epoch space is used up: a new id.
        return await self._new_id(), 0

    async def _new_id(self) -> int:
        # Bound: each pass installs the prefetched block, or waits for the one allocation
        # in flight (which installs its block as the prefetched one, or raises).
        while self._next_id >= self._end_id:
            if self._prefetched is not None:
                first, count = self._prefetched
                self._prefetched = None
                self._next_id, self._end_id, self._block_size = first, first + count, count
                break
            await asyncio.shield(self._allocating or self._start_allocation())
        producer_id = self._next_id
        self._next_id += 1
        used = 1 - (self._end_id - self._next_id) / max(1, self._block_size)
        if used >= PREFETCH_AT and self._prefetched is None and self._allocating is None:
            self._start_allocation()
        return producer_id

    def _start_allocation(self) -> asyncio.Task[tuple[int, int]]:
        """One allocation at a time; its block becomes the prefetched one."""
        assert self._allocating is None and self._prefetched is None
        task = asyncio.get_running_loop().create_task(self._allocate())
        self._allocating = task
        task.add_done_callback(self._on_allocated)
        return task

    def _on_allocated(self, task: asyncio.Task[tuple[int, int]]) -> None:
        self._allocating = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            _log.info("producer_ids.allocation_failed", error=str(error))
            return
        assert self._prefetched is None
        self._prefetched = task.result()

    async def _allocate(self) -> tuple[int, int]:
        response = await self.controllers.call(
            "AllocateProducerIds",
            ctl.AllocateProducerIdsRequest(
                broker_id=self.broker_id,
                broker_epoch=self.broker_epoch(),
                request_id=uuid.uuid4().hex,
            ),
            timeout_ms=ALLOCATE_TIMEOUT_MS,
        )
        wire.raise_for(response.error)
        _log.info(
            "producer_ids.block_allocated", first=response.first_producer_id, count=response.count
        )
        return response.first_producer_id, response.count
