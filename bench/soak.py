"""Soak test of the distributed deployment: N clients upload data, submit jobs and poll them for a
fixed time against Postgres + Redis with two workers, one of which is SIGKILLed (whole process
group, like a lost node) and restarted on a timer. Prints jobs completed, lost (must be 0),
duplicated (must be 0) and p50/p99 API latency; exits 1 if a job was lost or duplicated.

    .venv/bin/python bench/soak.py --clients 6 --duration 60 --kill-every 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psycopg
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.auth.service import AuthService  # noqa: E402
from app.core.config import Settings  # noqa: E402
from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled"}


def small_cnn() -> bytes:
    """Conv -> ReLU -> global pool -> Gemm, dynamic batch: a job takes a second or two."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "conv_b"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "soak",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def calibration_npz(seed: int) -> bytes:
    buffer = io.BytesIO()
    data = np.random.default_rng(seed).standard_normal((16, 1, 8, 8)).astype(np.float32)
    np.savez(buffer, input=data)
    return buffer.getvalue()


class Deployment:
    """An API process and two worker processes, each worker in its own process group."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs = settings, logs
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        for key, value in settings.model_dump(exclude_none=True).items():
            self.env[f"QAAS_{key.upper()}"] = str(value)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers: dict[int, subprocess.Popen] = {}
        self.api: subprocess.Popen | None = None

    def start(self) -> None:
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=REPO, env=self.env, stdout=(self.logs / "api.log").open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for slot in (0, 1):
            self.start_worker(slot)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the API did not become ready")

    def start_worker(self, slot: int) -> None:
        self.workers[slot] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
             "--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
             "-Q", self.settings.queue, "--hostname", f"soak-{slot}-{uuid.uuid4().hex[:6]}@%h"],
            cwd=REPO, env=self.env, stdout=(self.logs / f"worker-{slot}.log").open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def kill_and_restart(self, slot: int) -> None:
        process = self.workers[slot]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        self.start_worker(slot)

    def stop(self) -> None:
        for process in [*self.workers.values(), self.api]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers.values(), self.api]:
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


class Client(threading.Thread):
    """Upload calibration data, submit (with an Idempotency-Key, sent twice), poll to the end."""

    def __init__(self, index: int, url: str, headers: dict, model_id: str, stop_at: float):
        super().__init__(daemon=True)
        self.index, self.url, self.headers = index, url, headers
        self.model_id, self.stop_at = model_id, stop_at
        self.latencies: list[float] = []
        self.submitted: dict[str, str] = {}  # idempotency key -> job id
        self.replay_mismatches = 0
        self.errors: Counter[str] = Counter()

    def timed(self, client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
        started = time.perf_counter()
        response = client.request(method, path, **kwargs)
        self.latencies.append(time.perf_counter() - started)
        if response.status_code >= 500:
            self.errors[f"{method} {path.split('/')[2]} {response.status_code}"] += 1
        return response

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as client:
            round_ = 0
            while time.monotonic() < self.stop_at:
                round_ += 1
                try:
                    self.one_job(client, round_)
                except httpx.HTTPError as error:
                    self.errors[type(error).__name__] += 1

    def one_job(self, client: httpx.Client, round_: int) -> None:
        data = self.timed(
            client, "POST", "/v1/datasets", params={"filename": "calibration.npz"},
            content=calibration_npz(self.index * 100_000 + round_),
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        if data.status_code != 201:
            self.errors[f"dataset {data.status_code}"] += 1
            return
        key = f"soak-{self.index}-{round_}-{uuid.uuid4().hex[:8]}"
        body = {"model_id": self.model_id, "calibration_id": data.json()["id"]}
        job_id = None
        for _ in range(2):  # the second send is a client retry: it must replay, not duplicate
            response = self.timed(
                client, "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}
            )
            if response.status_code != 202:
                self.errors[f"submit {response.status_code}"] += 1
                return
            if job_id is not None and response.json()["id"] != job_id:
                self.replay_mismatches += 1
            job_id = response.json()["id"]
        self.submitted[key] = job_id
        while True:
            response = self.timed(client, "GET", f"/v1/jobs/{job_id}")
            if response.status_code == 200 and response.json()["status"] in TERMINAL:
                return
            if time.monotonic() > self.stop_at + 300:
                return
            time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


def soak(clients: int, duration: float, kill_every: float, pg_admin: str, redis_url: str) -> dict:
    name = f"qaas_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin.rsplit("/", 1)[0]
    workdir = Path(tempfile.mkdtemp(prefix="qaas-soak-"))
    settings = Settings(
        data_dir=workdir / "data", database_url=f"{base}/{name}", broker_url=redis_url,
        queue=f"qaas-soak-{uuid.uuid4().hex[:8]}", job_lease_s=2.0, reaper_interval_s=0.5,
        requeue_after_s=10.0, quota_active_jobs=1000, submissions_per_minute=100_000,
    )  # fmt: skip
    run_migrations(settings)
    engine = make_engine(settings, pooled=False)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        _, key = AuthService(session=session).create_key(tenant_name="soak")
    headers = {"Authorization": f"Bearer {key}"}
    deployment = Deployment(settings, workdir)
    kills = 0
    try:
        deployment.start()
        model = httpx.post(
            f"{deployment.url}/v1/models", params={"filename": "soak.onnx"}, content=small_cnn(),
            headers={**headers, "Content-Type": "application/octet-stream"}, timeout=120,
        )  # fmt: skip
        model.raise_for_status()
        stop_at = time.monotonic() + duration
        threads = [
            Client(i, deployment.url, headers, model.json()["id"], stop_at) for i in range(clients)
        ]
        for thread in threads:
            thread.start()
        next_kill = time.monotonic() + kill_every
        while time.monotonic() < stop_at:
            time.sleep(0.2)
            if time.monotonic() >= next_kill:
                deployment.kill_and_restart(0)
                kills += 1
                next_kill += kill_every
        for thread in threads:
            thread.join(timeout=400)
        return report(threads, sessions, duration, kills)
    finally:
        deployment.stop()
        engine.dispose()
        with psycopg.connect(pg_admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(threads: list[Client], sessions, duration: float, kills: int) -> dict:
    from sqlalchemy import select

    from app.jobs.tables import Job

    submitted = {k: v for t in threads for k, v in t.submitted.items()}
    with sessions() as session:
        rows = session.execute(select(Job.id, Job.idempotency_key, Job.status, Job.attempts,
                                      Job.error_kind)).all()  # fmt: skip
    by_key = Counter(row.idempotency_key for row in rows)
    status = {row.id: row for row in rows}
    lost = [job for job in submitted.values() if status.get(job) is None
            or status[job].status not in TERMINAL]  # fmt: skip
    latencies = [latency for t in threads for latency in t.latencies]
    errors = sum((t.errors for t in threads), Counter())
    return {
        "duration_s": duration,
        "clients": len(threads),
        "worker_kills": kills,
        "jobs_submitted": len(submitted),
        "jobs_succeeded": sum(status[j].status == "succeeded" for j in submitted.values()),
        "jobs_failed": dict(
            Counter(
                status[j].error_kind for j in submitted.values() if status[j].status == "failed"
            )
        ),  # fmt: skip
        "jobs_retried": sum(status[j].attempts > 1 for j in submitted.values()),
        "lost": len(lost),
        "duplicated": sum(n - 1 for n in by_key.values() if n > 1)
        + sum(t.replay_mismatches for t in threads),
        "requests": len(latencies),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "client_errors": dict(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of submitting")
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    result = soak(args.clients, args.duration, args.kill_every, args.postgres, args.redis)
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["lost"] or result["duplicated"] else 0)


if __name__ == "__main__":
    main()
