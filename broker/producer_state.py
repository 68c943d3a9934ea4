"""Idempotent producers, per partition: who wrote what, so that a retried batch is answered
with its original offset instead of being written twice (Kafka KIP-98, KIP-360).

Pure: no I/O, no locks, no clock (times come in as data). `PartitionLog` owns one
`ProducerStates` per partition replica, updates it on every append (leader and follower
alike, so a new leader already knows every producer), persists the changed entries in
the same RocksDB write, reloads them at start and cuts them on truncation.

For each producer id the state keeps its epoch and its last `BATCHES_PER_PRODUCER` (5)
batches: sequence range and offsets. Clients keep at most 5 requests in flight per
partition, so any retry they can send is within that window. The whole window is
persisted (Kafka's snapshots keep only the last batch, which shrinks the window to one
after a restart).

Rules on the leader (`check_append`), for a batch of producer P, epoch E, sequences
[first, last]:
- P unknown here (never seen, expired, or all its batches truncated away): accepted with
  any sequence (KIP-360) — failing a healthy producer would be worse.
- E older than P's epoch: INVALID_PRODUCER_EPOCH (a zombie of a re-initialised producer).
- E newer: a re-initialised producer; its sequences restart at 0.
- Same epoch and (first, last) equal to a cached batch: a duplicate; the cached batch
  (with its offsets) is returned and nothing is written.
- Otherwise first must be P's last sequence + 1 (wrapping at 2**31 - 1), else
  OUT_OF_ORDER_SEQUENCE_NUMBER.
Batches arriving by replication are not checked, only recorded.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from raftmq.errors import ErrorCode, RaftmqError

BATCHES_PER_PRODUCER = 5
NO_PRODUCER_ID = -1
_SEQUENCE_MODULUS = 2**31  # int32 sequences wrap to 0 after 2**31 - 1
# One state entry on disk: epoch (int16), batch count (uint8), then per batch
# first_seq, last_seq (int32), base_offset, last_offset, max_timestamp_ms (int64).
_ENTRY_HEAD = struct.Struct(">hB")
_ENTRY_BATCH = struct.Struct(">iiqqq")
_ENTRY_VERSION = 1


def last_sequence(base_sequence: int, record_count: int) -> int:
    return (base_sequence + record_count - 1) % _SEQUENCE_MODULUS


def next_sequence(sequence: int) -> int:
    return (sequence + 1) % _SEQUENCE_MODULUS


@dataclass(frozen=True, slots=True)
class ProducerBatch:
    """One batch a producer wrote: its sequences and where it landed in the log."""

    first_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int
    max_timestamp_ms: int


@dataclass(slots=True)
class ProducerEntry:
    producer_id: int
    epoch: int
    # Most recent last. Invariant: 1 <= len <= BATCHES_PER_PRODUCER; offsets increase.
    batches: deque[ProducerBatch] = field(
        default_factory=lambda: deque(maxlen=BATCHES_PER_PRODUCER)
    )

    @property
    def last_timestamp_ms(self) -> int:
        return self.batches[-1].max_timestamp_ms

    def encode(self) -> bytes:
        return (
            bytes([_ENTRY_VERSION])
            + _ENTRY_HEAD.pack(self.epoch, len(self.batches))
            + b"".join(
                _ENTRY_BATCH.pack(
                    b.first_sequence,
                    b.last_sequence,
                    b.base_offset,
                    b.last_offset,
                    b.max_timestamp_ms,
                )
                for b in self.batches
            )
        )

    @classmethod
    def decode(cls, producer_id: int, data: bytes) -> ProducerEntry:
        """Raises ValueError for anything but a well-formed entry of this version."""
        if not data or data[0] != _ENTRY_VERSION:
            raise ValueError(f"producer state entry of unknown version {data[:1]!r}")
        epoch, count = _ENTRY_HEAD.unpack_from(data, 1)
        expected = 1 + _ENTRY_HEAD.size + count * _ENTRY_BATCH.size
        if not 1 <= count <= BATCHES_PER_PRODUCER or len(data) != expected:
            raise ValueError(f"producer state entry of {len(data)} bytes for {count} batches")
        entry = cls(producer_id, epoch)
        for i in range(count):
            entry.batches.append(
                ProducerBatch(
                    *_ENTRY_BATCH.unpack_from(data, 1 + _ENTRY_HEAD.size + i * _ENTRY_BATCH.size)
                )
            )
        return entry


@dataclass(frozen=True, slots=True)
class AppendInfo:
    """What the log needs to know of one batch for producer bookkeeping (its header)."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    base_offset: int
    last_offset: int
    max_timestamp_ms: int


