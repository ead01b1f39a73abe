"""What the service benches (``bench.scale``, ``bench.service_load``) share: a Postgres + Redis
deployment on loopback (a scratch database and queue of its own, one API process, N worker
processes), a tiny model, concurrent pollers, percentiles, and CPU accounting per process group
read from /proc, so a figure can say where the machine's cores went."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
import psycopg
import redis
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
TICK = os.sysconf("SC_CLK_TCK")


def tiny_model(path: Path) -> None:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a job that takes well under 1 s."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API at {url} did not become ready in {timeout} s")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# deployment
@dataclass
class Deployment:
    """A running API + workers on a scratch database; ``processes[0]`` is the API."""

    url: str
    key: str
    database: str
    database_url: str
    queue: str
    work: Path
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api(self) -> subprocess.Popen[bytes]:
        return self.processes[0]

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return self.processes[1:]


@contextmanager
def deployment(
    workers: int, *, prefix: str, env: dict[str, str] | None = None, ready_s: float = 120.0
) -> Iterator[Deployment]:
    """Start it (every worker has written its ``workers`` row before this yields); stop it and
    drop its database and queue afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f"qaas-{prefix}-"))
    database = f"qaas_{prefix}_{uuid.uuid4().hex[:10]}"
    queue = f"qaas-{prefix}-{uuid.uuid4().hex[:8]}"
    database_url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    full_env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "QAAS_DATA_DIR": str(work / "data"),
        "QAAS_DATABASE_URL": database_url,
        "QAAS_BROKER_URL": REDIS_URL,
        "QAAS_QUEUE": queue,
        **(env or {}),
    }
    logs = (work / "service.log").open("wb")
    running = Deployment("", "", database, database_url, queue, work, full_env)
    try:
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO,
                       env=full_env, check=True, capture_output=True)  # fmt: skip
        keys = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--tenant", prefix],
            cwd=REPO, env=full_env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        running.key = keys.stdout.strip().splitlines()[-1]
        port = free_port()
        running.url = f"http://127.0.0.1:{port}"
        running.processes.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port",
             str(port), "--log-level", "warning"],
            cwd=REPO, env=full_env, stdout=logs, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        for index in range(workers):
            running.processes.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                 "--concurrency=1", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                 "-Q", queue, "--hostname", f"{prefix}{index}-{uuid.uuid4().hex[:4]}@%h"],
                cwd=REPO, env=full_env, stdout=logs, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        wait_ready(running.url, ready_s)
        deadline = time.monotonic() + ready_s
        while True:
            with psycopg.connect(database_url) as conn:
                row = conn.execute("SELECT count(*) FROM workers").fetchone()
            if row is not None and row[0] >= workers:
                break
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"only {row and row[0]} of {workers} workers started; see {logs.name}"
                )
            time.sleep(0.5)
        yield running
    finally:
        for process in running.processes:
            process.terminate()
        for process in running.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()
        redis.Redis.from_url(REDIS_URL).delete(queue, f"{queue}.gpu")
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# pollers
@dataclass
class Pollers:
    """``count`` threads, each GETting a random job of ``ids`` then pausing ``pause`` s."""

    url: str
    key: str
    ids: list[str]
    count: int
    pause: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.count)]

    def __enter__(self) -> Pollers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join()

    def _loop(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, timeout=60, headers=headers) as http:
            while not self.done.is_set():
                started = time.perf_counter()
                problem = None
                try:
                    response = http.get(f"/v1/jobs/{random.choice(self.ids)}")
                    if response.status_code != 200:
                        problem = f"HTTP {response.status_code}"
                except httpx.HTTPError as error:
                    problem = type(error).__name__
                elapsed = time.perf_counter() - started
                with self.lock:
                    self.latencies.append(elapsed)
                    if problem:
                        self.errors.append(problem)
                self.done.wait(self.pause)


