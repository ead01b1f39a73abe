"""NNCF's accuracy-controlled PTQ on an ONNX model, the documented way; runs in NNCF's venv.

Started by ``bench.peers.nncf_env.run_nncf_accuracy_control`` with ``bench/.venvs/nncf/bin/python``.
That venv has nncf, onnx, onnxruntime and numpy but none of the project, so this file imports
nothing from it.

It is the peer of qaas's ``pipeline: auto``: ``nncf.quantize_with_accuracy_control`` quantizes
(W8A8, NNCF's default preset: ``performance``, symmetric) and then reverts the quantizers that
cost the most until the validation top-1 is within ``--max-drop`` points of the float model's.
Should that entry point be missing or refuse the ONNX backend, plain ``nncf.quantize`` runs
instead and the JSON says so (``method`` and ``fallback``).

Inputs: the float ONNX model; a calibration ``.npz`` keyed by input name; a validation ``.npz``
with the input and ``labels``. Each sample is its own data item (batch of one), so NNCF's
``subset_size``, which counts items, counts samples; by default all calibration samples are used.
The validation function returns top-1 and a 0/1 per sample, so NNCF ranks quantizers by the
metric itself and never calls it once per item.

Output: the quantized ONNX model at ``--output`` and one JSON line on stdout:
``{"ok", "seconds", "method", "nncf_version", "error", ...}``; all other output goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def _json_stdout() -> Any:
    """Keep the real stdout for the JSON line; point fd 1 (NNCF's logs, C prints) at stderr."""
    out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    return out


def _batch_is_dynamic(model: Any, input_name: str) -> bool:
    """Whether the input's first dimension takes any batch size (a symbol or unset)."""
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            return not dims or not dims[0].HasField("dim_value") or dims[0].dim_value <= 0
    return False


class Top1:
    """NNCF's ``validation_fn``: top-1 of an ``onnx.ModelProto`` with onnxruntime.

    One session per model object, kept for the next call: NNCF validates the same candidate
    several times (whole set, ranking subsets), and never edits a model in place (its ONNX
    transformer deep-copies), so the object's identity is a safe key.
    """

    def __init__(self, input_name: str, dynamic_batch: bool, threads: int, batch: int) -> None:
        self.input_name = input_name
        self.batch = batch if dynamic_batch else 1
        self.threads = threads
        self._model: Any = None
        self._session: Any = None

    def session(self, model: Any) -> Any:
        import onnxruntime as ort

        if model is not self._model:
            options = ort.SessionOptions()
            if self.threads > 0:
                options.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            self._model = model
        return self._session

    def __call__(self, model: Any, items: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list]:
        pairs = list(items)
        if not pairs:
            return 0.0, []
        x = np.concatenate([p[0] for p in pairs])
        y = np.asarray([p[1] for p in pairs])
        session = self.session(model)
        predictions = []
        for i in range(0, len(x), self.batch):
            logits = session.run(None, {self.input_name: x[i : i + self.batch]})[0]
            predictions.append(np.asarray(logits).reshape(len(x[i : i + self.batch]), -1))
        correct = (np.concatenate(predictions).argmax(axis=1) == y).astype(np.float32)
        return float(correct.mean()), [float(c) for c in correct]


def _count_quantizers(model: Any) -> int:
    return sum(node.op_type == "QuantizeLinear" for node in model.graph.node)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, quantize, save; the result dict (never raises)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="float ONNX model")
    parser.add_argument("--calibration", type=Path, required=True, help=".npz keyed by input")
    parser.add_argument("--validation", type=Path, required=True, help=".npz: input + labels")
    parser.add_argument("--max-drop", type=float, required=True, help="top-1 points, e.g. 1.0")
    parser.add_argument("--output", type=Path, required=True, help="quantized ONNX model")
    parser.add_argument("--input-name", default=None, help="default: the model's only input")
    parser.add_argument("--labels-key", default="labels")
    parser.add_argument("--subset-size", type=int, default=0, help="0: all calibration samples")
    parser.add_argument("--preset", choices=["performance", "mixed"], default=None)
    parser.add_argument("--plain", action="store_true", help="nncf.quantize, no accuracy control")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    parser.add_argument("--eval-batch", type=int, default=256)
    args = parser.parse_args(argv)

    result: dict[str, Any] = {
        "ok": False,
        "seconds": 0.0,
        "method": "",
        "nncf_version": "",
        "error": "",
        "max_drop_points": args.max_drop,
    }
    try:
        import nncf
        import onnx

        result["nncf_version"] = nncf.__version__
        model = onnx.load(str(args.model))
        names = [i.name for i in model.graph.input]
        initializers = {i.name for i in model.graph.initializer}
        inputs = [n for n in names if n not in initializers]
        input_name = args.input_name or (inputs[0] if len(inputs) == 1 else None)
        if input_name is None:
            raise ValueError(f"model has inputs {inputs}; name one with --input-name")
        with np.load(args.calibration) as data:
            key = input_name if input_name in data.files else data.files[0]
            calibration = np.asarray(data[key], dtype=np.float32)
        with np.load(args.validation) as data:
            key = input_name if input_name in data.files else data.files[0]
            x_val = np.asarray(data[key], dtype=np.float32)
            y_val = np.asarray(data[args.labels_key]).astype(np.int64).reshape(-1)

        top1 = Top1(input_name, _batch_is_dynamic(model, input_name), args.threads, args.eval_batch)
        calibration_items = [calibration[i : i + 1] for i in range(len(calibration))]
        validation_items = [(x_val[i : i + 1], int(y_val[i])) for i in range(len(x_val))]
        calibration_dataset = nncf.Dataset(calibration_items, lambda x: {input_name: x})
        validation_dataset = nncf.Dataset(validation_items, lambda item: {input_name: item[0]})
        subset = args.subset_size or len(calibration_items)
        preset = (
            None if args.preset is None else getattr(nncf.QuantizationPreset, args.preset.upper())
        )
        result["subset_size"] = subset
        result["preset"] = args.preset or "default (performance)"
        # pipeline: auto speaks top-1 points; NNCF's ABSOLUTE max_drop is a metric difference,
        # and this metric is a fraction, so 1.0 point is 0.01.
        max_drop = args.max_drop / 100.0
        result["max_drop_fraction"] = max_drop

        quantized = None
        start = time.perf_counter()
        if not args.plain:
            try:
                quantized = nncf.quantize_with_accuracy_control(
                    model,
                    calibration_dataset,
                    validation_dataset,
                    validation_fn=top1,
                    max_drop=max_drop,
                    drop_type=nncf.DropType.ABSOLUTE,
                    preset=preset,
                    subset_size=subset,
                )
                result["method"] = "quantize_with_accuracy_control"
            except (AttributeError, NotImplementedError, nncf.UnsupportedBackendError) as error:
                result["fallback"] = f"accuracy control unavailable for ONNX: {error!r}"
                start = time.perf_counter()
        if quantized is None:
            quantized = nncf.quantize(model, calibration_dataset, preset=preset, subset_size=subset)
            result["method"] = "quantize"
        result["seconds"] = round(time.perf_counter() - start, 2)

        args.output.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(quantized, str(args.output))
        result["quantize_linear_nodes"] = _count_quantizers(quantized)
        result["float_top1"] = round(top1(model, validation_items)[0], 4)
        result["quantized_top1"] = round(top1(quantized, validation_items)[0], 4)
        result["ok"] = True
    except Exception as error:  # the bench wants a sentence; the traceback goes to stderr
        traceback.print_exc()
        result["error"] = f"{type(error).__name__}: {error}"
    return result


if __name__ == "__main__":
    stdout = _json_stdout()
    outcome = main()
    stdout.write(json.dumps(outcome) + "\n")
    stdout.flush()
    sys.exit(0 if outcome["ok"] else 1)
