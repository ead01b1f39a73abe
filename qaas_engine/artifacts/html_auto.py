"""report.html's pipeline-auto section (every configuration tried, the frontier, the verdict on
validation and on the report's own data) and the per-output fidelity table."""

from __future__ import annotations

from html import escape
from typing import Any

from qaas_engine.artifacts.html_parts import _num, _table
from qaas_engine.artifacts.svg import scatter_chart
from qaas_engine.fidelity import resolution_message


def auto_section(report: dict[str, Any]) -> str:
    auto = report.get("auto")
    if not auto:
        return ""
    fidelity = _judged_by_fidelity(auto)
    rows, points = [], []
    for row in auto["tried"]:
        if "skipped" in row:
            rows.append([escape(row["name"]), "-", "-", "-", "-", "-", escape(row["skipped"])])
            continue
        chosen = " (chosen)" if row["name"] == auto["chosen"] else ""
        rows.append(
            [
                escape(row["name"] + chosen),
                _bits(row.get("bits")),
                _row_fidelity(row, fidelity),
                _num(row["energy_pj"], "{:,.0f}"),
                "yes" if row.get("on_frontier") else "no",
                _num(row["seconds"], "{:.1f}"),
                "meets the target" if row["meets_target"] else "misses the target",
            ]
        )
        y = row.get("score", row.get("accuracy")) if fidelity else row.get("accuracy")
        if y is not None:
            points.append((row["name"], row["energy_pj"], y, bool(row.get("on_frontier"))))
    plot = scatter_chart(
        f"Configurations tried: {'fidelity' if fidelity else 'accuracy'} against modelled "
        "energy (frontier joined)",
        points,
        "energy per inference, pJ",
        "worst margin past the target (dB)" if fidelity else "validation accuracy",
    )
    header = ["configuration", "bits (W / A)", "fidelity on validation", "energy pJ"]
    header += ["on frontier", "seconds", ""]
    return (
        _verdict(auto)
        + f'<p class="note">{_note(auto, fidelity)}</p>'
        + _table(header, rows, "text-last")
        + plot
        + _changes(auto)
    )


def _judged_by_fidelity(auto: dict[str, Any]) -> bool:
    judged = auto["target"].get("outputs", {}).values()
    return any(metric in ("sqnr", "cosine") for metric in judged)


def _note(auto: dict[str, Any], fidelity: bool) -> str:
    target = auto["target"]
    if fidelity:
        aims = ", ".join(
            f"'{escape(name)}' by {escape(metric)}" for name, metric in target["outputs"].items()
        )
        aim = (
            f"Target: every judged output ({aims}) at its target: SQNR at least "
            f"{target.get('min_sqnr_db', 0):g} dB as the {escape(str(target.get('sqnr_measure')))}"
        )
        if "min_cosine" in target:
            aim += f"; cosine at least {target['min_cosine']:g}"
        if "top1" in target["outputs"].values():
            aim += f"; top-1 within {target['max_accuracy_drop']:g} {escape(target['measure'])}"
        aim += ". Auto returns the cheapest configuration by the energy model that meets it."
    else:
        aim = f"Target: lose at most {target['max_accuracy_drop']:g} {escape(target['measure'])}."
    return (
        f"{aim} The choice and the table below are measured on "
        f"{escape(auto['validation']['source'])} ({auto['validation']['samples']} samples), "
        "never on the evaluation data; the summary's figures are on the evaluation data. "
        "On the frontier: no other configuration is both at least as faithful and cheaper."
    )


def _bits(bits: dict[str, Any] | None) -> str:
    if not bits:
        return "–"
    weights = "+".join(f"{n}×{b}" for b, n in bits.get("weights", {}).items())
    if bits.get("weights_float"):
        weights += f"+{bits['weights_float']}×float"
    weights = weights.lstrip("+") or "float"
    activations = "+".join(f"{n}×{b}" for b, n in bits.get("activations", {}).items())
    if bits.get("activations_float"):
        activations += f"+{bits['activations_float']}×float"
    return escape(f"W {weights} / A {activations.lstrip('+') or 'float'}")


def _row_fidelity(row: dict[str, Any], fidelity: bool) -> str:
    verdicts = row.get("fidelity")
    if not verdicts or not fidelity:
        return (
            f"accuracy {_num(row.get('accuracy'), '{:.4f}')}, "
            f"drop {_num(row.get('drop_points'), '{:.2f}')}"
        )
    return "<br>".join(
        f"{escape(name)}: {_verdict_figure(v)}{'' if v['met'] else ' ✗'}"
        for name, v in verdicts.items()
    )


