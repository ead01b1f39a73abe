"""/ui logins are server-side sessions: the cookie is a random token (never the API key) that
dies at logout, at expiry and when its key is revoked; every form is CSRF-protected; no page
may be framed."""

from __future__ import annotations

import hashlib
import itertools
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.auth.tables import ApiKey, UiSession
from app.core.db import transaction, utcnow
from tests.service.test_keys import bearer, key_of

ORIGIN = "http://testserver"  # the TestClient's own site
_addresses = itertools.count(1)


@pytest.fixture
def browser(api):
    """A fresh cookie jar on the running app, from an address of its own (so that the wrong
    keys of one test never throttle another)."""
    return TestClient(
        api.app, client=(f"192.0.2.{next(_addresses)}", 40000), follow_redirects=False
    )


def csrf_of(page: str) -> str:
    return page.split('name="csrf" value="')[1].split('"')[0]


def log_in(browser: TestClient, key: str, **headers: str):
    token = csrf_of(browser.get("/ui/login").text)
    return browser.post(
        "/ui/login", data={"key": key, "csrf": token}, headers={"Origin": ORIGIN, **headers}
    )


def logged_in(browser: TestClient) -> bool:
    status = browser.get("/ui/jobs.json").status_code
    assert status in (200, 401)
    return status == 200


def log_out(browser: TestClient, **headers: str):
    token = csrf_of(browser.get("/ui/jobs").text)
    return browser.post("/ui/logout", data={"csrf": token}, headers={"Origin": ORIGIN, **headers})


def test_the_cookie_is_a_session_token_not_the_key(browser, make_tenant, sessions, settings):
    tenant = make_tenant()
    response = log_in(browser, key_of(tenant))
    assert response.status_code == 303 and response.headers["location"] == "/ui/jobs"
    cookie = response.headers["set-cookie"]
    assert key_of(tenant) not in cookie
    session_cookie = next(c for c in response.headers.get_list("set-cookie") if "qaas_session" in c)
    attributes = session_cookie.lower()
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/ui" in attributes
    token = browser.cookies["qaas_session"]
    assert token and token != key_of(tenant) and not token.startswith("qaas_")
    with transaction(sessions) as session:
        row = session.scalar(
            select(UiSession).where(
                UiSession.token_hash == hashlib.sha256(token.encode()).hexdigest()
            )
        )
        assert row is not None and token not in (row.id, row.token_hash)
        assert row.expires_at - row.created_at == timedelta(seconds=settings.session_ttl_s)
    assert logged_in(browser)
    assert "Jobs of" in browser.get("/ui/jobs").text
    # The token is no API key.
    assert browser.get("/v1/me", headers=bearer(token)).status_code == 401


def test_logout_ends_the_session_on_the_server(browser, api, make_tenant):
    assert log_in(browser, key_of(make_tenant())).status_code == 303
    token = browser.cookies["qaas_session"]
    response = log_out(browser)
    assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert not logged_in(browser)
    replay = TestClient(api.app, client=("192.0.2.250", 40000), follow_redirects=False)
    replay.cookies.set("qaas_session", token, path="/ui")
    assert replay.get("/ui/jobs.json").status_code == 401
    page = replay.get("/ui/jobs")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"


def test_a_new_login_gets_a_new_token_and_ends_the_old_one(browser, api, make_tenant):
    key = key_of(make_tenant())
    assert log_in(browser, key).status_code == 303
    first = browser.cookies["qaas_session"]
    assert log_in(browser, key).status_code == 303
    assert browser.cookies["qaas_session"] != first and logged_in(browser)
    replay = TestClient(api.app, client=("192.0.2.252", 40000), follow_redirects=False)
    replay.cookies.set("qaas_session", first, path="/ui")
    assert replay.get("/ui/jobs.json").status_code == 401


def test_a_key_left_in_a_cookie_by_the_old_login_is_deleted(browser, make_tenant):
    key = key_of(make_tenant())
    # As the old login set it (the jar names the TestClient's host testserver.local).
    browser.cookies.set("qaas_key", key, domain="testserver.local", path="/ui")
    page = browser.get("/ui/jobs")  # the old cookie logs nobody in
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"
    login = browser.get("/ui/login")
    assert any(
        c.startswith('qaas_key=""') or c.startswith("qaas_key=;")
        for c in login.headers.get_list("set-cookie")
    ), login.headers.get_list("set-cookie")
    assert "qaas_key" not in browser.cookies


