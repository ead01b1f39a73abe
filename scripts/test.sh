#!/usr/bin/env bash
# The test command (README, CI): set up .venv if needed, lint, then run the suite. With
# arguments: pytest with them. With none: the whole suite with the folder backend and, at the
# same time, the whole of tests/service again with the object-store backend against a local S3
# server that it starts (README "Object storage"); the service tests mostly wait on processes
# and the network, so the two passes share the cores well. tests/faults stop and restart
# Postgres and Redis, so they run last, alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
.venv/bin/python -m mypy
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
s3_log=$(mktemp)
# In the background SIGINT is ignored (no job control); the Ctrl-C test restores it for its CLI.
QAAS_STORAGE_URL=s3://qaas-test/run .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/service >"$s3_log" 2>&1 &
s3_pid=$!
trap 'kill "$s3_pid" 2>/dev/null || true; rm -f "$s3_log"' EXIT
status=0
.venv/bin/python -m pytest -q --ignore=tests/faults --durations=25 || status=1
s3_status=0
wait "$s3_pid" || s3_status=1
echo "--- tests/service with QAAS_STORAGE_URL=s3://qaas-test/run (run beside the above) ---"
cat "$s3_log"
.venv/bin/python -m pytest -q tests/faults || status=1
[ "$s3_status" -eq 0 ] && exit "$status"
exit 1
