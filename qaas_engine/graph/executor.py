"""Runs an ONNX graph in torch, op by op, with a hook on every activation.

This is the engine's one way to compute a model: the float reference, calibration (the hook
observes), simulation (the hook fake-quantizes) and, later, AdaRound and QAT (gradients flow
through the torch ops). Tensors are freed after their last use, so memory stays at the size
of the live activations, never all of them.

A default-domain op without a torch kernel (or whose kernel refuses the node's attributes or
input types) runs through ONNX's reference implementation instead: correct values, no
gradients. Such nodes are listed in :attr:`GraphExecutor.fallback_nodes` so that they stay float
in the exported model. ``If``, ``Loop`` and ``Scan`` run their bodies through this executor
(:mod:`.control_flow`), so the ops inside are hooked and differentiable like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch

import qaas_engine.graph.ops  # noqa: F401  (registers the op implementations)
from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.control_flow import CONTROL_FLOW
from qaas_engine.graph.dtypes import UNSIGNED_BITS, to_torch, wrap_unsigned
from qaas_engine.graph.reference import ReferenceKernel, has_reference
from qaas_engine.graph.registry import ANY_VALUE_OPS, OP_REGISTRY, NodeContext, parse_attributes
from qaas_engine.onnxruntime_ops import OnnxRuntimeKernel, onnxruntime_knows

# A node computed outside torch: no gradient, kept float by placement.
FallbackKernel = ReferenceKernel | OnnxRuntimeKernel

# Called for each activation as it is produced (graph inputs included); returns the tensor the
# consumers will see.
TensorHook = Callable[[str, torch.Tensor], torch.Tensor]
DEFAULT_DOMAINS = ("", "ai.onnx")
CONTROL_FLOW_OPS = tuple(CONTROL_FLOW)


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


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            return int(opset.version)
    return 1


def initializer_tensors(graph: onnx.ModelProto | onnx.GraphProto) -> dict[str, Any]:
    graph = graph.graph if isinstance(graph, onnx.ModelProto) else graph
    return {init.name: to_torch(onnx.numpy_helper.to_array(init)) for init in graph.initializer}


def _named_output_count(node: onnx.NodeProto) -> int:
    """Outputs up to the last named one: an empty trailing name means "not requested"."""
    named = [i for i, name in enumerate(node.output) if name]
    return named[-1] + 1 if named else 0


def has_torch_kernel(node: onnx.NodeProto) -> bool:
    """Computed by a torch op (differentiable), as opposed to the reference fallback."""
    return node.domain in DEFAULT_DOMAINS and (
        node.op_type in OP_REGISTRY or node.op_type in CONTROL_FLOW_OPS
    )


def reference_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Top-level nodes that will run through ONNX's reference implementation: they have no
    gradient and no integer kernel worth quantizing for, so they stay float."""
    return [n for n in model.graph.node if not has_torch_kernel(n)]


