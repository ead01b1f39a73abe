"""``report.html``: the report for people, one self-contained file that opens offline.

Everything comes from ``report.json``'s dict, so the HTML never says something the JSON does
not; plots are inline SVG (``svg.py``), no script, no external URL.
"""

from __future__ import annotations

from html import escape
from statistics import fmean
from typing import Any

from qaas_engine.artifacts.html_auto import auto_section, fidelity_table
from qaas_engine.artifacts.html_parts import _num, _table
from qaas_engine.artifacts.svg import column_chart, hbar_chart, line_chart

MAX_CLE_LAYERS = 6
MAX_ANALYSIS_ROWS = 12

STYLE = """
body{font-family:sans-serif;margin:1.5em auto;max-width:800px;color:#222;line-height:1.4}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 10px;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}.big{font-size:1.3em;
font-weight:bold}.warn{color:#b00}.note{color:#555;font-size:.9em}svg.plot{display:block;
margin:.8em 0}.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;
border-radius:6px;padding:6px 12px;min-width:150px}
table.text-last td:last-child,table.text-last th:last-child{text-align:left}
.verdict{font-weight:bold}
"""


def _card(title: str, value: str, note: str = "") -> str:
    return (
        f'<div class="card"><div class="note">{escape(title)}</div>'
        f'<div class="big">{value}</div><div class="note">{note}</div></div>'
    )


def _summary(report: dict[str, Any]) -> str:
    metrics = report.get("metrics", {})
    size = report.get("size_bytes", {})
    energy = report.get("energy") or {}
    latency = report.get("latency_ms") or {}
    sim_ort = metrics.get("simulation_vs_onnxruntime", {})
    ort_m, float_m = metrics.get("onnxruntime", {}), metrics.get("float", {})
    on_data = _measured_on(metrics)
    if ort_m.get("top1") is not None:
        quality = f"{_num(float_m.get('top1'), '{:.2%}')} → {_num(ort_m.get('top1'), '{:.2%}')}"
        drop = 100.0 * (float_m.get("top1", 0.0) - ort_m["top1"])
        quality_note = (
            f"top-1 float → quantized (ONNX Runtime), {_num(drop, '{:.2f}')} points lost "
            f"on {on_data}"
        )
    else:
        quality = f"{_num(ort_m.get('sqnr_db'), '{:.1f}')} dB"
        quality_note = f"output SQNR vs float (no labels), on {on_data}"
    cards = [
        _card("accuracy", quality, quality_note),
        _card(
            "simulation vs ONNX Runtime",
            _num(sim_ort.get("top1_agreement"), "{:.2%}"),
            f"top-1 agreement; max |diff| {_num(sim_ort.get('max_abs_diff'))}",
        ),
        _size_card(size),
        _card(
            "energy (model)",
            f"{_num(energy.get('ratio'), '{:.1f}')}× less",
            f"{_num(energy.get('float_pj'), '{:,.0f}')} → "
            f"{_num(energy.get('quantized_pj'), '{:,.0f}')} pJ per inference",
        ),
    ]
    for batch, value in (latency.get("speedup") or {}).items():
        float_ms = latency["float"].get(batch)
        quant_ms = latency["quantized"].get(batch)
        cards.append(
            _card(
                f"latency, {batch.replace('_', ' ')} (measured)",
                f"{_num(value, '{:.2f}')}× {'faster' if value >= 1 else '(slower)'}",
                f"{_num(float_ms, '{:.3f}')} → {_num(quant_ms, '{:.3f}')} ms",
            )
        )
    warnings = "".join(f'<p class="warn">{escape(w)}</p>' for w in report.get("warnings", []))
    warnings += "".join(
        f'<p class="note"><b>rule {escape(r["rule"])}</b> at {escape(r["node"])}: '
        f"{escape(r['action'])}; {escape(r['why'])} (--strict-bits turns rules off)</p>"
        for r in report.get("rules") or []
    )
    warnings += _log_odds_notes(metrics.get("outputs") or {})
    rows = [
        [
            escape(key),
            _num(metrics.get(key, {}).get("top1"), "{:.4f}"),
            _num(metrics.get(key, {}).get("sqnr_db"), "{:.2f}"),
            _num(metrics.get(key, {}).get("top1_agreement"), "{:.4f}"),
            _num(metrics.get(key, {}).get("cosine"), "{:.5f}"),
            _num(metrics.get(key, {}).get("worst_channel_sqnr_db"), "{:.2f}"),
        ]
        for key in ("float", "simulated", "onnxruntime", "simulation_vs_onnxruntime")
    ]
    measured = metrics.get("dataset") or "no data"
    header = ["model", "top-1", "SQNR dB", "top-1 agreement", "cosine", "worst channel dB"]
    return (
        f'<div class="cards">{"".join(cards)}</div>{warnings}'
        + _table(header, rows)
        + f'<p class="note">measured on the {escape(str(measured))} data; SQNR, agreement and '
        "cosine are against the float model (the last row: simulation against ONNX Runtime); "
        "worst channel: the SQNR of the output channel quantization hurts most"
        + _simulated_note(metrics)
        + "</p>"
        + _outputs_table(metrics.get("outputs") or {})
        + fidelity_table(report)
    )


