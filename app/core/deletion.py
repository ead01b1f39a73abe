"""Deleting models, datasets and jobs, for the API (a tenant's own, already authorized) and for
the retention sweep (anyone's, expired).

Safe against partial failure by ordering: the row goes in the caller's transaction, its files
only after that transaction commits. A crash or a storage error in between leaves a file that
no row points at (wasted space, which an operator can sweep), never a row pointing at missing
files; a rolled-back request has removed nothing. Quota counts rows, so it is freed at commit.

A model or dataset that a queued or running job will read is not deleted (409 naming the
jobs): cancel or delete those jobs first. Finished jobs keep their rows and artifacts; their
``model_id`` (and dataset ids) become null (the foreign keys are ON DELETE SET NULL).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from app.core.db import after_commit
from app.core.errors import Conflict
from app.core.storage import Storage, dataset_folder, job_folder, model_folder
from app.datasets.repository import DatasetRepository
from app.jobs.repository import JobRepository
from app.models_.repository import ModelRepository

log = logging.getLogger("qaas.deletion")


class Deletion:
    def __init__(self, *, session: Session, storage: Storage) -> None:
        self.session = session
        self.storage = storage
        self.jobs = JobRepository(session)
        self.models = ModelRepository(session)
        self.datasets = DatasetRepository(session)

    def model(self, model_id: str) -> bool:
        """Delete a model and, after commit, its folder (upload, external data, converted
        ONNX). False when it was already gone; Conflict while an active job needs it."""
        if self.models.lock(model_id) is None:
            return False
        _refuse_in_use(f"model {model_id}", self.jobs.active_using_model(model_id))
        self.models.delete(model_id)
        self._remove_after_commit(model_folder(model_id))
        return True

    def dataset(self, dataset_id: str) -> bool:
        """Delete a dataset and, after commit, its file. Same rules as ``model``."""
        if self.datasets.lock(dataset_id) is None:
            return False
        _refuse_in_use(f"dataset {dataset_id}", self.jobs.active_using_dataset(dataset_id))
        self.datasets.delete(dataset_id)
        self._remove_after_commit(dataset_folder(dataset_id))
        return True

    def job(self, job_id: str) -> bool:
        """Delete a finished job (the caller cancels an active one first) and, after commit,
        its artifacts. A worker still on it loses its next compare-and-set and stops."""
        if not self.jobs.delete(job_id):
            return False
        self._remove_after_commit(job_folder(job_id))
        return True

    def _remove_after_commit(self, key: str) -> None:
        def remove() -> None:
            try:
                self.storage.delete_tree(key)
            except Exception:  # the row is gone already: a leftover file is only wasted space
                log.exception("deleted row's files at %s were not removed", key)

        after_commit(self.session, remove)


def _refuse_in_use(what: str, job_ids: list[str]) -> None:
    if job_ids:
        raise Conflict(
            f"{what} is used by queued or running job(s) {', '.join(job_ids)}; cancel or "
            "delete them (or wait until they finish), then delete it"
        )
