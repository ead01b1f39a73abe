"""``.npz`` archives checked from their headers before anything is expanded.

A few megabytes of zip can hold a zero array that expands to gigabytes. Every member's ``.npy``
header states its shape and dtype, and the zip's directory states how many bytes the member
expands to; both are read without decompressing the data, must agree with each other, and their
sum is held to a cap. zipfile never returns more than the directory's size for a member, so once
these checks pass, loading cannot expand past what was counted.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from qaas_engine.errors import DataError

MAX_MEMBERS = 1024
MAX_HEADER_BYTES = 10_000  # numpy's own default for untrusted headers


@dataclass(frozen=True)
class NpyMember:
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    expanded_bytes: int


def scan_npz(
    path: str | Path,
    *,
    max_expanded_bytes: int | None = None,
    role: str = "data",
    shown_as: str | None = None,
) -> list[NpyMember]:
    """Every member's key, shape, dtype and expanded size, from headers only. Errors name the
    file as ``shown_as`` (default: the role and file name)."""
    path = Path(path)
    where = shown_as or f"{role} file {path.name}"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise DataError(f"{where} is not an .npz archive (numpy.savez)") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise DataError(f"{where} has {len(infos)} members (most {MAX_MEMBERS})")
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise DataError(f"{where} names a member twice")
        members, total = [], 0
        for info in infos:
            member = _scan_member(archive, info, where)
            total += member.expanded_bytes
            if max_expanded_bytes is not None and total > max_expanded_bytes:
                raise DataError(
                    f"{where} expands to more than {max_expanded_bytes:,} bytes "
                    f"(the cap on expanded data, QAAS_MAX_DATASET_EXPANDED_BYTES); compressed "
                    "archives count at their expanded size"
                )
            members.append(member)
    if not members:
        raise DataError(f"{where} holds no arrays")
    return members


def _scan_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> NpyMember:
    if not info.filename.endswith(".npy") or info.is_dir():
        raise DataError(f"{where}: member '{info.filename}' is not a numpy array (.npy)")
    key = info.filename[: -len(".npy")]
    if info.flag_bits & 0x1:
        raise DataError(f"{where}: member '{info.filename}' is encrypted")
    try:
        with archive.open(info) as stream:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                header = npy_format.read_array_header_1_0(stream, max_header_size=MAX_HEADER_BYTES)
            elif version == (2, 0):
                header = npy_format.read_array_header_2_0(stream, max_header_size=MAX_HEADER_BYTES)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            header_bytes = stream.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{where}: member '{info.filename}' is not a valid .npy: {error}") from None
    shape, _fortran, dtype = header
    if dtype.hasobject:
        raise DataError(
            f"{where}: array '{key}' holds Python objects (pickled arrays), which are never "
            "loaded; save plain numeric arrays"
        )
    data_bytes = math.prod(shape) * dtype.itemsize
    if header_bytes + data_bytes != info.file_size:
        raise DataError(
            f"{where}: array '{key}' declares {data_bytes:,} bytes of data (shape {shape}, "
            f"{dtype}) but its member expands to {info.file_size - header_bytes:,}; the file is "
            "damaged or forged"
        )
    return NpyMember(key, tuple(shape), dtype, info.file_size)
