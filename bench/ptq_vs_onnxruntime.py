"""W8A8 post-training quantization: qaas against ONNX Runtime's ``quantize_static``, in one run.

What is compared, on one MobileNetV2-style digits CNN (depthwise convs, BN, ReLU6; by default the
bundled ``examples/digits_mobilenetv2.onnx``, which ``examples/make_example.py`` trains with seed
0 on scikit-learn's digits; ``--train`` trains ``MobileNetV2Like`` afresh, seeded, instead):

* qaas ``quantize`` at W8A8 (int8 symmetric weights, uint8 asymmetric activations, min-max
  ranges) with per-tensor and per-channel weights;
* ONNX Runtime ``quantize_static`` (``quant_pre_process`` first, QDQ format, MinMax, QUInt8
  activations, QInt8 weights), per-tensor and per-channel, plus its ``reduce_range`` variant
  (7-bit weights, its documented remedy on CPUs without VNNI);

all calibrated on the same 128 images and evaluated on the same 400 held-out images.

How: every quantized model is run in ONNX Runtime (CPU provider) and compared with the float
model run there: top-1 against the labels, output SQNR (dB) and top-1 agreement with float. The
same Q/DQ graph is also run with ONNX Runtime's graph optimizations off (Q/DQ executed around
float kernels) to show what each quantizer meant, apart from the int8 kernels' arithmetic.
Quantization time is wall time: for qaas every ``quantize`` step but its evaluation (import,
preparation, calibration, export); for ONNX Runtime ``quant_pre_process`` plus
``quantize_static``. Latency is the median wall time of ``InferenceSession.run`` at batch 1 and
batch 64, sessions interleaved round by round, with a stated number of intra-op threads.

qaas stores its signed 8-bit grids as uint8 (zero point + 128) because ONNX Runtime's u8s8
kernels saturate on AVX2 CPUs without VNNI; ONNX Runtime's own QInt8-weight output may lose
accuracy here for that reason. The bench measures and prints it.

Run: ``python bench/ptq_vs_onnxruntime.py [--quick] [--train] [--threads N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from bench._common import (  # noqa: E402
    MEASUREMENT_STEPS,
    cpu_summary,
    fidelity,
    kernel_summary,
    latency_ms,
    optimized_ops,
    ort_session,
    print_table,
    ratio,
    run_logits,
)
from bench.peers.onnxruntime_static import quantize_static_qdq  # noqa: E402
from qaas_engine import QuantSpec, __version__, import_model, load_npz, model_inputs  # noqa: E402
from qaas_engine import quantize as qaas_quantize  # noqa: E402

EXAMPLES = ROOT / "examples"
INPUT = "input"
SEED = 0


@dataclass
class Row:
    """One quantized model: where it is, what it scored and what it cost."""

    name: str
    path: Path
    seconds: float
    metrics: dict[str, float | None] = field(default_factory=dict)
    unoptimized_top1: float | None = None
    unoptimized_sqnr: float | None = None
    simulated_top1: float | None = None
    sim_vs_runtime: float | None = None


def load_model_and_data(
    train: bool, quick: bool, tmp: Path
) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, str]:
    """Float ONNX model, calibration images, eval images and labels, and their source."""
    if not train:
        model_path = EXAMPLES / "digits_mobilenetv2.onnx"
        inputs = model_inputs(import_model(model_path).model)
        calib = load_npz(EXAMPLES / "digits_calibration.npz", inputs)
        evaluation = load_npz(EXAMPLES / "digits_evaluation.npz", inputs)
        assert evaluation.labels is not None
        source = "bundled examples/digits_mobilenetv2.onnx (make_example.py, seed 0)"
        return (
            model_path,
            calib.arrays[INPUT],
            evaluation.arrays[INPUT],
            evaluation.labels,
            source,
        )
    from qaas_engine.zoo import (
        DEFAULT_EPOCHS,
        build_model,
        export_onnx,
        load_digits_splits,
        train_classifier,
    )

    splits = load_digits_splits(SEED)
    epochs = 4 if quick else DEFAULT_EPOCHS["MobileNetV2Like"]
    model = build_model("mobilenetv2", seed=SEED)
    start = time.perf_counter()
    train_classifier(model, splits.x_train, splits.y_train, epochs=epochs, seed=SEED)
    seconds = time.perf_counter() - start
    model_path = export_onnx(model, tmp / "mobilenetv2.onnx", input_name=INPUT)
    source = f"MobileNetV2Like trained here ({epochs} epochs, seed {SEED}, {seconds:.1f}s)"
    return model_path, splits.x_calib, splits.x_eval, splits.y_eval, source


def run_ours(
    model_path: Path,
    granularity: str,
    x_calib: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    tmp: Path,
) -> Row:
    from qaas_engine.data import validate_arrays

    inputs = model_inputs(import_model(model_path).model)
    calibration = validate_arrays({INPUT: x_calib}, inputs, role="calibration", source="bench")
    evaluation = validate_arrays(
        {INPUT: x_eval, "labels": y_eval}, inputs, role="evaluation", source="bench"
    )
    spec = QuantSpec(weight_bits=8, activation_bits=8, weight_granularity=granularity)
    result = qaas_quantize(model_path, spec, calibration=calibration, evaluation=evaluation)
    report = result.report
    seconds = sum(s["seconds"] for s in report["steps"] if s["name"] not in MEASUREMENT_STEPS)
    path = tmp / f"qaas_{granularity}.onnx"
    path.write_bytes(result.quantized_model.SerializeToString())
    metrics = report["metrics"]
    return Row(
        name=f"qaas {granularity}",
        path=path,
        seconds=seconds,
        simulated_top1=metrics["simulated"]["top1"],
        sim_vs_runtime=metrics["simulation_vs_onnxruntime"]["top1_agreement"],
    )


def run_peer(
    model_path: Path, per_channel: bool, reduce_range: bool, x_calib: np.ndarray, tmp: Path
) -> Row:
    granularity = "per-channel" if per_channel else "per-tensor"
    suffix = " reduce_range" if reduce_range else ""
    path = tmp / f"ort_{granularity}{'_rr' if reduce_range else ''}.onnx"
    seconds = quantize_static_qdq(
        model_path, path, INPUT, x_calib, per_channel=per_channel, reduce_range=reduce_range
    )
    return Row(name=f"ORT {granularity}{suffix}", path=path, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer latency repeats")
    parser.add_argument("--train", action="store_true", help="train MobileNetV2Like afresh")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()

    print("PTQ W8A8: qaas vs ONNX Runtime quantize_static (QDQ, MinMax)")
    print(f"CPU: {cpu_summary()}")
    print(f"versions: qaas {__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"threads: ORT intra-op {args.threads}, inter-op 1; torch {args.threads}")

    with tempfile.TemporaryDirectory(prefix="qaas-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_path, x_calib, x_eval, y_eval, source = load_model_and_data(
            args.train, args.quick, tmp
        )
        print(f"model: {source}")
        print(f"data: {len(x_calib)} calibration images, {len(x_eval)} evaluation images")

        reference = run_logits(ort_session(model_path, threads=args.threads), x_eval)
        float_metrics = fidelity(reference, reference, y_eval)

        # One untimed run of each tool first, so one-off imports and lazy initialization
        # (onnxruntime.quantization's modules, torch's first kernels) are not counted.
        run_ours(model_path, "per-channel", x_calib, x_eval, y_eval, tmp)
        run_peer(model_path, True, False, x_calib, tmp)

        rows: list[Row] = []
        for granularity in ("per-tensor", "per-channel"):
            print(f"... qaas {granularity}", flush=True)
            rows.append(run_ours(model_path, granularity, x_calib, x_eval, y_eval, tmp))
        for reduce_range in (False, True):
            for per_channel in (False, True):
                row = run_peer(model_path, per_channel, reduce_range, x_calib, tmp)
                print(f"... {row.name}", flush=True)
                rows.append(row)

        for row in rows:
            session = ort_session(row.path, threads=args.threads)
            row.metrics = fidelity(reference, run_logits(session, x_eval), y_eval)
            plain = ort_session(row.path, threads=args.threads, optimize=False)
            unoptimized = fidelity(reference, run_logits(plain, x_eval), y_eval)
            row.unoptimized_top1 = unoptimized["top1"]
            row.unoptimized_sqnr = unoptimized["sqnr_db"]

        float_top1 = float_metrics["top1"]
        assert float_top1 is not None
        table = [
            ["float (ORT)", float_top1, 0.0, None, 1.0, None, None, float_top1, None, None],
        ]
        for row in rows:
            top1 = row.metrics["top1"]
            assert top1 is not None
            table.append(
                [
                    row.name,
                    top1,
                    round(100 * (top1 - float_top1), 2),
                    row.metrics["sqnr_db"],
                    row.metrics["agreement"],
                    row.simulated_top1,
                    row.sim_vs_runtime,
                    row.unoptimized_top1,
                    row.unoptimized_sqnr,
                    row.seconds,
                ]
            )
        print_table(
            f"Accuracy and fidelity, W8A8, run in ONNX Runtime {ort.__version__} CPU "
            f"({len(y_eval)} eval images)",
            [
                "method",
                "top-1",
                "d pts",
                "SQNR dB",
                "agree",
                "sim top-1",
                "sim~ORT",
                "top-1 opt-off",
                "SQNR opt-off",
                "quant s",
            ],
            table,
        )
        print(
            "d pts: top-1 change vs float in points; agree: top-1 agreement with float; "
            "sim~ORT: qaas simulation vs ONNX Runtime top-1 agreement;\n"
            "opt-off: the same graph with ORT graph optimizations off (Q/DQ around float "
            "kernels, no int8 kernels);\nquant s: quantization wall seconds (warm: each tool "
            "ran once untimed first)"
        )

        latency_rows = rows[:4]  # qaas and ORT defaults; reduce_range uses the same kernels
        sessions = {"float": ort_session(model_path, threads=args.threads)}
        sessions.update({r.name: ort_session(r.path, threads=args.threads) for r in latency_rows})
        rounds, calls_b1, calls_b64 = (5, 10, 3) if args.quick else (20, 25, 5)
        b1 = latency_ms(sessions, x_eval[:1], rounds=rounds, calls_per_round=calls_b1)
        x64 = np.ascontiguousarray(np.resize(x_eval, (64, *x_eval.shape[1:])))
        b64 = latency_ms(sessions, x64, rounds=rounds, calls_per_round=calls_b64)
        paths = {"float": model_path, **{r.name: r.path for r in latency_rows}}
        kernels = {name: kernel_summary(optimized_ops(p, tmp)) for name, p in paths.items()}
        print_table(
            f"Inference latency in ONNX Runtime, median ms per run, intra-op threads "
            f"{args.threads} ({rounds * calls_b1} runs at batch 1, {rounds * calls_b64} at "
            "batch 64, interleaved)",
            ["model", "int8 kernels", "batch 1 ms", "x float", "batch 64 ms", "x float"],
            [
                [
                    name,
                    kernels[name],
                    b1[name],
                    ratio(b1[name], b1["float"]),
                    b64[name],
                    ratio(b64[name], b64["float"]),
                ]
                for name in sessions
            ],
        )
        print(
            "int8 kernels: conv/matmul-like ops that ORT's optimized graph runs on integer kernels "
            "(QLinearConv, ...), out of all of them; the rest run Q/DQ around float kernels"
        )

        by_name = {r.name: r for r in rows}
        ratio_rows = []
        for granularity in ("per-tensor", "per-channel"):
            ours, peer = by_name[f"qaas {granularity}"], by_name[f"ORT {granularity}"]
            ratio_rows.append(
                [
                    granularity,
                    ratio(ours.metrics["top1"], peer.metrics["top1"]),
                    ratio(ours.seconds, peer.seconds),
                    ratio(b1[ours.name], b1[peer.name]),
                    ratio(b64[ours.name], b64[peer.name]),
                ]
            )
        print_table(
            "Ratios qaas / ORT quantize_static (default settings, same granularity)",
            ["weights", "top-1", "quant time", "latency b1", "latency b64"],
            ratio_rows,
        )

        print("\nObservations:")
        for row in rows:
            top1, plain = row.metrics["top1"], row.unoptimized_top1
            sqnr, plain_sqnr = row.metrics["sqnr_db"], row.unoptimized_sqnr
            assert top1 is not None and plain is not None
            assert sqnr is not None and plain_sqnr is not None
            if plain - top1 >= 0.005 or plain_sqnr - sqnr >= 3.0:
                print(
                    f"- {row.name}: with ORT's int8 kernels top-1 {top1:.4f} and SQNR "
                    f"{sqnr:.1f} dB; the same Q/DQ graph run in float: {plain:.4f} and "
                    f"{plain_sqnr:.1f} dB. Lost in the runtime's kernels: "
                    f"{100 * (plain - top1):.2f} points, {plain_sqnr - sqnr:.1f} dB "
                    "(u8s8 saturation without VNNI)"
                )
        for name in sessions:
            if name == "float":
                continue
            for label, table_ms in (("batch 1", b1), ("batch 64", b64)):
                factor = table_ms[name] / table_ms["float"]
                if factor > 1.0:
                    print(f"- {name}: int8 {factor:.2f}x SLOWER than float at {label}")
                else:
                    print(f"- {name}: int8 {1 / factor:.2f}x faster than float at {label}")
        print(f"\nbench wall time: {time.perf_counter() - wall_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
