#!/usr/bin/env bash
# The test command (README, CI): set up .venv if needed, lint, then run the suite; with no
# arguments, the service tests that store, serve or delete files run once more with the
# object-store backend against a local S3 server that the suite starts (README "Object storage").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then
    QAAS_STORAGE_URL=s3://qaas-test/run .venv/bin/python -m pytest -q \
        tests/service/test_api.py tests/service/test_deletion.py \
        tests/service/test_external_data.py tests/service/test_storage_floor.py \
        tests/service/test_distributed.py tests/service/test_pages.py tests/service/test_reaper.py \
        tests/service/test_limited_runs.py
fi
