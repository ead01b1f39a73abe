"""pipeline auto and Bayesian Bits: every configuration tried, with accuracy, energy and time,
beside ONNX Runtime's static quantizer and NNCF's accuracy-controlled quantization.

Models: ``DepthwiseReLUNet`` (``qaas_engine.zoo.imbalance``) trained seeded on scikit-learn's
digits; an imbalanced copy (channel ranges spread over 10^U(-d, d) through the ReLUs, function
unchanged); and ``RedundantNet`` (``qaas_engine.zoo.redundant``: an identity layer and dead
head channels added, function unchanged). Calibration: 128 images; validation (decisions): 150;
evaluation (the figures below, never seen by a decision): 400; training (mixed precision, QAT):
1,119.

Scenarios for auto, each with a 1-point target: plain W8A8 (the cheap steps suffice), imbalanced
W8A8 (they do not: equalization is needed), W4A8 (AdaRound is needed), W4A4 with training data
(mixed precision or QAT). Then Bayesian Bits against uniform W8A8 at equal data.

Peers, per scenario: ONNX Runtime ``quantize_static`` (W8A8 per-tensor, MinMax; it has no
target to meet) and, where it installs (``bench/.venvs/nncf``), NNCF's
``quantize_with_accuracy_control`` with the same validation data and target. Energy is our model
(``qaas_engine.reporting.energy``, 45 nm table) for every row; a peer's uniform W8A8 model costs
what our uniform W8A8 costs. Top-1 is always the exported model run in ONNX Runtime.

Run: ``python bench/auto.py [--quick] [--no-nncf]``; ``--real MODEL --min-sqnr DB`` runs auto
with a fidelity target on a real OCR network instead (``bench/auto_real.py``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import cpu_summary, ort_session, print_table, ratio, run_logits  # noqa: E402
from bench.peers.onnxruntime_static import quantize_static_qdq  # noqa: E402
from qaas_engine import QuantSpec, import_model, quantize  # noqa: E402
from qaas_engine.zoo import (  # noqa: E402
    digits_datasets,
    export_onnx,
    load_digits_splits,
    save_npz,
    train_classifier,
)
from qaas_engine.zoo.imbalance import DepthwiseReLUNet, imbalance_channels  # noqa: E402
from qaas_engine.zoo.redundant import RedundantNet  # noqa: E402

SEED = 0
TARGET = 1.0  # top-1 points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the W4A4 scenario")
    parser.add_argument("--no-nncf", action="store_true", help="ONNX Runtime as the only peer")
    parser.add_argument(
        "--real",
        metavar="MODEL",
        help="instead: auto with a fidelity target on a real network (ocr_direction, "
        "ocr_detector, ocr_recognizer; bench/auto_real.py)",
    )
    parser.add_argument("--min-sqnr", type=float, default=30.0, metavar="DB")
    parser.add_argument("--calibration-samples", type=int, default=64, metavar="N")
    parser.add_argument("--evaluation-samples", type=int, default=32, metavar="N")
    args = parser.parse_args(argv)
    if args.real:
        from bench.auto_real import run

        return run(args.real, args.min_sqnr, args.calibration_samples, args.evaluation_samples)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    print(f"pipeline auto, target {TARGET} top-1 point; {cpu_summary()}")
    digits = load_digits_splits(seed=SEED)
    torch.manual_seed(SEED)
    plain = train_classifier(DepthwiseReLUNet(), digits.x_train, digits.y_train, epochs=15)
    imbalanced, mild = copy.deepcopy(plain), copy.deepcopy(plain)
    imbalance_channels(imbalanced, seed=SEED, decades=2.0)
    imbalance_channels(mild, seed=SEED, decades=0.25)
    per_tensor = {"weight_granularity": "per-tensor", "adaround_iterations": 500}
    scenarios = [
        ("plain W8A8", plain, {**per_tensor}, False),
        ("imbalanced W8A8", imbalanced, {**per_tensor}, False),
        ("mild imbalance W4A8", mild, {**per_tensor, "weight_bits": 4}, False),
    ]
    if not args.quick:
        scenarios.append(
            ("W4A4, with training data", plain,
             {**per_tensor, "weight_bits": 4, "activation_bits": 4, "qat_epochs": 10}, True)
        )  # fmt: skip
    nncf = None if args.no_nncf else _nncf_runner()
    summary = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = _npz_files(digits, tmp)
        for name, net, spec, with_training in scenarios:
            path = export_onnx(net, tmp / f"{name.split()[0]}_{len(summary)}.onnx")
            summary.append(_scenario(name, path, spec, with_training, digits, files, tmp, nncf))
        _bayesian_bits(plain, digits, tmp)
    print_table(
        "Summary: qaas auto against the peers (evaluation top-1; seconds to a quantized model: "
        "qaas's whole search, NNCF's accuracy control, ORT's one W8A8 pass)",
        ["scenario", "qaas chose", "qaas top-1", "qaas s", "ORT W8A8 top-1", "ORT s",
         "NNCF W8A8 top-1", "NNCF s", "s qaas/ORT", "s qaas/NNCF"],
        summary,
    )  # fmt: skip
    print(f"\nbench wall time: {time.perf_counter() - wall:.1f}s")
    return 0


def _npz_files(digits, tmp: Path) -> dict[str, Path]:
    files = {
        "calibration": tmp / "calibration.npz",
        "validation": tmp / "validation.npz",
    }
    save_npz(files["calibration"], "input", digits.x_calib)
    save_npz(files["validation"], "input", digits.x_val, digits.y_val)
    return files


def _datasets(imported, digits, training: str | None) -> dict[str, Any]:
    """Engine datasets; ``training`` is "labels", "unlabelled" (distillation) or None."""
    data = digits_datasets(imported.model, digits)
    unlabelled = data.pop("unlabelled")
    data["training"] = {"labels": data["training"], "unlabelled": unlabelled}.get(training)
    return data


def _scenario(name, path, spec, with_training, digits, files, tmp, nncf) -> list[Any]:
    imported = import_model(path)
    data = _datasets(imported, digits, "labels" if with_training else None)
    start = time.perf_counter()
    result = quantize(
        imported, QuantSpec(pipeline=("auto",), max_accuracy_drop=TARGET, **spec), **data
    )
    total = time.perf_counter() - start
    report = result.report
    auto = report["auto"]
    seconds = auto["search_seconds"]  # to the chosen model; the final report's measuring apart
    rows = []
    for row in auto["tried"]:
        if "skipped" in row:
            rows.append([row["name"], None, None, None, None, None, "skipped: " + row["skipped"]])
            continue
        rows.append([
            row["name"] + (" (chosen)" if row["name"] == auto["chosen"] else ""),
            row["accuracy"], row["drop_points"], row["energy_pj"] / 1e3, row["seconds"],
            "yes" if row["on_frontier"] else "", "meets" if row["meets_target"] else "misses",
        ])  # fmt: skip
    float_top1 = report["metrics"]["float"]["top1"]
    top1 = report["metrics"]["onnxruntime"]["top1"]
    print_table(
        f"{name}: configurations tried (validation, {auto['validation']['samples']} images)",
        ["configuration", "val top-1", "drop pts", "energy nJ", "seconds", "frontier", "target"],
        rows,
    )
    print(
        f"-> chose {auto['chosen']} ({'met' if auto['met'] else 'NOT met'}); evaluation top-1 "
        f"{top1:.4f} against float {float_top1:.4f}; search {seconds:.1f}s, {total:.1f}s with "
        "the final report"
    )
    ort_out = tmp / f"ort_{path.stem}.onnx"
    ort_seconds = quantize_static_qdq(path, ort_out, "input", digits.x_calib, per_channel=False)
    ort_top1 = _top1(ort_out, digits)
    nncf_top1 = nncf_seconds = None
    if nncf is not None:
        outcome = nncf(path, files["calibration"], files["validation"], TARGET,
                       tmp / f"nncf_{path.stem}.onnx", 1800)  # fmt: skip
        if outcome.get("ok"):
            nncf_top1, nncf_seconds = (
                _top1(tmp / f"nncf_{path.stem}.onnx", digits),
                outcome["seconds"],
            )
            print(f"   NNCF: {outcome.get('method')} ({outcome.get('nncf_version')})")
        else:
            print(f"   NNCF did not run: {outcome.get('error')}")
    return [
        name, auto["chosen"], top1, seconds, ort_top1, ort_seconds, nncf_top1, nncf_seconds,
        ratio(seconds, ort_seconds), ratio(seconds, nncf_seconds),
    ]  # fmt: skip


def _top1(model: Path, digits) -> float:
    logits = run_logits(ort_session(model), digits.x_eval)
    return float(np.mean(logits.argmax(1) == digits.y_eval))


def _bayesian_bits(plain, digits, tmp: Path) -> None:
    """Uniform W8A8 against Bayesian Bits (distillation, no labels) on two models."""
    rows = []
    for name, net in (("DepthwiseReLUNet", plain), ("RedundantNet", RedundantNet(plain))):
        imported = import_model(export_onnx(net, tmp / f"bb_{name}.onnx"))
        data = _datasets(imported, digits, "unlabelled")
        results = {}
        for label, pipeline in (("uniform W8A8", ()), ("bayesian_bits", ("bayesian_bits",))):
            start = time.perf_counter()
            report = quantize(imported, QuantSpec(pipeline=pipeline), **data).report
            results[label] = (report, time.perf_counter() - start)
        uniform = results["uniform W8A8"][0]
        for label, (report, seconds) in results.items():
            bb = report["step_reports"].get("bayesian_bits")
            widths = "/".join(str(w["bits"]) for w in bb["weights"]) if bb else "8 everywhere"
            pruned = sum(len(w["pruned_channels"]) for w in bb["weights"]) if bb else 0
            rows.append([
                f"{name} {label}", report["metrics"]["onnxruntime"]["top1"],
                report["metrics"]["onnxruntime"]["top1"] - report["metrics"]["float"]["top1"],
                report["energy"]["quantized_pj"] / 1e3,
                ratio(report["energy"]["quantized_pj"], uniform["energy"]["quantized_pj"]),
                widths, pruned, seconds,
            ])  # fmt: skip
    print_table(
        "Bayesian Bits against uniform W8A8 (per-channel; 400 evaluation images; energy model)",
        ["model / method", "top-1", "d vs float", "energy nJ", "x W8A8", "weight bits by layer",
         "pruned ch", "seconds"],
        rows,
    )  # fmt: skip


def _nncf_runner():
    try:
        from bench.peers.nncf_env import run_nncf_accuracy_control
    except ImportError as error:
        print(f"NNCF peer unavailable: {error}")
        return None
    return run_nncf_accuracy_control


if __name__ == "__main__":
    sys.exit(main())
