"""The storage folder fills up (a small tmpfs, filled by a ballast file): uploads get 507
``storage_full`` saying what to do, whether the free-space floor refuses them up front or the
disk itself runs out mid-stream; jobs whose artifacts cannot be written end ``failed`` with
``storage_full`` and leave nothing partial; the API answers throughout; once space is freed,
uploads and jobs work again."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.faults.conftest import (
    Cluster,
    Prober,
    assert_end_state,
    submit,
    wait_terminal,
)

PAGE = 4096


@contextmanager
def storage_left_with(cluster: Cluster, free_bytes: int) -> Iterator[None]:
    """Fill the storage folder's tmpfs until ``free_bytes`` are free; empty it after."""
    root = cluster.settings.artifact_root
    ballast = root / "ballast.bin"
    size = shutil.disk_usage(root).free - free_bytes
    size -= size % PAGE
    with ballast.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    try:
        assert 0 <= shutil.disk_usage(root).free - free_bytes < PAGE
        yield
    finally:
        ballast.unlink()


def upload(http, tenant, route: str, body, filename: str):
    return http.post(
        route,
        params={"filename": filename},
        content=body,
        headers={**tenant, "Content-Type": "application/octet-stream"},
    )


def assert_storage_full(response) -> None:
    assert response.status_code == 507, response.text
    body = response.json()
    assert body["error"] == "storage_full", body
    assert "storage is full" in body["detail"] and "Try again later" in body["detail"], body
    assert int(response.headers["Retry-After"]) > 0


def staged_uploads(cluster: Cluster) -> list[Path]:
    staging = cluster.settings.artifact_root / ".staging"
    return [p for p in staging.iterdir() if p.name.startswith("upload-")]


def test_storage_filling_up(cluster: Cluster, http, tenant, job_body, tiny_model, tiny_data):
    if not cluster.storage_is_tmpfs:
        pytest.skip("mounting a tmpfs needs root; tests/service/test_storage_floor.py covers "
                    "the free-space floor without one")  # fmt: skip
    floor = cluster.settings.storage_min_free_bytes
    model_count = len(http.get("/v1/models", headers=tenant).json())
    witness = submit(http, tenant, job_body)
    jobs: list[str] = [witness]
    with Prober(cluster.url, tenant, witness):
        wait_terminal(http, tenant, [witness])
        # Below the floor: refused before a byte is written, and the job cannot start.
        with storage_left_with(cluster, floor // 2):
            assert_storage_full(upload(http, tenant, "/v1/models", tiny_model.read_bytes(), "m"))
            assert_storage_full(
                upload(http, tenant, "/v1/datasets", tiny_data[0].read_bytes(), "d.npz")
            )
            jobs.append(submit(http, tenant, job_body))
            refused = wait_terminal(http, tenant, jobs[-1:])[jobs[-1]]
        # Just above the floor: the checks pass and the disk itself runs out while writing.
        with storage_left_with(cluster, floor + PAGE):
            chunked = (b"\0" * 65536 for _ in range(16))  # no Content-Length: streamed
            assert_storage_full(upload(http, tenant, "/v1/datasets", chunked, "big.npz"))
            jobs.append(submit(http, tenant, job_body))
            filled = wait_terminal(http, tenant, jobs[-1:])[jobs[-1]]
        assert staged_uploads(cluster) == []
        assert len(http.get("/v1/models", headers=tenant).json()) == model_count
        # Space freed: everything works again.
        assert upload(http, tenant, "/v1/models", tiny_model.read_bytes(), "m").status_code == 201
        jobs.append(submit(http, tenant, job_body))
        finished = wait_terminal(http, tenant, jobs)
    for failed, cause in ((refused, "storage is full"), (filled, "filled up while")):
        assert failed["status"] == "failed", failed
        assert failed["error"]["kind"] == "storage_full", failed
        assert cause in failed["error"]["detail"], failed
    assert finished[jobs[-1]]["status"] == "succeeded", finished[jobs[-1]]
    assert_end_state(cluster, http, tenant, finished)
    assert cluster.workers_alive()
