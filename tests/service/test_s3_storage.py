"""The object-store backend (``app.core.storage_s3``) against a local S3 server (moto, a process
of its own), whatever mode the rest of the suite runs in: uploads stream to a staging object in
parts and a refused upload leaves no object and no open multipart upload; a published set is
seen whole or not at all; downloads stream (with Range) or redirect to a presigned URL; the
worker's input cache stays under its cap, least recently used out first; an unreachable store
is a 503 for the API and a ``storage_unavailable`` job, never a silent success."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator

import boto3
import httpx
import pytest
from botocore.exceptions import EndpointConnectionError
from fastapi.testclient import TestClient

import qaas
from app.core.db import transaction
from app.core.errors import PayloadTooLarge
from app.core.storage import StorageUnavailable
from app.core.storage_s3 import PART_BYTES, S3Storage
from app.jobs.tables import Job
from app.main import create_app
from tests.service.conftest import (
    free_port,
    published_names,
    start_api,
    stop_process,
    stored_under,
    upload,
)
from tests.support.s3_server import CREDENTIALS, make_bucket, s3_server
from worker.runner import run_job
from worker.runtime import Runtime

BUCKET = "qaas-s3-tests"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        make_bucket(url, BUCKET)
        yield url


@pytest.fixture
def s3_env(endpoint, monkeypatch):
    """The standard AWS variables, pointed at the local server (as for MinIO or R2)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    return endpoint


@pytest.fixture
def store(s3_env, tmp_path) -> S3Storage:
    storage = S3Storage(tmp_path / "work", url=f"s3://{BUCKET}/unit-{uuid.uuid4().hex[:8]}")
    storage.ensure()
    return storage


