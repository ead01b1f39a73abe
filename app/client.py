"""Deprecated: use the SDK, ``import qaas`` (``qaas.Client``, typed ``Job``/``Model``/
``Dataset`` objects). ``QaasClient`` is kept for scripts written against it: the same methods,
answering dicts, made by ``qaas.Client``."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

import qaas
from qaas.errors import QaasError, WaitTimeout
from qaas.types import JobInfo

__all__ = ["QaasClient", "QaasError", "WaitTimeout"]
TERMINAL = qaas.TERMINAL


class QaasClient:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        warnings.warn(
            "app.client.QaasClient is deprecated: use qaas.Client (import qaas)",
            DeprecationWarning,
            stacklevel=2,
        )
        self.sdk = qaas.Client(url, api_key, timeout=timeout, transport=transport)

    def __enter__(self) -> QaasClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.sdk.close()

    def upload_model(
        self, path: str | os.PathLike[str], external_data: Sequence[str] = ()
    ) -> dict[str, Any]:
        return self.sdk.upload_model(path, external_data).model_dump(mode="json")

    def upload_dataset(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return self.sdk.upload_dataset(path).model_dump(mode="json")

    def submit(
        self,
        model_id: str,
        *,
        calibration_id: str | None = None,
        evaluation_id: str | None = None,
        training_id: str | None = None,
        validation_id: str | None = None,
        quantization: dict[str, Any] | None = None,
        max_accuracy_drop: float | None = None,
        energy_profile: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        retries: int = 3,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model_id": model_id,
            "calibration_id": calibration_id,
            "evaluation_id": evaluation_id,
            "quantization": quantization or {},
            "max_accuracy_drop": max_accuracy_drop,
        }
        for name, value in (
            ("training_id", training_id),
            ("validation_id", validation_id),
            ("energy_profile", energy_profile),
        ):
            if value is not None:
                body[name] = value
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return self.sdk.api.json("POST", "/v1/jobs", json=body, headers=headers, idempotent=True)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.sdk.api.json("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.sdk.api.json("POST", f"/v1/jobs/{job_id}/cancel", idempotent=True)

    def delete_job(self, job_id: str) -> None:
        self.sdk.api.request("DELETE", f"/v1/jobs/{job_id}")

    def delete_model(self, model_id: str) -> None:
        self.sdk.api.request("DELETE", f"/v1/models/{model_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self.sdk.api.request("DELETE", f"/v1/datasets/{dataset_id}")

    def report(self, job_id: str) -> dict[str, Any]:
        return self.sdk.api.json("GET", f"/v1/jobs/{job_id}/report")

    def keys(self) -> list[dict[str, Any]]:
        return self.sdk.keys()

    def create_key(self) -> dict[str, Any]:
        return self.sdk.create_key()

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self.sdk.revoke_key(key_id)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> dict[str, Any]:
        def report(job: JobInfo) -> None:
            if on_progress is not None and job.phase:
                on_progress(job.phase, job.progress)

        job = self.sdk.get_job(job_id)
        job.wait(timeout, report, poll_interval=poll_interval, raise_on_failure=False)
        return job.model_dump(mode="json")

    def download(
        self, job_id: str, outdir: str | os.PathLike[str], names: list[str] | None = None
    ) -> dict[str, Path]:
        return self.sdk.api.download(job_id, outdir, names)
