"""A job's files and report, read through the job row: only what the row lists is served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import Conflict, NotFound
from app.core.storage import Storage, job_folder
from app.jobs.repository import JobRepository
from app.jobs.tables import Job, JobStatus

ARTIFACTS_DIR = "artifacts"


def artifacts_key(job_id: str) -> str:
    return f"{job_folder(job_id)}/{ARTIFACTS_DIR}"


@dataclass(frozen=True)
class ArtifactFile:
    key: str  # the published set's key (artifacts_key); the file is ``name`` in it
    name: str
    sha256: str
    size_bytes: int

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


class ArtifactService:
    def __init__(self, *, session: Session, storage: Storage) -> None:
        self.jobs = JobRepository(session)
        self.storage = storage

    def _finished_job(self, tenant_id: str, job_id: str) -> Job:
        job = self.jobs.get_for_tenant(job_id, tenant_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.status != JobStatus.SUCCEEDED:
            raise Conflict(f"job {job_id} is {job.status}; artifacts exist once it succeeds")
        return job

    def list(self, *, tenant_id: str, job_id: str) -> list[dict[str, Any]]:
        return list(self._finished_job(tenant_id, job_id).artifacts)

    def file(self, *, tenant_id: str, job_id: str, name: str) -> ArtifactFile:
        job = self._finished_job(tenant_id, job_id)
        for entry in job.artifacts:
            if entry["name"] == name:
                return ArtifactFile(
                    artifacts_key(job.id), name, entry["sha256"], entry["size_bytes"]
                )
        raise NotFound(f"job {job_id} has no artifact named {name!r}")

    def report(self, *, tenant_id: str, job_id: str) -> dict[str, Any]:
        report = self._finished_job(tenant_id, job_id).report
        if report is None:
            raise NotFound(f"job {job_id} has no report")
        return report
