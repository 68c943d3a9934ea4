"""What the controller keeps on disk through pysyncobj, in formats of our own.

- **Snapshots** (`raft.snapshot`). pysyncobj's default snapshot pickles the whole object,
  our classes included, so renaming a class would make old snapshots unreadable. We pass
  pysyncobj a `serializer`/`deserializer` pair instead: pysyncobj hands the serializer only
  its own Raft bookkeeping (the last two applied log entries and the voter set), and the
  file holds that plus our state as versioned JSON:

      b"raftmq-controller-snapshot\\n" + zlib({"schema_version": 1,
          "raft": {"last": [entry], "previous": [entry], "voters": [...]},
          "state": MetadataState.to_dict()})

  where an entry is [base64 of pysyncobj's command bytes, log index, term].
  SNAPSHOT_SCHEMA_VERSION names this layout and the state's JSON form (see
  metadata_records.RECORD_SCHEMA_VERSION for the entities inside).
  Schema versions: 1: the first versioned form.
- **The journal** (`raft.journal`) is pysyncobj's own file. Its regular entries are the
  pickled call `(method id, (entry bytes,))` (`metadata_entry`), plain data only.

`check_files` refuses, before pysyncobj opens anything, a journal or snapshot that is not
ours (an older raftmq's pickled commands and state, on-disk format 1) with a message that
says so: pysyncobj itself would log the failure and carry on with an empty state.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pysyncobj.journal import FileJournal
from raftmq.controller.metadata_entry import decode_entry
from raftmq.controller.metadata_records import MetadataFormatError, mapping, sequence
from raftmq.controller.metadata_state import MetadataState
from raftmq.node_meta import DataDirError

SNAPSHOT_SCHEMA_VERSION = 1
SNAPSHOT_MAGIC = b"raftmq-controller-snapshot\n"
JOURNAL_FILE = "raft.journal"
SNAPSHOT_FILE = "raft.snapshot"
# pysyncobj's first byte of a journal entry: 0 marks a replicated method call.
_REGULAR_ENTRY = 0
# A pickled call of ours holds ints, tuples and bytes; protocol 2 spells bytes as a call
# of _codecs.encode. Any other global means pickled objects: not ours.
_ALLOWED_GLOBALS = {("_codecs", "encode")}

# pysyncobj's log entry: (command bytes, log index, term).
RaftEntry = tuple[bytes, int, int]


def _entry_to_json(entry: Sequence[Any]) -> list[Any]:
    command, index, term = entry
    return [base64.b64encode(bytes(command)).decode(), int(index), int(term)]


def _entry_from_json(raw: Any) -> RaftEntry:
    command, index, term = sequence(raw, "raft entry")
    if not isinstance(command, str) or not isinstance(index, int) or not isinstance(term, int):
        raise MetadataFormatError(f"malformed raft entry {raw!r}")
    return base64.b64decode(command, validate=True), index, term


def encode_snapshot(raft: Sequence[Any], state: dict[str, Any]) -> bytes:
    """The snapshot file's bytes. `raft` is what pysyncobj passes its serializer: (last
    applied entry, the one before it, voters); `state` is `MetadataState.to_dict()`."""
    last, previous, voters = raft
    body = {
        "schema_version": SNAPSHOT_SCHEMA_VERSION,
        "raft": {
            "last": _entry_to_json(last),
            "previous": _entry_to_json(previous),
            "voters": sorted(str(getattr(v, "address", v)) for v in voters),
        },
        "state": state,
    }
    text = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return SNAPSHOT_MAGIC + zlib.compress(text, 6)


def decode_snapshot(data: bytes) -> tuple[tuple[RaftEntry, RaftEntry, set[str]], MetadataState]:
    """The Raft bookkeeping (as pysyncobj's deserializer must return it) and the state;
    MetadataFormatError for anything else."""
    if not data.startswith(SNAPSHOT_MAGIC):
        raise MetadataFormatError(
            "not a versioned raftmq snapshot (an older raftmq pickled its state into "
            "raft.snapshot: on-disk format 1)"
        )
    try:
        body = mapping(json.loads(zlib.decompress(data[len(SNAPSHOT_MAGIC) :])), "snapshot")
    except (zlib.error, ValueError) as e:
        raise MetadataFormatError(f"undecodable snapshot: {e}") from e
    version = body.get("schema_version")
    if version != SNAPSHOT_SCHEMA_VERSION:
        raise MetadataFormatError(
            f"snapshot of schema version {version!r}; this raftmq reads version "
            f"{SNAPSHOT_SCHEMA_VERSION} only"
        )
    raft = mapping(body.get("raft"), "raft")
    voters = {str(v) for v in sequence(raft.get("voters"), "voters")}
    bookkeeping = (_entry_from_json(raft.get("last")), _entry_from_json(raft.get("previous")))
    state = MetadataState.from_dict(mapping(body.get("state"), "state"))
    return (*bookkeeping, voters), state


class _CallUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise MetadataFormatError(f"a pickled {module}.{name}")
        return super().find_class(module, name)


def entry_blob(command: bytes) -> object:
    """The argument of a journaled replicated call (pysyncobj's regular entry), unpickled
    without constructing any object but bytes; MetadataFormatError otherwise."""
    try:
        call = _CallUnpickler(io.BytesIO(command[1:])).load()
    except MetadataFormatError:
        raise
    except Exception as e:
        raise MetadataFormatError(f"an unreadable pickle ({e!r})") from e
    if not (isinstance(call, tuple) and len(call) == 2 and isinstance(call[1], tuple)):
        raise MetadataFormatError(f"an unexpected call {call!r:.80}")
    args = call[1]
    if len(args) != 1:
        raise MetadataFormatError(f"a call with {len(args)} arguments")
    return args[0]


def journal_commands(path: Path) -> Iterable[tuple[int, bytes]]:
    """(log index, command bytes) of every regular entry of a pysyncobj journal file."""
    journal = FileJournal(str(path))
    try:
        entries = [(int(journal[i][1]), bytes(journal[i][0])) for i in range(len(journal))]
    finally:
        journal._destroy()
    return [
        (index, command) for index, command in entries if command[:1] == bytes([_REGULAR_ENTRY])
    ]


def check_files(data_dir: Path) -> None:
    """Refuse (DataDirError) a journal or snapshot this version cannot read. Called before
    pysyncobj opens them. Reads both files whole: bounded by log compaction."""
    refusal = (
        "this raftmq reads only versioned metadata records (entry schema and snapshot "
        f"schema {SNAPSHOT_SCHEMA_VERSION}); move the data dir aside and start with an empty one"
    )
    journal = data_dir / JOURNAL_FILE
    if journal.exists():
        for index, command in journal_commands(journal):
            try:
                decode_entry(entry_blob(command))
            except MetadataFormatError as e:
                raise DataDirError(
                    f"{journal} entry {index} holds {e}: written by an older raftmq (a "
                    f"journal of commands, on-disk format 1) or another program; {refusal}"
                ) from e
    snapshot = data_dir / SNAPSHOT_FILE
    if snapshot.exists():
        try:
            decode_snapshot(snapshot.read_bytes())
        except MetadataFormatError as e:
            raise DataDirError(f"{snapshot} is unreadable: {e}; {refusal}") from e
