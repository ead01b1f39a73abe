"""The OpenAPI document says how to authenticate and what every error looks like, and /docs and
/redoc work offline: their scripts and styles come from this server, and Chromium, with every
other host unreachable, renders the operations."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app.core.config import Settings
from app.core.db import run_migrations
from app.main import create_app
from tests.service.conftest import free_port, wait_for
from tests.service.test_api import assert_envelope
from tests.service.test_pages import CHROMIUM_FLAGS

ERROR_REF = "#/components/schemas/ErrorBody"
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def document(api) -> dict:
    return api.get("/openapi.json").json()


def operations(document: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def test_the_key_is_a_security_scheme_not_a_header_parameter(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["in"] == "header"
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    api_operations = [(m, p, o) for m, p, o in operations(document) if p.startswith("/v1/")]
    assert len(api_operations) >= 15
    for method, path, operation in api_operations:
        assert {"bearer": []} in operation["security"], (method, path)
        headers = {
            p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"
        }
        assert not headers & {"authorization", "x-api-key"}, (method, path, headers)


def test_every_error_response_is_the_envelope(document):
    assert "HTTPValidationError" not in document["components"]["schemas"]
    body = document["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error", "detail"}
    assert {body["properties"][k]["type"] for k in ("error", "detail")} == {"string"}
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, (method, path, status)
            if status in ("429", "503", "507"):
                assert "Retry-After" in response["headers"], (method, path, status)
        if path.startswith("/v1/"):
            assert {"401", "429"} <= set(operation["responses"]), (method, path)


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("POST", "/v1/models", {"408", "413", "415", "422", "507"}),
        ("POST", "/v1/datasets", {"408", "413", "415", "422", "507"}),
        ("DELETE", "/v1/models/{model_id}", {"404", "409"}),
        ("DELETE", "/v1/datasets/{dataset_id}", {"404", "409"}),
        ("POST", "/v1/jobs", {"409", "413", "422"}),
        ("GET", "/v1/jobs", {"400", "422"}),
        ("GET", "/v1/models", {"400", "422"}),
        ("GET", "/v1/datasets", {"400", "422"}),
        ("POST", "/v1/jobs/{job_id}/cancel", {"404", "409"}),
        ("GET", "/v1/jobs/{job_id}/report", {"404", "409"}),
        ("GET", "/readyz", {"503"}),
    ],
)
def test_operations_document_their_errors(document, method, path, statuses):
    operation = document["paths"][path][method.lower()]
    assert statuses <= set(operation["responses"]), sorted(operation["responses"])


def test_list_operations_document_their_filters_and_next_page(document):
    for path in ("/v1/jobs", "/v1/models", "/v1/datasets"):
        operation = document["paths"][path]["get"]
        names = {p["name"] for p in operation["parameters"]}
        assert {"created_after", "limit", "cursor"} <= names, path
        assert {"X-Next-Cursor", "Link"} <= set(operation["responses"]["200"]["headers"])
    status = next(
        p for p in document["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "status"
    )
    assert "JobStatus" in str(status["schema"])
    assert "cancelled" in document["components"]["schemas"]["JobStatus"]["enum"]


def test_real_errors_are_the_documented_ones(api, document, make_tenant, tiny_data):
    """A few errors provoked for real: each status is one its operation documents."""
    tenant = make_tenant()
    path = tiny_data[0]
    provoked = [
        ("GET", "/v1/jobs", api.get("/v1/jobs")),
        ("GET", "/v1/jobs/{job_id}", api.get("/v1/jobs/nope", headers=tenant)),
        ("GET", "/v1/jobs", api.get("/v1/jobs", params={"cursor": "x"}, headers=tenant)),
        ("GET", "/v1/models", api.get("/v1/models", params={"limit": 0}, headers=tenant)),
        (
            "POST",
            "/v1/datasets",
            api.post("/v1/datasets", files={"file": (path.name, b"x")}, headers=tenant),
        ),
        ("POST", "/v1/jobs", api.post("/v1/jobs", json={}, headers=tenant)),
    ]
    for method, route, response in provoked:
        assert response.status_code >= 400
        assert_envelope(response, response.status_code)
        documented = document["paths"][route][method.lower()]["responses"]
        assert str(response.status_code) in documented, (method, route, response.status_code)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(api, page):
    html = api.get(page).text
    assert "http://" not in html and "https://" not in html, "an absolute (CDN) URL"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith(".js") for a in assets), assets
    csp = api.get(page).headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "http" not in csp, csp
    for asset in assets:
        assert asset.startswith("/docs-assets/"), asset
        response = api.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[str]:
    """The app on a real port (embedded mode), for the browser."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("docs"))
    run_migrations(settings)
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: server.started, 60, "uvicorn")
    yield url
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def offline_browser(tmp_path, monkeypatch):
    """Headless Chromium that can reach 127.0.0.1 and nothing else."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    flags = (
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    )
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def fetched_elsewhere(driver, origin: str) -> list[str]:
    """Resources the page got from another origin (a request the page's CSP blocked is listed
    by the browser with status 0 and nothing transferred: not fetched)."""
    entries = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".map(e => [e.name, e.responseStatus, e.transferSize]);"
    )
    return [
        name for name, status, size in entries if not name.startswith(origin) and (status or size)
    ]


def severe_logs(driver) -> list[str]:
    """Console errors other than the CSP blocking a request to another origin."""
    logs = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return [m for m in logs if "violates the following Content Security Policy" not in m]


def test_swagger_ui_and_redoc_render_offline_in_chromium(live, offline_browser):
    driver = offline_browser
    driver.get(f"{live}/docs")
    blocks = WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    )
    paths = {block.text.replace("\u200b", "") for block in blocks}
    assert {"/v1/jobs", "/v1/models", "/v1/datasets/{dataset_id}"} <= paths, paths
    assert driver.find_elements(By.CSS_SELECTOR, "button.authorize"), "no Authorize button"
    assert fetched_elsewhere(driver, live) == []
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []

    driver.get(f"{live}/redoc")
    WebDriverWait(driver, 30).until(
        lambda d: "/v1/jobs" in d.execute_script("return document.body.innerText")
    )
    # ReDoc's bundle asks its vendor's CDN for a logo: the CSP blocks it, nothing else fails.
    assert fetched_elsewhere(driver, live) == []
    assert severe_logs(driver) == []
