from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class WebhookSecretOut(BaseModel):
    secret: str
    created_at: datetime


class Delivery(BaseModel):
    """One attempt at a job's webhook: the receiver's status code, or why there was none."""

    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
