"""ONNX Runtime's ``quantize_static`` as its own process, so the bench times all of it (start-up,
imports, pre-processing, calibration, the written model), as it does ``qaas quantize``.

W8A8 QDQ, per-channel weights (S8) and U8 activations, MinMax, on the same calibration samples
as the other tools, fed one sample at a time from an ``.npz`` whose arrays stack whole inputs.
Prints one JSON line: ``{"ok", "seconds", "error"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np


class StackedReader:
    """quantize_static's data reader over samples stacked on a leading axis."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        count = len(next(iter(arrays.values())))
        self.feeds = [{name: np.asarray(a[i]) for name, a in arrays.items()} for i in range(count)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index = 0


def quantize(model: Path, calibration: Path, output: Path, *, reduce_range: bool = False) -> None:
    """``quant_pre_process`` (the original model where it fails, as a user would), then QDQ;
    ``reduce_range``: 7-bit weights, ORT's documented remedy for its u8s8 kernels saturating on
    CPUs without VNNI."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with np.load(calibration) as data:
        arrays = {name: data[name] for name in data.files}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            with contextlib.chdir(tmp):
                quant_pre_process(str(model), str(prepared))
        except Exception:  # any failure: quantize the original
            prepared = model
        quantize_static(
            str(prepared),
            str(output),
            StackedReader(arrays),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=reduce_range,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path, help=".npz: whole inputs stacked on axis 0")
    parser.add_argument("output", type=Path)
    parser.add_argument(
        "--without-torch",
        action="store_true",
        help="as in an environment holding ONNX Runtime alone (quant_pre_process imports torch "
        "wherever it is installed; bench/speed.py's stricter baseline)",
    )
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights")
    args = parser.parse_args()
    if args.without_torch:
        import sys

        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]  # find_spec -> None
    start = time.perf_counter()
    result: dict[str, object] = {"ok": False, "error": ""}
    try:
        quantize(
            args.model.resolve(), args.calibration, args.output, reduce_range=args.reduce_range
        )
        result["ok"] = True
    except Exception as error:
        traceback.print_exc()
        result["error"] = f"{type(error).__name__}: {error}"
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
