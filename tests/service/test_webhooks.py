"""Webhooks for real: a receiver (an HTTP server in this process) gets a job's outcome from a
worker process, signed per Standard Webhooks; the signature is checked with the
``standardwebhooks`` package and with a second, independent computation. A first answer of 500
is retried; every attempt is on the job. Private addresses are refused at submission and again
at delivery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from standardwebhooks import Webhook

from app.core.db import transaction, utcnow
from app.jobs.tables import Job
from app.main import create_app
from app.webhooks.addresses import RefusedAddress, vet
from app.webhooks.delivery import deliver_due
from app.webhooks.repository import DeliveryRepository
from tests.service.conftest import (
    REPO,
    free_port,
    poll_job,
    start_worker,
    stop_process,
    upload,
    wait_for,
)


class Receiver:
    """Records every POST (headers, raw body) and answers with the next queued status."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: deque[int] = deque()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.popleft() if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/qaas"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def hook_settings(settings):
    """The suite's settings with private receivers allowed and quick retries."""
    return settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_first_retry_s": 0.3,
            "webhook_poll_interval_s": 0.2,
            "webhook_attempts": 3,
        }
    )


@pytest.fixture(scope="module")
def hook_api(hook_settings):
    with TestClient(create_app(hook_settings)) as client:
        yield client


def independent_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The scheme computed from its description, not from app.webhooks."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:8000/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_callback_refused_at_submission(api, make_tenant, url):
    body = {"model_id": "unused", "callback_url": url}
    response = api.post("/v1/jobs", json=body, headers=make_tenant())
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_input"
    assert "QAAS_WEBHOOK_ALLOW_PRIVATE" in error["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http://user:pw@example.com/x",
        "not a url",
        "http://:80/",
        "http://example.com/a b",
        "http://example.com:99999/",
    ],
)
def test_malformed_callback_refused(api, make_tenant, url):
    body = {"model_id": "unused", "callback_url": url}
    response = api.post("/v1/jobs", json=body, headers=make_tenant())
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert "callback_url" in response.json()["detail"]


def test_public_address_passes_and_is_pinned():
    destination = vet("https://93.184.216.34:8443/hook?x=1", allow_private=False)
    assert destination.url == "https://93.184.216.34:8443/hook?x=1"
    assert destination.server_name == "93.184.216.34"
    destination = vet("http://localhost:8000/hook", allow_private=True)
    assert destination.host_header == "localhost:8000"
    assert destination.url.startswith(("http://127.0.0.1:8000/", "http://[::1]:8000/"))
    with pytest.raises(RefusedAddress, match="100.64.0.1"):
        vet("http://100.64.0.1/", allow_private=False)  # carrier-grade NAT: not global


def test_webhook_secret_made_once_rotated_and_per_tenant(api, make_tenant):
    owner, other = make_tenant(), make_tenant()
    assert api.get("/v1/webhook-secret").status_code == 401
    first = api.get("/v1/webhook-secret", headers=owner)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert api.get("/v1/webhook-secret", headers=owner).json()["secret"] == secret
    assert api.get("/v1/webhook-secret", headers=other).json()["secret"] != secret
    rotated = api.post("/v1/webhook-secret", headers=owner).json()["secret"]
    assert rotated != secret
    assert api.get("/v1/webhook-secret", headers=owner).json()["secret"] == rotated


@pytest.fixture
def json_worker(hook_settings, tmp_path):
    """A real worker process with JSON logs, dispatching webhooks to private receivers."""
    log = tmp_path / "worker.log"
    process = start_worker(hook_settings.model_copy(update={"log_format": "json"}), log)
    yield log
    stop_process(process)


