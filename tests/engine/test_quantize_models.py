"""Whole models through ``quantize``: op coverage on four families, and the W8A8 accuracy bar
against float and against ONNX Runtime's own quantizer, on the bundled trained example."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bench.peers.onnxruntime_static import quantize_static_qdq
from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.zoo import build_model, export_onnx, load_digits_splits, train_classifier

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(seed=0)


def _dataset(imported, x, y=None):
    from qaas_engine.data import validate_arrays

    raw = {"input": x} if y is None else {"input": x, "labels": y}
    return validate_arrays(raw, model_inputs(imported.model), role="test", source="arrays")


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet", "transformer", "silu_hardswish"])
def test_model_family_quantizes_w8a8_and_runs_in_onnx_runtime(name, digits, tmp_path):
    model = train_classifier(build_model(name), digits.x_train, digits.y_train, epochs=4)
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    imported = import_model(path)
    result = quantize(
        imported,
        QuantSpec(),
        calibration=_dataset(imported, digits.x_calib),
        evaluation=_dataset(imported, digits.x_eval[:200], digits.y_eval[:200]),
    )
    metrics = result.report["metrics"]
    assert metrics["onnxruntime"]["sqnr_db"] >= 20, metrics
    assert metrics["simulation_vs_onnxruntime"]["top1_agreement"] >= 0.99, metrics
    ops = {n.op_type for n in result.quantized_model.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_bundled_example_w8a8_per_channel_meets_the_accuracy_bar(tmp_path):
    model_path = EXAMPLES / "digits_mobilenetv2.onnx"
    imported = import_model(model_path)
    inputs = model_inputs(imported.model)
    calibration = load_npz(EXAMPLES / "digits_calibration.npz", inputs)
    evaluation = load_npz(EXAMPLES / "digits_evaluation.npz", inputs)
    result = quantize(imported, QuantSpec(), calibration=calibration, evaluation=evaluation)
    metrics = result.report["metrics"]
    float_top1 = metrics["float"]["top1"]
    assert metrics["simulated"]["top1"] >= float_top1 - 0.005
    assert metrics["onnxruntime"]["top1"] >= float_top1 - 0.005
    assert metrics["simulation_vs_onnxruntime"]["top1_agreement"] >= 0.995

    peer_path = tmp_path / "ort.onnx"
    quantize_static_qdq(
        model_path, peer_path, "input", calibration.arrays["input"], per_channel=True
    )
    session = ort.InferenceSession(str(peer_path), providers=["CPUExecutionProvider"])
    x, labels = evaluation.arrays["input"], evaluation.labels
    peer_top1 = float(np.mean(session.run(None, {"input": x})[0].argmax(1) == labels))
    assert metrics["onnxruntime"]["top1"] >= peer_top1
