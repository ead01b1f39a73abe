"""Scale: the Postgres + Redis deployment (one API process, 1, 2 and 4 worker processes) on a
fixed mix of small jobs, started by this script on loopback (a scratch database and a queue of
its own per round), and a paper estimate of what 100 workers need from Postgres, Redis and the
store, made from the measured figures.

    python -m bench.scale [--workers 1,2,4] [--jobs 40] [--pollers 50] [--quick]
                          [--storage-url URL]   # else the folder storage (QAAS_STORAGE_DIR)

Each round first runs one round of the mix to the end (``warm_up``: what a running deployment has
already paid once is left out), measures its workers idle, then runs two batches of ``--jobs`` jobs
(the mix: per ten, five default post-training jobs, two cle+bias_correction, two adaround of 50
iterations, one qat of one epoch), each submitted at once. The first batch gives throughput: jobs
per minute, submit-to-start latency p50/p99 (the job rows' created_at to started_at), CPU and
commits per job. The second runs under ``--pollers`` concurrent pollers and gives API p50/p99 of
GET /v1/jobs/{id} and the jobs per minute that remain (on a machine with few cores the pollers' CPU
comes out of the workers'). Also Postgres connections and commits per second (pg_stat_*), Redis
clients and commands per second (INFO; Redis-wide, so other users of the same Redis count too), and
bytes and files written to the store per job (counted in the folder store; 0 with --storage-url).
Do not run it at full size on a machine that is busy with something else: its figures are that
machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import redis

from bench._service import (
    PG_ADMIN,
    REDIS_URL,
    CpuMeter,
    Pollers,
    deployment,
    load_average,
    percentile,
    tiny_model,
)

TERMINAL = ("succeeded", "failed", "cancelled")
MIX: list[dict[str, Any]] = [
    *[{}] * 5,
    *[{"pipeline": ["cle", "bias_correction"]}] * 2,
    *[{"pipeline": ["adaround"], "adaround_iterations": 50}] * 2,
    {"pipeline": ["qat"], "qat_epochs": 1},
]
# What a worker and the API do on their own, from the settings (defaults in app/core/config.py)
IDLE_SETTINGS = {
    "QAAS_REAPER_INTERVAL_S": 15.0,
    "QAAS_WEBHOOK_POLL_INTERVAL_S": 2.0,
    "QAAS_WORKER_HEARTBEAT_S": 10.0,
    "QAAS_JOB_LEASE_S": 60.0,
}


class Stats:
    """Postgres (this round's database) and Redis counters, sampled for peaks."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.redis = redis.Redis.from_url(REDIS_URL)
        # One connection for the whole round: a new one per sample would start a Postgres
        # backend twice a second, CPU that would land in the figures as the machine's "other".
        self.admin = psycopg.connect(PG_ADMIN, autocommit=True)
        self.peak_pg = 0
        self.peak_redis = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def counters(self) -> dict[str, float]:
        row = self.admin.execute(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted "
            "FROM pg_stat_database WHERE datname = %s",
            (self.database,),
        ).fetchone()
        assert row is not None
        info = self.redis.info("stats")
        return {
            "time": time.monotonic(),
            "pg_commits": float(row[0]),
            "pg_rows_written": float(row[1]),
            "redis_commands": float(info["total_commands_processed"]),
        }

    def connections(self) -> tuple[int, int]:
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)
        ).fetchone()
        assert row is not None
        return int(row[0]), int(self.redis.info("clients")["connected_clients"])

    def _sample(self) -> None:
        while not self.stop.wait(0.5):
            try:
                pg, clients = self.connections()
            except Exception:  # noqa: BLE001 - a missed sample is not a failed run
                continue
            self.peak_pg, self.peak_redis = max(self.peak_pg, pg), max(self.peak_redis, clients)


