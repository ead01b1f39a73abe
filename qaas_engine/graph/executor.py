"""Runs an ONNX graph in torch, op by op, with a hook on every activation.

This is the engine's one way to compute a model: the float reference, calibration (the hook
observes), simulation (the hook fake-quantizes) and, later, AdaRound and QAT (gradients flow
through the torch ops). Tensors are freed after their last use, so memory stays at the size
of the live activations, never all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import qaas_engine.graph.ops  # noqa: F401  (registers the op implementations)
from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.registry import OP_REGISTRY, NodeContext, parse_attributes

# Called for each activation as it is produced (graph inputs included); returns the tensor the
# consumers will see.
TensorHook = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CompiledNode:
    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    context: NodeContext


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 1


def initializer_tensors(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    tensors = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        tensors[init.name] = torch.from_numpy(np.array(array, copy=True))
    return tensors


def _named_output_count(node: onnx.NodeProto) -> int:
    """Outputs up to the last named one: an empty trailing name means "not requested"."""
    named = [i for i, name in enumerate(node.output) if name]
    return named[-1] + 1 if named else 0


def unsupported_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [
        node
        for node in model.graph.node
        if node.domain not in ("", "ai.onnx") or node.op_type not in OP_REGISTRY
    ]


class GraphExecutor:
    """A compiled ONNX graph; weights live in ``self.weights`` and may be replaced in place."""

    def __init__(self, model: onnx.ModelProto) -> None:
        bad = unsupported_nodes(model)
        if bad:
            node = bad[0]
            domain = f" (domain '{node.domain}')" if node.domain else ""
            raise UnsupportedOpError(node.op_type + domain, node.name or "<unnamed>")
        opset = default_opset(model)
        self.nodes: list[CompiledNode] = []
        for index, node in enumerate(model.graph.node):
            name = node.name or f"{node.op_type}_{index}"
            context = NodeContext(
                op_type=node.op_type,
                name=name,
                attrs=parse_attributes(node),
                opset=opset,
                num_outputs=_named_output_count(node),
            )
            self.nodes.append(
                CompiledNode(node.op_type, name, tuple(node.input), tuple(node.output), context)
            )
        self.weights: dict[str, torch.Tensor] = initializer_tensors(model)
        initializer_names = set(self.weights)
        self.input_names = [i.name for i in model.graph.input if i.name not in initializer_names]
        self.output_names = [o.name for o in model.graph.output]
        self._last_use = self._last_uses()

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            for name in node.inputs:
                if name:
                    last[name] = index
        for name in self.output_names:
            last[name] = len(self.nodes)
        return last

    def to(self, device: torch.device | str) -> GraphExecutor:
        self.weights = {k: v.to(device) for k, v in self.weights.items()}
        return self

    def run(
        self,
        feeds: Mapping[str, torch.Tensor],
        *,
        hook: TensorHook | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
        outputs: Iterable[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the requested outputs (the graph's by default).

        ``weights`` overrides entries of ``self.weights`` (quantized weights, for example)
        without copying the rest.
        """
        wanted = list(outputs) if outputs is not None else self.output_names
        keep = set(wanted)
        env: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            value = feeds[name]
            env[name] = hook(name, value) if hook else value
        for index, node in enumerate(self.nodes):
            args = [self._lookup(name, env, weights) if name else None for name in node.inputs]
            results = OP_REGISTRY[node.op_type](node.context, args)
            for out_name, value in zip(node.outputs, results, strict=False):
                if out_name:
                    env[out_name] = hook(out_name, value) if hook else value
            for name in node.inputs:
                if name and name not in keep and self._last_use.get(name) == index:
                    env.pop(name, None)
            if keep.issubset(env):
                break
        return {name: env[name] if name in env else self.weights[name] for name in wanted}

    def _lookup(
        self,
        name: str,
        env: Mapping[str, torch.Tensor],
        weights: Mapping[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        if name in env:
            return env[name]
        if weights is not None and name in weights:
            return weights[name]
        return self.weights[name]