class ProducerStates:
    """Producer id -> entry, for one partition replica."""

    def __init__(self, entries: Iterable[ProducerEntry] = ()) -> None:
        # Invariant: every entry has at least one batch.
        self._entries: dict[int, ProducerEntry] = {e.producer_id: e for e in entries}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ProducerEntry]:
        return iter(self._entries.values())

    def get(self, producer_id: int) -> ProducerEntry | None:
        return self._entries.get(producer_id)

    def check_append(
        self, producer_id: int, producer_epoch: int, base_sequence: int, record_count: int
    ) -> ProducerBatch | None:
        """Leader: validate a client batch. Returns the cached batch when it is a duplicate
        (do not write it; answer with its offsets), None when it may be appended. Raises
        RaftmqError INVALID_PRODUCER_EPOCH / OUT_OF_ORDER_SEQUENCE_NUMBER."""
        if producer_id == NO_PRODUCER_ID:
            return None
        if base_sequence < 0:
            raise RaftmqError(
                ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                f"producer {producer_id} sent base sequence {base_sequence}; an idempotent "
                "batch's sequence is >= 0",
            )
        entry = self._entries.get(producer_id)
        if entry is None:
            return None  # KIP-360: an unknown producer may start anywhere
        if producer_epoch < entry.epoch:
            raise RaftmqError(
                ErrorCode.INVALID_PRODUCER_EPOCH,
                f"producer {producer_id} epoch {producer_epoch} is older than its current "
                f"epoch {entry.epoch} on this partition",
            )
        if producer_epoch > entry.epoch:
            if base_sequence != 0:
                raise RaftmqError(
                    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                    f"producer {producer_id} began epoch {producer_epoch} at sequence "
                    f"{base_sequence}; a new epoch begins at 0",
                )
            return None
        last = last_sequence(base_sequence, record_count)
        for batch in entry.batches:
            if batch.first_sequence == base_sequence and batch.last_sequence == last:
                return batch
        expected = next_sequence(entry.batches[-1].last_sequence)
        if base_sequence != expected:
            raise RaftmqError(
                ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                f"producer {producer_id} epoch {producer_epoch} sent sequence {base_sequence}; "
                f"this partition expects {expected} next",
            )
        return None

    def updated(self, infos: Iterable[AppendInfo]) -> dict[int, ProducerEntry]:
        """The entries that appending `infos` (in order) changes, as new objects: the caller
        persists them, then `commit`s. Non-idempotent batches change nothing."""
        changed: dict[int, ProducerEntry] = {}
        for info in infos:
            if info.producer_id == NO_PRODUCER_ID:
                continue
            entry = changed.get(info.producer_id) or self._entries.get(info.producer_id)
            if entry is None or info.producer_epoch != entry.epoch:
                # A new producer, or a new epoch: the old epoch's batches can never be
                # retried.
                entry = ProducerEntry(info.producer_id, info.producer_epoch)
            elif info.producer_id not in changed:
                entry = ProducerEntry(
                    entry.producer_id, entry.epoch, deque(entry.batches, BATCHES_PER_PRODUCER)
                )
            assert not entry.batches or entry.batches[-1].last_offset < info.base_offset
            entry.batches.append(
                ProducerBatch(
                    info.base_sequence,
                    last_sequence(info.base_sequence, info.record_count),
                    info.base_offset,
                    info.last_offset,
                    info.max_timestamp_ms,
                )
            )
            changed[info.producer_id] = entry
        return changed

    def truncated(self, offset: int) -> tuple[dict[int, ProducerEntry], list[int]]:
        """The log will lose every offset >= `offset`: (entries changed, as new objects;
        producer ids to remove). Persist, then `commit`.

        A producer whose remaining window became shorter is still exact about its last
        batch below the cut, which is all the sequence check needs; one with no batch left
        is unknown here again (KIP-360 accepts its retry)."""
        changed: dict[int, ProducerEntry] = {}
        removed: list[int] = []
        for producer_id, entry in self._entries.items():
            kept = [b for b in entry.batches if b.last_offset < offset]
            if len(kept) == len(entry.batches):
                continue
            if kept:
                changed[producer_id] = ProducerEntry(
                    producer_id, entry.epoch, deque(kept, BATCHES_PER_PRODUCER)
                )
            else:
                removed.append(producer_id)
        return changed, removed

    def expired(self, *, now_ms: int, expiration_ms: int) -> list[int]:
        """Producers idle (by their last batch's timestamp) for longer than
        `expiration_ms` (Kafka's producer.id.expiration.ms): remove them with `commit`."""
        return [
            pid for pid, e in self._entries.items() if now_ms - e.last_timestamp_ms > expiration_ms
        ]

    def commit(self, changed: dict[int, ProducerEntry], removed: Iterable[int] = ()) -> None:
        """Apply what `updated` / `truncated` / `expired` computed (once persisted)."""
        self._entries.update(changed)
        for producer_id in removed:
            self._entries.pop(producer_id, None)

    def clear(self) -> list[int]:
        removed = list(self._entries)
        self._entries.clear()
        return removed
