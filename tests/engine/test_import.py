"""Model import: real exporter output accepted, malformed or unsafe uploads refused by name."""

import io
import pickle
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import ModelImportError, UnsupportedOpError, import_model
from tests.conftest import TinyCNN, export_legacy


def test_real_export_imports_with_bn_and_shapes(tiny_model):
    imported = import_model(tiny_model)
    ops = {n.op_type for n in imported.model.graph.node}
    assert {"Conv", "BatchNormalization", "Relu", "Clip", "Gemm"} <= ops
    assert imported.source_format == "onnx"
    assert len(imported.model.graph.value_info) > 0  # shape inference ran


def test_old_opset_is_upgraded_not_refused(tmp_path):
    path = export_legacy(TinyCNN(), tmp_path / "old.onnx", torch.randn(1, 1, 8, 8), opset=11)
    imported = import_model(path)
    assert imported.original_opset == 11
    assert any(o.version >= 13 for o in imported.model.opset_import if o.domain == "")
    assert any("upgraded" in note for note in imported.notes)


def test_random_bytes_are_not_a_model(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelImportError, match="not an ONNX model"):
        import_model(path)


def test_truncated_onnx_is_named(tiny_model, tmp_path):
    data = tiny_model.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelImportError, match="truncated|not an ONNX model"):
        import_model(path)


def test_pickle_disguised_as_pt2_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the upload was unpickled",))

    path = tmp_path / "model.pt2"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelImportError, match="pickle"):
        import_model(path)


def test_torch_save_checkpoint_named_pt2_is_refused(tmp_path):
    path = tmp_path / "weights.pt2"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelImportError, match="torch.save checkpoint"):
        import_model(path)


def test_pt2_with_pickled_tensor_entry_is_refused(tmp_path):
    program = torch.export.export(TinyCNN().eval(), (torch.randn(1, 1, 8, 8),))
    good = tmp_path / "good.pt2"
    torch.export.save(program, good)
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("model_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            dst.writestr(info, data)
    with pytest.raises(ModelImportError, match="pickle"):
        import_model(bad)


def test_pt2_archive_converts_to_onnx_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    module = TinyCNN().eval()
    x = torch.randn(2, 1, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    imported = import_model(path)
    assert imported.source_format == "pt2"
    from qaas_engine.graph.executor import GraphExecutor

    executor = GraphExecutor(imported.model)
    out = executor.run({executor.input_names[0]: x})[executor.output_names[0]]
    torch.testing.assert_close(out, module(x), atol=1e-4, rtol=1e-4)


def _graph_model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_unsupported_op_names_op_and_node(tmp_path):
    """An op neither a torch kernel nor ONNX's reference implementation computes is refused."""
    model = _graph_model(
        [helper.make_node("Frobnicate", ["x"], ["y"], name="frob_1", domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "frob.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOpError, match="Frobnicate .* at node 'frob_1'"):
        import_model(path)


def test_already_quantized_model_is_refused(tmp_path):
    model = _graph_model(
        [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q0")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s")],
    )
    path = tmp_path / "q.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelImportError, match="already quantized"):
        import_model(path)


def _external_model(location: str):
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    return _graph_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_the_upload_is_refused(tmp_path, location):
    upload = tmp_path / "upload"
    upload.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    path = upload / "model.onnx"
    path.write_bytes(_external_model(location).SerializeToString())
    with pytest.raises(ModelImportError, match="outside the upload"):
        import_model(path)


def test_external_data_symlink_is_refused(tmp_path):
    (tmp_path / "real.bin").write_bytes(np.ones(16, np.float32).tobytes())
    (tmp_path / "w.bin").symlink_to(tmp_path / "real.bin")
    path = tmp_path / "model.onnx"
    path.write_bytes(_external_model("w.bin").SerializeToString())
    with pytest.raises(ModelImportError, match="symlink"):
        import_model(path)


def test_external_data_inside_the_upload_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.ones(16, np.float32).tobytes())
    path = tmp_path / "model.onnx"
    path.write_bytes(_external_model("w.bin").SerializeToString())
    imported = import_model(path)
    (weight,) = imported.model.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(weight), np.ones((4, 4)))


def test_constant_node_weights_become_initializers(tmp_path):
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w_value")
    model = _graph_model(
        [
            helper.make_node("Constant", [], ["w"], value=weight, name="const_w"),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "paddle_style.onnx"
    onnx.save(model, path)
    imported = import_model(path)
    assert [n.op_type for n in imported.model.graph.node] == ["MatMul"]
    assert imported.model.graph.initializer[0].name == "w"


def test_work_inside_control_flow_is_refused_by_name(tmp_path):
    """A MatMul behind a runtime condition would leave the export with no Q/DQ on its work."""
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"])],
        "b",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones((1, 1), np.float32), "w")],
    )
    model = _graph_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch, name="if0")],
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "if.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsupportedOpError, match="If at node 'if0'.*MatMul.*control flow"):
        import_model(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelImportError, match="empty"):
        import_model(path)


def test_zip_that_is_not_pt2_is_refused(tmp_path):
    path = tmp_path / "other.pt2"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hello")
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ModelImportError, match="not a torch.export"):
        import_model(path)


def test_shape_inference_bomb_is_refused(tmp_path):
    model = _graph_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [100000, 100000, 100000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [100000, 100000, 100000])],
    )
    path = tmp_path / "bomb.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelImportError, match="declares"):
        import_model(path)


def _ort_outputs(model: onnx.ModelProto, feeds: dict) -> list:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_constant_unsigned_cast_and_sequence_stay_for_the_executor(tmp_path):
    """Constant folding leaves what torch holds widened (uint32) or as a list (a sequence) to
    the executor, which returns the declared types: the import keeps the model's meaning."""
    from qaas_engine.graph.dtypes import to_numpy
    from qaas_engine.graph.executor import GraphExecutor

    seven = numpy_helper.from_array(np.array([7, 9], dtype=np.int64), "seven")
    nodes = [
        helper.make_node("Cast", ["seven"], ["seven_u32"], to=TensorProto.UINT32),
        helper.make_node("Add", ["x", "seven_u32"], ["y"]),
        helper.make_node("SequenceConstruct", ["seven", "seven"], ["pair"]),
        helper.make_node("SequenceAt", ["pair", "one"], ["z"]),
    ]
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT32, [2])],
        [
            helper.make_tensor_value_info("y", TensorProto.UINT32, [2]),
            helper.make_tensor_value_info("z", TensorProto.INT64, [2]),
        ],
        [seven, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "u32.onnx"
    onnx.save(model, path)
    imported = import_model(path).model
    feeds = {"x": np.array([4_000_000_000, 1], dtype=np.uint32)}
    expected = _ort_outputs(imported, feeds)
    outputs = GraphExecutor(imported).run({"x": torch.from_numpy(feeds["x"].astype(np.int64))})
    got_y, got_z = (to_numpy(outputs[name]) for name in ("y", "z"))
    assert np.array_equal(got_y.astype(np.uint32), expected[0])
    assert np.array_equal(got_z, expected[1])
    assert {init.data_type for init in imported.graph.initializer} <= {TensorProto.INT64}
