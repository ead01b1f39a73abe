"""``--keep-float`` names any op type, RNNs and ops without a torch kernel included; recurrent
and foreign-domain nodes compute in float with the quantized parts around them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.cli import build_parser, spec_from_args
from qaas_engine import QuantSpec
from qaas_engine.data import model_inputs, validate_arrays
from qaas_engine.flow import quantize
from qaas_engine.importer import ImportedModel
from qaas_engine.quant.placement import place_quantizers


def _spec(keep: str):
    args = build_parser().parse_args(["quantize", "m.onnx", "-o", "out", "--keep-float", keep])
    return spec_from_args(args)


def test_keep_float_sorts_op_types_from_node_names():
    spec = _spec("GRU, LSTM,RNN,Conv,LRN,encoder/attention_3,conv")
    assert spec.keep_float_ops == ("GRU", "LSTM", "RNN", "Conv", "LRN")
    assert spec.keep_float_nodes == ("encoder/attention_3", "conv")  # op types are case-exact


def _model(middle: onnx.NodeProto, extra_inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """MatMul -> middle -> MatMul, so the quantized parts around ``middle`` are visible."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w2"),
        *extra_inits,
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="first"),
        middle,
        helper.make_node("MatMul", ["b", "w2"], ["y"], name="last"),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "g",
        [value("x", TensorProto.FLOAT, [2, 4])],
        [value("y", TensorProto.FLOAT, [2, 4])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=opsets))


def test_foreign_domain_node_stays_float_between_quantized_layers():
    gelu = helper.make_node("Gelu", ["a"], ["b"], name="ms_gelu", domain="com.microsoft")
    placement = place_quantizers(_model(gelu, []))
    assert set(placement.weights) == {"w1", "w2"}
    assert "a" in placement.activations  # the foreign node reads a quantized input
    assert "b" in placement.skipped and "com.microsoft" in placement.skipped["b"]


def test_kept_float_op_type_without_a_kernel():
    tanh = helper.make_node("Softsign", ["a"], ["b"], name="soft")
    model = _model(tanh, [])
    assert "b" in place_quantizers(model).activations
    placement = place_quantizers(model, keep_float_ops=frozenset({"Softsign"}))
    assert placement.skipped["b"] == "node 'soft' (Softsign) kept in float"
    assert set(placement.weights) == {"w1", "w2"}


def test_recurrent_ops_run_float_with_float_weights():
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "gru_w")
    r = numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "gru_r")
    gru = helper.make_node("GRU", ["a3", "gru_w", "gru_r"], ["seq"], hidden_size=4, name="gru")
    model = _model(gru, [w, r])
    graph = model.graph
    # reshape a -> [2, 1, 4] (seq, batch, features) for the GRU and back for the last MatMul
    shape3 = numpy_helper.from_array(np.array([2, 1, 4], np.int64), "shape3")
    shape2 = numpy_helper.from_array(np.array([2, 4], np.int64), "shape2")
    graph.initializer.extend([shape3, shape2])
    graph.node.insert(1, helper.make_node("Reshape", ["a", "shape3"], ["a3"]))
    graph.node.insert(3, helper.make_node("Reshape", ["seq", "shape2"], ["b"]))
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    placement = place_quantizers(model)
    assert set(placement.weights) == {"w1", "w2"}  # never the GRU's W or R
    assert "no integer kernel" in placement.skipped["seq"]
    assert "b" not in placement.activations and "b" not in placement.shared


def test_kept_float_op_is_exported_float_and_listed_as_excluded():
    sigmoid = helper.make_node("Sigmoid", ["a"], ["b"], name="gate")
    model = _model(sigmoid, [])
    imported = ImportedModel(model, "onnx", 17)
    x = np.random.default_rng(2).standard_normal((16, 2, 4)).astype(np.float32)  # stacked
    calibration = validate_arrays({"x": x}, model_inputs(model), role="calibration", source="x")
    spec = QuantSpec(keep_float_ops=("Sigmoid",))
    result = quantize(imported, spec, calibration=calibration)
    consumers = [n.op_type for n in result.quantized_model.graph.node if "b" in n.input]
    assert consumers == ["MatMul"]  # the Sigmoid's output reaches the MatMul unquantized
    assert "gate" in result.encodings["excluded_layers"]
    assert "b" in result.report["quantizers"]["kept_float"]


def _stateful_model() -> onnx.ModelProto:
    """A streaming net's shape: ``x`` -> MatMul -> LSTM (its initial state the ``state``
    input) -> Relu -> MatMul -> ``logits``; the LSTM's last state, plus a constant, is the
    ``state_out`` output fed back by the caller."""
    rng = np.random.default_rng(4)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    hidden = 8
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["features"], name="embed"),
        helper.make_node(
            "LSTM",
            ["features", "lstm_w", "lstm_r", "", "", "state"],
            ["sequence", "last"],
            hidden_size=hidden,
            name="lstm",
        ),
        helper.make_node("Add", ["last", "zero"], ["state_out"], name="keep_state"),
        helper.make_node("Squeeze", ["sequence", "axes"], ["squeezed"]),
        helper.make_node("Relu", ["squeezed"], ["relu"], name="relu"),
        helper.make_node("MatMul", ["relu", "w_out"], ["logits"], name="head"),
    ]
    inits = [
        init("w_in", 4, 6),
        init("lstm_w", 1, 4 * hidden, 6),
        init("lstm_r", 1, 4 * hidden, hidden),
        init("w_out", hidden, 3),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "stateful",
        [info("x", TensorProto.FLOAT, [2, 1, 4]), info("state", TensorProto.FLOAT, [1, 1, hidden])],
        [info("logits", TensorProto.FLOAT, [2, 1, 3]), info("state_out", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def test_a_recurrent_state_made_and_read_in_float_gets_no_grid():
    placement = place_quantizers(_stateful_model())
    for name in ("state", "state_out"):  # an input only the LSTM reads; an Add of its output
        assert name not in placement.activations
        assert "between float nodes" in placement.skipped[name]
    # the weighted ops keep theirs: the embedding's input and output, the head's input
    assert {"x", "features", "relu"} <= set(placement.activations)
    assert set(placement.weights) == {"w_in", "w_out"}


def test_a_region_of_element_wise_ops_only_keeps_its_grids():
    """No float node beside it: the Add is quantized as ONNX Runtime's QDQ Add would be."""
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "add",
        [info("a", TensorProto.FLOAT, [2, 3]), info("b", TensorProto.FLOAT, [2, 3])],
        [info("c", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert place_quantizers(model).activations == ["a", "b", "c"]
