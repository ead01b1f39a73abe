"""GET /v1/jobs, /v1/models, /v1/datasets: a JSON array, newest first, filtered by ``status``
(jobs) and ``created_after``, a page of ``limit`` at a time, the next page named by
X-Next-Cursor and a Link header; bad parameters are 4xx envelopes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from app.auth.service import AuthService
from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction
from app.datasets.tables import Dataset
from app.main import create_app
from tests.service.conftest import upload
from tests.service.test_api import assert_envelope, job_body


@pytest.fixture
def tenant(make_tenant):
    return make_tenant()


def upload_dataset(api, tenant, rows: int) -> dict:
    data = io.BytesIO()
    np.savez(data, input=np.zeros((rows, 1, 8, 8), np.float32))
    response = api.post(
        "/v1/datasets", params={"filename": f"d{rows}.npz"}, content=data.getvalue(), headers=tenant
    )
    assert response.status_code == 201, response.text
    return response.json()


def walk(api, route: str, tenant, **params) -> tuple[list[str], int]:
    """Every id, page after page, following X-Next-Cursor; and the number of pages."""
    ids: list[str] = []
    pages, cursor = 0, None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = api.get(route, params=query, headers=tenant)
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)
        ids += [item["id"] for item in response.json()]
        pages += 1
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in response.headers
            return ids, pages
        link = response.headers["Link"]
        assert link.startswith("<http") and link.endswith('>; rel="next"')
        assert f"cursor={cursor}" in link and f"limit={params['limit']}" in link


def test_datasets_page_newest_first_and_filter_by_creation(api, tenant):
    made = [upload_dataset(api, tenant, rows) for rows in (2, 3, 4)]
    newest_first = [d["id"] for d in reversed(made)]
    assert [d["id"] for d in api.get("/v1/datasets", headers=tenant).json()] == newest_first

    assert walk(api, "/v1/datasets", tenant, limit=2) == (newest_first, 2)
    assert walk(api, "/v1/datasets", tenant, limit=3) == (newest_first, 1)
    first = api.get("/v1/datasets", params={"limit": 1}, headers=tenant)
    assert [d["id"] for d in first.json()] == newest_first[:1]

    after = api.get(
        "/v1/datasets", params={"created_after": made[0]["created_at"]}, headers=tenant
    ).json()
    assert [d["id"] for d in after] == newest_first[:2]
    future = (datetime.fromisoformat(made[-1]["created_at"]) + timedelta(hours=1)).isoformat()
    assert api.get("/v1/datasets", params={"created_after": future}, headers=tenant).json() == []


def test_rows_created_at_the_same_instant_are_neither_skipped_nor_repeated(api, tenant, sessions):
    made = [upload_dataset(api, tenant, rows) for rows in (2, 3, 4)]
    ids = [d["id"] for d in made]
    with transaction(sessions) as session:
        same = datetime.fromisoformat(made[0]["created_at"])
        session.execute(update(Dataset).where(Dataset.id.in_(ids)).values(created_at=same))
    walked, pages = walk(api, "/v1/datasets", tenant, limit=1)
    assert sorted(walked) == sorted(ids) and pages == 3


def test_models_page_and_tenants_see_only_their_own(api, tenant, make_tenant, tiny_model):
    made = [upload(api, "/v1/models", tiny_model, tenant).json()["id"] for _ in range(3)]
    assert walk(api, "/v1/models", tenant, limit=2) == (made[::-1], 2)
    assert api.get("/v1/models", headers=make_tenant()).json() == []


def test_jobs_filter_by_status_and_page(api, tenant, tiny_model, tiny_data):
    model = upload(api, "/v1/models", tiny_model, tenant).json()
    calibration = upload(api, "/v1/datasets", tiny_data[0], tenant).json()
    jobs = []
    for _ in range(3):
        response = api.post("/v1/jobs", json=job_body(model, calibration), headers=tenant)
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])
    assert api.post(f"/v1/jobs/{jobs[1]}/cancel", headers=tenant).status_code == 200

    def listed(**params) -> list[str]:
        response = api.get("/v1/jobs", params=params, headers=tenant)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()]

    assert listed() == jobs[::-1]
    assert listed(status="cancelled") == [jobs[1]]
    assert listed(status="cancelled", limit=1) == [jobs[1]]
    assert listed(status="queued") == [jobs[2], jobs[0]]
    assert listed(status=["queued", "cancelled"]) == jobs[::-1]
    assert listed(status="succeeded") == []
    assert walk(api, "/v1/jobs", tenant, status="queued", limit=1) == ([jobs[2], jobs[0]], 2)


def test_a_listed_page_has_each_jobs_queue_position_from_one_query(
    api, tenant, tiny_model, tiny_data
):
    """The list gives every queued job the position its own GET gives, with one query for the
    page's positions, not one per queued job (a poller listing 100 queued jobs)."""
    model = upload(api, "/v1/models", tiny_model, tenant).json()
    calibration = upload(api, "/v1/datasets", tiny_data[0], tenant).json()
    jobs = [
        api.post("/v1/jobs", json=job_body(model, calibration), headers=tenant).json()["id"]
        for _ in range(4)
    ]
    assert api.post(f"/v1/jobs/{jobs[1]}/cancel", headers=tenant).status_code == 200
    alone = {job: api.get(f"/v1/jobs/{job}", headers=tenant).json() for job in jobs}
    engine = api.app.state.context.engine
    statements: list[str] = []

    def count(conn, cursor, statement, *_):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        listed = api.get("/v1/jobs", headers=tenant).json()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    positions = {job["id"]: job["queue_position"] for job in listed}
    assert positions == {job: alone[job]["queue_position"] for job in jobs}
    assert positions[jobs[1]] is None
    assert positions[jobs[0]] < positions[jobs[2]] < positions[jobs[3]]
    assert sum("row_number" in statement.lower() for statement in statements) == 1
    assert not any("count(" in statement.lower() for statement in statements), statements


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/models", "/v1/datasets"])
@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"limit": 0}, 422, "limit"),
        ({"limit": 201}, 422, "limit"),
        ({"created_after": "yesterday"}, 422, "created_after"),
        ({"cursor": "not-a-cursor!"}, 400, "cursor"),
        ({"cursor": "MjAyNg"}, 400, "cursor"),
    ],
)
def test_bad_list_parameters_are_envelopes(api, tenant, route, params, status, needle):
    detail = assert_envelope(api.get(route, params=params, headers=tenant), status)
    assert needle in detail


