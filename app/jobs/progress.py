"""The two figures a client shows while it waits, derived from the job row: the position in
the queue, and progress across all of a job's phases (the row's ``progress`` is the current
phase's only, 0 to 1 again in each).

The overall figure weighs each phase the engine will run for this spec by a rough cost (the
learning steps dominate) and places the current phase in that plan; it moves forward only as
far as the phases do, so it is a guide, not a time estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, object_session

from app.jobs.tables import Job, JobStatus
from qaas_engine.auto import LADDER
from qaas_engine.step_registry import STEPS

STEP_COST = {"qat": 12.0, "bayesian_bits": 12.0, "adaround": 6.0, "bias_correction": 2.0}
BEFORE = (("import", 1.0), ("load", 1.0))
AFTER = (("evaluation", 3.0), ("energy", 1.0), ("latency", 2.0), ("analysis", 2.0), ("save", 1.0))
SAME_SLOT = {"data_free_ranges": "calibration"}
REPORT_ONLY = ("energy", "latency", "analysis")  # phases run once, after auto's ladder


def pipeline_plan(pipeline: Sequence[str], quantize_activations: bool) -> list[tuple[str, float]]:
    """The phases ``qaas_engine.pipeline.run_pipeline`` runs, in order, with their costs."""
    steps = [name for name in pipeline if name in STEPS]
    plan = [("prepare", 1.0)]
    plan += [(n, STEP_COST.get(n, 1.0)) for n in steps if STEPS[n].stage == "float"]
    plan.append(("weight_ranges", 1.0))
    if quantize_activations:
        plan += [("calibration", 3.0), ("rules", 1.0)]
    plan += [(n, STEP_COST.get(n, 1.0)) for n in steps if STEPS[n].stage == "quantized"]
    plan.append(("export", 1.0))
    return plan


def _fraction(plan: list[tuple[str, float]], phase: str, within: float) -> float | None:
    """How far through ``plan`` the start of ``phase`` plus ``within`` of it is; None when the
    plan has no such phase."""
    names = [name for name, _ in plan]
    phase = SAME_SLOT.get(phase, phase)
    if phase not in names:
        return None
    index = names.index(phase)
    total = sum(cost for _, cost in plan)
    done = sum(cost for _, cost in plan[:index])
    return (done + plan[index][1] * min(1.0, max(0.0, within))) / total


def _auto_fraction(phase: str, within: float, activations: bool) -> float:
    """``auto <rung>: <phase>``: the rung's place in the ladder, then the phase's in the rung."""
    rung_name, _, rung_phase = phase.removeprefix("auto ").partition(": ")
    names = [rung.name for rung in LADDER]
    if rung_name not in names:
        return 0.0
    rung = LADDER[names.index(rung_name)]
    inner = _fraction(pipeline_plan(rung.pipeline, activations), rung_phase, within)
    return (names.index(rung_name) + (inner or 0.0)) / len(LADDER)


def overall_progress(
    *, status: str, phase: str | None, progress: float, spec: dict[str, Any], history: list[str]
) -> float:
    """0..1 across the job's phases; ``history``: the phases the worker recorded so far, the
    current one last. Never below where an earlier phase ended, so it does not go back when a
    name repeats (auto's validation, then its report, are both ``evaluation``)."""
    if status == JobStatus.SUCCEEDED or phase == "done":
        return 1.0
    if status == JobStatus.QUEUED or phase is None:
        return 0.0
    if "import" not in history:
        return 0.0  # the worker's own "load" (fetching the files), before the engine's import
    pipeline = list(spec.get("pipeline") or [])
    activations = spec.get("activation_bits") is not None
    middle = [("auto", 30.0)] if pipeline == ["auto"] else pipeline_plan(pipeline, activations)
    plan = [*BEFORE, *middle, *AFTER]
    history = history[history.index("import") :]
    finished = history[:-1] if history[-1] == phase else history
    figures = [_figure(plan, phase, progress, activations)]
    figures += [_figure(plan, name, 1.0, activations) for name in finished]
    return round(min(1.0, max((f for f in figures if f is not None), default=0.0)), 4)


def _figure(
    plan: list[tuple[str, float]], phase: str, within: float, activations: bool
) -> float | None:
    if not phase.startswith("auto "):
        return _fraction(plan, phase, within)
    rung_phase = phase.partition(": ")[2]
    if rung_phase in REPORT_ONLY:  # the chosen rung's report: the ladder is done
        return _fraction(plan, rung_phase, within)
    return _fraction(plan, "auto", _auto_fraction(phase, within, activations))


def job_overall_progress(job: Job) -> float:
    history = [str(step.get("name")) for step in job.steps or [] if isinstance(step, dict)]
    return overall_progress(
        status=job.status,
        phase=job.phase,
        progress=job.progress or 0.0,
        spec=job.spec or {},
        history=history,
    )


def queue_positions(session: Session, jobs: Iterable[Job]) -> dict[str, int]:
    """``queue_position`` of every queued job of ``jobs`` in one query: a page of a list asked
    once per job, a count each, cost a poller's GET of the list a query per queued job."""
    queued = [job.id for job in jobs if job.status == JobStatus.QUEUED]
    if not queued:
        return {}
    order = func.row_number().over(order_by=(Job.queued_at, Job.id))
    ranked = (
        select(Job.id.label("id"), order.label("position"))
        .where(Job.status == JobStatus.QUEUED)
        .subquery()
    )
    rows = session.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(queued)))
    return {job_id: int(position) for job_id, position in rows}


def queue_position(job: Job) -> int | None:
    """1 + the queued jobs (every tenant's) that entered the queue before this one: workers
    take jobs in that order, so 1 is the next to start. None unless the job is queued."""
    session = object_session(job)
    if job.status != JobStatus.QUEUED or session is None:
        return None
    ahead = select(func.count()).where(
        Job.status == JobStatus.QUEUED,
        or_(
            Job.queued_at < job.queued_at,
            (Job.queued_at == job.queued_at) & (Job.id < job.id),
        ),
    )
    return int(session.scalar(ahead) or 0) + 1