def _simulated_note(metrics: dict[str, Any]) -> str:
    """The simulation's rows rest on fewer samples than the others where it was sampled."""
    counts = metrics.get("samples") or {}
    simulated, measured = counts.get("simulated"), counts.get("measured")
    if not isinstance(simulated, int) or not isinstance(measured, int) or simulated >= measured:
        return ""
    return (
        f"; the simulation ran on the first {simulated:,} of the {measured:,} samples (a "
        "sampled check that it computes what ONNX Runtime computes; --simulation-samples all "
        "runs it on every one)"
    )


def _measured_on(metrics: dict[str, Any]) -> str:
    """Which data a figure is on, with how many samples: "the evaluation data (400 samples)"."""
    dataset = metrics.get("dataset")
    if not dataset:
        return "no data"
    measured = (metrics.get("samples") or {}).get("measured")
    count = f" ({measured:,} samples)" if isinstance(measured, int) else ""
    return f"the {escape(str(dataset))} data{count}"


def _size_card(size: dict[str, Any]) -> str:
    """The file the user downloads, first; the weights' packed size is a different figure (Q/DQ
    scales, zero points, int32 biases and the graph come on top) and says so."""
    file_bytes, float_file = size.get("quantized_file"), size.get("float_file")
    weights_note = (
        f"weights at their bit-width: {_num(size.get('float'), '{:,}')} → "
        f"{_num(size.get('quantized'), '{:,}')} bytes ({_num(size.get('ratio'), '{:.2f}')}×)"
    )
    if file_bytes is None:
        return _card(
            "size (weights)", f"{_num(size.get('ratio'), '{:.2f}')}× smaller", weights_note
        )
    source = f"; float ONNX as imported {_num(float_file, '{:,}')} bytes" if float_file else ""
    return _card(
        "size of model.quant.onnx (download)",
        f"{_num(file_bytes, '{:,}')} bytes",
        f"the file as downloaded{source}<br>{weights_note}",
    )


def _log_odds_notes(outputs: dict[str, Any]) -> str:
    """Which channels of which output were judged in log-odds (a Sigmoid's probabilities):
    their SQNR figures are not in the output's own values, and a reader must know."""
    notes = []
    for name, measured in outputs.items():
        judged = (measured.get("onnxruntime") or {}).get("log_odds_channels")
        if not judged:
            continue
        clip = measured["onnxruntime"].get("log_odds_clip")
        parts = ", ".join(f"{start}..{stop - 1}" for start, stop in judged)
        notes.append(
            f'<p class="note">output {escape(name)}: channels {parts} are probabilities (a '
            f"Sigmoid's), so their per-channel SQNR is judged in log-odds (clipped at {clip:g}); "
            "other channels, the whole-output SQNR and simulation vs ONNX Runtime in the "
            "output's values</p>"
        )
    return "".join(notes)


def _outputs_table(outputs: dict[str, Any]) -> str:
    """Every output's fidelity, where the model has more than one."""
    if len(outputs) < 2:
        return ""
    rows = [
        [
            escape(name),
            _num(measured["onnxruntime"].get("sqnr_db"), "{:.2f}"),
            _num(measured["onnxruntime"].get("worst_channel_sqnr_db"), "{:.2f}"),
            _num(measured["onnxruntime"].get("cosine"), "{:.5f}"),
            _num(measured["simulation_vs_onnxruntime"].get("sqnr_db"), "{:.2f}"),
        ]
        for name, measured in outputs.items()
    ]
    header = ["output", "SQNR dB", "worst channel dB", "cosine", "simulation vs ORT dB"]
    return "<h3>Every output (ONNX Runtime against float)</h3>" + _table(header, rows)


