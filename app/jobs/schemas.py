from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.jobs.progress import job_overall_progress, queue_position
from app.webhooks.addresses import RefusedAddress
from app.webhooks.addresses import parse as parse_callback_url
from qaas.types import Artifact, JobError, JobInfo
from qaas_engine.spec import QuantSpec
from qaas_engine.targets import check_target, check_target_grids


class JobCreate(BaseModel):
    """A job: which model, which data, how to quantize. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(max_length=64)
    calibration_id: str | None = Field(None, max_length=64)
    evaluation_id: str | None = Field(None, max_length=64)
    training_id: str | None = Field(
        None, max_length=64, description="data for the qat step; labels used when present"
    )
    validation_id: str | None = Field(
        None,
        max_length=64,
        description="model selection for the qat step (default: 10% held out of training)",
    )
    quantization: QuantSpec = Field(default_factory=QuantSpec)
    target: str | None = Field(
        None,
        max_length=64,
        description="deployment target (onnxruntime-cpu, onnxruntime-cpu:vnni, "
        "onnxruntime-cpu:avx2, onnxruntime-cpu:avx2-s7, qnn-htp, tensorrt); the same as "
        "quantization.target, which it "
        "sets when given",
    )
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1, description="largest acceptable top-1 drop (0.01 = one point)"
    )
    energy_profile: dict[str, Any] | None = Field(
        None,
        max_length=16,
        description="your hardware's energy figures for the report, as the engine's "
        "EnergyProfile fields (default: the 45 nm table)",
    )

    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="http(s) URL that gets one POST when the job ends (job.succeeded, "
        "job.failed, job.cancelled), signed per Standard Webhooks with the tenant's secret "
        "(GET /v1/webhook-secret); private and loopback addresses are refused",
    )

    @field_validator("callback_url")
    @classmethod
    def _callback_url_syntax(cls, url: str | None) -> str | None:
        if url is not None:
            try:
                parse_callback_url(url)
            except RefusedAddress as refused:
                raise ValueError(refused.detail) from None
        return url

    @field_validator("target")
    @classmethod
    def _target_known(cls, target: str | None) -> str | None:
        return None if target is None else check_target(target)

    @model_validator(mode="after")
    def _grids_the_target_runs(self) -> JobCreate:
        # the job's target replaces the spec's: its grids must be ones that target runs
        if self.target is not None:
            spec = self.quantization
            check_target_grids(
                self.target,
                weight_bits=spec.weight_bits,
                activation_bits=spec.activation_bits,
                weight_symmetric=spec.weight_symmetric,
                pipeline=spec.pipeline,
            )
        return self


class JobOut(JobInfo):
    """The SDK's ``qaas.types.JobInfo``, made from a row."""

    @classmethod
    def from_row(cls, job: Any, positions: Mapping[str, int] | None = None) -> JobOut:
        """``positions``: the page's queue positions from ``queue_positions``, when a list
        has them already."""
        error = JobError(kind=job.error_kind, detail=job.error_detail) if job.error_kind else None
        return cls(
            id=job.id,
            status=job.status,
            phase=job.phase,
            progress=job.progress,
            overall_progress=job_overall_progress(job),
            queue_position=queue_position(job) if positions is None else positions.get(job.id),
            attempts=job.attempts,
            model_id=job.model_id,
            calibration_id=job.calibration_id,
            evaluation_id=job.evaluation_id,
            training_id=job.training_id,
            validation_id=job.validation_id,
            quantization=job.spec,
            max_accuracy_drop=job.max_accuracy_drop,
            energy_profile=job.energy_profile,
            error=error,
            steps=job.steps or [],
            step_reports=job.step_reports or {},
            metrics=job.metrics,
            artifacts=[Artifact(**a) for a in job.artifacts or []],
            created_at=job.created_at,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
            callback_url=job.callback_url,
            webhook_status=job.webhook_status,
            deliveries=job.deliveries or [],
            routing=job.routing,
            worker=job.worker,
            device=job.device,
            cpu_seconds=job.cpu_seconds,
        )
