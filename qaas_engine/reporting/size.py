"""Model size: parameter count and bytes of weights at float and at quantized precision."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from qaas_engine.quant.encoding import Encoding
from qaas_engine.tensors import to_numpy

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


def _arrays(executor: Executor) -> list[np.ndarray]:
    """The weights as arrays (numpy views of torch tensors: nothing is copied)."""
    return [to_numpy(value) for value in executor.weights.values()]


def count_params(executor: Executor) -> int:
    return int(sum(a.size for a in _arrays(executor) if np.issubdtype(a.dtype, np.floating)))


def float_bytes(executor: Executor) -> int:
    return int(sum(a.nbytes for a in _arrays(executor)))


def quantized_bytes(sim: QuantizedWeights) -> int:
    """Weights packed at their bit-width, int32 biases, everything else as stored."""
    total = 0
    params = {**sim.weight_encodings, **sim.bias_encodings}
    for name, value in sim.executor.weights.items():
        array: Any = to_numpy(value)
        encoding = params.get(name)
        if encoding is None:
            total += array.nbytes
        else:
            total += math.ceil(array.size * encoding.scheme.bits / 8)
    return int(total)
