"""The FastAPI app factory; ``uvicorn --factory app.main:create_app`` or ``qaas serve``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.artifacts.router import router as artifacts_router
from app.auth.router import router as auth_router
from app.core.bodies import BodyGuard
from app.core.config import Settings
from app.core.context import Context
from app.core.docs import install_docs
from app.core.errors import install_error_handlers
from app.core.health import router as health_router
from app.datasets.router import router as datasets_router
from app.jobs.router import router as jobs_router
from app.models_.router import router as models_router
from app.observability.logs import LogContextMiddleware, configure_logging
from app.observability.metrics import router as metrics_router
from app.pages.headers import PageFrameHeaders
from app.pages.router import router as pages_router
from app.webhooks.router import router as webhooks_router
from qaas_engine.version import __version__


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the schema must already be migrated (``qaas serve`` does it first)."""
    settings = settings or Settings()
    if settings.log_format == "json":
        configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = Context.build(settings)
        context.inspector.warm_up()
        app.state.context = context
        try:
            yield
        finally:
            context.close()

    app = FastAPI(
        title="qaas",
        summary="Quantization as a service: upload a model and data, get a quantized model back.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs and /redoc from local files instead
        redoc_url=None,
    )
    install_docs(app)
    install_error_handlers(app)
    app.add_middleware(PageFrameHeaders)
    app.add_middleware(LogContextMiddleware)
    app.add_middleware(
        BodyGuard, max_bytes=settings.max_json_bytes, timeout_s=settings.body_read_timeout_s
    )
    for router in (
        health_router,
        auth_router,
        models_router,
        datasets_router,
        jobs_router,
        artifacts_router,
        webhooks_router,
        metrics_router,
        pages_router,
    ):
        app.include_router(router)
    return app
