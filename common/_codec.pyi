# Types of the compiled record codec (common/_codec.c); the same API as raftmq._codec_py.
from collections.abc import Sequence

from raftmq.message import Message

def encode_records(messages: Sequence[Message], now_ms: int, /) -> tuple[bytes, int, int]: ...
def decode_records(
    data: bytes | memoryview,
    start: int,
    record_count: int,
    /,
    *,
    base_offset: int,
    base_timestamp_ms: int,
    log_append_time_ms: int | None,
    topic: str | None = None,
    partition: int | None = None,
    min_offset: int = -1,
) -> list[Message]: ...
def payload_bytes(messages: list[Message], /) -> int: ...
def untrack_messages(messages: Sequence[Message], /) -> int: ...
