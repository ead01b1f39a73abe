"""Every table, imported in one place so Alembic and the worker see the whole metadata."""

from app.auth.tables import ApiKey, AuthFailure, Tenant, UiSession
from app.core.db import Base
from app.datasets.tables import Dataset
from app.jobs.tables import Job, JobStatus
from app.models_.tables import Model
from app.webhooks.tables import WebhookSecret

__all__ = [
    "ApiKey",
    "AuthFailure",
    "Base",
    "Dataset",
    "Job",
    "JobStatus",
    "Model",
    "Tenant",
    "UiSession",
    "WebhookSecret",
]
