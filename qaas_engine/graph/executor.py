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
from typing import Any

import onnx
import torch

from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.control_flow import CONTROL_FLOW, Scope
from qaas_engine.graph.dtypes import wrap_unsigned
from qaas_engine.graph.kernels import default_opset, has_reference
from qaas_engine.graph.program import CompiledNode, FallbackKernel, Program
from qaas_engine.graph.registry import ANY_VALUE_OPS, OP_REGISTRY

# Called for each activation as it is produced (graph inputs included); returns the tensor the
# consumers will see.
TensorHook = Callable[[str, torch.Tensor], torch.Tensor]


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
