"""Quantization-aware training at W4A4: float / PTQ / QAT with fixed ranges / QAT with learned
ranges / QAT by distillation (no labels), with time per epoch, on one seeded digits net.

The model: ``MobileNetV2Like(width=8)`` (``qaas_engine.zoo``), trained seeded on scikit-learn's
digits, the setup of ``tests/engine/test_qat.py``; its 1,119 training images (with or without
labels) train QAT, the 150 validation images pick the best epoch, and the 400 evaluation images
only measure. PTQ is the best post-training pipeline here (``cle,adaround``). QAT runs with the
service's default learning rates. Every top-1 is the exported QDQ model run in ONNX Runtime.

Run: ``python bench/qat.py [--epochs N] [--granularity per-tensor|per-channel] [--threads N]``.
No peer runs here: AIMET's QAT needs a training loop of the user's, which a service does not get.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

import tempfile  # noqa: E402

import torch  # noqa: E402

from bench._common import cpu_summary, print_table  # noqa: E402
from qaas_engine import QuantSpec, import_model, model_inputs, quantize  # noqa: E402
from qaas_engine.data import validate_arrays  # noqa: E402
from qaas_engine.zoo import (  # noqa: E402
    MobileNetV2Like,
    export_onnx,
    load_digits_splits,
    train_classifier,
)

SEED = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="QAT epochs (the test's 8)")
    parser.add_argument("--width", type=int, default=8, help="MobileNetV2Like width")
    parser.add_argument(
        "--granularity", default="per-tensor", choices=["per-tensor", "per-channel"]
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"QAT at W4A4 {args.granularity}, MobileNetV2Like width {args.width}, {args.epochs} "
        f"epochs on {device}; {cpu_summary()}, {args.threads} thread(s)"
    )
    digits = load_digits_splits(seed=SEED)
    torch.manual_seed(SEED)
    model = train_classifier(
        MobileNetV2Like(width=args.width), digits.x_train, digits.y_train, epochs=15
    )
    with tempfile.TemporaryDirectory() as tmp:
        imported = import_model(export_onnx(model, Path(tmp) / "net.onnx"))
    inputs = model_inputs(imported.model)

    def data(x, y=None):
        raw = {"input": x} if y is None else {"input": x, "labels": y}
        return validate_arrays(raw, inputs, role="bench", source="digits")

    calibration, evaluation = data(digits.x_calib), data(digits.x_eval, digits.y_eval)
    labelled, unlabelled = data(digits.x_train, digits.y_train), data(digits.x_train)
    validation = data(digits.x_val, digits.y_val)
    base = {
        "weight_bits": 4,
        "activation_bits": 4,
        "weight_granularity": args.granularity,
        "qat_epochs": args.epochs,
        "seed": SEED,
    }
    runs = [
        ("PTQ nearest", (), None, {}),
        ("PTQ cle,adaround", ("cle", "adaround"), None, {}),
        ("QAT fixed ranges", ("cle", "qat"), labelled, {"qat_learn_ranges": False}),
        ("QAT learned ranges", ("cle", "qat"), labelled, {}),
        ("QAT distilled (no labels)", ("cle", "qat"), unlabelled, {}),
    ]
    rows, float_top1 = [], None
    for name, pipeline, training, extra in runs:
        start = time.perf_counter()
        result = quantize(
            imported, QuantSpec(**base, **extra, pipeline=pipeline), calibration=calibration,
            evaluation=evaluation, training=training, validation=validation,
        )  # fmt: skip
        metrics = result.report["metrics"]
        float_top1 = metrics["float"]["top1"]
        qat = result.report["step_reports"].get("qat")
        per_epoch = None
        if qat:
            epochs = [row["seconds"] for row in qat["curve"][1:]]
            per_epoch = sum(epochs) / len(epochs)
        rows.append([
            name, metrics["onnxruntime"]["top1"], metrics["onnxruntime"]["top1"] - float_top1,
            metrics["simulation_vs_onnxruntime"]["top1_agreement"],
            qat["best_epoch"] if qat else None, per_epoch, time.perf_counter() - start,
        ])  # fmt: skip
    rows.insert(0, ["float", float_top1, 0.0, None, None, None, None])
    print_table(
        "Top-1 (exported model in ONNX Runtime, 400 eval images)",
        ["method", "top-1", "d vs float", "sim~ORT", "best epoch", "s/epoch", "total s"],
        rows,
    )
    by_name = {row[0]: row[1] for row in rows}
    ptq = by_name["PTQ cle,adaround"]
    gained = by_name["QAT learned ranges"] - ptq
    distilled = by_name["QAT distilled (no labels)"] - ptq
    share = distilled / gained if gained > 0 else None
    learned, fixed = by_name["QAT learned ranges"], by_name["QAT fixed ranges"]
    print(
        f"PTQ loses {100 * (float_top1 - ptq):.2f} points; learned-range QAT recovers "
        f"{100 * gained:+.2f}, fixed ranges {100 * (fixed - ptq):+.2f}; "
        f"distillation recovers {'-' if share is None else f'{share:.0%}'} of labelled QAT's gain"
    )
    checks = {
        "PTQ (cle,adaround) loses >= 5 points": float_top1 - ptq >= 0.05,
        "learned-range QAT within 2 points of float": learned >= float_top1 - 0.02,
        "learned ranges beat fixed ranges": learned > fixed,
        "distillation recovers >= 70% of labelled QAT": share is not None and share >= 0.7,
        "sim~ORT top-1 agreement >= 99% (all QAT)": all(
            row[3] >= 0.99 for row in rows if row[0].startswith("QAT")
        ),
    }
    for claim, holds in checks.items():
        print(f"  {'holds ' if holds else 'MISSED'}  {claim}")
    print(f"bench wall time: {time.perf_counter() - wall:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
