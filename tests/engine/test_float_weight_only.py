"""A Gemm whose activation is on no 8-bit grid, on ``onnxruntime-cpu``: its int8 weight is
written as the float values its DequantizeLinear computed, so ONNX Runtime neither dequantizes
the whole weight on every run nor runs the Gemm on an unpacked weight; the simulation runs that
graph, so it still computes exactly what ONNX Runtime computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.export.runtime_forms import FLOAT_WEIGHT, dequantized_values, float_weight_only
from tests.support.onnx_models import quantize_on_noise


def _model() -> onnx.ModelProto:
    """conv -> relu -> flatten -> gemm ``fc8`` (8-bit input) and, beside it, conv -> erf ->
    flatten -> gemm ``fc_float`` (kept float by the spec in the tests: its input is float)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((256, 6)).astype(np.float32) * 0.1, "fc1"),
        numpy_helper.from_array(rng.standard_normal((6, 256)).astype(np.float32) * 0.1, "fc2"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Flatten", ["r1"], ["f1"], name="flat1", axis=1),
        helper.make_node("Gemm", ["f1", "fc1"], ["y8"], name="fc8"),
        helper.make_node("Erf", ["c1"], ["e1"], name="erf"),
        helper.make_node("Flatten", ["e1"], ["f2"], name="flat2", axis=1),
        helper.make_node("Gemm", ["f2", "fc2", "b2"], ["yf"], name="fc_float", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "weight_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [
            helper.make_tensor_value_info("y8", TensorProto.FLOAT, ["n", 6]),
            helper.make_tensor_value_info("yf", TensorProto.FLOAT, ["n", 6]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _optimized(tmp_path, model: onnx.ModelProto) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return onnx.load(tmp_path / "optimized.onnx")


def _spec(target: str) -> QuantSpec:
    return QuantSpec(target=target, keep_float_nodes=("erf",))


def test_a_weight_only_gemm_gets_its_dequantized_weight_as_float(tmp_path):
    result = quantize_on_noise(tmp_path, _model(), _spec("onnxruntime-cpu"))
    graph = result.quantized_model.graph
    (gemm,) = [node for node in graph.node if node.name == "fc_float"]
    assert gemm.input[1].endswith(FLOAT_WEIGHT)
    weight = next(i for i in graph.initializer if i.name == gemm.input[1])
    assert weight.data_type == TensorProto.FLOAT
    # the 8-bit Gemm keeps its int8 weight and becomes an integer kernel
    (fc8,) = [node for node in graph.node if node.name == "fc8"]
    assert fc8.input[1].endswith("_dequantized")
    optimized = _optimized(tmp_path, result.quantized_model)
    ops = [node.op_type for node in optimized.graph.node]
    assert "QGemm" in ops or "MatMulIntegerToFloat" in ops
    producers = {out: node for node in optimized.graph.node for out in node.output}
    float_gemms = [n for n in optimized.graph.node if n.op_type == "Gemm"]
    assert len(float_gemms) == 1 and float_gemms[0].input[1] not in producers
    metrics = result.report["metrics"]
    assert metrics["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0
    forms = result.report["target"]["runtime_forms"]
    assert forms["float_weights_of_weight_only_gemms"] == ["fc_float"]


def test_other_targets_keep_the_weight_quantized(tmp_path):
    result = quantize_on_noise(tmp_path, _model(), _spec("tensorrt"))
    (gemm,) = [n for n in result.quantized_model.graph.node if n.name == "fc_float"]
    assert not gemm.input[1].endswith(FLOAT_WEIGHT)


def test_dequantized_values_are_what_onnx_runtime_computes():
    """Per channel along axis 0 and per tensor, 8, 16 and 32-bit integers (centred in float32
    up to 16 bits, in int32 beyond): the same float32 bits."""
    rng = np.random.default_rng(3)
    for dtype, low, high in (
        (np.int8, -127, 128),
        (np.uint8, 0, 256),
        (np.int16, -32768, 32768),
        (np.uint16, 0, 65536),
        (np.int32, -(2**31), 2**31 - 1),
    ):
        q = rng.integers(low, high, (5, 7)).astype(dtype)
        for scale, zero, axis in (
            (rng.random(5).astype(np.float32) / 7, rng.integers(0, 9, 5).astype(dtype), 0),
            (np.float32(0.0123), dtype(3), 1),
        ):
            node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)
            graph = helper.make_graph(
                [node],
                "dq",
                [],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                [
                    numpy_helper.from_array(q, "q"),
                    numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
                    numpy_helper.from_array(np.asarray(zero, dtype), "z"),
                ],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = ort.InferenceSession(model.SerializeToString(), options)
            (expected,) = session.run(None, {})
            got = dequantized_values(q, np.asarray(scale), np.asarray(zero), axis)
            assert got.dtype == np.float32
            assert np.array_equal(got.view(np.int32), expected.view(np.int32))


def _group(reader: str, bits: int) -> onnx.ModelProto:
    """x -> Q/DQ (``bits``) -> [Reshape] -> Gemm(DQ(int8 weight)) -> Q/DQ: a quantized group."""
    rng = np.random.default_rng(0)
    zero_type = TensorProto.UINT16 if bits == 16 else TensorProto.UINT8
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (6, 8)).astype(np.int8), "wq"),
        numpy_helper.from_array(np.full(6, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(6, np.int8), "wz"),
        numpy_helper.from_array(np.float32(0.01), "s"),
        helper.make_tensor("z", zero_type, [], [0]),
        numpy_helper.from_array(np.asarray([-1, 8], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
    ]
    if reader == "reshape":
        nodes.append(helper.make_node("Reshape", ["xd", "shape"], ["xr"]))
    source = "xr" if reader == "reshape" else "xd"
    nodes += [
        helper.make_node("Gemm", [source, "w"], ["y"], name="gemm", transB=1),
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "group",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_a_gemm_reading_a_dequantized_activation_keeps_its_quantized_weight():
    """With a DequantizeLinear before it (16-bit too, or behind a Reshape ORT may move it
    past), ORT's optimizer would quantize a float weight itself on a grid of its own."""
    for reader, bits in (("direct", 16), ("reshape", 8), ("reshape", 16)):
        model = _group(reader, bits)
        before = model.SerializeToString()
        assert float_weight_only(model) == []
        assert model.SerializeToString() == before


def test_the_float_weight_is_the_tensor_numpy_helper_writes():
    """Built in place to spare two copies of a large weight, it is the same tensor to the byte."""
    from qaas_engine.export.runtime_forms import _add_float_initializer

    graph = onnx.GraphProto()
    values = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    _add_float_initializer(graph, "w", values)
    expected = numpy_helper.from_array(values, "w").SerializeToString()
    assert graph.initializer[0].SerializeToString() == expected