def test_an_expired_session_is_refused(browser, make_tenant, sessions):
    assert log_in(browser, key_of(make_tenant())).status_code == 303
    assert logged_in(browser)
    token_hash = hashlib.sha256(browser.cookies["qaas_session"].encode()).hexdigest()
    with transaction(sessions) as session:
        session.execute(
            update(UiSession)
            .where(UiSession.token_hash == token_hash)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert not logged_in(browser)
    assert browser.get("/ui/jobs").headers["location"] == "/ui/login"


def test_revoking_the_key_ends_its_sessions_at_once(browser, api, make_tenant):
    tenant = make_tenant()
    other = api.post("/v1/keys", headers=tenant).json()
    assert log_in(browser, other["key"]).status_code == 303
    assert logged_in(browser)
    assert api.delete(f"/v1/keys/{other['id']}", headers=tenant).status_code == 200
    assert not logged_in(browser)
    assert log_in(browser, other["key"]).status_code == 401


def test_revocation_is_checked_on_every_request(browser, make_tenant, sessions):
    """Even a revocation that leaves the session rows in place (a direct UPDATE) ends them."""
    tenant = make_tenant()
    assert log_in(browser, key_of(tenant)).status_code == 303
    with transaction(sessions) as session:
        key_hash = hashlib.sha256(key_of(tenant).encode()).hexdigest()
        session.execute(
            update(ApiKey).where(ApiKey.key_hash == key_hash).values(revoked_at=utcnow())
        )
    assert not logged_in(browser)


def test_cli_revocation_ends_sessions(browser, make_tenant, cli):
    tenant = make_tenant()
    assert log_in(browser, key_of(tenant)).status_code == 303
    name = browser.get("/ui/jobs").text.split("Jobs of ")[1].split("<")[0]
    _, out, _ = cli("keys", "list", "--tenant", name)
    key_id = out.splitlines()[1].split()[0]
    assert cli("keys", "revoke", key_id)[0] == 0
    assert not logged_in(browser)


def test_login_needs_the_csrf_token_and_this_origin(browser, make_tenant):
    key = key_of(make_tenant())
    token = csrf_of(browser.get("/ui/login").text)
    for data, headers in [
        ({"key": key}, {}),  # no token
        ({"key": key, "csrf": "0" * 64}, {}),  # a token of another cookie
        ({"key": key, "csrf": token}, {"Origin": "https://evil.example"}),
        ({"key": key, "csrf": token}, {"Origin": "null"}),
        ({"key": key, "csrf": token}, {"Referer": "https://evil.example/form.html"}),
    ]:
        refused = browser.post("/ui/login", data=data, headers=headers)
        assert refused.status_code == 403, (data, headers)
        assert "qaas_session" not in browser.cookies
    # The token without its cookie (another site's page cannot have it).
    stranger = TestClient(browser.app, client=("192.0.2.251", 1), follow_redirects=False)
    assert stranger.post("/ui/login", data={"key": key, "csrf": token}).status_code == 403
    # Both: logged in.
    response = browser.post(
        "/ui/login",
        data={"key": key, "csrf": token},
        headers={"Origin": ORIGIN, "Referer": f"{ORIGIN}/ui/login"},
    )
    assert response.status_code == 303 and logged_in(browser)


def test_logout_needs_the_csrf_token_and_this_origin(browser, make_tenant):
    assert log_in(browser, key_of(make_tenant())).status_code == 303
    token = csrf_of(browser.get("/ui/jobs").text)
    assert browser.post("/ui/logout", headers={"Origin": ORIGIN}).status_code == 403
    foreign = browser.post(
        "/ui/logout", data={"csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert logged_in(browser)
    assert log_out(browser).status_code == 303 and not logged_in(browser)


def test_no_ui_page_may_be_framed(browser, make_tenant):
    def assert_not_framable(response, *kept: str) -> None:
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and all(d in csp for d in kept), csp
        assert response.headers["x-frame-options"] == "DENY"

    assert_not_framable(browser.get("/ui/login"))
    assert_not_framable(browser.get("/ui/jobs"))  # the redirect to the login page
    assert_not_framable(browser.get("/ui/jobs.json"))  # 401
    assert log_in(browser, key_of(make_tenant())).status_code == 303
    assert_not_framable(browser.get("/ui/jobs"), "default-src 'none'", "form-action 'self'")
    assert_not_framable(browser.get("/ui/jobs/0123456789abcdef/report"))  # 404
    assert "x-frame-options" not in browser.get("/healthz").headers
