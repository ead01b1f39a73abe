"""Service fixtures: a Postgres database per test run built by Alembic, the real Redis, an API
app, tenants with keys, and helpers to start real worker and server processes.

Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) must be running: tests that need them
fail, loudly, when they are not.

Storage: the folder backend, or with ``QAAS_STORAGE_URL=s3://bucket/prefix`` an object store;
with no ``AWS_ENDPOINT_URL`` set, a local S3 server (moto) started for the run
(``tests.support.s3_server``). ``scripts/test.sh`` runs this suite both ways.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from app.auth.service import AuthService
from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction
from app.main import create_app
from app.serve import worker_argv
from tests.support.s3_server import use_s3_if_asked

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config) -> None:
    use_s3_if_asked()


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A uniquely named Postgres database, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with scratch_database("qaas_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    client.ping()
    yield client
    client.close()


def service_env(settings: Settings) -> dict[str, str]:
    """The environment a worker or server subprocess needs to share ``settings``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for key, value in settings.model_dump(exclude_none=True).items():
        env[f"QAAS_{key.upper()}"] = str(value)
    return env


def deployment_settings(database_url: str, tmp_path_factory) -> Settings:
    """Settings on ``database_url`` (migrated here) with a queue of their own."""
    result = Settings(
        data_dir=tmp_path_factory.mktemp("qaas-data"),
        database_url=database_url,
        broker_url=REDIS_URL,
        queue=f"qaas-test-{uuid.uuid4().hex[:8]}",
        max_model_bytes=2_000_000,
        max_dataset_bytes=2_000_000,
        job_lease_s=3.0,
        reaper_interval_s=1.0,
        requeue_after_s=600.0,
    )
    run_migrations(result)
    return result


@pytest.fixture(scope="session")
def settings(pg_url, redis_client, tmp_path_factory) -> Iterator[Settings]:
    """Postgres + Redis, as the distributed deployment; a queue of this run's own."""
    result = deployment_settings(pg_url, tmp_path_factory)
    yield result
    redis_client.delete(result.queue)


@contextmanager
def _api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@contextmanager
def _sessions(settings: Settings) -> Iterator[Any]:
    engine = make_engine(settings, pooled=False)
    yield make_sessionmaker(engine)
    engine.dispose()


def _storage(settings: Settings) -> Any:
    """The storage backend, as the API and workers open it (folder or object store)."""
    from app.core.storage_s3 import open_storage

    return open_storage(settings)


@pytest.fixture(scope="session")
def storage(settings):
    return _storage(settings)


@pytest.fixture(scope="session")
def api(settings) -> Iterator[TestClient]:
    with _api(settings) as client:
        yield client


@pytest.fixture(scope="session")
def sessions(settings):
    with _sessions(settings) as made:
        yield made


def own_deployment() -> tuple[Any, Any, Any, Any]:
    """``settings``, ``storage``, ``api`` and ``sessions`` fixtures of one module, on a database
    and a queue of its own: ``settings, storage, api, sessions = own_deployment()``.

    For a module that starts a worker: on the run's shared queue that worker first ran every
    job the modules before it had left queued (two minutes of a whole run, where the module
    alone takes 15 s), and its reaper would resend the ones queued longer than
    ``requeue_after_s``."""

    @pytest.fixture(scope="module", name="settings")
    def module_settings(redis_client, tmp_path_factory) -> Iterator[Settings]:
        with scratch_database("qaas_module") as url:
            result = deployment_settings(url, tmp_path_factory)
            yield result
            redis_client.delete(result.queue)

    @pytest.fixture(scope="module", name="storage")
    def module_storage(settings):
        return _storage(settings)

    @pytest.fixture(scope="module", name="api")
    def module_api(settings) -> Iterator[TestClient]:
        with _api(settings) as client:
            yield client

    @pytest.fixture(scope="module", name="sessions")
    def module_sessions(settings):
        with _sessions(settings) as made:
            yield made

    return module_settings, module_storage, module_api, module_sessions


@pytest.fixture
def make_tenant(sessions):
    """Each call: a new tenant and the auth headers of a fresh key for it."""

    def make(name: str | None = None) -> dict[str, str]:
        with transaction(sessions) as session:
            _, key = AuthService(session=session).create_key(
                tenant_name=name or f"tenant-{uuid.uuid4().hex[:8]}"
            )
        return {"Authorization": f"Bearer {key}"}

    return make


@pytest.fixture
def cli(settings, monkeypatch, capsys):
    """``qaas ...`` in this process against the test database: (exit status, stdout, stderr)."""
    monkeypatch.setenv("QAAS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("QAAS_DATA_DIR", str(settings.data_dir))

    def run(*argv: str) -> tuple[int, str, str]:
        from app.cli import main

        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return run


def upload(client, route: str, path: Path, headers: dict[str, str]):
    return client.post(
        route,
        params={"filename": path.name},
        content=path.read_bytes(),
        headers={**headers, "Content-Type": "application/octet-stream"},
    )


def stored_under(storage, key: str) -> list[str]:
    """The files the storage backend keeps under ``key`` (folder or object store), as paths
    relative to it. An object store's published set reads ``VERSION/NAME`` and ``MANIFEST.json``."""
    from app.core.storage_s3 import S3Storage

    if isinstance(storage, S3Storage):
        prefix = storage.full(key) + "/"
        return sorted(k.removeprefix(prefix) for k in storage._list(prefix))
    root = storage.path(key)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def published_names(storage, key: str) -> set[str]:
    """The file names of the set published under ``key`` (a job's artifacts)."""
    return {path.rpartition("/")[2] for path in stored_under(storage, key)} - {"MANIFEST.json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def is_ready(url: str) -> bool:
    """The API at ``url`` answers ``/readyz`` with 200."""
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_api(settings: Settings, log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    """The API as its own process (uvicorn), as a deployment runs it, once it is ready; the
    caller stops it (``stop_process``)."""
    port = free_port()
    sink = log_path.open("wb") if log_path is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", str(port)],
        cwd=REPO,
        env=service_env(settings),
        stdout=sink,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: is_ready(url), 60, "the API server")
    except AssertionError:
        stop_process(process)
        raise
    return process, url


def worker_command(
    settings: Settings,
    hostname: str,
    *,
    phase_delay_s: float = 0.0,
    kill_jobs_file: Path | None = None,
) -> list[str]:
    """``celery -A worker.celery_app worker``, as deployed; started through the suite's hooked
    entry point (``tests.support.hooked_worker``) when a test asks for a hook."""
    hooks: list[str] = []
    if phase_delay_s:
        hooks += ["--phase-delay", str(phase_delay_s)]
    if kill_jobs_file is not None:
        hooks += ["--kill-jobs-file", str(kill_jobs_file)]
    entry = ("tests.support.hooked_worker", *hooks, "--") if hooks else ("celery",)
    return worker_argv(settings.queue, hostname, entry)


def start_worker(
    settings: Settings, log_path: Path, *, phase_delay_s: float = 0.0
) -> subprocess.Popen:
    """A real worker process; every progress report of its jobs ``phase_delay_s`` slower."""
    log = log_path.open("wb")
    return subprocess.Popen(
        worker_command(settings, f"test-{uuid.uuid4().hex[:6]}@%h", phase_delay_s=phase_delay_s),
        cwd=REPO,
        env=service_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def poll_job(client: httpx.Client | TestClient, job_id: str, headers, timeout: float) -> dict:
    def done():
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, f"job {job_id} to finish", interval=0.3)
