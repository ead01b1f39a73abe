"""The integer kernels ONNX Runtime's optimizer makes of our QDQ export, counted in the graph it
saves: every convolution and residual add runs as an integer kernel, and a sim-vs-runtime gap is
blamed on the kernels actually present, not on ones that were never used."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.evaluation import gap_warnings
from tests.conftest import export_legacy


class Residual(torch.nn.Module):
    """conv -> relu -> conv, added back to its input, relu: the block every ResNet repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.first = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.second = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        z = self.second(torch.relu(self.first(y)))
        return torch.relu(z + y)


def _quantized_report(tmp_path, module, **spec):
    model = export_legacy(module, tmp_path / "model.onnx", torch.randn(1, 1, 8, 8))
    data = tmp_path / "calibration.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((16, 1, 8, 8), np.float32))
    imported = import_model(model)
    calibration = load_npz(data, model_inputs(imported.model))
    result = quantize(imported, QuantSpec(**spec), calibration=calibration)
    return imported.model, result


def test_every_conv_and_residual_add_runs_as_an_integer_kernel(tmp_path):
    torch.manual_seed(0)
    float_model, result = _quantized_report(
        tmp_path, Residual().eval(), target="onnxruntime-cpu:vnni"
    )
    graph = result.report["metrics"]["runtime_graph"]
    convs = sum(node.op_type == "Conv" for node in float_model.graph.node)
    assert graph["integer_kernels"].get("QLinearConv") == convs == 3
    assert graph["integer_kernels"].get("QLinearAdd") == 1
    # fused groups leave fewer conversions than the QDQ graph holds
    exported = sum(node.op_type == "QuantizeLinear" for node in result.quantized_model.graph.node)
    assert graph["quantize_linear"] < exported
    assert graph["sixteen_bit_qdq"] == 0


def test_the_gap_warning_names_the_kernels_present():
    metrics = {
        "simulation_vs_onnxruntime": {"top1_agreement": 0.9},
        "runtime_graph": {"integer_kernels": {"QLinearConv": 9, "QLinearAdd": 4}},
    }
    (warning,) = gap_warnings(metrics)
    assert "4 QLinearAdd" in warning
    assert "16-bit" not in warning
    plain = {
        "simulation_vs_onnxruntime": {"top1_agreement": 0.9},
        "runtime_graph": {"integer_kernels": {"QLinearConv": 9}},
    }
    (warning,) = gap_warnings(plain)
    assert "QLinearAdd" not in warning and "no requantizing integer kernel" in warning
    assert gap_warnings({"simulation_vs_onnxruntime": {"top1_agreement": 1.0}}) == []


def test_the_gap_warning_names_the_kernels_the_simulation_does_not_emulate():
    """With ORT's kernels emulated, the cause left is a kernel not emulated, or else ORT's
    float rewrites: never the kernels the simulation already computes as ORT does."""
    fused = {"integer_kernels": {"QLinearConv": 9, "QLinearAdd": 4, "QLinearSigmoid": 2}}
    left = {
        "simulation_vs_onnxruntime": {"top1_agreement": 0.9},
        "runtime_graph": fused,
        "simulation_kernels": {
            "emulated": {"QLinearConv": 9, "QLinearAdd": 4},
            "not_emulated": {"QLinearSigmoid": 2},
        },
    }
    (warning,) = gap_warnings(left)
    assert "2 QLinearSigmoid" in warning and "QLinearAdd" not in warning
    left["simulation_kernels"]["not_emulated"] = {}
    (warning,) = gap_warnings(left)
    assert "float rewrites" in warning and "QLinearAdd" not in warning


def test_sixteen_bit_activations_are_counted_and_stay_unfused(tmp_path):
    torch.manual_seed(0)
    _, result = _quantized_report(tmp_path, Residual().eval(), activation_bits=16)
    graph = result.report["metrics"]["runtime_graph"]
    assert graph["sixteen_bit_qdq"] > 0
    assert "QLinearConv" not in graph["integer_kernels"]
    onnx.checker.check_model(result.quantized_model)


class LargeBias(torch.nn.Module):
    """A conv whose bias dwarfs its weights: at 16-bit grids s_input * s_weight is so fine that
    the bias does not fit int32 at that scale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(0.01)
            self.conv.bias.copy_(torch.tensor([40.0, -30.0, 25.0, -50.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean((2, 3))


def test_sixteen_bit_groups_with_a_large_bias_run_as_simulated(tmp_path):
    """ONNX Runtime's optimizer quantizes a float Conv bias at s_input * s_weight without a range
    check; the export must not leave it one where that scale overflows int32."""
    torch.manual_seed(0)
    _, result = _quantized_report(tmp_path, LargeBias().eval(), activation_bits=16, weight_bits=16)
    gap = result.report["metrics"]["simulation_vs_onnxruntime"]
    assert gap["sqnr_db"] > 60
    assert result.report["metrics"]["onnxruntime"]["sqnr_db"] > 60


class SqueezeExcite(torch.nn.Module):
    """MobileNetV3's block as torch exports it: conv -> hardswish, a squeeze-excite gate (global
    pool, two convs, hardsigmoid) scaling it, a conv, and a division by a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.reduce = torch.nn.Conv2d(8, 4, 1)
        self.expand = torch.nn.Conv2d(4, 8, 1)
        self.out = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.hardswish(self.conv(x))
        squeezed = torch.nn.functional.adaptive_avg_pool2d(y, 1)
        gate = torch.nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(squeezed))))
        return self.out(y * gate) / 4.0


def test_hardswish_squeeze_excite_and_division_run_as_integer_kernels(tmp_path):
    """ORT has no integer HardSwish, HardSigmoid or Div: rewritten before quantization
    (``qaas_engine.transforms.integer_rewrites``), nothing is left float between a DQ and a Q."""
    torch.manual_seed(0)
    float_model, result = _quantized_report(tmp_path, SqueezeExcite().eval())
    ops = {node.op_type for node in float_model.graph.node}
    assert {"HardSwish", "HardSigmoid", "Div"} <= ops
    graph = result.report["metrics"]["runtime_graph"]
    kernels = graph["integer_kernels"]
    assert kernels.get("QLinearConv") == 4 and kernels.get("QLinearGlobalAveragePool") == 1
    # the hardswish product, the excitation, the division (it writes the graph output); both
    # gates' x * alpha are no op: read on their inputs' grids scaled (quant.placement.scaled)
    assert kernels.get("QLinearMul") == 3 and kernels.get("QLinearAdd") == 2
    assert graph["quantize_linear"] == 1 and graph["dequantize_linear"] == 1
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["top1_agreement"] >= 0.999


def test_a_gemm_on_a_sixteen_bit_activation_is_named_as_not_simulated(tmp_path):
    """ORT 1.32 runs DQ(int8 weight) -> Gemm with a 16-bit activation as MatMulNBits, a
    weight-only kernel whose float sums are not the simulation's: the report counts it and
    names it among the kernels the simulation does not compute as ORT does."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        inits,
    )
    path = tmp_path / "gemms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    data = tmp_path / "calibration.npz"
    np.savez(data, x=rng.standard_normal((64, 32)).astype(np.float32))
    imported = import_model(path)
    calibration = load_npz(data, model_inputs(imported.model))
    report = quantize(imported, QuantSpec(activation_bits=16), calibration=calibration).report
    metrics = report["metrics"]
    assert metrics["runtime_graph"]["integer_kernels"].get("MatMulNBits") == 2
    assert metrics["simulation_kernels"]["not_emulated"].get("MatMulNBits") == 2
