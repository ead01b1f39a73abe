"""Each torch op implementation against ONNX Runtime on a one-node model."""

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import qaas_engine.graph.ops  # noqa: F401  (registers the op implementations)
from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.registry import OP_REGISTRY, NodeContext, parse_attributes

RNG = np.random.default_rng(0)
I64_MAX, I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def pos(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def one_node(
    op_type: str,
    inputs: list[np.ndarray | None],
    attrs: dict[str, Any],
    opset: int,
    n_out: int,
) -> onnx.ModelProto:
    names = ["" if a is None else f"in{i}" for i, a in enumerate(inputs)]
    node = helper.make_node(
        op_type, names, [f"out{i}" for i in range(n_out)], name=f"{op_type}_node", **attrs
    )
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in zip(names, inputs, strict=True)
        if a is not None
    ]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output]
    graph = helper.make_graph([node], "g", graph_inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def run_ours(model: onnx.ModelProto, inputs: list[np.ndarray | None]) -> list[torch.Tensor]:
    node = model.graph.node[0]
    ctx = NodeContext(
        node.op_type,
        node.name,
        parse_attributes(node),
        model.opset_import[0].version,
        num_outputs=len(node.output),
    )
    tensors = [None if a is None else torch.from_numpy(a.copy()) for a in inputs]
    before = [None if t is None else t.clone() for t in tensors]
    outputs = OP_REGISTRY[node.op_type](ctx, tensors)
    for t, b in zip(tensors, before, strict=True):
        assert t is None or torch.equal(t, b), "op mutated an input"
    return list(outputs)


def check(
    op_type: str,
    inputs: list[np.ndarray | None],
    attrs: dict[str, Any] | None = None,
    opset: int = 17,
    n_out: int = 1,
) -> None:
    model = one_node(op_type, inputs, attrs or {}, opset, n_out)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {f"in{i}": a for i, a in enumerate(inputs) if a is not None}
    expected = session.run(None, feeds)
    ours = run_ours(model, inputs)
    assert len(ours) == len(expected)
    for got, want in zip(ours, expected, strict=True):
        got = got.detach().numpy()
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        else:
            np.testing.assert_array_equal(got, want)


def case(
    op: str, inputs: list, attrs: dict | None = None, opset: int = 17, n_out: int = 1, *, id: str
) -> Any:
    return pytest.param(op, inputs, attrs or {}, opset, n_out, id=id)


X4 = rand(2, 3, 7, 8)

CONV = [
    case(
        "Conv",
        [X4, rand(4, 3, 3, 3), rand(4)],
        {"pads": [1, 1, 1, 1], "strides": [2, 2]},
        id="conv2d",
    ),
    case(
        "Conv",
        [rand(2, 6, 9, 9), rand(6, 2, 3, 3)],
        {"group": 3, "dilations": [2, 2]},
        id="conv-group-dilation",
    ),
    case("Conv", [X4, rand(4, 3, 3, 2)], {"pads": [0, 1, 2, 1]}, id="conv-asym-pads"),
    case(
        "Conv",
        [X4, rand(4, 3, 3, 3)],
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        id="conv-same-upper",
    ),
    case(
        "Conv",
        [X4, rand(4, 3, 4, 4)],
        {"auto_pad": "SAME_LOWER", "strides": [1, 3]},
        id="conv-same-lower",
    ),
    case("Conv", [X4, rand(4, 3, 3, 3)], {"auto_pad": "VALID", "strides": [2, 2]}, id="conv-valid"),
    case("Conv", [rand(2, 3, 10), rand(4, 3, 3), rand(4)], {"pads": [2, 1]}, id="conv1d"),
    case("Conv", [rand(1, 2, 5, 6, 7), rand(3, 2, 3, 3, 3)], {"strides": [1, 2, 2]}, id="conv3d"),
    case(
        "ConvTranspose",
        [rand(1, 4, 5, 5), rand(4, 3, 3, 3), rand(3)],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        id="convT",
    ),
    case(
        "ConvTranspose",
        [rand(1, 4, 5, 5), rand(4, 2, 3, 3)],
        {"group": 2, "dilations": [2, 1], "strides": [1, 2]},
        id="convT-group-dilation",
    ),
    case(
        "ConvTranspose",
        [rand(1, 4, 5, 5), rand(4, 3, 3, 3), rand(3)],
        {"strides": [2, 2], "pads": [0, 1, 2, 1]},
        id="convT-asym-pads",
    ),
    case(
        "ConvTranspose",
        [rand(1, 4, 5, 5), rand(4, 3, 3, 3), rand(3)],
        {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
        id="convT-same-upper",
    ),
    case(
        "ConvTranspose",
        [rand(1, 4, 5, 5), rand(4, 3, 3, 3), rand(3)],
        {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
        id="convT-same-lower",
    ),
    case(
        "ConvTranspose",
        [rand(1, 4, 5, 5), rand(4, 3, 3, 3)],
        {"strides": [2, 2], "output_shape": [10, 9]},
        id="convT-output-shape",
    ),
    case(
        "ConvTranspose",
        [rand(1, 4, 5, 5), rand(4, 3, 3, 3)],
        {"strides": [2, 2], "output_shape": [10, 9], "auto_pad": "SAME_UPPER"},
        id="convT-output-shape-same-upper",
    ),
    case(
        "ConvTranspose",
        [rand(2, 3, 6), rand(3, 2, 3)],
        {"strides": [3], "output_padding": [2]},
        id="convT-1d",
    ),
    case("Gemm", [rand(3, 4), rand(4, 5), rand(5)], id="gemm"),
    case(
        "Gemm",
        [rand(4, 3), rand(5, 4), rand(1, 5)],
        {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
        id="gemm-trans-alpha-beta",
    ),
    case("Gemm", [rand(3, 4), rand(4, 5)], {"alpha": 1.5}, id="gemm-no-c"),
    case("MatMul", [rand(2, 3, 4), rand(4, 5)], id="matmul-batched"),
    case("MatMul", [rand(4), rand(2, 4, 5)], id="matmul-vector"),
]

POOL_NORM = [
    case(
        "MaxPool",
        [(X4 * 40).astype(np.int8)],
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        opset=12,
        id="maxpool-int8",
    ),
    case(
        "AveragePool",
        [X4],
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "auto_pad": "SAME_UPPER",
            "count_include_pad": 1,
        },
        id="avgpool-same-upper-count-pad",
    ),
    case("MaxPool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2]}, id="maxpool"),
    case(
        "MaxPool",
        [X4],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1},
        id="maxpool-pads-ceil",
    ),
    case(
        "MaxPool",
        [rand(1, 2, 5, 5)],
        {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
        id="maxpool-ceil-window-in-pad",
    ),
    case("MaxPool", [X4], {"kernel_shape": [2, 3], "dilations": [2, 2]}, id="maxpool-dilation"),
    case(
        "MaxPool",
        [X4],
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
        id="maxpool-same-upper",
    ),
    case("MaxPool", [rand(2, 3, 9)], {"kernel_shape": [3], "strides": [2]}, id="maxpool1d"),
    case("MaxPool", [rand(1, 2, 4, 5, 6)], {"kernel_shape": [2, 2, 2]}, id="maxpool3d"),
    case("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, id="avgpool-pads"),
    case(
        "AveragePool",
        [X4],
        {"kernel_shape": [3, 3], "pads": [1, 0, 1, 2], "count_include_pad": 1},
        id="avgpool-count-pad",
    ),
    case(
        "AveragePool",
        [X4],
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "pads": [1, 1, 1, 1],
            "ceil_mode": 1,
            "count_include_pad": 1,
        },
        id="avgpool-ceil-count-pad",
    ),
    case(
        "AveragePool",
        [X4],
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
        id="avgpool-ceil",
    ),
    case(
        "AveragePool",
        [X4],
        {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
        id="avgpool-same-lower",
    ),
    case(
        "AveragePool",
        [X4],
        {"kernel_shape": [2, 2], "dilations": [2, 2]},
        opset=19,
        id="avgpool-dilation",
    ),
    case("GlobalAveragePool", [X4], id="gap"),
    case("GlobalMaxPool", [X4], id="gmp"),
    case(
        "BatchNormalization",
        [X4, rand(3), rand(3), rand(3), pos(3)],
        {"epsilon": 1e-3},
        id="batchnorm",
    ),
    case(
        "BatchNormalization",
        [rand(4, 3), rand(3), rand(3), rand(3), pos(3)],
        opset=9,
        id="batchnorm-2d-opset9",
    ),
    case("LayerNormalization", [rand(2, 3, 8), rand(8), rand(8)], id="layernorm"),
    case(
        "LayerNormalization",
        [rand(2, 3, 8), rand(3, 8)],
        {"axis": 1, "epsilon": 1e-3},
        id="layernorm-axis1-nobias",
    ),
    case("Softmax", [X4], opset=11, id="softmax-opset11"),
    case("Softmax", [X4], {"axis": 2}, opset=11, id="softmax-opset11-axis2"),
    case("Softmax", [X4], id="softmax"),
    case("Softmax", [X4], {"axis": 1}, id="softmax-axis1"),
    case("LogSoftmax", [X4], opset=11, id="logsoftmax-opset11"),
    case("LogSoftmax", [X4], {"axis": 0}, id="logsoftmax-axis0"),
]

ACTIVATIONS = [
    case(op, [rand(3, 4)], id=op.lower())
    for op in ("Relu", "Sigmoid", "Tanh", "Exp", "Erf", "Neg", "Abs", "Identity", "HardSwish")
] + [
    case("Log", [pos(3, 4)], id="log"),
    case("Sqrt", [pos(3, 4)], id="sqrt"),
    case("Reciprocal", [pos(3, 4)], id="reciprocal"),
    case("Clip", [rand(3, 4)], {"min": -0.5, "max": 0.5}, opset=6, id="clip-opset6"),
    case("Clip", [rand(3, 4)], {"max": 0.5}, opset=6, id="clip-opset6-max-only"),
    case(
        "Clip",
        [rand(3, 4), f32(-0.5).reshape(()), f32(0.3).reshape(())],
        opset=13,
        id="clip-opset13",
    ),
    case("Clip", [rand(3, 4), f32(0.1).reshape(())], opset=13, id="clip-opset13-min-only"),
    case("Clip", [rand(3, 4), None, f32(0.1).reshape(())], opset=11, id="clip-opset11-max-only"),
    case("Clip", [rand(3, 4)], opset=13, id="clip-no-bounds"),
    case(
        "Clip",
        [rand(3, 4), f32(0.5).reshape(()), f32(-0.5).reshape(())],
        opset=13,
        id="clip-min-above-max",
    ),
    case("PRelu", [X4, rand(3, 1, 1)], id="prelu-channel"),
    case("PRelu", [X4, rand(1)], id="prelu-scalar"),
    case("PRelu", [X4, rand(8)], id="prelu-trailing"),
    case("LeakyRelu", [rand(3, 4)], id="leakyrelu"),
    case("LeakyRelu", [rand(3, 4)], {"alpha": 0.2}, id="leakyrelu-alpha"),
    case("HardSigmoid", [rand(3, 4) * 4], id="hardsigmoid"),
    case("HardSigmoid", [rand(3, 4) * 4], {"alpha": 0.3, "beta": 0.4}, id="hardsigmoid-attrs"),
    case("HardSwish", [rand(3, 4) * 4], opset=14, id="hardswish-wide"),
    case("Gelu", [rand(3, 4)], opset=20, id="gelu"),
    case("Gelu", [rand(3, 4)], {"approximate": "tanh"}, opset=20, id="gelu-tanh"),
    case("Dropout", [rand(3, 4)], id="dropout"),
    case("Dropout", [rand(3, 4), f32(0.3).reshape(())], n_out=2, id="dropout-mask"),
    case("Dropout", [rand(3, 4)], opset=7, n_out=2, id="dropout-opset7-mask"),
]

ELEMENTWISE = [
    case(op, [rand(2, 3, 4), rand(3, 1)], id=op.lower())
    for op in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater")
] + [
    case("Div", [i64(7, -7, 7, -7, 9), i64(2, 2, -2, -2, 3)], id="div-int64-trunc"),
    case(
        "Div",
        [np.array([7, -7, 5], np.int32), np.array([2, 2, -3], np.int32)],
        id="div-int32-trunc",
    ),
    case("Add", [i64(1, 2, 3), i64(4)], id="add-int"),
    case("Equal", [i64(1, 2, 3), i64(1, 0, 3)], id="equal-int"),
    case("Pow", [pos(3, 4), rand(3, 4)], id="pow"),
    case("Pow", [rand(3, 4), i64(2)], id="pow-int-exponent"),
    case("Where", [rand(3, 4) > 0, rand(3, 4), rand(4)], id="where"),
    case("Not", [rand(3, 4) > 0], id="not"),
    case("And", [rand(3, 4) > 0, rand(4) > 0], id="and"),
    case("Or", [rand(3, 4) > 0, rand(4) > 0], id="or"),
    case("Min", [rand(3, 4), rand(4), rand(3, 1)], id="min-3"),
    case("Max", [rand(3, 4), rand(4)], id="max-2"),
    case("Max", [rand(3, 4)], id="max-1"),
    case("Sum", [rand(3, 4), rand(4), rand(3, 1)], id="sum-3"),
    case("Mean", [rand(3, 4), rand(4), rand(3, 1)], id="mean-3"),
    case("Mean", [rand(3, 4)], id="mean-1"),
    case("Einsum", [rand(3, 4), rand(4, 5)], {"equation": "ij,jk->ik"}, id="einsum-matmul"),
    case(
        "Einsum",
        [rand(2, 3, 4), rand(2, 4, 5)],
        {"equation": "bij, bjk -> bik"},
        id="einsum-batched",
    ),
    case("Einsum", [rand(2, 3, 4)], {"equation": "...ij->...ji"}, id="einsum-ellipsis"),
    case("Einsum", [rand(4, 4)], {"equation": "ii->i"}, id="einsum-diagonal"),
]

SHAPE = [
    case("Concat", [rand(2, 3), rand(2, 5)], {"axis": 1}, id="concat"),
    case("Concat", [rand(2, 3), rand(1, 3), rand(4, 3)], {"axis": -2}, id="concat-neg-axis"),
    case("Reshape", [rand(2, 3, 4), i64(0, -1)], id="reshape-zero-copies"),
    case("Reshape", [rand(2, 3, 4), i64(4, 0, 2, -1)], id="reshape-zero-infer"),
    case(
        "Reshape",
        [np.zeros((0, 4), np.float32), i64(4, 0)],
        {"allowzero": 1},
        id="reshape-allowzero",
    ),
    case("Flatten", [X4], id="flatten"),
    case("Flatten", [X4], {"axis": 0}, id="flatten-axis0"),
    case("Flatten", [X4], {"axis": -1}, id="flatten-axis-neg"),
    case("Transpose", [X4], id="transpose-default"),
    case("Transpose", [X4], {"perm": [0, 2, 3, 1]}, id="transpose-perm"),
    case("Squeeze", [rand(1, 3, 1, 4)], {"axes": [0, -2]}, opset=11, id="squeeze-opset11"),
    case("Squeeze", [rand(1, 3, 1, 4)], opset=11, id="squeeze-opset11-all"),
    case("Squeeze", [rand(1, 3, 1, 4), i64(-2)], opset=13, id="squeeze-opset13"),
    case("Squeeze", [rand(1, 3, 1, 4)], opset=13, id="squeeze-opset13-all"),
    case("Unsqueeze", [rand(3, 4)], {"axes": [0, -1]}, opset=11, id="unsqueeze-opset11"),
    case("Unsqueeze", [rand(3, 4), i64(1, -1)], opset=13, id="unsqueeze-opset13"),
    case("Unsqueeze", [rand(3, 4), i64(3, 0)], opset=13, id="unsqueeze-opset13-unsorted"),
    case("Shape", [X4], id="shape"),
    case("Shape", [X4], {"start": 1, "end": -1}, id="shape-start-end"),
    case("Shape", [X4], {"start": -10, "end": 10}, id="shape-clamped"),
    case("Expand", [rand(3, 1), i64(2, 1, 4)], id="expand-bidirectional"),
    case("Expand", [rand(2, 3), i64(1, 3)], id="expand-keeps-larger"),
    case("Tile", [rand(2, 3), i64(2, 3)], id="tile"),
    case("Split", [rand(6, 4), i64(2, 4)], {"axis": 0}, opset=13, n_out=2, id="split-opset13"),
    case("Split", [rand(4, 6)], {"axis": -1}, opset=13, n_out=3, id="split-opset13-equal"),
    case(
        "Split",
        [rand(4, 6)],
        {"axis": 1, "split": [1, 5]},
        opset=11,
        n_out=2,
        id="split-opset11-attr",
    ),
    case(
        "Split",
        [rand(4, 7)],
        {"axis": 1, "num_outputs": 3},
        opset=18,
        n_out=3,
        id="split-opset18-uneven",
    ),
    case("Split", [rand(4, 7), i64(3, 4)], {"axis": 1}, opset=18, n_out=2, id="split-opset18"),
]

INDEXING = [
    case("Slice", [rand(5, 6), i64(1, 0), i64(4, 6), i64(0, 1), i64(1, 2)], id="slice"),
    case("Slice", [rand(5, 6), i64(-1), i64(I64_MIN), i64(1), i64(-2)], id="slice-neg-step"),
    case("Slice", [rand(5, 6), i64(4, 1), i64(1, I64_MAX)], opset=10, id="slice-no-axes"),
    case("Slice", [rand(5, 6), i64(2), i64(I64_MAX), i64(-2)], id="slice-int64-max"),
    case("Slice", [rand(5, 6), i64(-100), i64(100), i64(0), i64(3)], id="slice-clamped"),
    case("Slice", [rand(5, 6), i64(10), i64(-10), i64(1), i64(-3)], id="slice-neg-step-clamp"),
    case(
        "Slice",
        [rand(5, 6)],
        {"starts": [1], "ends": [-1], "axes": [1]},
        opset=9,
        id="slice-opset9",
    ),
    case("Gather", [rand(5, 4), i64(0, -1, 3)], id="gather"),
    case("Gather", [rand(5, 4, 3), np.array([[1, -2], [0, 3]])], {"axis": 1}, id="gather-2d"),
    case("Gather", [rand(5, 4), np.array(-2, np.int64)], {"axis": 0}, id="gather-scalar"),
    case("ArgMax", [rand(3, 4, 5)], {"axis": 1}, id="argmax"),
    case("ArgMax", [rand(3, 4, 5)], {"axis": -1, "keepdims": 0}, id="argmax-nokeep"),
    case(
        "ArgMax",
        [np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)],
        {"axis": 1},
        id="argmax-ties-first",
    ),
    case(
        "ArgMax",
        [np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)],
        {"axis": 1, "select_last_index": 1},
        id="argmax-ties-last",
    ),
    case(
        "Pad", [X4, i64(0, 0, 1, 2, 0, 0, 2, 1), f32(1.5).reshape(())], opset=13, id="pad-constant"
    ),
    case("Pad", [X4, i64(0, 1, 0, -1, 0, 0, -2, 1)], opset=13, id="pad-negative"),
    case("Pad", [X4, i64(0, 0, 2, 3, 0, 0, 3, 2)], {"mode": "reflect"}, opset=13, id="pad-reflect"),
    case("Pad", [X4, i64(1, 0, 2, 3, 0, 1, 3, 2)], {"mode": "edge"}, opset=13, id="pad-edge"),
    case("Pad", [X4], {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": -1.0}, opset=2, id="pad-opset2"),
    case(
        "Pad",
        [X4],
        {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "mode": "reflect"},
        opset=2,
        id="pad-opset2-reflect",
    ),
    case(
        "Pad",
        [X4, i64(1, 2, 2, 1), None, i64(-1, 1)],
        {"mode": "reflect"},
        opset=18,
        id="pad-opset18-axes",
    ),
    case("Pad", [X4, i64(0, 0, 2, 3, 0, 0, 3, 2)], {"mode": "wrap"}, opset=19, id="pad-wrap"),
    case("Pad", [i64(1, 2, 3), i64(2, 1), i64(9)], opset=13, id="pad-int"),
]

REDUCE = [
    case("ReduceMean", [X4], {"axes": [2, 3]}, opset=13, id="reducemean-opset13"),
    case("ReduceMean", [X4], {"axes": [-1], "keepdims": 0}, opset=13, id="reducemean-nokeep"),
    case("ReduceMean", [X4], opset=13, id="reducemean-all"),
    case("ReduceMean", [X4, i64(1, 3)], opset=18, id="reducemean-opset18"),
    case("ReduceMean", [X4], {"keepdims": 0}, opset=18, id="reducemean-opset18-all"),
    case(
        "ReduceMean",
        [X4, np.zeros(0, np.int64)],
        {"noop_with_empty_axes": 1},
        opset=18,
        id="reducemean-noop",
    ),
    case("ReduceSum", [X4], {"axes": [1]}, opset=11, id="reducesum-opset11"),
    case("ReduceSum", [X4, i64(0, -1)], {"keepdims": 0}, opset=13, id="reducesum-opset13"),
    case("ReduceSum", [i64(1, 2, 3).reshape(3, 1)], opset=13, id="reducesum-int"),
    case("ReduceMax", [X4], {"axes": [1]}, id="reducemax"),
    case("ReduceMax", [X4, i64(-2)], {"keepdims": 0}, opset=18, id="reducemax-opset18"),
    case("ReduceMin", [X4], {"axes": [0, 2]}, id="reducemin"),
    case("ReduceMin", [X4, i64(3)], opset=18, id="reducemin-opset18"),
]

CONSTANTS = (
    [
        case("Constant", [], {"value": onnx.numpy_helper.from_array(rand(2, 3))}, id="constant"),
        case("Constant", [], {"value_float": 1.5}, id="constant-float"),
        case("Constant", [], {"value_floats": [1.5, 2.0]}, id="constant-floats"),
        case("Constant", [], {"value_int": 3}, id="constant-int"),
        case("Constant", [], {"value_ints": [3, 4]}, id="constant-ints"),
        case("ConstantOfShape", [i64(2, 3)], id="constantofshape"),
        case(
            "ConstantOfShape",
            [i64(2, 3)],
            {"value": helper.make_tensor("v", TensorProto.INT32, [1], [7])},
            id="constantofshape-int",
        ),
        case("ConstantOfShape", [np.zeros(0, np.int64)], id="constantofshape-scalar"),
        case(
            "Range",
            [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)],
            id="range-int",
        ),
        case(
            "Range",
            [np.array(1.0, np.float32), np.array(-1.0, np.float32), np.array(-0.3, np.float32)],
            id="range-float",
        ),
        case(
            "Range",
            [np.array(5, np.int32), np.array(1, np.int32), np.array(1, np.int32)],
            id="range-empty",
        ),
    ]
    + [
        case(
            "Cast",
            [rand(3, 4) * 10],
            {"to": to},
            id=f"cast-float-to-{TensorProto.DataType.Name(to)}",
        )
        for to in (
            TensorProto.INT32,
            TensorProto.INT64,
            TensorProto.INT8,
            TensorProto.FLOAT16,
            TensorProto.DOUBLE,
            TensorProto.BOOL,
            TensorProto.FLOAT,
        )
    ]
    + [
        case("Cast", [pos(3, 4) * 50], {"to": TensorProto.UINT8}, id="cast-float-to-UINT8"),
        case("Cast", [i64(-3, 0, 5)], {"to": TensorProto.FLOAT}, id="cast-int-to-FLOAT"),
        case("Cast", [i64(-3, 0, 5)], {"to": TensorProto.BOOL}, id="cast-int-to-BOOL"),
    ]
)


def resize(
    id: str,
    mode: str,
    coord: str = "half_pixel",
    nearest: str = "round_prefer_floor",
    *,
    scales: tuple[float, ...] | None = None,
    sizes: tuple[int, ...] | None = None,
    opset: int = 13,
) -> Any:
    inputs = [X4, None, None if scales is None else f32(*scales)]
    inputs += [] if sizes is None else [i64(*sizes)]
    attrs = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    return case("Resize", inputs, attrs, opset, id=f"resize-{id}")


RESIZE = [
    resize("nearest-asym-floor", "nearest", "asymmetric", "floor", scales=(1, 1, 2, 1.5)),
    resize("nearest-asym-floor-down", "nearest", "asymmetric", "floor", scales=(1, 1, 0.6, 0.7)),
    resize("nearest-asym-ties", "nearest", "asymmetric", scales=(1, 1, 2, 4)),
    resize(
        "nearest-asym-ties-ceil",
        "nearest",
        "asymmetric",
        "round_prefer_ceil",
        scales=(1, 1, 2, 4),
    ),
    resize("nearest-half-pixel", "nearest", scales=(1, 1, 1.7, 2.5)),
    resize("nearest-half-pixel-sizes", "nearest", sizes=(2, 3, 10, 5)),
    resize("nearest-ceil-down", "nearest", nearest="round_prefer_ceil", scales=(1, 1, 0.5, 0.75)),
    resize(
        "nearest-tf-ceil",
        "nearest",
        "tf_half_pixel_for_nn",
        "ceil",
        scales=(1, 1, 1.5, 3),
    ),
    resize("nearest-align-corners", "nearest", "align_corners", sizes=(2, 3, 14, 12)),
    resize("linear-half-pixel", "linear", scales=(1, 1, 2, 2)),
    resize("linear-fractional", "linear", scales=(1, 1, 0.6, 1.3)),
    resize("linear-align-corners", "linear", "align_corners", sizes=(2, 3, 11, 5)),
    resize("linear-pytorch-half-pixel", "linear", "pytorch_half_pixel", sizes=(2, 3, 1, 16)),
    resize("linear-asymmetric", "linear", "asymmetric", scales=(1, 1, 2.5, 0.5)),
    resize(
        "linear-symmetric",
        "linear",
        "half_pixel_symmetric",
        scales=(1, 1, 1.5, 0.7),
        opset=19,
    ),
    case(
        "Resize",
        [X4, f32(), f32(), i64(2, 3, 9, 10)],
        {"mode": "linear"},
        opset=11,
        id="resize-opset11-sizes",
    ),
    case(
        "Resize",
        [X4, f32(), f32(1, 1, 2, 2)],
        {"mode": "nearest"},
        opset=11,
        id="resize-opset11-scales",
    ),
    case(
        "Resize",
        [X4, f32(1, 1, 0.6, 0.7)],
        {"mode": "nearest"},
        opset=10,
        id="resize-opset10-nearest-down",
    ),
    case(
        "Resize",
        [X4, f32(1, 1, 1.5, 2.3)],
        {"mode": "nearest"},
        opset=10,
        id="resize-opset10-nearest-up",
    ),
    case(
        "Resize",
        [X4, f32(1, 1, 1.5, 0.6)],
        {"mode": "linear"},
        opset=10,
        id="resize-opset10-linear",
    ),
    case(
        "Resize",
        [X4, None, f32(2, 1.5)],
        {"mode": "linear", "axes": [3, 2]},
        opset=18,
        id="resize-opset18-axes",
    ),
    case("Upsample", [X4, f32(1, 1, 2, 3)], {"mode": "nearest"}, opset=9, id="upsample-opset9"),
    case(
        "Upsample",
        [X4, f32(1, 1, 2, 1.5)],
        {"mode": "linear"},
        opset=9,
        id="upsample-opset9-linear",
    ),
    case(
        "Upsample",
        [X4],
        {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 2.0]},
        opset=7,
        id="upsample-opset7",
    ),
]


TIES = np.array([[3, 1, 3, 2, 1, 3]], dtype=np.float32)
IMG = RNG.uniform(0, 255, (1, 2, 6, 8)).astype(np.float32)

# Ops beyond the first exporters' set, each against ORT on random data (ONNX's node cases run in
# test_conformance.py).
EXTENDED = [
    case("MaxPool", [X4], {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1]}, n_out=2, id="argmax"),
    case(
        "MaxPool",
        [X4],
        {"kernel_shape": [2, 2], "strides": [2, 2], "storage_order": 1},
        n_out=2,
        id="argmax-column-major",
    ),
    case("MaxPool", [rand(1, 2, 4, 5, 6)], {"kernel_shape": [2, 3, 2]}, n_out=2, id="argmax3d"),
    case("LpPool", [X4], {"kernel_shape": [3, 2], "pads": [1, 1, 0, 0], "p": 3}, id="lppool"),
    case("GlobalLpPool", [X4], {"p": 1}, id="global-lppool"),
    case("TopK", [TIES, i64(4)], {}, n_out=2, id="topk-ties"),
    case("TopK", [TIES, i64(3)], {"largest": 0, "axis": 1}, n_out=2, id="topk-smallest"),
    case("OneHot", [i64(0, -1, 5, 2), i64(4), f32(-1, 7)], {"axis": 0}, id="onehot"),
    case("Compress", [X4, np.array([1, 0, 1], bool)], {"axis": 1}, id="compress"),
    case("Compress", [rand(3, 2), np.array([0, 1, 1], bool)], {}, id="compress-flat"),
    case("GroupNormalization", [X4, rand(3), rand(3)], {"num_groups": 3}, 21, id="groupnorm"),
    case("InstanceNormalization", [X4, rand(3), rand(3)], {"epsilon": 1e-3}, id="instnorm"),
    case("LRN", [X4], {"size": 5, "alpha": 1e-2, "bias": 2.0}, id="lrn"),
    case("Mod", [i64(-7, 7, 5, -3), i64(3, -3, -2, 5)], {}, id="mod-int"),
    case("Mod", [rand(6), pos(6)], {"fmod": 1}, id="fmod"),
    case("CumSum", [X4, i64(-1)], {"exclusive": 1, "reverse": 1}, id="cumsum"),
    case("Hardmax", [TIES], {"axis": 1}, id="hardmax"),
    case("GatherND", [rand(2, 3, 4), RNG.integers(-3, 3, (2, 5, 1))], {"batch_dims": 1}, id="gnd"),
    case(
        "ScatterND",
        [rand(4, 3), i64(1, 3, 1).reshape(3, 1), rand(3, 3)],
        {"reduction": "add"},
        18,
        id="scatternd-add",
    ),
    case(
        "ScatterElements",
        [rand(3, 4), i64(0, 2, -1, 1).reshape(1, 4), rand(1, 4)],
        {"axis": 0, "reduction": "max"},
        18,
        id="scatter-elements-max",
    ),
    case("DepthToSpace", [rand(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, id="d2s-crd"),
    case("SpaceToDepth", [rand(1, 2, 4, 6)], {"blocksize": 2}, id="s2d"),
    case("GridSample", [X4, RNG.uniform(-1.2, 1.2, (2, 4, 5, 2)).astype(np.float32)], {}, id="gs"),
    case(
        "GridSample",
        [X4, RNG.uniform(-1.2, 1.2, (2, 4, 5, 2)).astype(np.float32)],
        {"mode": "cubic", "padding_mode": "border", "align_corners": 1},
        20,
        id="gs-cubic",
    ),
    case(
        "Attention",
        [rand(2, 4, 3, 8), rand(2, 2, 5, 8), rand(2, 2, 5, 6), RNG.random((3, 7)) > 0.3]
        + [rand(2, 2, 2, 8), rand(2, 2, 2, 6)],
        {"is_causal": 1, "qk_matmul_output_mode": 3},
        23,
        4,
        id="attention-gqa-cache-causal",
    ),
    case(
        "Attention",
        [rand(2, 3, 16), rand(2, 5, 16), rand(2, 5, 8), rand(3, 5)],
        {"q_num_heads": 4, "kv_num_heads": 4, "softcap": 2.0, "scale": 0.3},
        23,
        id="attention-3d-softcap",
    ),
    case(
        "ReverseSequence",
        [rand(3, 5, 2), np.array([5, 1, 3], np.int64)],
        {"batch_axis": 0, "time_axis": 1},
        id="reverse-sequence",
    ),
    case("CenterCropPad", [X4, i64(5, 11)], {"axes": [2, 3]}, 18, id="center-crop-pad"),
    case("AffineGrid", [rand(2, 2, 3), i64(2, 3, 4, 5)], {"align_corners": 1}, 20, id="affine"),
    case("DFT", [rand(2, 6, 1), i64(8), i64(1)], {"onesided": 1}, 20, id="dft-real-onesided"),
    case("DFT", [rand(2, 5, 2), None, i64(-2)], {"inverse": 1}, 20, id="dft-complex-inverse"),
    case("HammingWindow", [i64(7)], {"periodic": 0}, 17, id="hamming"),
    case("BlackmanWindow", [i64(8)], {}, 17, id="blackman"),
    case(
        "RotaryEmbedding",
        [rand(2, 3, 4, 8), rand(10, 2), rand(10, 2), RNG.integers(0, 10, (2, 4))],
        {"interleaved": 1, "rotary_embedding_dim": 4},
        23,
        id="rotary-interleaved-partial",
    ),
    case(
        "RotaryEmbedding",
        [rand(2, 4, 16), rand(2, 4, 4), rand(2, 4, 4)],
        {"num_heads": 2},
        23,
        id="rotary-3d",
    ),
    case(
        "LSTM",
        [rand(5, 3, 4), rand(2, 24, 4), rand(2, 24, 6), rand(2, 48)]
        + [np.array([5, 2, 4], np.int32), rand(2, 3, 6), rand(2, 3, 6), rand(2, 18)],
        {"hidden_size": 6, "direction": "bidirectional", "clip": 2.0},
        n_out=3,
        id="lstm-bidirectional-lengths-peepholes",
    ),
    case(
        "GRU",
        [rand(4, 2, 3), rand(1, 15, 3), rand(1, 15, 5), rand(1, 30)],
        {"hidden_size": 5, "linear_before_reset": 1, "direction": "reverse"},
        n_out=2,
        id="gru-reverse-linear-before-reset",
    ),
    case(
        "RNN",
        [rand(4, 2, 3), rand(1, 5, 3), rand(1, 5, 5)],
        {"hidden_size": 5, "activations": ["Relu"]},
        n_out=2,
        id="rnn-relu",
    ),
    case("Resize", [IMG, None, f32(1, 1, 0.6, 0.4)], {"mode": "cubic"}, 18, id="cubic"),
    case(
        "Resize",
        [IMG, None, f32(1, 1, 0.5, 0.3)],
        {"mode": "linear", "antialias": 1},
        18,
        id="linear-antialias",
    ),
    case(
        "Resize",
        [IMG, None, None, i64(1, 2, 9, 9)],
        {"mode": "cubic", "keep_aspect_ratio_policy": "not_larger", "exclude_outside": 1},
        18,
        id="cubic-aspect",
    ),
    case(
        "Resize",
        [IMG, f32(0, 0, 0.1, 0.2, 1, 1, 0.9, 1.1), None, i64(1, 2, 5, 5)],
        {"coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": -1.0},
        18,
        id="crop-and-resize",
    ),
]


@pytest.mark.parametrize(
    ("op_type", "inputs", "attrs", "opset", "n_out"),
    CONV
    + POOL_NORM
    + ACTIVATIONS
    + ELEMENTWISE
    + SHAPE
    + INDEXING
    + REDUCE
    + CONSTANTS
    + RESIZE
    + EXTENDED,
)
def test_op_matches_onnxruntime(
    op_type: str, inputs: list, attrs: dict, opset: int, n_out: int
) -> None:
    check(op_type, inputs, attrs, opset, n_out)


REQUIRED = """Conv ConvTranspose Gemm MatMul BatchNormalization Relu Clip PRelu LeakyRelu Sigmoid
HardSigmoid HardSwish Erf Gelu Tanh Exp Log Sqrt Pow Reciprocal Neg Abs Add Sub Mul Div Concat
Reshape Flatten Transpose Squeeze Unsqueeze Slice Split Resize Upsample Pad MaxPool AveragePool
GlobalAveragePool GlobalMaxPool Softmax LogSoftmax LayerNormalization ReduceMean ReduceSum
ReduceMax ReduceMin Identity Dropout Shape Gather Constant ConstantOfShape Cast Equal Less Greater
Where Expand Range Min Max Sum Mean Tile ArgMax Not And Or Einsum""".split()


def test_required_ops_are_registered() -> None:
    assert set(REQUIRED) <= set(OP_REGISTRY)


@pytest.mark.parametrize(
    ("op_type", "inputs", "attrs", "n_out", "reason"),
    [
        ("Resize", [X4, None, f32(1, 1, 2, 2)], {"mode": "area"}, 1, "attribute mode=area"),
        (
            "Resize",
            [X4, None, f32(1, 1, 2, 2)],
            {"coordinate_transformation_mode": "bogus"},
            1,
            "attribute coordinate_transformation_mode=bogus",
        ),
        ("Conv", [X4, rand(4, 3, 3, 3)], {"auto_pad": "BOGUS"}, 1, "attribute auto_pad=BOGUS"),
        (
            "BatchNormalization",
            [X4, rand(3), rand(3), rand(3), pos(3)],
            {"training_mode": 1},
            1,
            "attribute training_mode=1",
        ),
        ("Cast", [rand(2)], {"to": TensorProto.STRING}, 1, "attribute to=8"),
        ("Gelu", [rand(2)], {"approximate": "erf"}, 1, "attribute approximate=erf"),
        ("Pad", [X4, i64(0, 0, 1, 1, 0, 0, 1, 1)], {"mode": "mirror"}, 1, "attribute mode=mirror"),
        (
            "ConvTranspose",
            [rand(1, 4, 5, 5), rand(4, 3, 3, 3)],
            {"output_shape": [20, 20]},
            1,
            "attribute output_shape",
        ),
    ],
)
def test_unsupported_attribute_names_op_and_node(
    op_type: str, inputs: list, attrs: dict, n_out: int, reason: str
) -> None:
    model = one_node(op_type, inputs, attrs, 17, n_out)
    with pytest.raises(UnsupportedOpError) as info:
        run_ours(model, inputs)
    message = str(info.value)
    assert op_type in message and f"{op_type}_node" in message and reason in message
    assert info.value.op_type == op_type and info.value.node_name == f"{op_type}_node"


@pytest.mark.parametrize(
    ("op_type", "extra", "attrs"),
    [
        ("Conv", [rand(4, 3, 3, 3)], {"pads": [0, 1, 2, 1]}),
        ("ConvTranspose", [rand(3, 2, 3, 3)], {"strides": [2, 2], "pads": [1, 0, 0, 1]}),
        ("AveragePool", [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
        ("MaxPool", [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        ("Resize", [None, f32(1, 1, 1.5, 2)], {"mode": "linear"}),
        ("Pad", [i64(0, 0, 2, 2, 0, 0, 1, 1)], {"mode": "reflect"}),
        ("Slice", [i64(-1), i64(I64_MIN), i64(3), i64(-2)], {}),
        ("LayerNormalization", [rand(8)], {}),
        ("Softmax", [], {}),
        ("Resize", [None, f32(1, 1, 0.5, 0.75)], {"mode": "cubic", "antialias": 1}),
        ("GridSample", [RNG.uniform(-1, 1, (2, 5, 6, 2)).astype(np.float32)], {}),
        ("InstanceNormalization", [rand(3), rand(3)], {}),
        ("GroupNormalization", [rand(3), rand(3)], {"num_groups": 3}),
        ("LRN", [], {"size": 3}),
        ("Mish", [], {}),
        ("Selu", [], {}),
        ("CumSum", [i64(3)], {"exclusive": 1, "reverse": 1}),
        ("ReduceL2", [i64(1)], {}),
        ("ReduceLogSumExp", [i64(2, 3)], {}),
        ("LpNormalization", [], {"axis": 1}),
        ("GatherElements", [RNG.integers(-7, 7, (2, 3, 4, 8))], {"axis": 2}),
        ("DepthToSpace", [], {"blocksize": 1}),
        ("Atan", [], {}),
    ],
)
def test_gradients_flow(op_type: str, extra: list, attrs: dict) -> None:
    """AdaRound and QAT back-propagate through every op in float inputs."""
    x = torch.randn(2, 3, 7, 8, requires_grad=True)
    rest = [None if a is None else torch.from_numpy(a) for a in extra]
    ctx = NodeContext(op_type, "n", attrs, 17)
    (y,) = OP_REGISTRY[op_type](ctx, [x, *rest])
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_gradients_flow_through_recurrences(op_type: str) -> None:
    """QAT trains through recurrent layers: input and weights both get gradients."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op_type]
    x = torch.randn(4, 2, 3, requires_grad=True)
    w = torch.randn(2, gates * 5, 3, requires_grad=True)
    r = torch.randn(2, gates * 5, 5)
    ctx = NodeContext(op_type, "n", {"hidden_size": 5, "direction": "bidirectional"}, 17, 2)
    y, y_h = OP_REGISTRY[op_type](ctx, [x, w, r])
    (y.square().sum() + y_h.sum()).backward()
    for t in (x, w):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
