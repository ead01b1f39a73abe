"""What each output is judged by, and whether a validation set can tell a target apart.

Top-1 of the first output only cannot judge a detector, an OCR network or an encoder, and a
whole-output SQNR lets a small-range part (class scores beside box coordinates in pixels) hide
behind a large-range one. So every output gets a metric: ``sqnr`` (the worst per-channel SQNR
against float, in dB, or the whole output's when it has no channel axis), ``cosine`` (mean
per-sample cosine similarity) or ``top1`` (against the labels for the first output, else
agreement with the float model's argmax). The user names one per output where they know better
(``QuantSpec.output_metrics``); the rest get a default.

A top-1 drop measured on n samples moves in steps of 100/n points and has a binomial spread:
a target the set is too small to resolve must not be called met.
"""

from __future__ import annotations

import math
from typing import Any

from qaas_engine.errors import SpecError
from qaas_engine.spec import QuantSpec

DEFAULT_MAX_DROP = 1.0  # top-1 points, when a top-1 judgement is asked for without a target
SQNR_MEASURE = "worst per-channel SQNR (dB)"
WHOLE_SQNR_MEASURE = "output SQNR (dB; no channel axis)"
COSINE_MEASURE = "mean cosine similarity"
TOP1_MEASURE = "top-1 points lost"
AGREEMENT_MEASURE = "points of top-1 agreement lost"
# One-sided 95%: a drop the size of the budget must stand this many binomial standard errors
# clear of no drop at all, or a set that measured "within budget" could not have told them apart.
RESOLUTION_Z = 1.645
# Fewer validation samples than this cannot confirm an SQNR or cosine target: resampling a
# handful says little about the next draw (the bootstrap itself needs some twenty).
FIDELITY_MIN_SAMPLES = 20


def metric_per_output(
    spec: QuantSpec, outputs: list[str], *, top1_first: bool
) -> dict[str, str | None]:
    """The metric deciding each output (None: reported, not deciding).

    ``top1_first``: labels or a top-1 target were given, so the first output is judged by top-1
    (as auto always did) and others only where the user named a metric; otherwise every output
    is judged by its worst per-channel SQNR unless named.
    """
    named = named_metrics(spec, outputs)
    chosen: dict[str, str | None] = {}
    for index, name in enumerate(outputs):
        default = ("top1" if index == 0 else None) if top1_first else "sqnr"
        chosen[name] = named.get(name, default)
    return chosen


def named_metrics(spec: QuantSpec, outputs: list[str]) -> dict[str, str]:
    """The user's ``output_metrics`` keyed by output name (an index resolved); a key naming no
    output is refused with the outputs listed."""
    named: dict[str, str] = {}
    for key, metric in spec.output_metrics.items():
        if key in outputs:
            named[key] = metric
        elif key.isdigit() and int(key) < len(outputs):
            named[outputs[int(key)]] = metric
        else:
            listed = ", ".join(f"{i}: {name}" for i, name in enumerate(outputs))
            raise SpecError(
                f"--metric {key}={metric}: the model has no output '{key}' (by name or index); "
                f"its outputs are {listed}"
            )
    return named