def unsupported_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes neither a torch kernel nor the reference implementation can compute."""
    opset = default_opset(model)
    return [
        node
        for node in model.graph.node
        if not has_torch_kernel(node)
        and not (node.domain in DEFAULT_DOMAINS and has_reference(node.op_type, opset))
        and not (node.domain not in DEFAULT_DOMAINS and onnxruntime_knows(node))
    ]


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


class GraphExecutor:
    """A compiled ONNX graph; weights live in ``self.weights`` and may be replaced in place."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.program = Program(model.graph, default_opset(model), {})
        self.nodes = self.program.nodes
        self.weights: dict[str, Any] = self.program.constants
        self.input_names = self.program.input_names
        self.output_names = self.program.output_names
        # node name -> op type, for every node computed by the reference implementation
        # (inside If/Loop/Scan bodies too)
        self.fallback_nodes: dict[str, str] = dict(self.program.reference_nodes())

    @property
    def fallback_ops(self) -> frozenset[str]:
        """Op types run (or to be run) by the reference fallback: float, no gradient."""
        return frozenset(self.fallback_nodes.values())

    def to(self, device: torch.device | str) -> GraphExecutor:
        self.weights = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.weights.items()
        }
        return self

    def run(
        self,
        feeds: Mapping[str, Any],
        *,
        hook: TensorHook | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
        outputs: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Compute the requested outputs (the graph's by default).

        ``weights`` overrides entries of ``self.weights`` (quantized weights, for example)
        without copying the rest.
        """
        constants = dict(self.weights)
        if weights is not None:
            constants.update(weights)
        runner = _Runner(self, hook)
        return runner.run(self.program, feeds, constants, Scope(), outputs)

    def fall_back(self, program: Program, node: CompiledNode) -> FallbackKernel:
        """Switch a node whose torch kernel declined it (attributes, input types) to the
        reference implementation for good, and record it."""
        kernel = program.references.get(node.name)
        if kernel is None:
            kernel = program.reference_kernel(program.protos[node.name], node.name)
            program.references[node.name] = kernel
        self.fallback_nodes[node.name] = node.op_type
        return kernel


def _is_value(value: Any) -> bool:
    return value is None or isinstance(value, torch.Tensor)


class _Runner:
    """One call of :meth:`GraphExecutor.run`, recursing into subgraphs with the outer scope."""

    def __init__(self, executor: GraphExecutor, hook: TensorHook | None) -> None:
        self.executor = executor
        self.hook = hook

    def observe(self, name: str, value: Any) -> Any:
        if self.hook is not None and isinstance(value, torch.Tensor):
            return self.hook(name, value)
        return value

    def run(
        self,
        program: Program,
        feeds: Mapping[str, Any],
        constants: Mapping[str, Any],
        outer: Scope,
        outputs: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        wanted = list(outputs) if outputs is not None else program.output_names
        keep = set(wanted)
        env: dict[str, Any] = {}
        for name in program.input_names:
            if name in feeds:
                env[name] = self.observe(name, feeds[name])

        def lookup(name: str) -> Any:
            if name in env:
                return env[name]
            if name in constants:
                return constants[name]
            return outer[name]

        for index, node in enumerate(program.nodes):
            if keep.issubset(env):
                break
            args = [lookup(name) if name else None for name in node.inputs]
            if node.subgraphs:
                scope = Scope(env, constants, outer)
                results = CONTROL_FLOW[node.op_type](self, node, args, scope)
            else:
                results = self.compute(program, node, args)
            if node.wrapped:
                results = [
                    wrap_unsigned(r, t) if t and isinstance(r, torch.Tensor) else r
                    for r, t in zip(results, node.wrapped, strict=False)
                ]
            for out_name, value in zip(node.outputs, results, strict=False):
                if out_name:
                    env[out_name] = self.observe(out_name, value)
            for name in (*node.inputs, *node.captured):
                if name and name not in keep and program.last_use.get(name) == index:
                    env.pop(name, None)
        return {name: lookup(name) for name in wanted}

    def compute(self, program: Program, node: CompiledNode, args: list[Any]) -> list[Any]:
        reference = program.references.get(node.name)
        accepted = node.op_type in ANY_VALUE_OPS or all(_is_value(a) for a in args)
        if reference is None and accepted:
            try:
                return list(OP_REGISTRY[node.op_type](node.context, args))
            except UnsupportedOpError:
                if not has_reference(node.op_type, program.opset):
                    raise
        if reference is None:
            reference = self.executor.fall_back(program, node)
        return reference.run(args)


class Scope:
    """What a subgraph sees of its enclosing graphs: their live values, then their constants."""

    def __init__(self, *layers: Mapping[str, Any] | Scope) -> None:
        self.layers = layers

    def __contains__(self, name: str) -> bool:
        return any(name in layer for layer in self.layers)

    def __getitem__(self, name: str) -> Any:
        for layer in self.layers:
            if name in layer:
                return layer[name]
        raise KeyError(name)