def rates(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    seconds = after["time"] - before["time"]
    return {key: (after[key] - before[key]) / seconds for key in before if key != "time"}


def stored(folder: Path) -> tuple[int, int]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


def upload(http: httpx.Client, route: str, path: Path) -> str:
    response = http.post(route, content=path.read_bytes(), params={"filename": path.name},
                         headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    response.raise_for_status()
    return str(response.json()["id"])


def round_of(workers: int, args: argparse.Namespace, inputs: dict[str, Path]) -> dict[str, Any]:
    env = {
        "QAAS_QUOTA_ACTIVE_JOBS": "100000",
        "QAAS_SUBMISSIONS_PER_MINUTE": "100000",
        **{name: str(value) for name, value in IDLE_SETTINGS.items()},
    }
    if args.job_threads:  # else each job takes cores // job slots on the host (worker.threads)
        env["QAAS_THREADS"] = str(args.job_threads)
    if args.storage_url:
        env["QAAS_STORAGE_URL"] = args.storage_url
    load_before = load_average()
    with deployment(workers, prefix="scale", env=env) as running:
        storage = running.work / "data" / "storage"  # the default under QAAS_DATA_DIR
        stats = Stats(running.database)
        stats.thread.start()
        try:
            measured = _measure(running, stats, args, inputs, storage)
        finally:
            stats.stop.set()
            stats.thread.join()
            stats.admin.close()
    return summarize(workers, stats=stats, load=f"{load_before} -> {load_average()}", **measured)


def _measure(
    running: Any, stats: Stats, args: argparse.Namespace, inputs: dict[str, Path], storage: Path
) -> dict[str, Any]:
    """Throughput first, with only the bench's own status checks; then the same batch again
    under ``--pollers`` for the API's latency. Apart, because on a machine with few cores the
    pollers' CPU is taken from the workers: one figure would not say which one it measures."""
    headers = {"Authorization": f"Bearer {running.key}"}
    with httpx.Client(base_url=running.url, timeout=60, headers=headers) as http:
        model = upload(http, "/v1/models", inputs["model"])
        calibration = upload(http, "/v1/datasets", inputs["calibration"])
        training = upload(http, "/v1/datasets", inputs["training"])

        def body(index: int) -> dict[str, Any]:
            spec = MIX[index % len(MIX)]
            extra = {"training_id": training} if "qat" in spec.get("pipeline", []) else {}
            return {"model_id": model, "calibration_id": calibration, "quantization": spec,
                    **extra}  # fmt: skip

        warm_up(running, http, body)
        files_before = stored(storage) if not args.storage_url else (0, 0)
        idle_before = stats.counters()
        time.sleep(args.idle_seconds)
        idle = rates(idle_before, stats.counters())
        idle_pg, _ = stats.connections()

        throughput = _batch(running, stats, args, http, body, pollers=0)
        files_after = stored(storage) if not args.storage_url else (0, 0)
        polled = (
            _batch(running, stats, args, http, body, pollers=args.pollers) if args.pollers else None
        )
    return {
        **throughput,
        "polled": polled,
        "idle": idle,
        "idle_pg": idle_pg,
        "files": files_after[0] - files_before[0],
        "size": files_after[1] - files_before[1],
    }


def warm_up(running: Any, http: httpx.Client, body: Any) -> None:
    """One round of the mix, run to the end before anything is measured, so that the figures
    are a running deployment's: what it pays once is not a cost of the jobs measured (the
    API's sandboxed fit check of each dataset and model pair, 0.6-0.8 s of CPU each, cached
    afterwards; each worker's job forkserver importing the engine, 2-3 s)."""
    ids = []
    for index in range(len(MIX)):
        response = http.post("/v1/jobs", json=body(index))
        if response.status_code != 202:
            raise SystemExit(f"warm-up submission refused: {response.text}")
        ids.append(response.json()["id"])
    deadline = time.monotonic() + 300
    with psycopg.connect(running.database_url, autocommit=True) as watch:
        while time.monotonic() < deadline:
            rows = _job_rows(watch, ids)
            if len(rows) == len(ids) and all(row["status"] in TERMINAL for row in rows):
                failed = [row["id"] for row in rows if row["status"] != "succeeded"]
                if failed:
                    raise SystemExit(f"warm-up jobs did not succeed: {failed}")
                return
            time.sleep(0.5)
    raise SystemExit("the warm-up jobs did not finish in 300 s")


def _batch(
    running: Any,
    stats: Stats,
    args: argparse.Namespace,
    http: httpx.Client,
    body: Any,
    *,
    pollers: int,
) -> dict[str, Any]:
    """``--jobs`` jobs submitted at once and followed to the end, ``pollers`` clients GETting
    them meanwhile."""
    cpu = CpuMeter(running)
    busy_before = stats.counters()
    cpu.start()
    submitted = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: http.post("/v1/jobs", json=body(i)), range(args.jobs)))
    bad = [r.text for r in responses if r.status_code != 202]
    if bad:
        raise SystemExit(f"submission refused: {bad[0]}")
    ids = [r.json()["id"] for r in responses]
    seen: dict[str, dict[str, Any]] = {}
    watches = 0
    with Pollers(running.url, running.key, ids, pollers, args.poll_pause) as polled:
        # The bench follows the jobs in Postgres, not through the API, so that watching adds
        # no requests to the service it measures.
        with psycopg.connect(running.database_url, autocommit=True) as watch:
            while time.monotonic() - submitted < args.timeout:
                seen = {row["id"]: row for row in _job_rows(watch, ids)}
                watches += 1
                if all(seen.get(i, {}).get("status") in TERMINAL for i in ids):
                    break
                time.sleep(1.0)
    busy = rates(busy_before, stats.counters())
    busy["seconds"] = time.monotonic() - submitted
    return {
        "jobs": [seen[job_id] for job_id in ids if job_id in seen],
        "latencies": polled.latencies,
        "errors": polled.errors,
        "busy": busy,
        "gets": watches + len(polled.latencies),  # the bench's own transactions
        "cpu": cpu.stop(jobs_s=sum(job["cpu_seconds"] or 0.0 for job in seen.values())),
        "job_threads": cpu.job_threads,
    }


