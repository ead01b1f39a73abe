"""PReLU on ``onnxruntime-cpu``: exported as ``Max(x, x * slope)`` (or Min), the same values as
ONNX Runtime's float PRelu kernel, which is several times slower than the two ops together
(MTCNN ONet's five PReLUs cost half of its int8 artifact's time at batch 32)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.export.runtime_forms import prelu_as_max_min
from tests.support.onnx_models import conv_chain_model


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


@pytest.mark.parametrize(
    "slopes",
    [
        [0.25, 0.1, 1e-7, 0.999999, 0.0, 1.0, 0.33333334, 0.7],  # in [0, 1]
        [-0.47, 0.65, -1e-3, 0.0, -3.0, 1.0, 0.2, -0.9],  # any slope up to 1: Max
        [1.0, 1.5, 3.0, 1.0000001, 7.25, 100.0, 2.0, 1.3],  # from 1 up: Min
    ],
)
def test_the_max_min_form_gives_prelus_values_bit_for_bit(slopes):
    rng = np.random.default_rng(0)
    slope = np.asarray(slopes, np.float32).reshape(8, 1, 1)
    x = np.concatenate(
        [
            rng.standard_normal((4, 8, 6, 6)).astype(np.float32) * 3,
            rng.uniform(-1e-30, 1e-30, (2, 8, 6, 6)).astype(np.float32),  # products underflow
            rng.uniform(-3e38, 3e38, (2, 8, 6, 6)).astype(np.float32),  # and overflow
            np.zeros((1, 8, 6, 6), np.float32),
        ]
    )
    prelu = helper.make_node("PRelu", ["x", "slope"], ["y"], name="p")
    expected = _run([prelu], {"slope": slope}, x)
    for shape in ([0, 8, 6, 6], [9, 8, 6, 6]):  # last axis unknown or known
        forms = prelu_as_max_min(prelu, slope, shape)
        if shape[-1] == 0:
            assert forms is None  # a per-channel slope untiled: the PRelu is faster
            continue
        assert forms is not None
        nodes, tiled = forms
        assert [node.op_type for node in nodes] == ["Mul", "Max" if max(slopes) <= 1 else "Min"]
        assert tiled is not None and tiled.shape == (8, 1, 6)
        np.testing.assert_array_equal(_run(nodes, {nodes[0].input[1]: tiled}, x), expected)


def test_a_slope_along_the_last_axis_or_a_scalar_is_not_tiled():
    prelu = helper.make_node("PRelu", ["x", "slope"], ["y"], name="p")
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    slope = np.linspace(-0.5, 0.9, 16, dtype=np.float32)
    for value in (slope, np.float32(0.2).reshape(1)):
        forms = prelu_as_max_min(prelu, value, [4, 16])
        assert forms is not None and forms[1] is None
        assert forms[0][0].input[1] == "slope"
        expected = _run([prelu], {"slope": value}, x)
        np.testing.assert_array_equal(_run(forms[0], {"slope": value}, x), expected)


def test_slopes_on_both_sides_of_one_keep_the_prelu():
    prelu = helper.make_node("PRelu", ["x", "slope"], ["y"], name="p")
    assert prelu_as_max_min(prelu, np.asarray([0.5, 1.5], np.float32), [2, 2]) is None
    assert prelu_as_max_min(prelu, np.asarray([0.5, np.nan], np.float32), [2, 2]) is None


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
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    data = tmp_path / "calibration.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((16, 4, 8, 8), np.float32))
    imported = import_model(path)
    calibration = load_npz(data, model_inputs(imported.model))
    return quantize(imported, spec or QuantSpec(), calibration=calibration)


SLOPES = [0.25, -0.1, 0.6, 0.05, 0.0, 1.0, 0.33, -0.47]


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "onnxruntime-cpu:avx2"])
def test_the_prelu_runs_as_max_and_the_simulation_is_exact(tmp_path, target):
    result = _quantized(tmp_path, _model(SLOPES), QuantSpec(target=target))
    exported = [node.op_type for node in result.quantized_model.graph.node]
    assert "PRelu" not in exported and exported.count("Max") == 1
    (mul,) = [node for node in result.quantized_model.graph.node if node.op_type == "Mul"]
    stored = {init.name: list(init.dims) for init in result.quantized_model.graph.initializer}
    assert stored[mul.input[1]] == [8, 1, 8]  # tiled along the known width
    graph = result.report["metrics"]["runtime_graph"]
    assert graph["integer_kernels"] == {"QLinearConv": 2}
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0
    assert result.report["metrics"]["onnxruntime"]["sqnr_db"] > 25.0
    onnx.checker.check_model(result.quantized_model)


def test_a_prelu_with_slopes_across_one_is_kept_and_exact(tmp_path):
    result = _quantized(tmp_path, _model([*SLOPES[:-1], 1.5]))
    assert "PRelu" in [node.op_type for node in result.quantized_model.graph.node]
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0


def test_targets_not_run_here_keep_the_prelu(tmp_path):
    result = _quantized(tmp_path, _model(SLOPES), QuantSpec(target="tensorrt"))
    assert "PRelu" in [node.op_type for node in result.quantized_model.graph.node]
