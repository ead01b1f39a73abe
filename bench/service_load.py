"""Service load: concurrent clients upload a tiny model and data, submit jobs and poll them,
against a Postgres + Redis deployment this script starts itself on loopback (a scratch
database, a queue of its own, one API process, N worker processes), for a bounded time.

    python -m bench.service_load [--clients 8] [--duration 60] [--workers 2]

Prints jobs per second, API latency p50/p99 per route and in all, and errors (must be 0).
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
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

if __package__ in (None, ""):  # run as a script (python bench/service_load.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._service import deployment, percentile, tiny_model  # noqa: E402


class Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.jobs_done = 0
        self.job_seconds: list[float] = []
        self.lock = threading.Lock()

    def call(self, route: str, fn, *args, **kwargs) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = fn(*args, **kwargs)
        except httpx.HTTPError as error:
            with self.lock:
                self.errors.append(f"{route}: {type(error).__name__}: {error}")
            return None
        elapsed = time.perf_counter() - started
        with self.lock:
            self.latency[route].append(elapsed)
            if response.status_code >= 400:
                self.errors.append(f"{route}: HTTP {response.status_code} {response.text[:200]}")
                return None
        return response


def client_loop(url, key, model_path, data_path, deadline, recorder: Recorder) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    octet = {**headers, "Content-Type": "application/octet-stream"}
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            model = recorder.call(
                "POST /v1/models", http.post, "/v1/models", content=model_path.read_bytes(),
                headers=octet, params={"filename": "tiny.onnx"},
            )  # fmt: skip
            data = recorder.call(
                "POST /v1/datasets", http.post, "/v1/datasets", content=data_path.read_bytes(),
                headers=octet, params={"filename": "calib.npz"},
            )  # fmt: skip
            if model is None or data is None:
                continue
            body = {"model_id": model.json()["id"], "calibration_id": data.json()["id"]}
            job = recorder.call(
                "POST /v1/jobs", http.post, "/v1/jobs", json=body,
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            )  # fmt: skip
            if job is None:
                continue
            job_id = job.json()["id"]
            while True:
                time.sleep(0.25)
                polled = recorder.call("GET /v1/jobs/{id}", http.get, f"/v1/jobs/{job_id}",
                                       headers=headers)  # fmt: skip
                if polled is None:
                    break
                status = polled.json()["status"]
                if status == "succeeded":
                    with recorder.lock:
                        recorder.jobs_done += 1
                        recorder.job_seconds.append(time.perf_counter() - started)
                    break
                if status in ("failed", "cancelled"):
                    with recorder.lock:
                        recorder.errors.append(f"job {job_id} {status}: {polled.json()['error']}")
                    break
                if time.monotonic() > deadline + 120:
                    with recorder.lock:
                        recorder.errors.append(f"job {job_id} still {status} after the run")
                    break


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="qaas-load-"))
    model_path, data_path = work / "tiny.onnx", work / "calib.npz"
    tiny_model(model_path)
    rng = np.random.default_rng(0)
    np.savez(data_path, input=rng.standard_normal((16, 1, 8, 8)).astype(np.float32))

    with deployment(args.workers, prefix="load") as running:
        url, key = running.url, running.key
        # One job first, so process start-up (torch import) is not counted as throughput.
        warm = Recorder()
        client_loop(url, key, model_path, data_path, time.monotonic() + 0.1, warm)
        recorder = Recorder()
        started = time.monotonic()
        deadline = started + args.duration
        threads = [
            threading.Thread(
                target=client_loop, args=(url, key, model_path, data_path, deadline, recorder)
            )
            for _ in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    everything = [value for values in recorder.latency.values() for value in values]
    return {
        "setup": {
            "clients": args.clients,
            "workers": args.workers,
            "duration_s": args.duration,
            "cpus": os.cpu_count(),
            "deployment": "uvicorn (1 process) + celery workers (concurrency 1) on "
            "Postgres + Redis, loopback",
        },
        "jobs_succeeded": recorder.jobs_done,
        "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(recorder.jobs_done / elapsed, 3),
        "job_turnaround_s": {
            "p50": round(statistics.median(recorder.job_seconds), 3)
            if recorder.job_seconds
            else None,
            "p99": round(percentile(recorder.job_seconds, 0.99), 3)
            if recorder.job_seconds
            else None,
        },
        "api_requests": len(everything),
        "api_latency_ms": {
            "all": {
                "p50": round(1000 * percentile(everything, 0.5), 1),
                "p99": round(1000 * percentile(everything, 0.99), 1),
            },
            **{
                route: {
                    "n": len(values),
                    "p50": round(1000 * percentile(values, 0.5), 1),
                    "p99": round(1000 * percentile(values, 0.99), 1),
                }
                for route, values in sorted(recorder.latency.items())
            },
        },
        "errors": len(recorder.errors),
        "error_samples": recorder.errors[:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    summary = run(args)
    print(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 and summary["jobs_succeeded"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
