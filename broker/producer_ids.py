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

import threading
import uuid
from collections.abc import Callable

import structlog
from raftmq import wire
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import controller_pb2 as ctl

EPOCH_MAX = 2**15 - 1
PREFETCH_AT = 0.9
ALLOCATE_TIMEOUT_MS = 10_000

_log = structlog.get_logger("raftmq.broker")


class ProducerIdManager:
    """Thread-safe: gRPC handler threads call `init_producer_id`."""

    def __init__(
        self, *, broker_id: int, broker_epoch: Callable[[], int], controllers: EndpointPool
    ) -> None:
        self.broker_id = broker_id
        self.broker_epoch = broker_epoch
        self.controllers = controllers
        self._lock = threading.Lock()
        # The current block: ids [next_id, end_id) are free. Invariant: next_id <= end_id.
        self._next_id = 0
        self._end_id = 0
        self._block_size = 0
        # A block fetched ahead of need (first id, count), or None.
        self._prefetched: tuple[int, int] | None = None
        self._prefetching = False

    def init_producer_id(self, producer_id: int, producer_epoch: int) -> tuple[int, int]:
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
        return self._new_id(), 0

    def _new_id(self) -> int:
        with self._lock:
            if self._next_id >= self._end_id:
                if self._prefetched is not None:
                    first, count = self._prefetched
                    self._prefetched = None
                else:
                    first, count = self._allocate()
                self._next_id, self._end_id, self._block_size = first, first + count, count
            producer_id = self._next_id
            self._next_id += 1
            used = 1 - (self._end_id - self._next_id) / max(1, self._block_size)
            if used >= PREFETCH_AT and self._prefetched is None and not self._prefetching:
                self._prefetching = True
                threading.Thread(
                    target=self._prefetch, name="producer-id-prefetch", daemon=True
                ).start()
        return producer_id

    def _prefetch(self) -> None:
        try:
            block = self._allocate()
        except RaftmqError as e:
            _log.info("producer_ids.prefetch_failed", error=str(e))
            block = None
        with self._lock:
            self._prefetching = False
            if block is not None:
                self._prefetched = block

    def _allocate(self) -> tuple[int, int]:
        response = call_with_failover(
            self.controllers,
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
