"""`raftmq bench codec`: the table and the JSON line (figures themselves are not asserted)."""

from __future__ import annotations

import json

import pytest
from raftmq.cli.bench import codec
from raftmq.cli.main import build_parser
from raftmq.compression import CODEC_NAMES
from raftmq.message import Message
from raftmq.record_batch import encode_batch


def test_event_values_are_sized_deterministic_and_compressible() -> None:
    values = codec.event_values(50, 100, seed=3)
    assert all(len(v) == 100 for v in values)
    assert values == codec.event_values(50, 100, seed=3)
    assert codec.event_values(2, 0) == [b"", b""]


@pytest.mark.parametrize("value_bytes", [0, 100, 20_000])
def test_batches_fill_16_kib_uncompressed(value_bytes: int) -> None:
    values = codec.event_values(3000, value_bytes)
    count = codec.records_per_batch(values)
    assert len(encode_batch([Message(v) for v in values[:count]])) <= 16 * 1024 or count == 1
    if count < len(values):
        assert len(encode_batch([Message(v) for v in values[: count + 1]])) > 16 * 1024


def test_codec_bench_prints_a_table_and_json_last(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(codec, "ROUND_S", 0.001)
    monkeypatch.setattr(codec, "ROUNDS", 1)
    args = build_parser().parse_args(["bench", "codec", "--json"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["scenario"] == "codec"
    assert result["value_bytes"] == 100
    assert set(result["by_compression"]) == set(CODEC_NAMES.values())
    assert (
        result["encode_records_per_s"] == result["by_compression"]["none"]["encode_records_per_s"]
    )
    assert result["decode_records_per_s"] > 0
    assert result["by_compression"]["gzip"]["batch_bytes"] < result["batch_bytes"] / 2
    assert any(line.startswith("zstd") for line in lines)


def test_codec_bench_refuses_a_bad_value_size(capsys: pytest.CaptureFixture[str]) -> None:
    from raftmq.cli.main import main

    assert main(["bench", "codec", "--message-bytes", "-1"]) == 2
    assert "--message-bytes" in capsys.readouterr().err
