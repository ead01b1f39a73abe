"""Schemathesis against the app's own OpenAPI schema: generated requests, valid and not, to every
operation of an in-process app (embedded mode: SQLite, no broker needed), with a real key.
Bounded examples keep it quick; the property is that no request ever gets a 5xx."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from app.auth.service import AuthService
from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction
from app.main import create_app

MAX_EXAMPLES = int(os.environ.get("QAAS_FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    config = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), inspect_timeout_s=60)
    run_migrations(config)
    engine = make_engine(config, pooled=False)
    with transaction(make_sessionmaker(engine)) as session:
        _, key = AuthService(session=session).create_key(tenant_name="fuzz")
    engine.dispose()
    app = create_app(config)
    with TestClient(app):  # runs the lifespan: the app's context stays set for the fuzzer
        yield app, {"Authorization": f"Bearer {key}"}


def test_no_server_errors(fuzzed):
    app, headers = fuzzed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[str, str] = {}
    statuses: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, "the schema lost its operations"
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def fuzz(case) -> None:
            response = case.call_and_validate(headers=headers, checks=[not_a_server_error])
            statuses.append(response.status_code)

        try:
            fuzz()
        except Exception as error:  # keep going: report every operation that fails
            failures[operation.label] = str(error)[:2000]
    assert not failures, failures
    assert len(statuses) >= 5 * len(operations), len(statuses)
    assert any(200 <= code < 300 for code in statuses), "never authenticated: fuzzed nothing"
    print(f"fuzzed {len(statuses)} requests: {sorted(set(statuses))}")


def test_zip_member_that_is_not_an_array_is_422(fuzzed, tmp_path):
    """Found by the fuzzer: a zip whose member is not a .npy file made the checker crash (500)."""
    import zipfile

    archive = tmp_path / "odd.npz"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("input", b"not an array")
    app, headers = fuzzed
    client = TestClient(app)  # no lifespan: the fixture's context is already running
    response = client.post(
        "/v1/datasets",
        params={"filename": archive.name},
        content=archive.read_bytes(),
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 422, response.text
    assert "not a numpy array" in response.json()["detail"]
