"""A Python client for the qaas API; it needs only httpx.

client = QaasClient("http://127.0.0.1:8000", api_key)
model = client.upload_model("model.onnx")
data = client.upload_dataset("calibration.npz")
job = client.submit(model["id"], calibration_id=data["id"], quantization={"weight_bits": 8})
job = client.wait(job["id"], timeout=600)
client.download(job["id"], "out/")
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
CHUNK = 1024 * 1024


class QaasError(Exception):
    """An error answer from the API (``status`` 4xx/5xx), or no answer (``status`` 0)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status}, {code})" if status else detail)
        self.status = status
        self.code = code
        self.detail = detail

    @property
    def client_fault(self) -> bool:
        return 400 <= self.status < 500


class WaitTimeout(QaasError):
    def __init__(self, job: dict[str, Any], timeout: float) -> None:
        super().__init__(0, "timeout", f"job {job['id']} still {job['status']} after {timeout:g} s")
        self.job = job


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            yield block


TAR_BLOCK = 512


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _tar_size(files: list[tuple[str, Path]]) -> int:
    total = 2 * TAR_BLOCK  # the end-of-archive marker
    for name, path in files:
        size = path.stat().st_size
        total += len(_tar_header(name, size)) + -(-size // TAR_BLOCK) * TAR_BLOCK
    return total


def _tar_stream(files: list[tuple[str, Path]]) -> Iterator[bytes]:
    """An uncompressed tar, produced while it is sent (no copy of the model on disk)."""
    for name, path in files:
        size = path.stat().st_size
        yield _tar_header(name, size)
        yield from _chunks(path)
        if size % TAR_BLOCK:
            yield b"\0" * (TAR_BLOCK - size % TAR_BLOCK)
    yield b"\0" * (2 * TAR_BLOCK)


class QaasClient:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> QaasClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise QaasError(
                0, "unreachable", f"cannot reach {self.http.base_url}: {error}"
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
                code, detail = body.get("error", "error"), body.get("detail", response.text)
            except ValueError:
                code, detail = "error", response.text[:500]
            raise QaasError(response.status_code, code, str(detail))
        return response

    def _upload(self, route: str, path: str | os.PathLike[str]) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise QaasError(0, "not_found", f"file not found: {path}")
        response = self._request(
            "POST",
            route,
            params={"filename": path.name},
            content=_chunks(path),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
        )
        return response.json()

    def upload_model(
        self, path: str | os.PathLike[str], external_data: Sequence[str] = ()
    ) -> dict[str, Any]:
        """``external_data``: the model's external-data locations (relative to its folder);
        with any, the model and those files go up as one uncompressed tar, streamed."""
        if not external_data:
            return self._upload("/v1/models", path)
        path = Path(path)
        files = [(path.name, path)] + [(name, path.parent / name) for name in external_data]
        for _, file in files:
            if not file.is_file():
                raise QaasError(0, "not_found", f"file not found: {file}")
        response = self._request(
            "POST",
            "/v1/models",
            params={"filename": path.name},
            content=_tar_stream(files),
            headers={
                "Content-Type": "application/x-tar",
                "Content-Length": str(_tar_size(files)),
            },
        )
        return response.json()

    def upload_dataset(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return self._upload("/v1/datasets", path)

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
        """Submit a job; retried on connection errors, safe thanks to the Idempotency-Key.

        ``training_id`` (and optionally ``validation_id``) feed the ``qat`` step;
        ``energy_profile`` is a dict of the engine's EnergyProfile fields for the report.
        """
        body: dict[str, Any] = {
            "model_id": model_id,
            "calibration_id": calibration_id,
            "evaluation_id": evaluation_id,
            "quantization": quantization or {},
            "max_accuracy_drop": max_accuracy_drop,
        }
        # Sent only when given, so a client of this version also talks to an older server.
        for name, value in (
            ("training_id", training_id),
            ("validation_id", validation_id),
            ("energy_profile", energy_profile),
        ):
            if value is not None:
                body[name] = value
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        for attempt in range(retries + 1):
            try:
                return self._request("POST", "/v1/jobs", json=body, headers=headers).json()
            except QaasError as error:
                if error.status != 0 or attempt == retries:
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def delete_job(self, job_id: str) -> None:
        """Delete the job and its artifacts; a queued or running job is cancelled first."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def delete_model(self, model_id: str) -> None:
        """Delete the model and free its quota; 409 while a queued or running job needs it."""
        self._request("DELETE", f"/v1/models/{model_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete the dataset and free its quota; 409 while a queued or running job needs it."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def report(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}/report").json()

    def keys(self) -> list[dict[str, Any]]:
        """This tenant's API keys (id, prefix, created_at, revoked_at; never the keys)."""
        return self._request("GET", "/v1/keys").json()

    def create_key(self) -> dict[str, Any]:
        """A new key for this tenant; its ``key`` is in this answer only."""
        return self._request("POST", "/v1/keys").json()

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke one of this tenant's keys (the one this client uses included)."""
        return self._request("DELETE", f"/v1/keys/{key_id}").json()

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is succeeded, failed or cancelled; WaitTimeout after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress and job.get("phase"):
                on_progress(job["phase"], job.get("progress") or 0.0)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, timeout or 0.0)
            time.sleep(poll_interval)

    def download(
        self, job_id: str, outdir: str | os.PathLike[str], names: list[str] | None = None
    ) -> dict[str, Path]:
        """Stream each artifact to OUTDIR, check its sha256, and only then give it its name."""
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        listing = self._request("GET", f"/v1/jobs/{job_id}/artifacts").json()
        written = {}
        for entry in listing:
            if names is not None and entry["name"] not in names:
                continue
            written[entry["name"]] = self._download_one(job_id, entry, outdir)
        return written

    def _download_one(self, job_id: str, entry: dict[str, Any], outdir: Path) -> Path:
        name = Path(entry["name"]).name
        target = outdir / name
        partial = outdir / f".{name}.part"
        digest = hashlib.sha256()
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
                if response.status_code >= 400:
                    response.read()
                    self._request("GET", f"/v1/jobs/{job_id}/artifacts/{name}")  # raises
                with partial.open("wb") as handle:
                    for block in response.iter_bytes(CHUNK):
                        digest.update(block)
                        handle.write(block)
        except httpx.HTTPError as error:
            partial.unlink(missing_ok=True)
            raise QaasError(0, "unreachable", f"download of {name} failed: {error}") from None
        if digest.hexdigest() != entry["sha256"]:
            partial.unlink(missing_ok=True)
            raise QaasError(0, "corrupt", f"{name}: sha256 does not match the server's record")
        os.replace(partial, target)
        return target