@pytest.fixture
def raw(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip


def body(total: int, chunk: int = MiB) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, total, chunk):
            yield bytes([start // chunk % 251]) * min(chunk, total - start)

    return chunks()


def content(total: int, chunk: int = MiB) -> bytes:
    return b"".join(bytes([start // chunk % 251]) * min(chunk, total - start)
                    for start in range(0, total, chunk))  # fmt: skip


def receive(store: S3Storage, total: int, max_bytes: int):
    return asyncio.run(
        store.receive(body(total), max_bytes=max_bytes, declared_length=None, what="upload")
    )


def open_uploads(raw, store: S3Storage) -> list:
    return raw.list_multipart_uploads(Bucket=BUCKET, Prefix=store.prefix).get("Uploads", [])


def test_a_large_upload_streams_in_parts_and_commits_by_copy(store, raw):
    total = 2 * PART_BYTES + 3 * MiB
    staged = receive(store, total, max_bytes=64 * MiB)
    assert staged.size == total and staged.object_key is not None
    head = raw.head_object(Bucket=BUCKET, Key=store.full(staged.object_key))
    assert head["ContentLength"] == total and head["ETag"].endswith('-3"')  # three parts
    store.commit(staged, "datasets/d1/data.npz")
    stored = raw.get_object(Bucket=BUCKET, Key=store.full("datasets/d1/data.npz"))["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == staged.sha256 == sha(content(total))
    assert stored_under(store, ".staging") == []  # the staging object went
    assert not list(store.staging.iterdir())  # and the local copy


def test_an_upload_over_its_cap_aborts_and_leaves_nothing(store, raw):
    with pytest.raises(PayloadTooLarge):
        receive(store, 3 * PART_BYTES, max_bytes=2 * PART_BYTES + 1)
    assert open_uploads(raw, store) == []
    assert stored_under(store, ".staging") == []
    assert not list(store.staging.iterdir())
    with pytest.raises(PayloadTooLarge):  # below one part: a single PUT, never made
        receive(store, MiB, max_bytes=MiB // 2)
    assert stored_under(store, "") == []


def publish(store: S3Storage, key: str, files: dict[str, bytes]) -> None:
    staged = store.new_staging_dir("publish-")
    for name, data in files.items():
        (staged / name).write_bytes(data)
    store.publish_dir(staged, key)


def read_published(store: S3Storage, raw, key: str, name: str) -> bytes:
    return raw.get_object(Bucket=BUCKET, Key=store.published_key(key, name))["Body"].read()


def test_a_publish_is_seen_whole_or_not_at_all(store, raw, monkeypatch):
    key = "jobs/j1/artifacts"
    publish(store, key, {"model.onnx": b"first", "report.json": b"{}"})
    assert published_names(store, key) == {"model.onnx", "report.json"}

    # A second attempt dies before its manifest is written: its files are under a version
    # no manifest names, so readers keep the first set, whole.
    real_put = store.client.put_object

    def put_object(**kwargs):
        if kwargs["Key"].endswith("MANIFEST.json"):
            raise EndpointConnectionError(endpoint_url="http://store.invalid")
        return real_put(**kwargs)

    monkeypatch.setattr(store.client, "put_object", put_object)
    with pytest.raises(StorageUnavailable):
        publish(store, key, {"model.onnx": b"second", "extra.bin": b"x"})
    assert read_published(store, raw, key, "model.onnx") == b"first"
    with pytest.raises(FileNotFoundError):
        store.published_key(key, "extra.bin")

    monkeypatch.undo()
    publish(store, key, {"model.onnx": b"third", "report.json": b"[]"})
    assert read_published(store, raw, key, "model.onnx") == b"third"
    manifest = json.loads(
        raw.get_object(Bucket=BUCKET, Key=store.full(f"{key}/MANIFEST.json"))["Body"].read()
    )
    # Earlier versions, the dead attempt's included, are gone once the new set is published.
    assert stored_under(store, key) == sorted(
        ["MANIFEST.json", *(f"{manifest['version']}/{n}" for n in ("model.onnx", "report.json"))]
    )
    store.delete_tree("jobs/j1")
    assert stored_under(store, "jobs/j1") == []


def test_the_input_cache_keeps_under_its_cap_least_recently_used_out(store, raw):
    for name in "abcd":
        raw.put_object(Bucket=BUCKET, Key=store.full(f"models/{name}/original"), Body=b"x" * MiB)
    store.max_cache_bytes = 2 * MiB + MiB // 2  # room for two
    a = store.local_file("models/a/original")
    assert a.read_bytes() == b"x" * MiB
    b = store.local_file("models/b/original")
    assert store.local_file("models/a/original") == a  # a hit: a is now the most recent
    c = store.local_file("models/c/original")
    assert a.exists() and c.exists() and not b.exists()  # b was least recently used
    store.local_file("models/d/original")
    assert not a.exists() and c.exists()
    cached = [p for p in store.cache.rglob("*") if p.is_file() and p.name != ".lock"]
    assert sum(p.stat().st_size for p in cached) <= store.max_cache_bytes


def test_a_models_external_data_is_fetched_beside_it(store, raw):
    for name, data in {"model.onnx": b"graph", "weights.bin": b"w" * 100}.items():
        raw.put_object(Bucket=BUCKET, Key=store.full(f"models/m/{name}"), Body=data)
    path = store.local_file("models/m/model.onnx", companions=["weights.bin"])
    assert path.read_bytes() == b"graph" and (path.parent / "weights.bin").stat().st_size == 100


def test_an_unreachable_store_raises_storage_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    dead = S3Storage(tmp_path / "work", url=f"s3://{BUCKET}/dead")
    dead.ensure()
    with pytest.raises(StorageUnavailable) as error:
        dead.local_file("models/x/original")
    assert "could not be used" in error.value.detail and error.value.status_code == 503
    with pytest.raises(StorageUnavailable):
        receive(dead, MiB, max_bytes=2 * MiB)
    assert not list(dead.staging.iterdir())


# Through the API and a worker, on settings of their own in S3 mode.
@pytest.fixture
def s3_settings(settings, s3_env):
    return settings.model_copy(
        update={
            "storage_url": f"s3://{BUCKET}/api-{uuid.uuid4().hex[:8]}",
            "queue": f"qaas-s3-{uuid.uuid4().hex[:8]}",  # no worker reads it
        }
    )


def finish_with_artifacts(sessions, storage, job_id: str, files: dict[str, bytes]) -> None:
    staged = storage.new_staging_dir("finished-")
    manifest = []
    for name, data in files.items():
        (staged / name).write_bytes(data)
        manifest.append({"name": name, "size_bytes": len(data), "sha256": sha(data)})
    storage.publish_dir(staged, f"jobs/{job_id}/artifacts")
    with transaction(sessions) as session:
        job = session.get(Job, job_id)
        job.status, job.artifacts, job.report = "succeeded", manifest, {"metrics": {}}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def submitted(api, tenant, tiny_model) -> dict:
    model = upload(api, "/v1/models", tiny_model, tenant)
    assert model.status_code == 201, model.text
    body = {"model_id": model.json()["id"], "quantization": {"activation_bits": None}}
    job = api.post("/v1/jobs", json=body, headers=tenant)
    assert job.status_code == 202, job.text
    return job.json()


def test_downloads_stream_with_range_or_redirect_to_a_presigned_url(
    s3_settings, sessions, make_tenant, tiny_model
):
    tenant = make_tenant()
    data = bytes(range(256)) * 64
    with TestClient(create_app(s3_settings)) as api:
        job = submitted(api, tenant, tiny_model)
        storage = api.app.state.context.storage
        assert isinstance(storage, S3Storage)
        finish_with_artifacts(sessions, storage, job["id"], {"model.quant.onnx": data})
        url = f"/v1/jobs/{job['id']}/artifacts/model.quant.onnx"
        whole = api.get(url, headers=tenant)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["etag"] == f'"{sha(data)}"'
        part = api.get(url, headers={**tenant, "Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"

    presigning = s3_settings.model_copy(update={"presigned_downloads": True})
    with TestClient(create_app(presigning)) as api:
        moved = api.get(url, headers=tenant, follow_redirects=False)
        assert moved.status_code == 307, moved.text
        location = moved.headers["location"]
        assert "X-Amz-Expires=300" in location and "X-Amz-Signature=" in location
        fetched = httpx.get(location)  # no API key: the signature is the permission
        assert fetched.status_code == 200 and fetched.content == data
        tampered = httpx.get(location.replace("model.quant.onnx", "report.json"))
        assert tampered.status_code == 403


def test_the_sdk_downloads_through_a_presigned_redirect(
    s3_settings, sessions, make_tenant, tiny_model, tmp_path
):
    """A real API process (uvicorn) that redirects; the SDK follows and checks the sha256."""
    tenant = make_tenant()
    presigning = s3_settings.model_copy(update={"presigned_downloads": True})
    files = {"model.quant.onnx": b"q" * 5000, "report.json": b'{"ok": true}'}
    with TestClient(create_app(presigning)) as api:
        job = submitted(api, tenant, tiny_model)
        finish_with_artifacts(sessions, api.app.state.context.storage, job["id"], files)
    process, url = start_api(presigning)
    try:
        key = tenant["Authorization"].split()[1]
        with qaas.Client(url, key) as client:
            written = client.api.download(job["id"], tmp_path / "out")
        assert {name: path.read_bytes() for name, path in written.items()} == files
    finally:
        stop_process(process)


def test_an_unreachable_store_is_a_503_upload_and_a_storage_unavailable_job(
    s3_settings, make_tenant, tiny_model, monkeypatch
):
    tenant = make_tenant()
    with TestClient(create_app(s3_settings)) as api:
        job = submitted(api, tenant, tiny_model)  # stored while the store was up
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        api.app.state.context.storage._client = None  # a new client reads the new endpoint
        refused = upload(api, "/v1/models", tiny_model, tenant)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "storage_unavailable"
        assert "Retry-After" in refused.headers

        runtime = Runtime.build(s3_settings, pooled=False)
        try:
            assert run_job(runtime, job["id"], "s3-test").status == "failed"
        finally:
            runtime.engine.dispose()
        failed = api.get(f"/v1/jobs/{job['id']}", headers=tenant).json()
    assert failed["status"] == "failed"
    assert failed["error"]["kind"] == "storage_unavailable", failed["error"]
    assert "try again" in failed["error"]["detail"]
