"""Request hygiene against a real uvicorn process (Postgres settings, no worker, so jobs stay
queued): JSON bodies capped while read and only after the key is checked, the active-jobs quota
under concurrent submissions, caps on the job spec's lists, and slow clients timed out."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.auth.service import AuthService
from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction
from app.jobs.repository import JobRepository
from app.jobs.tables import Job
from tests.service.conftest import (
    free_port,
    service_env,
    stop_process,
    upload,
    wait_for,
)

MiB = 1024 * 1024
QUOTA = 5
BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 2.0


class Server:
    def __init__(self, url: str, process: subprocess.Popen, settings) -> None:
        self.url, self.process, self.settings = url, process, settings
        self.host, self.port = "127.0.0.1", int(url.rsplit(":", 1)[1])

    def status(self, field: str) -> int:
        """A /proc/<pid>/status memory figure in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


@contextmanager
def running_api(settings: Settings, log_dir: Path) -> Iterator[Server]:
    """The API as a deployment runs it: uvicorn with the header-timeout protocol."""
    port = free_port()
    log = (log_dir / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
         "--http", "app.core.server:HeaderTimeoutProtocol", "--port", str(port)],
        cwd=log_dir, env=service_env(settings), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 60, "the API server")
        yield Server(url, process, settings)
    finally:
        stop_process(process)


LIMITS = {
    "quota_active_jobs": QUOTA,
    "submissions_per_minute": 1000,
    "body_read_timeout_s": BODY_TIMEOUT_S,
    "header_read_timeout_s": HEADER_TIMEOUT_S,
}


@pytest.fixture(scope="module")
def server(settings, tmp_path_factory) -> Iterator[Server]:
    """Postgres settings; a queue of its own that no worker reads, so jobs stay queued."""
    queue = f"qaas-hygiene-{uuid.uuid4().hex[:8]}"
    hygiene = settings.model_copy(update={**LIMITS, "queue": queue})
    with running_api(hygiene, tmp_path_factory.mktemp("hygiene-api")) as api:
        yield api


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Iterator[tuple[Server, dict[str, str]]]:
    """The embedded default (SQLite, filesystem broker, no worker) and a key for it."""
    data = tmp_path_factory.mktemp("hygiene-embedded")
    config = Settings(data_dir=data, **LIMITS)
    run_migrations(config)
    engine = make_engine(config, pooled=False)
    with transaction(make_sessionmaker(engine)) as session:
        _, key = AuthService(session=session).create_key(tenant_name="embedded")
    engine.dispose()
    with running_api(config, data) as api:
        yield api, {"Authorization": f"Bearer {key}"}


@pytest.fixture
def tenant(make_tenant) -> dict[str, str]:
    return make_tenant()


@pytest.fixture
def model_id(server, tenant, tiny_model) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = upload(client, "/v1/models", tiny_model, tenant)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def envelope(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    return body["detail"]


class Chunks:
    """A JSON-looking body of ``total`` bytes made as it is sent, counting what was taken."""

    def __init__(self, total: int, chunk: int = MiB) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        block = b'{"model_id": "' + b"x" * (self.chunk - 14)
        filler = b"x" * self.chunk
        while self.sent < self.total:
            piece = block if self.sent == 0 else filler
            self.sent += len(piece)
            yield piece


def post_big(server: Server, headers: dict[str, str], body: Chunks, declared: bool):
    """Send ``body`` to POST /v1/jobs, chunked or with its Content-Length, and return the
    response with the server's RSS before and its peak during the request."""
    headers = {**headers, "Content-Type": "application/json"}
    if declared:
        headers["Content-Length"] = str(body.total)
    peaks: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks.append(server.status("VmRSS"))
            time.sleep(0.01)

    before = server.status("VmRSS")
    exact = server.reset_peak()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            response = client.post("/v1/jobs", content=iter(body), headers=headers)
    finally:
        done.set()
        sampler.join()
    peak = max([*peaks, server.status("VmHWM") if exact else 0])
    return response, before, peak


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_200_mb_json_body_is_413_and_never_held(server, tenant, declared):
    body = Chunks(200 * MiB)
    response, before, peak = post_big(server, tenant, body, declared)
    assert "over the limit of 1048576 bytes" in envelope(response, 413, "payload_too_large")
    assert peak - before < 50 * MiB, f"RSS grew {(peak - before) / MiB:.0f} MiB"
    if declared:  # refused on the header alone: the body was never read
        assert body.sent < 64 * MiB, body.sent


def test_big_body_without_a_key_is_401_unread(server):
    body = Chunks(200 * MiB)
    response, before, peak = post_big(server, {}, body, declared=False)
    assert "missing API key" in envelope(response, 401, "unauthorized")
    assert body.sent < 64 * MiB, f"{body.sent / MiB:.0f} MiB sent before the 401"
    assert peak - before < 50 * MiB
    wrong = Chunks(200 * MiB)
    response, _, _ = post_big(server, {"Authorization": "Bearer nope"}, wrong, declared=True)
    assert "invalid API key" in envelope(response, 401, "unauthorized")
    assert wrong.sent < 64 * MiB


def test_just_over_the_cap_is_413_and_the_server_goes_on(server, tenant, model_id):
    padded = {"model_id": model_id, "quantization": {"activation_bits": None}}
    padded["energy_profile"] = {"name": "x" * MiB}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        envelope(client.post("/v1/jobs", json=padded, headers=tenant), 413, "payload_too_large")
        ok = {"model_id": model_id, "quantization": {"activation_bits": None}}
        response = client.post("/v1/jobs", json=ok, headers=tenant)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant).status_code == 200


