"""A Cast to the float type its input already has computes the same values, so its output
shares its input's grid (a pass-through): on a grid of its own the tensor before it was
requantized, and ONNX Runtime ran the Slices before it in float between a DequantizeLinear and
a QuantizeLinear (Silero VAD's STFT). A Cast that changes the type keeps its own grid."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.quant.placement import place_quantizers
from tests.support.onnx_models import quantize_on_noise


def _model(to: int) -> onnx.ModelProto:
    """conv -> two Slices of its channels -> Cast(``to``) each -> Pow 2 -> Add (an STFT's
    magnitude), then a conv."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.asarray([0], np.int64), "s0"),
        numpy_helper.from_array(np.asarray([4], np.int64), "s4"),
        numpy_helper.from_array(np.asarray([8], np.int64), "s8"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axis"),
        numpy_helper.from_array(np.float32(2.0), "two"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Slice", ["c", "s0", "s4", "axis"], ["real"], name="slice_real"),
        helper.make_node("Slice", ["c", "s4", "s8", "axis"], ["imag"], name="slice_imag"),
        helper.make_node("Cast", ["real"], ["real_cast"], name="cast_real", to=to),
        helper.make_node("Cast", ["imag"], ["imag_cast"], name="cast_imag", to=to),
    ]
    if to != TensorProto.FLOAT:
        nodes += [
            helper.make_node("Cast", ["real_cast"], ["real_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["imag_cast"], ["imag_f"], to=TensorProto.FLOAT),
        ]
    real, imag = ("real_cast", "imag_cast") if to == TensorProto.FLOAT else ("real_f", "imag_f")
    nodes += [
        helper.make_node("Pow", [real, "two"], ["re2"], name="pow_real"),
        helper.make_node("Pow", [imag, "two"], ["im2"], name="pow_imag"),
        helper.make_node("Add", ["re2", "im2"], ["power"], name="add"),
        helper.make_node("Conv", ["power", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "stft_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        inits,
    )
    return onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def test_a_cast_to_its_own_float_type_shares_its_input_grid():
    placement = place_quantizers(_model(TensorProto.FLOAT))
    assert placement.shared["real_cast"] == "real"
    assert placement.shared["imag_cast"] == "imag"
    assert "real_cast" not in placement.activations


def test_a_cast_that_changes_the_type_keeps_its_own_grid():
    placement = place_quantizers(_model(TensorProto.DOUBLE))
    assert "real_cast" not in placement.shared
    assert "real_cast" in placement.activations


def test_ort_slices_the_integers_and_simulation_equals_runtime(tmp_path):
    """Exported: the Slices read the conv's integers (no float Slice between a Dequantize and a
    Quantize in ORT's optimized graph), and the simulation computes what ORT computes."""
    result = quantize_on_noise(tmp_path, _model(TensorProto.FLOAT), QuantSpec())
    metrics = result.report["metrics"]
    assert metrics["simulation_vs_onnxruntime"]["max_abs_diff"] == 0.0
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(result.quantized_model.SerializeToString(), options)
    optimized = onnx.load(tmp_path / "optimized.onnx")
    producers = {out: node for node in optimized.graph.node for out in node.output}
    for node in optimized.graph.node:
        if node.op_type in ("Slice", "Split"):
            source = producers.get(node.input[0])
            assert source is None or source.op_type != "DequantizeLinear", node.name
