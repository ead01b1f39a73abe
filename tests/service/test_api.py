"""The API against the real Postgres and Redis: uploads, job submission and every kind of bad
input, which must get a 4xx in the error envelope, never a 500, and change nothing."""

from __future__ import annotations

import pickle

import anyio
import httpx
import numpy as np
import pytest

from tests.service.conftest import upload


@pytest.fixture
def tenant(make_tenant):
    return make_tenant()


@pytest.fixture
def model(api, tiny_model, tenant):
    response = upload(api, "/v1/models", tiny_model, tenant)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def calibration(api, tiny_data, tenant):
    response = upload(api, "/v1/datasets", tiny_data[0], tenant)
    assert response.status_code == 201, response.text
    return response.json()


def staged_files(settings):
    return sorted(p.name for p in (settings.artifact_root / ".staging").iterdir())


def assert_envelope(response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    if code:
        assert body["error"] == code
    return body["detail"]


def test_health_ready_and_docs(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json()["status"] == "ready"
    assert api.get("/docs").status_code == 200
    assert "/v1/jobs" in api.get("/openapi.json").json()["paths"]


def test_model_upload_records_sha256_and_inputs(api, model, tiny_model, tenant):
    import hashlib

    assert model["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert model["inputs"] == [
        {
            "name": "input",
            "dtype": "float32",
            "shape": [None, 1, 8, 8],
            "decides_control_flow": False,
        }
    ]
    assert api.get(f"/v1/models/{model['id']}", headers=tenant).json()["id"] == model["id"]
    assert model["id"] in [m["id"] for m in api.get("/v1/models", headers=tenant).json()]


def test_missing_or_bad_key_is_401(api):
    assert_envelope(api.get("/v1/models"), 401, "unauthorized")
    assert_envelope(api.get("/v1/models", headers={"X-API-Key": "qaas_nope"}), 401)


def test_x_api_key_header_is_accepted(api, tenant):
    key = tenant["Authorization"].split()[1]
    assert api.get("/v1/me", headers={"X-API-Key": key}).status_code == 200


def test_not_a_model_is_422_naming_the_cause(api, tenant, tmp_path, settings):
    before = staged_files(settings)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf at all" * 10)
    detail = assert_envelope(upload(api, "/v1/models", junk, tenant), 422, "invalid_input")
    assert "junk.onnx" in detail and "ONNX" in detail
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    detail = assert_envelope(upload(api, "/v1/models", pickled, tenant), 422)
    assert "pickle" in detail
    assert staged_files(settings) == before
    assert api.get("/v1/models", headers=tenant).json() == []


def test_oversized_upload_is_413_and_nothing_stored(api, tenant, settings):
    before = staged_files(settings)
    body = b"\0" * (settings.max_model_bytes + 1)
    response = api.post("/v1/models", content=body, headers=tenant)
    assert_envelope(response, 413, "payload_too_large")
    assert staged_files(settings) == before
    assert api.get("/v1/models", headers=tenant).json() == []


def test_oversized_stream_is_refused_before_it_is_read(api, tenant, settings):
    """No Content-Length (chunked): the cap is enforced while reading, long before the end."""
    sent = 0
    total_chunks = 400  # 400 x 64 KiB = 25 MiB against a 2 MB cap

    async def body():
        nonlocal sent
        for _ in range(total_chunks):
            sent += 1
            yield b"\0" * 65536

    async def post():
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/models", content=body(), headers=tenant)

    response = anyio.run(post)
    assert_envelope(response, 413)
    assert sent < total_chunks // 4
    assert staged_files(settings) == []


def test_dataset_upload_and_bad_datasets(api, tenant, tmp_path, calibration):
    assert calibration["arrays"]["input"] == {"shape": [64, 1, 8, 8], "dtype": "float32"}
    objects = tmp_path / "objects.npz"
    np.savez(objects, input=np.array([{"a": 1}], dtype=object))
    assert "pickled" in assert_envelope(upload(api, "/v1/datasets", objects, tenant), 422)
    text = tmp_path / "text.npz"
    text.write_text("input,1,2,3")
    assert ".npz" in assert_envelope(upload(api, "/v1/datasets", text, tenant), 422)


def job_body(model, calibration=None, **quantization):
    return {
        "model_id": model["id"],
        "calibration_id": calibration["id"] if calibration else None,
        "quantization": quantization,
    }


def test_submit_and_cancel_a_queued_job(api, tenant, model, calibration):
    response = api.post("/v1/jobs", json=job_body(model, calibration), headers=tenant)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["quantization"]["weight_bits"] == 8
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant).json()
    assert cancelled["status"] == "cancelled" and cancelled["error"]["kind"] == "cancelled"
    again = api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant)
    assert again.status_code == 200
    assert_envelope(api.get(f"/v1/jobs/{job['id']}/artifacts", headers=tenant), 409, "conflict")


