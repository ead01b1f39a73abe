"""One model through every tool: data written once, each tool's model scored on held-out data
by the model's task metric and by output SQNR against the float model, all in ONNX Runtime
with its default optimizations (as deployed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.real_models import metrics, tools
from bench.real_models.catalog import Case, Feeds, Outputs, run_each


def write_npz(path: Path, feeds: Feeds, *, batched: bool) -> Path:
    """Inputs keyed by name: concatenated on the batch axis, or stacked whole (one extra axis)."""
    join = np.concatenate if batched else np.stack
    arrays: dict[str, Any] = {name: join([feed[name] for feed in feeds]) for name in feeds[0]}
    np.savez(path, **arrays)
    return path


def _session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _quantizes(model: Path) -> bool:
    """Whether any QuantizeLinear is left in the graph or its subgraphs."""
    import onnx

    def walk(graph: onnx.GraphProto) -> bool:
        for node in graph.node:
            if node.op_type == "QuantizeLinear":
                return True
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH and walk(attribute.g):
                    return True
        return False

    return walk(onnx.load(str(model), load_external_data=False).graph)


def _fidelity(
    case: Case,
    reference: Outputs,
    test: Outputs,
    logit: Sequence[tuple[tuple[int, int], ...]] = (),
) -> dict[str, float]:
    """Lowest output SQNR and lowest channel SQNR over the model's outputs; and the lowest
    channel SQNR with each output's probability rows (``logit``, per output) in log-odds, as
    the engine's report and ``auto`` judge them."""
    whole, channels, judged = [], [], []
    for index in range(len(reference[0])):
        ref = np.concatenate([np.atleast_1d(s[index]) for s in reference]).astype(np.float64)
        out = np.concatenate([np.atleast_1d(s[index]) for s in test]).astype(np.float64)
        whole.append(metrics.sqnr_db(ref, out))
        if ref.ndim >= 2:
            axis = case.channel_axis if case.channel_axis is not None else None
            axis = axis if axis is not None else (1 if ref.ndim == 4 else ref.ndim - 1)
            channels.append(metrics.worst_channel_sqnr_db(ref, out, axis))
            rows = logit[index] if index < len(logit) else ()
            judged.append(metrics.log_odds_worst_channel_sqnr_db(ref, out, axis, rows))
    return {
        "sqnr_db": min(whole),
        "worst_channel_sqnr_db": min(channels) if channels else math.nan,
        "worst_channel_log_odds_db": min(judged) if judged else math.nan,
    }


def _probability_rows(model: Path) -> list[tuple[tuple[int, int], ...]]:
    """Per graph output, the channel ranges a Sigmoid produced (none where unknown)."""
    import onnx

    from qaas_engine.output_axes import logit_channels

    graph = onnx.load(str(model))
    found = logit_channels(graph)
    return [found.get(value.name, ()) for value in graph.graph.output]


PEERS = ("ORT", "NNCF", "qaas", "qaas strict")


def bench_case(
    case: Case,
    samples: int,
    folder: Path,
    auto_min_sqnr: float | None = None,
    peers: tuple[str, ...] = PEERS,
    qaas_options: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The tools in ``peers`` on ``case`` (every one by default): the row of the JSON results;
    with ``auto_min_sqnr``, also ``qaas --pipeline auto --min-sqnr`` (the ``qaas auto`` row,
    its choice and frontier). ``qaas_options`` go to every qaas run after the case's own."""
    folder.mkdir(parents=True, exist_ok=True)
    model = case.model()
    calibration = (case.calibration_feeds or case.feeds)(samples, 0)
    held_out = case.feeds(samples, 1)
    stacked = write_npz(folder / "calibration-stacked.npz", calibration, batched=False)
    qaas_calibration = write_npz(folder / "calibration.npz", calibration, batched=case.batchable)
    qaas_evaluation = write_npz(folder / "evaluation.npz", held_out, batched=case.batchable)
    runner = case.run or run_each
    options = (*case.qaas_options, *qaas_options)
    reference = runner(_session(model), held_out)
    runs = [
        *([tools.run_ort(model, stacked, folder)] if "ORT" in peers else []),
        *([tools.run_nncf(model, stacked, folder)] if "NNCF" in peers else []),
        *(
            tools.run_qaas(
                model, qaas_calibration, qaas_evaluation, folder, strict=strict, options=options
            )
            for strict, tool in ((False, "qaas"), (True, "qaas strict"))
            if tool in peers
        ),
    ]
    if auto_min_sqnr is not None:
        # A third draw, for auto's choice: held out from calibration (whose ranges would flatter
        # it) and from the held-out set the row is scored on.
        validation = write_npz(
            folder / "validation.npz", case.feeds(samples, 2), batched=case.batchable
        )
        auto = ("--pipeline", "auto", "--min-sqnr", f"{auto_min_sqnr:g}",
                "--validation", str(validation), *options)  # fmt: skip
        runs.append(
            tools.run_qaas(
                model, qaas_calibration, qaas_evaluation, folder, strict=False, options=auto,
                tool="qaas auto",
            )
        )  # fmt: skip
    results: dict[str, Any] = {
        "model": case.name,
        "kind": case.kind,
        "metric": case.metric,
        "file": str(model.relative_to(tools.ROOT)),
        "samples": {"calibration": len(calibration), "held_out": len(held_out)},
        "notes": case.notes,
        "qaas_options": list(options),
        "tools": {"float": {"task": case.score(reference, reference), "sqnr_db": math.inf}},
    }
    probabilities = _probability_rows(model)
    for run in runs:
        row: dict[str, Any] = {"wall_s": round(run.wall_s, 2), "error": run.error}
        if run.model is not None and not _quantizes(run.model):
            row["error"] = "returned a model with no QuantizeLinear node: nothing was quantized"
        elif run.model is not None:
            try:
                test = runner(_session(run.model), held_out)
                row["task"] = case.score(reference, test)
                row.update(_fidelity(case, reference, test, probabilities))
            except Exception as error:  # a model the tool wrote that ORT will not run
                row["error"] = f"scoring failed: {type(error).__name__}: {error}"
        if run.tool.startswith("qaas") and run.report:
            row["sim_vs_ort_db"] = tools.sim_vs_ort_db(run.report)
            row["rules"] = tools.rules_fired(run.report)
            row["rule_lines"] = run.report.get("rules") or []
            if run.tool == "qaas auto":
                row["auto"] = tools.auto_summary(run.report)
                row["rules"] = f"chose {row['auto']['chosen']} ({row['auto']['verdict']})"
        results["tools"][run.tool] = row
    return results
