"""Data-free quantization on an imbalanced depthwise net: qaas against AIMET and ONNX Runtime.

The model: ``DepthwiseReLUNet`` from ``qaas_engine.zoo.imbalance`` (stem, expand -> depthwise ->
project with a residual add, strided depthwise, 1x1, GAP, Linear), trained seeded on
scikit-learn's digits, then made imbalanced by ``imbalance_channels``: every channel through a
ReLU scaled by 10^U(-2, 2) and the next layer divided by the same factor, so the float function
is unchanged while per-tensor weight and activation ranges are not.

Compared, all per-tensor W8A8 (int8 symmetric weights, 8-bit activations, min-max ranges), on the
same 128 calibration images and the same 400 evaluation images:

* float, and qaas naive (no pipeline);
* qaas ``bn_fold,cle,bias_correction`` with calibration data (empirical bias correction);
* qaas data-free: the same pipeline with no calibration data at all (activation ranges from BN
  statistics, analytical bias correction; the evaluation set only measures);
* AIMET (aimet-torch 2.42, in its own venv ``bench/.venvs/aimet``, created on first use):
  ``prepare_model``, ``equalize_model`` (BN fold, cross-layer scaling, high-bias fold), then
  ``QuantizationSimModel`` with its ``default_config.json`` named explicitly (per-tensor) and
  ``compute_encodings`` on the calibration images; aimet-torch 2.42 has no bias correction, and a
  quantsim-only AIMET row is shown for reference;
* ONNX Runtime ``quantize_static`` (QDQ, MinMax), per-tensor and per-channel.

Top-1: qaas is measured on its exported QDQ model run in ONNX Runtime (its simulation's figure
beside it), ONNX Runtime's output likewise in ONNX Runtime, AIMET's in its own torch simulation.
Wall time: qaas every ``quantize`` step except evaluation (import, preparation, pipeline,
calibration, export); AIMET from the float torch model to computed encodings (its process start
and ``import aimet_torch`` shown apart); ONNX Runtime ``quant_pre_process`` plus
``quantize_static``. torch runs on the same number of threads in both processes.

Run: ``python bench/dfq_vs_peers.py [--quick] [--threads N] [--no-aimet]``. If AIMET cannot be
installed or run, the bench says why and compares with ONNX Runtime only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from bench._common import (  # noqa: E402
    MEASUREMENT_STEPS,
    cpu_summary,
    ort_session,
    print_table,
    ratio,
    run_logits,
)
from bench.peers.aimet_env import VENV, run_aimet_script  # noqa: E402
from bench.peers.onnxruntime_static import quantize_static_qdq  # noqa: E402
from qaas_engine import Dataset, QuantSpec, __version__, import_model, model_inputs  # noqa: E402
from qaas_engine import quantize as qaas_quantize  # noqa: E402
from qaas_engine.data import validate_arrays  # noqa: E402
from qaas_engine.zoo import export_onnx, load_digits_splits, train_classifier  # noqa: E402
from qaas_engine.zoo.imbalance import DepthwiseReLUNet, imbalance_channels  # noqa: E402

SEED = 0
EPOCHS = 15
DFQ = ("bn_fold", "cle", "bias_correction")
AIMET_SCRIPT = ROOT / "bench" / "peers" / "aimet_dfq.py"
AIMET_TIMEOUT_S = 1200


@dataclass
class Result:
    """One method's row: deployed/evaluated top-1, a reference figure, and its wall time."""

    method: str
    weights: str
    calibration: str
    top1: float | None
    reference_top1: float | None
    measured_in: str
    seconds: float | None


def build_model(tmp: Path) -> tuple[DepthwiseReLUNet, Path, Any, float, float]:
    """Train, imbalance and export; the model, its ONNX path, the splits, train s, max |diff|."""
    splits = load_digits_splits(SEED)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    model = train_classifier(
        DepthwiseReLUNet(), splits.x_train, splits.y_train, epochs=EPOCHS, seed=SEED
    )
    seconds = time.perf_counter() - start
    x = torch.from_numpy(splits.x_eval)
    with torch.no_grad():
        before = model(x)
        imbalance_channels(model, seed=SEED)
        diff = float((model(x) - before).abs().max())
    path = export_onnx(model, tmp / "imbalanced.onnx")
    return model, path, splits, seconds, diff


