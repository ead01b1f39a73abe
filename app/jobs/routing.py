"""Which worker pool a job goes to, and why.

Two pools, each a Celery queue named from ``QAAS_QUEUE`` (``app.core.queue.queue_name``):
``cpu`` (the queue itself, so a single-queue deployment and its workers are the cpu pool
unchanged) and ``gpu`` (``<queue>.gpu``). A job goes to ``gpu`` only when all hold:

- a step of its pipeline learns by gradient descent (``qaas_engine.step_registry.learns``: qat,
  adaround, bayesian_bits; pipeline ``auto`` counts when it is given training data, with which
  it may choose qat);
- its model has at least ``QAAS_GPU_MIN_PARAMETERS`` parameters, estimated as the model's bytes
  (with its external data) / 4, float32 weights: on a small model a CPU trains as fast as a GPU
  once the transfer and start-up are counted;
- a gpu worker (one that consumes the gpu queue and has a CUDA device, ``worker.pools``)
  heartbeat within ``QAAS_GPU_WORKER_FRESH_S``.

Otherwise it goes to ``cpu``, and the reason is recorded on the job (``routing``), so a QAT job
that ran on a CPU says why. The reaper routes again what it requeues or resends: a job waiting
in the gpu queue after the last gpu worker went away moves to cpu.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import utcnow
from app.jobs.tables import Worker
from qaas_engine.step_registry import AUTO, STEPS, learns

CPU, GPU = "cpu", "gpu"
POOLS = (CPU, GPU)
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Route:
    pool: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.pool, "reason": self.reason}


def learning_steps(pipeline: list[str] | tuple[str, ...], has_training: bool) -> list[str]:
    """The steps of ``pipeline`` that learn by gradient descent (``["auto"]`` for pipeline
    auto with training data, which may choose qat)."""
    if tuple(pipeline) == (AUTO,):
        return [AUTO] if has_training else []
    if not learns(pipeline):
        return []
    return [name for name in pipeline if name in STEPS and STEPS[name].prefers_gpu]


def estimated_parameters(model_bytes: int) -> int:
    return model_bytes // FLOAT32_BYTES


def decide(
    *,
    pipeline: list[str] | tuple[str, ...],
    has_training: bool,
    model_bytes: int,
    gpu_workers: int,
    settings: Settings,
) -> Route:
    """The pool for a job; ``gpu_workers`` is how many gpu workers were seen recently."""
    steps = learning_steps(pipeline, has_training)
    if not steps:
        return Route(CPU, "post-training pipeline: no step learns by gradient descent")
    named = ", ".join(steps)
    parameters = estimated_parameters(model_bytes)
    threshold = settings.gpu_min_parameters
    if parameters < threshold:
        return Route(
            CPU,
            f"{named} on a small model (about {parameters:,} parameters, under "
            f"QAAS_GPU_MIN_PARAMETERS={threshold:,})",
        )
    if gpu_workers == 0:
        return Route(CPU, f"no gpu worker seen in the last {settings.gpu_worker_fresh_s:g} s")
    return Route(
        GPU,
        f"{named} on about {parameters:,} parameters (at least {threshold:,}); "
        f"{gpu_workers} gpu worker(s) seen in the last {settings.gpu_worker_fresh_s:g} s",
    )


def gpu_workers_seen(session: Session, settings: Settings) -> int:
    since = utcnow() - timedelta(seconds=settings.gpu_worker_fresh_s)
    query = select(func.count()).where(Worker.consumes_gpu.is_(True), Worker.last_seen_at >= since)
    return int(session.scalar(query) or 0)


def route_job(
    session: Session,
    settings: Settings,
    *,
    spec: dict[str, Any],
    has_training: bool,
    model_bytes: int,
) -> Route:
    pipeline = list(spec.get("pipeline") or [])
    if not learning_steps(pipeline, has_training):  # no query for the common case
        return decide(
            pipeline=pipeline,
            has_training=has_training,
            model_bytes=model_bytes,
            gpu_workers=0,
            settings=settings,
        )
    return decide(
        pipeline=pipeline,
        has_training=has_training,
        model_bytes=model_bytes,
        gpu_workers=gpu_workers_seen(session, settings),
        settings=settings,
    )


def job_device(spec: dict[str, Any], has_training: bool, worker_device: str) -> str:
    """Where a job's computation runs on a worker whose torch device is ``worker_device``: the
    learning steps train on it (the engine takes CUDA when present); the rest of a pipeline
    (calibration, rounding, export, ONNX Runtime evaluation) runs on the CPU."""
    if learning_steps(list(spec.get("pipeline") or []), has_training):
        return worker_device
    return CPU
