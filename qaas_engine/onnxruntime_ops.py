"""Nodes of other domains (ONNX Runtime's ``com.microsoft`` contrib ops, ``ai.onnx.ml``) run
through ONNX Runtime itself, one node per session, so a model that uses them is calibrated and
quantized around them instead of refused.

The node keeps float in the exported model (placement never quantizes a foreign-domain output),
and the runtime that will execute the export is the one computing it here, so the simulation and
the deployed model agree by construction. No gradient flows back through such a node: in
AdaRound and QAT, layers before it learn only from paths that avoid it; that is the price of not
refusing the model.

Wiring: the graph executor calls :func:`onnxruntime_op` for a node whose domain is not the
default one and for which :func:`onnxruntime_knows` is true, in place of an ``OP_REGISTRY``
lookup; the returned callable has the registry's signature.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from qaas_engine.graph.registry import NodeContext, OpFn

DEFAULT_DOMAINS = ("", "ai.onnx")


@cache
def _schemas() -> frozenset[tuple[str, str]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return frozenset((schema.domain, schema.name) for schema in state.get_all_operator_schema())


def onnxruntime_knows(node: onnx.NodeProto) -> bool:
    """Whether this ONNX Runtime build has a schema for the node's (domain, op type)."""
    return (node.domain, node.op_type) in _schemas()


def onnxruntime_op(node: onnx.NodeProto, opset_imports: Iterable[onnx.OperatorSetIdProto]) -> OpFn:
    """A registry-compatible op that computes ``node`` in ONNX Runtime.

    Sessions are built on first use per input dtype/rank signature (shapes stay dynamic, so
    calibration batches of any size reuse them).
    """
    template = onnx.NodeProto()
    template.CopyFrom(node)
    opsets = [helper.make_opsetid(o.domain, o.version) for o in opset_imports]
    sessions: dict[tuple, ort.InferenceSession] = {}

    def run(context: NodeContext, args: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        feeds = {
            name: value.detach().cpu().numpy()
            for name, value in zip(template.input, args, strict=False)
            if name and value is not None
        }
        signature = tuple((name, array.dtype.str, array.ndim) for name, array in feeds.items())
        if signature not in sessions:
            sessions[signature] = _session(template, opsets, feeds)
        wanted = [name for name in template.output[: context.num_outputs] if name]
        results = sessions[signature].run(wanted, feeds)
        device = next((a.device for a in args if a is not None), torch.device("cpu"))
        return [torch.from_numpy(np.asarray(result)).to(device) for result in results]

    return run


def _session(
    node: onnx.NodeProto, opsets: list[onnx.OperatorSetIdProto], feeds: dict[str, np.ndarray]
) -> ort.InferenceSession:
    inputs = [
        helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(array.dtype), [None] * array.ndim
        )
        for name, array in feeds.items()
    ]
    outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in node.output if name]
    graph = helper.make_graph([node], f"{node.op_type}_alone", inputs, outputs)
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
