"""The onnx wheel's 9 "light" reference networks: qaas against ONNX Runtime's ``quantize_static``.

The files (``onnx/backend/test/data/light/``: AlexNet, DenseNet-121, Inception v1/v2, ResNet-50,
ShuffleNet, SqueezeNet, VGG-19, ZFNet-512) are old model-zoo exports: IR 3, opset 9, weights
listed as graph inputs and built by ``ConstantOfShape`` (every weight is the same number, so
accuracy means nothing here: this bench measures whether each tool returns a quantized model,
how many Conv/Gemm layers it quantized, and how long it took).

Both tools get the same random calibration images (``--samples``, seeded) at W8A8 per-channel,
QDQ format. Wall time: qaas every ``quantize`` step but its evaluation and reporting (import and
its repairs, preparation, calibration, export); ONNX Runtime ``quant_pre_process`` plus
``quantize_static``, on the original file and, where that fails, on the float model qaas's importer
repaired (the same graph, weights as initializers, opset 13). torch and ONNX Runtime use
``--threads`` threads.

Run: ``python bench/light_nets.py [--samples N] [--threads N] [NAME ...]`` (names without the
``light_`` prefix; default all 9).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from bench._common import MEASUREMENT_STEPS, cpu_summary, print_table  # noqa: E402
from bench.peers.onnxruntime_static import quantize_static_qdq  # noqa: E402
from qaas_engine import QuantSpec, import_model, model_inputs  # noqa: E402
from qaas_engine import quantize as qaas_quantize  # noqa: E402
from qaas_engine.data import validate_arrays  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NAMES = [p.stem.removeprefix("light_") for p in sorted(LIGHT.glob("light_*.onnx"))]


def quantized_layers(model: onnx.ModelProto) -> str:
    """'quantized/total' Conv+Gemm layers: those whose weight comes from a DequantizeLinear."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    done = sum(1 for n in layers if len(n.input) > 1 and n.input[1] in dequantized)
    return f"{done}/{len(layers)}"


def run_ours(path: Path, samples: np.ndarray, repaired: Path) -> tuple[float | None, str]:
    """qaas's seconds and quantized layers; writes the importer's repaired float model."""
    try:
        start = time.perf_counter()
        imported = import_model(path)
        import_seconds = time.perf_counter() - start
        repaired.write_bytes(imported.model.SerializeToString())
        inputs = model_inputs(imported.model)
        feed = {inputs[0].name: samples}
        calibration = validate_arrays(feed, inputs, role="calibration", source="bench")
        spec = QuantSpec(weight_bits=8, activation_bits=8, batch_size=len(samples))
        result = qaas_quantize(imported, spec, calibration=calibration)
    except Exception as error:  # a refusal is a result here
        return None, f"refused: {str(error).splitlines()[0][:80]}"
    steps = result.report["steps"]
    seconds = import_seconds + sum(
        s["seconds"] for s in steps if s["name"] not in MEASUREMENT_STEPS
    )
    return seconds, quantized_layers(result.quantized_model)


def run_ort(path: Path, samples: np.ndarray, tmp: Path) -> tuple[float | None, str]:
    model = onnx.load(path)
    initializers = {init.name for init in model.graph.initializer}
    feed = next(i.name for i in model.graph.input if i.name not in initializers)
    out = tmp / f"ort_{path.stem}.onnx"
    try:
        seconds = quantize_static_qdq(path, out, feed, samples, per_channel=True, batch_size=1)
    except Exception as error:
        return None, f"failed: {str(error).splitlines()[0][:50]}"
    return seconds, quantized_layers(onnx.load(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=NAMES, metavar="NAME")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            path = LIGHT / f"light_{name}.onnx"
            samples = rng.standard_normal((args.samples, 3, 224, 224), dtype=np.float32)
            repaired = Path(tmp) / f"repaired_{name}.onnx"
            ours_s, ours_layers = run_ours(path, samples, repaired)
            _, ort_original = run_ort(path, samples, Path(tmp))
            ort_s, ort_layers = (None, "-")
            if repaired.exists():
                ort_s, ort_layers = run_ort(repaired, samples, Path(tmp))
            ratio = f"{ours_s / ort_s:.2f}" if ours_s and ort_s else "-"
            rows.append([name, ours_s, ours_layers, ort_original, ort_s, ort_layers, ratio])
            print(
                f"{name}: qaas {ours_s} s {ours_layers}; ORT {ort_original}; ORT repaired "
                f"{ort_s} s {ort_layers}",
                flush=True,
            )
    print_table(
        f"W8A8 per-channel, {args.samples} random calibration images, {args.threads} thread(s); "
        + cpu_summary(),
        [
            "net",
            "qaas s",
            "qaas layers",
            "ORT on the original",
            "ORT s (repaired)",
            "ORT layers",
            "qaas/ORT time",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
