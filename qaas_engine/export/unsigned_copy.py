"""The exported graph with every int8 Q/DQ tensor stored as uint8: the same values, for a CPU
whose ONNX Runtime would compute the int8 file wrongly.

ORT's u8s8 kernels on a CPU without an int8 dot product (AVX2) sum pairs of u8*s8 products in
int16 and saturate on 8-bit weights. A layout made for other hardware (``onnxruntime-cpu:vnni``
forced, ``qnn-htp``, ``tensorrt``) therefore cannot be measured on such a CPU as written. Storing
an int8 tensor as uint8 with its zero point moved by 128 changes no value (``q + 128 - (z +
128) = q - z``) and runs ORT's u8u8 kernels, which sum in int32: what the target computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qaas_engine.control_flow import used_names

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def unsigned_copy(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` with its int8 weights, zero points and Q outputs as uint8 (a new model; the
    same one where it has none); None where an int8 tensor is also read by something that is
    not a Q/DQ node in the roles above (a graph output, a subgraph, another op), whose meaning
    the change would alter."""
    graph = model.graph
    int8 = {i.name for i in graph.initializer if i.data_type == TensorProto.INT8}
    converted: set[str] = set()  # int8 initializers to store as uint8
    quantized: set[str] = set()  # Q outputs that become uint8
    for node in graph.node:
        if node.op_type not in _QDQ:
            continue
        zero = node.input[2] if len(node.input) > 2 else ""
        if zero in int8:
            converted.add(zero)
            if node.op_type == "QuantizeLinear":
                quantized.add(node.output[0])
        if node.op_type == "DequantizeLinear" and node.input[0] in int8:
            if zero not in int8:
                return None  # no zero point (0 of the data's type) or one not an initializer
            converted.add(node.input[0])
    if not converted:
        return model
    if not _read_by_qdq_only(model, converted | quantized):
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index, init in enumerate(out.graph.initializer):
        if init.name in converted:
            shifted = numpy_helper.to_array(init).astype(np.int16) + 128
            out.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(shifted.astype(np.uint8), init.name)
            )
    kept = [value for value in out.graph.value_info if value.name not in quantized]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)  # ORT infers the uint8 types again
    return out


def _read_by_qdq_only(model: onnx.ModelProto, names: set[str]) -> bool:
    """Every reader of ``names`` is a Q/DQ node of the top-level graph, in a data or zero-point
    slot; none is a graph output or read inside a subgraph."""
    graph = model.graph
    if names & {value.name for value in graph.output}:
        return False
    for node in graph.node:
        for sub in [a.g for a in node.attribute if a.HasField("g")] + [
            g for a in node.attribute for g in a.graphs
        ]:
            if names & used_names(sub):
                return False
        for slot, name in enumerate(node.input):
            if name not in names:
                continue
            if node.op_type == "DequantizeLinear" and slot in (0, 2):
                continue
            if node.op_type == "QuantizeLinear" and slot == 2:
                continue
            return False
    return True
