"""A model with its external-data files, uploaded as one uncompressed tar archive.

ONNX keeps models over protobuf's 2 GB limit as a model file plus external-data files whose
``location`` is relative to the model. The archive is streamed to staging under the same byte
cap and quota as any upload, then every header is read and checked — entry count, kinds, names,
total size, free space — before a single byte is extracted; extraction writes regular files
only, by our own ``open``, inside the upload's folder (never ``tarfile.extract``)."""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.core.errors import InvalidInput
from app.core.storage import CHUNK, Storage

BUNDLE_CONTENT_TYPE = "application/x-tar"
MODEL_SUFFIX = ".onnx"
MAX_DEPTH = 8
SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
RESERVED = {"original", "model.onnx"}  # names the stored model itself uses


@dataclass(frozen=True)
class BundleFile:
    name: str  # POSIX path relative to the model's folder, as the model's locations say it
    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Bundle:
    model: BundleFile
    external_data: list[BundleFile]

    @property
    def size_bytes(self) -> int:
        return self.model.size_bytes + sum(f.size_bytes for f in self.external_data)


def unpack_bundle(archive: Path, *, max_entries: int, storage: Storage) -> Bundle:
    """Check the archive's headers, then extract its files next to it (``bundle/``)."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = _checked_members(tar, max_entries)
            model, data = _split_model(members)
            total = sum(m.size for m in members)
            storage.ensure_space(total, "the model bundle's files")
            folder = archive.parent / "bundle"
            extracted = [_extract(tar, member, folder) for member in [model, *data]]
    except tarfile.ReadError as error:
        raise InvalidInput(
            f"not an uncompressed tar archive ({error}); send the model and its external-data "
            "files as `tar cf bundle.tar model.onnx model.onnx.data` (no compression)"
        ) from None
    archive.unlink()  # its bytes now live in the extracted files
    return Bundle(extracted[0], extracted[1:])


def _checked_members(tar: tarfile.TarFile, max_entries: int) -> list[tarfile.TarInfo]:
    files: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    for count, member in enumerate(tar, start=1):
        if count > max_entries:
            raise InvalidInput(
                f"the bundle holds more than {max_entries} entries; it should hold the model "
                "and its external-data files only"
            )
        if member.isdir():
            continue
        if not member.isreg() or member.issparse():
            kind = "a link" if member.issym() or member.islnk() else "not a regular file"
            raise InvalidInput(
                f"bundle entry '{member.name}' is {kind}; a bundle holds regular files only"
            )
        name = _safe_name(member.name)
        if name in seen:
            raise InvalidInput(f"bundle entry '{name}' appears twice")
        seen.add(name)
        member.name = name
        files.append(member)
    return files


def _safe_name(raw: str) -> str:
    path = PurePosixPath(raw)
    parts = path.parts
    if (
        path.is_absolute()
        or not parts
        or len(parts) > MAX_DEPTH
        or not all(SAFE_PART.match(part) for part in parts)
    ):
        raise InvalidInput(
            f"bundle entry '{raw}' has a name qaas does not store: use relative paths of "
            "letters, digits, '.', '_' and '-' (no absolute paths, no '..')"
        )
    return str(path)


def _split_model(
    members: list[tarfile.TarInfo],
) -> tuple[tarfile.TarInfo, list[tarfile.TarInfo]]:
    models = [m for m in members if m.name.endswith(MODEL_SUFFIX) and "/" not in m.name]
    if len(models) != 1:
        found = ", ".join(m.name for m in models) or "none"
        raise InvalidInput(
            f"a bundle holds exactly one {MODEL_SUFFIX} model at its top level, with its "
            f"external-data files; found {found}"
        )
    data = [m for m in members if m is not models[0]]
    for member in data:
        if member.name in RESERVED:
            raise InvalidInput(f"bundle entry '{member.name}' uses a name qaas keeps for itself")
    return models[0], data


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, folder: Path) -> BundleFile:
    target = folder / member.name
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None  # a regular file, checked above
    digest, size = hashlib.sha256(), 0
    with source, target.open("xb") as handle:
        while block := source.read(min(CHUNK, member.size - size)):
            size += len(block)
            digest.update(block)
            handle.write(block)
    if size != member.size:
        raise InvalidInput(f"bundle entry '{member.name}' is truncated")
    return BundleFile(member.name, target, size, digest.hexdigest())


def store_bundle(storage: Storage, bundle: Bundle, folder_key: str) -> list[dict]:
    """Move the external-data files beside the stored model; their row entries."""
    entries = []
    for item in bundle.external_data:
        storage.put_file(item.path, f"{folder_key}/{item.name}")
        entries.append({"name": item.name, "size_bytes": item.size_bytes, "sha256": item.sha256})
    return entries
