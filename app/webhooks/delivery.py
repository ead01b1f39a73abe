"""Delivering finished jobs' webhooks: one pass over what is due. Called in a loop by every
worker's dispatcher (``worker/webhooks.py``); the state lives on the job row, so a delivery
survives any process restart and the loop may run in many workers at once.

A delivery never touches the job's own outcome: a receiver that is down, slow or refused
costs an attempt on the row, nothing more."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import transaction, utcnow
from app.jobs.repository import JobRepository
from app.jobs.schemas import JobOut
from app.jobs.tables import Job
from app.observability.logs import bind, log_context
from app.webhooks import addresses, signing
from app.webhooks.repository import DELIVERED, FAILED, PENDING, DeliveryRepository
from app.webhooks.service import WebhookSecretService

log = logging.getLogger("qaas.webhooks")
BATCH = 50
PARALLEL = 4  # one slow receiver must not hold up everyone else's webhooks


def message_id(job_id: str) -> str:
    """The same on every attempt, so a receiver can drop a repeat (Standard Webhooks)."""
    return f"msg_{job_id}"


def payload(job: Job, now: datetime) -> bytes:
    """``{"type": "job.<status>", "timestamp", "data": <the job as GET /v1/jobs/{id}>}``."""
    event = {
        "type": f"job.{job.status}",
        "timestamp": now.isoformat(),
        "data": JobOut.from_row(job).model_dump(mode="json"),
    }
    return json.dumps(event, separators=(",", ":")).encode()


def retry_delay_s(settings: Settings, attempt: int) -> float:
    return settings.webhook_first_retry_s * 2 ** (attempt - 1)


def deliver_due(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Claim and send every due webhook (at most a batch); returns how many were attempted."""
    with transaction(sessions) as session:
        due = DeliveryRepository(session).due(utcnow(), BATCH)
    if not due:
        return 0
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="webhook") as pool:
        sent = list(pool.map(lambda job_id: deliver(sessions, settings, job_id), due))
    return sum(sent)


def deliver(sessions: sessionmaker[Session], settings: Settings, job_id: str) -> bool:
    """One attempt at one job's webhook, if no other dispatcher claimed it first."""
    with log_context(job_id=job_id):
        return _attempt(sessions, settings, job_id)


def _attempt(sessions: sessionmaker[Session], settings: Settings, job_id: str) -> bool:
    hold_s = settings.webhook_timeout_s + 30.0
    with transaction(sessions) as session:
        now = utcnow()
        if not DeliveryRepository(session).claim(job_id, now, hold_s):
            return False
        job = JobRepository(session).get(job_id)
        if job is None or job.callback_url is None:
            return False
        bind(tenant_id=job.tenant_id)
        secret = WebhookSecretService(session=session).get(tenant_id=job.tenant_id).secret
        attempt = len(job.deliveries or []) + 1
        url, body = job.callback_url, payload(job, now)
    outcome = send(settings, url, secret, message_id(job_id), body)
    status, next_at = _next(settings, attempt, outcome)
    record = {"attempt": attempt, "at": now.isoformat(), **outcome}
    with transaction(sessions) as session:
        DeliveryRepository(session).record(job_id, record, status, next_at)
    log.log(
        logging.WARNING if status == FAILED else logging.INFO,
        "job %s: webhook attempt %d -> %s (%s)",
        job_id,
        attempt,
        outcome["status_code"] or outcome["error"],
        status,
    )
    return True


def send(settings: Settings, url: str, secret: str, msg_id: str, body: bytes) -> dict[str, Any]:
    """POST ``body``, signed now; the status code, or the error that stood for one."""
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        destination = addresses.vet(url, allow_private=settings.webhook_allow_private)
        headers = {
            **signing.headers(secret, msg_id, int(time.time()), body),
            "host": destination.host_header,
            "user-agent": "qaas-webhooks",
        }
        with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
            response = client.post(
                destination.url,
                content=body,
                headers=headers,
                extensions={"sni_hostname": destination.server_name},
            )
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"the receiver answered {status_code}"
    except addresses.RefusedAddress as refused:
        error = f"refused: {refused.detail}"
    except httpx.HTTPError as failure:
        error = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
    except Exception as failure:  # counted as an attempt, so a bad URL cannot retry for ever
        log.exception("webhook to %s failed unexpectedly", url)
        error = f"could not send: {type(failure).__name__}"
    return {
        "status_code": status_code,
        "error": error,
        "duration_ms": round(1000 * (time.monotonic() - started)),
    }


def _next(settings: Settings, attempt: int, outcome: dict[str, Any]) -> tuple[str, datetime | None]:
    if outcome["error"] is None:
        return DELIVERED, None
    if attempt >= settings.webhook_attempts:
        return FAILED, None
    return PENDING, utcnow() + timedelta(seconds=retry_delay_s(settings, attempt))
