"""``qaas serve``: migrate, make a local key (embedded mode), start one Celery worker process
and the API. The worker is the same ``celery -A worker.celery_app worker`` that the
distributed deployment runs on many machines; only the settings differ."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from app.core.config import Settings
from app.core.queue import queue_name

log = logging.getLogger("qaas.serve")


def ensure_local_key(settings: Settings) -> str:
    """The embedded default's key: made on first start, kept (0600) in the data folder."""
    from app.auth.service import AuthService
    from app.core.db import make_engine, make_sessionmaker, transaction
    from app.core.errors import Unauthorized

    engine = make_engine(settings, pooled=False)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            auth = AuthService(session=session)
            path = settings.local_key_file
            if path.exists():
                key = path.read_text().strip()
                try:
                    auth.authenticate(key=key)
                    return key
                except Unauthorized:
                    pass  # the database was reset: make a new key
            _, key = auth.create_key(tenant_name="local")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(key + "\n")
            return key
    finally:
        engine.dispose()


def worker_argv(queue: str, hostname: str, entry: tuple[str, ...] = ("celery",)) -> list[str]:
    """One Celery worker process of the deployment (``entry`` is the module run with ``-m``;
    the test suite puts its hooked entry point there)."""
    return [
        sys.executable,
        "-m",
        *entry,
        "-A",
        "worker.celery_app",
        "worker",
        "--concurrency=1",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "-Q",
        queue,
        "--hostname",
        hostname,
    ]


class WorkerSupervisor:
    """Runs one worker process and starts it again if it dies (its job is then picked up
    again by the lease reaper)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def command(self) -> list[str]:
        # Both pools: on a CUDA machine this one worker is the gpu pool too (app.jobs.routing).
        queues = f"{queue_name(self.settings, 'gpu')},{queue_name(self.settings, 'cpu')}"
        return worker_argv(queues, f"qaas-serve-{os.getpid()}@%h")

    def start(self) -> None:
        self.process = subprocess.Popen(self.command())
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopping.is_set():
            process = self.process
            if process is None:
                return
            code = process.wait()
            if self.stopping.is_set():
                return
            log.error("worker exited with status %s; starting it again", code)
            time.sleep(1.0)
            self.process = subprocess.Popen(self.command())

    def stop(self) -> None:
        self.stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from app.core.db import run_migrations
    from app.core.server import protocol_with_timeout
    from app.main import create_app
    from app.observability.logs import configure_logging

    configure_logging(settings)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    run_migrations(settings)
    url = f"http://{host}:{port}"
    key = ensure_local_key(settings) if settings.embedded else None
    worker = WorkerSupervisor(settings)
    worker.start()
    print(f"qaas: API on {url} (OpenAPI docs at {url}/docs); data in {settings.resolved_data_dir}")
    if key is not None:
        print(f"qaas: API key for tenant 'local' (kept in {settings.local_key_file}):")
        print(f"  export QAAS_URL={url}")
        print(f"  export QAAS_API_KEY={key}")
        print("  qaas submit model.onnx --calibration calib.npz --wait -o out/")
    sys.stdout.flush()
    # uvicorn re-raises SIGTERM after its graceful shutdown; let it end here so the worker
    # is stopped in the finally below instead of being orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="info",
            http=protocol_with_timeout(settings.header_read_timeout_s),
            # JSON logs: uvicorn's loggers left unconfigured, so they reach the root's handler.
            log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        )
    finally:
        worker.stop()
    return 0
