#!/usr/bin/env bash
# Regenerates the committed Python code for the raftmq.v1 contract.
#   bash proto/generate.sh          write proto/raftmq/v1/*_pb2*.py(i)
#   bash proto/generate.sh --check  fail if the committed code is stale (run by the tests)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here"
if [ "${1:-}" = "--check" ]; then out="$(mktemp -d)"; mkdir -p "$out/raftmq/v1"; fi
python -m grpc_tools.protoc -I "$here" --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here"/raftmq/v1/*.proto
if [ "${1:-}" = "--check" ]; then
  status=0
  # The *_pb2_grpc.py files name the grpcio-tools release that wrote them
  # (GRPC_GENERATED_VERSION, the oldest grpcio they import under): a newer patch release of
  # the tools changes that line and nothing of the contract, so it is not compared.
  for f in "$out"/raftmq/v1/*_pb2*; do
    name="$(basename "$f")"
    if ! cmp -s <(grep -v '^GRPC_GENERATED_VERSION = ' "$f") \
        <(grep -v '^GRPC_GENERATED_VERSION = ' "$here/raftmq/v1/$name"); then
      echo "stale generated file: proto/raftmq/v1/$name (run: bash proto/generate.sh)"; status=1
    fi
  done
  rm -rf "$out"
  exit $status
fi
