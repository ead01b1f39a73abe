from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, JSONType, UTCDateTime, utcnow
from app.core.ids import new_id


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(Base):
    """The truth about a job: the API reads only this row; workers change it by compare-and-set."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # NULL once the model is deleted: a finished job outlives its model, artifacts and all.
    model_id: Mapped[str | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), index=True, nullable=True
    )
    calibration_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
    evaluation_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
    training_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
    validation_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    energy_profile: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    max_accuracy_drop: Mapped[float | None] = mapped_column(Float, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))

    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    phase: Mapped[str | None] = mapped_column(String(64), nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Worker pools (app/jobs/routing.py): the pool the job was sent to ("cpu" or "gpu"; NULL on
    # rows from before pools, which went to the one queue, the cpu pool's), why, and the device
    # its last attempt computed on ("cpu", "cuda:0 (NVIDIA H100 ...)").
    pool: Mapped[str | None] = mapped_column(String(8), nullable=True)
    routing: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # CPU seconds (user + system) of the last attempt's quantization process, measured by the
    # process itself: its parent cannot see them (worker/limited.py)
    cpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    step_reports: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    artifacts: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    # Webhook (app/webhooks): where to POST the outcome, whether that is still to do
    # ("pending"), done ("delivered") or given up ("failed"), when the next attempt may start
    # (also a dispatcher's claim), and every attempt so far.
    callback_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    webhook_status: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    webhook_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deliveries: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    enqueued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When the job last entered the queue (submitted, or queued again after a lost worker);
    # unlike enqueued_at, a resent message does not move it.
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Worker(Base):
    """A live worker (one Celery node), written by its own heartbeat every
    ``QAAS_WORKER_HEARTBEAT_S`` and removed when it stops: which queues it consumes and what
    device it computes on. Routing asks whether a gpu worker was seen recently; a row whose
    ``last_seen_at`` is old is a worker that died without saying so."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery node name
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSONType, default=list)
    consumes_gpu: Mapped[bool] = mapped_column(Boolean, default=False)
    device: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