def summarize(
    workers: int,
    *,
    jobs: list[dict[str, Any]],
    latencies: list[float],
    errors: list[str],
    polled: dict[str, Any] | None,
    idle: dict[str, float],
    busy: dict[str, float],
    idle_pg: int,
    stats: Stats,
    gets: int,
    cpu: dict[str, float],
    job_threads: int,
    files: int,
    size: int,
    load: str,
) -> dict[str, Any]:
    """The throughput batch's figures (CPU, commits and store per job from it alone: no
    pollers' work mixed in), then the polled batch's: API latency and its own jobs/min."""
    succeeded, jobs_per_min, runs, waits = _pace(jobs)
    latencies = polled["latencies"] if polled else latencies
    errors = errors + (polled["errors"] if polled else [])
    done = max(len(succeeded), 1)
    ours = sum(v for k, v in cpu.items() if k not in ("other", "idle")) / done
    service = ours - cpu["bench"] / done  # the submitter and its status checks are a client
    # every GET is a (read-only) transaction too: the bench's own are not the jobs' cost
    job_commits = (busy["pg_commits"] - idle["pg_commits"]) * busy["seconds"] - gets
    unfinished = [job["status"] for job in jobs if job["status"] != "succeeded"]
    if polled:
        unfinished += [job["status"] for job in polled["jobs"] if job["status"] != "succeeded"]
    return {
        "workers": workers,
        "load": load,
        "jobs": len(jobs),
        "succeeded": len(succeeded),
        "unfinished_or_failed": unfinished,
        "jobs_per_min": jobs_per_min,
        "jobs_per_min_polled": _pace(polled["jobs"])[1] if polled else None,
        "job_run_p50_s": round(statistics.median(runs), 2) if runs else None,
        "start_p50_s": round(statistics.median(waits), 2) if waits else None,
        "start_p99_s": round(percentile(waits, 0.99), 2) if waits else None,
        "api_requests": len(latencies),
        "api_p50_ms": round(1000 * percentile(latencies, 0.5), 1) if latencies else None,
        "api_p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "api_errors": len(errors),
        "pg_connections_idle": idle_pg,
        "pg_connections_peak": stats.peak_pg,
        "pg_commits_per_s_idle": round(idle["pg_commits"], 2),
        "pg_commits_per_s_busy": round(busy["pg_commits"], 2),
        "pg_commits_per_job": round(job_commits / done, 1),
        "pg_rows_written_per_s_busy": round(busy["pg_rows_written"], 2),
        "redis_clients_peak": stats.peak_redis,
        "redis_commands_per_s_idle": round(idle["redis_commands"], 1),
        "redis_commands_per_s_busy": round(busy["redis_commands"], 1),
        "store_files_per_job": round(files / done, 1),
        "store_bytes_per_job": round(size / done),
        "cpu_s": cpu,
        "cpu_s_per_job": {key: round(value / done, 3) for key, value in cpu.items()},
        "cpu_s_per_job_polled": (
            {
                key: round(value / max(len(polled["jobs"]), 1), 3)
                for key, value in polled["cpu"].items()
            }
            if polled
            else None
        ),
        "job_threads_max": max(job_threads, polled["job_threads"] if polled else 0),
        # Jobs per minute if this deployment had every core to itself and spent the CPU per
        # job measured here: the most any number of workers can give on this machine.
        "cpu_ceiling_jobs_per_min": round(60 * (os.cpu_count() or 1) / max(ours, 1e-9), 1),
        "cpu_ceiling_without_clients": round(60 * (os.cpu_count() or 1) / max(service, 1e-9), 1),
    }


