"""The float graph with a switch on each weighted layer's weight and output quantizer.

The per-layer analysis asks, layer by layer, "what does quantizing only this layer's weights
(or only its output) do to the model's output?". Building a model per question costs a session
each; instead every such quantizer sits behind ``Where(switch, quantized, float)`` with the
switch a boolean graph input, so one ONNX Runtime session answers all of them: all switches off
is the float model (up to the rounding of kernels ORT fuses differently), one switch on is that
layer alone quantized, as the exported Q/DQ computes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from qaas_engine.export.qdq import QdqBuilder, unsigned_container
from qaas_engine.quant.encoding import Encoding
from qaas_engine.sessions import session

ON, OFF = np.array(True), np.array(False)


@dataclass
class ProbeModel:
    """One session; ``run(feeds, weight=..., activation=...)`` turns on at most one switch each.
    It holds the session, not the probe graph: ORT has its own copy of the weights, and a
    second one held through the analysis was a model's size more at its peak."""

    session: ort.InferenceSession
    output: str
    weight_switches: dict[str, str] = field(default_factory=dict)  # weight -> switch input
    activation_switches: dict[str, str] = field(default_factory=dict)  # tensor -> switch input
    taps: list[str] = field(default_factory=list)  # float tensors exposed by run_tapped
    outputs: list[str] = field(default_factory=list)  # every graph output, for run_switched

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        *,
        weight: str | None = None,
        activation: str | None = None,
    ) -> np.ndarray:
        switches = {s: OFF for s in self.weight_switches.values()}
        switches.update({s: OFF for s in self.activation_switches.values()})
        if weight is not None:
            switches[self.weight_switches[weight]] = ON
        if activation is not None:
            switches[self.activation_switches[activation]] = ON
        return self.session.run([self.output], {**feeds, **switches})[0]

    def run_switched(
        self,
        feeds: Mapping[str, np.ndarray],
        *,
        weights: Iterable[str] = (),
        activations: Iterable[str] = (),
    ) -> list[np.ndarray]:
        """Every graph output with the switches of ``weights`` and ``activations`` on (any
        number of each) and the rest off."""
        switches = {s: OFF for s in self.weight_switches.values()}
        switches.update({s: OFF for s in self.activation_switches.values()})
        switches.update({self.weight_switches[name]: ON for name in weights})
        switches.update({self.activation_switches[name]: ON for name in activations})
        return list(self.session.run(self.outputs, {**feeds, **switches}))

    def run_tapped(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The float model (every switch off): its output and the taps, graph inputs included."""
        switches = {
            s: OFF for s in [*self.weight_switches.values(), *self.activation_switches.values()]
        }
        fetched = [t for t in self.taps if t not in feeds]
        values = self.session.run([self.output, *fetched], {**feeds, **switches})
        result = dict(zip([self.output, *fetched], values, strict=True))
        result.update({t: np.asarray(feeds[t]) for t in self.taps if t in feeds})
        return result


def build_probe(
    float_model: onnx.ModelProto,
    weights: Mapping[str, Encoding],
    activations: Mapping[str, Encoding],
    taps: Iterable[str] = (),
    quantize_from: Mapping[str, np.ndarray] | None = None,
    arena: bool = False,
) -> ProbeModel:
    """``float_model`` with switchable quantizers on ``weights`` (initializer names) and on
    ``activations`` (tensors a main-graph node produces, graph outputs included; graph inputs
    and initializers read as activations too, their consumers reading the switch); ``taps``
    (tensors of the float model) are exposed for :meth:`ProbeModel.run_tapped`.
    ``quantize_from`` gives the values a weight's switch quantizes where they are no longer the
    float initializer's (AdaRound's learned rounding): the grid values the export holds.
    ``arena``: keep ORT's memory arena (``sessions.session``), for many runs of small tensors."""
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph = model.graph
    builder = QdqBuilder(model)
    initializers = {init.name: init for init in graph.initializer}
    produced = {name for node in graph.node for name in node.output}
    rename: dict[str, str] = {}
    added: list[onnx.NodeProto] = []
    weight_switches: dict[str, str] = {}
    activation_switches: dict[str, str] = {}

    for index, (name, encoding) in enumerate(weights.items()):
        init = initializers.get(name)
        if init is None:
            continue
        # integers and a DequantizeLinear, as exported: a quarter of a float copy's memory
        quantized = f"{name}__probe_q"
        added.append(
            builder.dequantized_weight(
                f"{name}__probe_int",
                _weight_values(init, quantize_from),
                quantized,
                unsigned_container(encoding),
            )
        )
        switch = _switch(graph, f"probe_weight_{index}")
        rename[name] = f"{name}__probe"
        added.append(helper.make_node("Where", [switch, quantized, name], [rename[name]]))
        weight_switches[name] = switch

    activation_nodes: dict[str, list[onnx.NodeProto]] = {}
    read = {value.name for value in graph.input} | set(initializers)
    for index, (name, encoding) in enumerate(activations.items()):
        if name not in produced and name in read and name not in rename:
            # a graph input or a constant: its consumers read the switch's output instead
            switch = _switch(graph, f"probe_activation_{index}")
            fake, switched = f"{name}__probe_fq", f"{name}__probe_in"
            added.extend(builder.quantize_pair(name, fake, unsigned_container(encoding)))
            added.append(helper.make_node("Where", [switch, fake, name], [switched]))
            rename[name] = switched
            activation_switches[name] = switch
            continue
        if name not in produced:
            continue
        # the producer writes name__probe_raw; the switch writes ``name`` for every consumer
        switch = _switch(graph, f"probe_activation_{index}")
        raw, fake = f"{name}__probe_raw", f"{name}__probe_fq"
        nodes = builder.quantize_pair(raw, fake, unsigned_container(encoding))
        nodes.append(helper.make_node("Where", [switch, fake, raw], [name]))
        activation_nodes[name] = nodes
        activation_switches[name] = switch

    body: list[onnx.NodeProto] = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for i, name in enumerate(node.output):
            if name in activation_nodes:
                node.output[i] = f"{name}__probe_raw"
        body.append(node)
        for output in list(node.output):
            body.extend(activation_nodes.get(output.removesuffix("__probe_raw"), ()))
    del graph.node[:]
    graph.node.extend(added + body)
    graph.initializer.extend(builder.initializers)
    if builder.uses_ms_domain and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    inputs = {value.name for value in graph.input}
    outputs = {value.name for value in graph.output}
    graph_outputs = [value.name for value in graph.output]
    reachable = [t for t in dict.fromkeys(taps) if t in produced or t in inputs]
    graph.output.extend(onnx.ValueInfoProto(name=t) for t in reachable if t not in outputs | inputs)
    output = graph.output[0].name
    runner = session(model, arena=arena)
    del model, graph, builder, added, body, initializers  # before the analysis runs
    return ProbeModel(
        runner, output, weight_switches, activation_switches, reachable, graph_outputs
    )


def _weight_values(
    init: onnx.TensorProto, quantize_from: Mapping[str, np.ndarray] | None
) -> np.ndarray:
    if quantize_from is not None and init.name in quantize_from:
        return np.asarray(quantize_from[init.name], dtype=np.float32)
    return onnx.numpy_helper.to_array(init)


def _switch(graph: onnx.GraphProto, name: str) -> str:
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.BOOL, []))
    return name
