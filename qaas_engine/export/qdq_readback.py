"""The exported QDQ graph read back as a runtime's converter reads it: which tensors each node
takes through a DequantizeLinear (and whether from a constant), which outputs feed a
QuantizeLinear, and on which grid; and what a broken target rule reports (``target_checks``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RELATIVE_TOLERANCE = 1e-5
BITS: dict[int, int] = {
    TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.INT8: 8, TensorProto.UINT8: 8,
    TensorProto.INT16: 16, TensorProto.UINT16: 16, TensorProto.INT32: 32,
}  # fmt: skip
SIGNED = {TensorProto.INT4, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32}


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (a node or tensor name), which rule, and what is wrong."""

    where: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule} at '{self.where}': {self.detail}"


@dataclass(frozen=True)
class Grid:
    """A Q/DQ node's grid as stored: scale, zero point, container type, axis (None: per tensor)."""

    node: str
    scale: np.ndarray
    zero_point: np.ndarray
    elem_type: int
    axis: int | None
    domain: str

    @property
    def bits(self) -> int:
        return BITS.get(self.elem_type, 0)

    def same_as(self, other: Grid) -> bool:
        return (
            self.elem_type == other.elem_type
            and self.scale.shape == other.scale.shape
            and np.allclose(self.scale, other.scale, rtol=RELATIVE_TOLERANCE, atol=0)
            and np.array_equal(self.zero_point, other.zero_point)
        )


class QdqGraph:
    """The exported graph read back: which tensors each node reads through a DequantizeLinear
    (and whether from a constant) and which outputs feed a QuantizeLinear."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.constants = {init.name: init for init in graph.initializer}
        # graph outputs by the name of the tensor quantized for them ("X_float" for output X)
        self.outputs = {o.name for o in graph.output} | {f"{o.name}_float" for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)

    def grid(self, node: onnx.NodeProto) -> Grid:
        scale = self._array(node.input[1]).astype(np.float64).reshape(-1)
        if len(node.input) > 2 and node.input[2] in self.constants:
            zero = self.constants[node.input[2]]
            zero_point, elem_type = numpy_helper.to_array(zero).reshape(-1), zero.data_type
        else:
            zero_point, elem_type = np.zeros(1, np.int64), TensorProto.UINT8
        axis = None
        if scale.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        name = node.name or node.output[0]
        return Grid(name, scale, zero_point.astype(np.int64), elem_type, axis, node.domain)

    def _array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.constants[name])

    def dequantized(self, tensor: str) -> tuple[Grid, bool] | None:
        """The grid ``tensor`` was dequantized from, and whether from a constant (a weight)."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        return self.grid(node), node.input[0] in self.constants

    def quantized(self, tensor: str) -> tuple[Grid, onnx.NodeProto] | None:
        """The QuantizeLinear ``tensor`` feeds (through a Clip for sub-8-bit grids), with the
        node that reads the dequantized value back, if any."""
        for user in self.consumers.get(tensor, []):
            if self.is_grid_clip(user):
                found = self.quantized(user.output[0])
                if found is not None:
                    return found
            if user.op_type == "QuantizeLinear":
                return self.grid(user), user
        return None

    def after_qdq(self, q_node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The nodes reading the dequantized value of a QuantizeLinear."""
        readers = []
        for dq in self.consumers.get(q_node.output[0], []):
            if dq.op_type == "DequantizeLinear":
                readers.extend(self.consumers.get(dq.output[0], []))
        return readers

    def compute_nodes(self) -> list[onnx.NodeProto]:
        return [
            n
            for n in self.model.graph.node
            if n.op_type not in QDQ_OPS and not self.is_grid_clip(n)
        ]

    @staticmethod
    def is_grid_clip(node: onnx.NodeProto) -> bool:
        """The Clip the export puts before a QuantizeLinear of a sub-8-bit grid (by its name)."""
        return (
            node.op_type == "Clip"
            and len(node.output) == 1
            and bool(node.input)
            and node.output[0] == f"{node.input[0]}_clipped"
        )

    def weight_input(self, node: onnx.NodeProto) -> int | None:
        """Which input of a weighted op is its dequantized constant weight."""
        for index in (1, 0) if node.op_type == "MatMul" else (1,):
            if len(node.input) > index:
                found = self.dequantized(node.input[index])
                if found is not None and found[1]:
                    return index
        return None
