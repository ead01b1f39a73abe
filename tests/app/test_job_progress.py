"""``overall_progress`` against the phases the engine really reports: every phase is in the
plan (so the figure never stalls on an unknown one), and it only moves forward, 0 to 1."""

from __future__ import annotations

import pytest

from app.jobs.progress import _fraction, overall_progress, pipeline_plan
from qaas_engine import QuantSpec, job


def reported_phases(model, data, spec: QuantSpec, outdir) -> list[tuple[str, float]]:
    calls: list[tuple[str, float]] = [("load", 0.0)]  # the worker's, before the engine's import
    job.run(model, data, spec, outdir, progress=lambda p, f: calls.append((p, f)))
    return calls


def figures(calls: list[tuple[str, float]], spec: QuantSpec) -> list[float]:
    history: list[str] = []
    values = []
    for phase, fraction in calls:
        if not history or history[-1] != phase:
            history.append(phase)
        values.append(
            overall_progress(
                status="running",
                phase=phase,
                progress=fraction,
                spec=spec.model_dump(mode="json"),
                history=history,
            )
        )
    return values


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(pipeline=("cle", "adaround"), adaround_iterations=10),
        QuantSpec(activation_bits=None),
        QuantSpec(pipeline=("auto",), max_accuracy_drop=100.0),
    ],
    ids=["cle-adaround", "weights-only", "auto"],
)
def test_overall_progress_follows_the_engine(tiny_model, tiny_data, tmp_path, spec):
    data = {"calibration": tiny_data[0], "evaluation": tiny_data[1]}
    if spec.activation_bits is None:
        data = {"evaluation": tiny_data[1]}
    calls = reported_phases(tiny_model, data, spec, tmp_path)
    dumped = spec.model_dump(mode="json")
    middle = (
        [("auto", 1.0)] if spec.is_auto else pipeline_plan(spec.pipeline, spec.quantize_activations)
    )
    known = {name for name, _ in middle} | {"import", "load", "data_free_ranges"}
    known |= {"evaluation", "energy", "latency", "analysis", "save"}
    for phase, _ in calls:
        assert phase in known or phase.startswith("auto "), phase
    values = figures(calls, spec)
    assert values == sorted(values), list(zip(calls, values, strict=True))
    assert values[0] == 0.0 and 0.95 <= values[-1] <= 1.0
    assert len(set(values)) > len(calls) // 3  # it moves, not in one jump at the end
    assert (
        overall_progress(status="succeeded", phase="done", progress=1.0, spec=dumped, history=[])
        == 1.0
    )
    assert overall_progress(status="queued", phase=None, progress=0, spec=dumped, history=[]) == 0


def test_an_unknown_phase_keeps_the_last_known_figure():
    plan = [("import", 1.0), ("load", 1.0), ("export", 2.0)]
    assert _fraction(plan, "load", 0.5) == pytest.approx(1.5 / 4)
    assert _fraction(plan, "mystery", 0.5) is None
    spec = QuantSpec().model_dump(mode="json")
    before = overall_progress(
        status="running", phase="export", progress=1.0, spec=spec, history=["import", "export"]
    )
    after = overall_progress(
        status="running",
        phase="a new engine phase",
        progress=0.1,
        spec=spec,
        history=["import", "export", "a new engine phase"],
    )
    assert after == before > 0
