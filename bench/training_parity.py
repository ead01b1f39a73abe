"""A/B parity for the training loops: QAT (labels, distillation, early stop at a target) and
Bayesian Bits (labels, distillation) on small seeded digits nets, every report and artifact
reduced to a fingerprint with the wall-clock fields left out.

Run it before a refactor of ``quant/qat.py``, ``quant/bayesian_bits.py`` or
``quant/training.py`` and after it, then compare:

    python bench/training_parity.py --out before.json
    (refactor)
    python bench/training_parity.py --out after.json --compare before.json

Equal fingerprints mean bit-identical curves, choices, weights and encodings (AIMET's
``ab_test`` idea: a rewrite of an algorithm proves it computes the same thing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qaas_engine import QuantSpec, import_model, quantize  # noqa: E402
from qaas_engine.zoo import (  # noqa: E402
    MobileNetV2Like,
    digits_datasets,
    export_onnx,
    load_digits_splits,
    train_classifier,
)
from qaas_engine.zoo.imbalance import DepthwiseReLUNet  # noqa: E402
from qaas_engine.zoo.redundant import RedundantNet  # noqa: E402

# Measured durations differ run to run; everything else in a report must not.
WALL_CLOCK_KEYS = {"seconds", "timings", "latency", "wall_seconds", "total_seconds"}


def _without_wall_clock(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_wall_clock(v)
            for k, v in value.items()
            if k not in WALL_CLOCK_KEYS and not k.endswith("_seconds")
        }
    if isinstance(value, list):
        return [_without_wall_clock(v) for v in value]
    return value


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(result: Any) -> dict[str, Any]:
    """The parts of a result a training loop decides: step reports, metrics, model, encodings."""
    report = _without_wall_clock(result.report)
    return {
        "step_reports": report.get("step_reports"),
        "metrics": report.get("metrics"),
        "energy": report.get("energy"),
        "analysis": report.get("analysis"),
        "model_sha256": _digest(result.quantized_model.SerializeToString()),
        "encodings_sha256": _digest(json.dumps(result.encodings, sort_keys=True).encode()),
    }


def run_all() -> dict[str, Any]:
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    digits = load_digits_splits(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        qat_net = train_classifier(
            MobileNetV2Like(width=8), digits.x_train, digits.y_train, epochs=5
        )
        qat_model = import_model(export_onnx(qat_net, Path(tmp) / "qat.onnx"))
        torch.manual_seed(0)
        base = train_classifier(DepthwiseReLUNet(), digits.x_train, digits.y_train, epochs=5)
        bb_model = import_model(
            export_onnx(RedundantNet(base, dead_channels=8), Path(tmp) / "bb.onnx")
        )
    qat_data = digits_datasets(qat_model.model, digits)
    bb_data = digits_datasets(bb_model.model, digits)
    w4a4 = {"weight_bits": 4, "activation_bits": 4, "weight_granularity": "per-tensor", "seed": 3}
    runs = {
        "qat_labels": (
            qat_model, qat_data, "training", {"pipeline": ("cle", "qat"), "qat_epochs": 3},
        ),
        "qat_distilled": (
            qat_model, qat_data, "unlabelled", {"pipeline": ("qat",), "qat_epochs": 2},
        ),
        "qat_target": (
            qat_model, qat_data, "training",
            {"pipeline": ("qat",), "qat_epochs": 4, "max_accuracy_drop": 5.0},
        ),
        "qat_fixed": (
            qat_model, qat_data, "training",
            {"pipeline": ("qat",), "qat_epochs": 2, "qat_learn_ranges": False},
        ),
        "bb_distilled": (
            bb_model, bb_data, "unlabelled",
            {"pipeline": ("bayesian_bits",), "bayesian_bits_epochs": 3,
             "bayesian_bits_finetune_epochs": 2},
        ),
        "bb_labels_bops": (
            bb_model, bb_data, "training",
            {"pipeline": ("bayesian_bits",), "bayesian_bits_epochs": 2,
             "bayesian_bits_finetune_epochs": 1, "bayesian_bits_cost": "bops"},
        ),
    }  # fmt: skip
    for name, (model, data, training, spec) in runs.items():
        extra = w4a4 if name.startswith("qat") else {"seed": 3}
        result = quantize(
            model, QuantSpec(**{**extra, **spec}), calibration=data["calibration"],
            evaluation=data["evaluation"], training=data[training], validation=data["validation"],
        )  # fmt: skip
        results[name] = fingerprint(result)
        print(f"{name}: done", flush=True)
    return results


def _differences(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            if key not in before or key not in after:
                out.append(f"{path}/{key}: only in {'after' if key in after else 'before'}")
            else:
                out.extend(_differences(before[key], after[key], f"{path}/{key}"))
        if list(before) != list(after) and not out:
            out.append(f"{path}: key order differs")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            d
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for d in _differences(b, a, f"{path}[{i}]")
        ]
    if before != after and not (
        isinstance(before, float)
        and isinstance(after, float)
        and np.isnan(before)
        and np.isnan(after)
    ):
        return [f"{path}: {before!r} != {after!r}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the fingerprints go")
    parser.add_argument("--compare", type=Path, help="fingerprints of an earlier run")
    args = parser.parse_args(argv)
    results = run_all()
    args.out.write_text(json.dumps(results, indent=1, sort_keys=False))
    if args.compare is None:
        return 0
    differences = _differences(
        json.loads(args.compare.read_text()), json.loads(args.out.read_text())
    )
    for line in differences:
        print(line)
    print("bit-identical" if not differences else f"{len(differences)} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
