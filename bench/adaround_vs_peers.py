"""AdaRound at 4-bit weights: qaas against AIMET's AdaRound, same model, data and iteration budget.

The model: ``DepthwiseReLUNet`` from ``qaas_engine.zoo.imbalance`` (stem, expand -> depthwise ->
project with a residual add, strided depthwise, 1x1, GAP, Linear), trained seeded on
scikit-learn's digits (15 epochs, seed 0, as in ``tests/engine/test_adaround.py``), NOT
imbalanced. Every method sees the same 128 calibration images and is scored on the same 400
evaluation images. W4A8: 4-bit symmetric weights, 8-bit activations, min-max ranges; per-tensor
weights, and a per-channel row.

Compared, per granularity:

* float; qaas nearest rounding (no pipeline); qaas ``adaround`` with ``adaround_iterations=N``
  (its early stop may use fewer; the per-layer count it used is printed);
* AIMET (aimet-torch 2.42, in its own venv ``bench/.venvs/aimet``, see
  ``bench/peers/aimet_adaround.py``): ``prepare_model`` + ``fold_all_batch_norms``, then
  ``Adaround.apply_adaround`` with ``AdaroundParameters(loader, num_batches,
  default_num_iterations=N)`` on the same images, then ``QuantizationSimModel`` W4A8 with the
  AdaRound encodings set and frozen, ``compute_encodings``; and AIMET nearest (the same without
  AdaRound). Config ``default_config.json`` named explicitly for per-tensor (2.42's default
  ``config_file=None`` is per-channel), ``default_config_per_channel.json`` for per-channel;
  quant scheme min-max (``post_training_tf``, like qaas) unless ``--aimet-scheme tf_enhanced``
  (AIMET's AdaRound default).

Top-1: qaas on its exported QDQ model run in ONNX Runtime (its simulation's figure beside it),
AIMET in its own torch simulation. Wall time: qaas every ``quantize`` step except evaluation
(ONNX import, preparation incl. BN folding, ranges, calibration, AdaRound, export); AIMET from
the float torch model to computed encodings (prepare, BN fold, AdaRound, quantsim, encodings);
AIMET's interpreter start and ``import aimet_torch`` are shown apart. The AdaRound steps alone
are compared too. torch runs on the same number of threads in both processes.

Run: ``python bench/adaround_vs_peers.py [--quick] [--iterations N] [--threads N] [--no-aimet]
[--model depthwise|mobilenetv2] [--pipeline cle,adaround] [--aimet-cle]``.

Budget comparison (issue 16), per-tensor W4A8, several seeds in one run: ``--seeds 0,1,2
--model mobilenetv2 --pipeline cle,adaround`` (qaas at 250 iterations unless ``--iterations``).
Per seed it trains the net, runs qaas nearest and qaas AdaRound, AIMET CLE + AdaRound at
``--aimet-time-iterations`` (100: the time reference, always run in this run) and AIMET AdaRound
at ``--aimet-reference-iterations`` (2,000: the accuracy reference, ~400 s a seed on an idle
machine, so kept in ``bench/.cache/adaround_aimet_reference/`` under a hash of the trained
weights, the data and the settings, reused by later runs and marked "(cached)" in the table;
``--no-cache`` reruns it). It prints per-seed rows, medians, ratios and the targets: median
top-1 >= AIMET-2000's, median time <= AIMET-100's.
If AIMET cannot be installed or run, the bench says why and compares qaas AdaRound with qaas
nearest rounding and the gaps published in the AdaRound paper.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
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

from bench._common import MEASUREMENT_STEPS, cpu_summary, print_table, ratio  # noqa: E402
from bench.peers.aimet_env import VENV, run_aimet_script  # noqa: E402
from qaas_engine import Dataset, QuantSpec, __version__, import_model, model_inputs  # noqa: E402
from qaas_engine import quantize as qaas_quantize  # noqa: E402
from qaas_engine.data import validate_arrays  # noqa: E402
from qaas_engine.zoo import build_model as zoo_model  # noqa: E402
from qaas_engine.zoo import export_onnx, load_digits_splits, train_classifier  # noqa: E402
from qaas_engine.zoo.imbalance import DepthwiseReLUNet  # noqa: E402

SEED = 0
EPOCHS = 15
WEIGHT_BITS = 4
DEFAULT_ITERATIONS = 500
QUICK_ITERATIONS = 100
# --seeds: qaas's budget. Measured over seeds 0-4 (T1's net, cle,adaround, per-tensor W4A8): 250
# iterations reached AIMET-2000's top-1 on every seed at about 0.3x AIMET-100's time; 500 and
# 1,000 reached it on the median too, but at 0.8x and up to 1.16x on single seeds.
BUDGET_ITERATIONS = 250
AIMET_SCRIPT = ROOT / "bench" / "peers" / "aimet_adaround.py"
AIMET_TIMEOUT_S = 3600
REFERENCE_CACHE = ROOT / "bench" / ".cache" / "adaround_aimet_reference"
GRANULARITIES = {"per-tensor": "pt", "per-channel": "pc"}
# Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization": ResNet18 on
# ImageNet with 4-bit weights, as quoted in issue 4. Published figures, never measured here.
PAPER = {"model": "ResNet18 (ImageNet), W4", "float": 0.6968, "nearest": 0.2399, "adaround": 0.6860}
TIME_TARGET = 1 / 3


@dataclass
class Row:
    method: str
    weights: str
    top1: float | None
    reference_top1: float | None
    measured_in: str
    seconds: float | None
    adaround_seconds: float | None
    flipped: float | None


def build_model(
    tmp: Path, seed: int = SEED, name: str = "depthwise"
) -> tuple[torch.nn.Module, Path, Any, float]:
    """Train and export; the model, its ONNX path, splits, train s.

    ``depthwise``: ``DepthwiseReLUNet``, 15 epochs, as the AdaRound test trains it;
    ``mobilenetv2``: the zoo's ``MobileNetV2Like`` (5 inverted-residual blocks, ReLU6), trained as
    ``examples/make_example.py`` trains the bundled example (T1).
    """
    splits = load_digits_splits(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    if name == "mobilenetv2":
        model = train_classifier(
            zoo_model("mobilenetv2", seed=seed), splits.x_train, splits.y_train, seed=seed
        )
    else:
        model = train_classifier(
            DepthwiseReLUNet(), splits.x_train, splits.y_train, epochs=EPOCHS, seed=seed
        )
    seconds = time.perf_counter() - start
    return model, export_onnx(model, tmp / "net.onnx"), splits, seconds


def run_ours(
    path: Path,
    granularity: str,
    pipeline: tuple[str, ...],
    iterations: int,
    calibration: Dataset,
    evaluation: Dataset,
) -> tuple[dict[str, Any], float]:
    spec = QuantSpec(
        weight_bits=WEIGHT_BITS,
        weight_granularity=granularity,
        pipeline=pipeline,
        adaround_iterations=iterations,
    )
    result = qaas_quantize(path, spec, calibration=calibration, evaluation=evaluation)
    report = result.report
    seconds = sum(s["seconds"] for s in report["steps"] if s["name"] not in MEASUREMENT_STEPS)
    # Weight scales from the AIMET-format encodings, to compare grids with AIMET's.
    report["bench_weight_scales"] = {
        e["name"]: e["scale"] for e in result.encodings["param_encodings"]
    }
    return report, seconds


def pipeline_of(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(p.strip() for p in args.pipeline.split(",") if p.strip())


def step_seconds(report: dict[str, Any], name: str) -> float | None:
    return next((s["seconds"] for s in report["steps"] if s["name"] == name), None)


def run_aimet(
    model: torch.nn.Module,
    splits: Any,
    tmp: Path,
    args: argparse.Namespace,
    granularities: list[str],
) -> tuple[dict[str, Any] | None, str | None, float]:
    """AIMET's figures (or None and why not), and the AIMET process's wall seconds."""
    # Nearest first in each granularity: the first variant pays AIMET's one-off warm-up costs.
    variants = [f"{r}-{GRANULARITIES[g]}" for g in granularities for r in ("nearest", "adaround")]
    options = [
        f"--threads={args.threads}",
        f"--bits={WEIGHT_BITS}",
        f"--iterations={args.iterations}",
        f"--scheme={args.aimet_scheme}",
        f"--variants={','.join(variants)}",
        f"--seed={args.seed}",
        f"--model={args.model}",
        *(["--cle"] if args.aimet_cle else []),
    ]
    result, error, seconds = run_aimet_script(
        AIMET_SCRIPT, model, splits, tmp, options,
        install=not args.no_install, timeout=AIMET_TIMEOUT_S,
    )  # fmt: skip
    if result is not None and not result["variants"]:
        errors = "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
        return None, f"every AIMET variant failed: {errors}", seconds
    return result, error, seconds


def layer_key(name: str) -> str:
    """'/stem/stem.0/Conv' (qaas, from the ONNX export) -> 'stem.0' (AIMET's module name)."""
    parts = [p for p in name.split("/") if p]
    return parts[-2] if len(parts) >= 2 else name


def scale_ratio(ours: list[float] | None, theirs: list[float] | None) -> str | None:
    """Mean over channels of qaas's weight scale over AIMET's, or None when either is missing."""
    if not ours or not theirs or len(ours) != len(theirs):
        return None
    return f"{float(np.mean(np.asarray(ours) / np.asarray(theirs))):.3f}"


def mean_flipped(rows: list[dict[str, Any]]) -> float:
    return float(np.mean([r["rounded_away_from_nearest"] for r in rows]))


def fmt_pts(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{100 * (a - b):+.2f} pts"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def fingerprint(model: torch.nn.Module, splits: Any) -> str:
    """Hash of the trained weights and the data: a cached AIMET result is reused only for both."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    for array in (splits.x_calib, splits.x_eval, splits.y_eval):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def aimet_adaround_pt(
    model: torch.nn.Module,
    splits: Any,
    tmp: Path,
    args: argparse.Namespace,
    *,
    iterations: int,
    cle: bool,
    seed: int,
) -> tuple[dict[str, Any] | None, str | None, float]:
    """AIMET per-tensor nearest then AdaRound at ``iterations`` (nearest pays the warm-up)."""
    if args.no_aimet:
        return None, "skipped (--no-aimet)", 0.0
    options = [
        f"--threads={args.threads}",
        f"--bits={WEIGHT_BITS}",
        f"--iterations={iterations}",
        f"--scheme={args.aimet_scheme}",
        "--variants=nearest-pt,adaround-pt",
        f"--seed={seed}",
        f"--model={args.model}",
        *(["--cle"] if cle else []),
    ]
    result, error, seconds = run_aimet_script(
        AIMET_SCRIPT, model, splits, tmp, options,
        install=not args.no_install, timeout=AIMET_TIMEOUT_S,
    )  # fmt: skip
    if result is not None and "adaround-pt" not in result["variants"]:
        return None, f"AIMET AdaRound failed: {result['errors']}", seconds
    return result, error, seconds


def cached_reference(
    model: torch.nn.Module, splits: Any, tmp: Path, args: argparse.Namespace, seed: int
) -> tuple[dict[str, Any] | None, str | None, float, bool]:
    """AIMET's accuracy reference for ``seed``: from bench/.cache when weights, data and
    settings match (its figures were measured in an earlier run), else run now and cache it."""
    key = (
        f"{args.model}-seed{seed}-it{args.aimet_reference_iterations}-{args.aimet_scheme}-"
        f"{'cle' if args.aimet_cle else 'nocle'}-threads{args.threads}-{fingerprint(model, splits)}"
    )
    path = REFERENCE_CACHE / f"{key}.json"
    if args.no_aimet:
        return None, "skipped (--no-aimet)", 0.0, False
    if path.is_file() and not args.no_cache:
        cached = json.loads(path.read_text())
        return cached["result"], None, cached["process_seconds"], True
    result, error, seconds = aimet_adaround_pt(
        model, splits, tmp, args,
        iterations=args.aimet_reference_iterations, cle=args.aimet_cle, seed=seed,
    )  # fmt: skip
    if result is not None:
        REFERENCE_CACHE.mkdir(parents=True, exist_ok=True)
        record = {"result": result, "process_seconds": seconds, "measured_at": time.time()}
        path.write_text(json.dumps(record, indent=2))
    return result, error, seconds, False


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def run_budget(args: argparse.Namespace) -> int:
    """qaas AdaRound vs AIMET's accuracy reference and AIMET's quick CLE + AdaRound, per seed."""
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if args.iterations is None:
        args.iterations = BUDGET_ITERATIONS
    if args.iterations < 10:
        raise SystemExit("--iterations must be at least 10 (QuantSpec's floor)")
    torch.set_num_threads(args.threads)
    pipeline = pipeline_of(args)
    wall_start = time.perf_counter()
    print(
        f"AdaRound budget comparison, W{WEIGHT_BITS}A8 per-tensor, {args.model}, seeds {seeds}: "
        f"qaas --pipeline {','.join(pipeline)} ({args.iterations} iterations per layer, early "
        f"stop) vs AIMET AdaRound at {args.aimet_reference_iterations} iterations "
        f"({'with' if args.aimet_cle else 'without'} CLE; accuracy reference) and AIMET CLE + "
        f"AdaRound at {args.aimet_time_iterations} iterations (time reference)"
    )
    print(f"CPU: {cpu_summary()}; {load_note()} at start")
    print(f"versions: qaas {__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"threads: torch {args.threads} (both processes); AdaRound mini-batches of 32, both")
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="qaas-adaround-bench-") as tmp_name:
            tmp = Path(tmp_name)
            model, path, splits, _ = build_model(tmp, seed, args.model)
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
            print(f"... seed {seed}: qaas nearest and {','.join(pipeline)}", flush=True)
            near, _ = run_ours(path, "per-tensor", (), args.iterations, calibration, evaluation)
            ours, ours_s = run_ours(
                path, "per-tensor", pipeline, args.iterations, calibration, evaluation
            )
            print(f"... seed {seed}: AIMET CLE + AdaRound {args.aimet_time_iterations}", flush=True)
            quick, quick_error, quick_process_s = aimet_adaround_pt(
                model, splits, tmp, args,
                iterations=args.aimet_time_iterations, cle=True, seed=seed,
            )  # fmt: skip
            print(f"... seed {seed}: AIMET AdaRound {args.aimet_reference_iterations}", flush=True)
            ref, ref_error, ref_process_s, cached = cached_reference(model, splits, tmp, args, seed)
        layers = ours["step_reports"]["adaround"]["layers"]
        quick_v = None if quick is None else quick["variants"]["adaround-pt"]
        ref_v = None if ref is None else ref["variants"]["adaround-pt"]
        rows.append(
            {
                "seed": seed,
                "float": ours["metrics"]["float"]["top1"],
                "nearest": near["metrics"]["onnxruntime"]["top1"],
                "ours": ours["metrics"]["onnxruntime"]["top1"],
                "ours_s": ours_s,
                "ours_step": step_seconds(ours, "adaround"),
                "ours_iterations": sum(layer["iterations"] for layer in layers) / len(layers),
                "ref": None if ref_v is None else ref_v["top1"],
                "ref_s": None if ref_v is None else ref_v["seconds"],
                "ref_cached": cached,
                "ref_error": ref_error,
                "quick": None if quick_v is None else quick_v["top1"],
                "quick_s": None if quick_v is None else quick_v["seconds"],
                "quick_step": None if quick_v is None else quick_v["steps"].get("apply_adaround"),
                "quick_process_s": quick_process_s if quick is not None else None,
                "quick_error": quick_error,
                "ref_process_s": ref_process_s,
            }
        )
        r = rows[-1]
        print(
            f"    seed {seed}: qaas {r['ours']} in {r['ours_s']:.1f}s; AIMET-"
            f"{args.aimet_reference_iterations} {r['ref']}; AIMET-{args.aimet_time_iterations} "
            f"CLE {r['quick']} in {r['quick_s']}s",
            flush=True,
        )
    table = [
        [
            str(r["seed"]),
            r["float"],
            r["nearest"],
            r["ours"],
            r["ours_s"],
            r["ours_step"],
            f"{r['ours_iterations']:.0f}",
            r["ref"],
            None
            if r["ref_s"] is None
            else f"{r['ref_s']:.1f}{' (cached)' if r['ref_cached'] else ''}",
            r["quick"],
            r["quick_s"],
            r["quick_step"],
        ]
        for r in rows
    ]
    keys = ["float", "nearest", "ours", "ours_s", "ours_step", "ours_iterations", "ref", "ref_s"]
    keys += ["quick", "quick_s", "quick_step"]
    medians = {k: median([r[k] for r in rows]) for k in keys}
    table.append(
        ["median"]
        + [
            None
            if medians[k] is None
            else (f"{medians[k]:.0f}" if k == "ours_iterations" else medians[k])
            for k in keys
        ]
    )
    print_table(
        f"Per seed, W{WEIGHT_BITS}A8 per-tensor ({len(splits.y_eval)} eval images; one image = "
        f"{100 / len(splits.y_eval):.2f} pt)",
        [
            "seed",
            "float",
            "qaas nearest",
            "qaas AdaRound",
            "qaas s",
            "qaas step s",
            "qaas it/layer",
            f"AIMET-{args.aimet_reference_iterations}",
            f"AIMET-{args.aimet_reference_iterations} s",
            f"AIMET-{args.aimet_time_iterations} CLE",
            f"AIMET-{args.aimet_time_iterations} s",
            f"AIMET-{args.aimet_time_iterations} step s",
        ],
        table,
    )
    print(
        "top-1: qaas on its exported QDQ model in ONNX Runtime, AIMET in its torch simulation. "
        "qaas s: quantize() less its report\nsteps (evaluation, energy, latency, analysis), in "
        "this process (torch already imported); AIMET s: float model -> computed encodings\n"
        "(prepare, BN fold or equalize_model, apply_adaround, quantsim, compute_encodings), in "
        "its own process. step s: the AdaRound step alone\n(qaas 'adaround'; AIMET "
        "apply_adaround). qaas it/layer: mean iterations used per layer (early stop). (cached): "
        f"AIMET-{args.aimet_reference_iterations}'s\nfigures come from an earlier run's "
        f"{REFERENCE_CACHE.relative_to(ROOT)} (same weights, data and settings), not this run; "
        f"AIMET-{args.aimet_time_iterations} is always run now."
    )
    for r in rows:
        for what in ("ref_error", "quick_error"):
            if r[what]:
                print(f"- seed {r['seed']}: AIMET {what.split('_')[0]} not run: {r[what]}")
    time_ratios = [ratio(r["ours_s"], r["quick_s"]) for r in rows]
    step_ratios = [ratio(r["ours_step"], r["quick_step"]) for r in rows]
    diffs = [None if r["ref"] is None else r["ours"] - r["ref"] for r in rows]
    print_table(
        "Ratios and differences per seed (time ratio < 1 and top-1 diff >= 0 favour qaas)",
        ["seed", f"top-1 - AIMET-{args.aimet_reference_iterations}", "time ratio", "step ratio"],
        [
            [str(r["seed"]), fmt_pts(r["ours"], r["ref"]), fmt_ratio(t), fmt_ratio(st)]
            for r, t, st in zip(rows, time_ratios, step_ratios, strict=True)
        ]
        + [
            [
                "median",
                fmt_pts(median(diffs), 0.0),
                fmt_ratio(median(time_ratios)),
                fmt_ratio(median(step_ratios)),
            ]
        ],
    )
    print(
        f"time ratio: qaas s / AIMET-{args.aimet_time_iterations} CLE s (same seed, same run); "
        f"step ratio: qaas AdaRound step / AIMET apply_adaround. median: of the per-seed values."
    )
    checks: list[tuple[str, bool | None]] = []
    checks.append(
        (
            f"median qaas AdaRound top-1 >= median AIMET-{args.aimet_reference_iterations} top-1 "
            f"over {len(rows)} seeds ({fmt_pts(medians['ours'], medians['ref'])})",
            None
            if medians["ours"] is None or medians["ref"] is None
            else medians["ours"] >= medians["ref"],
        )
    )
    wins = sum(d is not None and d >= 0 for d in diffs)
    checks.append(
        (
            f"qaas >= AIMET-{args.aimet_reference_iterations} on {wins} of {len(rows)} seeds "
            "(majority)",
            wins * 2 > len(rows) if medians["ref"] is not None else None,
        )
    )
    median_time = median(time_ratios)
    checks.append(
        (
            f"median qaas time <= AIMET-{args.aimet_time_iterations} CLE + AdaRound time "
            f"(ratio {fmt_ratio(median_time)})",
            None if median_time is None else median_time <= 1.0,
        )
    )
    slower = sum(t is not None and t > 1.0 for t in time_ratios)
    checks.append(
        (
            f"qaas no slower than AIMET-{args.aimet_time_iterations} on every seed "
            f"({slower} slower)",
            None if median_time is None else slower == 0,
        )
    )
    print("\nTargets (issue 16):")
    for text, ok in checks:
        print(f"- {'N/A   ' if ok is None else 'MET   ' if ok else 'MISSED'} {text}")
    print(f"\n{load_note()} at end")
    print(f"bench wall time: {time.perf_counter() - wall_start:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"per-tensor only, {QUICK_ITERATIONS} iterations per layer unless --iterations",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help=f"AdaRound iterations per layer, both tools (default {DEFAULT_ITERATIONS}; with "
        f"--seeds qaas only, default {BUDGET_ITERATIONS})",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help="data split and training seed: one image is 0.25 pt, so compare over several",
    )
    parser.add_argument("--no-aimet", action="store_true", help="skip AIMET")
    parser.add_argument(
        "--no-install", action="store_true", help="use an existing AIMET venv, never install one"
    )
    parser.add_argument(
        "--aimet-scheme",
        choices=("tf", "tf_enhanced"),
        default="tf",
        help="AIMET quant scheme: tf = min-max like qaas (default); tf_enhanced = AIMET's "
        "AdaRound default",
    )
    parser.add_argument(
        "--model",
        choices=("depthwise", "mobilenetv2"),
        default="depthwise",
        help="depthwise: DepthwiseReLUNet (default); mobilenetv2: the bundled example's "
        "5-block MobileNetV2-style net (T1)",
    )
    parser.add_argument(
        "--pipeline",
        default="adaround",
        help="qaas pipeline of the AdaRound rows, comma-separated (default adaround; "
        "cle,adaround equalizes first)",
    )
    parser.add_argument(
        "--aimet-cle", action="store_true", help="AIMET: equalize_model before AdaRound"
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds: the budget comparison instead of the single-seed tables. "
        "Per seed, per-tensor W4A8: qaas --pipeline at --iterations, AIMET AdaRound at "
        "--aimet-reference-iterations (the accuracy reference, cached per seed and model in "
        "bench/.cache/) and AIMET CLE + AdaRound at --aimet-time-iterations (the time "
        "reference, always run); medians and ratios over the seeds",
    )
    parser.add_argument(
        "--aimet-reference-iterations",
        type=int,
        default=2000,
        help="--seeds: AIMET's iterations per layer for the accuracy reference (default 2000)",
    )
    parser.add_argument(
        "--aimet-time-iterations",
        type=int,
        default=100,
        help="--seeds: AIMET's iterations per layer for the CLE + AdaRound time reference "
        "(default 100)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="--seeds: rerun the AIMET accuracy reference even when a cached result matches",
    )
    args = parser.parse_args(argv)
    if args.seeds is not None:
        return run_budget(args)
    if args.iterations is None:
        args.iterations = QUICK_ITERATIONS if args.quick else DEFAULT_ITERATIONS
    if args.iterations < 10:
        parser.error("--iterations must be at least 10 (QuantSpec's floor)")
    granularities = ["per-tensor"] if args.quick else ["per-tensor", "per-channel"]
    torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()

    print("AdaRound, W4A8 on a depthwise digits net: qaas vs AIMET (same model, data, budget)")
    print(f"CPU: {cpu_summary()}; {load_note()} at start")
    print(
        "timings are single runs on a shared machine (other work runs beside it): expect "
        "noise of tens of percent"
    )
    print(f"versions: qaas {__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(
        f"threads: torch {args.threads} (both processes); AdaRound budget {args.iterations} "
        f"iterations per layer, mini-batches of 32, both tools"
    )

    with tempfile.TemporaryDirectory(prefix="qaas-adaround-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, path, splits, train_s = build_model(tmp, args.seed, args.model)
        print(f"model: {type(model).__name__} trained (seed {args.seed}, {train_s:.1f}s)")
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

        ours: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        for granularity in granularities:
            for label, pipeline in (("nearest", ()), ("adaround", pipeline_of(args))):
                print(f"... qaas {label} {granularity}", flush=True)
                ours[granularity, label] = run_ours(
                    path, granularity, pipeline, args.iterations, calibration, evaluation
                )
        float_top1 = ours["per-tensor", "nearest"][0]["metrics"]["float"]["top1"]

        aimet: dict[str, Any] | None = None
        aimet_error: str | None = "skipped (--no-aimet)"
        aimet_process_s = 0.0
        if not args.no_aimet:
            print("... AIMET (own venv, subprocess)", flush=True)
            aimet, aimet_error, aimet_process_s = run_aimet(model, splits, tmp, args, granularities)

        rows = [Row("float", "-", float_top1, None, "qaas executor", None, None, None)]
        for granularity in granularities:
            for label in ("nearest", "adaround"):
                report, seconds = ours[granularity, label]
                metrics = report["metrics"]
                layers = report["step_reports"].get("adaround", {}).get("layers")
                rows.append(
                    Row(
                        f"qaas {label}",
                        granularity,
                        metrics["onnxruntime"]["top1"],
                        metrics["simulated"]["top1"],
                        "ORT (sim beside)",
                        seconds,
                        step_seconds(report, "adaround"),
                        mean_flipped(layers) if layers else None,
                    )
                )
            if aimet is None:
                continue
            for label in ("nearest", "adaround"):
                variant = aimet["variants"].get(f"{label}-{GRANULARITIES[granularity]}")
                if variant is None:
                    continue
                flips = list(variant["rounded_away_from_nearest"].values())
                rows.append(
                    Row(
                        f"AIMET {label}",
                        variant["weight_granularity"],
                        variant["top1"],
                        None,
                        "AIMET sim (torch)",
                        variant["seconds"],
                        variant["steps"].get("apply_adaround"),
                        float(np.mean(flips)) if flips else None,
                    )
                )

        print_table(
            f"Top-1 and wall time, W{WEIGHT_BITS}A8, {args.iterations} AdaRound iterations per "
            f"layer ({len(splits.y_eval)} eval images)",
            [
                "method",
                "weights",
                "top-1",
                "d pts",
                "sim top-1",
                "top-1 from",
                "total s",
                "AdaRound s",
                "flipped",
            ],
            [
                [
                    r.method,
                    r.weights,
                    r.top1,
                    None if r.top1 is None else f"{100 * (r.top1 - float_top1):+.2f}",
                    r.reference_top1,
                    r.measured_in,
                    r.seconds,
                    r.adaround_seconds,
                    r.flipped,
                ]
                for r in rows
            ],
        )
        print(
            "d pts: change vs float in points. total s: qaas quantize() less evaluation; AIMET "
            "float model -> computed encodings.\nAdaRound s: the AdaRound step alone (qaas "
            "'adaround' step; AIMET apply_adaround). flipped: mean over layers of the share of "
            "weights\nrounded away from nearest (AIMET: measured under its frozen encodings)."
        )

        print(
            "\nqaas AdaRound per layer (iterations used of the budget, by the early stop; "
            "gradient: how the step is computed,\nconv = torch's kernels + torch.nn.grad, dense = "
            "matrix products, autograd = the executor's op through autograd):"
        )
        aimet_flips: dict[str, dict[str, float]] = {}
        aimet_scales: dict[str, dict[str, list[float]]] = {}
        if aimet is not None:
            for granularity in granularities:
                variant = aimet["variants"].get(f"adaround-{GRANULARITIES[granularity]}")
                if variant is not None:
                    aimet_flips[granularity] = variant["rounded_away_from_nearest"]
                    aimet_scales[granularity] = variant["weight_scales"]
        for granularity in granularities:
            report = ours[granularity, "adaround"][0]
            layers = report["step_reports"]["adaround"]["layers"]
            our_scales = report["bench_weight_scales"]
            print_table(
                f"{granularity}",
                [
                    "layer",
                    "gradient",
                    "iterations",
                    "s",
                    "flipped",
                    "AIMET flipped",
                    "mse nearest",
                    "mse adaround",
                    "grid qaas/AIMET",
                ],
                [
                    [
                        layer["layer"],
                        layer.get("gradient", "-"),
                        f"{layer['iterations']}/{args.iterations}",
                        layer["seconds"],
                        layer["rounded_away_from_nearest"],
                        aimet_flips.get(granularity, {}).get(layer_key(layer["layer"])),
                        f"{layer['reconstruction_mse_nearest']:.3e}",
                        f"{layer['reconstruction_mse_adaround']:.3e}",
                        scale_ratio(
                            our_scales.get(layer["weight"]),
                            aimet_scales.get(granularity, {}).get(layer_key(layer["layer"])),
                        ),
                    ]
                    for layer in layers
                ],
            )
            if aimet_scales.get(granularity):
                print(
                    "grid qaas/AIMET: qaas weight scale over AIMET's for the same layer (mean "
                    "over channels); 1.000 = the same 4-bit grid.\nBoth are symmetric min-max on "
                    "[-8, 7]; AIMET 2.42's scale is max(-min(w)/8, max(w)/7) (verified on all "
                    "7 layers here), qaas's max|w|/7,\nso AIMET's grid is up to 8/7 finer where "
                    "the largest-magnitude weight is negative."
                )
            used = [layer["iterations"] for layer in layers]
            print(
                f"iterations used: {sum(used)} of {len(used) * args.iterations} "
                f"({sum(used) / (len(used) * args.iterations):.0%}); "
                f"early-stopped layers: {sum(u < args.iterations for u in used)}/{len(used)}"
            )

        print("\nAIMET:")
        if aimet is None:
            print(f"- not run: {aimet_error}")
        else:
            versions = aimet["versions"]
            how = (
                f"installed now into {VENV.relative_to(ROOT)} in {aimet['install_seconds']:.0f}s"
                if aimet["installed_now"]
                else f"venv {VENV.relative_to(ROOT)} reused"
            )
            print(f"- aimet-torch {versions['aimet-torch']}, torch {versions['torch']} ({how})")
            print(
                f"- quant scheme {aimet['scheme']}, W{aimet['bits']}A8; float top-1 there "
                f"{aimet['float_top1']:.4f}; threads {aimet['threads']}"
            )
            startup = aimet.get("startup_seconds")
            print(
                f"- process wall {aimet_process_s:.1f}s, of which interpreter start + torch "
                f"import {'?' if startup is None else f'{startup:.1f}'}s, AIMET imports "
                f"{aimet['import_seconds']:.1f}s"
            )
            for key, variant in aimet["variants"].items():
                steps = ", ".join(f"{k} {v:.2f}s" for k, v in variant["steps"].items())
                extra = (
                    f"; {variant['num_batches']} batches, {variant['iterations_per_layer']} "
                    f"iterations per layer (no early stop in AIMET)"
                    if variant["num_batches"]
                    else ""
                )
                print(
                    f"- {key} ({variant['config_file']}, {variant['batchnorms_folded']} BN "
                    f"folded): {steps}{extra}"
                )
                for note in variant["notes"]:
                    print(f"  warning from AIMET: {note}")
            for key, error in aimet["errors"].items():
                print(f"- {key} FAILED: {error}")

        checks: list[tuple[str, bool | None]] = []
        pt_near = ours["per-tensor", "nearest"][0]["metrics"]["onnxruntime"]["top1"]
        pt_ada_report, pt_ada_s = ours["per-tensor", "adaround"]
        pt_ada = pt_ada_report["metrics"]["onnxruntime"]["top1"]
        nearest_loss = float_top1 - pt_near
        checks.append(
            (
                "per-tensor W4A8 AdaRound within 2 pts of float where nearest loses >= 5 pts"
                + (
                    ""
                    if nearest_loss >= 0.05
                    else f" (nearest loses {100 * nearest_loss:.2f} pts on this model; "
                    "tests/engine/test_adaround.py checks it on an imbalanced one)"
                ),
                pt_ada >= float_top1 - 0.02 if nearest_loss >= 0.05 else None,
            )
        )
        if "per-channel" in granularities:
            pc_near = ours["per-channel", "nearest"][0]["metrics"]["onnxruntime"]["top1"]
            pc_ada = ours["per-channel", "adaround"][0]["metrics"]["onnxruntime"]["top1"]
            checks.append(("per-channel W4A8 AdaRound >= nearest", pc_ada >= pc_near))

        if aimet is not None:
            ratio_rows = []
            for granularity in granularities:
                code = GRANULARITIES[granularity]
                report, seconds = ours[granularity, "adaround"]
                ours_top1 = report["metrics"]["onnxruntime"]["top1"]
                ours_step = step_seconds(report, "adaround")
                near_report = ours[granularity, "nearest"][0]
                ours_near = near_report["metrics"]["onnxruntime"]["top1"]
                peer = aimet["variants"].get(f"adaround-{code}")
                peer_near = aimet["variants"].get(f"nearest-{code}")
                if peer is None:
                    continue
                peer_top1, peer_s = peer["top1"], peer["seconds"]
                peer_step = peer["steps"].get("apply_adaround")
                ratio_rows.append(
                    [
                        f"AdaRound {granularity}",
                        fmt_ratio(ratio(ours_top1, peer_top1)),
                        fmt_pts(ours_top1, peer_top1),
                        fmt_ratio(ratio(seconds, peer_s)),
                        fmt_ratio(ratio(ours_step, peer_step)),
                    ]
                )
                if peer_near is not None:
                    ratio_rows.append(
                        [
                            f"nearest {granularity}",
                            fmt_ratio(ratio(ours_near, peer_near["top1"])),
                            fmt_pts(ours_near, peer_near["top1"]),
                            fmt_ratio(ratio(ours[granularity, "nearest"][1], peer_near["seconds"])),
                            "",
                        ]
                    )
                checks.append(
                    (f"{granularity}: our AdaRound top-1 >= AIMET's", ours_top1 >= peer_top1)
                )
                checks.append(
                    (
                        f"{granularity}: our AdaRound total time <= 1/3 of AIMET's",
                        seconds <= TIME_TARGET * peer_s,
                    )
                )
            print_table(
                "Ratios, qaas / AIMET (top-1 ratio > 1 and time ratio < 1 favour qaas)",
                [
                    "comparison",
                    "top-1 ratio",
                    "top-1 diff",
                    "time ratio",
                    "AdaRound-step ratio",
                ],
                ratio_rows,
            )
            ours_all = sum(seconds for _, seconds in ours.values())
            print(
                "time ratio: total s / total s; AdaRound-step ratio: qaas 'adaround' step / AIMET "
                "apply_adaround.\nAll qaas runs above, timed, vs the whole AIMET process (its "
                f"interpreter start and imports included): {ours_all:.1f}s / "
                f"{aimet_process_s:.1f}s = {fmt_ratio(ratio(ours_all, aimet_process_s))}"
            )
        else:
            print("\nFallback: qaas AdaRound against qaas nearest rounding and published figures")
            gap = float_top1 - pt_near
            recovered = None if gap <= 0 else (pt_ada - pt_near) / gap
            paper_recovered = (PAPER["adaround"] - PAPER["nearest"]) / (
                PAPER["float"] - PAPER["nearest"]
            )
            print_table(
                "Share of the nearest-rounding gap recovered by AdaRound (W4)",
                ["source", "float", "nearest", "AdaRound", "recovered"],
                [
                    [
                        f"qaas, measured here (per-tensor, {args.iterations} it)",
                        float_top1,
                        pt_near,
                        pt_ada,
                        "n/a" if recovered is None else f"{recovered:.1%}",
                    ],
                    [
                        f"AdaRound paper, published: {PAPER['model']}",
                        PAPER["float"],
                        PAPER["nearest"],
                        PAPER["adaround"],
                        f"{paper_recovered:.1%}",
                    ],
                ],
            )
            print(
                "The paper's figures are ImageNet results quoted from Nagel et al. 2020, not "
                "measured here; only the recovered share is comparable in kind."
            )

        print("\nTargets (issue 4):")
        for text, ok in checks:
            print(f"- {'N/A   ' if ok is None else 'MET   ' if ok else 'MISSED'} {text}")
        if aimet is None:
            print("- NOT CHECKED (no AIMET figures): top-1 >= AIMET's, time <= 1/3 of AIMET's")
        print(f"\n{load_note()} at end")
        print(f"bench wall time: {time.perf_counter() - wall_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
