"""ONNX Runtime's own post-training quantizer, run the documented way, as a peer to measure."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


class _Reader:
    """Feeds calibration batches the way quantize_static expects (dicts of numpy arrays)."""

    def __init__(self, input_name: str, samples: np.ndarray, batch_size: int) -> None:
        self.batches = [
            {input_name: samples[i : i + batch_size]} for i in range(0, len(samples), batch_size)
        ]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return self.batches[self.index - 1]

    def rewind(self) -> None:
        self.index = 0


def quantize_static_qdq(
    model_path: Path,
    output_path: Path,
    input_name: str,
    calibration: np.ndarray,
    *,
    per_channel: bool,
    batch_size: int = 32,
    method: str = "MinMax",
    reduce_range: bool = False,
) -> float:
    """Pre-process, then ``quantize_static`` (QDQ, U8 activations, S8 weights); wall seconds.

    ``reduce_range`` quantizes weights to 7 bits, ONNX Runtime's documented remedy for the u8s8
    saturation of its int8 kernels on x86 CPUs without VNNI.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared))
        quantize_static(
            str(prepared),
            str(output_path),
            _Reader(input_name, calibration, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
        )
    return time.perf_counter() - start
