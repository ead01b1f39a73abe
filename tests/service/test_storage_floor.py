"""The free-space floor (``QAAS_STORAGE_MIN_FREE_BYTES``), on any machine: with less free than
it, uploads are 507 ``storage_full`` and store nothing, a job fails as ``storage_full`` and
leaves no artifacts; with space again both work. (tests/faults fills a real tmpfs.)"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.service.conftest import stored_under, upload
from worker.runner import run_job
from worker.runtime import Runtime

NO_DISK_IS_THIS_BIG = 1 << 60


@pytest.fixture(scope="module")
def full(settings):
    """The same deployment, but every byte of the disk counts as the reserve."""
    return settings.model_copy(update={"storage_min_free_bytes": NO_DISK_IS_THIS_BIG})


def test_uploads_are_507_and_store_nothing(full, settings, make_tenant, tiny_model, tiny_data):
    tenant = make_tenant()
    staging = settings.artifact_root / ".staging"
    staging.mkdir(parents=True, exist_ok=True)  # as a server that ran before this test made it
    before = set(staging.iterdir())
    with TestClient(create_app(full)) as api:
        for route, path in (("/v1/models", tiny_model), ("/v1/datasets", tiny_data[0])):
            response = upload(api, route, path, tenant)
            assert response.status_code == 507, response.text
            body = response.json()
            assert body["error"] == "storage_full" and "Try again later" in body["detail"]
            assert int(response.headers["Retry-After"]) > 0
        assert api.get("/v1/models", headers=tenant).json() == []
        assert api.get("/healthz").status_code == 200
    assert set(staging.iterdir()) == before


def test_job_fails_as_storage_full_then_runs_once_there_is_space(
    api, full, settings, storage, make_tenant, tiny_model
):
    tenant = make_tenant()
    model = upload(api, "/v1/models", tiny_model, tenant).json()
    body = {"model_id": model["id"], "quantization": {"activation_bits": None}}
    first = api.post("/v1/jobs", json=body, headers=tenant).json()
    runtime = Runtime.build(full, pooled=False)
    try:
        assert run_job(runtime, first["id"], "floor-test").status == "failed"
    finally:
        runtime.engine.dispose()
    job = api.get(f"/v1/jobs/{first['id']}", headers=tenant).json()
    assert job["error"]["kind"] == "storage_full" and "storage is full" in job["error"]["detail"]
    assert not stored_under(storage, f"jobs/{first['id']}")
    assert not list((settings.artifact_root / ".staging").glob(f"job-{first['id']}-*"))
    second = api.post("/v1/jobs", json=body, headers=tenant).json()
    runtime = Runtime.build(settings, pooled=False)
    try:
        assert run_job(runtime, second["id"], "floor-test").status == "succeeded"
    finally:
        runtime.engine.dispose()
