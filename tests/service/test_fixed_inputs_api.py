"""A model that branches on a sample rate uploads, says which input decides, and takes jobs only
once they fix it (``quantization.fixed_inputs``); its data may leave that input out."""

from __future__ import annotations

import numpy as np
import onnx

from tests.engine.test_fixed_inputs import _sample_rate_model
from tests.service.conftest import upload


def _uploaded(api, tenant, tmp_path, **arrays) -> tuple[str, str]:
    path = tmp_path / "vad_like.onnx"
    onnx.save(_sample_rate_model(), path)
    answer = upload(api, "/v1/models", path, tenant)
    assert answer.status_code == 201, answer.text
    model = answer.json()
    assert {i["name"]: i["decides_control_flow"] for i in model["inputs"]} == {
        "x": False,
        "sr": True,
    }
    assert any("decide a branch" in note for note in model["notes"])
    data = tmp_path / "calibration.npz"
    np.savez(data, x=np.zeros((8, 4), np.float32), **arrays)
    dataset = upload(api, "/v1/datasets", data, tenant)
    assert dataset.status_code == 201, dataset.text
    return model["id"], dataset.json()["id"]


def test_a_job_must_fix_the_deciding_input(api, make_tenant, tmp_path):
    tenant = make_tenant()
    model, dataset = _uploaded(api, tenant, tmp_path)  # the data holds no sr
    body = {"model_id": model, "calibration_id": dataset}
    refused = api.post("/v1/jobs", json=body, headers=tenant)
    assert refused.status_code == 422
    assert '"sr": VALUE' in refused.json()["detail"]
    assert "--fix-input sr=VALUE" in refused.json()["detail"]
    fixed = {**body, "quantization": {"fixed_inputs": {"sr": 16000}}}
    accepted = api.post("/v1/jobs", json=fixed, headers=tenant)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["quantization"]["fixed_inputs"] == {"sr": 16000}


def test_data_holding_another_value_of_the_fixed_input_is_422(api, make_tenant, tmp_path):
    tenant = make_tenant()
    model, dataset = _uploaded(api, tenant, tmp_path, sr=np.full(8, 8000, np.int64))
    body = {
        "model_id": model,
        "calibration_id": dataset,
        "quantization": {"fixed_inputs": {"sr": 16000}},
    }
    refused = api.post("/v1/jobs", json=body, headers=tenant)
    assert refused.status_code == 422
    assert "fixed at 16000, but the data holds 8000" in refused.json()["detail"]
