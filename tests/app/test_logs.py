"""JSON log lines (QAAS_LOG_FORMAT=json) name the job and tenant they concern, including ids
bound on a worker thread, as FastAPI runs sync dependencies (the tenant's, for one)."""

from __future__ import annotations

import io
import json
import logging

import anyio

from app.core.config import Settings
from app.observability.logs import JsonFormatter, bind, configure_logging, log_context


def capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("qaas.test-logs")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_one_line_carries_job_and_tenant():
    logger, stream = capture()
    with log_context(job_id="job-1"):
        bind(tenant_id="tenant-9")
        logger.info("quantized %d layers", 3)
    logger.info("outside")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "quantized 3 layers" and first["level"] == "info"
    assert first["logger"] == "qaas.test-logs" and first["time"].endswith("+00:00")
    assert (first["job_id"], first["tenant_id"]) == ("job-1", "tenant-9")
    assert "job_id" not in second and "tenant_id" not in second


def test_ids_bound_on_a_worker_thread_reach_the_request():
    logger, stream = capture()

    async def request() -> None:
        with log_context():
            await anyio.to_thread.run_sync(lambda: bind(tenant_id="tenant-2"))
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed")

    anyio.run(request)
    line = json.loads(stream.getvalue())
    assert line["tenant_id"] == "tenant-2" and line["level"] == "error"
    assert "ValueError: boom" in line["exc"]


def test_configure_switches_existing_handlers_to_json():
    server = logging.getLogger("uvicorn.access")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    server.addHandler(handler)
    root_handlers = logging.getLogger().handlers
    formatters = [h.formatter for h in root_handlers]
    root_level = logging.getLogger().level
    try:
        configure_logging(Settings(log_format="text"))
        assert not isinstance(handler.formatter, JsonFormatter)
        configure_logging(Settings(log_format="json"))
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        server.removeHandler(handler)
        for root_handler, formatter in zip(root_handlers, formatters, strict=True):
            root_handler.setFormatter(formatter)
        logging.getLogger().setLevel(root_level)
