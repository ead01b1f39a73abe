"""Per-tenant limits and request hygiene: unknown fields refused, the storage quota (413), jobs
queued or running at once and submissions per minute (429 with Retry-After), all in the one
error envelope. Jobs here go to a queue no worker reads, so they stay queued."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.service.conftest import upload


@pytest.fixture(scope="module")
def limited(settings, tiny_model):
    size = tiny_model.stat().st_size
    limits = settings.model_copy(
        update={
            "queue": f"qaas-limits-{uuid.uuid4().hex[:8]}",
            "quota_stored_bytes": size * 2 + size // 2,  # two models fit, not three
            "quota_active_jobs": 3,
            "submissions_per_minute": 4,
        }
    )
    with TestClient(create_app(limits)) as client:
        yield client


def envelope(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    return body["detail"]


def weight_only(model_id: str) -> dict:
    return {"model_id": model_id, "quantization": {"activation_bits": None}}


def test_unknown_fields_are_refused(limited, make_tenant, tiny_model):
    tenant = make_tenant()
    model = upload(limited, "/v1/models", tiny_model, tenant).json()
    body = {**weight_only(model["id"]), "priority": "high"}
    assert "priority" in envelope(limited.post("/v1/jobs", json=body, headers=tenant), 422,
                                  "invalid_request")  # fmt: skip
    nested = weight_only(model["id"])
    nested["quantization"]["bits"] = 8
    assert "bits" in envelope(limited.post("/v1/jobs", json=nested, headers=tenant), 422,
                              "invalid_request")  # fmt: skip


def test_storage_quota_is_413(limited, make_tenant, tiny_model):
    tenant, other = make_tenant(), make_tenant()
    for _ in range(2):
        assert upload(limited, "/v1/models", tiny_model, tenant).status_code == 201
    detail = envelope(upload(limited, "/v1/models", tiny_model, tenant), 413, "quota_exceeded")
    assert "storage quota" in detail
    assert upload(limited, "/v1/models", tiny_model, other).status_code == 201  # per tenant


def test_active_jobs_quota_is_429(limited, make_tenant, tiny_model):
    tenant = make_tenant()
    model = upload(limited, "/v1/models", tiny_model, tenant).json()
    for _ in range(3):
        assert (
            limited.post("/v1/jobs", json=weight_only(model["id"]), headers=tenant).status_code
            == 202
        )
    response = limited.post("/v1/jobs", json=weight_only(model["id"]), headers=tenant)
    assert "queued or running" in envelope(response, 429, "too_many_requests")
    assert int(response.headers["Retry-After"]) > 0
    job_id = limited.get("/v1/jobs", headers=tenant).json()[0]["id"]
    assert limited.post(f"/v1/jobs/{job_id}/cancel", headers=tenant).status_code == 200
    assert (
        limited.post("/v1/jobs", json=weight_only(model["id"]), headers=tenant).status_code == 202
    )


def test_submission_rate_is_limited(limited, make_tenant, tiny_model):
    tenant = make_tenant()
    model = upload(limited, "/v1/models", tiny_model, tenant).json()
    for _ in range(4):
        job = limited.post("/v1/jobs", json=weight_only(model["id"]), headers=tenant).json()
        limited.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant)  # stay under the active cap
    response = limited.post("/v1/jobs", json=weight_only(model["id"]), headers=tenant)
    assert "a minute" in envelope(response, 429, "too_many_requests")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
