"""Wrong API keys are throttled per client address (429 with Retry-After), shared through the
database; valid and missing keys never count, and other addresses are not held back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.auth.tables import AuthFailure
from app.core.db import transaction, utcnow
from tests.service.test_api import assert_envelope

WRONG = {"Authorization": "Bearer qaas_not-a-key-at-all"}


@pytest.fixture
def from_address(api):
    """A client of the running app seen as coming from ``host`` (the lifespan already ran)."""
    return lambda host: TestClient(api.app, client=(host, 40000))


def test_wrong_keys_get_429_with_retry_after_then_the_window_passes(
    from_address, make_tenant, settings, sessions
):
    attacker, neighbour = from_address("198.51.100.7"), from_address("198.51.100.8")
    valid = make_tenant()
    for _ in range(settings.auth_failure_limit):
        assert_envelope(attacker.get("/v1/me", headers=WRONG), 401, "unauthorized")
    blocked = attacker.get("/v1/me", headers=WRONG)
    assert_envelope(blocked, 429, "too_many_requests")
    assert 1 <= int(blocked.headers["retry-after"]) <= settings.auth_failure_window_s
    # Blocked whatever the key: a right guess must look the same as a wrong one.
    assert_envelope(attacker.get("/v1/me", headers=valid), 429, "too_many_requests")
    # Other addresses go on as before, right keys and wrong ones alike.
    assert neighbour.get("/v1/me", headers=valid).status_code == 200
    assert_envelope(neighbour.get("/v1/me", headers=WRONG), 401, "unauthorized")

    with transaction(sessions) as session:  # the window passes
        session.execute(
            update(AuthFailure)
            .where(AuthFailure.client == "198.51.100.7")
            .values(failed_at=utcnow() - timedelta(seconds=settings.auth_failure_window_s + 1))
        )
    assert attacker.get("/v1/me", headers=valid).status_code == 200


def test_valid_and_missing_keys_never_count(from_address, make_tenant, settings):
    client = from_address("198.51.100.9")
    valid = make_tenant()
    for _ in range(2 * settings.auth_failure_limit):
        assert client.get("/v1/me", headers=valid).status_code == 200
        assert_envelope(client.get("/v1/me"), 401, "unauthorized")
    for _ in range(settings.auth_failure_limit - 1):
        assert_envelope(client.get("/v1/me", headers=WRONG), 401)
    assert client.get("/v1/me", headers=valid).status_code == 200


def test_wrong_ui_logins_count_too(from_address, settings, make_tenant):
    browser = from_address("198.51.100.10")
    valid = make_tenant()
    for _ in range(settings.auth_failure_limit - 1):
        assert_envelope(browser.get("/v1/me", headers=WRONG), 401)
    page = browser.get("/ui/login").text
    token = page.split('name="csrf" value="')[1].split('"')[0]
    failed = browser.post("/ui/login", data={"key": "qaas_wrong", "csrf": token})
    assert failed.status_code == 401 and "invalid API key" in failed.text
    refused = browser.post("/ui/login", data={"key": "qaas_wrong", "csrf": token})
    assert_envelope(refused, 429, "too_many_requests")
    assert "retry-after" in refused.headers
    assert_envelope(browser.get("/v1/me", headers=valid), 429)
