"""An 8-bit 3x3 conv over one input channel, on ``onnxruntime-cpu``: exported as a depthwise conv
over the input's integers tiled to its channels. ONNX Runtime still fuses it into a QLinearConv
(its depthwise int8 kernel), the bits are those of the untiled form, and shapes where the form
measured slower are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.export.runtime_forms import TILED_CHANNELS, static_shapes
from qaas_engine.export.single_channel_conv import single_channel_depthwise
from tests.support.onnx_models import quantize_on_noise


def _conv_group(channels: int, kernel: int = 3, stride: int = 1, size: int = 8):
    """x -> Q/DQ (u8) -> Conv(DQ(int8 weight [C, 1, k, k]), DQ(int32 bias)) -> Relu -> Q/DQ."""
    rng = np.random.default_rng(0)
    weight_scale = rng.random(channels).astype(np.float32) / 50
    inits = [
        # within [-64, 64]: the untiled form's GEMM sums it exactly on any CPU (8-bit int8
        # weights overflow its int16 pair sums without an int8 dot product; targets.py)
        numpy_helper.from_array(
            rng.integers(-64, 65, (channels, 1, kernel, kernel)).astype(np.int8), "wq"
        ),
        numpy_helper.from_array(weight_scale, "ws"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
        numpy_helper.from_array(rng.integers(-500, 500, channels).astype(np.int32), "bq"),
        numpy_helper.from_array(weight_scale * np.float32(0.01), "bs"),
        numpy_helper.from_array(np.float32(0.01), "a_s"),
        helper.make_tensor("a_z", TensorProto.UINT8, [], [128]),
        numpy_helper.from_array(np.float32(0.02), "o_s"),
        helper.make_tensor("o_z", TensorProto.UINT8, [], [0]),
    ]
    pad = kernel // 2
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "a_s", "a_z"], ["x_d"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0),
        helper.make_node(
            "Conv", ["x_d", "w", "b"], ["c"], name="conv", pads=[pad] * 4, strides=[stride] * 2
        ),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "o_s", "o_z"], ["r_q"]),
        helper.make_node("DequantizeLinear", ["r_q", "o_s", "o_z"], ["y"]),
    ]
    out = size // stride
    graph = helper.make_graph(
        nodes,
        "entry",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels, out, out])],
        inits,
        value_info=[
            helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", channels, out, out])
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray, tmp_path=None) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if tmp_path is not None:
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_a_one_channel_conv_runs_as_a_depthwise_qlinearconv_with_the_same_bits(tmp_path):
    model = _conv_group(channels=32)
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    before = _run(model, x)
    assert single_channel_depthwise(model, static_shapes(model)) == ["conv"]
    (conv,) = [n for n in model.graph.node if n.op_type == "Conv"]
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")) == 32
    (tile,) = [n for n in model.graph.node if n.op_type == "Tile"]
    assert tile.input[0] == "x_q" and TILED_CHANNELS in tile.output[0]
    # the untiled input's DequantizeLinear is read by nothing now, and is gone
    assert not any(n.output[0] == "x_d" for n in model.graph.node)
    onnx.checker.check_model(model, full_check=True)
    after = _run(model, x, tmp_path)
    assert np.array_equal(before, after)
    optimized = onnx.load(tmp_path / "optimized.onnx")
    ops = [n.op_type for n in optimized.graph.node]
    assert ops.count("QLinearConv") == 1 and "DequantizeLinear" in ops
    assert ops.count("Conv") == 0  # nothing runs float


def test_eight_channels_run_depthwise_too(tmp_path):
    """8 channels measured faster tiled (1.27x at batch 32, lone conv); 24 (8 more than 16)
    measured slower and stays a GEMM (below)."""
    model = _conv_group(channels=8, size=16)
    x = np.random.default_rng(2).standard_normal((4, 1, 16, 16)).astype(np.float32)
    before = _run(model, x)
    assert single_channel_depthwise(model, static_shapes(model)) == ["conv"]
    assert np.array_equal(_run(model, x, tmp_path), before)
    optimized = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert optimized.count("QLinearConv") == 1 and optimized.count("Conv") == 0


def test_shapes_where_the_form_measured_slower_are_left_alone():
    for channels, kernel, stride, size in (
        (24, 3, 1, 8),
        (32, 5, 1, 8),
        (32, 3, 2, 8),
        (32, 3, 1, 64),
    ):
        model = _conv_group(channels, kernel, stride, size)
        before = model.SerializeToString()
        assert single_channel_depthwise(model, static_shapes(model)) == []
        assert model.SerializeToString() == before


def _entry_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((8, 16, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="entry", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="pointwise"),
    ]
    graph = helper.make_graph(
        nodes,
        "entry_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 12, 12])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_through_quantize_the_report_names_it_and_simulation_equals_runtime(tmp_path):
    result = quantize_on_noise(
        tmp_path, _entry_net(), QuantSpec(target="onnxruntime-cpu"), shape=(16, 1, 12, 12)
    )
    (entry,) = [n for n in result.quantized_model.graph.node if n.name == "entry"]
    assert any(a.name == "group" and a.i == 16 for a in entry.attribute)
    forms = result.report["target"]["runtime_forms"]
    assert forms["single_channel_convs_run_depthwise"] == ["entry"]
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0
