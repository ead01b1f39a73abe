"""``--fix-input sr=16000``: an If on a plain input takes the branch the user deploys; the
quantized model keeps the input, optional, and the calibration data may hold only that value."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec
from qaas_engine.errors import DataError, ModelImportError, UnsupportedOpError
from qaas_engine.importer import import_model
from qaas_engine.job import run
from qaas_engine.spec import parse_fixed_input

WEIGHT = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
out = helper.make_tensor_value_info


def _branch(name: str, scale: float) -> onnx.GraphProto:
    weight = numpy_helper.from_array(WEIGHT * scale, f"{name}_w")
    node = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_out"], name=f"{name}_mm")
    return helper.make_graph(
        [node], name, [], [out(f"{name}_out", TensorProto.FLOAT, ["batch", 3])], [weight]
    )


def _sample_rate_model() -> onnx.ModelProto:
    """``if sr == 16000`` around the only MatMul, as silero-vad is exported."""
    rate = numpy_helper.from_array(np.array(16000, np.int64), "rate")
    nodes = [
        helper.make_node("Equal", ["sr", "rate"], ["is_16k"]),
        helper.make_node(
            "If",
            ["is_16k"],
            ["y"],
            name="by_rate",
            then_branch=_branch("k16", 1.0),
            else_branch=_branch("k8", -2.0),
        ),
        helper.make_node("Relu", ["y"], ["out"]),
    ]
    inputs = [out("x", TensorProto.FLOAT, ["batch", 4]), out("sr", TensorProto.INT64, [])]
    graph = helper.make_graph(
        nodes, "vad_like", inputs, [out("out", TensorProto.FLOAT, ["batch", 3])], [rate]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "vad_like.onnx"
    onnx.save(_sample_rate_model(), path)
    return path


def _calibration(tmp_path, rate: int) -> str:
    x = np.random.default_rng(1).standard_normal((32, 1, 4)).astype(np.float32)
    path = tmp_path / f"calibration_{rate}.npz"
    np.savez(path, x=x, sr=np.full(32, rate, np.int64))  # one scalar sr per sample
    return str(path)


def test_without_the_option_the_refusal_names_it(model_path):
    with pytest.raises(UnsupportedOpError, match=r"decided by input sr.*--fix-input sr=VALUE"):
        import_model(model_path)


def test_a_fixed_input_takes_its_branch_and_stays_an_optional_input(model_path, tmp_path):
    spec = QuantSpec(fixed_inputs={"sr": 16000})
    saved = run(model_path, {"calibration": _calibration(tmp_path, 16000)}, spec, tmp_path / "o")
    assert any("input sr fixed at 16000" in note for note in saved.report["model"]["notes"])
    quantized = onnx.load(saved.written["model.quant.onnx"])
    producers = {o: n.op_type for n in quantized.graph.node for o in n.output}
    (matmul,) = [n for n in quantized.graph.node if n.op_type == "MatMul"]
    assert producers[matmul.input[1]] == "DequantizeLinear"
    assert "If" not in producers.values()

    session = ort.InferenceSession(
        quantized.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    reference = ort.InferenceSession(
        _sample_rate_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    rate = np.array(16000, np.int64)
    (expected,) = reference.run(None, {"x": x, "sr": rate})
    (fed,) = session.run(None, {"x": x, "sr": rate})  # callers that feed it keep working
    (unfed,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(fed, unfed)
    assert np.linalg.norm(fed - expected) / np.linalg.norm(expected) < 0.05


def test_calibration_data_with_another_value_is_refused(model_path, tmp_path):
    spec = QuantSpec(fixed_inputs={"sr": 16000})
    with pytest.raises(DataError, match="input 'sr' is fixed at 16000, but the data holds 8000"):
        run(model_path, {"calibration": _calibration(tmp_path, 8000)}, spec, tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        ({"rate_hz": 16000}, "'rate_hz' is not an input of the model \\(x, sr\\)"),
        ({"x": 1.0}, "'x' has shape \\[\\?, 4\\]; only a single value"),
        ({"sr": 0.5}, "'sr' is int64: 0.5 is not one of its values"),
    ],
)
def test_a_fix_that_cannot_apply_is_refused_by_name(model_path, fixed, message):
    with pytest.raises(ModelImportError, match=message):
        import_model(model_path, fixed)


@pytest.mark.parametrize("text", ["sr", "=1", "sr=fast", "sr=nan", "sr=inf"])
def test_the_option_text_must_be_name_equals_number(text):
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_fixed_input(text)


def test_the_option_parses_integers_and_floats():
    assert parse_fixed_input(" sr = 16000 ") == ("sr", 16000)
    assert parse_fixed_input("gain=-0.5") == ("gain", -0.5)
    assert QuantSpec.model_validate_json('{"fixed_inputs": {"sr": 8000}}').fixed_inputs == {
        "sr": 8000
    }


def test_a_scalar_input_left_free_is_fed_one_value_per_sample(tmp_path):
    """A rank-0 input held once per sample (``gain``, shape (N,)) reaches every engine as a
    0-d array, never a numpy scalar (which ONNX Runtime refuses)."""
    weight = numpy_helper.from_array(WEIGHT, "w")
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w"], ["out"], name="mm"),
    ]
    inputs = [out("x", TensorProto.FLOAT, [1, 4]), out("gain", TensorProto.FLOAT, [])]
    graph = helper.make_graph(
        nodes, "gain", inputs, [out("out", TensorProto.FLOAT, [1, 3])], [weight]
    )
    path = tmp_path / "gain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    rng = np.random.default_rng(3)
    data = tmp_path / "gain.npz"
    np.savez(
        data,
        x=rng.standard_normal((16, 1, 4)).astype(np.float32),
        gain=rng.uniform(0.5, 2.0, 16).astype(np.float32),
    )
    saved = run(path, {"calibration": str(data)}, QuantSpec(), tmp_path / "o")
    assert saved.report["metrics"]["onnxruntime"]["sqnr_db"] > 25