def _verdict_figure(verdict: dict[str, Any]) -> str:
    unit = {"sqnr": " dB", "cosine": " cosine", "top1": " points lost"}[verdict["metric"]]
    pattern = "{:.5f}" if verdict["metric"] == "cosine" else "{:.2f}"
    return _num(verdict.get("value"), pattern) + unit


def _verdict(auto: dict[str, Any]) -> str:
    """One line per data set, so the verdict never contradicts the summary card: met or not
    on the validation data (where auto chose), and on the evaluation data (what is shown)."""
    target = auto["target"]
    chosen: dict[str, Any] = next((r for r in auto["tried"] if r["name"] == auto["chosen"]), {})
    verdict = auto.get("verdict", "met" if auto["met"] else "not met")
    opening = {
        "met": "Target met",
        "not met": "Target missed",
        "unresolved": "Target not confirmed",
    }[verdict]
    if chosen.get("fidelity") and _judged_by_fidelity(auto):
        figures = "; ".join(
            f"'{escape(name)}' {escape(v['measure'].replace(' (dB)', ''))} {_verdict_figure(v)}"
            for name, v in chosen["fidelity"].items()
        )
        first = f"{opening} on the validation data: '{escape(auto['chosen'])}': {figures}"
    else:
        first = (
            f"{opening} on the validation data: "
            f"'{escape(auto['chosen'])}' loses {_num(chosen.get('drop_points'), '{:.2f}')} "
            f"{escape(target['measure'])} (target {target['max_accuracy_drop']:g})"
        )
    lines = [first]
    if verdict == "unresolved" and (auto.get("resolution") or {}).get("kind") == "fidelity":
        source = str((auto.get("validation") or {}).get("source"))
        lines.append(escape(resolution_message(auto["resolution"], source)))
    elif verdict == "unresolved":
        check = auto.get("resolution") or {}
        lines.append(
            f"{check.get('samples')} validation samples cannot resolve a "
            f"{_num(check.get('budget_points'), '{:g}')}-point budget: one sample is "
            f"{_num(check.get('one_sample_points'), '{:.2f}')} points, the binomial standard "
            f"error of such a drop {_num(check.get('standard_error_points'), '{:.2f}')} points; "
            f"at least {_num(check.get('samples_needed'), '{:,}')} are needed"
        )
    later = auto.get("evaluation") or {}
    if later.get("drop_points") is not None and not _judged_by_fidelity(auto):
        outcome = {
            True: "within the target",
            False: "over the target",
            None: "a different measure from the target's",
        }
        lines.append(
            f"On the {escape(str(later.get('source')))} data ({later.get('samples')} samples): "
            f"loses {_num(later['drop_points'], '{:.2f}')} {escape(later['measure'])}, "
            f"{outcome[later.get('meets_target')]}"
        )
    elif later.get("outputs") and _judged_by_fidelity(auto):
        figures = "; ".join(
            f"'{escape(name)}' {_verdict_figure(v)}" for name, v in later["outputs"].items()
        )
        held = "within the target" if later.get("meets_target") else "over the target"
        lines.append(
            f"On the {escape(str(later.get('source')))} data ({later.get('samples')} samples): "
            f"{figures}, {held}"
        )
    missed = not auto["met"] or later.get("meets_target") is False
    css = "warn verdict" if missed else "verdict"
    return "".join(f'<p class="{css}">{line}</p>' for line in lines)


def _changes(auto: dict[str, Any]) -> str:
    changes = auto.get("chosen_changes") or []
    if not changes:
        return ""
    items = "".join(f"<li>{escape(c['node'])}: {escape(c['action'])}</li>" for c in changes[:20])
    more = f"<li>… and {len(changes) - 20} more (report.json)</li>" if len(changes) > 20 else ""
    return f"<p>What the chosen configuration changed:</p><ul>{items}{more}</ul>"


def fidelity_table(report: dict[str, Any]) -> str:
    """Each output's deciding metric (named by the user, or the default) against its target."""
    section = report.get("fidelity") or {}
    outputs = section.get("outputs") or {}
    if not outputs:
        return ""
    rows = [
        [
            escape(name),
            escape(v["metric"]) + (" (named)" if v.get("named") else ""),
            escape(v["measure"]),
            _num(v.get("value"), "{:.5f}" if v["metric"] == "cosine" else "{:.2f}"),
            ("≤ " if v["metric"] == "top1" else "≥ ") + _num(v.get("target"), "{:g}"),
            {True: "met", False: "missed", None: "–"}[v.get("met")],
        ]
        for name, v in outputs.items()
    ]
    header = ["output", "metric", "measure", "value", "target", ""]
    return (
        "<h3>Fidelity per output (the metric that judges it)</h3>"
        + _table(header, rows, "text-last")
        + f'<p class="note">{escape(str(section.get("note", "")))}</p>'
    )
