"""pipeline auto with a fidelity target on real pretrained networks (PaddleOCR's, from the
rapidocr wheel that ``bench/real_models.py`` fetches): no labels, so every output is judged by
its worst per-channel SQNR against float; the frontier of every configuration tried, and ONNX
Runtime's ``quantize_static`` (W8A8 per-channel, MinMax) on the same calibration documents,
measured the same way on the same held-out documents.

Run: ``python bench/auto.py --real ocr_direction --min-sqnr 30`` (or ocr_detector,
ocr_recognizer).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import cpu_summary, print_table
from bench.peers.onnxruntime_static import quantize_static_qdq
from bench.real_models import document_images, fetch_rapidocr
from qaas_engine import QuantSpec, import_model, quantize
from qaas_engine.data import model_inputs, validate_arrays
from qaas_engine.evaluation import FidelityMeter
from qaas_engine.sessions import session


def run(name: str, min_sqnr: float, calibration_samples: int, evaluation_samples: int) -> int:
    models = {model.name: model for model in fetch_rapidocr()}
    if name not in models:
        raise SystemExit(f"--real: one of {', '.join(models)}")
    model = models[name]
    print(f"pipeline auto on {name}, --min-sqnr {min_sqnr:g}; {cpu_summary()}")
    imported = import_model(model.path)
    inputs = model_inputs(imported.model)
    input_name = inputs[0].name
    calibration = document_images(calibration_samples, model.sample_shape, seed=0)
    held_out = document_images(evaluation_samples, model.sample_shape, seed=1)
    # auto decides on documents of its own (not 20% of the calibration ones): the same count
    # as the evaluation's, so the two verdicts rest on as many samples
    validation = document_images(evaluation_samples, model.sample_shape, seed=2)

    def dataset(images: np.ndarray, role: str) -> Any:
        return validate_arrays({input_name: images}, inputs, role=role, source=role)

    spec = QuantSpec(pipeline=("auto",), min_sqnr_db=min_sqnr, batch_size=model.batch_size)
    start = time.perf_counter()
    result = quantize(
        imported,
        spec,
        calibration=dataset(calibration, "calibration"),
        evaluation=dataset(held_out, "evaluation"),
        validation=dataset(validation, "validation"),
    )
    auto_seconds = time.perf_counter() - start
    auto = result.report["auto"]
    rows = []
    for row in auto["tried"]:
        if "skipped" in row:
            rows.append([row["name"], "-", "skipped: " + row["skipped"], "-", "-", "-", "-"])
            continue
        rows.append(
            [
                row["name"] + (" *" if row["name"] == auto["chosen"] else ""),
                _bits(row["bits"]),
                ", ".join(f"{k} {v['value']:.2f}" for k, v in row["fidelity"].items()),
                round(row["energy_pj"] / 1e6, 3),
                "yes" if row["on_frontier"] else "no",
                "yes" if row["met"] else "no",
                round(row["seconds"], 1),
            ]
        )
    print_table(
        f"{name}: configurations tried, judged on {auto['validation']['source']} "
        f"({auto['validation']['samples']} documents); * chosen",
        ["configuration", "bits W / A", "worst per-channel SQNR dB", "energy uJ", "frontier",
         "met", "seconds"],
        rows,
    )  # fmt: skip
    print(f"auto: {auto['message']}")
    ours = result.report["metrics"]["outputs"]
    peer, peer_seconds = _peer(model, input_name, calibration, held_out)
    table = []
    for output, measured in ours.items():
        runtime, gap = measured["onnxruntime"], measured["simulation_vs_onnxruntime"]
        table.append(
            [output, "qaas auto", runtime.get("worst_channel_sqnr_db"), runtime["sqnr_db"],
             runtime["cosine"], gap["sqnr_db"], round(auto_seconds, 1)]
        )  # fmt: skip
        theirs = peer[output]
        table.append(
            [output, "ORT quantize_static", theirs.get("worst_channel_sqnr_db"),
             theirs["sqnr_db"], theirs["cosine"], "-", round(peer_seconds, 1)]
        )  # fmt: skip
    print_table(
        f"{name}: on {evaluation_samples} held-out documents (ONNX Runtime, optimizer on, "
        "against float); qaas time is the whole auto search plus its report",
        ["output", "tool", "worst channel dB", "SQNR dB", "cosine", "sim vs ORT dB", "seconds"],
        table,
    )
    return 0


def _bits(bits: dict[str, Any]) -> str:
    weights = "+".join(f"{n}x{b}" for b, n in bits["weights"].items())
    if bits.get("weights_float"):
        weights += f"+{bits['weights_float']}xfloat"
    activations = "+".join(f"{n}x{b}" for b, n in bits["activations"].items())
    if bits.get("activations_float"):
        activations += f"+{bits['activations_float']}xfloat"
    return f"{weights} / {activations}"


def _peer(
    model: Any, input_name: str, calibration: np.ndarray, held_out: np.ndarray
) -> tuple[dict[str, dict[str, Any]], float]:
    """ORT's quantize_static (W8A8 per-channel) measured per output like ours."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "ort.onnx"
        seconds = quantize_static_qdq(
            model.path, out, input_name, calibration, per_channel=True,
            batch_size=model.batch_size,
        )  # fmt: skip
        reference = session(Path(model.path).read_bytes())
        quantized = session(out.read_bytes())
        names = [value.name for value in reference.get_outputs()]
        meters = {name: FidelityMeter() for name in names}
        for start in range(0, len(held_out), model.batch_size):
            feeds = {input_name: held_out[start : start + model.batch_size]}
            for name, ref, test in zip(
                names, reference.run(names, feeds), quantized.run(names, feeds), strict=True
            ):
                meters[name].update(ref, test, None)
    return {name: meter.result() for name, meter in meters.items()}, seconds
