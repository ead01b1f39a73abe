"""The 9 reference networks shipped in the onnx wheel (IR 3, opset 9, old model-zoo files).

They list their initializers as graph inputs (an IR < 4 rule) and build their weights with
``ConstantOfShape``: the importer must repair both, and ``qaas quantize`` must return a QDQ model
ONNX Runtime runs. Quantizing all 9 takes minutes on two cores, so the default run quantizes the
smallest and imports the others; the full set is marked slow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.cli import main
from qaas_engine.errors import ModelImportError
from qaas_engine.importer import import_model

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NEEDS_LRN = ["bvlc_alexnet", "inception_v1", "zfnet512"]
NO_LRN = ["densenet121", "inception_v2", "resnet50", "shufflenet", "squeezenet", "vgg19"]


def light_path(name: str) -> Path:
    return LIGHT / f"light_{name}.onnx"


def feed_name(model: onnx.ModelProto) -> str:
    initializers = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def quantize_and_run(name: str, tmp_path: Path) -> None:
    source = onnx.load(light_path(name))
    assert source.ir_version == 3  # the repair under test: weights listed as inputs too
    feed = feed_name(source)
    rng = np.random.default_rng(0)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **{feed: rng.standard_normal((2, 3, 224, 224), dtype=np.float32)})
    out = tmp_path / "out"
    args = ["quantize", str(light_path(name)), "--calibration", str(calibration)]
    code = main([*args, "--weights", "int8", "--activations", "int8", "-o", str(out), "--quiet"])
    assert code == 0

    quantized = onnx.load(out / "model.quant.onnx")
    onnx.checker.check_model(quantized)
    producers = {out: node.op_type for node in quantized.graph.node for out in node.output}
    convs = [node for node in quantized.graph.node if node.op_type == "Conv"]
    assert convs  # every conv reads a dequantized activation and a dequantized weight
    assert all(producers.get(c.input[0]) == "DequantizeLinear" for c in convs)
    assert all(producers.get(c.input[1]) == "DequantizeLinear" for c in convs)
    session = ort.InferenceSession(
        str(out / "model.quant.onnx"), providers=["CPUExecutionProvider"]
    )
    sample = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    (probabilities,) = session.run(None, {feed: sample})
    reference = ort.InferenceSession(str(light_path(name)), providers=["CPUExecutionProvider"])
    (expected,) = reference.run(None, {feed: sample})
    assert probabilities.shape == expected.shape
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities, expected, atol=2e-3)


def test_smallest_light_net_quantizes_and_runs(tmp_path):
    quantize_and_run("squeezenet", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", NO_LRN + NEEDS_LRN)
def test_every_light_net_quantizes_and_runs(name, tmp_path):
    quantize_and_run(name, tmp_path)


@pytest.mark.parametrize("name", NEEDS_LRN)
def test_light_nets_with_lrn_import(name):
    model = import_model(light_path(name)).model
    assert "LRN" in {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("name", ["densenet121", "inception_v2", "resnet50", "shufflenet"])
def test_light_nets_import_with_weights_as_initializers(name):
    imported = import_model(light_path(name))
    model = imported.model
    assert model.ir_version >= 7 and imported.original_opset == 9
    initializers = {init.name for init in model.graph.initializer}
    assert [i.name for i in model.graph.input] == [feed_name(model)]
    assert not initializers & {i.name for i in model.graph.input}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert convs and all(node.input[1] in initializers for node in convs)
    assert not any(node.op_type == "ConstantOfShape" for node in model.graph.node)


def test_constant_fill_bomb_is_refused(tmp_path):
    shape = onnx.numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "shape")
    node = onnx.helper.make_node("ConstantOfShape", ["shape"], ["w"])
    matmul = onnx.helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = onnx.helper.make_graph(
        [node, matmul],
        "bomb",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2**20])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [shape],
    )
    path = tmp_path / "bomb.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), path)
    with pytest.raises(ModelImportError, match="ConstantOfShape node .* would expand"):
        import_model(path)
    assert os.path.getsize(path) < 1000