def test_unknown_job_status_is_422_naming_the_choices(api, tenant):
    detail = assert_envelope(
        api.get("/v1/jobs", params={"status": "done"}, headers=tenant), 422, "invalid_request"
    )
    assert "status" in detail and "cancelled" in detail


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The embedded default (SQLite), where times are stored as text: the cursor must page it
    the same way."""
    config = Settings(data_dir=tmp_path_factory.mktemp("listing-sqlite"))
    run_migrations(config)
    engine = make_engine(config, pooled=False)
    with transaction(make_sessionmaker(engine)) as session:
        _, key = AuthService(session=session).create_key(tenant_name="sqlite")
    engine.dispose()
    with TestClient(create_app(config)) as client:
        yield client, {"Authorization": f"Bearer {key}"}


def test_sqlite_pages_and_filters_alike(embedded):
    api, tenant = embedded
    made = [upload_dataset(api, tenant, rows) for rows in (2, 3, 4)]
    newest_first = [d["id"] for d in reversed(made)]
    assert walk(api, "/v1/datasets", tenant, limit=1) == (newest_first, 3)
    after = api.get(
        "/v1/datasets", params={"created_after": made[1]["created_at"]}, headers=tenant
    ).json()
    assert [d["id"] for d in after] == newest_first[:1]
