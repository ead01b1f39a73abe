#!/usr/bin/env bash
# The test command (README, CI): set up .venv if needed, lint, then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q "$@"
