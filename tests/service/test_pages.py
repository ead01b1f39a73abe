"""The web pages of a real ``qaas serve``: login, the live jobs list, a job's report.html, in
headless Chromium (Debian's chromium + chromedriver, driven by selenium; nothing downloaded).

Chromium missing is a failure, not a skip: CI installs it (``.ci/run``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app.client import QaasClient
from app.pages.job_views import human_bytes, human_seconds
from tests.service.conftest import free_port, is_ready, wait_for

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
        wait_for(lambda: is_ready(url), 90, "qaas serve")
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


@contextlib.contextmanager
def _logged_in(url: str, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url) as client:
        csrf = _login_form(client)
        assert client.post("/ui/login", data={"key": key, "csrf": csrf}).status_code == 303
        yield client


def _row_of(page: str, job_id: str) -> str:
    return page.split(f'<tr data-job="{job_id}">')[1].split("</tr>")[0]


def test_jobs_list_shows_what_each_job_ran_and_what_it_gave(served, tiny_model):
    """Model file name, pipeline, target, accuracy delta, energy ratio, the downloaded file's
    size, duration and status, from the job row, server-rendered under a CSP with no script."""
    job = served["job"]
    with _logged_in(served["url"], served["key"]) as client:
        page = client.get("/ui/jobs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'") and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp and "<script" not in page.text
    row = _row_of(page.text, job["id"])
    assert f">{tiny_model.name}</a>" in row and f'href="/ui/jobs/{job["id"]}"' in row
    assert ">ptq<" in row  # no steps beyond calibration
    assert "onnxruntime-cpu" in row
    report = httpx.get(
        f"{served['url']}/v1/jobs/{job['id']}/report", headers=bearer_of(served)
    ).json()
    metrics = report["metrics"]
    delta = 100 * (metrics["onnxruntime"]["top1"] - metrics["float"]["top1"])
    assert f"{delta:+.2f} pt" in row
    assert f"{report['energy']['ratio']:.1f}× less" in row
    size = next(a["size_bytes"] for a in job["artifacts"] if a["name"] == "model.quant.onnx")
    assert size == report["size_bytes"]["quantized_file"]  # the report's card, the same file
    assert human_bytes(size) in row
    summary = next(j for j in client_json(served, "/ui/jobs.json") if j["id"] == job["id"])
    assert summary["artifact_bytes"] == size and summary["duration_s"] > 0
    assert human_seconds(summary["duration_s"]) in row
    assert "succeeded" in row and ">report</a>" in row


def client_json(served, path: str):
    with _logged_in(served["url"], served["key"]) as client:
        response = client.get(path)
        assert response.status_code == 200
        return response.json()


def test_jobs_list_filters_from_the_query_string(served, tiny_model):
    job_id = served["job"]["id"]
    with _logged_in(served["url"], served["key"]) as client:

        def shown(**params: str) -> bool:
            page = client.get("/ui/jobs", params=params)
            assert page.status_code == 200
            return f'data-job="{job_id}"' in page.text

        assert shown(status="succeeded") and not shown(status="failed")
        assert shown(model=tiny_model.stem.upper()) and not shown(model="no-such-model")
        assert shown(status="succeeded", model=tiny_model.name)
        page = client.get("/ui/jobs", params={"status": "failed"})
        assert "no jobs match these filters" in page.text
        assert '<option value="failed" selected>' in page.text  # the form shows the filter
        bad = client.get("/ui/jobs", params={"status": "done"})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_input"
        assert "succeeded" in bad.json()["detail"]
        listed = client.get("/ui/jobs.json", params={"status": "cancelled"}).json()
        assert all(j["status"] == "cancelled" for j in listed)


def test_job_page_has_the_timeline_warnings_and_downloads(served):
    job = served["job"]
    with _logged_in(served["url"], served["key"]) as client:
        page = client.get(f"/ui/jobs/{job['id']}")
        assert page.status_code == 200
        assert "<script" not in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        report = client.get(f"/v1/jobs/{job['id']}/report", headers=bearer_of(served)).json()
        timeline = page.text.split('<table class="timeline">')[1].split("</table>")[0]
        names = [step["name"] for step in report["steps"]]
        assert [row.split("<td>")[1].split("</td>")[0] for row in timeline.split("<tr>")[2:]] == (
            names
        )
        assert f"{len(names)} steps" in page.text
        for warning in report["warnings"]:
            assert html_escape(warning) in page.text
        for artifact in job["artifacts"]:
            link = f"/ui/jobs/{job['id']}/artifacts/{artifact['name']}"
            assert f'href="{link}"' in page.text
            download = client.get(link)
            assert download.status_code == 200
            assert len(download.content) == artifact["size_bytes"]
            assert "attachment" in download.headers["content-disposition"]
        assert "Error" not in page.text
        missing = client.get(f"/ui/jobs/{job['id']}/artifacts/nope.bin")
        assert missing.status_code == 404
    # the download needs the session like every page
    anonymous = httpx.get(f"{served['url']}/ui/jobs/{job['id']}/artifacts/report.json")
    assert anonymous.status_code == 401


def bearer_of(served) -> dict[str, str]:
    return {"X-API-Key": served["key"]}


def html_escape(text: str) -> str:
    from html import escape

    return escape(text)


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

    # the job's own page, through the model's link, then back to the list
    row.find_element(By.CSS_SELECTOR, f'a[href="/ui/jobs/{job_id}"]').click()
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.timeline"))
    bars = browser.find_elements(By.CSS_SELECTOR, "table.timeline .bar")
    assert bars and max(bar.size["width"] for bar in bars) > 50
    assert browser.find_elements(By.LINK_TEXT, "model.quant.onnx")
    assert _console_errors(browser) == []
    browser.get(f"{served['url']}/ui/jobs")
    row = WebDriverWait(browser, 15).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    )[0]

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


def test_a_cancelled_job_with_a_deleted_model_on_postgres(api, make_tenant, tiny_model):
    """On the API's Postgres (no worker runs here, so the job stays queued until cancelled):
    the job page shows the error detail; once its model is deleted the job outlives it and
    the pages say so instead of failing."""
    from fastapi.testclient import TestClient

    from tests.service.conftest import upload

    headers = make_tenant()
    model = upload(api, "/v1/models", tiny_model, headers).json()
    quantization = {"activation_bits": None}  # no calibration data needed
    job = api.post(
        "/v1/jobs", json={"model_id": model["id"], "quantization": quantization}, headers=headers
    ).json()
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200
    assert api.delete(f"/v1/models/{model['id']}", headers=headers).status_code == 204

    browser = TestClient(api.app, client=("192.0.2.250", 40000), follow_redirects=False)
    form = browser.get("/ui/login").text.split('name="csrf" value="')[1].split('"')[0]
    key = headers["Authorization"].split()[1]
    login = browser.post(
        "/ui/login", data={"key": key, "csrf": form}, headers={"Origin": "http://testserver"}
    )
    assert login.status_code == 303
    listing = browser.get("/ui/jobs", params={"status": "cancelled"})
    row = _row_of(listing.text, job["id"])
    assert "(model deleted)" in row and "cancelled by request" in row
    assert "<progress" not in row  # finished: nothing moves
    page = browser.get(f"/ui/jobs/{job['id']}")
    assert page.status_code == 200
    assert "<h2>Error</h2>" in page.text and "cancelled: cancelled by request" in page.text
    assert "artifacts exist once the job succeeds" in page.text
    assert 'http-equiv="refresh"' not in page.text
    # another tenant's job is no page of this one
    other = make_tenant()
    theirs = upload(api, "/v1/models", tiny_model, other).json()
    their_job = api.post(
        "/v1/jobs", json={"model_id": theirs["id"], "quantization": quantization}, headers=other
    ).json()
    assert browser.get(f"/ui/jobs/{their_job['id']}").status_code == 404
    assert f'data-job="{their_job["id"]}"' not in browser.get("/ui/jobs").text
    api.post(f"/v1/jobs/{their_job['id']}/cancel", headers=other)