def _effect(name: str, data: dict[str, Any] | None, report: dict[str, Any]) -> str:
    """One line on what a step did, from its step report or the report section it made."""
    if not data:
        return _stage_effect(name, report)
    if name == "bn_fold":
        return f"{len(data.get('folded', []))} BatchNorm folded"
    if name == "cle":
        return (
            f"{len(data.get('equalized', []))} pairs equalized, {data.get('iterations')} iterations"
        )
    if name == "bias_correction":
        rows = [r for r in data.get("layers", []) if r.get("error_before")]
        before = fmean(fmean(r["error_before"]) for r in rows) if rows else None
        after_rows = [r for r in rows if r.get("error_after")]
        after = fmean(fmean(r["error_after"]) for r in after_rows) if after_rows else None
        return f"{len(rows)} layers; mean |bias error| {_num(before)} → {_num(after)}"
    if name == "adaround":
        rows = data.get("layers", [])
        if not rows:
            return "no layers"
        before = fmean(r["reconstruction_mse_nearest"] for r in rows)
        after = fmean(r["reconstruction_mse_adaround"] for r in rows)
        return f"{len(rows)} layers; mean reconstruction MSE {_num(before)} → {_num(after)}"
    if name == "qat":
        selection = data.get("selection")
        kept = (
            f"kept epoch {data.get('best_epoch')}, validation {_num(data.get('best_validation'))}"
        )
        return kept + (f": {escape(selection)}" if selection else "")
    if name == "bias_absorption":
        return escape(", ".join(f"{k}: {len(v)}" for k, v in data.items() if isinstance(v, list)))
    return ""


def _stage_effect(name: str, report: dict[str, Any]) -> str:
    """What the fixed stages (import, calibration, export, the measurements) did."""
    model, size = report.get("model") or {}, report.get("size_bytes") or {}
    metrics, quantizers = report.get("metrics") or {}, report.get("quantizers") or {}
    spec = report.get("spec") or {}
    if name == "import":
        opset = model.get("opset") or {}
        source = model.get("source_format", "?")
        return escape(f"{source}, opset {opset.get('original')} → {opset.get('used')}")
    if name == "load":
        available = (metrics.get("samples") or {}).get("available")
        return "data files read" + (f"; {available:,} samples to measure on" if available else "")
    if name == "prepare":
        return f"{_num(model.get('nodes'))} nodes after BatchNorm folding"
    if name == "weight_ranges":
        return (
            f"{_num(quantizers.get('weights'))} weight tensors, "
            f"{escape(str(spec.get('weight_granularity', '')))}"
        )
    if name == "calibration":
        return (
            f"{_num(quantizers.get('activations'))} activation ranges, "
            f"{escape(str(spec.get('calibration_method', '')))}"
        )
    if name == "rules":
        if report.get("strict_bits"):
            return "off (--strict-bits)"
        fired = sorted({rule["rule"] for rule in report.get("rules") or []})
        return escape(f"applied: {', '.join(fired)}") if fired else "checked; none applied"
    if name == "export":
        return f"model.quant.onnx, {_num(size.get('quantized_file'), '{:,}')} bytes"
    if name == "evaluation":
        return f"float, simulated and ONNX Runtime outputs on {_measured_on(metrics)}"
    if name == "energy":
        ratio = (report.get("energy") or {}).get("ratio")
        return f"modelled energy {_num(ratio, '{:.1f}')}× less" if ratio else ""
    if name == "latency":
        speedup = (report.get("latency_ms") or {}).get("speedup") or {}
        return escape(
            ", ".join(f"{b.replace('_', ' ')}: {v:.2f}× float" for b, v in speedup.items())
        )
    if name == "analysis":
        layers = (report.get("analysis") or {}).get("layers") or []
        return f"{len(layers)} layers ranked" if layers else ""
    return ""


def _steps(report: dict[str, Any]) -> str:
    step_reports = report.get("step_reports", {})
    steps = report.get("steps", [])
    effects = [_effect(s["name"], step_reports.get(s["name"]), report) for s in steps]
    if not any(effects):  # a column of blanks says nothing: leave it out
        return _table(
            ["step", "seconds"],
            [[escape(s["name"]), _num(s["seconds"], "{:.3f}")] for s in steps],
        )
    rows = [
        [escape(s["name"]), _num(s["seconds"], "{:.3f}"), effect]
        for s, effect in zip(steps, effects, strict=True)
    ]
    return _table(["step", "seconds", "what it did"], rows, css="text-last")


