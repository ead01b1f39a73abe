"""Fault-injection fixtures: a real deployment (a uvicorn API process and two celery worker
processes against Postgres and Redis) whose pieces the tests kill and restart, and the checks
of the end state every fault must leave behind.

Postgres and Redis must be running on 127.0.0.1: the fixtures fail loudly when they are not.
Every service a test stops is started again in a ``finally``, whatever the test's outcome.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import AuthService
from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction
from app.jobs.tables import Job
from tests.service.conftest import (
    REDIS_URL,
    REPO,
    free_port,
    scratch_database,
    service_env,
    stop_process,
    wait_for,
    worker_command,
)
from tests.support.s3_server import use_s3_if_asked

TERMINAL = ("succeeded", "failed", "cancelled")


def pytest_configure(config) -> None:
    use_s3_if_asked()


PHASE_DELAY_S = 0.1
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def postgres_up() -> bool:
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextmanager
def redis_down(seconds: float) -> Iterator[None]:
    """Redis stopped (its data gone: it runs without persistence) for ``seconds``, then back."""
    subprocess.run(["redis-cli", "shutdown", "nosave"], capture_output=True, timeout=30)
    try:
        wait_for(lambda: not redis_up(), 30, "Redis to stop")
        time.sleep(seconds)
        yield
    finally:
        if not redis_up():
            subprocess.run(REDIS_START, check=True, timeout=30)
        wait_for(redis_up, 30, "Redis to come back")


@contextmanager
def postgres_down(seconds: float) -> Iterator[None]:
    """The Postgres cluster stopped for ``seconds`` (every connection cut), then back."""
    subprocess.run([*_pg_cluster(), "stop", "-m", "fast"], check=True, timeout=60)
    try:
        time.sleep(seconds)
        yield
    finally:
        if not postgres_up():
            subprocess.run([*_pg_cluster(), "start"], check=True, timeout=60)
        wait_for(postgres_up, 60, "Postgres to come back")


@pytest.fixture(scope="session", autouse=True)
def services_are_up() -> None:
    """Fail loudly, before anything starts, when a service is missing."""
    assert postgres_up(), "Postgres is not answering on 127.0.0.1:5432"
    assert redis_up(), "Redis is not answering on 127.0.0.1:6379"


@dataclass
class Cluster:
    """The deployment under test: one API process and worker processes in their own sessions,
    so a whole worker (main process and pool child) can be killed at once, like a lost node."""

    settings: Settings
    url: str
    logs: Path
    sessions: sessionmaker[Session]
    workers: dict[int, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    storage_is_tmpfs: bool = False
    # The workers' test hooks: job ids written here are poison (SIGKILL the worker that runs
    # them); every progress report sleeps PHASE_DELAY_S, so a job can be caught mid-run.
    kill_jobs_file: Path | None = None

    def start_worker(self, slot: int) -> None:
        log = (self.logs / f"worker-{slot}.log").open("ab")
        command = worker_command(
            self.settings,
            f"fault-{slot}-{uuid.uuid4().hex[:6]}@%h",
            phase_delay_s=PHASE_DELAY_S,
            kill_jobs_file=self.kill_jobs_file,
        )
        self.workers[slot] = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def kill_worker(self, slot: int) -> None:
        """SIGKILL the worker's whole process group: nothing gets to clean up or ack."""
        process = self.workers[slot]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def slot_of(self, pool_pid: int) -> int:
        group = os.getpgid(pool_pid)
        return next(slot for slot, p in self.workers.items() if p.pid == group)

    def job_row(self, job_id: str) -> Job:
        with self.sessions() as session:
            row = session.get(Job, job_id)
            assert row is not None
            return row

    def workers_alive(self) -> bool:
        return all(p.poll() is None for p in self.workers.values())


STORAGE_TMPFS_BYTES = 64 * 1024 * 1024
STORAGE_FLOOR_BYTES = 16 * 1024  # below a job's artifacts, so a test can run out mid-write


