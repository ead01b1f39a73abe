"""Small hand-built ONNX graphs shared by the engine tests."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper


def conv_chain_model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    name: str,
    opset: int = 17,
) -> onnx.ModelProto:
    """``nodes`` from input ``x`` to output ``y``, both [n, 4, 8, 8]: the shape the hand-built
    conv chains of the rewrite and scaled-grid tests take and give."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
