"""A Div or Mul by a positive constant scalar on ``onnxruntime-cpu``: its output is put on its
input's grid scaled by the constant, so its integers are the input's own and the export reads
them with a DequantizeLinear, with no op for ONNX Runtime to run (it has no integer Div: a
hardswish written ``x * relu6(x + 3) / 6`` ran its division float between a DQ and a Q)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs
from qaas_engine.export.qdq import export_qdq
from qaas_engine.pipeline import build_sim, build_state
from qaas_engine.quant.encoding import Encoding, QuantScheme
from qaas_engine.quant.placement import place_quantizers
from qaas_engine.state import Timer
from tests.support.onnx_models import conv_chain_model, quantize_on_noise


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("factor", [1 / 6, 1 / 3, 0.1, 0.73, 6.0, 1e-3, 37.5])
def test_quantizing_a_scaled_value_on_the_scaled_grid_gives_its_integers_back(bits, factor):
    rng = np.random.default_rng(bits)
    scheme = QuantScheme(bits=bits, symmetric=False, signed=False, per_channel=False)
    for low, high in [(-3.1, 7.9), (0.0, 6.0), (-0.02, 0.05), (-250.0, 13.0)]:
        encoding = Encoding.from_range(scheme, low, high)
        integers = np.arange(scheme.qmin, scheme.qmax + 1)
        values = encoding.fake_quantize_array(
            rng.uniform(low, high, 4096).astype(np.float32)
        ).astype(np.float32)
        # every integer of the grid, and values as the runtime dequantizes them
        grid = ((integers - encoding.zero_point) * encoding.scale).astype(np.float32)
        for x in (values, grid):
            y = (x * np.float32(factor)).astype(np.float32)
            scaled = encoding.scaled(factor)
            np.testing.assert_array_equal(scaled.quantize_array(y), encoding.quantize_array(x))


def _model(op: str, constant: float, constant_first: bool = False) -> onnx.ModelProto:
    """conv -> op(constant) -> conv."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.float32(constant), "k"),
    ]
    inputs = ["k", "c1"] if constant_first else ["c1", "k"]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(op, inputs, ["s1"], name="scale"),
        helper.make_node("Conv", ["s1", "w2"], ["y"], name="conv2"),
    ]
    return conv_chain_model(nodes, inits, "scaled")


@pytest.mark.parametrize(
    ("op", "constant", "constant_first", "factor"),
    [
        ("Div", 6.0, False, 1 / 6),
        ("Mul", 0.73, False, float(np.float32(0.73))),  # the stored float32 constant
        ("Mul", 0.73, True, float(np.float32(0.73))),
        ("Div", -6.0, False, None),  # a negative scale is no grid
        ("Div", 6.0, True, None),  # 6 / x is no scaling
        ("Div", 0.0, False, None),
        ("Add", 3.0, False, None),
    ],
)
def test_placement_finds_scalings_by_a_positive_constant(op, constant, constant_first, factor):
    placement = place_quantizers(_model(op, constant, constant_first))
    if factor is None:
        assert placement.scaled == {}
    else:
        source, found = placement.scaled["s1"]
        assert source == "c1" and found == pytest.approx(factor, rel=1e-12)
    for target in ("tensorrt", "qnn-htp"):  # the other targets quantize it as they document
        assert place_quantizers(_model(op, constant, constant_first), target=target).scaled == {}


def _quantized(tmp_path, model: onnx.ModelProto, spec: QuantSpec | None = None):
    return quantize_on_noise(tmp_path, model, spec)


@pytest.mark.parametrize(("op", "constant"), [("Div", 6.0), ("Mul", 0.73)])
def test_the_scaling_runs_as_no_op_and_the_simulation_is_exact(tmp_path, op, constant):
    result = _quantized(tmp_path, _model(op, constant))
    exported = [node.op_type for node in result.quantized_model.graph.node]
    assert op not in exported
    graph = result.report["metrics"]["runtime_graph"]
    assert graph["integer_kernels"] == {"QLinearConv": 2}
    assert graph["quantize_linear"] == 1 and graph["dequantize_linear"] == 1
    gap = result.report["metrics"]["simulation_vs_onnxruntime"]
    assert gap["max_abs_diff"] == 0.0
    onnx.checker.check_model(result.quantized_model)
    # against float: the scaling is exact, so the error is the two convs' and the grids'
    assert result.report["metrics"]["onnxruntime"]["sqnr_db"] > 25.0
    reads = result.report["target"]["scaled_reads"]
    assert reads["ops"] == 1 and reads["tensors"] == ["s1"]


def test_a_grid_moved_off_the_scaled_one_keeps_the_op(tmp_path):
    """Where something set the output's grid apart (a rule, a learned range), the export writes
    the op and its Q as before: still what the simulation computes."""
    path = tmp_path / "model.onnx"
    onnx.save(_model("Div", 6.0), path)
    data = tmp_path / "calibration.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((16, 4, 8, 8), np.float32))
    imported = import_model(path)
    state = build_state(imported, QuantSpec(), load_npz(data, model_inputs(imported.model)), None)
    sim = build_sim(state, Timer())
    assert "Div" not in [node.op_type for node in export_qdq(state.model, sim).graph.node]
    moved = sim.activation_encodings["s1"]
    sim.activation_encodings["s1"] = Encoding(moved.scheme, moved.scale * 1.5, moved.zero_point)
    exported = export_qdq(state.model, sim)
    assert "Div" in [node.op_type for node in exported.graph.node]
    onnx.checker.check_model(exported)


def test_no_dequantize_is_left_unread(tmp_path):
    result = _quantized(tmp_path, _model("Div", 6.0))
    graph = result.quantized_model.graph
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            assert node.output[0] in read


def test_strict_bits_places_the_same_scaled_grid(tmp_path):
    """The scaled grid is where the runtime's integers are, not a rule's choice: strict bits
    keeps it (the grids are the spec's, 8 bits)."""
    result = _quantized(tmp_path, _model("Div", 6.0), QuantSpec(strict_bits=True))
    assert "Div" not in [node.op_type for node in result.quantized_model.graph.node]
    assert result.report["metrics"]["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0
