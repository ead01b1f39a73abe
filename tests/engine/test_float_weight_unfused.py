"""A Gemm or Conv in a QDQ group ONNX Runtime cannot fuse into an integer kernel (a 16-bit
activation, a Conv output read in float), on ``onnxruntime-cpu``: its int8 weight is written as
the float values its DequantizeLinear computed, where its bias is dequantized (so ORT's optimizer
does not quantize the float weight again on a grid of its own). The optimized graph runs the
float op on a constant weight (no DequantizeLinear of it on every run) and computes the same
bits as the graph before."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.export.runtime_forms import FLOAT_BIAS, FLOAT_WEIGHT, UNFUSED, float_weight_only
from tests.support.onnx_models import quantize_on_noise


def _run(model: onnx.ModelProto, feed: dict, optimize: bool, tmp_path=None) -> list:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if tmp_path is not None:
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, feed)


def _qdq(name: str, bits: int, scale: float) -> list[onnx.TensorProto]:
    zero_type = TensorProto.UINT16 if bits == 16 else TensorProto.UINT8
    return [
        numpy_helper.from_array(np.float32(scale), f"{name}_s"),
        helper.make_tensor(f"{name}_z", zero_type, [], [2 ** (bits - 1)]),
    ]


def _pair(tensor: str, name: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("QuantizeLinear", [tensor, f"{name}_s", f"{name}_z"], [f"{tensor}_q"]),
        helper.make_node(
            "DequantizeLinear", [f"{tensor}_q", f"{name}_s", f"{name}_z"], [f"{tensor}_d"]
        ),
    ]


def _gemm_group(in_bits: int, out_bits: int, bias: bool) -> onnx.ModelProto:
    """x -> Q/DQ (``in_bits``) -> Gemm(DQ(int8 weight)[, DQ(int32 bias)]) -> Q/DQ (``out_bits``)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (6, 64)).astype(np.int8), "wq"),
        numpy_helper.from_array(rng.random(6).astype(np.float32) / 50, "ws"),
        numpy_helper.from_array(np.zeros(6, np.int8), "wz"),
        numpy_helper.from_array(rng.integers(-500, 500, 6).astype(np.int32), "bq"),
        numpy_helper.from_array(rng.random(6).astype(np.float32) / 5000, "bs"),
        *_qdq("a", in_bits, 0.01 if in_bits == 8 else 1e-4),
        *_qdq("o", out_bits, 0.05 if out_bits == 8 else 1e-3),
    ]
    nodes = [
        *_pair("x", "a"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0),
        helper.make_node(
            "Gemm", ["x_d", "w", *(["b"] if bias else [])], ["y"], name="gemm", transB=1
        ),
        *_pair("y", "o"),
    ]
    graph = helper.make_graph(
        nodes,
        "group",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y_d", TensorProto.FLOAT, ["n", 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _feed(shape: tuple[int, ...]) -> dict:
    return {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 0.3}


def test_a_sixteen_bit_gemm_group_gets_its_weight_as_float(tmp_path):
    """16-bit activation in, or 16-bit out (MTCNN ONet's dense5): ORT ran the float Gemm and
    dequantized its weight on every run; now the weight is constant and the bits unchanged."""
    for in_bits, out_bits in ((16, 8), (8, 16), (16, 16)):
        model = _gemm_group(in_bits, out_bits, bias=True)
        feed = _feed((3, 64))
        before = _run(model, feed, optimize=True)
        assert float_weight_only(model) == ["gemm"]
        (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm"]
        assert gemm.input[1].endswith(UNFUSED + FLOAT_WEIGHT)
        after = _run(model, feed, optimize=True, tmp_path=tmp_path)
        unoptimized = _run(model, feed, optimize=False)
        assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(after, unoptimized, strict=True))
        optimized = onnx.load(tmp_path / "optimized.onnx")
        producers = {out: node for node in optimized.graph.node for out in node.output}
        (float_gemm,) = [n for n in optimized.graph.node if n.op_type == "Gemm"]
        # constants: no DequantizeLinear per run, of the weight or of the bias
        assert float_gemm.input[1] not in producers and float_gemm.input[2] not in producers
        assert gemm.input[2].endswith(UNFUSED + FLOAT_BIAS)
        bias = next(i for i in model.graph.initializer if i.name == gemm.input[2])
        assert list(bias.dims) == [1, 6]


def test_groups_ort_fuses_or_requantizes_keep_their_quantized_weight():
    """An 8-bit group (ORT's QGemm), and a 16-bit group with no bias: ORT's optimizer would
    quantize a float weight there itself, on a grid of its own."""
    for in_bits, out_bits, bias in ((8, 8, True), (16, 8, False), (8, 16, False)):
        model = _gemm_group(in_bits, out_bits, bias)
        before = model.SerializeToString()
        assert float_weight_only(model) == []
        assert model.SerializeToString() == before


def _conv_group(branch_reads_relu: bool, activation: str = "Relu") -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(DQ weight, DQ bias) -> Relu -> Q/DQ -> out, and an If whose branches
    read the Relu's float output where ``branch_reads_relu`` (Silero VAD's decoder), else the
    dequantized one."""
    rng = np.random.default_rng(0)
    weight_scale = rng.random(8).astype(np.float32) / 50
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8), "wq"),
        numpy_helper.from_array(weight_scale, "ws"),
        numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
        numpy_helper.from_array(rng.integers(-500, 500, 8).astype(np.int32), "bq"),
        numpy_helper.from_array(weight_scale * np.float32(0.01), "bs"),
        numpy_helper.from_array(np.asarray(True), "flag"),
        numpy_helper.from_array(np.float32(0.0), "zero"),
        numpy_helper.from_array(np.float32(6.0), "six"),
        *_qdq("a", 8, 0.01),
        helper.make_tensor("o_s", TensorProto.FLOAT, [], [0.02]),
        helper.make_tensor("o_z", TensorProto.UINT8, [], [0]),
    ]
    read = "r" if branch_reads_relu else "r_d"
    branch = helper.make_graph(
        [helper.make_node("Sigmoid", [read], ["s"])],
        "branch",
        [],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)],
    )
    nodes = [
        *_pair("x", "a"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0),
        helper.make_node("Conv", ["x_d", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            activation, ["c", *(["zero", "six"] if activation == "Clip" else [])], ["r"]
        ),
        *_pair("r", "o"),
        helper.make_node("If", ["flag"], ["gated"], then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_group",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [
            helper.make_tensor_value_info("r_d", TensorProto.FLOAT, ["n", 8, 8, 8]),
            helper.make_tensor_value_info("gated", TensorProto.FLOAT, None),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_a_conv_whose_output_a_branch_reads_in_float_gets_its_weight_as_float(tmp_path):
    model = _conv_group(branch_reads_relu=True)
    feed = _feed((2, 4, 8, 8))
    before = _run(model, feed, optimize=True)
    assert float_weight_only(model) == ["conv"]
    after = _run(model, feed, optimize=True, tmp_path=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    optimized = onnx.load(tmp_path / "optimized.onnx")
    assert not any(
        n.op_type == "DequantizeLinear" and n.input[0] == "wq" for n in optimized.graph.node
    )


def test_a_conv_ort_fuses_keeps_its_quantized_weight(tmp_path):
    """Conv -> Relu -> Q and Conv -> Clip -> Q (ORT folds the activation into the Q): a
    QLinearConv, which a float weight would undo."""
    for activation in ("Relu", "Clip"):
        model = _conv_group(branch_reads_relu=False, activation=activation)
        before = model.SerializeToString()
        assert float_weight_only(model) == []
        assert model.SerializeToString() == before
        _run(model, _feed((2, 4, 8, 8)), optimize=True, tmp_path=tmp_path)
        optimized = onnx.load(tmp_path / "optimized.onnx")
        assert "QLinearConv" in [n.op_type for n in optimized.graph.node]


def _two_gemms() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((6, 256)).astype(np.float32) * 0.1, "fc"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "fcb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Flatten", ["r1"], ["f1"], name="flat1", axis=1),
        helper.make_node("Gemm", ["f1", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "sixteen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_through_quantize_16_bit_activations_keep_simulation_equal_to_runtime(tmp_path):
    """The whole job with 16-bit activations: every weighted op's group runs float in ORT, gets
    its weight as float, and the simulation still computes exactly what ORT computes."""
    spec = QuantSpec(target="onnxruntime-cpu", activation_bits=16)
    result = quantize_on_noise(tmp_path, _two_gemms(), spec)
    graph = result.quantized_model.graph
    weighted = {n.name: n for n in graph.node if n.op_type in ("Conv", "Gemm")}
    assert all(n.input[1].endswith(UNFUSED + FLOAT_WEIGHT) for n in weighted.values())
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0
    forms = result.report["target"]["runtime_forms"]
    assert sorted(forms["float_weights_of_unfused_groups"]) == sorted(weighted)
