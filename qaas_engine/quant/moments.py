"""Per-channel statistics propagated through the graph from BatchNorm, with no data at all.

A folded BN layer's output is modelled per channel as N(beta, gamma^2). Through elementwise
activations the mean and variance come from Gauss-Hermite quadrature and the bounds from the
activation of beta +- 3|gamma|; through linear layers and residual adds, means add and variances
add (channels assumed independent). Data-movement and pooling ops keep their input's statistics.
Any other op ends the chain: tensors downstream get no statistics, and whoever asked is told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from qaas_engine.graph.attributes import parse_attributes
from qaas_engine.transforms.graph_edit import GraphEditor

SIGMAS = 3.0
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(48)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
KEEP_STATS = {
    "Reshape",
    "Flatten",
    "Identity",
    "Dropout",
    "MaxPool",
    "GlobalMaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Squeeze",
    "Unsqueeze",
    "Pad",
}


@dataclass
class Moments:
    """Per-channel (axis 1, or the only axis) mean, deviation and likely bounds."""

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def gaussian(cls, mean: np.ndarray, std: np.ndarray) -> Moments:
        std = np.abs(std)
        return cls(mean, std, mean - SIGMAS * std, mean + SIGMAS * std)


def _elementwise(fn: Callable[[np.ndarray], np.ndarray], m: Moments) -> Moments:
    """Moments of fn(x) for x ~ N(mean, std^2) per channel; bounds from a grid over [low, high]."""
    samples = m.mean[:, None] + m.std[:, None] * _NODES[None, :]
    values = fn(samples)
    mean = values @ _WEIGHTS
    var = np.maximum((values**2) @ _WEIGHTS - mean**2, 0.0)
    grid = m.low[:, None] + (m.high - m.low)[:, None] * np.linspace(0, 1, 65)[None, :]
    mapped = fn(grid)
    return Moments(mean, np.sqrt(var), mapped.min(axis=1), mapped.max(axis=1))


def _per_channel(array: np.ndarray, channels: int) -> np.ndarray:
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    if flat.size == 1:
        return np.full(channels, float(flat[0]))
    if flat.size == channels:
        return flat
    raise ValueError("not per-channel")


def activation_fn(
    node: onnx.NodeProto, editor: GraphEditor, channels: int
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The node as a per-channel elementwise function of its first input, when it is one."""
    attrs = parse_attributes(node)
    op = node.op_type
    consts = [editor.array(i) for i in node.input[1:] if i and editor.is_constant(i)]
    try:
        if op == "Relu":
            return lambda x: np.maximum(x, 0.0)
        if op == "LeakyRelu":
            alpha = float(attrs.get("alpha", 0.01))
            return lambda x: np.where(x > 0, x, alpha * x)
        if op == "PRelu" and consts:
            slope = _per_channel(consts[0], channels)[:, None]
            return lambda x: np.where(x > 0, x, slope * x)
        if op == "Clip":
            low = float(consts[0]) if len(node.input) > 1 and node.input[1] else -np.inf
            high = float(consts[-1]) if len(node.input) > 2 and node.input[2] else np.inf
            low, high = attrs.get("min", low), attrs.get("max", high)
            return lambda x: np.clip(x, low, high)
        if op in ("Min", "Max") and len(consts) == len(node.input) - 1 == 1:
            bound = _per_channel(consts[0], channels)[:, None]
            return (
                (lambda x: np.minimum(x, bound))
                if op == "Min"
                else (lambda x: np.maximum(x, bound))
            )
        if op == "Sigmoid":
            return lambda x: 1.0 / (1.0 + np.exp(-x))
        if op == "Tanh":
            return np.tanh
        if op == "HardSigmoid":
            a, b = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
            return lambda x: np.clip(a * x + b, 0.0, 1.0)
        if op == "HardSwish":
            return lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    except ValueError:
        return None
    return None


def _linear(node: onnx.NodeProto, editor: GraphEditor, m: Moments) -> Moments | None:
    """Moments after a Conv/Gemm with constant weights, channels taken as independent."""
    if len(node.input) < 2 or not editor.is_constant(node.input[1]):
        return None
    weight = editor.array(node.input[1])
    attrs = parse_attributes(node)
    bias = editor.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "Conv":
        groups = int(attrs.get("group", 1))
        if groups == 1:
            w_sum = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)
            w_sq = (weight**2).reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)
            mean, var = w_sum @ m.mean, w_sq @ (m.std**2)
        elif weight.shape[1] == 1 and groups == weight.shape[0] == m.mean.size:
            w_sum = weight.reshape(weight.shape[0], -1).sum(axis=1)
            w_sq = (weight**2).reshape(weight.shape[0], -1).sum(axis=1)
            mean, var = w_sum * m.mean, w_sq * m.std**2
        else:
            return None
    elif node.op_type == "Gemm" and not int(attrs.get("transA", 0)):
        w = weight if int(attrs.get("transB", 0)) else weight.T
        mean, var = w @ m.mean, (w**2) @ (m.std**2)
    else:
        return None
    if bias is not None:
        mean = mean + bias.reshape(-1)
    return Moments.gaussian(mean, np.sqrt(var))


def propagate(
    model: onnx.ModelProto, seeds: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Moments]:
    """Statistics for every tensor reachable from the seeds (tensor -> (beta, gamma))."""
    editor = GraphEditor(model)
    known = {
        name: Moments.gaussian(beta.astype(np.float64), gamma.astype(np.float64))
        for name, (beta, gamma) in seeds.items()
    }
    for node in model.graph.node:
        if not node.output or node.output[0] in known or not node.input:
            continue
        source = known.get(node.input[0])
        result = None
        if node.op_type in KEEP_STATS and source is not None:
            result = source
        elif node.op_type == "Add" and len(node.input) == 2:
            a, b = known.get(node.input[0]), known.get(node.input[1])
            if a is not None and b is not None and a.mean.size == b.mean.size:
                result = Moments.gaussian(a.mean + b.mean, np.sqrt(a.std**2 + b.std**2))
        elif node.op_type == "Concat" and int(parse_attributes(node).get("axis", 1)) == 1:
            parts = [known.get(i) for i in node.input]
            if all(p is not None for p in parts):
                result = Moments(
                    *(
                        np.concatenate([getattr(p, f) for p in parts])
                        for f in ("mean", "std", "low", "high")
                    )
                )
        elif node.op_type in ("Conv", "Gemm") and source is not None:
            result = _linear(node, editor, source)
        elif source is not None:
            fn = activation_fn(node, editor, source.mean.size)
            if fn is not None:
                result = _elementwise(fn, source)
        if result is not None:
            known[node.output[0]] = result
    return known
