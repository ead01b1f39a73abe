"""Small helpers for rewriting an ONNX graph in place: initializers as numpy, consumer maps."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


class GraphEditor:
    """Initializers read and written as numpy arrays; consumers/producers looked up by name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.refresh()

    def refresh(self) -> None:
        graph = self.model.graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
            for name in node.output:
                self.producers[name] = node
        self.graph_outputs = {o.name for o in graph.output}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name]).astype(np.float64)

    def set_array(self, name: str, array: np.ndarray) -> None:
        old = self.initializers.get(name)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type) if old else np.float32
        tensor = numpy_helper.from_array(np.asarray(array).astype(dtype), name)
        if old is not None:
            old.CopyFrom(tensor)
        else:
            self.model.graph.initializer.append(tensor)
            self.initializers[name] = self.model.graph.initializer[-1]

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph_outputs:
            return None
        return users[0]

    def unique_name(self, base: str) -> str:
        taken = (
            set(self.initializers) | set(self.producers) | {n.name for n in self.model.graph.node}
        )
        name, index = base, 0
        while name in taken:
            index += 1
            name = f"{base}_{index}"
        return name
