"""A quantization job from files to files: the one function ``qaas quantize`` and the worker
both call, so a job's report (its step list, load and save times, accuracy target) is made in
one place whoever runs it.

Reads the model and the ``.npz`` datasets, runs :func:`qaas_engine.flow.quantize`, and writes
the artifacts into ``outdir``. The caller owns where ``outdir`` is and what happens to it after.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaas_engine.data import Dataset, load_npz, model_inputs
from qaas_engine.flow import quantize
from qaas_engine.importer import import_model
from qaas_engine.reporting.collect import EnergyProfileSource
from qaas_engine.reporting.report import accuracy_target
from qaas_engine.sessions import sleeping_torch_threads
from qaas_engine.spec import QuantSpec
from qaas_engine.state import Progress, Timer
from qaas_engine.step_registry import learns

DATA_ROLES = ("calibration", "evaluation", "training", "validation")


@dataclass(frozen=True)
class SavedRun:
    """The report (with the ``save`` time, which ``report.json`` itself cannot hold) and the
    files written, by name."""

    report: dict[str, Any]
    written: dict[str, Path]


def run(
    model_path: str | os.PathLike[str],
    data_paths: Mapping[str, str | os.PathLike[str] | None],
    spec: QuantSpec,
    outdir: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    energy_profile: EnergyProfileSource = None,
    max_accuracy_drop: float | None = None,
    max_dataset_expanded_bytes: int | None = None,
    before_save: Callable[[], None] | None = None,
) -> SavedRun:
    """Import, load data, quantize, save. ``data_paths`` maps roles (``DATA_ROLES``) to files;
    ``max_accuracy_drop`` (a fraction of top-1) adds the report's ``accuracy_target``;
    ``before_save`` runs just before writing (e.g. a free-space check)."""
    unknown = set(data_paths) - set(DATA_ROLES)
    if unknown:
        raise ValueError(f"unknown data role(s) {sorted(unknown)}; known: {DATA_ROLES}")
    if not learns(spec.pipeline):
        sleeping_torch_threads()  # torch runs one backward pass here, not a training loop
    timer = Timer(progress=progress)
    imported = timer.run("import", lambda: import_model(model_path, spec.fixed_inputs))

    def load() -> dict[str, Dataset | None]:
        inputs = model_inputs(imported.model)
        return {
            role: None
            if data_paths.get(role) is None
            else load_npz(
                data_paths[role],  # type: ignore[arg-type]
                inputs,
                role=role,
                max_expanded_bytes=max_dataset_expanded_bytes,
                fixed=spec.fixed_inputs,
            )
            for role in DATA_ROLES
        }

    data = timer.run("load", load)
    result = quantize(
        imported,
        spec,
        progress=progress,
        should_stop=should_stop,
        energy_profile=energy_profile,
        **data,
    )
    report = result.report
    report["steps"] = timer.steps + report["steps"]
    report["accuracy_target"] = accuracy_target(report["metrics"], max_accuracy_drop)

    def save() -> dict[str, Path]:
        if before_save is not None:
            before_save()
        return result.save(outdir)

    written = timer.run("save", save)
    report["steps"].append(timer.steps[-1])
    return SavedRun(report, written)
