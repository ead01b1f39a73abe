"""ONNX Runtime's own post-training quantizer, run the documented way, as a peer to measure."""

from __future__ import annotations

import contextlib
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

    Where ``quant_pre_process`` fails (its symbolic shape inference refuses some exporters'
    graphs, e.g. Paddle2ONNX's), the original model is quantized as it is, as a user would.

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

    model_path = Path(model_path).resolve()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # Its symbolic shape inference leaves sym_shape_infer_temp.onnx in the working folder.
            with contextlib.chdir(tmp):
                quant_pre_process(str(model_path), str(prepared))
        except Exception as error:  # any failure: quantize the original
            print(f"quant_pre_process failed ({type(error).__name__}); original model used")
            prepared = Path(model_path)
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


def main(argv: list[str] | None = None) -> int:
    """Quantize one model from an ``.npz`` of calibration inputs, as its own process.

    ``bench/speed.py`` times this whole process against ``qaas quantize``: start-up, imports,
    pre-processing, calibration and the written model. Prints ``{"seconds": ...}``, the time
    inside ``quantize_static_qdq``. ``--without-torch`` runs it as in an environment holding ONNX
    Runtime alone: its ``onnxruntime.tools`` package, which ``quant_pre_process`` imports, loads
    torch whenever torch is installed (about 1.2 s and 250 MiB on a 2-core machine).
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(description="ONNX Runtime quantize_static, W8A8 QDQ MinMax")
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path, help=".npz with one input array")
    parser.add_argument("output", type=Path)
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--without-torch", action="store_true")
    args = parser.parse_args(argv)
    if args.without_torch:
        import sys

        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]  # find_spec -> None
    with np.load(args.calibration) as data:
        (input_name,) = [key for key in data.files if key != "labels"]
        samples = data[input_name]
    seconds = quantize_static_qdq(
        args.model,
        args.output,
        input_name,
        samples,
        per_channel=args.per_channel,
        batch_size=args.batch_size,
    )
    print(json.dumps({"seconds": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
