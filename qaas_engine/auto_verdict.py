"""pipeline auto's verdict in words: met, not met or not resolvable on the validation data,
and what the report's own data says about the same target."""

from __future__ import annotations

from typing import Any

from qaas_engine.auto_types import Tried, Validation
from qaas_engine.fidelity import resolution_message


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


def message(
    met: bool,
    chosen: Tried,
    target: float,
    validation: Validation,
    on_evaluation: dict[str, Any],
    check: dict[str, Any] | None,
    fidelity: bool,
) -> str:
    """The verdict in one paragraph: on validation, resolvable or not, and on the report's data."""
    name = chosen.rung.name
    if fidelity:
        verdict = _fidelity_message(chosen, validation)
    elif chosen.row["meets_target"]:
        verdict = (
            f"target met on the validation data by '{name}': {chosen.row['drop_points']:.2f} "
            f"{validation.measure} lost on {validation.source} (target {target:g})"
        )
    else:
        verdict = (
            f"target of {target:g} {validation.measure} not met on the validation data by any "
            f"configuration tried; returning the most accurate, '{name}', which "
            f"loses {chosen.row['drop_points']:.2f} on {validation.source}"
        )
    calibration = chosen.row.get("calibration_check") or {}
    if check is not None and not check["resolvable"] and chosen.row["meets_target"]:
        verdict = (
            f"target not confirmed: {verdict.replace('target met', 'within the target')}; but "
            f"{resolution_message(check, validation.source)}"
        )
    elif calibration.get("missed") and chosen.row["meets_target"]:
        missed = ", ".join(f"'{name}' {_figure(v)}" for name, v in calibration["missed"].items())
        verdict = (
            f"target not confirmed: {verdict.replace('target met', 'within the target')}; but "
            f"on the {calibration['samples']} calibration samples (where its ranges were set, "
            f"which flatters it) it misses the target on {missed}: the validation data decided "
            "on is too few or not representative; give --validation NPZ with more samples"
        )
    return verdict + _evaluation_clause(on_evaluation, fidelity)


def _fidelity_message(chosen: Tried, validation: Validation) -> str:
    verdicts = chosen.row["fidelity"]
    described = "; ".join(
        f"'{output}' {v['measure']} {_figure(v['value'])} (target {_bound(v)})"
        for output, v in verdicts.items()
    )
    where = f"on {validation.source} ({validation.data.num_samples} samples)"
    if chosen.row["meets_target"]:
        bits = chosen.row.get("bits") or {}
        nothing = not bits.get("weights") and not bits.get("activations")
        caveat = (
            "; every quantizer is kept float, so this is the float model: no quantized "
            "configuration met the target"
            if nothing
            else ""
        )
        return (
            f"target met on the validation data by '{chosen.rung.name}', the cheapest of the "
            f"configurations that meet it by modelled energy: {described}, {where}{caveat}"
        )
    return (
        "fidelity target not met on the validation data by any configuration tried; returning "
        f"the most faithful, '{chosen.rung.name}': {described}, {where}"
    )


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _bound(verdict: dict[str, Any]) -> str:
    return (
        f"<= {verdict['target']:g}" if verdict["metric"] == "top1" else f">= {verdict['target']:g}"
    )


def _evaluation_clause(on_evaluation: dict[str, Any], fidelity: bool) -> str:
    """What the report's own data (evaluation, else calibration) says about the same target."""
    source = on_evaluation.get("source")
    if not source:
        return ""
    where = f"the {source} data ({on_evaluation.get('samples')} samples)"
    if fidelity:
        outputs = on_evaluation.get("outputs") or {}
        missed = [name for name, v in outputs.items() if v["met"] is not True]
        if not outputs:
            return ""
        if missed:
            return f"; but on {where} it misses the target on {', '.join(repr(m) for m in missed)}"
        return f"; on {where} every judged output is within the target"
    later = on_evaluation.get("drop_points")
    if later is None:
        return ""
    if on_evaluation.get("meets_target") is False:
        return (
            f"; but on {where} it loses {later:.2f} {on_evaluation['measure']}, over "
            f"the target: the validation data decided on differs from it (too few samples, or "
            "not representative)"
        )
    outcome = (
        "within the target"
        if on_evaluation.get("meets_target")
        else "a different measure from the target's"
    )
    return f"; on {where} it loses {later:.2f} {on_evaluation['measure']} ({outcome})"