def test_idempotency_key(api, tenant, model, calibration):
    body = job_body(model, calibration)
    headers = {**tenant, "Idempotency-Key": "same-key-1"}
    first = api.post("/v1/jobs", json=body, headers=headers)
    second = api.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    other = api.post("/v1/jobs", json=job_body(model, calibration, weight_bits=4), headers=headers)
    assert_envelope(other, 409, "conflict")
    fresh = api.post("/v1/jobs", json=body, headers={**tenant, "Idempotency-Key": "other-key"})
    assert fresh.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    "quantization, needle",
    [
        ({"weight_bits": 1}, "weight_bits"),
        ({"weight_bits": 8, "typo_field": 1}, "typo_field"),
        ({"pipeline": ["no_such_step"]}, "no_such_step"),
        ({"calibration_method": "magic"}, "calibration_method"),
        ({"target": "onnxruntime-gpu"}, "onnxruntime-cpu"),
        ({"output_metrics": {"0": "iou"}}, "output_metrics"),
        ({"min_cosine": 1.5}, "min_cosine"),
    ],
)
def test_malformed_spec_is_422(api, tenant, model, calibration, quantization, needle):
    response = api.post(
        "/v1/jobs", json=job_body(model, calibration, **quantization), headers=tenant
    )
    assert needle in assert_envelope(response, 422, "invalid_request")


def test_output_metrics_reach_the_job_spec(api, tenant, model, calibration):
    body = job_body(
        model, calibration, pipeline=["auto"], output_metrics={"0": "sqnr"}, min_sqnr_db=35.0
    )
    response = api.post("/v1/jobs", json=body, headers=tenant)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["quantization"]["output_metrics"] == {"0": "sqnr"}
    assert job["quantization"]["min_sqnr_db"] == 35.0
    stored = api.get(f"/v1/jobs/{job['id']}", headers=tenant).json()
    assert stored["quantization"]["output_metrics"] == {"0": "sqnr"}
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant)


def test_job_target_sets_the_spec_target_and_a_bad_one_is_422(api, tenant, model, calibration):
    body = {**job_body(model, calibration), "target": "onnxruntime-cpu:avx2"}
    job = api.post("/v1/jobs", json=body, headers=tenant).json()
    assert job["quantization"]["target"] == "onnxruntime-cpu:avx2"
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant)
    bad = {**job_body(model, calibration), "target": "tensorrt-fp4"}
    assert "unknown target" in assert_envelope(api.post("/v1/jobs", json=bad, headers=tenant), 422)
    wide = {**job_body(model, calibration, activation_bits=16), "target": "tensorrt"}
    assert "tensorrt takes activations int8" in assert_envelope(
        api.post("/v1/jobs", json=wide, headers=tenant), 422
    )


def test_contradictory_and_malformed_requests_are_422(api, tenant, model):
    detail = assert_envelope(api.post("/v1/jobs", json=job_body(model), headers=tenant), 422)
    assert "calibration" in detail
    assert_envelope(api.post("/v1/jobs", content=b"{not json", headers=tenant), 422)
    assert_envelope(api.post("/v1/jobs", json={"calibration_id": "x"}, headers=tenant), 422)


def test_dataset_that_does_not_fit_the_model_is_422(api, tenant, model, tmp_path):
    cases = {
        "wrong_key.npz": {"image": np.zeros((4, 1, 8, 8), np.float32)},
        "wrong_shape.npz": {"input": np.zeros((4, 3, 8, 8), np.float32)},
        "nan.npz": {"input": np.full((4, 1, 8, 8), np.nan, np.float32)},
    }
    for name, arrays in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        dataset = upload(api, "/v1/datasets", path, tenant).json()
        response = api.post("/v1/jobs", json=job_body(model, dataset), headers=tenant)
        detail = assert_envelope(response, 422, "invalid_input")
        assert "does not fit" in detail, name
    assert api.get("/v1/jobs", headers=tenant).json() == []


def test_unknown_ids_are_404(api, tenant, model):
    unknown = "0" * 32
    for path in (
        f"/v1/models/{unknown}",
        f"/v1/datasets/{unknown}",
        f"/v1/jobs/{unknown}",
        f"/v1/jobs/{unknown}/artifacts",
        f"/v1/jobs/{unknown}/artifacts/model.quant.onnx",
        f"/v1/jobs/{unknown}/report",
    ):
        assert_envelope(api.get(path, headers=tenant), 404, "not_found")
    assert_envelope(api.post(f"/v1/jobs/{unknown}/cancel", headers=tenant), 404)
    body = {"model_id": unknown, "quantization": {"activation_bits": None}}
    assert_envelope(api.post("/v1/jobs", json=body, headers=tenant), 404)
    body = {"model_id": model["id"], "calibration_id": unknown}
    assert_envelope(api.post("/v1/jobs", json=body, headers=tenant), 404)
    assert_envelope(api.get("/v1/nowhere", headers=tenant), 404)