# CPU accounting
def _stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds of it and its reaped children, threads) from /proc/pid/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17, threads 20
    ticks = sum(int(value) for value in fields[11:15])
    return int(fields[1]), ticks / TICK, int(fields[17])


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents.setdefault(stat[0], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK, sum(values[:8]) / TICK


def _pids_named(name: str, *, cmdline: bool = False) -> list[int]:
    """Processes whose command name is ``name`` (or whose command line holds it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if cmdline:
                    match = name.encode() in (entry / "cmdline").read_bytes()
                else:
                    match = (entry / "comm").read_text().strip() == name
            except OSError:
                continue
            if match:
                found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds spent between ``start()`` and ``stop()`` by: the API process, the workers
    (pool processes, forkserver and job children), this database's Postgres backends, Redis
    (the whole server: other users count), a moto S3 server, this bench process (pollers,
    submissions), and the rest of the machine. A process tree's figure is utime + stime +
    cutime + cstime summed over its live processes, so a child reaped by a live parent is
    counted once; Postgres backends are sampled every ``every`` s (one that ends between
    samples loses its last interval). Also the most threads seen in a job's child process."""

    def __init__(self, deployment: Deployment, every: float = 0.5) -> None:
        self.deployment = deployment
        self.every = every
        self.backends: dict[int, list[float]] = {}  # pid -> [first seen, last seen]
        self.job_threads = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.start_values: dict[str, float] = {}
        self.started = False
        self.result: dict[str, float] = {}
        self.admin = psycopg.connect(PG_ADMIN, autocommit=True)  # one, not one per sample

    def _groups(self) -> dict[str, float]:
        def tree_cpu(root: int) -> float:
            total = 0.0
            for pid in _tree(root):
                stat = _stat(pid)
                if stat is not None:
                    total += stat[1]
            return total

        def cpu_of(pids: list[int]) -> float:
            return sum((_stat(pid) or (0, 0.0, 0))[1] for pid in pids)

        own = os.times()
        busy, total = _machine_busy()
        return {
            "api": tree_cpu(self.deployment.api.pid),
            "workers": sum(tree_cpu(p.pid) for p in self.deployment.workers),
            "redis": cpu_of(_pids_named("redis-server")),
            "store": cpu_of(_pids_named("moto.server", cmdline=True)),
            "bench": own.user + own.system,
            "machine": busy,
            "machine_total": total,
        }

    def _backend_pids(self) -> list[int]:
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s",
            (self.deployment.database,),
        ).fetchall()
        return [int(row[0]) for row in rows]

    def _sample_once(self) -> None:
        for pid in self._backend_pids():
            stat = _stat(pid)
            if stat is None:
                continue
            # one that connected since start() counts from its birth
            seen = self.backends.setdefault(pid, [0.0 if self.started else stat[1], stat[1]])
            seen[1] = stat[1]
        for worker in self.deployment.workers:
            for pid in _tree(worker.pid):
                stat = _stat(pid)
                try:
                    parent = Path(f"/proc/{stat[0]}/cmdline").read_bytes() if stat else b""
                except OSError:
                    continue
                if stat is not None and b"forkserver" in parent:  # a job's child
                    self.job_threads = max(self.job_threads, stat[2])

    def _sample(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self._sample_once()
            except Exception:  # noqa: BLE001 - a missed sample is not a failed run
                continue

    def start(self) -> None:
        self._sample_once()
        # Backends alive now count from now on: their CPU so far is not this interval's.
        self.start_values = self._groups()
        self.started = True
        self.thread.start()

    def stop(self, jobs_s: float = 0.0) -> dict[str, float]:
        """``jobs_s``: the CPU the jobs' own processes reported (the rows' ``cpu_seconds``):
        no process counter sees it, as the forkserver that forks them ignores SIGCHLD."""
        self.stopped.set()
        self.thread.join()
        self._sample_once()
        self.admin.close()
        end = self._groups()
        delta = {key: end[key] - self.start_values[key] for key in end}
        postgres = sum(last - first for first, last in self.backends.values())
        wall = delta.pop("machine_total") / (os.cpu_count() or 1)
        result = {
            "api": delta["api"],
            "workers": delta["workers"],
            "postgres": postgres,
            "redis": delta["redis"],
            "store": delta["store"],
            "bench": delta["bench"],
            "jobs": jobs_s,
        }
        result["other"] = max(0.0, delta["machine"] - sum(result.values()))
        result["idle"] = max(0.0, wall * (os.cpu_count() or 1) - delta["machine"])
        self.result = {key: round(value, 2) for key, value in result.items()}
        return self.result
