"""Deleting models, datasets and jobs through the API: 204, then 404; the files leave storage;
the quota is freed at once; another tenant's id is 404 and deletes nothing; what a queued job
needs is refused with 409; a finished job outlives its model and data; a worker skips a job
whose row is gone. Jobs here go to a queue no worker reads, so they stay queued (a running
job's deletion is in test_distributed)."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from app.core.db import transaction
from app.jobs.tables import Job
from app.main import create_app
from app.models_.tables import Model
from tests.service.conftest import stored_under, upload
from worker.runner import Attempt, JobInputs, run_job
from worker.runtime import Runtime


def unread_queue(settings, **update):
    """The API on a queue of its own, which no worker reads."""
    update["queue"] = f"qaas-deletion-{uuid.uuid4().hex[:8]}"
    return TestClient(create_app(settings.model_copy(update=update)))


@pytest.fixture(scope="module")
def quiet_api(settings):
    with unread_queue(settings) as client:
        yield client


@pytest.fixture(scope="module")
def tight_api(settings, tiny_model):
    """Room for two models, not three."""
    size = tiny_model.stat().st_size
    with unread_queue(settings, quota_stored_bytes=size * 2 + size // 2) as client:
        yield client


@pytest.fixture
def owner(make_tenant):
    return make_tenant()


def uploaded(api, route, path, headers) -> dict:
    response = upload(api, route, path, headers)
    assert response.status_code == 201, response.text
    return response.json()


def submit(api, headers, model, calibration=None) -> dict:
    body = {"model_id": model["id"], "quantization": {"activation_bits": None}}
    if calibration is not None:
        body = {"model_id": model["id"], "calibration_id": calibration["id"]}
    response = api.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def finish_with_artifacts(sessions, storage, job_id: str) -> dict[str, bytes]:
    """What a worker leaves: published files and a succeeded row that lists them."""
    files = {"model.quant.onnx": b"quantized", "report.json": b"{}"}
    folder = storage.new_staging_dir("finished-")
    manifest = []
    for name, content in files.items():
        (folder / name).write_bytes(content)
        digest = hashlib.sha256(content).hexdigest()
        manifest.append({"name": name, "size_bytes": len(content), "sha256": digest})
    storage.publish_dir(folder, f"jobs/{job_id}/artifacts")
    with transaction(sessions) as session:
        job = session.get(Job, job_id)
        job.status, job.artifacts, job.report = "succeeded", manifest, {"metrics": {}}
    return files


def test_delete_each_kind_is_204_then_404_and_its_files_go(
    quiet_api, owner, tiny_model, tiny_data, storage, sessions
):
    api = quiet_api
    model = uploaded(api, "/v1/models", tiny_model, owner)
    data = uploaded(api, "/v1/datasets", tiny_data[0], owner)
    job = submit(api, owner, model, data)
    done = submit(api, owner, model)
    finish_with_artifacts(sessions, storage, done["id"])
    assert stored_under(storage, f"models/{model['id']}")
    assert stored_under(storage, f"datasets/{data['id']}")

    for route in (f"/v1/jobs/{done['id']}", f"/v1/jobs/{job['id']}"):  # succeeded, queued
        assert api.delete(route, headers=owner).status_code == 204
        assert api.get(route, headers=owner).status_code == 404
        assert api.delete(route, headers=owner).status_code == 404
    assert not stored_under(storage, f"jobs/{done['id']}")
    for route, folder in (
        (f"/v1/datasets/{data['id']}", f"datasets/{data['id']}"),
        (f"/v1/models/{model['id']}", f"models/{model['id']}"),
    ):
        response = api.delete(route, headers=owner)
        assert response.status_code == 204 and response.content == b""
        assert api.get(route, headers=owner).status_code == 404
        assert not stored_under(storage, folder)
    assert api.get("/v1/models", headers=owner).json() == []
    assert api.get("/v1/datasets", headers=owner).json() == []
    assert api.get("/v1/jobs", headers=owner).json() == []


def test_deleting_frees_quota_at_once(tight_api, owner, tiny_model):
    first = uploaded(tight_api, "/v1/models", tiny_model, owner)
    uploaded(tight_api, "/v1/models", tiny_model, owner)
    refused = upload(tight_api, "/v1/models", tiny_model, owner)
    assert refused.status_code == 413 and refused.json()["error"] == "quota_exceeded"
    assert tight_api.delete(f"/v1/models/{first['id']}", headers=owner).status_code == 204
    assert upload(tight_api, "/v1/models", tiny_model, owner).status_code == 201


def test_another_tenants_ids_are_404_and_nothing_is_deleted(
    quiet_api, owner, make_tenant, tiny_model, tiny_data, storage
):
    intruder = make_tenant()
    model = uploaded(quiet_api, "/v1/models", tiny_model, owner)
    data = uploaded(quiet_api, "/v1/datasets", tiny_data[0], owner)
    job = submit(quiet_api, owner, model, data)
    routes = [f"/v1/jobs/{job['id']}", f"/v1/datasets/{data['id']}", f"/v1/models/{model['id']}"]
    for route in routes:
        response = quiet_api.delete(route, headers=intruder)
        assert response.status_code == 404 and response.json()["error"] == "not_found", route
    for route in routes:
        assert quiet_api.get(route, headers=owner).status_code == 200, route
    assert quiet_api.get(f"/v1/jobs/{job['id']}", headers=owner).json()["status"] == "queued"
    assert stored_under(storage, f"models/{model['id']}")
    assert stored_under(storage, f"datasets/{data['id']}")


def test_what_a_queued_job_needs_is_409_naming_it(quiet_api, owner, tiny_model, tiny_data):
    model = uploaded(quiet_api, "/v1/models", tiny_model, owner)
    data = uploaded(quiet_api, "/v1/datasets", tiny_data[0], owner)
    job = submit(quiet_api, owner, model, data)
    for route in (f"/v1/models/{model['id']}", f"/v1/datasets/{data['id']}"):
        response = quiet_api.delete(route, headers=owner)
        assert response.status_code == 409, response.text
        assert job["id"] in response.json()["detail"]
        assert quiet_api.get(route, headers=owner).status_code == 200
    assert quiet_api.post(f"/v1/jobs/{job['id']}/cancel", headers=owner).status_code == 200
    assert quiet_api.delete(f"/v1/models/{model['id']}", headers=owner).status_code == 204
    assert quiet_api.delete(f"/v1/datasets/{data['id']}", headers=owner).status_code == 204


def test_a_finished_job_outlives_its_model_and_data(
    quiet_api, owner, tiny_model, tiny_data, storage, sessions
):
    model = uploaded(quiet_api, "/v1/models", tiny_model, owner)
    data = uploaded(quiet_api, "/v1/datasets", tiny_data[0], owner)
    job = submit(quiet_api, owner, model, data)
    files = finish_with_artifacts(sessions, storage, job["id"])
    assert quiet_api.delete(f"/v1/models/{model['id']}", headers=owner).status_code == 204
    assert quiet_api.delete(f"/v1/datasets/{data['id']}", headers=owner).status_code == 204
    kept = quiet_api.get(f"/v1/jobs/{job['id']}", headers=owner).json()
    assert kept["status"] == "succeeded"
    assert kept["model_id"] is None and kept["calibration_id"] is None
    for name, content in files.items():
        response = quiet_api.get(f"/v1/jobs/{job['id']}/artifacts/{name}", headers=owner)
        assert response.status_code == 200 and response.content == content


def test_a_worker_skips_a_deleted_job_and_cleans_up_after_one(
    quiet_api, owner, tiny_model, settings, sessions
):
    runtime = Runtime.build(settings, pooled=False)
    assert run_job(runtime, uuid.uuid4().hex, "test-worker").status == "missing"

    # A model deleted under a queued job (a race past the 409): the job fails, never starts.
    model = uploaded(quiet_api, "/v1/models", tiny_model, owner)
    job = submit(quiet_api, owner, model)
    with transaction(sessions) as session:
        session.execute(delete(Model).where(Model.id == model["id"]))
    assert run_job(runtime, job["id"], "test-worker").status == "model deleted"
    failed = quiet_api.get(f"/v1/jobs/{job['id']}", headers=owner).json()
    assert failed["status"] == "failed" and failed["error"]["kind"] == "invalid_input"
    assert failed["attempts"] == 0 and "deleted" in failed["error"]["detail"]

    # An attempt that published after its job was deleted removes what it wrote.
    ghost = uuid.uuid4().hex
    staged = runtime.storage.new_staging_dir("late-")
    (staged / "model.quant.onnx").write_bytes(b"late")
    runtime.storage.publish_dir(staged, f"jobs/{ghost}/artifacts")
    assert stored_under(runtime.storage, f"jobs/{ghost}")
    inputs = JobInputs(
        job_id=ghost, attempt=1, model_key="models/none/original", model_companions=(),
        data_keys={}, spec={}, max_accuracy_drop=None, energy_profile=None,
    )  # fmt: skip
    assert Attempt(runtime, inputs)._lost_at_finish().status == "lost to deletion"
    assert not stored_under(runtime.storage, f"jobs/{ghost}")
    runtime.engine.dispose()
