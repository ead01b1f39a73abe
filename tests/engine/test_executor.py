"""The executor beyond single ops: reference fallback, control flow, the backend API, dtypes."""

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qaas_engine import backend
from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.executor import GraphExecutor
from qaas_engine.graph.kernels import reference_nodes, unsupported_nodes
from qaas_engine.quant.placement import place_quantizers

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers=(), opset: int = 20) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _f32(name: str, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _stft_after_matmul() -> onnx.ModelProto:
    """STFT has no torch kernel: it runs through onnx.reference after a quantizable MatMul."""
    w = numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Unsqueeze", ["h", "axes"], ["h3"], name="unsq"),
        helper.make_node("STFT", ["h3", "step", "", "frame"], ["spectrum"], name="stft"),
        helper.make_node("ReduceSum", ["spectrum", "bins"], ["y"], name="sum", keepdims=0),
    ]
    consts = [
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "bins"),
        numpy_helper.from_array(np.array(2, np.int64), "step"),
        numpy_helper.from_array(np.array(4, np.int64), "frame"),
    ]
    return _model(nodes, [_f32("x", ["n", 8])], [_f32("y", ["n", 3])], [w, *consts])


def test_op_without_torch_kernel_runs_by_reference_and_stays_float() -> None:
    model = _stft_after_matmul()
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    executor = GraphExecutor(model)
    assert executor.fallback_ops == {"STFT"} and executor.fallback_nodes == {"stft": "STFT"}
    assert [n.name for n in reference_nodes(model)] == ["stft"] and not unsupported_nodes(model)
    (ours,) = executor.run({"x": torch.from_numpy(x)}).values()
    np.testing.assert_allclose(ours.numpy(), _ort(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    placement = place_quantizers(onnx.shape_inference.infer_shapes(model))
    assert "spectrum" in placement.skipped and "spectrum" not in placement.activations
    assert "h" in placement.activations  # the torch-computed neighbours are still quantized


def test_values_torch_cannot_hold_run_by_reference_and_are_recorded() -> None:
    """The Cast kernel declines float8; the cast back then gets a float8 array, not a tensor."""
    nodes = [
        helper.make_node("Cast", ["x"], ["x8"], name="to_f8", to=TensorProto.FLOAT8E4M3FN),
        helper.make_node("Cast", ["x8"], ["y"], name="to_f32", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    model = _model(nodes, [_f32("x", [2, 8])], [_f32("z", [2, 8])])
    x = RNG.standard_normal((2, 8)).astype(np.float32) * 4
    executor = GraphExecutor(model)
    assert executor.fallback_nodes == {}
    (ours,) = executor.run({"x": torch.from_numpy(x)}).values()
    np.testing.assert_array_equal(ours.numpy(), _ort(model, {"x": x})[0])
    assert executor.fallback_nodes == {"to_f8": "Cast", "to_f32": "Cast"}


def _if_on_input_model() -> onnx.ModelProto:
    """The work (a MatMul with a weight of the outer graph) lives inside the branches."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), "w")

    def branch(name: str, op: str) -> onnx.GraphProto:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], [f"{name}_mm"], name=f"{name}_matmul"),
            helper.make_node(op, [f"{name}_mm"], [f"{name}_y"], name=f"{name}_act"),
        ]
        return helper.make_graph(nodes, name, [], [_f32(f"{name}_y", [2, 4])])

    node = helper.make_node(
        "If",
        ["cond"],
        ["y"],
        name="if",
        then_branch=branch("then", "Relu"),
        else_branch=branch("else", "Sigmoid"),
    )
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    return _model([node], [cond, _f32("x", [2, 4])], [_f32("y", [2, 4])], [w])


@pytest.mark.parametrize("condition", [True, False])
def test_if_runs_the_taken_branch_hooked_and_differentiable(condition: bool) -> None:
    model = _if_on_input_model()
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    executor = GraphExecutor(model)
    seen: list[str] = []

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        seen.append(name)
        return value

    weight = executor.weights["w"].clone().requires_grad_(True)
    feeds = {"cond": torch.tensor(condition), "x": torch.from_numpy(x)}
    y = executor.run(feeds, hook=hook, weights={"w": weight})["y"]
    expected = _ort(model, {"cond": np.array(condition), "x": x})[0]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    taken = "then" if condition else "else"
    assert f"{taken}_mm" in seen and f"{taken}_y" in seen and "y" in seen
    y.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert executor.fallback_nodes == {}


@pytest.mark.parametrize("trips", [4, 0])
def test_loop_and_scan_bodies_match_onnxruntime(trips: int) -> None:
    """Loop carries a running sum and emits per-iteration values (none: an empty tensor of the
    body output's shape); Scan runs a cumulative sum backwards over axis 1."""
    loop_body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
            helper.make_node("Mul", ["acc_out", "acc_out"], ["square"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _f32("acc_in", [3]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _f32("acc_out", [3])]
        + [_f32("square", [3])],
    )
    scan_body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "col"], ["s_out"]),
            helper.make_node("Neg", ["s_out"], ["n"]),
        ],
        "scan_body",
        [_f32("s_in", [2]), _f32("col", [2])],
        [_f32("s_out", [2]), _f32("n", [2])],
    )
    nodes = [
        helper.make_node("Loop", ["trips", "", "acc0"], ["acc", "squares"], body=loop_body),
        helper.make_node(
            "Scan",
            ["s0", "m"],
            ["s", "ns"],
            body=scan_body,
            num_scan_inputs=1,
            scan_input_axes=[1],
            scan_input_directions=[1],
            scan_output_axes=[1],
        ),
    ]
    inputs = [
        helper.make_tensor_value_info("trips", TensorProto.INT64, []),
        _f32("acc0", [3]),
        _f32("x", [3]),
        _f32("s0", [2]),
        _f32("m", [2, 5]),
    ]
    outputs = [_f32("acc", [3]), _f32("squares", ["t", 3]), _f32("s", [2]), _f32("ns", [2, 5])]
    model = _model(nodes, inputs, outputs, opset=17)
    feeds = {
        "trips": np.array(trips, np.int64),
        "acc0": RNG.standard_normal(3).astype(np.float32),
        "x": RNG.standard_normal(3).astype(np.float32),
        "s0": RNG.standard_normal(2).astype(np.float32),
        "m": RNG.standard_normal((2, 5)).astype(np.float32),
    }
    ours = backend.prepare(model).run(feeds)
    for got, want in zip(ours, _ort(model, feeds), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_integers_compute_widened_and_come_back_declared(dtype: type) -> None:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Sub", ["a", "b"], ["d"]),  # wraps below zero
        helper.make_node("Mul", ["a", "b"], ["m"]),
    ]
    values = [helper.make_tensor_value_info(n, elem, [4]) for n in ("a", "b", "s", "d", "m")]
    model = _model(nodes, values[:2], values[2:], opset=17)
    high = np.iinfo(dtype).max // 2
    feeds = {"a": np.array([0, 1, 7, high], dtype), "b": np.array([3, 1, 2, high - 1], dtype)}
    ours = backend.prepare(model).run(feeds)
    for got, want in zip(ours, _ort(model, feeds), strict=True):
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(got, want)


def test_backend_api() -> None:
    assert backend.supports_device("CPU")
    assert not backend.supports_device("CUDA")
    node = helper.make_node("Softplus", ["x"], ["y"])
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    (y,) = backend.run_node(node, [x])
    np.testing.assert_allclose(y, np.log1p(np.exp(x)), rtol=1e-5)
    model = _stft_after_matmul()
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    rep = backend.prepare(model)
    np.testing.assert_allclose(rep.run([x])[0], backend.run_model(model, {"x": x})[0])


def test_a_wrapped_unsigned_intermediate_feeds_the_next_op_wrapped() -> None:
    """uint32 ``a - b`` below zero wraps before the division reads it, as in a real uint32."""
    u32 = TensorProto.UINT32
    nodes = [helper.make_node("Sub", ["a", "b"], ["d"]), helper.make_node("Div", ["d", "c"], ["q"])]
    values = [helper.make_tensor_value_info(n, u32, [3]) for n in ("a", "b", "c", "q")]
    model = _model(nodes, values[:3], values[3:], opset=17)
    feeds = {
        "a": np.array([1, 5, 0], np.uint32),
        "b": np.array([2, 3, 1], np.uint32),
        "c": np.array([3, 2, 7], np.uint32),
    }
    (ours,) = backend.prepare(model).run(feeds)
    expected = (feeds["a"] - feeds["b"]) // feeds["c"]
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ours, _ort(model, feeds)[0])


def test_a_model_with_a_reference_op_quantizes_around_it(tmp_path) -> None:
    """The STFT stays float in the exported model and the report says why; the MatMuls and the
    activations around it are quantized, and ORT computes what the simulation promised."""
    from qaas_engine import QuantSpec, import_model, model_inputs, quantize
    from qaas_engine.data import validate_arrays

    path = tmp_path / "stft.onnx"
    onnx.save(_stft_after_matmul(), path)
    imported = import_model(path)

    def dataset(samples: int):
        x = RNG.standard_normal((samples, 8)).astype(np.float32)
        return validate_arrays({"x": x}, model_inputs(imported.model), role="t", source="arrays")

    result = quantize(imported, QuantSpec(), calibration=dataset(32), evaluation=dataset(16))
    kept = result.report["quantizers"]["kept_float"]
    assert "onnx.reference" in kept["spectrum"]
    graph = result.quantized_model.graph
    assert any(n.op_type == "STFT" for n in graph.node)
    assert not any(n.op_type == "QuantizeLinear" and "spectrum" in n.input for n in graph.node)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 2
    metrics = result.report["metrics"]["simulation_vs_onnxruntime"]
    assert metrics["max_abs_diff"] < 1e-4, metrics


def test_a_reference_failure_is_a_refusal_that_names_the_node() -> None:
    """Bad values for an op only onnx.reference computes end as UnsupportedOpError (exit 2 with
    the cause), not as an internal error."""
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["picked"], name="nms")
    inputs = [_f32("boxes", [1, 4, 4]), _f32("scores", [1, 1, 5])]
    picked = helper.make_tensor_value_info("picked", TensorProto.INT64, [None, 3])
    executor = GraphExecutor(_model([node], inputs, [picked], opset=17))
    feeds = {"boxes": torch.rand(1, 4, 4), "scores": torch.rand(1, 1, 5)}
    with pytest.raises(UnsupportedOpError, match="NonMaxSuppression at node 'nms'.*onnx.reference"):
        executor.run(feeds)
