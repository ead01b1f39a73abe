"""Jobs that use the engine's qat step (training and validation datasets) and a custom energy
profile: checked at submission like the other datasets, stored on the row, and handed to the
engine by the worker. Jobs run in this process (``run_job``), against the real Postgres."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qaas
from app import client_cli
from app.cli import main as cli_main
from tests.service.conftest import upload
from worker.runner import run_job
from worker.runtime import Runtime

CHIP = {
    "name": "test chip",
    "int_add_pj": 0.01,
    "int_mult_pj": 0.05,
    "float_add_pj": 0.5,
    "float_mult_pj": 2.0,
    "access_pj": {"sram": 5.0, "dram": 640.0},
    "weight_level": "dram",
    "activation_level": "sram",
}


@pytest.fixture(scope="module")
def runtime(settings):
    result = Runtime.build(settings, pooled=False)
    yield result
    result.engine.dispose()


@pytest.fixture
def tenant(make_tenant):
    return make_tenant()


@pytest.fixture(scope="module")
def training_files(tmp_path_factory):
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("training-data")
    training, validation = folder / "training.npz", folder / "validation.npz"
    np.savez(
        training,
        input=rng.standard_normal((64, 1, 8, 8)).astype(np.float32),
        labels=rng.integers(0, 10, 64),
    )
    np.savez(
        validation,
        input=rng.standard_normal((16, 1, 8, 8)).astype(np.float32),
        labels=rng.integers(0, 10, 16),
    )
    return training, validation


def uploaded(api, path, tenant, route="/v1/datasets") -> str:
    response = upload(api, route, path, tenant)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def ids(api, tenant, tiny_model, tiny_data, training_files):
    return {
        "model_id": uploaded(api, tiny_model, tenant, "/v1/models"),
        "calibration_id": uploaded(api, tiny_data[0], tenant),
        "training_id": uploaded(api, training_files[0], tenant),
        "validation_id": uploaded(api, training_files[1], tenant),
    }


def qat_body(ids, **extra):
    return {**ids, "quantization": {"pipeline": ["qat"], "qat_epochs": 1}, **extra}


def plain_body(ids, **extra):
    return {"model_id": ids["model_id"], "calibration_id": ids["calibration_id"], **extra}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def run(api, runtime, tenant, job: dict) -> tuple[dict, dict]:
    """Run a queued job here, as a worker would; its final row and its report."""
    assert run_job(runtime, job["id"], "test-in-process").status == "succeeded"
    job = api.get(f"/v1/jobs/{job['id']}", headers=tenant).json()
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant).json()
    return job, report


def submit(api, tenant, body: dict) -> dict:
    response = api.post("/v1/jobs", json=body, headers=tenant)
    assert response.status_code == 202, response.text
    return response.json()


def test_qat_job_trains_on_labelled_data(api, runtime, tenant, ids):
    queued = submit(api, tenant, qat_body(ids))
    assert queued["training_id"] == ids["training_id"]
    assert queued["validation_id"] == ids["validation_id"]
    assert queued["energy_profile"] is None
    job, report = run(api, runtime, tenant, queued)
    assert job["status"] == "succeeded", job["error"]
    assert job["step_reports"]["qat"]["signal"] == "labels"
    assert report["step_reports"]["qat"]["signal"] == "labels"
    assert report["step_reports"]["qat"]["validation_source"] == "--validation"
    assert "qat" in [step["name"] for step in job["steps"]]


def test_custom_energy_profile_changes_the_energy_figures(api, runtime, tenant, ids):
    default = submit(api, tenant, plain_body(ids))
    custom = submit(api, tenant, plain_body(ids, energy_profile=CHIP))
    assert custom["energy_profile"] == CHIP
    _, default_report = run(api, runtime, tenant, default)
    _, custom_report = run(api, runtime, tenant, custom)
    default_energy, custom_energy = default_report["energy"], custom_report["energy"]
    assert custom_energy["profile"]["name"] == "test chip"
    assert custom_energy["profile"]["access_pj"] == CHIP["access_pj"]
    assert default_energy["profile"]["name"] != "test chip"
    assert custom_energy["float_pj"] != default_energy["float_pj"]
    assert custom_energy["quantized_pj"] != default_energy["quantized_pj"]


def test_adaround_without_calibration_data_is_422(api, tenant, ids):
    body = {
        "model_id": ids["model_id"],
        "quantization": {"activation_bits": None, "pipeline": ["cle", "adaround"]},
    }
    detail = error_of(api.post("/v1/jobs", json=body, headers=tenant), 422)["detail"]
    assert "adaround step needs calibration data" in detail and "calibration_id" in detail
    assert api.get("/v1/jobs", headers=tenant).json() == []


def test_qat_without_training_data_is_422(api, tenant, ids):
    body = qat_body({k: v for k, v in ids.items() if k not in ("training_id", "validation_id")})
    detail = error_of(api.post("/v1/jobs", json=body, headers=tenant), 422)["detail"]
    assert "training_id" in detail and "qat" in detail
    assert api.get("/v1/jobs", headers=tenant).json() == []


def test_training_data_without_qat_is_422(api, tenant, ids):
    for field in ("training_id", "validation_id"):
        body = plain_body(ids, **{field: ids[field]})
        detail = error_of(api.post("/v1/jobs", json=body, headers=tenant), 422)["detail"]
        assert field in detail and "qat" in detail


def test_foreign_or_unknown_training_ids_are_404(api, make_tenant, tenant, ids, training_files):
    other = make_tenant()
    foreign = uploaded(api, training_files[0], other)
    for field, value in (
        ("training_id", foreign),
        ("validation_id", foreign),
        ("training_id", "0" * 32),
    ):
        body = qat_body({**ids, field: value})
        error = error_of(api.post("/v1/jobs", json=body, headers=tenant), 404)
        assert error["error"] == "not_found" and value in error["detail"]
    assert api.get("/v1/jobs", headers=tenant).json() == []


def test_training_data_that_does_not_fit_is_422(api, tenant, ids, tmp_path):
    path = tmp_path / "wrong_shape.npz"
    np.savez(path, input=np.zeros((8, 3, 8, 8), np.float32))
    misfit = uploaded(api, path, tenant)
    for field in ("training_id", "validation_id"):
        body = qat_body({**ids, field: misfit})
        detail = error_of(api.post("/v1/jobs", json=body, headers=tenant), 422)["detail"]
        role = field.removesuffix("_id")
        assert f"{role} dataset {misfit} does not fit" in detail


@pytest.mark.parametrize(
    "profile, needle",
    [
        ({"int_add_pj": -1.0}, "finite number >= 0"),
        ({"picojoules": 1.0}, "unknown fields ['picojoules']"),
        ({"weight_level": "l9_cache"}, "'l9_cache' is not one of"),
        ({"access_pj": 5}, "energy profile"),
        ({"notes": 7}, "energy profile"),
    ],
)
def test_bad_energy_profile_is_422(api, tenant, ids, profile, needle):
    body = plain_body(ids, energy_profile=profile)
    error = error_of(api.post("/v1/jobs", json=body, headers=tenant), 422)
    assert error["error"] == "invalid_input" and needle in error["detail"]
    assert api.get("/v1/jobs", headers=tenant).json() == []


def test_energy_profile_must_be_an_object(api, tenant, ids):
    body = plain_body(ids, energy_profile=[1, 2])
    assert (
        "energy_profile" in error_of(api.post("/v1/jobs", json=body, headers=tenant), 422)["detail"]
    )


def test_new_fields_are_part_of_the_idempotent_body(api, tenant, ids):
    headers = {**tenant, "Idempotency-Key": "training-key"}
    body = qat_body(ids, energy_profile=CHIP)
    first = submit(api, headers, body)
    again = api.post("/v1/jobs", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    changed = [
        qat_body({**ids, "validation_id": None}, energy_profile=CHIP),
        qat_body({**ids, "training_id": ids["validation_id"]}, energy_profile=CHIP),
        qat_body(ids, energy_profile={**CHIP, "int_add_pj": 0.02}),
        qat_body(ids),
    ]
    for other in changed:
        assert error_of(api.post("/v1/jobs", json=other, headers=headers), 409)["error"] == (
            "conflict"
        )


def test_cli_submit_uploads_training_data_and_sends_the_profile(
    api, runtime, tenant, tiny_model, tiny_data, training_files, tmp_path, monkeypatch, capsys
):
    """``qaas submit --training --validation --energy-profile``, through the Python client."""
    key = tenant["Authorization"].split()[1]
    monkeypatch.setattr(
        client_cli,
        "_client",
        lambda args: qaas.Client("http://testserver", key, transport=api._transport),
    )
    profile = tmp_path / "chip.json"
    profile.write_text(json.dumps(CHIP))
    argv = ["submit", str(tiny_model), "--calibration", str(tiny_data[0]),
            "--training", str(training_files[0]), "--validation", str(training_files[1]),
            "--pipeline", "qat", "--qat-epochs", "1",
            "--energy-profile", str(profile), "--json"]  # fmt: skip
    assert cli_main(argv) == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued["training_id"] and queued["validation_id"]
    assert queued["training_id"] != queued["validation_id"] != queued["calibration_id"]
    assert queued["energy_profile"] == CHIP
    assert queued["quantization"]["pipeline"] == ["qat"]
    assert queued["quantization"]["qat_epochs"] == 1
    job, report = run(api, runtime, tenant, queued)
    assert job["step_reports"]["qat"]["signal"] == "labels"
    assert report["energy"]["profile"]["name"] == "test chip"

    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert cli_main([*argv[:-2], str(bad), "--json"]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_auto_job_takes_the_job_target_and_reports_its_climb(api, runtime, tenant, ids):
    quick = {
        "pipeline": ["auto"],
        "qat_epochs": 1,
        "bayesian_bits_epochs": 1,
        "bayesian_bits_finetune_epochs": 0,
        "adaround_iterations": 10,
    }
    queued = submit(api, tenant, {**ids, "quantization": quick, "max_accuracy_drop": 0.0})
    assert queued["quantization"]["max_accuracy_drop"] == 0.0  # the job target, in points
    job, report = run(api, runtime, tenant, queued)
    assert job["status"] == "succeeded", job["error"]
    auto = report["auto"]
    assert auto["target"]["max_accuracy_drop"] == 0.0
    assert auto["validation"]["source"] == "--validation"
    names = [row["name"] for row in auto["tried"]]
    assert names[0] == "ptq" and auto["chosen"] in names
    ran = [row for row in auto["tried"] if "skipped" not in row]
    assert all(row["drop_points"] is not None and row["energy_pj"] > 0 for row in ran)
    # It stops at the first configuration that meets the target, and only there.
    assert [row["meets_target"] for row in ran][:-1] == [False] * (len(ran) - 1)
    assert job["step_reports"].keys() == report["step_reports"].keys()


def test_bayesian_bits_without_training_data_is_422(api, tenant, ids):
    body = {
        "model_id": ids["model_id"],
        "calibration_id": ids["calibration_id"],
        "quantization": {"pipeline": ["bayesian_bits"]},
    }
    detail = error_of(api.post("/v1/jobs", json=body, headers=tenant), 422)["detail"]
    assert "training_id" in detail and "bayesian_bits" in detail
