"""qnn-htp and tensorrt: targets we cannot run here, so the export is checked against their
documented rules (``export.target_checks``), and the simulation computes what the export says.

One small CNN has what the rules are about: Conv+BN+ReLU, a residual Add, a Concat, MaxPool,
a Gemm feeding a Sigmoid, and a MatMul with a constant weight.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec, SpecError, quantize
from qaas_engine.export.target_checks import QdqGraph, check_export
from qaas_engine.targets import QNN_HTP, TENSORRT, choose_kernels
from tests.conftest import export_legacy


class ResidualConcatNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.side = torch.nn.Conv2d(8, 4, 1)
        self.fc = torch.nn.Linear(12, 16)
        self.head = torch.nn.Parameter(torch.randn(16, 10) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.b(torch.relu(self.a(y))) + y)  # residual Add
        y = torch.cat([y, self.side(y)], 1)  # Concat
        y = torch.nn.functional.max_pool2d(y, 2).mean((2, 3))
        return torch.sigmoid(self.fc(y)) @ self.head  # Gemm, Sigmoid, MatMul


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    from qaas_engine import import_model, load_npz, model_inputs

    torch.manual_seed(0)
    module = ResidualConcatNet()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-0.2, 0.2)
        module.bn.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("devices")
    path = export_legacy(module, folder / "net.onnx", torch.randn(1, 3, 8, 8))
    rng = np.random.default_rng(0)
    np.savez(folder / "cal.npz", input=rng.standard_normal((64, 3, 8, 8)).astype(np.float32))
    np.savez(folder / "ev.npz", input=rng.standard_normal((64, 3, 8, 8)).astype(np.float32))
    imported = import_model(path)
    inputs = model_inputs(imported.model)
    return imported, load_npz(folder / "cal.npz", inputs), load_npz(folder / "ev.npz", inputs)


def _run(net, **spec):
    imported, calibration, evaluation = net
    return quantize(imported, QuantSpec(**spec), calibration=calibration, evaluation=evaluation)


@pytest.fixture(scope="module")
def tensorrt(net):
    return _run(net, target="tensorrt")


@pytest.fixture(scope="module")
def htp(net):
    return _run(net, target="qnn-htp")


@pytest.fixture(scope="module")
def onnxruntime_cpu(net):
    return _run(net, target="onnxruntime-cpu:vnni")


def _nodes(model, op_type):
    return [node for node in model.graph.node if node.op_type == op_type]


def _entries(encodings, kind):
    return {entry["name"]: entry for entry in encodings[kind]}


def _says_not_executed(report, rules):
    target = report["target"]
    assert target["executed"] is False and "NOT executed" in target["validation"]
    assert target["constraints_checked"] == list(rules.constraints)
    assert "ONNX Runtime" in target["figures_from"]
    assert "target_check" in [step["name"] for step in report["steps"]]


# -- tensorrt ----------------------------------------------------------------------------------
def test_tensorrt_export_is_symmetric_int8_and_passes_the_checker(tensorrt):
    model, encodings = tensorrt.quantized_model, tensorrt.encodings
    assert check_export("tensorrt", model, encodings) == []
    constants = {init.name: init for init in model.graph.initializer}
    for node in _nodes(model, "QuantizeLinear") + _nodes(model, "DequantizeLinear"):
        zero_point = constants[node.input[2]]
        assert zero_point.data_type == TensorProto.INT8, node.name
        assert not numpy_helper.to_array(zero_point).any(), node.name
        assert node.domain == ""
    for node in _nodes(model, "QuantizeLinear"):  # activations per tensor
        assert numpy_helper.to_array(constants[node.input[1]]).size == 1
    for entry in encodings["activation_encodings"]:
        assert entry["is_sym"] and entry["offset"] == [-128] and entry["bw"] == 8
    assert encodings["quantizer_args"]["activation_is_symmetric"] is True
    weights = _entries(encodings, "param_encodings")
    assert set(weights) == {
        "stem.weight",
        "a.weight",
        "b.weight",
        "side.weight",
        "fc.weight",
        "head",
    }
    for entry in weights.values():  # per output channel, symmetric; biases stay float
        assert entry["is_sym"] and entry["enc_type"] == "PER_CHANNEL"
        assert set(entry["offset"]) == {-128}
    _says_not_executed(tensorrt.report, TENSORRT)


def test_tensorrt_places_qdq_where_it_fuses(tensorrt):
    graph = QdqGraph(tensorrt.quantized_model)
    for conv in _nodes(graph.model, "Conv") + _nodes(graph.model, "Gemm"):
        assert graph.dequantized(conv.input[0]) is not None, conv.name  # input quantized
        assert graph.quantized(conv.output[0]) is None, conv.name  # output left to fusion
    (add,) = _nodes(graph.model, "Add")
    from_conv, residual = add.input
    assert graph.producer[from_conv].op_type == "Conv"
    assert graph.dequantized(residual) is not None
    (matmul,) = _nodes(graph.model, "MatMul")
    assert all(graph.dequantized(name) is not None for name in matmul.input)


def test_tensorrt_simulation_matches_onnxruntime(tensorrt):
    gap = tensorrt.report["metrics"]["simulation_vs_onnxruntime"]
    # ORT fuses the INT8 groups into kernels that round once more; measured 60 dB, agreement 1.0
    assert gap["top1_agreement"] >= 0.98 and gap["sqnr_db"] >= 40, gap


# -- qnn-htp -----------------------------------------------------------------------------------
def test_htp_encodings_follow_the_aimet_htp_config(htp):
    model, encodings = htp.quantized_model, htp.encodings
    assert check_export("qnn-htp", model, encodings) == []
    params = _entries(encodings, "param_encodings")
    for name in ("stem.weight", "a.weight", "b.weight", "side.weight"):
        assert params[name]["enc_type"] == "PER_CHANNEL" and params[name]["is_sym"]
        assert set(params[name]["offset"]) == {-128}
    for name in ("fc.weight", "head"):  # Gemm and MatMul per tensor on HTP
        assert params[name]["enc_type"] == "PER_TENSOR" and params[name]["offset"] == [-128]
    activations = _entries(encodings, "activation_encodings")
    for entry in activations.values():
        assert not entry["is_sym"] and entry["bw"] == 8 and all(o <= 0 for o in entry["offset"])
    graph = QdqGraph(model)
    for node in _nodes(model, "QuantizeLinear"):
        assert graph.grid(node).elem_type == TensorProto.UINT8
    # int32 bias at s_input * s_weight
    (conv_a,) = [node for node in _nodes(model, "Conv") if node.input[1].startswith("a.")]
    bias, weight = params["a.bias"], params["a.weight"]
    input_scale = activations[graph.producer[conv_a.input[0]].input[0].removesuffix("_quantized")]
    assert bias["bw"] == 32 and bias["is_sym"]
    np.testing.assert_allclose(
        bias["scale"], np.asarray(weight["scale"]) * input_scale["scale"][0], rtol=1e-6
    )
    _says_not_executed(htp.report, QNN_HTP)


def test_htp_shares_concat_and_data_movement_encodings_and_fixes_sigmoid(htp):
    model, activations = htp.quantized_model, _entries(htp.encodings, "activation_encodings")
    (concat,) = _nodes(model, "Concat")
    (maxpool,) = _nodes(model, "MaxPool")
    joined = [name.removesuffix("_dequantized") for name in concat.input] + [
        concat.output[0],
        maxpool.output[0],
    ]
    grids = {(tuple(activations[n]["scale"]), tuple(activations[n]["offset"])) for n in joined}
    assert len(grids) == 1, joined
    (sigmoid,) = _nodes(model, "Sigmoid")
    fixed = activations[sigmoid.output[0]]
    assert fixed["offset"] == [0] and fixed["scale"][0] * 255 == pytest.approx(1.0, rel=1e-6)
    # Conv+Relu and Add+Relu are supergroups: no quantizer between them
    graph = QdqGraph(model)
    for node in _nodes(model, "Relu"):
        assert graph.producer[node.input[0]].op_type in ("Conv", "Add")


def test_htp_simulation_is_what_onnxruntime_computes(htp):
    gap = htp.report["metrics"]["simulation_vs_onnxruntime"]
    assert gap["top1_agreement"] >= 0.999 and gap["sqnr_db"] >= 60, gap  # measured: exact


def test_htp_sixteen_bit_activations_with_int4_weights(net):
    result = _run(net, target="qnn-htp", activation_bits=16, weight_bits=4)
    assert check_export("qnn-htp", result.quantized_model, result.encodings) == []
    for entry in result.encodings["activation_encodings"]:
        assert entry["bw"] == 16 and not entry["is_sym"]
    weights = [e for e in result.encodings["param_encodings"] if e["bw"] != 32]
    assert weights and all(e["bw"] == 4 and set(e["offset"]) == {-8} for e in weights)
    graph = QdqGraph(result.quantized_model)
    assert {graph.grid(n).elem_type for n in _nodes(result.quantized_model, "QuantizeLinear")} == {
        TensorProto.UINT16
    }
    gap = result.report["metrics"]["simulation_vs_onnxruntime"]
    assert gap["sqnr_db"] >= 35, gap  # ORT computes 16-bit groups in float: measured 52 dB


def test_htp_ties_are_set_again_over_ranges_a_learning_step_moved(net):
    """QAT learns each quantizer's range on its own; before export the pipeline sets the
    Concat's one grid again, over every member's learned range."""
    from qaas_engine.quant.encoding import Encoding

    imported, calibration, _ = net
    sim = _sim_for(imported, calibration, "qnn-htp")
    (group,) = sim.placement.tied
    members = sorted({sim.quantizer_of(name) for name in group})
    moved = sim.activation_encodings[members[0]]
    wider = float(moved.high[0]) * 3
    sim.activation_encodings[members[0]] = Encoding.from_range(moved.scheme, 0.0, wider)
    sim.apply_target_grids()
    grids = {
        (
            float(sim.activation_encodings[m].scale[0]),
            int(sim.activation_encodings[m].zero_point[0]),
        )
        for m in members
    }
    # the shared grid covers the moved range (up to the zero point's rounding)
    assert len(grids) == 1 and float(sim.activation_encodings[members[1]].high[0]) >= 0.99 * wider


# -- what the targets refuse, and what the checker catches -----------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"target": "tensorrt", "activation_bits": 16}, "tensorrt takes activations int8"),
        ({"target": "tensorrt", "weight_bits": 4}, "tensorrt takes weights int8"),
        ({"target": "tensorrt", "activation_bits": None}, "weights only"),
        ({"target": "qnn-htp", "activation_bits": 12}, "int8, int16"),
        ({"target": "qnn-htp", "weight_bits": 16}, "no kernel for int16 weights"),
        ({"target": "qnn-htp", "weight_symmetric": False}, "symmetric weights only"),
        ({"target": "tensorrt", "pipeline": ("cle", "bayesian_bits")}, "bayesian_bits"),
    ],
)
def test_targets_refuse_grids_they_cannot_run(spec, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**spec)


def test_an_onnxruntime_export_breaks_both_targets_rules_by_name(onnxruntime_cpu):
    model, encodings = onnxruntime_cpu.quantized_model, onnxruntime_cpu.encodings
    trt = {(v.rule, v.where) for v in check_export("tensorrt", model, encodings)}
    assert ("trt.int8", "input_quantized_QuantizeLinear") in trt  # uint8 activations
    assert any(rule == "trt.bias_float" for rule, _ in trt)
    htp = {(v.rule, v.where) for v in check_export("qnn-htp", model, encodings)}
    (concat,) = _nodes(model, "Concat")
    (gemm,) = _nodes(model, "Gemm")
    assert ("htp.concat_shared", concat.name) in htp  # inputs on their own grids
    assert ("htp.weight_per_channel", gemm.name) in htp  # Gemm per channel


def _qdq(name, source, scale, zero_point, out):
    return [
        helper.make_node("QuantizeLinear", [source, scale, zero_point], [f"{name}_q"], name=name),
        helper.make_node("DequantizeLinear", [f"{name}_q", scale, zero_point], [out]),
    ]


def _conv_relu_with_qdq_between(zero_point_type: int) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv (int8 per-channel weight) -> Q/DQ -> Relu -> Q/DQ: a quantizer inside
    the Conv+Relu fusion both targets make."""
    zero = np.zeros((), np.int8 if zero_point_type == TensorProto.INT8 else np.uint8)
    weight = np.ones((2, 1, 1, 1), np.int8)
    inits = [
        numpy_helper.from_array(np.asarray(0.1, np.float32), "s"),
        numpy_helper.from_array(zero, "z"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.full(2, 0.05, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(2, np.int8), "wz"),
    ]
    nodes = [
        *_qdq("in", "x", "s", "z", "x_dq"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["c"], name="the_conv"),
        *_qdq("mid", "c", "s", "z", "c_dq"),
        helper.make_node("Relu", ["c_dq"], ["r"], name="the_relu"),
        *_qdq("out", "r", "s", "z", "y"),
    ]
    graph = helper.make_graph(
        nodes,
        "violating",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_hand_made_violation_is_named_by_node_and_rule():
    trt = check_export("tensorrt", _conv_relu_with_qdq_between(TensorProto.INT8), {})
    assert [(v.rule, v.where) for v in trt] == [("trt.no_qdq_before_activation", "the_conv")]
    htp = check_export("qnn-htp", _conv_relu_with_qdq_between(TensorProto.UINT8), {})
    assert ("htp.supergroup", "the_conv") in {(v.rule, v.where) for v in htp}
    assert any(str(v).startswith("htp.supergroup at 'the_conv': quantizer between") for v in htp)


def test_an_unquantized_residual_input_is_caught(tensorrt):
    model = onnx.ModelProto()
    model.CopyFrom(tensorrt.quantized_model)
    graph = QdqGraph(model)
    (add,) = _nodes(model, "Add")
    residual = add.input[1]
    quantize_node = graph.producer[graph.producer[residual].input[0]]
    add.input[1] = quantize_node.input[0]  # the float tensor, Q/DQ bypassed
    found = [(v.rule, v.where) for v in check_export("tensorrt", model, tensorrt.encodings)]
    assert found == [("trt.residual_add", add.name)]


def test_the_pipeline_refuses_an_export_that_breaks_the_target(net, onnxruntime_cpu):
    from qaas_engine.pipeline import check_against_target

    imported, calibration, _ = net
    sim = _sim_for(imported, calibration, "tensorrt")
    with pytest.raises(SpecError, match=r"constraint\(s\) of target tensorrt: trt\.int8 at"):
        check_against_target(choose_kernels("tensorrt"), sim, onnxruntime_cpu.quantized_model)


def _sim_for(imported, calibration, target):
    from qaas_engine import EnergyProfile
    from qaas_engine.pipeline import PipelineData, run_pipeline
    from qaas_engine.state import Timer

    data = PipelineData(calibration=calibration)
    _, sim, _ = run_pipeline(imported, QuantSpec(target=target), data, Timer(), EnergyProfile())
    return sim


def test_the_cli_takes_both_targets(net, tmp_path):
    from app.cli import main

    imported, _, _ = net
    model = tmp_path / "net.onnx"
    onnx.save(imported.model, model)
    calibration = tmp_path / "cal.npz"
    data = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(calibration, input=data)
    out = tmp_path / "out"
    args = ["quantize", str(model), "--calibration", str(calibration), "-o", str(out)]
    assert main([*args, "--target", "tensorrt"]) == 0
    assert (out / "report.json").read_text().count('"executed": false') == 1
    assert main([*args, "--target", "tensorrt", "--activations", "int16"]) == 2


def test_targets_validated_not_run_here_keep_their_grids_and_their_speed_unjudged():
    from qaas_engine.auto import _fixed_grids
    from qaas_engine.evaluation import artifact_warnings

    assert _fixed_grids(QuantSpec()) is None
    for target in ("tensorrt", "qnn-htp"):
        assert "takes only the grids asked for" in (_fixed_grids(QuantSpec(target=target)) or "")
    slower = {"latency_ms": {"speedup": {"batch_1": 0.4}}}
    assert artifact_warnings({**slower, "target": {"target": "onnxruntime-cpu", "executed": True}})
    assert not artifact_warnings({**slower, "target": {"target": "tensorrt", "executed": False}})
