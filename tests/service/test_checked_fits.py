"""Submission checks a dataset against the model once per (dataset, model, role) and process:
the second job of a sweep skips the sandboxed check; a misfit is checked, and refused, every
time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.datasets.service import DatasetService
from app.jobs.service import CheckedFits
from tests.service.conftest import upload


@pytest.fixture
def checks(monkeypatch) -> list[str]:
    """The roles ``DatasetService.check_fits`` really ran for (it still runs)."""
    ran: list[str] = []
    original = DatasetService.check_fits

    async def counted(self, *, dataset, model, role, **options):
        ran.append(role)
        await original(self, dataset=dataset, model=model, role=role, **options)

    monkeypatch.setattr(DatasetService, "check_fits", counted)
    return ran


def test_a_fitting_pair_is_checked_once(api, make_tenant, tiny_model, tiny_data, checks):
    tenant = make_tenant()
    model = upload(api, "/v1/models", tiny_model, tenant).json()["id"]
    calibration = upload(api, "/v1/datasets", tiny_data[0], tenant).json()["id"]
    evaluation = upload(api, "/v1/datasets", tiny_data[1], tenant).json()["id"]
    body = {"model_id": model, "calibration_id": calibration}
    assert api.post("/v1/jobs", json=body, headers=tenant).status_code == 202
    assert checks == ["calibration"]
    assert api.post("/v1/jobs", json=body, headers=tenant).status_code == 202
    assert checks == ["calibration"]  # the second job of the sweep: no second check
    both = {**body, "evaluation_id": evaluation}
    assert api.post("/v1/jobs", json=both, headers=tenant).status_code == 202
    assert checks == ["calibration", "evaluation"]  # a new role is a new pair


def test_a_sweep_submitted_at_once_is_checked_once(api, make_tenant, tiny_model, tiny_data, checks):
    """Six requests for an unchecked pair arrive together: one check runs, the others wait
    for it (before, each started its own sandboxed child)."""
    tenant = make_tenant()
    model = upload(api, "/v1/models", tiny_model, tenant).json()["id"]
    calibration = upload(api, "/v1/datasets", tiny_data[0], tenant).json()["id"]
    body = {"model_id": model, "calibration_id": calibration}
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: api.post("/v1/jobs", json=body, headers=tenant), range(6)))
    assert [response.status_code for response in codes] == [202] * 6
    assert checks == ["calibration"]


def test_a_misfit_is_refused_every_time(api, make_tenant, tiny_model, tmp_path, checks):
    tenant = make_tenant()
    model = upload(api, "/v1/models", tiny_model, tenant).json()["id"]
    wrong = tmp_path / "wrong_shape.npz"
    np.savez(wrong, input=np.zeros((4, 3, 8, 8), np.float32))
    dataset = upload(api, "/v1/datasets", wrong, tenant).json()["id"]
    body = {"model_id": model, "calibration_id": dataset}
    for _ in range(2):
        response = api.post("/v1/jobs", json=body, headers=tenant)
        assert response.status_code == 422, response.text
        assert "does not fit" in response.json()["detail"]
    assert checks == ["calibration", "calibration"]


def test_checked_fits_forgets_the_oldest_past_its_size():
    fits = CheckedFits(size=2)
    fits.add(("a",))
    fits.add(("b",))
    assert ("a",) in fits  # now the most recently used
    fits.add(("c",))
    assert ("b",) not in fits
    assert ("a",) in fits and ("c",) in fits
