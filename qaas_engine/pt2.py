"""PyTorch ``torch.export`` archives (.pt2) converted to ONNX without unpickling anything.

A .pt2 is a zip: the graph as JSON, weights as raw bytes, and a few entries that torch reads with
``torch.load`` (sample inputs, pickled constants), whose loader falls back to full unpickling when
the safe path fails. We check the archive, refuse tensors stored as pickles, blank the sample
inputs, and only then let torch deserialize the program and export it to ONNX.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import onnx

from qaas_engine.errors import ModelImportError

MAX_ENTRIES = 100_000
MAX_UNCOMPRESSED_BYTES = 8 * 2**30
BLANKED_SUFFIXES = ("data/sample_inputs/",)


def convert_pt2(path: Path) -> onnx.ModelProto:
    """Validate a torch.export archive, sanitize it, and export it to ONNX."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ModelImportError(f"{path.name} is a damaged zip archive: {error}") from None
    with archive:
        prefix = _archive_prefix(archive, path.name)
        _refuse_pickled_tensors(archive, prefix)
        with tempfile.TemporaryDirectory(prefix="qaas-pt2-") as tmp:
            clean = Path(tmp) / "model.pt2"
            _write_sanitized(archive, clean)
            return _export_to_onnx(clean)


def _archive_prefix(archive: zipfile.ZipFile, name: str) -> str:
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise ModelImportError(f"{name}: too many archive entries ({len(infos)})")
    total = sum(info.file_size for info in infos)
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ModelImportError(f"{name}: archive expands to {total} bytes, over the limit")
    for info in infos:
        if info.filename.endswith("archive_format"):
            if archive.read(info).strip() != b"pt2":
                raise ModelImportError(f"{name}: unknown archive format in {info.filename}")
            return info.filename[: -len("archive_format")]
    if any(info.filename.endswith(".pkl") for info in infos):
        raise ModelImportError(
            f"{name} is a torch.save checkpoint (a pickle), not a torch.export archive; "
            "qaas never unpickles uploads: save it with torch.export.save or export to ONNX"
        )
    raise ModelImportError(f"{name} is a zip file but not a torch.export (.pt2) archive")


def _refuse_pickled_tensors(archive: zipfile.ZipFile, prefix: str) -> None:
    names = set(archive.namelist())
    for config in ("data/weights/", "data/constants/"):
        for entry in sorted(n for n in names if n.startswith(prefix + config)):
            if not entry.endswith("_config.json"):
                continue
            try:
                payload = json.loads(archive.read(entry))
            except (ValueError, UnicodeDecodeError):
                raise ModelImportError(f"archive entry {entry} is not valid JSON") from None
            for fqn, item in (payload.get("config") or {}).items():
                if isinstance(item, dict) and item.get("use_pickle"):
                    raise ModelImportError(
                        f"the archive stores '{fqn}' as a pickle, which qaas never loads; "
                        "keep it a plain tensor parameter or buffer, or export to ONNX"
                    )


def _write_sanitized(archive: zipfile.ZipFile, target: Path) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as out:
        for info in archive.infolist():
            data = b"" if any(s in info.filename for s in BLANKED_SUFFIXES) else archive.read(info)
            out.writestr(info, data)


def _export_to_onnx(path: Path) -> onnx.ModelProto:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise ModelImportError(f"could not read the torch.export archive: {error}") from None
    try:
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, optimize=True)
    except Exception as error:
        raise ModelImportError(
            f"could not convert the torch.export program to ONNX: {str(error)[:300]}"
        ) from None
    return onnx_program.model_proto
