"""One ``Settings`` for the API, the worker and the CLI, read from ``QAAS_*`` variables.

With nothing set, everything lives under ``QAAS_DATA_DIR`` (SQLite, a filesystem broker, local
storage): the embedded default. Setting ``QAAS_DATABASE_URL`` and ``QAAS_BROKER_URL`` gives the
distributed deployment; the code path is the same.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QAAS_", extra="ignore")

    data_dir: Path = Path("qaas-data")
    database_url: str | None = Field(None, description="default: SQLite file in data_dir")
    broker_url: str | None = Field(None, description="default: filesystem broker in data_dir")
    storage_dir: Path | None = Field(None, description="default: data_dir/storage; shared")
    # Where models, datasets and artifacts are kept (app.core.storage): file:///path (a folder,
    # the default: storage_dir) or s3://bucket/prefix (any S3-compatible store: the endpoint
    # from AWS_ENDPOINT_URL(_S3), region and credentials from the standard AWS variables). With
    # S3, storage_dir is each process's local work folder: upload and job staging, and the
    # cache of inputs a worker reads (at most storage_cache_bytes, least recently used first out).
    storage_url: str | None = Field(None, pattern=r"^(file://|s3://)")
    storage_cache_bytes: int = Field(4096 * MiB, ge=0)
    # Artifact downloads from an object store: a 307 to a presigned URL valid this long,
    # instead of bytes streamed through the API.
    presigned_downloads: bool = False
    presigned_ttl_s: int = Field(300, ge=10, le=7 * 24 * 3600)
    queue: str = "qaas"
    # Uploads are refused (507) and jobs fail as 'storage_full' rather than fill the storage
    # folder's disk past this floor: the database and logs may share that disk.
    storage_min_free_bytes: int = Field(256 * MiB, ge=0)

    max_model_bytes: int = Field(512 * MiB, ge=1)
    max_dataset_bytes: int = Field(1024 * MiB, ge=1)
    # A model bundle (tar of a model and its external-data files): most entries it may hold.
    max_bundle_entries: int = Field(64, ge=2)
    # Bytes an .npz may expand to (its arrays' total size, read from headers before anything
    # is expanded); the storage quota counts this, not the compressed size.
    max_dataset_expanded_bytes: int = Field(4096 * MiB, ge=1)
    # Untrusted uploads are parsed in confined child processes with these limits: at most
    # inspect_processes checks at once, inspect_per_tenant of them for one tenant; the timeout
    # counts running time, not time waiting for a turn.
    inspect_timeout_s: float = Field(120.0, gt=0)
    inspect_memory_bytes: int = Field(8192 * MiB, ge=256 * MiB)
    inspect_processes: int = Field(2, ge=1)
    inspect_per_tenant: int = Field(1, ge=1)
    # Children that touch uploads run without network, see only their own files and drop root
    # (app/core/sandbox.py). Turn off only to debug a sandbox refusal.
    sandbox: bool = True
    # A tiny file can declare tensors no machine holds (a shape-inference bomb): refuse any
    # statically known tensor above this many elements at upload, before a job tries to run it.
    max_tensor_elements: int = Field(1 << 30, ge=1)

    # Request hygiene. Every request body but the model and dataset uploads (which stream to
    # disk under their own limits) is refused (413) past max_json_bytes while it is read. A body
    # that stalls longer than body_read_timeout_s between chunks, or a capped body that has not
    # arrived whole within it, is refused (408). The headers of a request must arrive within
    # header_read_timeout_s; enforced by ``qaas serve`` and ``--http app.core.server:...`` (see
    # app/core/server.py), not by plain uvicorn.
    max_json_bytes: int = Field(1 * MiB, ge=1024)
    body_read_timeout_s: float = Field(30.0, gt=0)
    header_read_timeout_s: float = Field(10.0, gt=0)

    # Per-tenant limits: they protect the service from one tenant, they are not billing. The
    # active-jobs and per-minute counts are checked under a lock on the tenant, so concurrent
    # submissions never overshoot them; the storage quota is checked before an upload streams,
    # so uploads running at the same time can overshoot it.
    quota_stored_bytes: int = Field(20 * 1024 * MiB, ge=1, description="models + datasets")
    quota_active_jobs: int = Field(10, ge=1, description="queued or running at once")
    submissions_per_minute: int = Field(60, ge=1)
    # Models, datasets and finished jobs (with their artifacts) older than this many days are
    # deleted by the workers' reaper; never a queued or running job, nor what one needs.
    # None keeps everything until it is deleted through the API.
    retention_days: float | None = Field(None, gt=0)

    # A /ui login lasts this long (a server-side session row; the cookie holds only its token).
    session_ttl_s: float = Field(12 * 3600.0, gt=0)
    # Wrong API keys (API or /ui login) from one client address: this many in the window and
    # that address gets 429 until the oldest of them leaves the window.
    auth_failure_limit: int = Field(10, ge=1)
    auth_failure_window_s: float = Field(60.0, gt=0)

    job_time_limit_s: int = Field(3600, ge=1, description="soft limit; job fails as 'timeout'")
    # A job's untrusted part (import, calibration, steps, export) runs in a child process with
    # these limits; past either the job fails as 'resource_limit', naming which. Without
    # job_compute_timeout_s only job_time_limit_s bounds its time (as 'timeout').
    job_memory_bytes: int = Field(8192 * MiB, ge=64 * MiB)
    job_compute_timeout_s: float | None = Field(None, gt=0)
    # Time waiting for a worker, apart from time running: a job queued longer than this
    # (since submission, or since it was queued again after a lost worker) fails as
    # 'queue_timeout' instead of starting late.
    queue_time_limit_s: float = Field(24 * 3600.0, gt=0)
    job_lease_s: float = Field(60.0, gt=0, description="a running job's heartbeat lease")
    job_max_attempts: int = Field(3, ge=1)
    requeue_after_s: float = Field(300.0, gt=0, description="resend a queued job not started")
    reaper_interval_s: float = Field(15.0, gt=0)

    # Worker pools (app/jobs/routing.py): jobs whose pipeline learns (qat, adaround,
    # bayesian_bits) on a model of at least gpu_min_parameters (estimated as the model's bytes / 4)
    # go to the "<queue>.gpu" Celery queue while a worker consuming it was seen within
    # gpu_worker_fresh_s; everything else goes to "<queue>" (the cpu pool, the one queue of a
    # single-queue deployment). Each worker records itself (queues, device) every
    # worker_heartbeat_s in the workers table.
    gpu_min_parameters: int = Field(1_000_000, ge=0)
    gpu_worker_fresh_s: float = Field(60.0, gt=0)
    worker_heartbeat_s: float = Field(10.0, gt=0)

    # Webhooks (app/webhooks): a job's callback_url gets one signed POST when the job ends,
    # tried up to webhook_attempts times, the wait doubling from webhook_first_retry_s (5 tries
    # over 7.5 minutes by default), by every worker's dispatcher. Private, loopback and
    # link-local addresses are refused unless webhook_allow_private (a receiver on the same
    # host or closed network).
    webhook_allow_private: bool = False
    webhook_attempts: int = Field(5, ge=1, le=20)
    webhook_first_retry_s: float = Field(30.0, gt=0)
    webhook_timeout_s: float = Field(10.0, gt=0)
    webhook_poll_interval_s: float = Field(2.0, gt=0)
    # Operations: /metrics is open while metrics_token is unset, else it wants
    # "Authorization: Bearer <metrics_token>"; log_format "json" writes one JSON object per
    # log line, with the job and tenant ids it concerns.
    metrics_token: str | None = None
    log_format: Literal["text", "json"] = "text"

    @property
    def embedded(self) -> bool:
        """No external database: the one-machine default, where a local key is made for you."""
        return self.database_url is None

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{self.resolved_data_dir / 'qaas.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return self.resolved_data_dir / "broker"

    @property
    def artifact_root(self) -> Path:
        """The folder backend's folder; with an object store, the local work folder."""
        if self.storage_url and self.storage_url.startswith("file://"):
            return Path(self.storage_url.removeprefix("file://")).expanduser().resolve()
        return (self.storage_dir or self.resolved_data_dir / "storage").expanduser().resolve()

    @property
    def storage_is_s3(self) -> bool:
        return bool(self.storage_url and self.storage_url.startswith("s3://"))

    @property
    def job_hard_time_limit_s(self) -> int:
        return self.job_time_limit_s + 60

    @property
    def visibility_timeout_s(self) -> int:
        """Above the hard limit, or Redis hands a running job to a second worker."""
        return self.job_hard_time_limit_s + 600

    @property
    def local_key_file(self) -> Path:
        return self.resolved_data_dir / "local-api-key"


def get_settings() -> Settings:
    return Settings()
