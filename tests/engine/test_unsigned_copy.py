"""An int8 QDQ graph stored as uint8 computes the same values (what a layout for other hardware
is measured as on a CPU whose u8s8 kernels saturate), and is refused where an int8 tensor has a
reader whose meaning the change would alter."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qaas_engine.export.unsigned_copy import unsigned_copy


def _int8_graph(extra_reader: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ (int8 activation, TensorRT's container) -> Conv(DQ(int8 8-bit weight)) ->
    Q/DQ (int8) -> y; ``extra_reader``: the weight's integers also cast to float and output."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (16, 8, 3, 3)).astype(np.int8), "w"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, 16).astype(np.float32), "ws"),
        numpy_helper.from_array(np.zeros(16, np.int8), "wz"),
        numpy_helper.from_array(np.float32(0.05), "xs"),
        numpy_helper.from_array(np.int8(-3), "xz"),
        numpy_helper.from_array(np.float32(0.3), "ys"),
        numpy_helper.from_array(np.int8(0), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Cast", ["w"], ["w_float"], to=TensorProto.FLOAT))
        outputs.append(helper.make_tensor_value_info("w_float", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "int8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 10, 10])],
        outputs,
        inits,
        value_info=[helper.make_tensor_value_info("xq", TensorProto.INT8, [2, 8, 10, 10])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _plain_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Q/DQ computed in float (the optimizer off): the values the graph means, on any CPU."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_the_uint8_copy_computes_the_same_values_and_leaves_the_original_alone():
    model = _int8_graph()
    before = model.SerializeToString()
    copy = unsigned_copy(model)
    assert copy is not None and model.SerializeToString() == before
    types = {init.name: init.data_type for init in copy.graph.initializer}
    assert {types[name] for name in ("w", "wz", "xz", "yz")} == {TensorProto.UINT8}
    weights = numpy_helper.to_array(next(i for i in copy.graph.initializer if i.name == "w"))
    original = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    assert np.array_equal(weights.astype(np.int16) - 128, original)
    x = np.random.default_rng(1).normal(0, 3, (2, 8, 10, 10)).astype(np.float32)
    assert np.array_equal(_plain_run(copy, x), _plain_run(model, x))
    # deployed, every kernel sums the uint8 copy in int32: the values the graph means
    deployed = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    steps = np.abs(deployed.run(["y"], {"x": x})[0] - _plain_run(model, x)) / np.float32(0.3)
    assert steps.max() <= 1.001  # a requantization tie rounded the kernel's way, no overflow


def test_a_graph_without_int8_is_returned_as_it_is():
    model = _int8_graph()
    for init in model.graph.initializer:
        if init.data_type == TensorProto.INT8:
            shifted = numpy_helper.to_array(init).astype(np.int16) + 128
            init.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), init.name))
    del model.graph.value_info[:]
    assert unsigned_copy(model) is model


def test_an_int8_tensor_read_by_another_op_is_refused():
    assert unsigned_copy(_int8_graph(extra_reader=True)) is None
