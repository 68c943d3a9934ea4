"""The wire contract: generated code is fresh and the domain ErrorCode mirrors the proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from raftmq.errors import ErrorCode
from raftmq.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_error_code_enum_mirrors_the_proto() -> None:
    proto = {v.name: v.number for v in common_pb2.DESCRIPTOR.enum_types_by_name["ErrorCode"].values}
    assert proto == {c.name: c.value for c in ErrorCode}


def test_retriable_flags_match_the_proto_comments() -> None:
    text = (ROOT / "proto/raftmq/v1/common.proto").read_text()
    for code in ErrorCode:
        [line] = [ln for ln in text.splitlines() if f" {code.name} = {code.value};" in ln]
        documented = "// retriable" in line
        assert code.retriable == documented, code


def test_generated_code_is_fresh() -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(ROOT / "proto/generate.sh"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
