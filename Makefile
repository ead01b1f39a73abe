# The verbs people look for. Settings come from QAAS_* variables (see app/core/config.py);
# with none set, everything lives in ./qaas-data (SQLite, filesystem broker, local storage).
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup serve api worker migrate test lint format bench soak

setup:
	bash scripts/setup.sh

serve: setup  ## API + one worker, embedded default
	$(VENV)/bin/qaas serve --host $(HOST) --port $(PORT)

api: setup  ## the API alone (distributed mode; run `make migrate` first)
	$(VENV)/bin/uvicorn --factory app.main:create_app --http app.core.server:HeaderTimeoutProtocol \
		--host $(HOST) --port $(PORT)

worker: setup  ## one Celery worker; run as many as you like, on any machine
	$(VENV)/bin/celery -A worker.celery_app worker --concurrency=1 --loglevel=INFO

migrate: setup
	$(VENV)/bin/alembic upgrade head

test:
	bash scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup  ## service load against a Postgres + Redis deployment it starts itself
	$(PY) bench/service_load.py

soak: setup  ## clients against a deployment whose worker is killed every few seconds
	$(PY) bench/soak.py --duration 60
