"""An S3-compatible object store as the storage backend (``QAAS_STORAGE_URL=s3://bucket/prefix``).

boto3's own configuration chain finds it: the endpoint from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (unset: AWS itself), region and credentials from the standard variables,
profile or instance role, so MinIO, Ceph, R2 and S3 all work.

- Uploads stream to a staging object as they arrive (a multipart upload once a part's worth has
  come in, one PUT for a smaller file), alongside the local staging copy the checkers read; a
  refused or failed upload aborts it. Committing copies the staging object to its key.
- Artifacts are published as a set: every file under ``KEY/VERSION/``, then ``KEY/MANIFEST.json``
  naming VERSION, written last (one PUT, atomic in S3), then older versions deleted. Readers go
  through the manifest, so they see a whole set or none.
- Workers read inputs from a local cache under ``root/.cache`` (at most ``max_cache_bytes``,
  least recently used out first). Keys never change content (each row has its own id), so a
  cached file is never stale.
- An unreachable or refusing store raises ``StorageUnavailable`` (503 in the API,
  ``storage_unavailable`` for a job): never a silent success.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings
from app.core.errors import AppError
from app.core.storage import LocalStorage, StagedFile, Storage, StorageUnavailable, UploadSink

log = logging.getLogger("qaas.storage")
# Multipart part size: S3's minimum is 5 MiB (except the last part).
PART_BYTES = 8 * 1024 * 1024
MANIFEST = "MANIFEST.json"
TRANSFER = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)
MISSING = {"NoSuchKey", "404", "NotFound"}


class RangeNotSatisfiable(AppError):
    status_code, code = 416, "range_not_satisfiable"


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix")."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"QAAS_STORAGE_URL names no bucket: {url!r} (want s3://bucket/prefix)")
    return bucket, prefix.strip("/")


class S3Storage(Storage):
    def __init__(
        self,
        root: Path,
        *,
        url: str,
        min_free_bytes: int = 0,
        max_cache_bytes: int = 4 * 1024**3,
        client: Any = None,
    ) -> None:
        super().__init__(root, min_free_bytes=min_free_bytes)
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.cache = root / ".cache"
        self.max_cache_bytes = max_cache_bytes
        self._client = client
        self._pid = os.getpid()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        return cls(
            settings.artifact_root,
            url=settings.storage_url or "",
            min_free_bytes=settings.storage_min_free_bytes,
            max_cache_bytes=settings.storage_cache_bytes,
        )

    # the client, per process (a forked worker makes its own)
    @property
    def client(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            config = Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                signature_version="s3v4",  # presigned URLs too: R2 and MinIO want SigV4
                # MinIO, Ceph and friends are addressed by path; AWS by virtual host.
                s3={"addressing_style": "path" if custom else "auto"},
            )
            self._client = boto3.session.Session().client("s3", config=config)
            self._pid = os.getpid()
        return self._client

    def describe(self) -> str:
        endpoint = getattr(getattr(self._client, "meta", None), "endpoint_url", None)
        return f"{self.url} ({endpoint or 'endpoint from AWS_ENDPOINT_URL / the AWS default'})"

    def full(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"storage key escapes the prefix: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Any failure to reach or use the store is a StorageUnavailable saying so."""
        try:
            yield
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in MISSING:
                raise FileNotFoundError(f"{self.url}: no object for {what}") from error
            if code == "InvalidRange":
                raise RangeNotSatisfiable("the requested range is outside the file") from error
            raise self.unavailable(what, f"{code}: {error}") from error
        except BotoCoreError as error:
            raise self.unavailable(what, str(error)) from error

    def unavailable(self, what: str, why: str) -> StorageUnavailable:
        log.warning("object store %s failed while %s: %s", self.url, what, why)
        return StorageUnavailable(
            f"the object store ({self.url}) could not be used while {what}: {why}. Nothing was "
            "stored or lost; try again shortly. If it persists, the operator must check the "
            "store and the AWS_* settings"
        )

    # uploads
    def _sink(self) -> UploadSink:
        return MultipartSink(self, f".staging/{uuid.uuid4().hex}/upload.part")

    def _discard_staged_object(self, staged: StagedFile) -> None:
        if staged.object_key is not None:
            with contextlib.suppress(StorageUnavailable, FileNotFoundError):
                self._delete_keys([self.full(staged.object_key)], "removing a staged upload")

    def commit(self, staged: StagedFile, key: str) -> None:
        if staged.object_key is None:  # a file staged beside an upload (a bundle's model)
            self.put_file(staged.path, key)
        else:
            with self.calling("storing an upload"):
                self.client.copy(
                    {"Bucket": self.bucket, "Key": self.full(staged.object_key)},
                    self.bucket,
                    self.full(key),
                    Config=TRANSFER,
                )
            self._discard_staged_object(staged)
            staged.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            staged.path.parent.rmdir()  # empty now, unless the caller still has files there

    def put_file(self, local: Path, key: str) -> None:
        with self.calling("storing a file"):
            self.client.upload_file(str(local), self.bucket, self.full(key), Config=TRANSFER)
        local.unlink(missing_ok=True)

    # artifacts
    def publish_dir(self, staged_dir: Path, key: str) -> None:
        version = uuid.uuid4().hex
        names = sorted(p.relative_to(staged_dir).as_posix() for p in staged_dir.rglob("*"))
        files = [name for name in names if (staged_dir / name).is_file()]
        with self.calling("publishing a job's artifacts"):
            for name in files:
                self.client.upload_file(
                    str(staged_dir / name),
                    self.bucket,
                    self.full(f"{key}/{version}/{name}"),
                    Config=TRANSFER,
                )
            # Written last: until now readers saw the previous set (or none).
            manifest = json.dumps({"version": version, "files": files}).encode()
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.full(f"{key}/{MANIFEST}"),
                Body=manifest,
                ContentType="application/json",
            )
        shutil.rmtree(staged_dir, ignore_errors=True)
        keep = {self.full(f"{key}/{MANIFEST}")} | {
            self.full(f"{key}/{version}/{name}") for name in files
        }
        with contextlib.suppress(StorageUnavailable):  # leftovers go with the job's folder
            stale = [k for k in self._list(self.full(key) + "/") if k not in keep]
            self._delete_keys(stale, "removing a previous attempt's artifacts")

    def published_key(self, key: str, name: str) -> str:
        """The object holding file ``name`` of the set published under ``key``."""
        with self.calling("reading an artifact manifest"):
            body = self.client.get_object(Bucket=self.bucket, Key=self.full(f"{key}/{MANIFEST}"))
            manifest = json.loads(body["Body"].read())
        if name not in manifest["files"]:
            raise FileNotFoundError(f"{key}: no published file {name!r}")
        return self.full(f"{key}/{manifest['version']}/{name}")

    def stream(
        self, object_key: str, range_header: str | None
    ) -> tuple[int, dict[str, str], Iterator[bytes]]:
        """(status, headers, body) of a GET, a ``Range`` passed on to the store."""
        extra = {"Range": range_header} if range_header else {}
        with self.calling("reading an artifact"):
            reply = self.client.get_object(Bucket=self.bucket, Key=object_key, **extra)
        headers = {"Content-Length": str(reply["ContentLength"]), "Accept-Ranges": "bytes"}
        status = 200
        if reply.get("ContentRange"):
            status, headers["Content-Range"] = 206, reply["ContentRange"]
        body = reply["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(1024 * 1024)
            finally:
                body.close()

        return status, headers, chunks()

    def presigned_url(self, object_key: str, *, filename: str, media_type: str, ttl_s: int) -> str:
        with self.calling("signing a download link"):
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": object_key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                    "ResponseContentType": media_type,
                },
                ExpiresIn=ttl_s,
            )
        return url

    # deletion
    def delete_tree(self, key: str) -> None:
        self._delete_keys(self._list(self.full(key) + "/"), f"deleting {key}")
        shutil.rmtree(self.cache / key, ignore_errors=True)

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self.calling("listing objects"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def _delete_keys(self, keys: list[str], what: str) -> None:
        with self.calling(what):
            for start in range(0, len(keys), 1000):
                batch = [{"Key": key} for key in keys[start : start + 1000]]
                reply = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                if reply.get("Errors"):
                    raise self.unavailable(what, str(reply["Errors"][:3]))

    # the local cache of inputs
    def local_file(self, key: str, companions: Sequence[str] = ()) -> Path:
        folder = key.rpartition("/")[0]
        wanted = [key, *(f"{folder}/{name}" for name in companions)]
        self.cache.mkdir(parents=True, exist_ok=True)
        for item in wanted:
            target = self.cache_path(item)
            if target.is_file():
                os.utime(target)  # most recently used
                continue
            self.ensure_space(self._size(item), "a job's input")
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(prefix=".part-", dir=target.parent)
            os.close(handle)
            try:
                with self.calling(f"fetching {item}"):
                    self.client.download_file(
                        self.bucket, self.full(item), partial, Config=TRANSFER
                    )
                os.replace(partial, target)
            finally:
                Path(partial).unlink(missing_ok=True)
        self.evict(keep={self.cache_path(item) for item in wanted})
        return self.cache_path(key)

    def cache_path(self, key: str) -> Path:
        path = (self.cache / key).resolve()
        if self.cache.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the cache: {key!r}")
        return path

    def _size(self, key: str) -> int:
        with self.calling(f"looking up {key}"):
            size: int = self.client.head_object(Bucket=self.bucket, Key=self.full(key))[
                "ContentLength"
            ]
        return size

    def evict(self, keep: set[Path]) -> None:
        """Least recently used files out until the cache is within its cap (``keep``: the files
        the caller is about to use). One process at a time (a lock file)."""
        with (self.cache / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = []
            for path in self.cache.rglob("*"):
                if path.is_file() and path.name != ".lock" and not path.name.startswith(".part-"):
                    stat = path.stat()
                    entries.append((stat.st_mtime, stat.st_size, path))
            total = sum(size for _, size, _ in entries)
            for _, size, path in sorted(entries, key=lambda entry: entry[0]):
                if total <= self.max_cache_bytes:
                    break
                if path.resolve() in keep:
                    continue
                path.unlink(missing_ok=True)
                total -= size
            if total > self.max_cache_bytes:
                log.warning(
                    "input cache holds %s bytes, over QAAS_STORAGE_CACHE_BYTES=%s: "
                    "one job's inputs are larger than the cap",
                    total,
                    self.max_cache_bytes,
                )


class MultipartSink(UploadSink):
    """An upload's bytes to a staging object as they arrive: parts of ``PART_BYTES``."""

    def __init__(self, store: S3Storage, key: str) -> None:
        self.store, self.key = store, key
        self.object = store.full(key)
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    async def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) >= PART_BYTES:
            data, self.buffer = bytes(self.buffer), bytearray()
            await run_in_threadpool(self._part, data)

    def _part(self, data: bytes) -> None:
        client = self.store.client
        with self.store.calling("receiving an upload"):
            if self.upload_id is None:
                started = client.create_multipart_upload(Bucket=self.store.bucket, Key=self.object)
                self.upload_id = started["UploadId"]
            number = len(self.parts) + 1
            reply = client.upload_part(
                Bucket=self.store.bucket,
                Key=self.object,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
            )
        self.parts.append({"ETag": reply["ETag"], "PartNumber": number})

    async def finish(self) -> str | None:
        await run_in_threadpool(self._finish)
        return self.key

    def _finish(self) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:
            with self.store.calling("receiving an upload"):
                client.put_object(Bucket=bucket, Key=self.object, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._part(bytes(self.buffer))
            self.buffer = bytearray()
        with self.store.calling("receiving an upload"):
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=self.object,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )

    async def abort(self) -> None:
        await run_in_threadpool(self._abort)

    def _abort(self) -> None:
        client, bucket = self.store.client, self.store.bucket
        # Best effort: the store may be what failed; a lifecycle rule on .staging/ and on
        # incomplete multipart uploads sweeps what is left (README).
        with contextlib.suppress(BotoCoreError, ClientError):
            if self.upload_id is not None:
                client.abort_multipart_upload(
                    Bucket=bucket, Key=self.object, UploadId=self.upload_id
                )
            else:
                client.delete_object(Bucket=bucket, Key=self.object)


def open_storage(settings: Settings) -> Storage:
    """The backend ``QAAS_STORAGE_URL`` names, its local work folder made."""
    storage: Storage
    if settings.storage_is_s3:
        storage = S3Storage.from_settings(settings)
    else:
        storage = LocalStorage(
            settings.artifact_root, min_free_bytes=settings.storage_min_free_bytes
        )
    storage.ensure()
    return storage
