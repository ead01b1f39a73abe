"""A stateful model measured as it is deployed: each model carries its own state.

A streaming model (silero-vad: ``state`` in, ``stateN`` out) is fed, chunk after chunk, the
state it returned for the previous chunk. Data recorded from a stream holds the float model's
states; measuring a quantized model on them hides the error its own state accumulates, which
deployment sees: auto judged the VAD "met" on recorded states where the streamed model measured
22.3 dB against a 30 dB target. Where a sample's state input is, to float32 rounding, the float
model's state output for the previous sample, the data is a recording of a stream, and the
quantized model is fed its own previous state there instead; a sample whose state matches
nothing (the start of another stream) keeps its recorded one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

# float32 rounding between the session that recorded the state and the one measuring here
_RTOL, _ATOL = 1e-4, 1e-6


def state_pairs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(input, output) pairs that could carry a state: same element type, same rank, equal
    dimensions wherever both are fixed. The data decides which pairs do (``StreamCarry``)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    pairs = []
    for source in inputs:
        for output in model.graph.output:
            if _compatible(source, output):
                pairs.append((source.name, output.name))
    return pairs


def _compatible(a: onnx.ValueInfoProto, b: onnx.ValueInfoProto) -> bool:
    ta, tb = a.type.tensor_type, b.type.tensor_type
    if ta.elem_type != tb.elem_type or not ta.HasField("shape") or not tb.HasField("shape"):
        return False
    if len(ta.shape.dim) != len(tb.shape.dim) or not ta.shape.dim:
        return False
    return all(
        not (x.HasField("dim_value") and y.HasField("dim_value")) or x.dim_value == y.dim_value
        for x, y in zip(ta.shape.dim, tb.shape.dim, strict=True)
    )


class StreamCarry:
    """Each measured model's last outputs, and which recorded states were the float model's."""

    def __init__(self, pairs: list[tuple[str, str]], outputs: list[str]) -> None:
        self.pairs = [(source, outputs.index(target)) for source, target in pairs]
        self.last: dict[str, list[np.ndarray]] = {}
        self.carried = 0  # samples whose recorded state was the float model's previous one
        self.outputs = outputs
        self.states: dict[str, str] = {}  # state input -> state output, where one was carried

    def step(self, feeds: Mapping[str, np.ndarray]) -> list[tuple[str, int]]:
        """The (input, output index) pairs whose recorded state in ``feeds`` is the float
        model's state output for the previous sample."""
        reference = self.last.get("float")
        if reference is None:
            return []
        matched = []
        for source, index in self.pairs:
            recorded, previous = np.asarray(feeds[source]), np.asarray(reference[index])
            if recorded.shape == previous.shape and np.allclose(
                recorded, previous, rtol=_RTOL, atol=_ATOL
            ):
                matched.append((source, index))
        if matched:
            self.carried += 1
            self.states.update((source, self.outputs[index]) for source, index in matched)
        return matched

    def feeds(
        self, key: str, feeds: Mapping[str, np.ndarray], matched: list[tuple[str, int]]
    ) -> dict[str, np.ndarray]:
        """``feeds`` for the model ``key``, its own previous state where ``matched``."""
        own, changed = self.last.get(key), dict(feeds)
        if own is None:
            return changed
        for source, index in matched:
            changed[source] = np.asarray(own[index], dtype=np.asarray(feeds[source]).dtype)
        return changed

    def record(self, key: str, outputs: list[np.ndarray]) -> None:
        self.last[key] = outputs
