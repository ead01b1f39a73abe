"""Calibration and evaluation data: ``.npz`` arrays keyed by the model's input names.

Samples lie on axis 0. An array of the input's rank is batch-first (sample i is ``a[i:i+1]``);
an array with one extra leading axis stacks whole inputs (sample i is ``a[i]``), for inputs whose
batch axis is not first, that have a fixed batch of 1, or that are scalars. An optional
``labels`` array holds one integer class per sample. Nothing is ever unpickled.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from qaas_engine.errors import DataError
from qaas_engine.fixed_inputs import drop_fixed_arrays
from qaas_engine.npz import scan_npz

LABELS_KEY = "labels"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None for a symbolic or unknown dimension


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor_type.shape.dim
        )
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


@dataclass
class Dataset:
    """Validated arrays; ``stacked[name]`` tells how samples are laid out for that input."""

    arrays: dict[str, np.ndarray]
    stacked: dict[str, bool]
    labels: np.ndarray | None
    num_samples: int
    one_at_a_time: bool = False  # stacked samples, or an input whose batch is fixed at 1

    def batches(
        self, batch_size: int, limit: int | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Feeds of at most ``batch_size`` samples (one at a time where inputs are stacked)."""
        total = self.num_samples if limit is None else min(limit, self.num_samples)
        step = 1 if self.one_at_a_time else batch_size
        for start in range(0, total, step):
            stop = min(start + step, total)
            feeds = {  # asarray: a stacked scalar input's sample is a 0-d array, not a scalar
                name: (np.asarray(array[start]) if self.stacked[name] else array[start:stop])
                for name, array in self.arrays.items()
            }
            labels = self.labels[start:stop] if self.labels is not None else None
            yield feeds, labels

    def subset(self, indices: np.ndarray) -> Dataset:
        """The samples at ``indices`` (for held-out validation splits and shuffling)."""
        arrays = {name: array[indices] for name, array in self.arrays.items()}
        labels = self.labels[indices] if self.labels is not None else None
        return Dataset(arrays, dict(self.stacked), labels, len(indices), self.one_at_a_time)

    def split(self, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A deterministic (rest, held_out) split; held_out has ``fraction`` of the samples."""
        order = np.random.default_rng(seed).permutation(self.num_samples)
        held = max(1, int(round(self.num_samples * fraction)))
        return self.subset(np.sort(order[held:])), self.subset(np.sort(order[:held]))


def load_npz(
    path: str | Path,
    inputs: list[InputSpec],
    *,
    role: str = "data",
    max_expanded_bytes: int | None = None,
    fixed: Mapping[str, float] | None = None,
) -> Dataset:
    """Read and validate an ``.npz`` against the model's inputs; errors name the fix. Headers
    are checked first (``scan_npz``), so a bomb is refused before it is expanded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{role} file not found: {path}")
    scan_npz(path, max_expanded_bytes=max_expanded_bytes, role=role)
    try:
        with np.load(path, allow_pickle=False) as archive:
            raw = {key: archive[key] for key in archive.files}
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise DataError(
                f"{role} file {path.name} holds Python objects (pickled arrays), which are "
                "never loaded; save plain numeric arrays"
            ) from None
        raise DataError(f"{role} file {path.name} is not a valid .npz: {error}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{role} file {path.name} is damaged: {error}") from None
    return validate_arrays(raw, inputs, role=role, source=path.name, fixed=fixed)


def validate_arrays(
    raw: dict[str, np.ndarray],
    inputs: list[InputSpec],
    *,
    role: str,
    source: str,
    fixed: Mapping[str, float] | None = None,
) -> Dataset:
    """The dataset of ``raw``'s arrays, checked against the model's inputs; the arrays of
    ``fixed`` inputs are dropped (they must hold the fixed value)."""
    expected = [spec.name for spec in inputs]
    labels = raw.pop(LABELS_KEY, None)
    drop_fixed_arrays(raw, fixed or {}, role=role, source=source)
    missing = [name for name in expected if name not in raw]
    unknown = sorted(set(raw) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"no array for input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown key(s) {', '.join(unknown)}")
        raise DataError(
            f"{role} file {source}: {'; '.join(parts)} (the model's inputs are "
            f"{', '.join(expected)}, plus optional '{LABELS_KEY}')"
        )
    arrays: dict[str, np.ndarray] = {}
    stacked: dict[str, bool] = {}
    counts = set()
    for spec in inputs:
        array, is_stacked = _fit_input(raw[spec.name], spec, role, source)
        arrays[spec.name] = array
        stacked[spec.name] = is_stacked
        counts.add(array.shape[0])
    if len(counts) != 1:
        raise DataError(
            f"{role} file {source}: inputs hold different sample counts {sorted(counts)}"
        )
    num_samples = counts.pop()
    if num_samples == 0:
        raise DataError(f"{role} file {source} holds no samples")
    if labels is not None:
        labels = _check_labels(labels, num_samples, role, source)
    one_at_a_time = any(stacked.values()) or any(
        spec.shape and spec.shape[0] == 1 for spec in inputs
    )
    return Dataset(arrays, stacked, labels, num_samples, one_at_a_time)


def _fit_input(
    array: np.ndarray, spec: InputSpec, role: str, source: str
) -> tuple[np.ndarray, bool]:
    rank = len(spec.shape)
    is_stacked: bool | None  # None: the array fits the declared shape neither way
    if array.ndim == rank:
        is_stacked, sample_shape = False, array.shape[1:]
        declared = spec.shape[1:]
        if spec.shape and spec.shape[0] is not None and spec.shape[0] != 1:
            is_stacked = None  # fixed batch other than 1: only stacked samples fit
    elif array.ndim == rank + 1:
        is_stacked, sample_shape, declared = True, array.shape[1:], spec.shape
    else:
        is_stacked = None
    shown = "x".join("?" if d is None else str(d) for d in spec.shape) or "scalar"
    if is_stacked is None or array.ndim == 0:
        raise DataError(
            f"{role} file {source}: array '{spec.name}' has shape {array.shape}, but the model "
            f"input is {shown}; give samples batch-first (N, ...) or stacked (N, {shown})"
        )
    for got, want in zip(sample_shape, declared, strict=True):
        if want is not None and got != want:
            raise DataError(
                f"{role} file {source}: array '{spec.name}' has shape {array.shape}, which "
                f"does not fit the model input {shown}"
            )
    if np.issubdtype(spec.dtype, np.integer) or spec.dtype == np.bool_:
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise DataError(
                f"{role} file {source}: input '{spec.name}' takes {spec.dtype} values (ids, "
                f"bytes) but the array holds {array.dtype}"
            )
    elif not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{role} file {source}: array '{spec.name}' is not numeric ({array.dtype})")
    if np.issubdtype(spec.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise DataError(f"{role} file {source}: array '{spec.name}' holds NaN or infinite values")
    return np.ascontiguousarray(array.astype(spec.dtype, copy=False)), bool(is_stacked)


def _check_labels(labels: np.ndarray, count: int, role: str, source: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != count:
        raise DataError(
            f"{role} file {source}: '{LABELS_KEY}' must be one class index per sample "
            f"(shape ({count},)), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{role} file {source}: '{LABELS_KEY}' must be integers, got {labels.dtype}"
        )
    return labels.astype(np.int64)