def run_ours(
    path: Path, pipeline: tuple[str, ...], calibration: Dataset | None, evaluation: Dataset
) -> tuple[dict[str, Any], float]:
    spec = QuantSpec(weight_granularity="per-tensor", pipeline=pipeline)
    report = qaas_quantize(path, spec, calibration=calibration, evaluation=evaluation).report
    seconds = sum(s["seconds"] for s in report["steps"] if s["name"] not in MEASUREMENT_STEPS)
    return report, seconds


def run_aimet(
    model: DepthwiseReLUNet, splits: Any, tmp: Path, threads: int, quick: bool, install: bool
) -> tuple[dict[str, Any] | None, str | None, float]:
    """AIMET's figures (or None and why not), and the AIMET process's wall seconds."""
    options = [f"--threads={threads}", f"--variants={'cle' if quick else 'quantsim,cle'}"]
    return run_aimet_script(
        AIMET_SCRIPT, model, splits, tmp, options, install=install, timeout=AIMET_TIMEOUT_S
    )


def run_ort_peer(
    path: Path, per_channel: bool, splits: Any, tmp: Path, threads: int
) -> tuple[float, float, float]:
    """ONNX Runtime quantize_static: top-1 as run, top-1 with Q/DQ around float kernels, seconds."""
    out = tmp / f"ort_{'pc' if per_channel else 'pt'}.onnx"
    seconds = quantize_static_qdq(path, out, "input", splits.x_calib, per_channel=per_channel)
    y = splits.y_eval
    run = run_logits(ort_session(out, threads=threads), splits.x_eval)
    plain = run_logits(ort_session(out, threads=threads, optimize=False), splits.x_eval)
    return float(np.mean(run.argmax(1) == y)), float(np.mean(plain.argmax(1) == y)), seconds


