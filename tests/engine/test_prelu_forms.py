"""PReLU on ``onnxruntime-cpu``: between int8 kernels ORT runs it channels-last, where a
``[C, 1, 1]`` slope is walked C values a span; the export stores it tiled along the width,
``[C, 1, W]``, the same values (MTCNN ONet's PReLUs cost about as much as its QLinearConvs),
and writes the PRelu as ops ORT vectorizes (``Max(x, x * slope)``, or ``Relu(x) + Min(x, 0) *
slope`` where a slope exceeds 1), which give its values bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.export.runtime_forms import prelu_as_max, tiled_slope
from tests.support.onnx_models import conv_chain_model, quantize_on_noise


def _run(nodes: list[onnx.NodeProto], slopes: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    graph = helper.make_graph(
        nodes,
        "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(value, name) for name, value in slopes.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_tiled_slope_gives_prelus_values_bit_for_bit():
    rng = np.random.default_rng(0)
    slope = np.asarray([0.25, -0.1, 1.5, 1e-7, 0.0, 1.0, 0.33333334, -3.0], np.float32)
    slope = slope.reshape(8, 1, 1)
    x = rng.standard_normal((4, 8, 6, 6)).astype(np.float32) * 3
    tiled = tiled_slope(slope, ["n", 8, 6, 6])
    assert tiled is not None and tiled.shape == (8, 1, 6)
    prelu = helper.make_node("PRelu", ["x", "slope"], ["y"], name="p")
    expected = _run([prelu], {"slope": slope}, x)
    np.testing.assert_array_equal(_run([prelu], {"slope": tiled}, x), expected)


@pytest.mark.parametrize("largest", [1.0, 1.5])
def test_the_max_forms_give_prelus_values_bit_for_bit(largest):
    """Every slope kind (negative, zero, tiny, exactly 1, and above 1 for the Relu form) on
    values of every sign and scale, zeros of both signs included."""
    rng = np.random.default_rng(1)
    slope = np.asarray([0.25, -0.1, largest, 1e-7, 0.0, 1.0, 0.33333334, -3.0], np.float32)
    slope = slope.reshape(8, 1, 1)
    scales = 10.0 ** rng.integers(-30, 30, size=(4, 8, 6, 6))
    x = (rng.standard_normal((4, 8, 6, 6)) * scales).astype(np.float32)
    x[0, :, 0, 0], x[0, :, 0, 1] = 0.0, -0.0
    prelu = helper.make_node("PRelu", ["x", "slope"], ["y"], name="p")
    expected = _run([prelu], {"slope": slope}, x)
    nodes = prelu_as_max(prelu, slope, "zero")
    assert [n.op_type for n in nodes] == (
        ["Mul", "Max"] if largest <= 1 else ["Relu", "Min", "Mul", "Add"]
    )
    zero = {"zero": np.zeros((), np.float32)} if largest > 1 else {}
    got = _run(nodes, {"slope": slope, **zero}, x)
    np.testing.assert_array_equal(got, expected)
    # bit for bit, signs of zeros aside (a PRelu of -0.0 may give either; Q/DQ cannot tell)
    same_bits = got.view(np.uint32) == expected.view(np.uint32)
    assert np.all(same_bits | (expected == 0))


def test_a_slope_is_tiled_only_per_channel_along_a_known_axis():
    slope = np.full((8, 1, 1), 0.2, np.float32)
    assert tiled_slope(slope, ["n", 8, 6, ""]) is None  # width not known
    assert tiled_slope(slope, ["n", 8, 6, 1]) is None  # nothing to tile
    assert tiled_slope(np.full((1,), 0.2, np.float32), ["n", 8, 6, 6]) is None  # one slope
    assert tiled_slope(np.full((16,), 0.2, np.float32), ["n", 16]) is None  # already a span
    assert tiled_slope(np.full((1, 8, 1, 1), 0.2, np.float32), ["n", 8, 6, 6]).shape == (
        1,
        8,
        1,
        6,
    )


def _model(slopes: list[float]) -> onnx.ModelProto:
    """conv -> PRelu (per-channel slope) -> conv."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.asarray(slopes, np.float32).reshape(8, 1, 1), "slope"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c1", "slope"], ["p1"], name="prelu"),
        helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2"),
    ]
    return conv_chain_model(nodes, inits, "prelu")


def _quantized(tmp_path, model: onnx.ModelProto, spec: QuantSpec | None = None):
    return quantize_on_noise(tmp_path, model, spec)


SLOPES = [0.25, -0.1, 0.6, 0.05, 0.0, 1.0, 0.33, -0.47]


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "onnxruntime-cpu:avx2"])
@pytest.mark.parametrize("largest", [0.6, 1.4])
def test_the_prelu_reads_a_tiled_slope_and_the_simulation_is_exact(tmp_path, target, largest):
    slopes = [largest if s == 0.6 else s for s in SLOPES]
    result = _quantized(tmp_path, _model(slopes), QuantSpec(target=target))
    nodes = result.quantized_model.graph.node
    assert not [n for n in nodes if n.op_type == "PRelu"]
    (times_slope,) = [n for n in nodes if n.name == "prelu/times_slope"]
    (prelu,) = [n for n in nodes if n.name == "prelu"]
    assert prelu.op_type == ("Max" if largest <= 1 else "Add")
    stored = {init.name: list(init.dims) for init in result.quantized_model.graph.initializer}
    assert stored[times_slope.input[1]] == [8, 1, 8]  # tiled along the known width
    forms = result.report["target"]["runtime_forms"]
    assert forms["tiled_prelu_slopes"] == ["prelu"] and forms["prelus_as_max"] == ["prelu"]
    graph = result.report["metrics"]["runtime_graph"]
    assert graph["integer_kernels"] == {"QLinearConv": 2}
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0
    assert result.report["metrics"]["onnxruntime"]["sqnr_db"] > 25.0
    onnx.checker.check_model(result.quantized_model)


def test_a_prelu_on_a_float_input_keeps_its_slope(tmp_path):
    """Outside the int8 kernels ORT may run NCHW, where a [C, 1, 1] slope is the long span."""
    spec = QuantSpec(keep_float_nodes=("conv1",))
    result = _quantized(tmp_path, _model(SLOPES), spec)
    (prelu,) = [n for n in result.quantized_model.graph.node if n.op_type == "PRelu"]
    assert prelu.input[1] == "slope"
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0


def test_targets_not_run_here_keep_the_slope(tmp_path):
    result = _quantized(tmp_path, _model(SLOPES), QuantSpec(target="tensorrt"))
    (prelu,) = [n for n in result.quantized_model.graph.node if n.op_type == "PRelu"]
    assert prelu.input[1] == "slope"
