"""Job submission, reads and cancel. Submission checks everything it can up front (ids, spec,
data against the model) so a bad request is a 4xx, never a job that fails later."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.context import Context
from app.core.db import after_commit
from app.core.deletion import Deletion
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.quotas import Quotas
from app.datasets.service import DatasetService
from app.datasets.tables import Dataset
from app.jobs.repository import JobRepository
from app.jobs.routing import Route, route_job
from app.jobs.schemas import JobCreate
from app.jobs.tables import TERMINAL, Job, JobStatus
from app.models_.service import ModelService
from app.models_.tables import Model
from app.observability.logs import bind
from app.webhooks.addresses import vet
from app.webhooks.repository import PENDING
from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.errors import SpecError
from qaas_engine.spec import QuantSpec
from qaas_engine.step_registry import Data, missing_data, steps_needing, steps_taking

log = logging.getLogger("qaas.jobs")


# Fields added after jobs were first stored: left out of the hash while unset, so a retry of a
# request made before they existed still matches the job it created.
LATER_FIELDS = ("training_id", "validation_id", "energy_profile", "callback_url")


class CheckedFits:
    """The (dataset, model, role) pairs this process found to fit. Uploads never change once
    stored (no route edits a model or dataset), so a pair that fitted still fits: a sweep that
    submits many jobs on one model and dataset pays the check (a sandboxed child that loads
    the data: most of a small job's cost in the API) once, not per job. Only passes are kept;
    a misfit is checked, and refused, every time. Bounded: the oldest pair is forgotten.
    Requests that come together for a pair not yet checked wait for one check (``turn``)
    rather than each starting its own: a sweep submits its jobs at once."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.pairs: OrderedDict[tuple[object, ...], None] = OrderedDict()
        self.lock = threading.Lock()
        self.checking: dict[tuple[object, ...], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def turn(self, key: tuple[object, ...]) -> AsyncIterator[None]:
        """Held by one request per pair at a time (the event loop's; the API has one)."""
        lock, users = self.checking.get(key, (asyncio.Lock(), 0))
        self.checking[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.checking[key]
            if users == 1:
                del self.checking[key]
            else:
                self.checking[key] = (lock, users - 1)

    def __contains__(self, key: tuple[object, ...]) -> bool:
        with self.lock:
            if key in self.pairs:
                self.pairs.move_to_end(key)
                return True
            return False

    def add(self, key: tuple[object, ...]) -> None:
        with self.lock:
            self.pairs[key] = None
            self.pairs.move_to_end(key)
            while len(self.pairs) > self.size:
                self.pairs.popitem(last=False)


checked_fits = CheckedFits()


def request_hash(request: JobCreate) -> str:
    body = request.model_dump(mode="json")
    for name in LATER_FIELDS:
        if body.get(name) is None:
            body.pop(name, None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_energy_profile(profile: dict[str, Any] | None) -> None:
    """The engine's own profile checks, run now so a bad profile is a 422, not a failed job."""
    if profile is None:
        return
    try:
        json.dumps(profile, allow_nan=False)
    except ValueError:
        raise InvalidInput("energy profile: NaN and infinity are not valid JSON numbers") from None
    try:
        EnergyProfile.load(profile)
    except SpecError as error:
        raise InvalidInput(str(error)) from None
    except (TypeError, ValueError, AttributeError) as error:  # a field of the wrong type
        raise InvalidInput(f"energy profile: {error}") from None


class JobService:
    def __init__(self, *, session: Session, context: Context) -> None:
        self.session = session
        self.context = context
        self.repository = JobRepository(session)
        self.quotas = Quotas(session=session, settings=context.settings)
        self.models = ModelService(
            session=session,
            settings=context.settings,
            storage=context.storage,
            inspector=context.inspector,
        )
        self.datasets = DatasetService(
            session=session,
            settings=context.settings,
            storage=context.storage,
            inspector=context.inspector,
        )

    async def submit(
        self, *, tenant_id: str, request: JobCreate, idempotency_key: str | None
    ) -> tuple[Job, bool]:
        """Returns (job, created). The same key and body give back the same job."""
        digest = request_hash(request)
        if idempotency_key:
            existing = await run_in_threadpool(
                self.repository.by_idempotency_key, tenant_id, idempotency_key
            )
            if existing is not None:
                return self._replay(existing, digest), False
        model = await self._validate(tenant_id=tenant_id, request=request)
        spec = _with_target(request).model_dump(mode="json")
        route = await run_in_threadpool(self._route, request, spec, model)
        job = Job(
            tenant_id=tenant_id,
            model_id=request.model_id,
            calibration_id=request.calibration_id,
            evaluation_id=request.evaluation_id,
            training_id=request.training_id,
            validation_id=request.validation_id,
            spec=spec,
            max_accuracy_drop=request.max_accuracy_drop,
            energy_profile=request.energy_profile,
            callback_url=request.callback_url,
            webhook_status=PENDING if request.callback_url else None,
            idempotency_key=idempotency_key,
            request_hash=digest,
            status=JobStatus.QUEUED,
            pool=route.pool,
            routing=route.as_json(),
        )
        try:
            await run_in_threadpool(self._insert_within_quota, tenant_id, job)
        except IntegrityError:
            # A concurrent request with the same key won the insert; this request wrote
            # nothing else, so its rolled-back transaction lost nothing.
            winner = await run_in_threadpool(
                self.repository.by_idempotency_key, tenant_id, idempotency_key or ""
            )
            if winner is None:  # not the key: a model or dataset was deleted meanwhile
                raise Conflict(
                    "a model or dataset this job names was deleted while it was submitted"
                ) from None
            return self._replay(winner, digest), False
        after_commit(self.session, lambda job_id=job.id: self._enqueue(job_id, route.pool))
        bind(job_id=job.id)
        return job, True

    def _insert_within_quota(self, tenant_id: str, job: Job) -> None:
        """Lock the tenant, count its jobs, insert and end the transaction, in one call on one
        thread, so concurrent submissions cannot all pass on the same count. This is why the
        request commits here rather than in the session dependency: a submission waiting for
        the lock blocks a worker thread, and a commit (or rollback) left for later would need
        another one, so enough waiters would starve the lock's holder."""
        try:
            self.quotas.check_submission(tenant_id=tenant_id, lock=True)
            self.repository.add(job)
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise

    def _replay(self, job: Job, digest: str) -> Job:
        if job.request_hash != digest:
            raise Conflict(
                "this Idempotency-Key was used for a different job request; "
                "use a new key for a new job"
            )
        return job

    def _route(self, request: JobCreate, spec: dict[str, object], model: Model) -> Route:
        model_bytes = model.size_bytes + sum(f["size_bytes"] for f in model.external_data or [])
        return route_job(
            self.session,
            self.context.settings,
            spec=spec,
            has_training=request.training_id is not None,
            model_bytes=model_bytes,
        )

    async def _validate(self, *, tenant_id: str, request: JobCreate) -> Model:
        """Everything checkable now; returns the job's model."""
        if request.callback_url is not None:
            allow_private = self.context.settings.webhook_allow_private
            await run_in_threadpool(vet, request.callback_url, allow_private=allow_private)
        spec = request.quantization
        if spec.quantize_activations and request.calibration_id is None:
            raise InvalidInput(
                "activation quantization needs calibration data: give calibration_id, "
                "or keep activations in float (quantization.activation_bits = null)"
            )
        given: set[Data] = set()
        if request.calibration_id is not None:
            given.add("calibration")
        if request.training_id is not None:
            given |= {"training", "labels"}  # whether it holds labels is checked by the worker
        missing = missing_data(spec.pipeline, given)
        if missing:
            step, data = missing[0]
            field = "calibration_id" if data == "calibration" else "training_id"
            raise InvalidInput(
                f"the {step} step needs {data} data: upload an .npz and give its id as "
                f"{field}, or remove {step} from quantization.pipeline"
            )
        if not steps_needing(spec.pipeline, "training") and not spec.is_auto:
            for field in ("training_id", "validation_id"):
                if getattr(request, field) is not None:
                    raise InvalidInput(
                        f"{field} is used only by the {' and '.join(steps_taking('training'))} "
                        "steps and by pipeline auto: add one to quantization.pipeline, or leave "
                        f"{field} out"
                    )
        check_energy_profile(request.energy_profile)
        model = await run_in_threadpool(
            lambda: self.models.get(tenant_id=tenant_id, model_id=request.model_id)
        )
        unfixed = [
            item["name"]
            for item in model.inputs
            if item.get("decides_control_flow") and item["name"] not in spec.fixed_inputs
        ]
        if unfixed:
            raise InvalidInput(
                f"model {model.id}: input(s) {', '.join(unfixed)} decide a branch that holds "
                "quantizable work, which qaas quantizes only once it is taken: give the value "
                f"they have where the model is deployed, quantization.fixed_inputs "
                f'{{"{unfixed[0]}": VALUE}} (qaas submit --fix-input {unfixed[0]}=VALUE)'
            )
        for role, dataset_id in (
            ("calibration", request.calibration_id),
            ("evaluation", request.evaluation_id),
            ("training", request.training_id),
            ("validation", request.validation_id),
        ):
            if dataset_id is None:
                continue
            dataset = await run_in_threadpool(
                lambda d=dataset_id: self.datasets.get(tenant_id=tenant_id, dataset_id=d)
            )
            await self._check_fits(tenant_id, dataset, model, role, spec.fixed_inputs)
        return model

    async def _check_fits(
        self, tenant_id: str, dataset: Dataset, model: Model, role: str, fixed: dict[str, float]
    ) -> None:
        key = (
            dataset.id,
            dataset.sha256,
            model.id,
            model.sha256,
            role,
            self.context.settings.max_dataset_expanded_bytes,
            tuple(sorted(fixed.items())),
        )
        if key in checked_fits:
            return
        # A cheap early refusal before the sandboxed check (a second or so of CPU); the count
        # that decides is made again in _insert_within_quota, so a checked pair needs no early
        # count.
        await run_in_threadpool(self.quotas.check_submission, tenant_id=tenant_id, lock=False)
        async with checked_fits.turn(key):
            if key in checked_fits:  # checked by the request this one waited for
                return
            await self.datasets.check_fits(dataset=dataset, model=model, role=role, fixed=fixed)
            checked_fits.add(key)

    def _enqueue(self, job_id: str, pool: str) -> None:
        try:
            self.context.queue.enqueue(job_id, pool)
        except Exception:
            # The row is committed: the reaper resends queued jobs that never started.
            log.exception("job %s committed but not enqueued; it will be resent", job_id)

    def get(self, *, tenant_id: str, job_id: str) -> Job:
        job = self.repository.get_for_tenant(job_id, tenant_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def list(self, *, tenant_id: str, limit: int = 100) -> list[Job]:
        return self.repository.list_for_tenant(tenant_id, limit)

    def cancel(self, *, tenant_id: str, job_id: str) -> Job:
        """Queued jobs never start; a running one stops at its next progress report."""
        job = self.get(tenant_id=tenant_id, job_id=job_id)
        if not self.repository.cancel(job.id):
            self.session.refresh(job)
            if job.status != JobStatus.CANCELLED:
                raise Conflict(f"job {job_id} already {job.status}; it can no longer be cancelled")
        self.session.refresh(job)
        return job

    def delete(self, *, tenant_id: str, job_id: str) -> None:
        """The row now, its artifacts after commit (``app.core.deletion``). A queued job never
        starts; a running one is cancelled as by ``cancel``: its worker's next progress report
        or heartbeat finds the row gone and stops, and anything it publishes after that is
        removed by the worker itself."""
        job = self.get(tenant_id=tenant_id, job_id=job_id)
        if job.status not in TERMINAL:
            self.repository.cancel(job.id)
        if not Deletion(session=self.session, storage=self.context.storage).job(job.id):
            raise NotFound(f"job {job_id} not found")


def _with_target(request: JobCreate) -> QuantSpec:
    """The job's accuracy target (a fraction) becomes the spec's (in points) when the spec has
    none, so pipeline auto and QAT's early stop aim at what the job asked for; the job's
    deployment ``target``, when given, is the spec's."""
    spec = request.quantization
    if request.target is not None:
        spec = QuantSpec.model_validate({**spec.model_dump(), "target": request.target})
    if request.max_accuracy_drop is None or spec.max_accuracy_drop is not None:
        return spec
    return spec.model_copy(update={"max_accuracy_drop": 100.0 * request.max_accuracy_drop})