def fmt_pts(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{100 * (a - b):+.2f} pts"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="AIMET with CLE only (no quantsim-only reference)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch/ORT threads (default 1)")
    parser.add_argument("--no-aimet", action="store_true", help="skip AIMET (ORT peers only)")
    parser.add_argument(
        "--no-install", action="store_true", help="use an existing AIMET venv, never install one"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()

    print("DFQ, per-tensor W8A8 on an imbalanced depthwise net: qaas vs AIMET vs ONNX Runtime")
    print(f"CPU: {cpu_summary()}")
    print(f"versions: qaas {__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"threads: torch {args.threads} (both processes), ORT sessions intra-op {args.threads}")

    with tempfile.TemporaryDirectory(prefix="qaas-dfq-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, path, splits, train_s, diff = build_model(tmp)
        print(
            f"model: DepthwiseReLUNet trained {EPOCHS} epochs (seed {SEED}, {train_s:.1f}s), "
            f"imbalance_channels(seed={SEED}): max |float output change| {diff:.1e}"
        )
        print(f"data: {len(splits.x_calib)} calibration, {len(splits.x_eval)} evaluation images")

        inputs = model_inputs(import_model(path).model)
        calibration = validate_arrays(
            {"input": splits.x_calib}, inputs, role="calibration", source="bench"
        )
        evaluation = validate_arrays(
            {"input": splits.x_eval, "labels": splits.y_eval},
            inputs,
            role="evaluation",
            source="bench",
        )

        results: list[Result] = []
        print("... qaas naive", flush=True)
        naive, naive_s = run_ours(path, (), calibration, evaluation)
        float_top1 = naive["metrics"]["float"]["top1"]
        results.append(Result("float", "-", "-", float_top1, None, "qaas executor", None))

        def ours_row(method: str, calib: str, report: dict[str, Any], s: float) -> Result:
            m = report["metrics"]
            top1, sim = m["onnxruntime"]["top1"], m["simulated"]["top1"]
            return Result(method, "per-tensor", calib, top1, sim, "ORT (sim beside)", s)

        results.append(ours_row("qaas naive", "128 images", naive, naive_s))
        print("... qaas bn_fold,cle,bias_correction", flush=True)
        dfq, dfq_s = run_ours(path, DFQ, calibration, evaluation)
        results.append(ours_row("qaas bn_fold,cle,bias_corr", "128 images", dfq, dfq_s))
        print("... qaas data-free", flush=True)
        free, free_s = run_ours(path, DFQ, None, evaluation)
        results.append(ours_row("qaas data-free (same)", "none", free, free_s))
        bias_mode = dfq["step_reports"]["bias_correction"]["mode"]
        free_mode = free["step_reports"]["bias_correction"]["mode"]

        aimet: dict[str, Any] | None = None
        aimet_error: str | None = "skipped (--no-aimet)"
        aimet_process_s = 0.0
        if not args.no_aimet:
            print("... AIMET (own venv, subprocess)", flush=True)
            aimet, aimet_error, aimet_process_s = run_aimet(
                model, splits, tmp, args.threads, args.quick, not args.no_install
            )
        if aimet is not None:
            labels = {"quantsim": "AIMET quantsim only", "cle": "AIMET equalize_model+qsim"}
            for key in ("quantsim", "cle"):
                variant = aimet["variants"].get(key)
                if variant is None:
                    continue
                results.append(
                    Result(
                        labels[key],
                        variant["weight_granularity"],
                        "128 images",
                        variant["top1"],
                        variant["float_top1_after_transforms"],
                        "AIMET sim (torch)",
                        variant["seconds"],
                    )
                )

        ort_rows: dict[str, tuple[float, float]] = {}
        for per_channel in (False, True):
            granularity = "per-channel" if per_channel else "per-tensor"
            print(f"... ORT quantize_static {granularity}", flush=True)
            top1, plain, seconds = run_ort_peer(path, per_channel, splits, tmp, args.threads)
            ort_rows[granularity] = (top1, seconds)
            results.append(
                Result(
                    f"ORT quantize_static {granularity}",
                    granularity,
                    "128 images",
                    top1,
                    plain,
                    "ORT (Q/DQ-float beside)",
                    seconds,
                )
            )

        print_table(
            f"Top-1 and wall time, W8A8 ({len(splits.y_eval)} eval images)",
            ["method", "weights", "calibration", "top-1", "d pts", "ref top-1", "top-1 from", "s"],
            [
                [
                    r.method,
                    r.weights,
                    r.calibration,
                    r.top1,
                    None if r.top1 is None else round(100 * (r.top1 - float_top1), 2),
                    r.reference_top1,
                    r.measured_in,
                    r.seconds,
                ]
                for r in results
            ],
        )
        print(
            "d pts: change vs float in points. ref top-1: qaas = its simulation; AIMET = the "
            "float model after its transforms (function kept?);\n"
            "ORT = the same Q/DQ graph with graph optimizations off (no int8 kernels). "
            f"Bias correction: {bias_mode} with data, {free_mode} data-free."
        )

        print("\nqaas steps (seconds):")
        for label, report in (("with data", dfq), ("data-free", free)):
            steps = ", ".join(
                f"{step['name']} {step['seconds']:.3f}"
                for step in report["steps"]
                if step["name"] not in MEASUREMENT_STEPS
            )
            print(f"- {label}: {steps}")

        print("\nAIMET:")
        aimet_cle = aimet["variants"].get("cle") if aimet is not None else None
        if aimet is None:
            print(f"- not run: {aimet_error}. Falling back to ONNX Runtime peers only.")
        else:
            versions = aimet["versions"]
            how = (
                f"installed now into {VENV.relative_to(ROOT)} in {aimet['install_seconds']:.0f}s"
                if aimet["installed_now"]
                else f"venv {VENV.relative_to(ROOT)} reused"
            )
            print(f"- aimet-torch {versions['aimet-torch']}, torch {versions['torch']} ({how})")
            print(
                f"- config {Path(aimet['config_file']).name} (per_channel_quantization="
                f"{aimet['config_per_channel_quantization']}), quant_scheme min-max, W8A8; "
                f"float top-1 there {aimet['float_top1']:.4f}"
            )
            startup = aimet.get("startup_seconds")
            print(
                f"- process wall {aimet_process_s:.1f}s, of which interpreter start + torch "
                f"import {'?' if startup is None else f'{startup:.1f}'}s, AIMET imports "
                f"{aimet['import_seconds']:.1f}s; threads {aimet['threads']}"
            )
            for key, variant in aimet["variants"].items():
                steps = ", ".join(f"{k} {v:.2f}s" for k, v in variant["steps"].items())
                print(f"- {key}: {steps}")
            if aimet["bias_correction_available"]:
                print("- this aimet-torch ships a bias-correction module (not used here)")
            else:
                print(
                    "- aimet-torch 2.42 offers no bias correction: its DFQ row is "
                    "equalize_model (BN fold + CLS + high-bias fold) only"
                )

        ours_top1 = dfq["metrics"]["onnxruntime"]["top1"]
        free_top1 = free["metrics"]["onnxruntime"]["top1"]
        aimet_top1 = aimet_cle["top1"] if aimet_cle else None
        aimet_s = aimet_cle["seconds"] if aimet_cle else None
        pt_top1, pt_s = ort_rows["per-tensor"]
        pc_top1, pc_s = ort_rows["per-channel"]
        print_table(
            "Ratios (qaas bn_fold,cle,bias_correction with data unless named)",
            ["comparison", "top-1 ratio", "top-1 diff", "time ratio (ours/peer)"],
            [
                [
                    "vs AIMET equalize_model+qsim",
                    fmt_ratio(ratio(ours_top1, aimet_top1)),
                    fmt_pts(ours_top1, aimet_top1),
                    fmt_ratio(ratio(dfq_s, aimet_s)),
                ],
                [
                    "data-free vs AIMET",
                    fmt_ratio(ratio(free_top1, aimet_top1)),
                    fmt_pts(free_top1, aimet_top1),
                    fmt_ratio(ratio(free_s, aimet_s)),
                ],
                [
                    "vs AIMET incl. its process+import",
                    "",
                    "",
                    fmt_ratio(ratio(dfq_s, aimet_process_s if aimet else None)),
                ],
                [
                    "vs ORT per-tensor",
                    fmt_ratio(ratio(ours_top1, pt_top1)),
                    fmt_pts(ours_top1, pt_top1),
                    fmt_ratio(ratio(dfq_s, pt_s)),
                ],
                [
                    "vs ORT per-channel",
                    fmt_ratio(ratio(ours_top1, pc_top1)),
                    fmt_pts(ours_top1, pc_top1),
                    fmt_ratio(ratio(dfq_s, pc_s)),
                ],
            ],
        )

        naive_top1 = naive["metrics"]["onnxruntime"]["top1"]
        checks = [
            ("naive per-tensor loses >= 20 pts", float_top1 - naive_top1 >= 0.20),
            ("bn_fold,cle,bias_correction within 1 pt of float", ours_top1 >= float_top1 - 0.01),
            ("data-free within 2 pts of float", free_top1 >= float_top1 - 0.02),
        ]
        if aimet_top1 is not None and aimet_s:
            checks.append(("our top-1 >= AIMET's", ours_top1 >= aimet_top1))
            checks.append(("our time < half of AIMET's", dfq_s < 0.5 * aimet_s))
        print("\nTargets (issue 3):")
        for text, ok in checks:
            print(f"- {'MET   ' if ok else 'MISSED'} {text}")
        print(f"\nbench wall time: {time.perf_counter() - wall_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