def judge(metric: str, measured: dict[str, Any], spec: QuantSpec, *, first: bool) -> dict[str, Any]:
    """One output's verdict: {metric, measure, value, target, met} from its metrics entry
    (``evaluation.evaluate``'s ``outputs[name]``), as deployed in ONNX Runtime."""
    runtime = measured.get("onnxruntime") or {}
    if metric == "sqnr":
        value, measure = runtime.get("worst_channel_sqnr_db"), SQNR_MEASURE
        if value is None:
            value, measure = runtime.get("sqnr_db"), WHOLE_SQNR_MEASURE
        target = spec.min_sqnr_db
        met = None if value is None else value >= target - 1e-9
        low = runtime.get("worst_channel_sqnr_db_low") if measure == SQNR_MEASURE else None
        verdict = {"metric": metric, "measure": measure, "value": value, "target": target,
                   "met": met, "low": low}  # fmt: skip
        if measure == SQNR_MEASURE:
            verdict["channel_axis"] = runtime.get("channel_axis")
        return verdict
    if metric == "cosine":
        value, target = runtime.get("cosine"), spec.min_cosine
        met = None if value is None else value >= target - 1e-12
        return {"metric": metric, "measure": COSINE_MEASURE, "value": value, "target": target,
                "met": met, "low": runtime.get("cosine_low")}  # fmt: skip
    target = spec.max_accuracy_drop if spec.max_accuracy_drop is not None else DEFAULT_MAX_DROP
    reference = (measured.get("float") or {}).get("top1")
    if first and reference is not None and runtime.get("top1") is not None:
        measure, drop = TOP1_MEASURE, 100.0 * (reference - runtime["top1"])
    elif runtime.get("top1_agreement") is not None:
        measure, drop = AGREEMENT_MEASURE, 100.0 * (1.0 - runtime["top1_agreement"])
    else:
        return {"metric": metric, "measure": "top-1 (this output has no class axis)",
                "value": None, "target": target, "met": None}  # fmt: skip
    return {"metric": metric, "measure": measure, "value": round(drop, 4), "target": target,
            "met": drop <= target + 1e-9}  # fmt: skip


def judge_outputs(
    metrics: dict[str, Any], chosen: dict[str, str | None], spec: QuantSpec
) -> dict[str, dict[str, Any]]:
    """Every deciding output's verdict, keyed by output name."""
    per_output = metrics.get("outputs") or {}
    names = list(per_output)
    return {
        name: judge(metric, per_output[name], spec, first=name == names[0])
        for name, metric in chosen.items()
        if metric is not None and name in per_output
    }


def fidelity_report(
    metrics: dict[str, Any], spec: QuantSpec, judged: dict[str, str | None]
) -> dict[str, Any]:
    """The report's ``fidelity`` section: each judged output's verdict on the report's data."""
    verdicts = judge_outputs(metrics, judged, spec)
    named = named_metrics(spec, list(metrics.get("outputs") or {}))
    for name, verdict in verdicts.items():
        verdict["named"] = name in named
    return {
        "outputs": verdicts,
        "met": all_met(verdicts) if verdicts else None,
        "note": (
            f"measured in ONNX Runtime against the float model on the {metrics.get('dataset')} "
            f"data; sqnr is the {SQNR_MEASURE} (axis 1 of a 4-D output, the axis a Concat joined "
            "an output's parts along, else the last axis: each verdict's channel_axis), so "
            "a small-range part of an output cannot hide behind a large-range one; name a "
            "metric per output with --metric OUTPUT=top1|sqnr|cosine"
        ),
    }


def all_met(verdicts: dict[str, dict[str, Any]]) -> bool:
    return bool(verdicts) and all(v["met"] is True for v in verdicts.values())


def margin(verdict: dict[str, Any]) -> float:
    """How far past its target an output is (negative: short of it), comparable across
    configurations: dB for SQNR and for cosine (as -10 log10(1 - cos), which tracks SQNR for
    small noise), points for top-1."""
    value, target = verdict["value"], verdict["target"]
    if value is None:
        return -math.inf
    if verdict["metric"] == "cosine":
        return _cosine_db(value) - _cosine_db(target)
    if verdict["metric"] == "top1":
        return float(target - value)
    return float(value - target)


def _cosine_db(cosine: float) -> float:
    return -10.0 * math.log10(max(1.0 - cosine, 1e-20))


def worst_margin(verdicts: dict[str, dict[str, Any]]) -> float:
    return min((margin(v) for v in verdicts.values()), default=-math.inf)


