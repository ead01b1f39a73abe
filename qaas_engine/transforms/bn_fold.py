"""Fold inference-mode BatchNormalization into the Conv/ConvTranspose/Gemm before it.

An integer runtime quantizes the folded weights, never a separate BN, so folding comes before
any quantizer is placed. The BN statistics are kept: the folded layer's output is distributed
per channel with mean ``beta`` and deviation ``|gamma|`` before its activation, which is what
data-free range setting and analytical bias correction start from.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qaas_engine.graph.attributes import parse_attributes


@dataclass(frozen=True)
class FoldedBatchNorm:
    layer: str  # node name of the Conv/Gemm that absorbed the BN
    batchnorm: str
    output: str  # the tensor the folded layer now produces (the BN's former output)
    gamma: np.ndarray
    beta: np.ndarray


def fold_batchnorms(model: onnx.ModelProto) -> list[FoldedBatchNorm]:
    """Fold in place; returns what was folded. A BN whose producer has other consumers stays."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    folded: list[FoldedBatchNorm] = []
    removed: set[int] = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        layer = producers.get(bn.input[0])
        if layer is None or layer.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        if len(consumers[layer.output[0]]) != 1 or layer.output[0] in graph_outputs:
            continue
        if not all(name in inits for name in bn.input[1:5]) or layer.input[1] not in inits:
            continue
        result = _fold_pair(model, layer, bn, inits)
        if result is not None:
            folded.append(result)
            removed.add(id(bn))
    if removed:
        kept = [node for node in graph.node if id(node) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        prune_unused_initializers(model)
    return folded


def _fold_pair(model, layer, bn, inits) -> FoldedBatchNorm | None:
    attrs = parse_attributes(layer)
    gamma, beta, mean, var = (
        numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5]
    )
    eps = float(parse_attributes(bn).get("epsilon", 1e-5))
    factor = gamma / np.sqrt(var + eps)
    weight = numpy_helper.to_array(inits[layer.input[1]]).astype(np.float64)
    if layer.op_type == "Conv":
        axis = 0
    elif layer.op_type == "ConvTranspose":
        if int(attrs.get("group", 1)) != 1:
            return None
        axis = 1
    else:  # Gemm: fold only a plain x @ W^T or x @ W with per-feature BN
        if int(attrs.get("transA", 0)) or weight.ndim != 2:
            return None
        if float(attrs.get("alpha", 1.0)) != 1.0 or float(attrs.get("beta", 1.0)) != 1.0:
            return None
        axis = 0 if int(attrs.get("transB", 0)) else 1
    if weight.shape[axis] != factor.shape[0]:
        return None
    shape = [1] * weight.ndim
    shape[axis] = -1
    new_weight = weight * factor.reshape(shape)
    bias = np.zeros(factor.shape[0])
    if len(layer.input) > 2 and layer.input[2]:
        if layer.input[2] not in inits:
            return None
        bias = numpy_helper.to_array(inits[layer.input[2]]).astype(np.float64)
        if bias.shape != factor.shape:
            return None
    new_bias = (bias - mean) * factor + beta
    weight_name = _unique_initializer(model, layer.input[1], new_weight, inits)
    bias_name = _unique_initializer(
        model,
        layer.input[2] if len(layer.input) > 2 and layer.input[2] else f"{layer.name}_bias",
        new_bias,
        inits,
    )
    layer.input[1] = weight_name
    if len(layer.input) > 2:
        layer.input[2] = bias_name
    else:
        layer.input.append(bias_name)
    layer.output[0] = bn.output[0]
    return FoldedBatchNorm(
        layer.name or layer.output[0],
        bn.name or bn.output[0],
        bn.output[0],
        gamma.astype(np.float32),
        beta.astype(np.float32),
    )


def _unique_initializer(model, name, array, inits) -> str:
    """Write the folded tensor; a fresh name if another node still reads the old one."""
    users = sum(1 for node in model.graph.node for i in node.input if i == name)
    target = name if users <= 1 else f"{name}_folded"
    tensor = numpy_helper.from_array(array.astype(np.float32), target)
    if target in inits:
        inits[target].CopyFrom(tensor)
    else:
        model.graph.initializer.append(tensor)
        inits[target] = model.graph.initializer[-1]
    return target


def prune_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used.update(o.name for o in model.graph.output)
    kept = [init for init in model.graph.initializer if init.name in used]
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
