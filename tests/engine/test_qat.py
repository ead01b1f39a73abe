"""QAT: training through the simulation improves on post-training quantization, with labels or
by distillation, and the exported QDQ model is the model that was trained."""

import pytest
import torch

from qaas_engine import Cancelled, QuantSpec, SpecError, import_model, model_inputs, quantize
from qaas_engine.data import validate_arrays
from qaas_engine.zoo import export_onnx, load_digits_splits, train_classifier
from qaas_engine.zoo.imbalance import DepthwiseReLUNet

W4A4 = {"weight_bits": 4, "activation_bits": 4, "weight_granularity": "per-tensor"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    digits = load_digits_splits(seed=0)
    torch.manual_seed(0)
    model = train_classifier(DepthwiseReLUNet(), digits.x_train, digits.y_train, epochs=15)
    imported = import_model(export_onnx(model, tmp_path_factory.mktemp("qat") / "net.onnx"))
    inputs = model_inputs(imported.model)

    def data(x, y=None):
        raw = {"input": x} if y is None else {"input": x, "labels": y}
        return validate_arrays(raw, inputs, role="test", source="digits")

    return {
        "model": imported,
        "calibration": data(digits.x_calib),
        "evaluation": data(digits.x_eval, digits.y_eval),
        "training": data(digits.x_train, digits.y_train),
        "unlabelled": data(digits.x_train),
        "validation": data(digits.x_val, digits.y_val),
    }


def _run(setup, pipeline, training=None, **spec):
    result = quantize(
        setup["model"],
        QuantSpec(**W4A4, pipeline=pipeline, **spec),
        calibration=setup["calibration"],
        evaluation=setup["evaluation"],
        training=training,
        validation=setup["validation"],
    )
    return result.report


def test_qat_with_labels_beats_ptq_and_exports_what_it_trained(setup):
    ptq = _run(setup, ())
    qat = _run(setup, ("qat",), setup["training"], qat_epochs=6)
    metrics = qat["metrics"]
    assert metrics["onnxruntime"]["top1"] >= ptq["metrics"]["onnxruntime"]["top1"] + 0.02
    assert metrics["simulation_vs_onnxruntime"]["top1_agreement"] >= 0.99
    report = qat["step_reports"]["qat"]
    assert report["signal"] == "labels" and report["learned_ranges"]
    assert [row["epoch"] for row in report["curve"]] == list(range(7))
    assert all(row["train_loss"] > 0 for row in report["curve"][1:])


def test_distillation_needs_no_labels(setup):
    ptq = _run(setup, ())
    distilled = _run(setup, ("qat",), setup["unlabelled"], qat_epochs=6)
    assert distilled["step_reports"]["qat"]["signal"] == "distillation"
    assert distilled["metrics"]["onnxruntime"]["top1"] > ptq["metrics"]["onnxruntime"]["top1"]
    gap = distilled["metrics"]["simulation_vs_onnxruntime"]["top1_agreement"]
    assert gap >= 0.99


def test_qat_is_deterministic_with_a_seed(setup):
    first = _run(setup, ("qat",), setup["training"], qat_epochs=1, seed=3)
    second = _run(setup, ("qat",), setup["training"], qat_epochs=1, seed=3)
    losses = [
        [r["train_loss"] for r in rep["step_reports"]["qat"]["curve"]] for rep in (first, second)
    ]
    assert losses[0] == losses[1]
    assert first["metrics"]["simulated"] == second["metrics"]["simulated"]


def test_qat_needs_training_data_and_stops_between_epochs(setup):
    with pytest.raises(SpecError, match="--training"):
        _run(setup, ("qat",))
    with pytest.raises(Cancelled):
        quantize(
            setup["model"],
            QuantSpec(**W4A4, pipeline=("qat",), qat_epochs=3),
            calibration=setup["calibration"],
            training=setup["training"],
            should_stop=lambda: True,
        )
