"""The ``quantize`` verb: import -> prepare -> float steps -> calibrate -> quantized steps ->
export -> evaluate -> report, every phase timed. A fixed pipeline runs once
(``pipeline.run_pipeline``); ``auto`` searches pipelines; both end in the same report."""

from __future__ import annotations

import os
from collections.abc import Callable

from qaas_engine.artifacts.result import QuantizationResult
from qaas_engine.auto import auto_quantize
from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.data import Dataset
from qaas_engine.fidelity import named_metrics
from qaas_engine.importer import ImportedModel, import_model
from qaas_engine.pipeline import PipelineData, run_pipeline
from qaas_engine.reporting.collect import EnergyProfileSource
from qaas_engine.reporting.report import finish
from qaas_engine.spec import QuantSpec
from qaas_engine.state import Progress, Timer


def quantize(
    model: ImportedModel | str | os.PathLike[str],
    spec: QuantSpec,
    *,
    calibration: Dataset | None = None,
    evaluation: Dataset | None = None,
    training: Dataset | None = None,
    validation: Dataset | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    energy_profile: EnergyProfileSource = None,
) -> QuantizationResult:
    """Quantize a model per ``spec``; evaluation data only measures, it never calibrates.

    ``spec.pipeline == ("auto",)`` searches the pipelines cheapest first for one that meets
    ``spec.max_accuracy_drop`` on validation data (see :mod:`qaas_engine.auto`).
    ``should_stop`` is polled between layers and epochs; when it answers True the run ends with
    :class:`~qaas_engine.errors.Cancelled`. ``energy_profile`` (a JSON file, a dict or an
    :class:`EnergyProfile`) prices the energy report; the default is the 45 nm table.
    """
    profile = EnergyProfile.load(energy_profile)  # a bad profile fails before any work
    timer = Timer(progress=progress)
    imported = (
        model
        if isinstance(model, ImportedModel)
        else timer.run("import", lambda: import_model(model, spec.fixed_inputs))
    )
    data = PipelineData(calibration, training, validation)
    # a --metric naming no output fails before any work
    named_metrics(spec, [value.name for value in imported.model.graph.output])
    if spec.is_auto:
        return auto_quantize(
            imported, spec, data, evaluation, timer, profile, progress, should_stop
        )
    state, sim, qdq = run_pipeline(imported, spec, data, timer, profile, progress, should_stop)
    return finish(imported, state, sim, qdq, timer, evaluation, profile)
