"""Foreign-domain nodes computed by ONNX Runtime, one node at a time, for calibration."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.data import model_inputs, validate_arrays
from qaas_engine.errors import UnsupportedOpError
from qaas_engine.flow import quantize
from qaas_engine.graph.registry import NodeContext
from qaas_engine.importer import import_model
from qaas_engine.onnxruntime_ops import onnxruntime_knows, onnxruntime_op

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def test_contrib_op_matches_torch_for_any_batch():
    node = helper.make_node(
        "FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft", alpha=0.5, transB=1
    )
    assert onnxruntime_knows(node)
    op = onnxruntime_op(node, OPSETS)
    context = NodeContext("FusedMatMul", "fused", {}, 17, 1)
    weight = torch.randn(3, 4)
    for batch in (2, 5):  # one session serves every batch size
        x = torch.randn(batch, 4)
        (y,) = op(context, [x, weight])
        torch.testing.assert_close(y, 0.5 * x @ weight.T)


def test_contrib_and_ml_ops_keep_their_dtypes():
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    (y,) = onnxruntime_op(node, OPSETS)(NodeContext("Gelu", "g"), [torch.linspace(-3, 3, 7)])
    torch.testing.assert_close(y, torch.nn.functional.gelu(torch.linspace(-3, 3, 7)))
    label = helper.make_node(
        "LabelEncoder",
        ["k"],
        ["v"],
        domain="ai.onnx.ml",
        keys_int64s=[1, 2],
        values_int64s=[10, 20],
        default_int64=-1,
    )
    opsets = [*OPSETS, helper.make_opsetid("ai.onnx.ml", 2)]
    (v,) = onnxruntime_op(label, opsets)(NodeContext("LabelEncoder", "l"), [torch.tensor([2, 7])])
    assert v.tolist() == [20, -1]


def test_unknown_custom_op_is_not_claimed():
    node = helper.make_node("MyOp", ["x"], ["y"], domain="com.example")
    assert not onnxruntime_knows(node)


@pytest.mark.xfail(
    strict=True,
    raises=UnsupportedOpError,
    reason="the graph executor (op-coverage branch) does not yet dispatch foreign-domain nodes "
    "to onnxruntime_op",
)
def test_model_with_contrib_op_quantizes_around_it(tmp_path):
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), name)
        for name in ("w1", "w2")
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="first"),
        helper.make_node("Gelu", ["a"], ["b"], name="ms_gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["b", "w2"], ["y"], name="last"),
    ]
    graph = helper.make_graph(
        nodes,
        "contrib",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])],
        weights,
    )
    path = tmp_path / "contrib.onnx"
    source = helper.make_model(graph, opset_imports=OPSETS)
    onnx.save(source, path)
    imported = import_model(path)
    x = rng.standard_normal((32, 8)).astype(np.float32)
    inputs = model_inputs(imported.model)
    calibration = validate_arrays({"x": x}, inputs, role="calibration", source="x")
    quantized = quantize(imported, QuantSpec(), calibration=calibration).quantized_model
    ops = [node.op_type for node in quantized.graph.node]
    assert "Gelu" in ops and ops.count("DequantizeLinear") >= 4  # two weights, two inputs
    options = {"providers": ["CPUExecutionProvider"]}
    (actual,) = ort.InferenceSession(quantized.SerializeToString(), **options).run(None, {"x": x})
    (expected,) = ort.InferenceSession(source.SerializeToString(), **options).run(None, {"x": x})
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 0.05
