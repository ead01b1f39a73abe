"""Data-free quantization: each step preserves the float function, and together they rescue a
network whose per-channel ranges make per-tensor INT8 collapse, with and without data."""

import pytest
import torch
from pydantic import ValidationError

from qaas_engine import QuantSpec, SpecError, import_model, model_inputs, quantize
from qaas_engine.data import validate_arrays
from qaas_engine.pipeline import build_state, run_steps
from qaas_engine.state import Timer
from qaas_engine.zoo import build_model, export_onnx, load_digits_splits
from qaas_engine.zoo.imbalance import imbalance_channels

DFQ = ("bn_fold", "cle", "bias_correction")


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(seed=0)


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    """Untrained BN is the identity; give it statistics so folding and scaling are exercised."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.rand(n, generator=generator) * 1.8 + 0.2)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.3)
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.6 - 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.7 + 0.3)


@pytest.mark.parametrize("name", ["mobilenetv2", "prelu", "resnet"])
def test_fold_equalize_absorb_preserve_the_float_function(name, tmp_path):
    model = build_model(name).eval()
    _randomize_batchnorm(model)
    imported = import_model(export_onnx(model, tmp_path / f"{name}.onnx"))
    state = build_state(imported, QuantSpec(pipeline=("cle", "bias_absorption")), None, None)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    reference = model(x).detach()
    folded = state.executor.run({"input": x})["logits"]
    run_steps(state, "float", Timer())
    equalized = state.executor.run({"input": x})["logits"]
    scale = reference.abs().max()
    assert float((folded - reference).abs().max() / scale) <= 1e-4
    assert float((equalized - reference).abs().max() / scale) <= 1e-4
    cle = state.step_reports["cle"]
    assert cle["equalized"], "no pair was equalized"
    assert all(set(row) >= {"before", "after"} for row in cle["weight_ranges"].values())
    if name == "mobilenetv2":
        assert cle["clips_made_exact"]  # ReLU6 kept exact, not swapped for ReLU
    if name == "resnet":
        assert any("Add" in s["reason"] for s in cle["skipped"])  # residual branch listed


@pytest.fixture(scope="module")
def imbalanced(digits, tmp_path_factory, digits_depthwise_net):
    _, model = digits_depthwise_net()
    x = torch.from_numpy(digits.x_eval[:64])
    before = model(x).detach()
    imbalance_channels(model, seed=0)
    assert float((model(x).detach() - before).abs().max()) < 1e-4  # function unchanged
    path = export_onnx(model, tmp_path_factory.mktemp("dfq") / "imbalanced.onnx")
    imported = import_model(path)
    inputs = model_inputs(imported.model)
    calibration = validate_arrays({"input": digits.x_calib}, inputs, role="c", source="digits")
    evaluation = validate_arrays(
        {"input": digits.x_eval, "labels": digits.y_eval}, inputs, role="e", source="digits"
    )
    return imported, calibration, evaluation


def _top1(imported, pipeline, calibration, evaluation) -> tuple[float, float, dict]:
    spec = QuantSpec(weight_granularity="per-tensor", pipeline=pipeline)
    result = quantize(imported, spec, calibration=calibration, evaluation=evaluation)
    metrics = result.report["metrics"]
    return metrics["float"]["top1"], metrics["onnxruntime"]["top1"], result.report


def test_imbalanced_network_collapses_naively_and_dfq_recovers(imbalanced):
    imported, calibration, evaluation = imbalanced
    float_top1, naive, _ = _top1(imported, (), calibration, evaluation)
    assert float_top1 - naive >= 0.20
    _, recovered, report = _top1(imported, DFQ, calibration, evaluation)
    assert recovered >= float_top1 - 0.01
    correction = report["step_reports"]["bias_correction"]
    assert correction["mode"] == "empirical"
    before = sum(sum(row["error_before"]) for row in correction["layers"])
    after = sum(sum(row["error_after"]) for row in correction["layers"])
    assert after < before


def test_data_free_mode_needs_only_the_model(imbalanced):
    imported, _, evaluation = imbalanced
    float_top1, top1, report = _top1(imported, DFQ, None, evaluation)
    assert top1 >= float_top1 - 0.02
    assert report["metrics"]["dataset"] == "evaluation"
    assert report["step_reports"]["bias_correction"]["mode"] == "analytical"
    assert report["quantizers"]["activations"] > 0


def test_data_free_without_batchnorm_asks_for_data(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    imported = import_model(export_onnx(model, tmp_path / "linear.onnx"))
    with pytest.raises(SpecError, match="calibration"):
        quantize(imported, QuantSpec(pipeline=DFQ))


def test_bias_absorption_runs_in_the_chain(imbalanced):
    imported, calibration, evaluation = imbalanced
    pipeline = ("bn_fold", "cle", "bias_absorption", "bias_correction")
    float_top1, top1, report = _top1(imported, pipeline, calibration, evaluation)
    assert top1 >= float_top1 - 0.01
    assert "absorbed" in report["step_reports"]["bias_absorption"]


def test_cle_after_a_quantized_step_is_refused():
    # The spec itself refuses the order (from the step registry), before any model is read.
    with pytest.raises(ValidationError, match="must come before"):
        QuantSpec(pipeline=("bias_correction", "cle"))