def test_succeeded_job_webhook_retried_signed_and_recorded(
    hook_api, make_tenant, receiver, json_worker, tiny_model, tiny_data
):
    headers = make_tenant()
    receiver.statuses.append(500)  # the first attempt fails; the retry must get through
    model = upload(hook_api, "/v1/models", tiny_model, headers).json()
    calibration = upload(hook_api, "/v1/datasets", tiny_data[0], headers).json()
    body = {
        "model_id": model["id"],
        "calibration_id": calibration["id"],
        "callback_url": receiver.url,
    }
    job = hook_api.post("/v1/jobs", json=body, headers=headers).json()
    assert job["callback_url"] == receiver.url and job["webhook_status"] == "pending"
    assert job["deliveries"] == []
    job = poll_job(hook_api, job["id"], headers, timeout=240)
    assert job["status"] == "succeeded", job  # the receiver's 500 never touches the job

    wait_for(lambda: len(receiver.received) >= 2, 30, "the retried webhook")
    secret = hook_api.get("/v1/webhook-secret", headers=headers).json()["secret"]
    ids = set()
    for request_headers, raw in receiver.received:
        event = Webhook(secret).verify(raw, request_headers)  # raises unless it verifies
        assert request_headers["webhook-signature"] == independent_signature(
            secret, request_headers, raw
        )
        assert abs(int(request_headers["webhook-timestamp"]) - time.time()) < 120
        assert event["type"] == "job.succeeded"
        assert event["data"]["id"] == job["id"] and event["data"]["status"] == "succeeded"
        assert {a["name"] for a in event["data"]["artifacts"]} >= {"report.json"}
        ids.add(request_headers["webhook-id"])
    assert ids == {f"msg_{job['id']}"}  # one message, however many attempts
    wrong = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(wrong).verify(receiver.received[-1][1], receiver.received[-1][0])

    def delivered():
        shown = hook_api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
        return shown if shown["webhook_status"] == "delivered" else None

    shown = wait_for(delivered, 10, "the delivery to be recorded")
    attempts = shown["deliveries"]
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, 200)]
    assert attempts[0]["error"] == "the receiver answered 500" and attempts[1]["error"] is None
    assert len(receiver.received) == 2  # nothing after the success

    lines = [json.loads(line) for line in json_worker.read_text().splitlines() if line[:1] == "{"]
    about_job = [line for line in lines if line.get("job_id") == job["id"]]
    assert any(line.get("tenant_id") for line in about_job), lines[-20:]
    assert any("webhook attempt 2" in line["message"] for line in about_job)


def test_refused_at_delivery_time_then_given_up(
    hook_api, hook_settings, sessions, make_tenant, receiver, tiny_model
):
    """Allowed when submitted, refused when sent (the operator changed the rule, or the name
    now resolves elsewhere): each attempt is recorded, nothing is sent, and after the last
    attempt the webhook is given up."""
    headers = make_tenant()
    model = upload(hook_api, "/v1/models", tiny_model, headers).json()
    body = {
        "model_id": model["id"],
        "quantization": {"activation_bits": None},
        "callback_url": receiver.url,
    }
    job = hook_api.post("/v1/jobs", json=body, headers=headers).json()
    assert hook_api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200
    strict = hook_settings.model_copy(
        update={
            "webhook_allow_private": False,
            "webhook_attempts": 2,
            "webhook_first_retry_s": 0.05,
        }
    )
    with transaction(sessions) as session:  # another dispatcher's claim holds it off
        assert DeliveryRepository(session).claim(job["id"], utcnow(), hold_s=60)
    deliver_due(sessions, strict)
    shown = hook_api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert shown["deliveries"] == []
    with transaction(sessions) as session:
        # the claim's holder died: its hold runs out (here at once)
        session.execute(update(Job).where(Job.id == job["id"]).values(webhook_next_at=None))

    def attempts(count):
        deliver_due(sessions, strict)
        shown = hook_api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
        return shown if len(shown["deliveries"]) >= count else None

    wait_for(lambda: attempts(1), 10, "the first attempt")
    shown = wait_for(lambda: attempts(2), 10, "the second attempt")
    assert shown["webhook_status"] == "failed"
    assert all(a["error"].startswith("refused: ") for a in shown["deliveries"])
    assert all("127.0.0.1" in a["error"] for a in shown["deliveries"])
    assert receiver.received == []


def test_embedded_serve_delivers(receiver, tiny_model, tmp_path):
    """The embedded default (``qaas serve``: SQLite, the filesystem broker, no Redis) runs the
    same dispatcher in its worker."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QAAS_")}
    env.update(
        QAAS_DATA_DIR=str(home / "qaas-data"),
        QAAS_WEBHOOK_ALLOW_PRIVATE="1",
        QAAS_WEBHOOK_POLL_INTERVAL_S="0.2",
    )
    log = home / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=home, env={**env, "PYTHONPATH": str(REPO)}, stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        match = wait_for(
            lambda: re.search(r"QAAS_API_KEY=(\S+)", log.read_text()), 90, "qaas serve's key"
        )
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {match.group(1)}"},
            timeout=30,
        )

        def ready():
            try:
                return client.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "qaas serve")
        model = upload(client, "/v1/models", tiny_model, {}).json()
        body = {
            "model_id": model["id"],
            "quantization": {"activation_bits": None},
            "callback_url": receiver.url,
        }
        job = client.post("/v1/jobs", json=body).json()
        job = poll_job(client, job["id"], {}, timeout=180)
        wait_for(lambda: receiver.received, 30, "the webhook", interval=0.1)
        secret = client.get("/v1/webhook-secret").json()["secret"]
        event = Webhook(secret).verify(receiver.received[0][1], receiver.received[0][0])
        assert event["type"] == f"job.{job['status']}" and event["data"]["id"] == job["id"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
