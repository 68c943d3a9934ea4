#!/usr/bin/env bash
# The whole test suite on a fresh machine: creates .venv, installs raftmq with its dev
# tools, then lint (ruff), types (mypy --strict), and pytest (unit, sim, cluster, short
# chaos). Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not chaos"`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# "strict" editable mode links the card's folders into the raftmq.* namespace so mypy can
# follow them (see pyproject.toml [tool.setuptools]).
.venv/bin/python -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy -p raftmq
echo "== pytest"
exec .venv/bin/pytest "$@"
