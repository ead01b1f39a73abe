"""Where models, datasets and artifacts are kept: ``Storage``, the interface, and
``LocalStorage``, a local (or shared) folder. ``open_storage`` picks the backend that
``QAAS_STORAGE_URL`` names: ``file:///path`` (the default: the folder) or ``s3://bucket/prefix``
(``app.core.storage_s3``). Both stream uploads in under a byte cap, publish artifacts so a reader
sees a whole set or none, and a task that runs twice leaves one copy.

Every backend has a local work folder (``root``): upload staging, job staging and, for object
stores, the cache of inputs a worker reads; the free-space floor guards that folder's disk."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import AppError, InsufficientStorage, PayloadTooLarge, is_storage_full

CHUNK = 1024 * 1024
# While an upload streams in, free space is looked at again after every this many bytes.
SPACE_CHECK_BYTES = 8 * CHUNK


class StorageUnavailable(AppError):
    """The object store did not answer (or refused us): nothing was stored or read; retry."""

    status_code, code = 503, "storage_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "30"})


@dataclass(frozen=True)
class StagedFile:
    path: Path  # always a local copy: the checkers read it
    size: int
    sha256: str
    # Object stores: the staging object the upload streamed to as it arrived (else None).
    object_key: str | None = None


class UploadSink:
    """Where an upload's bytes go besides the local staging file; the folder backend has none."""

    async def write(self, chunk: bytes) -> None:
        return None

    async def finish(self) -> str | None:
        return None

    async def abort(self) -> None:
        return None


class Storage(ABC):
    """The interface. Keys are relative POSIX paths (``models/ID/original``). The local work
    folder's staging (``new_staging_dir``, ``receive``, ``discard``) is shared; what is kept
    (``commit``, ``put_file``, ``publish_dir``, ``delete_tree``, ``local_file``) is per backend."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.staging = root / ".staging"
        self.min_free_bytes = min_free_bytes

    # what each backend implements
    @abstractmethod
    def describe(self) -> str:
        """The store in words, for errors and logs."""

    @abstractmethod
    def commit(self, staged: StagedFile, key: str) -> None:
        """Keep a staged upload (or a file staged beside it) under ``key``."""

    @abstractmethod
    def put_file(self, local: Path, key: str) -> None:
        """Keep a local file (a converted model, a bundle's external data) under ``key``;
        the local file is consumed."""

    @abstractmethod
    def publish_dir(self, staged_dir: Path, key: str) -> None:
        """Publish a finished folder's files under ``key`` as one set, replacing what a
        previous attempt published there; the staged folder is consumed."""

    @abstractmethod
    def delete_tree(self, key: str) -> None:
        """Remove everything kept under ``key``."""

    @abstractmethod
    def local_file(self, key: str, companions: Sequence[str] = ()) -> Path:
        """A local path to read ``key`` from, with ``companions`` (names in the same folder,
        e.g. a model's external-data files) beside it."""

    def _sink(self) -> UploadSink:
        return UploadSink()

    def _discard_staged_object(self, staged: StagedFile) -> None:
        return None

    def ensure(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def ensure_space(self, needed: int, what: str) -> None:
        """Refuse (507) before writing ``needed`` bytes would eat into the free-space floor."""
        free = self.free_bytes()
        if free - needed < self.min_free_bytes:
            raise storage_full(what, needed=needed, free=free, floor=self.min_free_bytes)

    def work_path(self, key: str) -> Path:
        """A path under the local work folder (``root``), refused if it escapes it."""
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return path

    async def receive(
        self,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        declared_length: int | None,
        what: str,
    ) -> StagedFile:
        """Stream a request body to a staging file; refuse past ``max_bytes`` while reading."""
        if declared_length is not None and declared_length > max_bytes:
            raise PayloadTooLarge(f"{what} is {declared_length} bytes; the limit is {max_bytes}")
        self.ensure_space(declared_length or 0, what)
        self.ensure()
        digest = hashlib.sha256()
        size = checked = 0
        # A folder of its own: the checker resolves a model's external data next to the file,
        # so it must see nothing there but what this upload brought (not other tenants' uploads).
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=self.staging))
        path = folder / "upload.part"
        sink = self._sink()
        try:
            with path.open("wb") as handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"{what} exceeds the limit of {max_bytes} bytes")
                    if size - checked >= SPACE_CHECK_BYTES:
                        checked = size
                        self.ensure_space(0, what)
                    digest.update(chunk)
                    handle.write(chunk)
                    await sink.write(chunk)
            object_key = await sink.finish()
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            await sink.abort()
            if is_storage_full(error):
                raise storage_full(what, needed=size, free=0, floor=self.min_free_bytes) from None
            raise
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            await sink.abort()
            raise
        return StagedFile(path, size, digest.hexdigest(), object_key)

    def discard(self, staged: StagedFile) -> None:
        """Remove the upload's staging folder and whatever is left in it (and its staging
        object, for an object store)."""
        shutil.rmtree(staged.path.parent, ignore_errors=True)
        self._discard_staged_object(staged)

    def new_staging_dir(self, prefix: str) -> Path:
        self.ensure()
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.staging))

    def remove_staging(self, folder: Path) -> None:
        """Remove a folder ``new_staging_dir`` made (refused outside the staging folder)."""
        if self.staging.resolve() not in folder.resolve().parents:
            raise ValueError(f"not a staging folder: {folder}")
        shutil.rmtree(folder, ignore_errors=True)


class LocalStorage(Storage):
    """Keys are paths under ``root``; staging lives beside them (same device), so committing
    and publishing are renames."""

    def describe(self) -> str:
        return f"file://{self.root}"

    def path(self, key: str) -> Path:
        return self.work_path(key)

    def local_file(self, key: str, companions: Sequence[str] = ()) -> Path:
        return self.path(key)  # the companions are beside it already

    def commit(self, staged: StagedFile, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        with contextlib.suppress(OSError):
            staged.path.parent.rmdir()  # empty now, unless the caller still has files there

    def put_file(self, local: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local, target)

    def delete_tree(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def publish_dir(self, staged_dir: Path, key: str) -> None:
        """Move a finished folder to ``key``, replacing what a previous attempt left there."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():
            old = target.with_name(f".old-{uuid.uuid4().hex}")
            os.replace(target, old)
        os.replace(staged_dir, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# Where each row's files live: one folder per model (the upload, its external-data files, the
# ONNX converted from a .pt2), per dataset and per job (its artifacts), so deleting a row
# removes one folder.
def model_folder(model_id: str) -> str:
    return f"models/{model_id}"


def dataset_folder(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def job_folder(job_id: str) -> str:
    return f"jobs/{job_id}"


def storage_full(what: str, *, needed: int, free: int, floor: int) -> InsufficientStorage:
    need = f", {needed} needed" if needed else ""
    return InsufficientStorage(
        f"the server's storage is full ({free} bytes free, {floor} kept in reserve{need}): "
        f"nothing was stored for {what}. Try again later; if it persists, the operator must "
        "free space in the storage folder (QAAS_STORAGE_DIR)"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
