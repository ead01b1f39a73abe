"""Model size: parameter count and bytes of weights at float and at quantized precision."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from qaas_engine.graph.executor import GraphExecutor
from qaas_engine.quant.encoding import Encoding


class QuantizedWeights(Protocol):
    """What packing needs from a quantized model (a ``QuantSim`` is one): its weights and the
    encodings of those stored at a bit-width."""

    @property
    def executor(self) -> GraphExecutor: ...

    @property
    def weight_encodings(self) -> Mapping[str, Encoding]: ...

    @property
    def bias_encodings(self) -> Mapping[str, Encoding]: ...


def count_params(executor: GraphExecutor) -> int:
    return int(sum(t.numel() for t in executor.weights.values() if t.is_floating_point()))


def float_bytes(executor: GraphExecutor) -> int:
    return int(sum(t.numel() * t.element_size() for t in executor.weights.values()))


def quantized_bytes(sim: QuantizedWeights) -> int:
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