def _cle_plots(report: dict[str, Any]) -> str:
    ranges = (report.get("step_reports", {}).get("cle") or {}).get("weight_ranges") or {}
    plots = [
        column_chart(
            f"CLE: per-channel weight range of {layer}",
            [("before", r["before"]), ("after", r["after"])],
            "max |w| per output channel",
            "channel",
        )
        for layer, r in list(ranges.items())[:MAX_CLE_LAYERS]
    ]
    more = len(ranges) - MAX_CLE_LAYERS
    note = f'<p class="note">{more} more layers in report.json</p>' if more > 0 else ""
    return "".join(plots) + note


def _analysis(report: dict[str, Any]) -> str:
    analysis = report.get("analysis") or {}
    rows = analysis.get("layers") or []
    if not rows:
        return f'<p class="note">{escape(analysis.get("skipped", "not run"))}</p>'
    labels = [r["layer"] for r in rows]
    chart = hbar_chart(
        "Per-layer SQNR (higher is better), most sensitive first",
        labels,
        [
            ("full model", [r["sqnr_db"] for r in rows]),
            ("weights only", [r["weights_only_sqnr_db"] for r in rows]),
            ("activations only", [r["activations_only_sqnr_db"] for r in rows]),
        ],
        "dB",
    )
    shares = noise_shares(rows)
    table = _table(
        ["layer", "SQNR dB", "weights only", "activations only", "share of layer noise"],
        [
            [
                escape(r["layer"]),
                _num(r["sqnr_db"], "{:.1f}"),
                _num(r["weights_only_sqnr_db"], "{:.1f}"),
                _num(r["activations_only_sqnr_db"], "{:.1f}"),
                _num(share, "{:.1%}"),
            ]
            for r, share in list(zip(rows, shares, strict=True))[:MAX_ANALYSIS_ROWS]
        ],
    )
    more = len(rows) - MAX_ANALYSIS_ROWS
    share_note = (
        "share of layer noise: the output noise each layer causes when quantized alone (its "
        "weights-only plus its activations-only noise), as a share of that noise summed over "
        "every layer measured; the column sums to 100%"
        + (f" over all {len(rows)} layers ({more} more in report.json)" if more > 0 else "")
        + ". Layers interact, so this ranks layers; it does not split the full model's noise."
    )
    return (
        f"<p><b>Suggestion:</b> <code>{escape(analysis['suggestion'])}</code> "
        f"(model output SQNR {_num(analysis.get('output_sqnr_db'), '{:.1f}')} dB on "
        f"{analysis.get('samples')} samples)</p>{chart}{table}"
        f'<p class="note">{escape(share_note)}</p>'
        f'<p class="note">{escape(analysis.get("how", ""))}</p>'
    )


def noise_shares(rows: list[dict[str, Any]]) -> list[float | None]:
    """Each layer's alone-quantized output noise (weights-only plus activations-only, as noise
    powers relative to the signal) over the sum of the same for every measured layer: shares
    of one total, so they add up to 100%, unlike the per-layer ``noise_share`` (each alone
    against the full model's noise, which overlap)."""
    powers: list[float | None] = []
    for row in rows:
        measured = [
            10.0 ** (-db / 10.0)
            for db in (row.get("weights_only_sqnr_db"), row.get("activations_only_sqnr_db"))
            if db is not None
        ]
        powers.append(sum(measured) if measured else None)
    total = sum(p for p in powers if p is not None)
    return [None if p is None or total <= 0 else p / total for p in powers]


def _energy(report: dict[str, Any]) -> str:
    energy = report.get("energy") or {}
    rows = energy.get("layers") or []
    if not rows:
        return f'<p class="note">{escape(energy.get("skipped", "not computed"))}</p>'
    chart = hbar_chart(
        "Energy per layer, one inference",
        [r["layer"] for r in rows],
        [
            ("float", [r["float_pj"]["total"] for r in rows]),
            ("quantized", [r["quantized_pj"]["total"] for r in rows]),
        ],
        "pJ",
        log=True,
    )
    parts = energy.get("breakdown", {})
    split = _table(
        ["", "compute pJ", "weights memory pJ", "activations memory pJ"],
        [
            [key.replace("_pj", "")]
            + [
                _num(parts[key][p], "{:,.0f}")
                for p in ("compute", "weights_memory", "activations_memory")
            ]
            for key in ("float_pj", "quantized_pj")
            if key in parts
        ],
    )
    assumptions = "".join(f"<li>{escape(a)}</li>" for a in energy.get("assumptions", []))
    return f"{split}{chart}<p><b>Assumptions</b></p><ul class='note'>{assumptions}</ul>"


