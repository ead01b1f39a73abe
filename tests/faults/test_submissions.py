"""Clients misbehaving: the same submission sent many times at once with one Idempotency-Key
(one job, run once), and an upload dribbled in slowly (everyone else is served meanwhile)."""

from __future__ import annotations

import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
from sqlalchemy import func, select

from app.jobs.tables import Job
from tests.faults.conftest import Cluster, assert_end_state, wait_terminal


def test_concurrent_duplicate_submissions(cluster: Cluster, http, tenant, job_body):
    key = f"dup-{uuid.uuid4().hex}"

    headers = {**tenant, "Idempotency-Key": key}

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=cluster.url, timeout=30) as client:
            return client.post("/v1/jobs", json=job_body, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1, ids
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7
    with cluster.sessions() as session:
        count = session.scalar(select(func.count()).where(Job.idempotency_key == key))
    assert count == 1
    different = {**job_body, "quantization": {"weight_bits": 4, "activation_bits": 8}}
    conflict = http.post("/v1/jobs", json=different, headers={**tenant, "Idempotency-Key": key})
    assert conflict.status_code == 409 and conflict.json()["error"] == "conflict"
    jobs = wait_terminal(http, tenant, list(ids))
    assert all(job["status"] == "succeeded" and job["attempts"] == 1 for job in jobs.values())
    assert_end_state(cluster, http, tenant, jobs)


def test_slow_upload_does_not_block_others(cluster: Cluster, http, tenant, tiny_model):
    """A client sending a model a few bytes at a time holds one request, nothing more."""
    body = tiny_model.read_bytes()
    url = urlparse(cluster.url)
    token = tenant["Authorization"]
    head = (
        f"POST /v1/models?filename=slow.onnx HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=60) as slow:
        slow.sendall(head)
        piece = max(1, len(body) // 20)
        latencies = []
        for offset in range(0, len(body), piece):
            slow.sendall(body[offset : offset + piece])
            started = time.monotonic()
            assert http.get("/healthz").status_code == 200
            assert http.get("/v1/models", headers=tenant).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.15)
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 201"), reply[:300]
    assert max(latencies) < 5, latencies