@contextmanager
def small_tmpfs(folder: Path, size: int) -> Iterator[bool]:
    """``folder`` on a tmpfs of ``size`` bytes, so a test can fill it; False (and a plain
    folder) where mounting is not allowed (not root, or in a container without the right)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "qaas-faults", str(folder)],
            capture_output=True,
            timeout=30,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("faults")
    with (
        scratch_database("qaas_faults") as url,
        small_tmpfs(root / "storage", STORAGE_TMPFS_BYTES) as storage_is_tmpfs,
    ):
        settings = Settings(
            data_dir=root / "data",
            storage_dir=root / "storage",
            storage_min_free_bytes=STORAGE_FLOOR_BYTES,
            database_url=url,
            broker_url=REDIS_URL,
            queue=f"qaas-faults-{uuid.uuid4().hex[:8]}",
            max_model_bytes=2_000_000,
            max_dataset_bytes=2_000_000,
            job_lease_s=2.0,
            job_max_attempts=3,
            reaper_interval_s=0.5,
            requeue_after_s=5.0,
        )
        run_migrations(settings)
        engine = make_engine(settings, pooled=False)
        env = service_env(settings)
        port = free_port()
        api_log = (root / "api.log").open("wb")
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
             "--port", str(port), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=api_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deployed = Cluster(settings, f"http://127.0.0.1:{port}", root, make_sessionmaker(engine))
        deployed.env = env
        deployed.kill_jobs_file = root / "kill-jobs"
        deployed.storage_is_tmpfs = storage_is_tmpfs
        try:
            for slot in (0, 1):
                deployed.start_worker(slot)

            def ready() -> bool:
                try:
                    return httpx.get(f"{deployed.url}/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, 90, "the API server")
            yield deployed
        finally:
            for process in deployed.workers.values():
                stop_process(process)
            stop_process(api)
            engine.dispose()
            if redis_up():
                redis.Redis.from_url(REDIS_URL).delete(settings.queue)


@pytest.fixture(scope="session")
def http(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def tenant(cluster: Cluster) -> dict[str, str]:
    with transaction(cluster.sessions) as session:
        _, key = AuthService(session=session).create_key(tenant_name="faults")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def job_body(http, tenant, tiny_model, tiny_data) -> dict:
    """A W8A8 job with calibration data: what every fault test submits."""

    def put(route: str, path: Path) -> str:
        response = http.post(
            route,
            params={"filename": path.name},
            content=path.read_bytes(),
            headers={**tenant, "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    return {
        "model_id": put("/v1/models", tiny_model),
        "calibration_id": put("/v1/datasets", tiny_data[0]),
        "quantization": {"weight_bits": 8, "activation_bits": 8},
    }


def submit(http: httpx.Client, tenant: dict[str, str], body: dict, key: str | None = None) -> str:
    headers = {**tenant, **({"Idempotency-Key": key} if key else {})}
    response = http.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job_state(http: httpx.Client, tenant: dict[str, str], job_id: str) -> dict | None:
    """The job as the API reports it; None while the API says it cannot answer (503)."""
    response = http.get(f"/v1/jobs/{job_id}", headers=tenant)
    if response.status_code == 503:
        return None
    assert response.status_code == 200, response.text
    return response.json()


def wait_running(cluster: Cluster, job_ids: list[str], timeout: float = 120) -> Job:
    """The first of ``job_ids`` seen past its start (so killing its worker loses real work)."""

    def running() -> Job | None:
        for job_id in job_ids:
            row = cluster.job_row(job_id)
            if row.status == "running" and row.phase not in (None, "starting"):
                return row
        return None

    return wait_for(running, timeout, "a job to be running", interval=0.1)


def wait_terminal(
    http: httpx.Client, tenant: dict[str, str], job_ids: list[str], timeout: float = 240
) -> dict[str, dict]:
    finished: dict[str, dict] = {}

    def all_done() -> bool:
        for job_id in job_ids:
            if job_id not in finished:
                job = job_state(http, tenant, job_id)
                if job is not None and job["status"] in TERMINAL:
                    finished[job_id] = job
        return len(finished) == len(job_ids)

    wait_for(all_done, timeout, f"{len(job_ids)} jobs to finish", interval=0.5)
    return finished


def assert_end_state(cluster: Cluster, http, tenant, jobs: dict[str, dict]) -> None:
    """Each job ended once, succeeded or failed with a reason; its artifacts are whole and
    match its manifest; nothing partial or orphaned is left in storage."""
    root = cluster.settings.artifact_root
    for job_id, job in jobs.items():
        assert job["status"] in ("succeeded", "failed"), job
        published = root / "jobs" / job_id / "artifacts"
        if job["status"] == "failed":
            assert job["error"]["kind"] and job["error"]["detail"], job
            assert not published.exists(), f"failed job {job_id} left artifacts"
        else:
            assert job["error"] is None and job["artifacts"], job
            on_disk = {p.name for p in published.iterdir()}
            assert on_disk == {a["name"] for a in job["artifacts"]}, job_id
            for artifact in job["artifacts"]:
                data = (published / artifact["name"]).read_bytes()
                assert hashlib.sha256(data).hexdigest() == artifact["sha256"], artifact
        assert [p.name for p in (root / "jobs" / job_id).glob("*")] in ([], ["artifacts"])
        assert not list((root / ".staging").glob(f"job-{job_id}-*")), f"staging left: {job_id}"
    # Every published folder belongs to a succeeded job (no orphan from a lost attempt).
    for folder in (root / "jobs").glob("*"):
        row = cluster.job_row(folder.name)
        if row.status != "succeeded":
            assert not (folder / "artifacts").exists(), f"orphaned artifacts of {folder.name}"
    # Ended once: nothing changes after the end, even after several reaper passes.
    time.sleep(4 * cluster.settings.reaper_interval_s)
    for job_id, job in jobs.items():
        again = http.get(f"/v1/jobs/{job_id}", headers=tenant).json()
        for key in ("status", "attempts", "finished_at", "artifacts", "error"):
            assert again[key] == job[key], (job_id, key, job[key], again[key])


class Prober(threading.Thread):
    """Asks the API every few hundred ms while a fault is going on: it must always answer,
    promptly, in the error envelope when it cannot serve (never a hang, a reset or a 500)."""

    def __init__(self, url: str, tenant: dict[str, str], job_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.tenant, self.job_id = url, tenant, job_id
        self.stopped = threading.Event()
        self.answers: list[tuple[str, int, float]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as client:
            while not self.stopped.wait(0.3):
                for path, headers in (("/healthz", {}), (f"/v1/jobs/{self.job_id}", self.tenant)):
                    started = time.monotonic()
                    try:
                        response = client.get(path, headers=headers)
                    except httpx.HTTPError as error:
                        self.failures.append(f"{path}: {type(error).__name__}")
                        continue
                    elapsed = time.monotonic() - started
                    self.answers.append((path, response.status_code, elapsed))
                    if response.status_code not in (200, 503):
                        self.failures.append(f"{path}: {response.status_code} {response.text}")
                    elif response.status_code == 503:
                        body = response.json()
                        retry_after = response.headers.get("Retry-After")
                        if set(body) != {"error", "detail"} or not retry_after:
                            self.failures.append(f"{path}: 503 outside the envelope: {body}")

    def __enter__(self) -> Prober:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.join(timeout=30)
        assert not self.failures, self.failures
        assert len(self.answers) >= 4, "the prober barely ran"
        assert max(elapsed for _, _, elapsed in self.answers) < 10, "the API hung"
        assert all(code == 200 for path, code, _ in self.answers if path == "/healthz")
