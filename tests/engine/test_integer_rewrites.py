"""Float forms ONNX Runtime cannot fuse are rewritten before quantizers are placed: a Conv's bias
written as a separate Add, a division by a constant, HardSwish and HardSigmoid. The rewritten
model computes what the original does (to float rounding), the simulation computes what ORT
computes from the export, and ORT's optimized graph runs every one of them as an integer
kernel."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.transforms.integer_rewrites import needs_rewrite, rewrite_for_integer_kernels
from tests.support.onnx_models import conv_chain_model


def _model(opset: int = 17, divisor: float = 4.0) -> onnx.ModelProto:
    """conv (no bias) + Add [1, C, 1, 1] -> Relu -> conv -> Div 4 -> HardSwish -> conv: the
    squeeze-excite bias of paddle2onnx, MobileNetV3's hardswish as written by two exporters."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    inits = [
        weight("w1", 8, 4, 3, 3),
        weight("b1", 1, 8, 1, 1),
        weight("w2", 8, 8, 1, 1),
        weight("b2", 8),
        weight("w3", 4, 8, 1, 1),
        numpy_helper.from_array(np.float32(divisor), "six"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "b1"], ["a1"], name="bias_add"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Div", ["c2", "six"], ["d2"], name="div"),
        helper.make_node("HardSwish", ["d2"], ["h2"], name="hardswish"),
        helper.make_node("Conv", ["h2", "w3"], ["y"], name="conv3"),
    ]
    return conv_chain_model(nodes, inits, "rewrites", opset)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_rewritten_model_computes_what_the_original_does():
    model = _model()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert needs_rewrite(rewritten, onnxruntime_cpu=True)
    changed = rewrite_for_integer_kernels(rewritten, onnxruntime_cpu=True)
    assert set(changed) == {"bias_add", "div", "hardswish", "hardswish_gate"}
    assert not needs_rewrite(rewritten, onnxruntime_cpu=True)
    onnx.checker.check_model(rewritten)
    ops = [node.op_type for node in rewritten.graph.node]
    # x / 4 as x * 0.25; hardswish as x * clip(x * alpha + beta, 0, 1)
    assert ops == ["Conv", "Relu", "Conv", "Mul", "Mul", "Add", "Clip", "Mul", "Conv"]
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_hardswish_stays_one_op_for_a_target_run_elsewhere():
    """Qualcomm HTP runs HardSwish as one op: only ONNX Runtime's CPU provider wants it split."""
    model = _model()
    rewrite_for_integer_kernels(model, onnxruntime_cpu=False)
    ops = [node.op_type for node in model.graph.node]
    assert "HardSwish" in ops and "Div" not in ops and "Add" not in ops


@pytest.mark.parametrize(
    ("constant", "foldable"),
    [((1, 8, 1, 1), True), ((8, 1, 1), True), ((1,), True), ((1, 8, 8, 1), False), ((8,), False)],
)
def test_only_a_per_channel_constant_becomes_the_bias(constant, foldable):
    """[8] broadcasts along the last axis of the Conv output, not its channels: it stays."""
    model = _model()
    model.graph.initializer[1].CopyFrom(
        numpy_helper.from_array(np.full(constant, 0.5, np.float32), "b1")
    )
    x = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(np.float32)
    before = _run(model, x) if constant != (8,) else None
    rewrite_for_integer_kernels(model, onnxruntime_cpu=True)
    names = [node.name for node in model.graph.node]
    assert ("bias_add" not in names) == foldable
    if before is not None:
        np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_every_rewritten_op_runs_as_an_integer_kernel(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_model(), path)
    data = tmp_path / "calibration.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 4, 8, 8), np.float32))
    imported = import_model(path)
    calibration = load_npz(data, model_inputs(imported.model))
    result = quantize(imported, QuantSpec(), calibration=calibration)
    graph = result.report["metrics"]["runtime_graph"]
    kernels = graph["integer_kernels"]
    assert kernels.get("QLinearConv") == 3  # the biased-by-Add conv included
    # the hardswish product; the gate's + beta (its Clip folded into the QuantizeLinear); the
    # division (x * 0.25) and the gate's x * alpha are no op at all: their outputs are read on
    # their inputs' grids scaled (quant.placement.scaled)
    assert kernels.get("QLinearMul") == 1 and kernels.get("QLinearAdd") == 1
    # nothing float is left: the only conversions are the input's Q and the output's DQ
    assert graph["quantize_linear"] == 1 and graph["dequantize_linear"] == 1
    gap = result.report["metrics"]["simulation_vs_onnxruntime"]
    assert gap["sqnr_db"] > 35.0
    onnx.checker.check_model(result.quantized_model)


def test_nodes_kept_float_stay_as_written():
    """``--keep-float div`` / ``--keep-float HardSwish`` name nodes the rewrites leave alone."""
    model = _model()
    changed = rewrite_for_integer_kernels(
        model, onnxruntime_cpu=True, keep=frozenset({"div", "HardSwish"})
    )
    assert changed == ["bias_add"]  # HardSwish kept whole: no HardSigmoid to split either
    ops = [node.op_type for node in model.graph.node]
    assert "Div" in ops and "HardSwish" in ops
    assert not needs_rewrite(model, onnxruntime_cpu=True, keep=frozenset({"div", "HardSwish"}))


@pytest.mark.parametrize(
    ("divisor", "rewritten"),
    [(4.0, True), (0.125, True), (-2.0, True), (6.0, False), (3.0, False), (0.1, False)],
)
def test_only_a_division_with_an_exact_reciprocal_becomes_a_product(divisor, rewritten):
    """x / c as x * (1/c) only where float32 holds 1/c exactly (c a power of two): then the
    product is the division for every x; 1/6 is not, and the recognizer of PP-OCRv4 lost output
    SQNR with it (QLinearMul's rounding of an inexact product), so a Div by 6 stays a Div."""
    model = _model(divisor=divisor)
    x = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)
    before = _run(model, x)
    changed = rewrite_for_integer_kernels(model, onnxruntime_cpu=True)
    assert ("div" in changed) == rewritten
    ops = {node.name: node.op_type for node in model.graph.node}
    assert ops["div"] == ("Mul" if rewritten else "Div")
    if rewritten:
        reciprocal = next(
            numpy_helper.to_array(init)
            for init in model.graph.initializer
            if init.name == "div_reciprocal"
        )
        values = np.random.default_rng(4).standard_normal(10_000).astype(np.float32) * 100
        assert np.array_equal(values * reciprocal, values / np.float32(divisor))
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-6, atol=1e-6)
