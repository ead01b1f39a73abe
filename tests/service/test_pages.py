"""The web pages of a real ``qaas serve``: login, the live jobs list, a job's report.html, in
headless Chromium (Debian's chromium + chromedriver, driven by selenium; nothing downloaded).

Chromium missing is a failure, not a skip: CI installs it (``.ci/run``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app.client import QaasClient
from tests.service.conftest import free_port, wait_for

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1200,900",
)  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model, tiny_data):
    """``qaas serve`` with a temp data folder, and one job run through it to the end."""
    home = tmp_path_factory.mktemp("pages")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QAAS_") and k != "PYTHONPATH"}
    env["QAAS_DATA_DIR"] = str(home / "qaas-data")
    log = home / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=home, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 90, "qaas serve")
        key = (home / "qaas-data" / "local-api-key").read_text().strip()
        with QaasClient(url, key) as client:
            model = client.upload_model(tiny_model)
            calibration = client.upload_dataset(tiny_data[0])
            evaluation = client.upload_dataset(tiny_data[1])
            job = client.submit(
                model["id"], calibration_id=calibration["id"], evaluation_id=evaluation["id"]
            )
            job = client.wait(job["id"], timeout=240)
        assert job["status"] == "succeeded", (job, log.read_text()[-3000:])
        yield {"url": url, "key": key, "job": job}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _login_form(client: httpx.Client) -> str:
    """The login form's CSRF token (the GET also sets its pre-login cookie in ``client``)."""
    page = client.get("/ui/login")
    assert page.status_code == 200
    return page.text.split('name="csrf" value="')[1].split('"')[0]


def test_pages_need_the_key(served):
    url = served["url"]
    page = httpx.get(f"{url}/ui/jobs")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"
    assert httpx.get(f"{url}/ui/jobs.json").status_code == 401
    report = httpx.get(f"{url}/ui/jobs/{served['job']['id']}/report")
    assert report.status_code == 401
    with httpx.Client(base_url=url) as client:
        csrf = _login_form(client)
        bad = client.post("/ui/login", data={"key": "qaas_wrong", "csrf": csrf})
        assert bad.status_code == 401 and "invalid API key" in bad.text
        good = client.post("/ui/login", data={"key": served["key"], "csrf": csrf})
        assert good.status_code == 303
        cookie = next(c for c in good.headers.get_list("set-cookie") if "qaas_session=" in c)
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert "path=/ui" in cookie.lower()
        assert served["key"] not in good.headers.get("set-cookie", "")
        assert client.cookies["qaas_session"] != served["key"]


def test_session_report_headers_and_logout(served):
    """On the embedded server (SQLite): the session opens the report, whose CSP is kept and
    forbids framing; after logout the same cookie opens nothing."""
    url, job_id = served["url"], served["job"]["id"]
    with httpx.Client(base_url=url) as client:
        csrf = _login_form(client)
        login = client.post("/ui/login", data={"key": served["key"], "csrf": csrf})
        assert login.status_code == 303
        token = client.cookies["qaas_session"]
        report = client.get(f"/ui/jobs/{job_id}/report")
        assert report.status_code == 200 and "<svg" in report.text
        csp = report.headers["content-security-policy"]
        assert csp.startswith("default-src 'none'; style-src 'unsafe-inline'; img-src data:")
        assert "frame-ancestors 'none'" in csp and report.headers["x-frame-options"] == "DENY"
        jobs = client.get("/ui/jobs").text
        logout_csrf = jobs.split('name="csrf" value="')[1].split('"')[0]
        out = client.post("/ui/logout", data={"csrf": logout_csrf}, headers={"Origin": url})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    replay = httpx.get(f"{url}/ui/jobs/{job_id}/report", cookies={"qaas_session": token})
    assert replay.status_code == 401


def test_artifacts_endpoint_serves_report_html_as_html(served):
    job = served["job"]
    assert "report.html" in {a["name"] for a in job["artifacts"]}
    response = httpx.get(
        f"{served['url']}/v1/jobs/{job['id']}/artifacts/report.html",
        headers={"X-API-Key": served["key"]},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<svg" in response.text


@pytest.fixture
def browser(tmp_path, monkeypatch):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must never fetch a browser
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _rendered_plots(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('svg.plot')].map(s => {"
        " const r = s.getBoundingClientRect();"
        " return {w: r.width, h: r.height, marks: s.querySelectorAll('rect,polyline').length};"
        "});"
    )


def test_jobs_page_and_report_in_chromium(served, browser):
    job_id = served["job"]["id"]
    browser.get(f"{served['url']}/ui/jobs")
    assert browser.current_url.endswith("/ui/login")
    browser.find_element(By.NAME, "key").send_keys(served["key"])
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    row = WebDriverWait(browser, 15).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    )[0]
    assert "succeeded" in row.text
    assert row.find_element(By.TAG_NAME, "progress").get_attribute("value") == "1"
    assert _console_errors(browser) == []

    row.find_element(By.LINK_TEXT, "report").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.plot"))
    assert browser.title == "qaas report"
    plots = _rendered_plots(browser)
    assert len(plots) >= 2, plots  # energy per layer and per-layer SQNR at least
    assert all(p["w"] > 0 and p["h"] > 0 and p["marks"] > 0 for p in plots), plots
    assert "Energy per layer" in browser.page_source
    assert _console_errors(browser) == []

    # Log out through the page's own form (its CSRF token, the browser's Origin): the session
    # ends, and the jobs page sends the browser back to the login form.
    browser.get(f"{served['url']}/ui/jobs")
    WebDriverWait(browser, 15).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    )
    browser.find_element(By.CSS_SELECTOR, "form[action='/ui/logout'] button").click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith("/ui/login"))
    browser.get(f"{served['url']}/ui/jobs")
    assert browser.current_url.endswith("/ui/login")
    assert _console_errors(browser) == []
