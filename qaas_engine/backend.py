"""The engine's executor behind ONNX's backend API (``onnx.backend.base.Backend``).

This is how ONNX runtimes show conformance: ONNX's own node test cases run through ``prepare`` and
``run``. The graph runs in :class:`~qaas_engine.graph.executor.GraphExecutor`, the very executor
that calibration, simulation, AdaRound and QAT use, so a case passing here is an op the engine
can compute (and quantize around) in a user's model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from qaas_engine.graph.dtypes import to_declared, to_torch
from qaas_engine.graph.executor import GraphExecutor


def _check_device(device: str) -> None:
    if not QaasBackend.supports_device(device):
        raise ValueError(f"qaas_engine.backend runs on CPU only, not {device}")


class QaasBackendRep(BackendRep):
    """A prepared model: its executor and the declared type of each graph output."""

    def __init__(self, model: onnx.ModelProto, device: str = "CPU") -> None:
        _check_device(device)
        self.executor = GraphExecutor(_with_inferred_types(model))
        self._output_types = {
            o.name: o.type.tensor_type.elem_type if o.type.HasField("tensor_type") else 0
            for o in model.graph.output
        }

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Inputs by position (graph inputs without initializers, in order) or by name; one
        numpy array per graph output, in the declared element type."""
        if isinstance(inputs, Mapping):
            named = dict(inputs)
        else:
            values = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            named = dict(zip(self.executor.input_names, values, strict=False))
        feeds = {name: to_torch(value) for name, value in named.items()}
        with torch.no_grad():
            results = self.executor.run(feeds)
        return tuple(to_declared(results[name], self._output_types[name]) for name in results)


def _with_inferred_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Intermediate types tell the executor which widened unsigned values to wrap around; a
    model whose shapes cannot be inferred still runs, without that."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx raises several unrelated types here
        return model


class QaasBackend(Backend):
    """``prepare`` compiles once; ``run_node`` wraps one node in a model of its own."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> QaasBackendRep:
        onnx.checker.check_model(model)
        return QaasBackendRep(model, device)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """CPU only: the engine calibrates and simulates on CPU, and its kernels create their
        helper tensors (indices, interpolation matrices) there."""
        return Device(device).type == DeviceType.CPU

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Inputs are numpy arrays in the order of the node's (non-empty) inputs."""
        super().run_node(node, inputs, device, outputs_info, **kwargs)
        arrays = [np.asarray(a) for a in inputs]
        names = [name for name in node.input if name]
        graph_inputs = [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
            )
            for name, array in zip(names, arrays, strict=True)
        ]
        if outputs_info:
            graph_outputs = [
                helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape
                )
                for name, (dtype, shape) in zip(node.output, outputs_info, strict=False)
            ]
        else:
            graph_outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        opset = int(kwargs.get("opset_version", onnx.defs.onnx_opset_version()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return QaasBackendRep(model, device).run(arrays)


prepare = QaasBackend.prepare
run_model = QaasBackend.run_model
run_node = QaasBackend.run_node
supports_device = QaasBackend.supports_device