def resolution(samples: int, budget_points: float) -> dict[str, Any]:
    """Whether ``samples`` can resolve a top-1 budget of ``budget_points``.

    Not when one sample is worth more than the budget, nor when the binomial standard error of
    a drop the size of the budget, sqrt(t (1 - t) / n), times ``RESOLUTION_Z`` exceeds it: the
    set could then measure "within budget" for a model that loses more. The error is taken at
    the budget, not at the measured drop, because a measured drop of zero (float accuracy 1.0,
    nothing lost) gives a plug-in error of zero however small the set.
    """
    budget = budget_points / 100.0
    one_sample = 100.0 / samples if samples else math.inf
    if budget <= 0 or samples <= 0:
        standard_error, needed = math.inf, None
    else:
        standard_error = 100.0 * math.sqrt(budget * (1.0 - budget) / samples)
        needed = max(
            math.ceil(100.0 / budget_points), math.ceil(RESOLUTION_Z**2 * (1 - budget) / budget)
        )
    resolvable = (
        one_sample <= budget_points + 1e-12 and RESOLUTION_Z * standard_error <= budget_points
    )
    return {
        "samples": samples,
        "budget_points": budget_points,
        "one_sample_points": round(one_sample, 4),
        "standard_error_points": round(standard_error, 4)
        if math.isfinite(standard_error)
        else None,
        "z": RESOLUTION_Z,
        "samples_needed": needed,
        "resolvable": resolvable,
    }


def fidelity_resolution(verdicts: dict[str, dict[str, Any]], samples: int) -> dict[str, Any] | None:
    """Whether ``samples`` can confirm the SQNR and cosine verdicts that say met: not below
    ``FIDELITY_MIN_SAMPLES``, nor where the figure's 10th percentile over resamples of the
    samples (``low``) falls short of the target, so another draw of data would likely miss it."""
    judged = {name: v for name, v in verdicts.items() if v["metric"] in ("sqnr", "cosine")}
    if not judged:
        return None
    unsure = sorted(
        name
        for name, v in judged.items()
        if v["met"] and v.get("low") is not None and v["low"] < v["target"] - 1e-9
    )
    return {
        "kind": "fidelity",
        "samples": samples,
        "min_samples": FIDELITY_MIN_SAMPLES,
        "resampled_low": {name: v.get("low") for name, v in judged.items()},
        "unsure_outputs": unsure,
        "resolvable": samples >= FIDELITY_MIN_SAMPLES and not unsure,
    }


def resolution_message(check: dict[str, Any], source: str) -> str:
    """Why a set cannot resolve its budget, in the words a person acts on."""
    if check.get("kind") == "fidelity":
        return _fidelity_resolution_message(check, source)
    budget, samples = check["budget_points"], check["samples"]
    if check["samples_needed"] is None:
        return (
            f"a target of {budget:g} points cannot be confirmed on a finite set ({samples} "
            f"samples, {source}): any set misses a drop smaller than one sample"
        )
    return (
        f"{samples} samples ({source}) cannot resolve a {budget:g}-point budget: one sample is "
        f"{check['one_sample_points']:.2f} points and the binomial standard error of a "
        f"{budget:g}-point drop is {check['standard_error_points']:.2f} points "
        f"({RESOLUTION_Z:g} of them = {RESOLUTION_Z * check['standard_error_points']:.2f}), so a "
        f"model that loses more could measure within it; give --validation NPZ with at least "
        f"{check['samples_needed']} labelled samples, or a larger --max-accuracy-drop"
    )


def _fidelity_resolution_message(check: dict[str, Any], source: str) -> str:
    samples, needed = check["samples"], check["min_samples"]
    if samples < needed:
        return (
            f"{samples} samples ({source}) are too few to confirm an SQNR or cosine target "
            f"(at least {needed}): a figure a handful of samples favour can miss on the next "
            f"draw; give --validation NPZ with at least {needed} representative samples"
        )
    lows = ", ".join(
        f"'{name}' {check['resampled_low'][name]:.4g}" for name in check["unsure_outputs"]
    )
    return (
        f"on resamples of the {samples} samples ({source}) the target is missed one time in "
        f"ten or more (10th percentile: {lows}): give --validation NPZ with more samples"
    )
