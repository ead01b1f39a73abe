"""Model size: parameter count and bytes of weights at float and at quantized precision."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import numpy as np

from qaas_engine.graph.lazy import weight_layouts
from qaas_engine.quant.encoding import Encoding

if TYPE_CHECKING:
    from qaas_engine.graph.lazy import Executor


class QuantizedWeights(Protocol):
    """What packing needs from a quantized model (a ``QuantSim`` is one): its weights and the
    encodings of those stored at a bit-width."""

    @property
    def executor(self) -> Executor: ...

    @property
    def weight_encodings(self) -> Mapping[str, Encoding]: ...

    @property
    def bias_encodings(self) -> Mapping[str, Encoding]: ...


def count_params(executor: Executor) -> int:
    return sum(math.prod(shape) for _, shape, dtype in weight_layouts(executor) if _is_float(dtype))


def float_bytes(executor: Executor) -> int:
    return sum(math.prod(shape) * dtype.itemsize for _, shape, dtype in weight_layouts(executor))


def quantized_bytes(sim: QuantizedWeights) -> int:
    """Weights packed at their bit-width, int32 biases, everything else as stored."""
    total = 0
    params = {**sim.weight_encodings, **sim.bias_encodings}
    for name, shape, dtype in weight_layouts(sim.executor):
        encoding = params.get(name)
        elements = math.prod(shape)
        if encoding is None:
            total += elements * dtype.itemsize
        else:
            total += math.ceil(elements * encoding.scheme.bits / 8)
    return int(total)


def _is_float(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.floating))
