"""Foreign-domain nodes computed by ONNX Runtime, one node at a time, for calibration."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.data import model_inputs, validate_arrays
from qaas_engine.flow import quantize
from qaas_engine.importer import import_model
from qaas_engine.onnxruntime_ops import OnnxRuntimeKernel, onnxruntime_knows

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def test_contrib_op_matches_torch_for_any_batch():
    node = helper.make_node(
        "FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft", alpha=0.5, transB=1
    )
    assert onnxruntime_knows(node)
    kernel = OnnxRuntimeKernel(node, 17)
    weight = torch.randn(3, 4)
    for batch in (2, 5):  # one session serves every batch size
        x = torch.randn(batch, 4)
        (y,) = kernel.run([x, weight])
        torch.testing.assert_close(y, 0.5 * x @ weight.T)
    assert len(kernel.sessions) == 1


def test_contrib_and_ml_ops_keep_their_dtypes_and_output_positions():
    gelu = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    (y,) = OnnxRuntimeKernel(gelu, 17).run([torch.linspace(-3, 3, 7)])
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
    (v,) = OnnxRuntimeKernel(label, 17, domain_version=2).run([torch.tensor([2, 7])])
    assert v.dtype == torch.int64 and v.tolist() == [20, -1]
    # SkipLayerNormalization with its optional mean output not requested
    norm = helper.make_node(
        "SkipLayerNormalization", ["x", "skip", "g"], ["n", "", "inv"], domain="com.microsoft"
    )
    x, skip = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    normed, skipped, inv_std = OnnxRuntimeKernel(norm, 17).run([x, skip, torch.ones(4)])
    assert skipped is None and inv_std.numel() == 6
    expected = torch.nn.functional.layer_norm(x + skip, (4,), eps=1e-12)
    torch.testing.assert_close(normed, expected, atol=1e-4, rtol=0)


def test_unknown_custom_op_is_not_claimed():
    node = helper.make_node("MyOp", ["x"], ["y"], domain="com.example")
    assert not onnxruntime_knows(node)


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
