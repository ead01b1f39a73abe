"""The table of ONNX ops the engine computes in torch, keyed by op type.

An op implementation receives the node's parsed attributes and its input tensors (``None`` for an
omitted optional input) and returns the node's outputs in order. Integer tensors (shapes, axes,
indices) arrive as torch integer tensors; implementations call ``.tolist()`` where they need
Python values. Implementations must be differentiable in their float inputs (AdaRound and QAT
back-propagate through them) and must not mutate their inputs.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch

from qaas_engine.errors import UnsupportedOpError


@dataclass(frozen=True)
class NodeContext:
    """What an op implementation may know about its node."""

    op_type: str
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    num_outputs: int = 1

    def unsupported(self, reason: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.op_type, self.name, reason)


OpFn = Callable[[NodeContext, Sequence[torch.Tensor | None]], Sequence[torch.Tensor]]
OP_REGISTRY: dict[str, OpFn] = {}
# Ops whose kernels also take sequences (lists) and empty optionals (None), not only tensors.
ANY_VALUE_OPS: set[str] = set()


def register(*op_types: str, any_value: bool = False) -> Callable[[OpFn], OpFn]:
    def decorate(fn: OpFn) -> OpFn:
        for op_type in op_types:
            OP_REGISTRY[op_type] = fn
            if any_value:
                ANY_VALUE_OPS.add(op_type)
        return fn

    return decorate


def parse_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Attribute values as Python objects; strings decoded, tensors as numpy arrays."""
    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        attrs[attr.name] = value
    return attrs