def _job_rows(connection: psycopg.Connection, ids: list[str]) -> list[dict[str, Any]]:
    """The jobs' status, times as the API would give them (ISO strings) and own CPU."""
    rows = connection.execute(
        "SELECT id, status, created_at, started_at, finished_at, cpu_seconds FROM jobs"
        " WHERE id = ANY(%s)",
        (ids,),
    ).fetchall()
    keys = ("id", "status", "created_at", "started_at", "finished_at", "cpu_seconds")
    return [
        {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in zip(keys, row, strict=True)}
        for row in rows
    ]


def _pace(
    jobs: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], float, list[float], list[float]]:
    """Succeeded jobs, jobs per minute from the first submission to the last finish, run times
    and submit-to-start waits."""
    from datetime import datetime

    def moment(value: str) -> float:
        return datetime.fromisoformat(value).timestamp()

    succeeded = [job for job in jobs if job["status"] == "succeeded"]
    waits = [moment(j["started_at"]) - moment(j["created_at"]) for j in jobs if j["started_at"]]
    runs = [moment(j["finished_at"]) - moment(j["started_at"]) for j in succeeded]
    if not succeeded:
        return succeeded, 0.0, runs, waits
    first = min(moment(job["created_at"]) for job in jobs)
    last = max(moment(job["finished_at"]) for job in jobs if job["finished_at"])
    return succeeded, round(60 * len(succeeded) / max(last - first, 1e-9), 1), runs, waits


