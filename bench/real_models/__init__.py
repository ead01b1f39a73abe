"""Real pretrained models by other authors, fetched at bench setup, quantized by qaas (default
W8A8 and ``--strict-bits``), ONNX Runtime's ``quantize_static`` and NNCF's ``nncf.quantize`` in
one run, each scored by its task metric against the float model
(``python -m bench.real_models``; the models and their licences: ``fetch.py``, ``catalog.py``).

``fetch_rapidocr`` and ``document_images`` stay here for the speed benches that time
PaddleOCR's three networks (``bench/speed.py --real``, ``speed_models.py``, ``artifact_speed.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.real_models.fetch import fetch


@dataclass(frozen=True)
class RealModel:
    """A fetched model, the input shape one sample has, and the batch both tools calibrate in."""

    name: str
    path: Path
    sample_shape: tuple[int, ...]  # one sample, batch axis excluded
    batch_size: int


def fetch_rapidocr() -> list[RealModel]:
    """PaddleOCR's detector, recognizer and direction classifier from the rapidocr wheel."""
    files = {
        "ocr_detector": ("ch_PP-OCRv4_det_infer.onnx", (3, 320, 320), 1),
        "ocr_recognizer": ("ch_PP-OCRv4_rec_infer.onnx", (3, 48, 320), 8),
        "ocr_direction": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192), 8),
    }
    return [
        RealModel(name, fetch("rapidocr", member), shape, batch)
        for name, (member, shape, batch) in files.items()
    ]


def document_images(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``count`` synthetic text images (C, H, W): strokes in lines on a light, noisy page,
    normalized as PaddleOCR's recognizer expects, ``(x - 0.5) / 0.5``."""
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
