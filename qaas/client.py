"""``qaas.Client``: upload, submit, wait, download and list, with typed objects."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from qaas._http import PAGE_MAX, Api
from qaas.config import resolve
from qaas.errors import InvalidRequest
from qaas.resources import Dataset, Job, Model

PathLike = str | os.PathLike[str]
UPLOAD_SUFFIXES = (".onnx", ".pt2", ".npz", ".tar")


def _bits(value: str | int | None, *, allow_float: bool) -> int | None:
    """``"int8"`` -> 8; ``"float"`` (activations only) -> None: the spec's bit-width fields."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if allow_float and text in ("float", "none", "fp32"):
        return None
    match = re.fullmatch(r"(?:int)?(\d+)", text)
    if match is None:
        kinds = "intN or float" if allow_float else "intN"
        raise InvalidRequest(0, "invalid_request", f"bit-width {value!r}: expected {kinds}")
    return int(match.group(1))


def _is_path(value: PathLike) -> bool:
    """A file to upload, or a name that only a path would have (so a typo is not an id)."""
    if isinstance(value, os.PathLike):
        return True
    return Path(value).is_file() or "/" in value or value.endswith(UPLOAD_SUFFIXES)


class Client:
    """A client of one qaas server.

    ``url`` and ``api_key`` default to ``QAAS_URL`` / ``QAAS_API_KEY``, then to the file
    ``qaas configure`` writes. Requests answered 429 or 503 are retried after their Retry-After
    (``max_retries`` times, each wait at most ``max_retry_wait`` s); see ``qaas.errors`` for
    what is raised. ``transport`` is httpx's (e.g. to talk to an app in the same process).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, api_key = resolve(url, api_key)
        self.api = Api(
            url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
            transport=transport,
        )

    @property
    def url(self) -> str:
        return self.api.url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.api.close()

    def whoami(self) -> dict[str, Any]:
        """The key's tenant (``id``, ``name``): a cheap check of the URL and key."""
        return self.api.json("GET", "/v1/me")

    # uploads
    def upload_model(self, path: PathLike, external_data: Sequence[str] = ()) -> Model:
        """An ONNX model or torch.export archive (.pt2), streamed. ``external_data``: the
        files an ONNX model's initializers name (relative to its folder), sent with it."""
        return Model.bound(self.api, self.api.upload("/v1/models", path, external_data))

    def upload_dataset(self, path: PathLike) -> Dataset:
        """An ``.npz`` whose arrays are named after the model's inputs (and ``labels``)."""
        return Dataset.bound(self.api, self.api.upload("/v1/datasets", path))

    # reads
    def get_job(self, job_id: str) -> Job:
        return Job.bound(self.api, self.api.json("GET", f"/v1/jobs/{job_id}"))

    def get_model(self, model_id: str) -> Model:
        return Model.bound(self.api, self.api.json("GET", f"/v1/models/{model_id}"))

    def get_dataset(self, dataset_id: str) -> Dataset:
        return Dataset.bound(self.api, self.api.json("GET", f"/v1/datasets/{dataset_id}"))

    def jobs(
        self,
        status: str | Iterable[str] | None = None,
        limit: int | None = None,
        created_after: datetime | None = None,
        *,
        page_size: int = PAGE_MAX,
    ) -> Iterator[Job]:
        """This tenant's jobs, newest first, ``page_size`` a request until ``limit`` (None:
        all). ``status``: one of queued, running, succeeded, failed, cancelled, or several."""
        wanted = [status] if isinstance(status, str) else list(status or [])
        params = {"status": wanted or None, "created_after": _iso(created_after)}
        for item in self.api.pages("/v1/jobs", params, limit, page_size):
            # the server filters; an older one ignores the parameter, so check here too
            if not wanted or item["status"] in wanted:
                yield Job.bound(self.api, item)

    def models(
        self,
        limit: int | None = None,
        created_after: datetime | None = None,
        *,
        page_size: int = PAGE_MAX,
    ) -> Iterator[Model]:
        params = {"created_after": _iso(created_after)}
        for item in self.api.pages("/v1/models", params, limit, page_size):
            yield Model.bound(self.api, item)

    def datasets(
        self,
        limit: int | None = None,
        created_after: datetime | None = None,
        *,
        page_size: int = PAGE_MAX,
    ) -> Iterator[Dataset]:
        params = {"created_after": _iso(created_after)}
        for item in self.api.pages("/v1/datasets", params, limit, page_size):
            yield Dataset.bound(self.api, item)

    # jobs
    def submit(
        self,
        model: Model | PathLike,
        calibration: Dataset | PathLike | None = None,
        evaluation: Dataset | PathLike | None = None,
        *,
        training: Dataset | PathLike | None = None,
        validation: Dataset | PathLike | None = None,
        weights: str | int = "int8",
        activations: str | int | None = "int8",
        pipeline: str | Sequence[str] | None = None,
        quantization: dict[str, Any] | None = None,
        target: str | None = None,
        max_accuracy_drop: float | None = None,
        energy_profile: dict[str, Any] | PathLike | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """Queue a job. ``model`` and the datasets: an uploaded ``Model``/``Dataset``, its id,
        or a path (uploaded first). ``weights``/``activations``: ``"int8"``, ``"int4"``...
        (activations also ``"float"``); ``pipeline``: step names (``"cle,adaround"``) or
        ``"auto"``; ``**options``: any other field of the quantization spec (e.g.
        ``calibration_method="mse"``). ``quantization``, a whole spec as a dict, comes before
        ``weights``/``activations`` and after ``pipeline`` and ``**options``.
        ``max_accuracy_drop`` is a fraction of top-1 (0.01 = one point). The same
        ``idempotency_key`` (a fresh one by default) gives back the same job, so a retried
        submission never queues twice."""
        spec = {
            "weight_bits": _bits(weights, allow_float=False),
            "activation_bits": _bits(activations, allow_float=True),
            **(quantization or {}),
        }
        if pipeline is not None:
            steps = pipeline.split(",") if isinstance(pipeline, str) else pipeline
            spec["pipeline"] = [step.strip() for step in steps if step.strip()]
        spec.update(options)
        body: dict[str, Any] = {
            "model_id": self._model_id(model),
            "calibration_id": self._dataset_id(calibration),
            "evaluation_id": self._dataset_id(evaluation),
            "quantization": spec,
            "max_accuracy_drop": max_accuracy_drop,
        }
        # sent only when given, so this SDK also talks to a server without these fields
        optional = {
            "training_id": self._dataset_id(training),
            "validation_id": self._dataset_id(validation),
            "target": target,
            "energy_profile": _profile(energy_profile),
            "callback_url": callback_url,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        key = idempotency_key or str(uuid.uuid4())
        data = self.api.json(
            "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}, idempotent=True
        )
        return Job.bound(self.api, data)

    def _model_id(self, model: Model | PathLike) -> str:
        if isinstance(model, Model):
            return model.id
        return self.upload_model(model).id if _is_path(model) else str(model)

    def _dataset_id(self, dataset: Dataset | PathLike | None) -> str | None:
        if dataset is None or isinstance(dataset, Dataset):
            return None if dataset is None else dataset.id
        return self.upload_dataset(dataset).id if _is_path(dataset) else str(dataset)

    def delete_job(self, job_id: str) -> None:
        """The job and its artifacts; a queued or running job is cancelled first."""
        self.api.request("DELETE", f"/v1/jobs/{job_id}")

    def delete_model(self, model_id: str) -> None:
        """Frees its quota; refused (``Conflict``) while a queued or running job needs it."""
        self.api.request("DELETE", f"/v1/models/{model_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Frees its quota; refused (``Conflict``) while a queued or running job needs it."""
        self.api.request("DELETE", f"/v1/datasets/{dataset_id}")

    # keys
    def keys(self) -> list[dict[str, Any]]:
        """This tenant's API keys (id, prefix, created_at, revoked_at; never the keys)."""
        return self.api.json("GET", "/v1/keys")

    def create_key(self) -> dict[str, Any]:
        """A new key for this tenant; its ``key`` is in this answer only."""
        return self.api.json("POST", "/v1/keys")

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke one of this tenant's keys (the one this client uses included)."""
        return self.api.json("DELETE", f"/v1/keys/{key_id}")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _profile(profile: dict[str, Any] | PathLike | None) -> dict[str, Any] | None:
    """An energy profile: the dict itself, or read from a JSON file (the server checks it)."""
    if profile is None or isinstance(profile, dict):
        return profile
    try:
        loaded = json.loads(Path(profile).read_text())
    except (OSError, ValueError) as error:
        raise InvalidRequest(0, "invalid_request", f"energy profile {profile}: {error}") from None
    if not isinstance(loaded, dict):
        raise InvalidRequest(0, "invalid_request", f"energy profile {profile}: not an object")
    return loaded
