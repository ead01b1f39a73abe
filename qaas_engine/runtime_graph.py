"""What ONNX Runtime's optimizer makes of an exported QDQ graph: the integer kernels it fused
the Q/DQ groups into, and the Q/DQ pairs it left around float operators.

The simulation computes each quantized op as DQ -> float op -> Q. Where ORT fuses that group
into one integer kernel the result can differ in the last bit (its own requantization), and a
sensitive network amplifies last-bit differences; where it leaves the group unfused, it computes
what the simulation computes, but pays for the float op and the conversions. Both facts are read
off the optimized graph ORT saves, not guessed from op types.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx

# integer kernels that compute their output scale's rounding themselves, unlike DQ -> op -> Q
REQUANTIZING = frozenset(
    {
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
    }
)
# ORT's CPU integer kernels that QDQ groups become (onnxruntime's QDQ selector/action rules)
INTEGER_KERNELS = REQUANTIZING | {
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "QGemm",
    "QLinearWhere",
    "QLinearReduceMean",
    "QAttention",
    "QEmbedLayerNormalization",
    "DynamicQuantizeMatMul",
    # int8 weights with a float (or 16-bit-grid) activation: ORT 1.32 turns DQ(weight) ->
    # MatMul/Gemm into this weight-only kernel, whose float accumulation is not the
    # simulation's DQ -> MatMul (a 16-bit Gemm: sim vs ORT 0.6 apart); not emulated, so the
    # report's gap warning names it
    "MatMulNBits",
}
QUANTIZE = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
DEQUANTIZE = frozenset({"DequantizeLinear"})
SIXTEEN_BIT = frozenset({onnx.TensorProto.INT16, onnx.TensorProto.UINT16})


def summarize(path: str | Path) -> dict[str, Any]:
    """Counts from the optimized graph ORT saved at ``path`` (weights left on disk)."""
    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(node.op_type for node in model.graph.node)
    integer = {op: n for op, n in sorted(ops.items()) if op in INTEGER_KERNELS}
    quantize = sum(n for op, n in ops.items() if op in QUANTIZE)
    dequantize = sum(n for op, n in ops.items() if op in DEQUANTIZE)
    return {
        "integer_kernels": integer,
        "integer_nodes": sum(integer.values()),
        "quantize_linear": quantize,
        "dequantize_linear": dequantize,
        "sixteen_bit_qdq": _sixteen_bit_quantizers(model),
        "nodes": sum(ops.values()),
    }


def requantizing_kernels(summary: dict[str, Any]) -> dict[str, int]:
    """The fused kernels present that round their outputs their own way."""
    kernels = summary.get("integer_kernels") or {}
    return {op: n for op, n in kernels.items() if op in REQUANTIZING}


def _sixteen_bit_quantizers(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes whose zero point is 16-bit: ORT runs those groups unfused."""
    dtypes = {init.name: init.data_type for init in model.graph.initializer}
    return sum(
        1
        for node in model.graph.node
        if node.op_type == "QuantizeLinear"
        and len(node.input) > 2
        and dtypes.get(node.input[2]) in SIXTEEN_BIT
    )
