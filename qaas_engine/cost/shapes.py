"""Work and traffic per layer for one sample, counted from a real run's tensor shapes.

Every function here takes the feeds of exactly one sample (a batch of 1, or one stacked sample
whose inputs have no batch axis first), so no axis is guessed to be the batch.

Independent of bit-widths: the same counts price the float model and every quantized one. The
run is ONNX Runtime's with every tensor exposed (the torch executor where ORT cannot load the
graph): shapes, unlike a static inference, are known for every op and every exporter.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from qaas_engine.graph.lazy import weight_layouts
from qaas_engine.tapped import TappedModel
from qaas_engine.tensors import to_numpy, to_torch

if TYPE_CHECKING:
    from qaas_engine.graph.lazy import Executor

# Elementwise ops whose arithmetic is countable from the output shape: one op per element.
ELEMENTWISE_ADDS = {"Add", "Sub"}
ELEMENTWISE_MULTS = {"Mul", "Div"}
REDUCING_ADDS = {"GlobalAveragePool", "ReduceMean", "ReduceSum"}

Shape = tuple[int, ...]


@dataclass
class LayerShape:
    """A counted layer's work and traffic per sample, independent of bit-widths."""

    name: str
    op_type: str
    macs: int  # multiply-accumulates (or single adds/mults for elementwise ops) per sample
    kind: str  # "mac", "add" or "mult"
    weight_elements: int
    bias_elements: int
    input_elements: int
    output_elements: int
    weight: str | None
    inputs: list[str]
    output: str

    def with_kept_channels(self, kept: float) -> LayerShape:
        """A pruned output channel is skipped: its MACs, weights and output are not computed or
        moved, so the layer costs ``kept`` of its work and traffic (its inputs are still read)."""
        return replace(
            self,
            macs=int(round(self.macs * kept)),
            weight_elements=int(round(self.weight_elements * kept)),
            bias_elements=int(round(self.bias_elements * kept)),
            output_elements=int(round(self.output_elements * kept)),
        )


# The last shapes run per executor: the rules' budget, the report's MACs and the energy report
# each ask for the same sample's shapes (a session and a run with every tensor exposed).
_LAST_RUN: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[str, Shape]]] = (
    weakref.WeakKeyDictionary()
)


def _run_shapes(
    model: onnx.ModelProto, executor: Executor, feeds: Mapping[str, Any]
) -> dict[str, Shape]:
    """The shape of every tensor one run computes, the feeds included; the same model, executor
    and sample (by value) are run once."""
    arrays = {name: to_numpy(value) for name, value in feeds.items()}
    key = (id(model), _signature(arrays))  # the executor holds the model: the id stays its own
    try:
        last = _LAST_RUN.get(executor)
    except TypeError:  # an executor that takes no weak reference: never cached
        last = None
    if last is not None and last[0] == key:
        return dict(last[1])
    shapes = _measure_shapes(model, executor, feeds, arrays)
    try:
        _LAST_RUN[executor] = (key, shapes)
    except TypeError:
        pass
    return dict(shapes)


def _signature(arrays: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    """The sample by value: names, types, shapes and a digest of the bytes."""
    return tuple(
        (
            name,
            array.dtype.str,
            array.shape,
            hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest(),
        )
        for name, array in sorted(arrays.items())
    )


def _measure_shapes(
    model: onnx.ModelProto,
    executor: Executor,
    feeds: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {n: tuple(v.shape) for n, v in feeds.items()}
    try:
        every = [name for node in model.graph.node for name in node.output if name]
        # one sample, run whole: its inputs need not have the batch on axis 0
        run = TappedModel(model, every, optimized=False, batched=False)
        for values in run.run(arrays):
            shapes.update({name: tuple(value.shape) for name, value in values.items()})
        return shapes
    except Exception:  # a graph only the torch executor runs
        return _run_shapes_in_torch(executor, arrays, shapes)


def _run_shapes_in_torch(
    executor: Executor, feeds: Mapping[str, np.ndarray], shapes: dict[str, Shape]
) -> dict[str, Shape]:
    import torch

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        shapes[name] = tuple(value.shape)
        return value

    with torch.no_grad():
        executor.run(to_torch(feeds), hook=hook)
    return shapes


def macs_per_sample(
    model: onnx.ModelProto,
    executor: Executor,
    feeds: Mapping[str, Any],
    shapes: dict[str, Shape] | None = None,
) -> dict[str, int]:
    """MACs of each Conv/ConvTranspose/Gemm/MatMul for one sample, from a real run's shapes."""
    shapes = shapes if shapes is not None else _run_shapes(model, executor, feeds)
    weights = {name: shape for name, shape, _ in weight_layouts(executor)}
    per_node: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        macs = _node_macs(node, out, shapes, weights)
        if macs:
            per_node[name] = int(macs)
    return per_node


def _shape(name: str, shapes: Mapping[str, Shape], weights: Mapping[str, Shape]) -> Shape | None:
    return shapes.get(name) or weights.get(name)


def _node_macs(
    node: onnx.NodeProto,
    out: Shape,
    shapes: Mapping[str, Shape],
    weights: Mapping[str, Shape],
) -> int:
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
        trans_a = next(
            (helper.get_attribute_value(x) for x in node.attribute if x.name == "transA"), 0
        )
        k = a[0] if int(trans_a) else a[-1]
        return int(np.prod(out)) * int(k)
    if op == "MatMul":
        a = _shape(node.input[0], shapes, weights)
        return int(np.prod(out)) * int(a[-1]) if a else 0
    return 0


def layer_shapes(
    model: onnx.ModelProto, executor: Executor, sample: Mapping[str, Any]
) -> list[LayerShape]:
    """Every layer with countable arithmetic: weighted layers (MACs), two-input elementwise
    ops and reductions; ops without arithmetic (reshapes, max pooling, a fused Relu) are not."""
    shapes = _run_shapes(model, executor, sample)
    macs = macs_per_sample(model, executor, sample, shapes)
    weights = executor.weights
    layers = []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if not node.output or node.output[0] not in shapes:
            continue
        out_elems = int(np.prod(shapes[node.output[0]]))
        dynamic = [n for n in node.input if n and n in shapes and n not in weights]
        in_elems = sum(int(np.prod(shapes[n])) for n in dynamic)
        if name in macs:
            weight = node.input[1] if len(node.input) > 1 and node.input[1] in weights else None
            bias = node.input[2] if len(node.input) > 2 and node.input[2] in weights else None
            layers.append(
                LayerShape(
                    name, node.op_type, macs[name], "mac",
                    _size(weights[weight]) if weight else 0,
                    _size(weights[bias]) if bias else 0,
                    in_elems, out_elems, weight, dynamic, node.output[0],
                )
            )  # fmt: skip
        elif node.op_type in ELEMENTWISE_ADDS | ELEMENTWISE_MULTS and len(dynamic) == 2:
            kind = "add" if node.op_type in ELEMENTWISE_ADDS else "mult"
            layers.append(
                LayerShape(name, node.op_type, out_elems, kind, 0, 0, in_elems, out_elems,
                           None, dynamic, node.output[0])
            )  # fmt: skip
        elif node.op_type in REDUCING_ADDS and dynamic:
            layers.append(
                LayerShape(name, node.op_type, in_elems, "add", 0, 0, in_elems, out_elems,
                           None, dynamic, node.output[0])
            )  # fmt: skip
    return layers


def _size(value: Any) -> int:
    return int(np.prod(value.shape))