def fit(rounds: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """Least squares ``key = a + b * workers`` over the rounds (b = per worker)."""
    xs = [float(r["workers"]) for r in rounds]
    ys = [float(r[key]) for r in rounds]
    if len(set(xs)) < 2:
        return 0.0, ys[0] / xs[0]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return mean_y - b * mean_x, b


def estimate(rounds: list[dict[str, Any]], target: int = 100) -> list[tuple[str, str, str]]:
    """(what, at ``target`` workers, how it is reckoned) from the measured rounds."""
    biggest = max(rounds, key=lambda r: r["workers"])
    # Per worker from the largest round whose workers each had a core (more workers than
    # cores share them, which a fleet of 100 machines' worth of workers does not).
    cores = os.cpu_count() or 1
    basis = max(
        (r for r in rounds if r["workers"] <= cores), key=lambda r: r["workers"], default=biggest
    )
    same = [r for r in rounds if r["workers"] == basis["workers"]]
    per_worker_jpm = statistics.fmean(r["jobs_per_min"] for r in same) / basis["workers"]
    jobs_per_s = target * per_worker_jpm / 60
    pg_a, pg_b = fit(rounds, "pg_connections_idle")
    peak_a, peak_b = fit(rounds, "pg_connections_peak")
    idle_a, idle_b = fit(rounds, "pg_commits_per_s_idle")
    busy_commits_per_job = biggest["pg_commits_per_job"]  # the bench's own GETs taken out
    busy_commits = jobs_per_s * busy_commits_per_job
    # A client waiting on each running job, polling at the SDK's settled 2 s: a GET is one
    # (read-only) transaction.
    poll_commits = target / 2.0
    redis_a, redis_b = fit(rounds, "redis_clients_peak")
    r_idle_a, r_idle_b = fit(rounds, "redis_commands_per_s_idle")
    reckoned_idle = target * (
        1 / IDLE_SETTINGS["QAAS_REAPER_INTERVAL_S"]  # a reaper pass: one transaction
        + 3 / 60  # a retention sweep a minute: three transactions
        + 1 / IDLE_SETTINGS["QAAS_WEBHOOK_POLL_INTERVAL_S"]  # the webhook dispatcher's poll
        + 1 / IDLE_SETTINGS["QAAS_WORKER_HEARTBEAT_S"]  # the workers row
    )
    files, size = biggest["store_files_per_job"], biggest["store_bytes_per_job"]
    fitted = "fit over the rounds" if len(rounds) > 1 else "one round: all of it per worker"
    return [
        ("jobs per minute (this mix, linear in workers)", f"{target * per_worker_jpm:.0f}",
         f"{per_worker_jpm:.1f} per worker at {basis['workers']} workers on {cores} cores"),
        ("Postgres connections, idle", f"{pg_a + target * pg_b:.0f}",
         f"{pg_a:.1f} + {pg_b:.2f} per worker ({fitted})"),
        ("Postgres connections, peak", f"{peak_a + target * peak_b:.0f}",
         f"{peak_a:.1f} + {peak_b:.2f} per worker ({fitted}); API pool <= 30 per process"),
        ("Postgres commits/s, idle", f"{idle_a + target * idle_b:.0f}",
         f"{idle_b:.2f} per worker measured; {reckoned_idle:.0f} reckoned from the intervals"),
        ("Postgres commits/s, busy",
         f"{idle_a + target * idle_b + busy_commits + poll_commits:.0f}",
         f"idle + {busy_commits_per_job:.1f} commits per job x {jobs_per_s:.1f} jobs/s + "
         f"{poll_commits:.0f} GETs/s (a client per running job, every 2 s)"),
        ("Redis clients", f"{redis_a + target * redis_b:.0f}",
         f"{redis_a:.1f} + {redis_b:.2f} per worker (Redis-wide peak; {fitted})"),
        ("Redis commands/s, idle", f"{r_idle_a + target * r_idle_b:.0f}",
         f"{r_idle_b:.1f} per worker (Redis-wide, includes other users)"),
        ("store writes/s", f"{jobs_per_s * files:.1f} files, {jobs_per_s * size / 1e6:.2f} MB",
         f"{files:.1f} files, {size / 1e3:.0f} kB per job (artifacts, staging included)"),
    ]  # fmt: skip


SETTINGS_AT_100 = [
    ("Postgres max_connections", "30 per API process + up to 5 per busy worker: 4 API "
     "processes + 100 workers = 620; or PgBouncer (transaction mode), pool ~100"),
    ("QAAS_REAPER_INTERVAL_S", "15 -> 60: 100 reapers still pass every 0.6 s fleet-wide"),
    ("QAAS_WEBHOOK_POLL_INTERVAL_S", "2 -> 10: the largest idle load (one query/poll/worker)"),
    ("QAAS_WORKER_HEARTBEAT_S", "10 -> 15, with QAAS_GPU_WORKER_FRESH_S >= 4 x it (60)"),
    ("QAAS_JOB_LEASE_S", "60 (a lease beat every 20 s per running job: 5 writes/s at 100)"),
    ("PROGRESS_WRITE_INTERVAL_S", "(worker/runner.py) 1 s (was 0.5, and every phase change "
     "written): a small job now commits ~4 times, a long one once a second"),
    ("Redis maxclients", "default 10000 is ample; the broker's memory is the queued job ids"),
]  # fmt: skip


def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text()
    flags = sorted({f for f in ("avx512_vnni", "avx_vnni", "avx2") if f" {f}" in text})
    return " ".join(flags) or "none of avx2/avx_vnni/avx512_vnni"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers",
        default="1,2,4",
        help="worker counts, one round each, in this order (1,2,1,2 alternates)",
    )
    parser.add_argument("--jobs", type=int, default=40, help="jobs per round (the mix repeats)")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument(
        "--poll-pause",
        type=float,
        default=0.2,
        help="seconds between a poller's GETs (the SDK's Job.wait settles at "
        "2.0; 0.2 is ten times harsher)",
    )
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a round may take")
    parser.add_argument(
        "--storage",
        choices=["folder", "s3"],
        default="folder",
        help="s3: a local moto S3 server (tests/support/s3_server.py) started for the run",
    )
    parser.add_argument(
        "--storage-url",
        default=None,
        help="QAAS_STORAGE_URL of a store of your own (AWS_* variables set)",
    )
    parser.add_argument(
        "--job-threads",
        type=int,
        default=None,
        help="QAAS_THREADS for every job (default: the worker's share of the cores, so one "
        "worker alone runs each job on all of them)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,2 workers, 10 jobs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()  # fmt: skip
    if args.quick:
        args.workers, args.jobs, args.idle_seconds = "1,2", 10, 10.0
    work = Path(tempfile.mkdtemp(prefix="qaas-scale-inputs-"))
    rng = np.random.default_rng(0)
    inputs = {"model": work / "tiny.onnx", "calibration": work / "calib.npz",
              "training": work / "train.npz"}  # fmt: skip
    tiny_model(inputs["model"])
    np.savez(inputs["calibration"], input=rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    np.savez(inputs["training"], input=rng.standard_normal((64, 1, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 10, 64))  # fmt: skip
    with ExitStack() as stack:
        if args.storage == "s3" and not args.storage_url:
            args.storage_url = start_s3(stack)
        rounds = [round_of(int(n), args, inputs) for n in args.workers.split(",")]
    columns = ["workers", "load", "succeeded", "jobs_per_min", "jobs_per_min_polled",
               "job_run_p50_s", "start_p50_s",
               "start_p99_s", "api_p50_ms", "api_p99_ms", "api_requests", "pg_connections_peak",
               "pg_commits_per_s_busy", "pg_commits_per_job", "redis_clients_peak",
               "store_files_per_job", "job_threads_max"]  # fmt: skip
    print(
        f"{args.jobs} jobs per batch, two batches per round: throughput (jobs_per_min, the "
        f"bench watches in Postgres) then {args.pollers} pollers every "
        f"{args.poll_pause} s (jobs_per_min_polled, api_*); job threads: "
        f"{args.job_threads or 'cores // job slots on the host'}; "
        f"{os.cpu_count()} CPUs ({cpu_flags()}); storage: {args.storage_url or 'folder'}"
    )
    print(table([[r[c] for c in columns] for r in rounds], columns))
    baseline = next((r for r in rounds if r["workers"] == 1), None)
    if baseline:
        for key in ("jobs_per_min", "jobs_per_min_polled"):
            if baseline[key]:
                print(f"{key} vs the first 1-worker round: " + ", ".join(
                    f"{r['workers']}w {r[key] / max(baseline[key], 1e-9):.2f}x"
                    for r in rounds))  # fmt: skip
    print()
    groups = list(rounds[0]["cpu_s"])
    print(
        "CPU seconds per job while the throughput batch ran (/proc; 'other': the rest of the "
        "machine; "
        "ceiling: jobs/min if the deployment had every core, with and without the clients)"
    )
    cpu_rows = [
        [r["workers"], *[r["cpu_s_per_job"][g] for g in groups], r["cpu_ceiling_jobs_per_min"],
         r["cpu_ceiling_without_clients"]]
        for r in rounds
    ]  # fmt: skip
    print(table(cpu_rows, ["workers", *groups, "ceiling", "ceiling_no_clients"]))
    print()
    print("Paper estimate for 100 workers (from the rounds above; settings as in IDLE_SETTINGS):")
    print(table([list(row) for row in estimate(rounds)], ["what", "100 workers", "reckoned"]))
    print()
    print("Settings that change at 100 workers:")
    print(table([list(row) for row in SETTINGS_AT_100], ["setting", "change"]))
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "estimate": estimate(rounds)}, indent=2))
    failed = [r for r in rounds if r["unfinished_or_failed"] or r["api_errors"]]
    return 1 if failed else 0


def start_s3(stack: ExitStack) -> str:
    """A moto server and a bucket; the AWS variables point this process (and so the API and
    workers it starts) at it."""
    from tests.support.s3_server import CREDENTIALS, make_bucket, s3_server

    endpoint = stack.enter_context(s3_server())
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    make_bucket(endpoint, "qaas-scale")
    return "s3://qaas-scale/bench"


if __name__ == "__main__":
    sys.exit(main())
