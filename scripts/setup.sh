#!/usr/bin/env bash
# Creates .venv (once) and installs qaas-service with its dev tools into it.
# torch is pinned to 2.13.0 in pyproject.toml: on the project machines that is a CPU wheel on
# local disk; any looser spec would make pip download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.qaas-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
