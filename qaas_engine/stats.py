"""Model size and work: parameter count, MACs per sample, bytes at each precision."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
import torch

from qaas_engine.graph.executor import GraphExecutor
from qaas_engine.graph.registry import parse_attributes
from qaas_engine.quant.sim import QuantSim


def count_params(executor: GraphExecutor) -> int:
    return int(sum(t.numel() for t in executor.weights.values() if t.is_floating_point()))


def float_bytes(executor: GraphExecutor) -> int:
    return int(sum(t.numel() * t.element_size() for t in executor.weights.values()))


def quantized_bytes(sim: QuantSim) -> int:
    """Weights packed at their bit-width, int32 biases, everything else as stored."""
    total = 0
    params = {**sim.weight_encodings, **sim.bias_encodings}
    for name, tensor in sim.executor.weights.items():
        encoding = params.get(name)
        if encoding is None:
            total += tensor.numel() * tensor.element_size()
        else:
            total += math.ceil(tensor.numel() * encoding.scheme.bits / 8)
    return int(total)


def macs_per_sample(
    model: onnx.ModelProto, executor: GraphExecutor, feeds: Mapping[str, torch.Tensor]
) -> dict[str, int]:
    """MACs of each Conv/ConvTranspose/Gemm/MatMul for one sample, from a real run's shapes."""
    shapes: dict[str, tuple[int, ...]] = {n: tuple(v.shape) for n, v in feeds.items()}

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        shapes[name] = tuple(value.shape)
        return value

    with torch.no_grad():
        executor.run(feeds, hook=hook)
    batch = next(iter(shapes.values()))[0] if shapes else 1
    weights = {n: tuple(t.shape) for n, t in executor.weights.items()}
    per_node: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        macs = _node_macs(node, out, shapes, weights)
        if macs:
            per_node[name] = int(macs // max(batch, 1))
    return per_node


def _shape(name: str, shapes, weights) -> tuple[int, ...] | None:
    return shapes.get(name) or weights.get(name)


def _node_macs(node, out, shapes, weights) -> int:
    op = node.op_type
    if op == "Conv":
        w = _shape(node.input[1], shapes, weights)
        return int(np.prod(out)) * int(np.prod(w[1:])) if w else 0
    if op == "ConvTranspose":
        w, x = _shape(node.input[1], shapes, weights), _shape(node.input[0], shapes, weights)
        return int(np.prod(x)) * int(np.prod(w[1:])) if w and x else 0
    if op == "Gemm":
        a = _shape(node.input[0], shapes, weights)
        if not a:
            return 0
        k = a[0] if int(parse_attributes(node).get("transA", 0)) else a[-1]
        return int(np.prod(out)) * int(k)
    if op == "MatMul":
        a = _shape(node.input[0], shapes, weights)
        return int(np.prod(out)) * int(a[-1]) if a else 0
    return 0
