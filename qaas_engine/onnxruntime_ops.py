"""Nodes of other domains (ONNX Runtime's ``com.microsoft`` contrib ops, ``ai.onnx.ml``) run
through ONNX Runtime itself, one node per session, so a model that uses them is calibrated and
quantized around them instead of refused.

The node keeps float in the exported model (placement never quantizes a foreign-domain output),
and the runtime that will execute the export is the one computing it here, so the simulation and
the deployed model agree by construction. No gradient flows back through such a node: in
AdaRound and QAT, layers before it learn only from paths that avoid it; that is the price of not
refusing the model.

Wiring: :class:`OnnxRuntimeKernel` has the graph executor's reference-kernel shape
(``run(args) -> outputs``); the executor builds one for a node whose domain is not the default
one and for which :func:`onnxruntime_knows` is true, where it would otherwise refuse the node.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

if TYPE_CHECKING:
    import torch


@cache
def onnxruntime_schema_versions() -> dict[tuple[str, str], int]:
    """(domain, op type) -> the newest version this ONNX Runtime build defines."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    versions: dict[tuple[str, str], int] = {}
    for schema in state.get_all_operator_schema():
        key = (schema.domain, schema.name)
        versions[key] = max(versions.get(key, 0), schema.since_version)
    return versions


def onnxruntime_knows(node: onnx.NodeProto) -> bool:
    """Whether this ONNX Runtime build has a schema for the node's (domain, op type)."""
    return (node.domain, node.op_type) in onnxruntime_schema_versions()


class OnnxRuntimeKernel:
    """One node in a one-node model run by ONNX Runtime; torch tensors in and out.

    ``domain_version`` is the model's opset for the node's domain (the newest ONNX Runtime knows
    when not given). Sessions are built on first use per input dtype/rank signature, shapes
    left dynamic, so calibration batches of any size reuse them.
    """

    def __init__(self, node: onnx.NodeProto, opset: int, domain_version: int | None = None):
        self.node = onnx.NodeProto()
        self.node.CopyFrom(node)
        version = domain_version or onnxruntime_schema_versions().get(
            (node.domain, node.op_type), 1
        )
        self.opsets = [helper.make_opsetid("", opset)]
        if node.domain not in ("", "ai.onnx"):
            self.opsets.append(helper.make_opsetid(node.domain, version))
        self.sessions: dict[tuple, ort.InferenceSession] = {}

    def run(self, args: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Outputs in the node's order; ``None`` where an output is not requested (``''``)."""
        feeds = {
            name: value.detach().cpu().numpy()
            for name, value in zip(self.node.input, args, strict=False)
            if name and value is not None
        }
        signature = tuple((name, array.dtype.str, array.ndim) for name, array in feeds.items())
        if signature not in self.sessions:
            self.sessions[signature] = self._session(feeds)
        requested = [name for name in self.node.output if name]
        results = dict(zip(requested, self.sessions[signature].run(requested, feeds), strict=True))
        import torch

        device = next((a.device for a in args if a is not None), torch.device("cpu"))
        return [
            torch.from_numpy(np.asarray(results[name])).to(device) if name else None
            for name in self.node.output
        ]

    def _session(self, feeds: dict[str, np.ndarray]) -> ort.InferenceSession:
        inputs = [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), [None] * array.ndim
            )
            for name, array in feeds.items()
        ]
        outputs = [
            helper.make_value_info(name, onnx.TypeProto()) for name in self.node.output if name
        ]
        graph = helper.make_graph([self.node], f"{self.node.op_type}_alone", inputs, outputs)
        model = helper.make_model(graph, opset_imports=self.opsets)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
