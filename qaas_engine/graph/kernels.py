"""Which ONNX ops the torch executor computes with a torch kernel, known without torch.

Placement keeps nodes without a torch kernel in float (the reference fallback that runs them has
no gradient), so it must know the kernel table; importing the table means importing torch,
which a post-training job otherwise never does. This is that table's list of op types, checked
equal to the registry by ``tests/engine/test_torch_free.py`` so the two cannot drift.
"""

from __future__ import annotations

from functools import cache

import onnx

from qaas_engine.onnxruntime_ops import onnxruntime_knows

DEFAULT_DOMAINS = ("", "ai.onnx")
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")

TORCH_KERNEL_OPS = frozenset(
    {
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "AffineGrid",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "Attention",
        "AveragePool",
        "BatchNormalization",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "BlackmanWindow",
        "Cast",
        "CastLike",
        "Ceil",
        "Celu",
        "CenterCropPad",
        "Clip",
        "Compress",
        "Concat",
        "ConcatFromSequence",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumProd",
        "CumSum",
        "DFT",
        "DepthToSpace",
        "Det",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "GRU",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GroupNormalization",
        "HammingWindow",
        "HannWindow",
        "HardSigmoid",
        "HardSwish",
        "Hardmax",
        "Identity",
        "InstanceNormalization",
        "IsInf",
        "IsNaN",
        "LRN",
        "LSTM",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "NonZero",
        "Not",
        "OneHot",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "Or",
        "PRelu",
        "Pad",
        "Pow",
        "RMSNormalization",
        "RNN",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RotaryEmbedding",
        "Round",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "SplitToSequence",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "SwiGLU",
        "Swish",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    }
)


def has_torch_kernel(node: onnx.NodeProto) -> bool:
    """Computed by a torch op (differentiable), as opposed to the reference fallback."""
    return node.domain in DEFAULT_DOMAINS and (
        node.op_type in TORCH_KERNEL_OPS or node.op_type in CONTROL_FLOW_OPS
    )


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            return int(opset.version)
    return 1


@cache
def has_reference(op_type: str, opset: int) -> bool:
    """Whether ``onnx.reference`` computes this default-domain op at this opset: an op class of
    its own, or the function body the op's schema defines (which the evaluator expands)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    # onnx's defs.pyi stub omits these two OpSchema properties (they exist at runtime)
    if schema.has_function or schema.has_context_dependent_function:  # type: ignore[attr-defined]
        return True
    from onnx.reference.ops import load_op  # 0.1 s of imports, needed only for such ops

    try:
        load_op("", op_type, opset)
    except Exception:  # onnx raises several unrelated types for an unknown op
        return False
    return True


def reference_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Top-level nodes that will run through ONNX's reference implementation: they have no
    gradient and no integer kernel worth quantizing for, so they stay float."""
    return [n for n in model.graph.node if not has_torch_kernel(n)]


def unsupported_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes neither a torch kernel nor the reference implementation can compute."""
    opset = default_opset(model)
    return [
        node
        for node in model.graph.node
        if not has_torch_kernel(node)
        and not (node.domain in DEFAULT_DOMAINS and has_reference(node.op_type, opset))
        and not (node.domain not in DEFAULT_DOMAINS and onnxruntime_knows(node))
    ]
