"""Rule ``weight_grid``: where the ``avx2-s7`` kernels' 7-bit weight grids hold the output under
its SQNR target, the spec's 8-bit grids come back (stored uint8, u8u8 kernels), measured and
kept only for a real gain; ``--objective latency`` keeps the 7-bit grids."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize

WIDTH = 256


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """Three MatMul+Add+Relu layers of random weights: the weights carry most of the noise."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}")]
        inits += [numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"h{i}"] if i < 2 else ["y"]),
        ]
        x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])],
        inits,
    )
    folder = tmp_path_factory.mktemp("mlp")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (folder / "mlp.onnx").write_bytes(model.SerializeToString())
    calibration = rng.standard_normal((64, WIDTH)).astype(np.float32)
    np.savez(folder / "calibration.npz", x=calibration)
    imported = import_model(folder / "mlp.onnx")
    return imported, load_npz(folder / "calibration.npz", model_inputs(imported.model))


def _run(mlp, **options):
    imported, calibration = mlp
    spec = QuantSpec(target="onnxruntime-cpu:avx2-s7", **options)
    return quantize(imported, spec, calibration=calibration)


def _weight_types(result) -> set[int]:
    """The containers of the weights' integers (the 8-bit initializers named after them)."""
    eight_bit = (TensorProto.INT8, TensorProto.UINT8)
    graph = result.quantized_model.graph
    return {i.data_type for i in graph.initializer if i.name[0] == "w" and i.data_type in eight_bit}


def test_eight_bit_weights_come_back_where_they_lift_the_output_toward_its_target(mlp):
    result = _run(mlp, min_sqnr_db=60)
    (line,) = [r for r in result.report["rules"] if r["rule"] == "weight_grid"]
    assert line["action"].startswith("8-bit weights") and "3 weights" in line["node"]
    before, after = (float(part.split(" dB")[0].split()[-1]) for part in line["why"].split(","))
    assert after >= before + 3
    bits = {e["name"]: e["bw"] for e in result.encodings["param_encodings"]}
    assert {bits[f"w{i}"] for i in range(3)} == {8}
    assert _weight_types(result) == {TensorProto.UINT8}  # u8u8 kernels: exact on any CPU
    assert result.report["metrics"]["onnxruntime"]["sqnr_db"] > before + 2


def test_latency_first_or_a_met_target_keeps_the_seven_bit_grids(mlp):
    for options in ({"min_sqnr_db": 60, "objective": "latency"}, {"min_sqnr_db": 10}):
        result = _run(mlp, **options)
        assert not [r for r in result.report["rules"] if r["rule"] == "weight_grid"], options
        bits = {e["name"]: e["bw"] for e in result.encodings["param_encodings"]}
        assert {bits[f"w{i}"] for i in range(3)} == {7}, options
        assert _weight_types(result) == {TensorProto.INT8}, options


def test_where_the_activations_carry_the_noise_the_seven_bit_grids_stay(tiny_imported):
    """4-bit activations dominate the tiny CNN's noise: 8-bit weights measure no gain worth the
    slower kernels, so the rule says so and puts the 7-bit grids back."""
    imported, calibration, _ = tiny_imported
    spec = QuantSpec(target="onnxruntime-cpu:avx2-s7", activation_bits=4, min_sqnr_db=60)
    result = quantize(imported, spec, calibration=calibration)
    (line,) = [r for r in result.report["rules"] if r["rule"] == "weight_grid"]
    assert line["action"] == "kept 7-bit" and "under the 1 dB gain" in line["why"]
    bits = {e["name"]: e["bw"] for e in result.encodings["param_encodings"]}
    assert {bits["conv.weight"], bits["fc.weight"], bits["depthwise.weight"]} == {7, 8}
    assert bits["depthwise.weight"] == 8  # ORT's depthwise kernel sums 8-bit weights exactly
