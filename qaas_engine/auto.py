"""``pipeline: auto``: the cheapest pipeline that loses at most ``max_accuracy_drop``.

A user of a service wants "lose at most one point, at the least cost", not a choice of steps.
The ladder climbs in the order of what each rung costs to run: calibration only, then
data-free equalization and bias correction, then AdaRound, then mixed precision (Bayesian Bits,
which also lowers energy) and QAT, which need training data. It stops at the first
configuration whose exported model meets the target on the validation data, and reports every
configuration it tried with accuracy, modelled energy and time, plus the accuracy-vs-energy
frontier. Decisions never see the evaluation data: the final report measures the chosen model
there once, after the choice is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx

from qaas_engine.artifacts.result import QuantizationResult
from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.data import Dataset
from qaas_engine.errors import SpecError
from qaas_engine.evaluation import evaluate
from qaas_engine.importer import ImportedModel
from qaas_engine.pipeline import PipelineData, run_pipeline
from qaas_engine.quant.sim import QuantSim
from qaas_engine.reporting.energy import energy_report
from qaas_engine.reporting.report import finish
from qaas_engine.spec import QuantSpec
from qaas_engine.state import PipelineState, Progress, Timer
from qaas_engine.step_registry import DATA_FLAGS, missing_data

DEFAULT_MAX_DROP = 1.0  # top-1 points, when auto is asked for without a target
HELD_OUT_FRACTION = 0.2  # of the training (else calibration) data, when no validation set
SMALL_VALIDATION = 100  # fewer samples than this and the report warns that decisions are coarse


@dataclass(frozen=True)
class Rung:
    name: str
    pipeline: tuple[str, ...]
    summary: str


LADDER: tuple[Rung, ...] = (
    Rung("ptq", (), "BatchNorm folding and calibrated ranges only"),
    Rung("dfq", ("cle", "bias_correction"), "cross-layer equalization and bias correction"),
    Rung("adaround", ("cle", "adaround"), "equalization and learned rounding"),
    Rung("mixed_precision", ("cle", "bayesian_bits"),
         "Bayesian Bits: bit-width per layer and pruning, trained"),
    Rung("qat", ("cle", "adaround", "qat"), "AdaRound, then quantization-aware training"),
)  # fmt: skip


@dataclass
class Validation:
    """The data decisions are made on, and how a drop is counted there."""

    data: Dataset
    source: str
    float_top1: float | None  # None: no labels, the drop is in top-1 agreement with float

    @property
    def measure(self) -> str:
        return "top-1 points" if self.float_top1 is not None else "points of top-1 agreement"


@dataclass
class Tried:
    rung: Rung
    row: dict[str, Any]
    state: PipelineState | None = None
    sim: QuantSim | None = None
    qdq: onnx.ModelProto | None = None
    timer: Timer | None = None


def auto_quantize(
    imported: ImportedModel,
    spec: QuantSpec,
    data: PipelineData,
    evaluation: Dataset | None,
    timer: Timer,
    profile: EnergyProfile,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> QuantizationResult:
    """Climb the ladder until the target holds on validation; report the whole climb."""
    target = spec.max_accuracy_drop if spec.max_accuracy_drop is not None else DEFAULT_MAX_DROP
    data, validation = _split_validation(data, spec.seed)
    tried: list[Tried] = []
    chosen: Tried | None = None
    search_start = time.perf_counter()
    for rung in LADDER:
        row = {"name": rung.name, "pipeline": list(rung.pipeline), "summary": rung.summary}
        missing = _missing_data(rung, data)
        if missing:
            tried.append(Tried(rung, {**row, "skipped": missing}))
            continue
        attempt = _attempt(
            imported, spec, rung, data, validation, target, profile, progress, should_stop
        )
        tried.append(attempt)
        if chosen is None or _better(attempt.row, chosen.row):
            if chosen is not None:
                chosen.state = chosen.sim = chosen.qdq = None  # hold one model at a time
            chosen = attempt
        else:
            attempt.state = attempt.sim = attempt.qdq = None
        if attempt.row["meets_target"]:
            chosen = attempt
            break
    search_seconds = time.perf_counter() - search_start
    # the first rung always runs, and the chosen attempt keeps its model
    assert chosen is not None and chosen.state is not None
    assert chosen.sim is not None and chosen.qdq is not None
    _mark_frontier([t.row for t in tried if "skipped" not in t.row])
    met = bool(chosen.row["meets_target"])
    final_timer = chosen.timer or timer
    final_timer.steps = timer.steps + final_timer.steps
    result = finish(
        imported, chosen.state, chosen.sim, chosen.qdq, final_timer, evaluation, profile
    )
    result.report["spec"]["pipeline"] = ["auto"]
    on_evaluation = evaluation_verdict(result.report["metrics"], target, validation)
    result.report["auto"] = {
        "target": {"max_accuracy_drop": target, "measure": validation.measure},
        "validation": {
            "source": validation.source,
            "samples": validation.data.num_samples,
            "float_top1": validation.float_top1,
        },
        "met": met,  # on the validation data, where the choice was made
        # the same target checked on the data the report's summary shows, after the choice
        "evaluation": on_evaluation,
        "chosen": chosen.rung.name,
        "chosen_pipeline": list(chosen.rung.pipeline),
        "tried": [t.row for t in tried],
        # every configuration built and measured on validation: the time to the chosen model
        "search_seconds": round(search_seconds, 3),
        "message": _message(met, chosen, target, validation, on_evaluation),
    }
    if not met or on_evaluation.get("meets_target") is False:
        result.report["warnings"].append(result.report["auto"]["message"])
    samples = validation.data.num_samples
    if samples < SMALL_VALIDATION:
        result.report["warnings"].append(
            f"pipeline auto decided on {samples} validation samples ({validation.source}): one "
            f"sample is {100 / samples:.1f} points, coarser than most targets; give "
            "--validation NPZ with a few hundred labelled samples"
        )
    return result


def _split_validation(data: PipelineData, seed: int) -> tuple[PipelineData, Validation]:
    if data.validation is not None:
        source, held_out = "--validation", data.validation
    elif data.training is not None:
        rest, held_out = data.training.split(HELD_OUT_FRACTION, seed=seed)
        data = PipelineData(data.calibration, rest, held_out)
        source = f"held-out {HELD_OUT_FRACTION:.0%} of the training data"
    elif data.calibration is not None and data.calibration.num_samples >= 10:
        rest, held_out = data.calibration.split(HELD_OUT_FRACTION, seed=seed)
        data = PipelineData(rest, None, None)
        source = f"held-out {HELD_OUT_FRACTION:.0%} of the calibration data"
    else:
        raise SpecError(
            "pipeline auto measures each configuration against the accuracy target: give "
            "--validation NPZ, --training NPZ or at least 10 calibration samples"
        )
    return data, Validation(held_out, source, None)


def _missing_data(rung: Rung, data: PipelineData) -> str | None:
    """Why a rung cannot run with the data given (its steps' needs, from the registry)."""
    missing = sorted({need for _, need in missing_data(rung.pipeline, data.available())})
    if not missing:
        return None
    # training before calibration: the order the ladder's users add data in
    need = "training" if "training" in missing else missing[0]
    return f"needs {need} data ({DATA_FLAGS[need]})"


def _attempt(
    imported, spec, rung, data, validation, target, profile, progress, should_stop
) -> Tried:
    rung_spec = spec.model_copy(update={"pipeline": rung.pipeline})

    def rung_progress(phase: str, fraction: float) -> None:
        if progress is not None:
            progress(f"auto {rung.name}: {phase}", fraction)

    timer = Timer(progress=rung_progress)
    start = time.perf_counter()
    state, sim, qdq = run_pipeline(
        imported, rung_spec, data, timer, profile, rung_progress, should_stop
    )
    seconds = time.perf_counter() - start
    metrics = evaluate(state, sim, qdq, validation.data)
    if validation.float_top1 is None and metrics["float"].get("top1") is not None:
        validation.float_top1 = metrics["float"]["top1"]
    runtime = metrics["onnxruntime"]
    if validation.float_top1 is not None:
        accuracy = runtime["top1"]
        drop = 100.0 * (validation.float_top1 - accuracy)
    else:
        accuracy = runtime["top1_agreement"]
        drop = 100.0 * (1.0 - accuracy)
    feeds, _ = next(validation.data.batches(1))
    energy = energy_report(state.model, sim.executor, sim, feeds, profile)
    row = {
        "name": rung.name,
        "pipeline": list(rung.pipeline),
        "summary": rung.summary,
        "accuracy": accuracy,
        "drop_points": round(drop, 4),
        "meets_target": drop <= target + 1e-9,
        "energy_pj": energy["quantized_pj"],
        "energy_ratio_vs_float": energy["ratio"],
        "seconds": round(seconds, 3),
        "bits": _bits_summary(sim),
    }
    return Tried(rung, row, state, sim, qdq, timer)


def _bits_summary(sim: QuantSim) -> dict[str, Any]:
    """Which widths the configuration uses: uniform, or mixed with a count per width."""
    weights = [e.scheme.bits for e in sim.weight_encodings.values()]
    activations = [e.scheme.bits for e in sim.activation_encodings.values()]
    return {
        "weights": {str(b): weights.count(b) for b in sorted(set(weights))},
        "activations": {str(b): activations.count(b) for b in sorted(set(activations))},
        "pruned_channels": sum(len(v) for v in sim.pruned_channels.values()),
    }


def _better(row: dict[str, Any], best: dict[str, Any]) -> bool:
    """More accurate wins; at equal accuracy the cheaper one."""
    if row["accuracy"] != best["accuracy"]:
        return row["accuracy"] > best["accuracy"]
    return row["energy_pj"] < best["energy_pj"]


def _mark_frontier(rows: list[dict[str, Any]]) -> None:
    """A configuration is on the frontier when none is both at least as accurate and cheaper."""
    for row in rows:
        row["on_frontier"] = not any(
            other is not row
            and other["accuracy"] >= row["accuracy"]
            and other["energy_pj"] <= row["energy_pj"]
            and (other["accuracy"] > row["accuracy"] or other["energy_pj"] < row["energy_pj"])
            for other in rows
        )


def evaluation_verdict(
    metrics: dict[str, Any], target: float, validation: Validation
) -> dict[str, Any]:
    """The target checked again on the report's own measurement (the evaluation data, else the
    calibration data), in the validation's measure where the data allows: the summary card
    shows that figure, so a verdict that ignored it could read "met" beside a larger drop."""
    source = metrics.get("dataset")
    float_m, runtime = metrics.get("float") or {}, metrics.get("onnxruntime") or {}
    samples = (metrics.get("samples") or {}).get("measured")
    verdict: dict[str, Any] = {"source": source, "samples": samples}
    labelled = float_m.get("top1") is not None and runtime.get("top1") is not None
    if labelled and (validation.float_top1 is not None or runtime.get("top1_agreement") is None):
        verdict["measure"] = "top-1 points"
        drop = 100.0 * (float_m["top1"] - runtime["top1"])
    elif runtime.get("top1_agreement") is not None:
        verdict["measure"] = "points of top-1 agreement"
        drop = 100.0 * (1.0 - runtime["top1_agreement"])
    else:
        return {**verdict, "drop_points": None, "meets_target": None}
    comparable = verdict["measure"] == validation.measure
    verdict["drop_points"] = round(drop, 4)
    verdict["meets_target"] = drop <= target + 1e-9 if comparable else None
    return verdict


def _message(
    met: bool, chosen: Tried, target: float, validation: Validation, on_evaluation: dict[str, Any]
) -> str:
    drop = chosen.row["drop_points"]
    if met:
        verdict = (
            f"target met on the validation data by '{chosen.rung.name}': {drop:.2f} "
            f"{validation.measure} lost on {validation.source} (target {target:g})"
        )
    else:
        verdict = (
            f"target of {target:g} {validation.measure} not met on the validation data by any "
            f"configuration tried; returning the most accurate, '{chosen.rung.name}', which "
            f"loses {drop:.2f} on {validation.source}"
        )
    later = on_evaluation.get("drop_points")
    if later is None or not on_evaluation.get("source"):
        return verdict
    where = f"the {on_evaluation['source']} data ({on_evaluation.get('samples')} samples)"
    if on_evaluation.get("meets_target") is False:
        return (
            f"{verdict}; but on {where} it loses {later:.2f} {on_evaluation['measure']}, over "
            f"the target: the validation data decided on differs from it (too few samples, or "
            "not representative)"
        )
    outcome = (
        "within the target"
        if on_evaluation.get("meets_target")
        else "a different measure from the target's"
    )
    return f"{verdict}; on {where} it loses {later:.2f} {on_evaluation['measure']} ({outcome})"
