"""``If`` at import: a constant condition is inlined and quantized; work behind a runtime
condition is refused with that reason, never exported without Q/DQ."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.data import model_inputs, validate_arrays
from qaas_engine.errors import UnsupportedOpError
from qaas_engine.flow import quantize
from qaas_engine.importer import import_model

WEIGHT = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


def _branch(name: str, scale: float, inner: onnx.NodeProto | None = None) -> onnx.GraphProto:
    """x @ (scale * W), with W a branch-local initializer named like the outer ``y``."""
    weight = numpy_helper.from_array(WEIGHT * scale, "y")  # collides with the outer output
    nodes = [helper.make_node("MatMul", ["x", "y"], [f"{name}_out"], name=f"{name}_matmul")]
    if inner is not None:
        nodes = [inner, helper.make_node("MatMul", ["x", "y"], [f"{name}_mm"], name="mm")]
        nodes.append(helper.make_node("Add", [f"{name}_mm", "inner_out"], [f"{name}_out"]))
    out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["batch", 3])
    return helper.make_graph(nodes, name, [], [out], [weight])


def _if_model(condition: onnx.NodeProto | None, nested: bool = False) -> onnx.ModelProto:
    inner = None
    if nested:
        inner_cond = helper.make_node(
            "Constant", [], ["inner_cond"], value=numpy_helper.from_array(np.array(False))
        )
        inner_if = helper.make_node(
            "If",
            ["inner_cond"],
            ["inner_out"],
            name="inner_if",
            then_branch=_branch("inner_then", 10.0),
            else_branch=_branch("inner_else", -0.5),
        )
        inner = inner_if
    then_branch = _branch("then", 1.0, inner)
    if nested:
        then_branch.node.insert(0, inner_cond)
    node = helper.make_node(
        "If",
        ["cond"],
        ["y"],
        name="outer_if",
        then_branch=then_branch,
        else_branch=_branch("else", 2.0),
    )
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])]
    nodes = [node]
    if condition is None:
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    else:
        nodes.insert(0, condition)
    relu = helper.make_node("Relu", ["y"], ["out"], name="relu")
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])]
    graph = helper.make_graph([*nodes, relu], "if_model", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _constant_true() -> onnx.NodeProto:
    return helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True)))


@pytest.mark.parametrize("nested", [False, True])
def test_constant_if_is_inlined_and_quantized(tmp_path, nested):
    path = tmp_path / "if.onnx"
    source = _if_model(_constant_true(), nested)
    onnx.save(source, path)
    imported = import_model(path)
    ops = [node.op_type for node in imported.model.graph.node]
    assert "If" not in ops and ops.count("MatMul") == (2 if nested else 1)
    used = {name for node in imported.model.graph.node for name in node.input}
    assert all(init.name in used for init in imported.model.graph.initializer)
    assert any("If nodes on a constant condition" in note for note in imported.notes)

    x = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    inputs = model_inputs(imported.model)
    calibration = validate_arrays({"x": x}, inputs, role="calibration", source="x")
    result = quantize(imported, QuantSpec(), calibration=calibration)
    qdq = result.quantized_model
    dequantized = [n for n in qdq.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequantized) >= 2 * ops.count("MatMul")  # every weight and its input
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    (quantized,) = session.run(None, {"x": x})
    float_session = ort.InferenceSession(
        source.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (expected,) = float_session.run(None, {"x": x})
    error = np.abs(quantized - expected).max() / np.abs(expected).max()
    assert 0 < error < 0.05


def test_work_behind_a_runtime_condition_is_refused(tmp_path):
    path = tmp_path / "if.onnx"
    onnx.save(_if_model(None), path)
    with pytest.raises(UnsupportedOpError, match="If at node 'outer_if'.*MatMul.*control flow"):
        import_model(path)


def test_glue_behind_a_runtime_condition_runs_float_between_quantized_layers(tmp_path):
    """An If that only picks a sign (no weights inside) stays in the graph and runs float; the
    MatMuls before and after it are quantized."""
    rng = np.random.default_rng(3)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), name)
        for name in ("w1", "w2")
    ]
    out = helper.make_tensor_value_info

    def branch(op: str) -> onnx.GraphProto:
        node = helper.make_node(op, ["a"], [f"{op}_out"])
        return helper.make_graph(
            [node], op, [], [out(f"{op}_out", TensorProto.FLOAT, ["batch", 4])]
        )

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="first"),
        helper.make_node(
            "If",
            ["flip"],
            ["b"],
            name="sign",
            then_branch=branch("Neg"),
            else_branch=branch("Identity"),
        ),
        helper.make_node("MatMul", ["b", "w2"], ["y"], name="last"),
    ]
    inputs = [out("x", TensorProto.FLOAT, ["batch", 4]), out("flip", TensorProto.BOOL, [1])]
    graph = helper.make_graph(
        nodes, "g", inputs, [out("y", TensorProto.FLOAT, ["batch", 4])], weights
    )
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "glue.onnx"
    onnx.save(source, path)
    imported = import_model(path)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    flip = (np.arange(16) % 2 == 0)[:, None]  # one flag per sample, both branches seen
    calibration = validate_arrays(
        {"x": x[:, None], "flip": flip}, model_inputs(imported.model), role="c", source="x"
    )
    result = quantize(imported, QuantSpec(), calibration=calibration)
    qdq = result.quantized_model
    producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
    matmuls = [n for n in qdq.graph.node if n.op_type == "MatMul"]
    assert all(producers.get(n.input[1]) == "DequantizeLinear" for n in matmuls)
    assert any(n.op_type == "If" for n in qdq.graph.node)
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])
    for value in (True, False):
        feeds = {"x": x[:4], "flip": np.array([value])}
        (actual,) = session.run(None, feeds)
        (expected,) = reference.run(None, feeds)
        assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 0.05


def _shape_condition_model(index: int) -> onnx.ModelProto:
    """``if state.shape[index]:`` (as silero-vad exports it) picks one of two MatMul branches;
    ``state`` is [2, batch, 4], so index 0 reads a static dim and index 1 the batch."""
    out = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Shape", ["state"], ["shape"]),
        helper.make_node("Gather", ["shape", "index"], ["dim"], axis=0),
        helper.make_node("Cast", ["dim"], ["cond"], to=TensorProto.BOOL),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="outer_if",
            then_branch=_branch("then", 1.0),
            else_branch=_branch("else", 2.0),
        ),
        helper.make_node("Relu", ["y"], ["out"], name="relu"),
    ]
    inputs = [
        out("x", TensorProto.FLOAT, ["batch", 4]),
        out("state", TensorProto.FLOAT, [2, "batch", 4]),
    ]
    index_value = numpy_helper.from_array(np.array(index, np.int64), "index")
    graph = helper.make_graph(
        nodes, "shape_if", inputs, [out("out", TensorProto.FLOAT, ["batch", 3])], [index_value]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_if_on_a_static_dim_takes_its_branch_and_is_quantized(tmp_path):
    path = tmp_path / "shape_if.onnx"
    source = _shape_condition_model(index=0)
    onnx.save(source, path)
    imported = import_model(path)
    assert "If" not in [node.op_type for node in imported.model.graph.node]
    assert any("Shape reads of static dims" in note for note in imported.notes)

    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    state = rng.standard_normal((16, 2, 1, 4)).astype(np.float32)  # one [2, 1, 4] per sample
    calibration = validate_arrays(
        {"x": x, "state": state}, model_inputs(imported.model), role="c", source="x"
    )
    qdq = quantize(imported, QuantSpec(), calibration=calibration).quantized_model
    producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
    (matmul,) = [n for n in qdq.graph.node if n.op_type == "MatMul"]
    assert producers[matmul.input[1]] == "DequantizeLinear"
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": x[:8], "state": np.zeros((2, 8, 4), np.float32)}  # another batch size
    (actual,) = session.run(None, feeds)
    (expected,) = reference.run(None, feeds)
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 0.05


def test_if_on_the_batch_dim_stays_refused(tmp_path):
    path = tmp_path / "batch_if.onnx"
    onnx.save(_shape_condition_model(index=1), path)
    with pytest.raises(UnsupportedOpError, match="If at node 'outer_if'.*MatMul"):
        import_model(path)


def test_a_nested_body_reading_a_renamed_branch_value_still_runs(tmp_path):
    """Both branches define ``h``, so the inlined one is renamed; the If nested in it reads
    ``h`` from its enclosing scope and must follow the rename."""
    out = helper.make_tensor_value_info

    def nested_reader(name: str) -> onnx.GraphProto:
        node = helper.make_node("Neg", ["h"], [f"{name}_out"])
        return helper.make_graph([node], name, [], [out(f"{name}_out", TensorProto.FLOAT, None)])

    def branch(name: str, scale: float) -> onnx.GraphProto:
        weight = numpy_helper.from_array(WEIGHT * scale, "w")
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["h"], name=f"{name}_matmul"),
            helper.make_node(
                "If",
                ["flag"],
                [f"{name}_out"],
                then_branch=nested_reader(f"{name}_neg"),
                else_branch=helper.make_graph(
                    [helper.make_node("Identity", ["h"], [f"{name}_id"])],
                    f"{name}_id",
                    [],
                    [out(f"{name}_id", TensorProto.FLOAT, None)],
                ),
            ),
        ]
        return helper.make_graph(
            nodes, name, [], [out(f"{name}_out", TensorProto.FLOAT, ["batch", 3])], [weight]
        )

    nodes = [
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node(
            "If", ["cond"], ["h"], then_branch=branch("a", 1.0), else_branch=branch("b", 2.0)
        ),
    ]
    inputs = [out("x", TensorProto.FLOAT, ["batch", 4]), out("flag", TensorProto.BOOL, [])]
    graph = helper.make_graph(nodes, "g", inputs, [out("h", TensorProto.FLOAT, ["batch", 3])])
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "nested.onnx"
    onnx.save(source, path)
    imported = import_model(path)
    session = ort.InferenceSession(
        imported.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    reference = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        np.testing.assert_allclose(session.run(None, feeds)[0], reference.run(None, feeds)[0])
