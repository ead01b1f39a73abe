"""Jobs, models and datasets as objects with their verbs: the API's answers (``qaas.types``)
plus the client they came from."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, PrivateAttr

from qaas._http import Api
from qaas.errors import JobFailed, QaasError, WaitTimeout
from qaas.progress import TextProgress
from qaas.types import TERMINAL, DatasetInfo, JobInfo, ModelInfo

ProgressCallback = Callable[[JobInfo], None]


class _Bound(BaseModel):
    """The API client a resource was read with (private: not part of its data)."""

    _api: Api | None = PrivateAttr(default=None)

    @classmethod
    def bound(cls, api: Api, data: dict[str, Any]) -> Self:
        item = cls.model_validate(data)
        item._api = api
        return item

    @property
    def api(self) -> Api:
        if self._api is None:
            raise QaasError(0, "unbound", "this object was not read through a qaas.Client")
        return self._api


class Job(_Bound, JobInfo):
    """A job: ``status``, ``phase``, ``overall_progress``, ``queue_position``... as last read;
    ``refresh()`` reads it again, ``wait()`` until it ends."""

    _report: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> Job:
        fresh = Job.model_validate(self.api.json("GET", f"/v1/jobs/{self.id}"))
        for name in JobInfo.model_fields:
            setattr(self, name, getattr(fresh, name))
        return self

    def wait(
        self,
        timeout: float | None = None,
        progress: bool | ProgressCallback = True,
        *,
        poll_interval: float = 2.0,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job ends. ``progress``: True prints a progress line to stderr, or a
        callable gets the job at each poll. A failed or cancelled job raises ``JobFailed``
        (unless ``raise_on_failure=False``); past ``timeout`` seconds, ``WaitTimeout`` (the job
        goes on running: wait again, or ``cancel()``)."""
        report = TextProgress() if progress is True else progress or None
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = min(0.25, poll_interval)
        while True:
            self.refresh()
            if report is not None:
                report(self)
            if self.done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(self, timeout or 0.0)
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(0.0, pause))
            interval = min(poll_interval, interval * 1.5)
        if raise_on_failure and self.status != "succeeded":
            raise JobFailed(self)
        return self

    @property
    def report(self) -> dict[str, Any]:
        """The report (``report.json``) of a succeeded job; read once, then kept."""
        if self._report is None:
            self._report = self.api.json("GET", f"/v1/jobs/{self.id}/report")
        return self._report

    def download(
        self, directory: str | os.PathLike[str], names: Iterable[str] | None = None
    ) -> dict[str, Path]:
        """Every artifact (or those ``names``) into ``directory``, each checked against its
        sha256 before it gets its name; returns name -> path."""
        return self.api.download(self.id, directory, names)

    def log_to_mlflow(self, dir: str | os.PathLike[str] | None = None, **kw: Any) -> str:
        """This finished job as an MLflow run (``qaas.mlflow.log_job``; ``kw``: its
        ``tracking_uri``, ``experiment``, ``run_name``); returns the run id. ``dir``: where its
        files were downloaded; None downloads them to a temporary folder first. Needs the
        ``mlflow`` extra."""
        from qaas.mlflow import log_job

        job_json = self.model_dump(mode="json")
        if dir is not None:
            return log_job(job_json, Path(dir), **kw)
        with tempfile.TemporaryDirectory(prefix="qaas-") as scratch:
            self.download(scratch)
            return log_job(job_json, Path(scratch), **kw)

    def cancel(self) -> Job:
        """A queued job never starts; a running one stops at its next progress report."""
        data = self.api.json("POST", f"/v1/jobs/{self.id}/cancel", idempotent=True)
        for name, value in Job.model_validate(data):
            setattr(self, name, value)
        return self

    def delete(self) -> None:
        """The job and its artifacts; a queued or running job is cancelled first."""
        self.api.request("DELETE", f"/v1/jobs/{self.id}")


class Model(_Bound, ModelInfo):
    def delete(self) -> None:
        """Frees its quota; refused (``Conflict``) while a queued or running job needs it."""
        self.api.request("DELETE", f"/v1/models/{self.id}")


class Dataset(_Bound, DatasetInfo):
    def delete(self) -> None:
        """Frees its quota; refused (``Conflict``) while a queued or running job needs it."""
        self.api.request("DELETE", f"/v1/datasets/{self.id}")