def _bias_plot(report: dict[str, Any]) -> str:
    data = report.get("step_reports", {}).get("bias_correction") or {}
    rows = [r for r in data.get("layers", []) if r.get("error_before")]
    if not rows:
        return ""
    after = [fmean(r["error_after"]) if r.get("error_after") else None for r in rows]
    return hbar_chart(
        "Bias correction: mean |output shift| per layer (quantized vs float)",
        [r["layer"] for r in rows],
        [("before", [fmean(r["error_before"]) for r in rows]), ("after", after)],
        "mean absolute error of the layer's per-channel output mean",
        log=True,
    )


def _qat_plot(report: dict[str, Any]) -> str:
    qat = report.get("step_reports", {}).get("qat") or {}
    curve = qat.get("curve") or []
    if not curve:
        return ""
    selection = qat.get("selection")
    note = (
        f'<p class="note">Kept epoch {_num(qat.get("best_epoch"))}: {escape(selection)}</p>'
        if selection
        else ""
    )
    return note + line_chart(
        "QAT: validation score per epoch",
        [c["epoch"] for c in curve],
        [
            ("validation", [c["validation"] for c in curve]),
            ("train loss", [c["train_loss"] for c in curve]),
        ],
        "epoch",
        "validation (top-1 or agreement) and training loss",
    )


def _mixed_precision(report: dict[str, Any]) -> str:
    data = (report.get("step_reports") or {}).get("bayesian_bits")
    if not data:
        return ""
    weights = data["weights"]
    plot = hbar_chart(
        "Bayesian Bits: bit-width chosen per layer (weights)",
        [w["layer"] for w in weights],
        [("quantized", [float(w["bits"]) for w in weights])],
        "bits",
    )
    rows = [
        [
            escape(w["layer"]),
            str(w["bits"]),
            "-" if w["channels"] is None else f"{len(w['pruned_channels'])} of {w['channels']}",
        ]
        for w in weights
    ]
    acts = ", ".join(f"{a['bits']}" for a in data["activations"] if a["gated"])
    cost = data["relative_cost"]
    note = (
        f"Modelled {escape(data['cost'])} cost {cost['chosen']:.3f} x that of "
        f"{escape(cost['reference'])}; gated activation widths: {escape(acts)}."
    )
    return (
        f'<p class="note">{note}</p>'
        + _table(["layer", "weight bits", "pruned output channels"], rows)
        + plot
    )


def _latency(report: dict[str, Any]) -> str:
    latency = report.get("latency_ms") or {}
    if not latency.get("float"):
        return f'<p class="note">{escape(latency.get("skipped_reason", "not measured"))}</p>'
    rows = [
        [
            escape(batch),
            _num(latency["float"][batch], "{:.3f}"),
            _num(latency["quantized"].get(batch), "{:.3f}"),
            _num(latency["speedup"].get(batch), "{:.2f}"),
        ]
        for batch in latency["float"]
    ]
    return (
        _table(["batch", "float ms", "quantized ms", "speedup"], rows)
        + f'<p class="note">{escape(latency.get("how", ""))}. '
        f"{escape(latency.get('speedup_note', ''))}</p>"
    )


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string."""
    model = report.get("model", {})
    sections = [
        ("Summary", _summary(report)),
        ("Steps", _steps(report)),
        ("Energy", _energy(report)),
        ("Measured latency", _latency(report)),
        ("Per-layer analysis", _analysis(report)),
    ]
    auto, mixed = auto_section(report), _mixed_precision(report)
    if auto:
        sections.insert(1, ("Automatic pipeline", auto))
    if mixed:
        sections.append(("Mixed precision", mixed))
    cle, bias, qat = _cle_plots(report), _bias_plot(report), _qat_plot(report)
    if cle:
        sections.append(("Cross-layer equalization", cle))
    if bias:
        sections.append(("Bias correction", bias))
    if qat:
        sections.append(("Quantization-aware training", qat))
    body = "".join(f"<h2>{escape(title)}</h2>{content}" for title, content in sections)
    spec = report.get("spec", {})
    subtitle = (
        f"W{spec.get('weight_bits', '?')}A{spec.get('activation_bits') or 'float'}, "
        f"{_num(model.get('params'), '{:,}')} parameters, "
        f"{_num(model.get('macs'), '{:,}')} MACs per sample; engine "
        f"{escape(str(report.get('versions', {}).get('engine', '')))}"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>qaas report</title><style>{STYLE}</style></head><body>"
        f"<h1>Quantization report</h1><p class='note'>{subtitle}</p>{body}</body></html>"
    )
