"""The API's response bodies as typed objects: the service's response schemas
(``app/*/schemas.py``) subclass these, so the SDK and the API cannot drift apart.

Fields a newer server adds are ignored (pydantic's default), and fields added after the first
release have defaults, so this SDK also reads an older or newer server's answers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from qaas.statuses import JOB_STATUSES as JOB_STATUSES
from qaas.statuses import TERMINAL as TERMINAL


class JobError(BaseModel):
    kind: str
    detail: str | None


class Artifact(BaseModel):
    name: str
    size_bytes: int
    sha256: str


class WebhookDelivery(BaseModel):
    """One attempt at a job's webhook: the receiver's status code, or why there was none."""

    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class JobInfo(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` answers it."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: str
    phase: str | None
    progress: float = Field(description="the current phase's progress, 0..1")
    overall_progress: float = Field(
        default=0.0, description="progress across all the job's phases and steps, 0..1"
    )
    queue_position: int | None = Field(
        default=None, description="1 = the next job to start; null when the job is not queued"
    )
    attempts: int
    model_id: str | None  # None once the model was deleted
    calibration_id: str | None
    evaluation_id: str | None
    training_id: str | None
    validation_id: str | None
    quantization: dict[str, Any]
    max_accuracy_drop: float | None
    energy_profile: dict[str, Any] | None
    error: JobError | None
    steps: list[dict[str, Any]]
    step_reports: dict[str, Any]
    metrics: dict[str, Any] | None
    artifacts: list[Artifact]
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    callback_url: str | None = None
    webhook_status: str | None = Field(default=None, description="pending, delivered or failed")
    deliveries: list[WebhookDelivery] = Field(default_factory=list, description="webhook attempts")
    routing: dict[str, Any] | None = Field(
        default=None,
        description='the worker pool the job was sent to and why: {"queue": "cpu" or "gpu", '
        '"reason": ...}',
    )
    worker: str | None = Field(default=None, description="the worker of its last attempt")
    device: str | None = Field(
        default=None, description='where its last attempt computed: "cpu" or "cuda:0 (<GPU>)"'
    )
    cpu_seconds: float | None = Field(
        default=None,
        description="CPU time (user + system, all threads) its quantization process used, once "
        "it succeeded",
    )


class ModelInput(BaseModel):
    name: str
    dtype: str
    shape: list[int | None]
    # it decides a branch holding quantizable work: jobs must fix it (quantization.fixed_inputs)
    decides_control_flow: bool = False


class ExternalDataFile(BaseModel):
    name: str
    size_bytes: int
    sha256: str


class ModelInfo(BaseModel):
    """An uploaded model as ``GET /v1/models/{id}`` answers it."""

    id: str
    filename: str
    size_bytes: int
    sha256: str
    source_format: str
    opset: int
    inputs: list[ModelInput]
    notes: list[str]
    external_data: list[ExternalDataFile] = []
    created_at: datetime


class ArrayInfo(BaseModel):
    shape: list[int]
    dtype: str


class DatasetInfo(BaseModel):
    """An uploaded dataset as ``GET /v1/datasets/{id}`` answers it."""

    id: str
    filename: str
    size_bytes: int
    expanded_bytes: int  # what the quota counts: the arrays at their full size
    sha256: str
    arrays: dict[str, ArrayInfo]
    created_at: datetime
