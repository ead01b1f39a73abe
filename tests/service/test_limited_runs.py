"""A job's untrusted part runs in a limited child process: past the memory or the time limit
the job fails as ``resource_limit`` naming the limit, nothing is left in staging, and the
process that ran it (a worker, here the test itself) runs the next job as usual."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from app.core.config import MiB
from app.core.storage_s3 import open_storage
from tests.service.conftest import stored_under
from tests.support.hooks import freeze_recording_child_main, slow_child_main
from worker import limited
from worker.runner import run_job
from worker.runtime import Runtime


@contextmanager
def runtime_with(settings, **limits) -> Iterator[Runtime]:
    runtime = Runtime.build(settings.model_copy(update=limits), pooled=False)
    try:
        yield runtime
    finally:
        runtime.engine.dispose()


@pytest.fixture
def submit_job(api, make_tenant, tiny_model, tiny_data):
    tenant = make_tenant()

    def put(route, path) -> str:
        response = api.post(
            route,
            params={"filename": path.name},
            content=path.read_bytes(),
            headers={**tenant, "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    body = {
        "model_id": put("/v1/models", tiny_model),
        "calibration_id": put("/v1/datasets", tiny_data[0]),
        "quantization": {"weight_bits": 8, "activation_bits": 8},
    }

    def submit(calibration: Path | None = None) -> str:
        data = dict(body)
        if calibration is not None:
            data["calibration_id"] = put("/v1/datasets", calibration)
        response = api.post("/v1/jobs", json=data, headers=tenant)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def state(job_id: str) -> dict:
        return api.get(f"/v1/jobs/{job_id}", headers=tenant).json()

    submit.state = state  # type: ignore[attr-defined]
    return submit


def staging_of(settings, job_id: str) -> list:
    return list((settings.artifact_root / ".staging").glob(f"job-{job_id}-*"))


def assert_resource_limit(settings, job: dict, limit_words: str) -> None:
    assert job["status"] == "failed", job
    assert job["error"]["kind"] == "resource_limit", job
    assert limit_words in job["error"]["detail"], job["error"]
    assert job["artifacts"] == []
    assert not stored_under(open_storage(settings), f"jobs/{job['id']}/artifacts")
    assert staging_of(settings, job["id"]) == []


def test_memory_limit_fails_the_job_and_the_next_one_runs(settings, submit_job, tmp_path):
    # Calibration data that expands to 77 MB (a 60 KB upload): the job needs more than its
    # 64 MiB limit whatever free heap the forked child inherits from this long-lived process.
    large = tmp_path / "large.npz"
    np.savez_compressed(large, input=np.zeros((300_000, 1, 8, 8), np.float32))
    job_id = submit_job(large)
    with runtime_with(settings, job_memory_bytes=64 * MiB) as runtime:
        assert run_job(runtime, job_id, "limited-test").status == "failed"
    assert_resource_limit(settings, submit_job.state(job_id), "memory limit of 67108864 bytes")
    after = submit_job()
    with runtime_with(settings) as runtime:
        assert run_job(runtime, after, "limited-test").status == "succeeded"
    assert submit_job.state(after)["status"] == "succeeded"


def test_time_limit_fails_the_job_and_the_next_one_runs(settings, submit_job, monkeypatch):
    job_id = submit_job()
    with monkeypatch.context() as patch:
        patch.setattr(limited, "_child_main", slow_child_main(0.3))  # a job that takes a while
        with runtime_with(settings, job_compute_timeout_s=1.0) as runtime:
            assert run_job(runtime, job_id, "limited-test").status == "failed"
    assert_resource_limit(settings, submit_job.state(job_id), "time limit of 1 s")
    after = submit_job()
    with runtime_with(settings, job_compute_timeout_s=300.0) as runtime:
        assert run_job(runtime, after, "limited-test").status == "succeeded"


def _write_loaded_modules(path: Path) -> None:
    import sys

    path.write_text("\n".join(sorted(sys.modules)))


def test_job_children_start_with_what_jobs_import_already_loaded(tmp_path):
    """Anything a job imports that the forkserver did not is imported again by every job
    (torch.optim's first optimizer pulls in torch._dynamo: 1.6 s of CPU per QAT job)."""
    limited.warm_up()
    out = tmp_path / "modules.txt"
    child = limited._context().Process(target=_write_loaded_modules, args=(out,))
    child.start()
    child.join(60)
    loaded = set(out.read_text().splitlines())
    assert {"torch._dynamo", "numpy.ma", "onnxruntime", "qaas_engine.steps.training"} <= loaded


def test_a_job_child_leaves_what_the_forkserver_imported_to_no_collection(
    settings, submit_job, monkeypatch, tmp_path
):
    """Without ``gc.freeze`` a job's first full collection walks torch and the engine (millions
    of objects the forkserver imported): 0.3 s of CPU per job, and a copy of each page walked."""
    limited.warm_up()
    out = tmp_path / "frozen.txt"
    job_id = submit_job()
    with monkeypatch.context() as patch:
        patch.setattr(limited, "_child_main", freeze_recording_child_main(out))
        with runtime_with(settings) as runtime:
            assert run_job(runtime, job_id, "limited-test").status == "succeeded"
    # torch, onnxruntime's bindings and the engine are several hundred thousand objects
    assert int(out.read_text()) > 200_000
