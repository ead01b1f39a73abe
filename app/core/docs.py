"""The API's documentation pages and its OpenAPI document.

/docs (Swagger UI) and /redoc load their scripts and styles from this server: the files come
with the ``fastapi-offline`` package (a PyPI dependency that bundles swagger-ui-dist and ReDoc),
so the pages work offline and behind an egress filter, where FastAPI's CDN defaults are blank.
The document says how to authenticate (the security schemes in ``app.core.deps``) and that every
error, validation errors included, has the ``{"error", "detail"}`` body."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.core.errors import ErrorBody

ASSETS_PREFIX = "/docs-assets"
ASSETS_DIR = str(files("fastapi_offline") / "static")
ERROR_REF = "#/components/schemas/ErrorBody"
# Nothing leaves this origin: ReDoc's bundle would fetch its vendor's logo from a CDN, and
# neither page has a reason to reach anywhere else. Both start with an inline script or style.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'"
)


def install_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc from local assets; the app must be built with ``docs_url=None``
    and ``redoc_url=None`` so FastAPI's CDN pages are not registered first."""
    app.mount(ASSETS_PREFIX, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PREFIX}/favicon.png",
            # No badge fetched from the public validator; keep the key across reloads.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            redoc_js_url=f"{ASSETS_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PREFIX}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    generate = app.openapi  # FastAPI's own: builds the document once and caches it

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = envelope_validation_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def envelope_validation_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 ``HTTPValidationError`` on every route with parameters, but the
    error handler answers those with the envelope: document what is sent."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            response = operation.get("responses", {}).get("422")
            if response is None:
                continue
            content = response.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                response["description"] = "invalid parameters or body; the detail says which"
                content["schema"] = {"$ref": ERROR_REF}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    if "ErrorBody" not in components:
        components["ErrorBody"] = ErrorBody.model_json_schema()
    return schema
