"""A graph compiled for the executor: its nodes in order with their parsed attributes, the
kernels of the nodes computed outside torch, ``If``/``Loop``/``Scan`` bodies compiled to
programs of their own, and when each value is last used.

Compiling knows nothing of running: :mod:`.executor` and :mod:`.control_flow` both read these
types, and neither is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

import qaas_engine.graph.ops  # noqa: F401  (registers the op implementations)
from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.dtypes import UNSIGNED_BITS, to_torch
from qaas_engine.graph.kernels import (
    CONTROL_FLOW_OPS,
    DEFAULT_DOMAINS,
    has_reference,
    has_torch_kernel,
    onnxruntime_knows,
)
from qaas_engine.graph.reference import ReferenceKernel
from qaas_engine.graph.registry import NodeContext, parse_attributes
from qaas_engine.onnxruntime_ops import OnnxRuntimeKernel

# A node computed outside torch: no gradient, kept float by placement.
FallbackKernel = ReferenceKernel | OnnxRuntimeKernel

# Ops whose graph attributes are compiled to programs and run by :mod:`.control_flow`.


@dataclass(frozen=True)
class CompiledNode:
    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    context: NodeContext
    # graph attributes (If branches, Loop/Scan bodies) compiled to programs of their own
    subgraphs: dict[str, Program] = field(default_factory=dict)
    # outer-scope names the subgraphs read: they must stay alive until this node has run
    captured: tuple[str, ...] = ()
    # per output, the declared uint16/uint32 type of a value held widened (0: none), so that
    # results that overflowed the type wrap around before anything else reads them
    wrapped: tuple[int, ...] = ()


def initializer_tensors(graph: onnx.ModelProto | onnx.GraphProto) -> dict[str, Any]:
    graph = graph.graph if isinstance(graph, onnx.ModelProto) else graph
    return {init.name: to_torch(onnx.numpy_helper.to_array(init)) for init in graph.initializer}


def _named_output_count(node: onnx.NodeProto) -> int:
    """Outputs up to the last named one: an empty trailing name means "not requested"."""
    named = [i for i, name in enumerate(node.output) if name]
    return named[-1] + 1 if named else 0


def _value_types(graph: onnx.GraphProto, into: dict[str, onnx.TypeProto]) -> None:
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.WhichOneof("value"):
            into.setdefault(value.name, value.type)
    for init in graph.initializer:
        into.setdefault(
            init.name, onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        )


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a graph (nested graphs included) reads but does not define itself."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(name for name in node.input if name and name not in defined)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                reads.update(name for name in _subgraph_reads(sub) if name not in defined)
        defined.update(node.output)
    return reads


class Program:
    """A compiled graph: nodes in order, their kernels, and when each value is last used."""

    def __init__(
        self, graph: onnx.GraphProto, opset: int, types: dict[str, onnx.TypeProto]
    ) -> None:
        _value_types(graph, types)
        self.opset = opset
        self.types = types
        self.constants: dict[str, Any] = initializer_tensors(graph)
        self.input_names = [i.name for i in graph.input if i.name not in self.constants]
        self.output_names = [o.name for o in graph.output]
        self.nodes: list[CompiledNode] = []
        self.protos: dict[str, onnx.NodeProto] = {}
        self.references: dict[str, FallbackKernel] = {}
        for index, node in enumerate(graph.node):
            self.nodes.append(self._compile(node, index))
            self.protos[self.nodes[-1].name] = node
        self.last_use = self._last_uses()

    def _compile(self, node: onnx.NodeProto, index: int) -> CompiledNode:
        name = node.name or f"{node.op_type}_{index}"
        context = NodeContext(
            op_type=node.op_type,
            name=name,
            attrs=parse_attributes(node),
            opset=self.opset,
            num_outputs=_named_output_count(node),
        )
        subgraphs, captured = {}, set()
        if node.domain in DEFAULT_DOMAINS and node.op_type in CONTROL_FLOW_OPS:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    subgraphs[attr.name] = Program(attr.g, self.opset, self.types)
                    captured |= _subgraph_reads(attr.g)
        elif not has_torch_kernel(node):
            self.references[name] = self.reference_kernel(node, name)
        wrapped = tuple(self._wrapped_type(o) for o in node.output)
        return CompiledNode(
            node.op_type,
            name,
            tuple(node.input),
            tuple(node.output),
            context,
            subgraphs,
            tuple(sorted(captured)),
            wrapped if any(wrapped) else (),
        )

    def _wrapped_type(self, name: str) -> int:
        value_type = self.types.get(name)
        if value_type is None or not value_type.HasField("tensor_type"):
            return 0
        elem_type = value_type.tensor_type.elem_type
        return elem_type if UNSIGNED_BITS.get(elem_type, 64) < 64 else 0

    def reference_kernel(self, node: onnx.NodeProto, name: str) -> FallbackKernel:
        """The node run by onnx.reference (or, for another domain's op, by ONNX Runtime);
        refused by name if neither can compute it."""
        if node.domain not in DEFAULT_DOMAINS:
            if onnxruntime_knows(node):
                return OnnxRuntimeKernel(node, self.opset)
            raise UnsupportedOpError(f"{node.op_type} (domain '{node.domain}')", name)
        if not has_reference(node.op_type, self.opset):
            raise UnsupportedOpError(node.op_type, name)
        return ReferenceKernel(node, name, self.opset, self.types)

    def reference_nodes(self) -> list[tuple[str, str]]:
        """(name, op type) of the nodes compiled to the reference fallback, bodies included."""
        found = [(name, self.protos[name].op_type) for name in self.references]
        for node in self.nodes:
            for body in node.subgraphs.values():
                found += body.reference_nodes()
        return found

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            for name in (*node.inputs, *node.captured):
                if name:
                    last[name] = index
        for name in self.output_names:
            last[name] = len(self.nodes)
        return last
