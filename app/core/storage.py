"""Local (or shared-folder) storage: uploads streamed in under a byte cap, artifacts published
by rename, so a reader sees a whole file or none and a task that runs twice leaves one copy."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import InsufficientStorage, PayloadTooLarge, is_storage_full

CHUNK = 1024 * 1024
# While an upload streams in, free space is looked at again after every this many bytes.
SPACE_CHECK_BYTES = 8 * CHUNK


@dataclass(frozen=True)
class StagedFile:
    path: Path
    size: int
    sha256: str


class LocalStorage:
    """Keys are relative POSIX paths under ``root``; staging lives beside them (same device)."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.staging = root / ".staging"
        self.min_free_bytes = min_free_bytes

    def ensure(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def ensure_space(self, needed: int, what: str) -> None:
        """Refuse (507) before writing ``needed`` bytes would eat into the free-space floor."""
        free = self.free_bytes()
        if free - needed < self.min_free_bytes:
            raise storage_full(what, needed=needed, free=free, floor=self.min_free_bytes)

    def path(self, key: str) -> Path:
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
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            if is_storage_full(error):
                raise storage_full(what, needed=size, free=0, floor=self.min_free_bytes) from None
            raise
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return StagedFile(path, size, digest.hexdigest())

    def commit(self, staged: StagedFile, key: str) -> Path:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        with contextlib.suppress(OSError):
            staged.path.parent.rmdir()  # empty now, unless the caller still has files there
        return target

    def discard(self, staged: StagedFile) -> None:
        """Remove the upload's staging folder and whatever is left in it."""
        shutil.rmtree(staged.path.parent, ignore_errors=True)

    def delete_tree(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def new_staging_dir(self, prefix: str) -> Path:
        self.ensure()
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.staging))

    def publish_dir(self, staged_dir: Path, key: str) -> Path:
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
        return target


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
