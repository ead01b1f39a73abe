"""A one-element float operand of an Add/Mul (an affine layer's learned scale and bias, hardswish's
x + 3) is stored as an integer on a grid that holds it exactly, so ONNX Runtime fuses the op into
QLinearMul/QLinearAdd instead of running it float between a DequantizeLinear and a Quantize."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.export.qdq import exact_scalar
from tests.conftest import export_legacy


@pytest.mark.parametrize("value", [3.0, -0.4172, 0.0, 1e-7, -6.5e4])
@pytest.mark.parametrize("signed", [False, True])
def test_the_stored_integer_dequantizes_to_the_value_exactly(value, signed):
    integer, scale, zero_point = exact_scalar(value, signed)
    dtype = np.int8 if signed else np.uint8
    stored = integer.astype(dtype)
    assert int(stored) == int(integer)  # fits the container
    dequantized = (np.float32(stored) - np.float32(zero_point.astype(dtype))) * scale
    assert dequantized == np.float32(value)


class Affine(torch.nn.Module):
    """conv -> learned scalar scale and bias (PP-LCNet's affine blocks) -> relu. The scale is
    negative: a positive one needs no op at all (its output is read on the conv's grid scaled,
    ``test_scaled_grids.py``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.scale = torch.nn.Parameter(torch.tensor([[[[-0.73]]]]))
        self.bias = torch.nn.Parameter(torch.tensor([[[[-0.21]]]]))
        self.out = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv(x) * self.scale + self.bias))


def test_scalar_operands_fuse_and_match_the_simulation(tmp_path):
    torch.manual_seed(0)
    path = export_legacy(Affine().eval(), tmp_path / "model.onnx", torch.randn(1, 1, 8, 8))
    data = tmp_path / "calibration.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((16, 1, 8, 8), np.float32))
    imported = import_model(path)
    ops = [node.op_type for node in imported.model.graph.node]
    assert "Mul" in ops and "Add" in ops
    calibration = load_npz(data, model_inputs(imported.model))
    result = quantize(imported, QuantSpec(), calibration=calibration)
    kernels = result.report["metrics"]["runtime_graph"]["integer_kernels"]
    assert kernels.get("QLinearMul") == 1 and kernels.get("QLinearAdd") == 1
    assert kernels.get("QLinearConv") == 2
    agreement = result.report["metrics"]["simulation_vs_onnxruntime"]
    assert agreement["sqnr_db"] > 35.0
    onnx.checker.check_model(result.quantized_model)


def test_the_rules_measure_the_graph_the_pipeline_exports(tmp_path):
    """The rules export scalar operands as the pipeline does for a target run here, so the
    evaluation finds their run of the very graph it measures (PP-OCRv4's detector, 128 such
    operands, ran its exported graph again)."""
    torch.manual_seed(0)
    path = export_legacy(Affine().eval(), tmp_path / "model.onnx", torch.randn(1, 1, 8, 8))
    data = tmp_path / "calibration.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((16, 1, 8, 8), np.float32))
    imported = import_model(path)
    calibration = load_npz(data, model_inputs(imported.model))
    spec = QuantSpec(min_sqnr_db=200.0)  # a target no grid meets: the rules measure
    report = quantize(imported, spec, calibration=calibration).report
    assert "kept from the rules' run" in report["metrics"]["engines"]["onnxruntime"]