def test_uploads_keep_their_own_cap(server, tenant, tmp_path):
    """A dataset above the JSON cap still uploads (QAAS_MAX_DATASET_BYTES applies)."""
    path = tmp_path / "big.npz"
    np.savez(path, input=np.zeros((6000, 1, 8, 8), np.float32))  # ~1.5 MB
    assert MiB < path.stat().st_size < server.settings.max_dataset_bytes
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = upload(client, "/v1/datasets", path, tenant)
    assert response.status_code == 201, response.text


def test_login_form_is_capped_too(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(
            "/ui/login",
            content=b"key=" + b"k" * (2 * MiB),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    envelope(response, 413, "payload_too_large")


def submit_at_once(server: Server, headers: dict[str, str], body: dict, count: int) -> list[int]:
    """``count`` submissions released together, each from its own thread and connection."""
    start = threading.Barrier(count)

    def submit(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            start.wait()
            return client.post("/v1/jobs", json=body, headers=headers).status_code

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(submit, range(count)))


def test_concurrent_submissions_never_pass_the_quota(server, tenant, model_id, sessions):
    body = {"model_id": model_id, "quantization": {"activation_bits": None}}
    statuses = submit_at_once(server, tenant, body, 80)
    assert statuses.count(202) == QUOTA, sorted(statuses)
    assert statuses.count(429) == 80 - QUOTA, sorted(statuses)
    tenant_id = httpx.get(f"{server.url}/v1/me", headers=tenant, timeout=10).json()["id"]
    with sessions() as session:
        assert session.query(Job).filter(Job.tenant_id == tenant_id).count() == QUOTA
        assert JobRepository(session).count_active(tenant_id) == QUOTA


def test_concurrent_submissions_never_pass_the_quota_on_sqlite(embedded, tiny_model):
    server, headers = embedded
    with httpx.Client(base_url=server.url, timeout=30) as client:
        model = upload(client, "/v1/models", tiny_model, headers)
    assert model.status_code == 201, model.text
    body = {"model_id": model.json()["id"], "quantization": {"activation_bits": None}}
    statuses = submit_at_once(server, headers, body, 80)
    assert statuses.count(202) == QUOTA, sorted(statuses)
    assert statuses.count(429) == 80 - QUOTA, sorted(statuses)
    listed = httpx.get(f"{server.url}/v1/jobs", headers=headers, timeout=10).json()
    assert len(listed) == QUOTA


SPEC_CAPS = [
    ({"pipeline": ["cle"] * 17}, "quantization.pipeline", "at most 16"),
    ({"pipeline": ["cle", "bias_absorption", "cle"]}, "quantization", "cle given more than once"),
    ({"pipeline": ["bias_correction", "bias_correction"]}, "quantization", "more than once"),
    ({"keep_float_nodes": [f"n{i}" for i in range(1001)]}, "keep_float_nodes", "at most 1000"),
    ({"keep_float_nodes": ["n" * 257]}, "keep_float_nodes.0", "at most 256 characters"),
    ({"keep_float_nodes": [""]}, "keep_float_nodes.0", "at least 1 character"),
    ({"keep_float_ops": ["Conv"] * 257}, "keep_float_ops", "at most 256"),
    ({"pipeline": ["s" * 65]}, "quantization.pipeline.0", "at most 64 characters"),
    ({"seed": -1}, "quantization.seed", "greater than or equal to 0"),
]


@pytest.mark.parametrize("spec, field, cap", SPEC_CAPS, ids=lambda v: str(v)[:30])
def test_spec_caps_are_422(server, tenant, model_id, spec, field, cap):
    body = {"model_id": model_id, "quantization": {"activation_bits": None, **spec}}
    response = httpx.post(f"{server.url}/v1/jobs", json=body, headers=tenant, timeout=30)
    detail = envelope(response, 422, "invalid_request")
    assert field in detail and cap in detail, detail
    assert len(detail) < 2000


@pytest.mark.parametrize(
    "profile, needle",
    [
        ({"notes": ["n"] * 17}, "at most 16 notes"),
        ({"notes": ["n" * 501]}, "of at most 500 characters"),
        ({"name": "n" * 201}, "name is longer than 200"),
        ({"name": ["a", "b"]}, "name must be a string"),
        ({"access_pj": {f"l{i}": 1.0 for i in range(33)}}, "more than 32 levels"),
        ({f"k{i}": 1 for i in range(17)}, "energy_profile: Dictionary should have at most 16"),
    ],
)
def test_energy_profile_caps_are_422(server, tenant, model_id, profile, needle):
    body = {"model_id": model_id, "quantization": {"activation_bits": None}}
    body["energy_profile"] = profile
    response = httpx.post(f"{server.url}/v1/jobs", json=body, headers=tenant, timeout=30)
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"]


def read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    received = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return received
        received += data


def test_slow_body_is_408_within_the_timeout(server, tenant):
    with socket.create_connection((server.host, server.port)) as sock:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {tenant['Authorization']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"model_id": ')
        started = time.monotonic()
        reply = read_until_closed(sock, BODY_TIMEOUT_S + 10)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"request_timeout"' in reply and b"connection: close" in reply.lower()
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 5, elapsed


def test_trickled_body_is_408_at_the_whole_body_deadline(server, tenant):
    """A byte every half second never pauses long enough for the idle timeout; a JSON body
    must still arrive whole within the timeout."""
    with socket.create_connection((server.host, server.port)) as sock:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {tenant['Authorization']}\r\n"
            "Content-Length: 1000\r\n\r\n"
        )
        sock.sendall(head.encode())
        started = time.monotonic()
        sock.settimeout(0.5)
        reply = b""
        while time.monotonic() - started < BODY_TIMEOUT_S + 10:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                try:
                    sock.sendall(b" ")  # one more byte, never a pause of a whole timeout
                except OSError:
                    break
                continue
            except ConnectionResetError:  # a byte sent after the server closed
                break
            if not data:
                break
            reply += data
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert elapsed < BODY_TIMEOUT_S + 5, elapsed


def test_slow_headers_are_408_and_idle_connections_closed(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        started = time.monotonic()
        reply = read_until_closed(sock, HEADER_TIMEOUT_S + 10)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert HEADER_TIMEOUT_S - 0.5 < elapsed < HEADER_TIMEOUT_S + 5, elapsed
    with socket.create_connection((server.host, server.port)) as sock:  # sends nothing at all
        started = time.monotonic()
        assert read_until_closed(sock, HEADER_TIMEOUT_S + 10) == b""
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 5


def test_keep_alive_still_serves_several_requests(server):
    """The header timer stops once a request's headers are in and restarts between requests."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(HEADER_TIMEOUT_S / 2)


def test_oversized_headers_are_400(server):
    """h11 refuses a header block still incomplete past 16 KiB, so headers cannot grow."""
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (20 * 1024))
        reply = read_until_closed(sock, 10)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
