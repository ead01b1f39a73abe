"""A pooled classifier head on ``onnxruntime-cpu``: the Reshape/Flatten after the global pool
reads its ``[N, C, 1, 1]`` input channels-last, so ONNX Runtime keeps the int8 tail NHWC (its
uint8 MaxPool as NhwcMaxPool, no layout Transpose left) and computes the same values."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.export.runtime_forms import channels_last_read
from tests.support.onnx_models import quantize_on_noise


def _head_model(reshape: str) -> onnx.ModelProto:
    """conv -> relu -> conv -> relu -> x * (x + 3) -> maxpool -> global pool -> ``reshape`` ->
    gemm: the direction classifier's tail (a hardswish between its last conv and MaxPool).

    ``reshape``: "flatten"; "dynamic" (a Reshape to a shape computed from Shape, as paddle2onnx
    writes it); "constant" (a Reshape to the constant [-1, 16])."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32) * 0.3, "fc"),
        numpy_helper.from_array(np.float32(3.0), "three"),
        numpy_helper.from_array(np.asarray([0], np.int64), "first"),
        numpy_helper.from_array(np.asarray([1], np.int64), "one"),
        numpy_helper.from_array(np.asarray([-1], np.int64), "rest"),
        numpy_helper.from_array(np.asarray([-1, 16], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["q2"], name="relu2"),
        helper.make_node("Add", ["q2", "three"], ["a2"], name="shift"),
        helper.make_node("Mul", ["q2", "a2"], ["r2"], name="gate"),
        helper.make_node(
            "MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
    ]
    if reshape == "flatten":
        nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="head", axis=1))
    elif reshape == "constant":
        nodes.append(helper.make_node("Reshape", ["g", "flat"], ["f"], name="head"))
    else:
        nodes += [
            helper.make_node("Shape", ["g"], ["s"], name="shape"),
            helper.make_node("Slice", ["s", "first", "one"], ["n"], name="batch"),
            helper.make_node("Concat", ["n", "rest"], ["target"], name="target", axis=0),
            helper.make_node("Reshape", ["g", "target"], ["f"], name="head"),
        ]
    nodes.append(helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc"))
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(tmp_path, model: onnx.ModelProto, spec: QuantSpec | None = None):
    return quantize_on_noise(tmp_path, model, spec, (16, 4, 16, 16))


def _optimized_ops(tmp_path, model: onnx.ModelProto) -> list[str]:
    """The op types of the graph ONNX Runtime's CPU optimizer makes of ``model``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(tmp_path / "optimized.onnx").graph.node]


@pytest.mark.parametrize("reshape", ["flatten", "dynamic", "constant"])
@pytest.mark.parametrize("target", ["onnxruntime-cpu", "onnxruntime-cpu:avx2"])
def test_the_head_reads_channels_last_and_the_tail_stays_nhwc(tmp_path, reshape, target):
    result = _quantized(tmp_path, _head_model(reshape), QuantSpec(target=target))
    ops = _optimized_ops(tmp_path, result.quantized_model)
    assert ops.count("NhwcMaxPool") == 1 and "MaxPool" not in ops
    assert ops.count("QLinearConv") == 2 and "QLinearGlobalAveragePool" in ops
    assert ops.count("QLinearAdd") == 1 and ops.count("QLinearMul") == 1
    # no layout Transpose between the last convolution and the pool (a Shape of the pooled
    # [N, C, 1, 1] tensor may keep one on those N * C values)
    last_conv = len(ops) - 1 - ops[::-1].index("QLinearConv")
    assert "Transpose" not in ops[last_conv : ops.index("QLinearGlobalAveragePool")]
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0
    assert result.report["metrics"]["onnxruntime"]["sqnr_db"] > 20.0
    assert result.report["target"]["runtime_forms"]["channels_last_reads"] == ["g_dequantized"]
    onnx.checker.check_model(result.quantized_model)


def test_other_targets_keep_the_head_as_written(tmp_path):
    result = _quantized(tmp_path, _head_model("flatten"), QuantSpec(target="tensorrt"))
    assert "Transpose" not in [node.op_type for node in result.quantized_model.graph.node]
    assert "runtime_forms" not in result.report["target"]


def test_a_reshape_that_copies_an_axis_reads_the_flattened_tensor():
    """A 0 in a Reshape's shape copies the input's axis: read channels-last, [0, 0] would give
    [N, 1]. A shape of two numbers at most reads the [N, C] Flatten, where a 0 copies N or C
    alike; a longer one, or a Flatten at another axis, keeps the input as it is."""
    reshape = helper.make_node("Reshape", ["g", "t"], ["f"])
    pooled = {"g"}
    assert channels_last_read(reshape, pooled, {}, np.asarray([-1, 16], np.int64)) == "as is"
    assert channels_last_read(reshape, pooled, {}, np.asarray([0, 0], np.int64)) == "flattened"
    assert channels_last_read(reshape, pooled, {"t": [2]}, None) == "flattened"
    assert channels_last_read(reshape, pooled, {"t": [3]}, None) is None
    assert channels_last_read(reshape, pooled, {"t": [""]}, None) is None
    assert channels_last_read(reshape, pooled, {}, np.asarray([0, 16, 0], np.int64)) is None
    flatten = helper.make_node("Flatten", ["g"], ["f"], axis=2)
    assert channels_last_read(flatten, pooled, {}, None) is None
    assert channels_last_read(reshape, set(), {"g": [0, 16, 2, 2]}, None) is None
    assert channels_last_read(reshape, set(), {"g": [-1, 16, 1, 1]}, None) is None  # unknown length


def test_the_rules_measure_the_graph_with_the_channels_last_read(tmp_path):
    """The rules export the head as the pipeline does, so the evaluation finds their run of the
    very graph it measures instead of running it again."""
    spec = QuantSpec(min_sqnr_db=200.0)  # a target no grid meets: the rules measure
    report = _quantized(tmp_path, _head_model("dynamic"), spec).report
    assert report["target"]["runtime_forms"]["channels_last_reads"] == ["g_dequantized"]
    assert "kept from the rules' run" in report["metrics"]["engines"]["onnxruntime"]
