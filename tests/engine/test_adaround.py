"""AdaRound: learned rounding recovers what rounding to nearest loses at 4, 3 and 2 bits."""

import pytest
import torch

from qaas_engine import Cancelled, QuantSpec, import_model, model_inputs, quantize
from qaas_engine.data import validate_arrays
from qaas_engine.zoo import export_onnx, load_digits_splits, train_classifier
from qaas_engine.zoo.imbalance import DepthwiseReLUNet, imbalance_channels

ITERATIONS = 500  # a test budget; the default is higher


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    digits = load_digits_splits(seed=0)
    torch.manual_seed(0)
    model = train_classifier(DepthwiseReLUNet(), digits.x_train, digits.y_train, epochs=15)
    # A mild per-channel spread (10^U(-0.25, 0.25), function unchanged), like real networks
    # have: enough that rounding to nearest at 4 bits per tensor costs accuracy.
    imbalance_channels(model, seed=0, decades=0.25)
    imported = import_model(export_onnx(model, tmp_path_factory.mktemp("ada") / "net.onnx"))
    inputs = model_inputs(imported.model)
    calibration = validate_arrays({"input": digits.x_calib}, inputs, role="c", source="digits")
    evaluation = validate_arrays(
        {"input": digits.x_eval, "labels": digits.y_eval}, inputs, role="e", source="digits"
    )
    return imported, calibration, evaluation


def _run(trained, bits, granularity, pipeline=()):
    imported, calibration, evaluation = trained
    spec = QuantSpec(
        weight_bits=bits,
        weight_granularity=granularity,
        pipeline=pipeline,
        adaround_iterations=ITERATIONS,
    )
    result = quantize(imported, spec, calibration=calibration, evaluation=evaluation)
    return result.report


def test_w4_per_tensor_adaround_recovers_what_nearest_loses(trained):
    nearest = _run(trained, 4, "per-tensor")
    learned = _run(trained, 4, "per-tensor", ("adaround",))
    float_top1 = nearest["metrics"]["float"]["top1"]
    assert learned["metrics"]["float"]["top1"] == float_top1  # reference untouched by AdaRound
    assert float_top1 - nearest["metrics"]["onnxruntime"]["top1"] >= 0.05
    assert learned["metrics"]["onnxruntime"]["top1"] >= float_top1 - 0.02
    assert learned["metrics"]["simulation_vs_onnxruntime"]["top1_agreement"] >= 0.99
    layers = learned["step_reports"]["adaround"]["layers"]
    assert all(0 < row["rounded_away_from_nearest"] < 0.5 for row in layers)
    assert all(
        row["reconstruction_mse_adaround"] <= row["reconstruction_mse_nearest"] for row in layers
    )


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_per_channel_adaround_beats_nearest(trained, bits):
    nearest = _run(trained, bits, "per-channel")
    learned = _run(trained, bits, "per-channel", ("adaround",))
    near_top1 = nearest["metrics"]["onnxruntime"]["top1"]
    assert learned["metrics"]["onnxruntime"]["top1"] >= near_top1
    near_sqnr = nearest["metrics"]["onnxruntime"]["sqnr_db"]
    assert learned["metrics"]["onnxruntime"]["sqnr_db"] > near_sqnr
    if bits == 2:
        assert learned["metrics"]["onnxruntime"]["top1"] > near_top1 + 0.05


def test_adaround_stops_between_layers_when_asked(trained):
    imported, calibration, _ = trained
    spec = QuantSpec(weight_bits=4, pipeline=("adaround",), adaround_iterations=20)
    with pytest.raises(Cancelled):
        quantize(imported, spec, calibration=calibration, should_stop=lambda: True)
