"""The exported QDQ graph with ONNX Runtime's integer kernels computed as ORT computes them.

The simulation runs the exported graph with ORT's optimizer off: each quantized op is
DQ -> float op -> Q. Deployed, ORT fuses many of those groups into integer kernels whose
requantization rounds differently in the last bit (int32 accumulation, a float32 multiplier,
its own order of float operations); a network with a fine grid after a coarse one (hardswish,
Gelu, LayerNorm after a residual) turns those last-bit flips into output noise as large as the
quantization noise itself, so the simulation stops predicting what is deployed.

:func:`emulated` rewrites, in a copy of the QDQ graph, every group that ORT's optimizer turned
into a kernel emulated here (read off the optimized graph ORT saved, node by node: the fused
node's own inputs, constants and output name) into standard ONNX ops that compute that kernel's
arithmetic exactly, step for step as ORT's x86-64 CPU kernels do it (MLAS, AVX2 and later):

- ``QLinearConv`` / ``QLinearMatMul`` / ``QGemm``: exact integer accumulation (a float32 Conv on
  the zero-centred integers where every partial sum stays below 2^24, else ConvInteger /
  MatMulInteger), the int32 bias added, ``float(acc) * float32(s_x * s_w[c] / s_y)``, round half
  to even, saturate (MlasRequantizeOutput);
- ``MatMulIntegerToFloat``: ``float(acc) * float32(s_a * s_b[c])``;
- ``QLinearAdd``: ``fma(a, s_a/s_c, fma(b, s_b/s_c, z_c - (s_a/s_c z_a + s_b/s_c z_b)))`` in
  float32 (a side ORT hands over one value per span: folded into the constant part first),
  rounded half to even and saturated (qladd_avx2.cpp); each float32 step is computed in float64
  and rounded once, which is exactly a fused multiply-add;
- ``QLinearMul``: ``float((a - z_a)(b - z_b)) * float32(s_a s_b / s_c) + z_c``, rounded;
- ``QLinearSoftmax``: ORT's float32 exp table, each row summed left to right in float32, the
  output multiplied by ``floor(1 / s_y)``, not divided by ``s_y``;
- ``QLinearGlobalAveragePool``: int32 sum minus ``z_x N``, times ``float32(s_x / (s_y N))``;
- and where ORT merges Q1 -> DQ1 -> Q2 -> DQ2 onto one grid of its own (DoubleQDQPairsRemover),
  the exported chain is put on that grid.

Run with the optimizer off, the rewritten graph then computes bit for bit what the optimized
one computes for every emulated kernel; kernels not emulated keep DQ -> op -> Q and are counted.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PREFIX = "ort_emulation/"


@dataclass
class Emulation:
    """The rewritten graph and what was rewritten (kernel -> count), and what was not."""

    model: onnx.ModelProto
    emulated: dict[str, int] = field(default_factory=dict)
    not_emulated: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # why the graph is the exported one as it is

    @property
    def changed(self) -> bool:
        return bool(self.emulated)


def emulated(qdq: onnx.ModelProto, optimized: onnx.ModelProto) -> Emulation:
    """``qdq`` with every group ORT fused into an emulated kernel computed as that kernel
    computes it. ``optimized`` is the graph ORT's optimizer saved (weights loaded): it says which
    groups became which kernel (a fused node keeps its compute node's name, plus a suffix where
    the layout pass rewrote it) and how ORT laid out their constants."""
    fused = _fused_kernels(optimized)
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    constants = _Constants(
        {init.name: init for init in graph.initializer},
        {},
        {init.name: init for init in optimized.graph.initializer},
    )
    constants.opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
    )
    producer: dict[str, onnx.NodeProto] = {}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.output:
            producer[name] = node
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    done: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for node in graph.node:
        after = readers.get(node.output[0], []) if node.output else []
        if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
            after = readers.get(after[0].output[0], [])
        kernel = (
            (fused.get(node.name) if node.name else None)
            or fused.get(node.output[0] if node.output else "")
            or (fused.get(after[0].output[0]) if len(after) == 1 else None)
        )
        if kernel is None or kernel[0].op_type == "DequantizeLinear":
            continue
        kernel_node, kernel_type = kernel
        builder = _BUILDERS.get(kernel_type)
        group = _group(node, kernel_type, producer, readers, outputs)
        nodes = None
        if builder is not None and group is not None:
            virtual, target = group
            try:
                nodes = builder(
                    virtual,
                    constants,
                    f"{PREFIX}{len(replaced)}/{node.name or node.output[0]}/",
                    kernel_node,
                )
            except _Unsupported:
                nodes = None
        if nodes is None:
            skipped[kernel_type] += 1
            continue
        replaced[id(target)] = nodes
        done[kernel_type] += 1
    unique = {id(kernel_node): kernel for kernel_node, kernel in fused.values()}
    not_emulated = Counter(unique.values()) - done
    merged = _merged_grids(graph, optimized, constants, producer, readers)
    if merged:
        done["merged Q/DQ pairs"] = merged
    if not replaced and not merged:
        return Emulation(model, {}, dict(not_emulated))
    rebuilt: list[onnx.NodeProto] = []
    for node in graph.node:
        rebuilt.extend(replaced.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(_live(rebuilt, outputs))
    used = {name for node in graph.node for name in node.input}
    used |= _subgraph_reads(graph) | {value.name for value in graph.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + list(constants.added.values()))
    return Emulation(model, dict(done), dict(not_emulated))


MERGED_PREFIX = "DoubleQDQRemoved_"  # the scales ORT's DoubleQDQPairsRemover writes
# what may sit between the two pairs: conversions ORT drops and moves that keep values
MOVES = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Slice", "Reshape", "Transpose",
     "Squeeze", "Unsqueeze", "Flatten"}
)  # fmt: skip


def _merged_grids(
    graph: onnx.GraphProto,
    optimized: onnx.ModelProto,
    constants: _Constants,
    producer: dict[str, onnx.NodeProto],
    readers: dict[str, list[onnx.NodeProto]],
) -> int:
    """ORT collapses Q1 -> DQ1 -> Q2 -> DQ2 (once a float no-op between them is gone) into one
    Q -> DQ on a grid of its own, the intersection of both ranges (DoubleQDQPairsRemover):
    one rounding where the export rounds twice. The exported chain is put on that grid (read
    off the optimized graph), so that it rounds once, there, as ORT does. Returns the chains."""

    def grid(node: onnx.NodeProto) -> tuple[str, str]:
        return node.input[1], node.input[2] if len(node.input) > 2 else ""

    merged_q = {
        node.output[0]: node
        for node in optimized.graph.node
        if node.op_type == "QuantizeLinear" and node.input[1].startswith(MERGED_PREFIX)
    }
    # merged Q's output -> the exported DQs ending its chain, and their grids
    ends: dict[str, dict[int, tuple[str, str]]] = {}
    by_name = {node.name: node for node in graph.node if node.name}
    by_output = {node.output[0]: node for node in graph.node if node.output}
    chains = 0

    def exported(node: onnx.NodeProto) -> onnx.NodeProto | None:
        """The exported node ORT's node came from: its name, else its output, where kept."""
        return by_name.get(node.name) if node.name else by_output.get(node.output[0])

    def use(node: onnx.NodeProto, scale: str, zero: str) -> None:
        if scale not in constants.optimized:
            return
        node.input[1] = constants.add(
            PREFIX + scale, numpy_helper.to_array(constants.optimized[scale])
        )
        if zero in constants.optimized and len(node.input) > 2:
            node.input[2] = constants.add(
                PREFIX + zero, numpy_helper.to_array(constants.optimized[zero])
            )

    for node in optimized.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in merged_q:
            end = exported(node)
            if end is not None:
                ends.setdefault(node.input[0], {})[id(end)] = grid(node)
    for output, quantize in merged_q.items():
        first, last = exported(quantize), ends.get(output, {})
        if first is None or first.op_type != "QuantizeLinear" or not last:
            continue
        chain, node = [first], first
        while id(node) not in last and len(chain) < 16:  # Q1 -> DQ1 -> moves -> Q2 -> DQ2
            after = readers.get(node.output[0], [])
            if len(after) != 1 or after[0].op_type not in MOVES:
                break
            node = after[0]
            chain.append(node)
        if id(node) not in last:
            continue
        for n in chain[:-1]:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                use(n, *grid(quantize))
        use(chain[-1], *last[id(chain[-1])])
        chains += 1
    return chains


def _fused_kernels(optimized: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, str]]:
    """Compute-node name (and fused output tensor) -> (ORT's fused node, its kernel) for the
    integer kernels ORT placed."""
    from qaas_engine.runtime_graph import INTEGER_KERNELS

    fused: dict[str, tuple[onnx.NodeProto, str]] = {}
    by_output = {}
    for node in optimized.graph.node:
        if node.op_type in INTEGER_KERNELS:
            name = re.sub(r"_token_\d+$", "", node.name)
            if name:
                fused[name] = (node, node.op_type)
            by_output[node.output[0]] = (node, node.op_type)  # where no name is kept
        elif node.op_type == "Transpose" and node.input[0] in by_output:
            # the layout pass's transpose back to NCHW carries the exported tensor's name
            by_output[node.output[0]] = by_output[node.input[0]]
    return {**by_output, **fused}


def _group(
    node: onnx.NodeProto,
    kernel: str,
    producer: dict[str, onnx.NodeProto],
    readers: dict[str, list[onnx.NodeProto]],
    outputs: set[str],
) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """The QDQ group around ``node`` as the fused kernel's node (its inputs in the kernel's
    order, its output the tensor it replaces) and the exported node it replaces."""
    dequantized: list[Any] = []  # per input: [name, scale, zero point], None where empty
    for name in node.input:
        if not name:
            dequantized.append(None)
            continue
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        dequantized.append(list(dq.input) + [""] * (3 - len(dq.input)))
    after = readers.get(node.output[0], [])
    if (
        len(after) == 1
        and after[0].op_type in ("Relu", "Clip")
        and after[0].output[0] not in outputs
    ):
        # ORT drops an activation its Q's saturation already applies (Relu/Clip-Q fusion):
        # it fused the group only where that is exact, so the kernel's saturation stands in
        after = readers.get(after[0].output[0], [])
    quantized = after[0] if len(after) == 1 and after[0].op_type == "QuantizeLinear" else None
    if kernel == "MatMulIntegerToFloat":
        if len(dequantized) != 2:
            return None
        (a, sa, za), (b, sb, zb) = dequantized
        virtual = helper.make_node(kernel, [a, b, sa, sb, za, zb], [node.output[0]])
        return virtual, node
    if quantized is None or node.output[0] in outputs:
        return None
    q_in = list(quantized.input) + [""] * (3 - len(quantized.input))
    if kernel == "QLinearConv":
        if len(dequantized) < 2:
            return None
        (x, sx, zx), (w, sw, zw) = dequantized[:2]
        bias = dequantized[2][0] if len(dequantized) > 2 and dequantized[2] else ""
        inputs = [x, sx, zx, w, sw, zw, q_in[1], q_in[2]] + ([bias] if bias else [])
        virtual = helper.make_node(kernel, inputs, list(quantized.output))
        virtual.attribute.extend(node.attribute)
        return virtual, quantized
    if kernel in ("QLinearSoftmax", "QLinearGlobalAveragePool"):
        if len(dequantized) != 1 or dequantized[0] is None:
            return None
        x, sx, zx = dequantized[0]
        virtual = helper.make_node(kernel, [x, sx, zx, q_in[1], q_in[2]], list(quantized.output))
        virtual.attribute.extend(node.attribute)  # Softmax's axis as exported
        return virtual, quantized
    if kernel == "QGemm":
        if len(dequantized) < 2 or None in dequantized[:2]:
            return None
        (a, sa, za), (b, sb, zb) = dequantized[:2]
        bias = dequantized[2][0] if len(dequantized) > 2 and dequantized[2] else ""
        inputs = [a, sa, za, b, sb, zb, bias, q_in[1], q_in[2]]
        virtual = helper.make_node(kernel, inputs, list(quantized.output))
        virtual.attribute.extend(node.attribute)
        return virtual, quantized
    if kernel in ("QLinearMatMul", "QLinearAdd", "QLinearMul"):
        if len(dequantized) != 2 or None in dequantized:
            return None
        (a, sa, za), (b, sb, zb) = dequantized
        virtual = helper.make_node(
            kernel, [a, sa, za, b, sb, zb, q_in[1], q_in[2]], list(quantized.output)
        )
        return virtual, quantized
    return None


def load_optimized(path: str | Path) -> onnx.ModelProto:
    """The optimized graph ORT saved: its nodes and its constants' shapes (weights left on
    disk; the emulation reads values from the exported graph)."""
    return onnx.load(str(path), load_external_data=False)


class _Unsupported(Exception):
    """A fused node whose inputs this emulation does not cover (it stays DQ -> op -> Q)."""


class _Constants:
    """Reads the fused node's constants; adds the emulation's own, named apart."""

    def __init__(
        self,
        constants: dict[str, onnx.TensorProto],
        added: dict[str, onnx.TensorProto],
        optimized: dict[str, onnx.TensorProto] | None = None,
    ) -> None:
        self.constants = constants
        self.added = added
        self.optimized = optimized or {}
        self.opset = 13  # the exported graph's default-domain opset (emitted ops follow it)

    def optimized_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape ORT gave a constant of a fused node (its layout pass may transpose it)."""
        if name not in self.optimized:
            return None
        return tuple(self.optimized[name].dims)

    def array(self, name: str) -> np.ndarray:
        if name not in self.constants:
            raise _Unsupported(name)
        return numpy_helper.to_array(self.constants[name])

    def has(self, name: str) -> bool:
        return name in self.constants

    def add(self, name: str, value: np.ndarray) -> str:
        self.added[name] = numpy_helper.from_array(np.array(value), name)
        return name

    def keep(self, name: str) -> str:
        """A constant the emulation reads as it is (it stays in the graph under its name)."""
        if name not in self.constants:
            raise _Unsupported(name)
        return name


def _scalar(constants: _Constants, name: str) -> np.float32:
    value = constants.array(name).astype(np.float32).reshape(-1)
    if value.size != 1:
        raise _Unsupported(name)
    return value[0]


def _zero(constants: _Constants, name: str | None, like: int) -> np.ndarray:
    if name:
        return constants.array(name)
    return np.zeros((), helper.tensor_dtype_to_np_dtype(like))


def _requantize(
    acc: str, multiplier: np.ndarray, zero_point: np.ndarray, out: str, prefix: str,
    constants: _Constants, shape: tuple[int, ...],
    cast: bool = True,
) -> list[onnx.NodeProto]:  # fmt: skip
    """int32 ``acc`` -> float32 * multiplier -> round half to even + zero point, saturated
    (``cast=False``: ``acc`` already holds the integers as float32, exactly)."""
    scale = constants.add(prefix + "multiplier", multiplier.astype(np.float32).reshape(shape))
    one = constants.add(prefix + "one", np.array(1.0, np.float32))
    zp = constants.add(prefix + "zero_point", zero_point.reshape(()))
    nodes = []
    if cast:
        nodes.append(helper.make_node("Cast", [acc], [prefix + "acc_float"], to=TensorProto.FLOAT))
        acc = prefix + "acc_float"
    return nodes + [
        helper.make_node("Mul", [acc, scale], [prefix + "scaled"]),
        helper.make_node("QuantizeLinear", [prefix + "scaled", one, zp], [out]),
    ]


EXACT_IN_FLOAT32 = 2**24  # every integer up to this magnitude is a float32


def _centred(x: str, zero: np.ndarray, out: str, constants: _Constants) -> onnx.NodeProto:
    """``float(x - zero)`` for an 8-bit ``x``: a DequantizeLinear with scale 1, one pass over
    ``x`` where a Cast and a Sub took two (the difference is an integer: exact either way)."""
    one = constants.add(out + "_one", np.array(1.0, np.float32))
    return helper.make_node(
        "DequantizeLinear", [x, one, constants.add(out + "_zero", zero.reshape(()))], [out]
    )


def _float_conv(
    x: str,
    zx: str,
    weights: np.ndarray,
    w_zero: np.ndarray,
    bias: str,
    constants: _Constants,
    prefix: str,
    attrs: dict,
    shape: tuple[int, ...],
) -> tuple[list[onnx.NodeProto], str] | None:
    """The int32 accumulation as a float32 Conv on the zero-centred integers, where that is
    exact: every partial sum, bias included, is an integer below 2^24 in magnitude whatever the
    order of summation (MLAS's float conv is much faster than its ConvInteger). None where a
    channel's bound does not allow it."""
    if not zx or np.any(w_zero != 0):
        return None
    x_zero = constants.array(zx).reshape(-1)
    if x_zero.size != 1:
        return None
    info = np.iinfo(x_zero.dtype)
    x_reach = max(int(x_zero[0]) - info.min, info.max - int(x_zero[0]))
    reach = np.abs(weights.astype(np.int64)).reshape(weights.shape[0], -1).sum(axis=1) * x_reach
    bias_values = constants.array(bias).astype(np.int64).reshape(-1) if bias else np.zeros(1)
    if np.any(reach + np.abs(bias_values) >= EXACT_IN_FLOAT32):
        return None
    nodes = [_centred(x, x_zero.reshape(()), prefix + "x_centred", constants)]
    inputs = [prefix + "x_centred", constants.add(prefix + "w_float", weights.astype(np.float32))]
    if bias:
        inputs.append(constants.add(prefix + "b_float", bias_values.astype(np.float32)))
    nodes.append(helper.make_node("Conv", inputs, [prefix + "acc_float"], **attrs))
    return nodes, prefix + "acc_float"


def _qlinear_conv(
    node: onnx.NodeProto, constants: _Constants, prefix: str, kernel: onnx.NodeProto
) -> list[onnx.NodeProto]:
    x, sx, zx, w, sw, zw, sy, zy, *rest = list(node.input) + [""]
    weights = constants.array(w)
    channels = weights.shape[0]
    w_scale = constants.array(sw).astype(np.float32).reshape(-1)
    multiplier = (_scalar(constants, sx) * w_scale) / _scalar(constants, sy)
    if multiplier.size not in (1, channels):
        raise _Unsupported(sw)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {
        k: v
        for k, v in attrs.items()
        if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
    }
    shape = (1, -1) + (1,) * (weights.ndim - 2)
    w_zero = constants.array(zw).reshape(-1) if zw else np.zeros(1, weights.dtype)
    if np.any(w_zero != w_zero[0]):
        raise _Unsupported(zw)  # ConvInteger takes one weight zero point
    w_zero = w_zero[:1].reshape(())
    bias = rest[0] if rest else ""
    zero = _zero(constants, zy, TensorProto.UINT8)
    mult = np.broadcast_to(multiplier, (channels,)) if multiplier.size > 1 else multiplier
    out_shape = shape if multiplier.size > 1 else ()
    exact = _float_conv(x, zx, weights, w_zero, bias, constants, prefix, attrs, shape)
    if exact is not None:
        nodes, acc = exact
        return nodes + _requantize(
            acc, mult, zero, node.output[0], prefix, constants, out_shape, cast=False
        )
    nodes = [
        helper.make_node(
            "ConvInteger",
            [
                x,
                constants.keep(w),
                constants.keep(zx) if zx else "",
                constants.add(prefix + "w_zero", w_zero),
            ],
            [prefix + "acc"],
            **attrs,
        )
    ]
    acc = prefix + "acc"
    if bias:
        values = constants.array(bias).astype(np.int32).reshape(shape)
        nodes.append(
            helper.make_node(
                "Add", [acc, constants.add(prefix + "bias", values)], [prefix + "acc_bias"]
            )
        )
        acc = prefix + "acc_bias"
    zero = _zero(constants, zy, TensorProto.UINT8)
    mult = np.broadcast_to(multiplier, (channels,)) if multiplier.size > 1 else multiplier
    return nodes + _requantize(acc, mult, zero, node.output[0], prefix, constants,
                               shape if multiplier.size > 1 else ())  # fmt: skip


def _matmul_acc(
    a: str, za: str, b: str, zb: str, constants: _Constants, prefix: str
) -> list[onnx.NodeProto]:
    weights = constants.array(b) if constants.has(b) else None
    b_zero = constants.array(zb) if zb else None
    if b_zero is not None and b_zero.size > 1 and np.any(b_zero != b_zero.reshape(-1)[0]):
        raise _Unsupported(zb)  # per-column zero points: MatMulInteger takes them, kept simple
    if b_zero is None:
        dtype = weights.dtype if weights is not None else np.uint8
        b_zero = np.zeros((), dtype)
    inputs = [
        a,
        constants.keep(b) if weights is not None else b,
        constants.keep(za) if za else "",
        constants.add(prefix + "b_zero", b_zero.reshape(-1)[:1].reshape(())),
    ]
    return [helper.make_node("MatMulInteger", inputs, [prefix + "acc"])]


def _qlinear_matmul(
    node: onnx.NodeProto, constants: _Constants, prefix: str, kernel: onnx.NodeProto
) -> list[onnx.NodeProto]:
    a, sa, za, b, sb, zb, sy, zy = node.input
    b_scale = constants.array(sb).astype(np.float32).reshape(-1)
    if b_scale.size > 1 and not constants.has(b):
        raise _Unsupported(sb)
    multiplier = (_scalar(constants, sa) * b_scale) / _scalar(constants, sy)
    nodes = _matmul_acc(a, za, b, zb, constants, prefix)
    return nodes + _requantize(prefix + "acc", multiplier, _zero(constants, zy, TensorProto.UINT8),
                               node.output[0], prefix, constants,
                               (-1,) if multiplier.size > 1 else ())  # fmt: skip


def _matmul_to_float(
    node: onnx.NodeProto, constants: _Constants, prefix: str, kernel: onnx.NodeProto
) -> list[onnx.NodeProto]:
    a, b, sa, sb, *rest = list(node.input) + ["", "", ""]
    za, zb, bias = rest[0], rest[1], rest[2]
    if len(kernel.input) > 6 and kernel.input[6]:
        raise _Unsupported(kernel.name)  # ORT fused the bias Add in: another group
    b_scale = constants.array(sb).astype(np.float32).reshape(-1)
    multiplier = _scalar(constants, sa) * b_scale
    nodes = _matmul_acc(a, za, b, zb, constants, prefix)
    scale = constants.add(
        prefix + "multiplier", multiplier.reshape((-1,) if multiplier.size > 1 else ())
    )
    out = node.output[0]
    scaled = prefix + "scaled" if bias else out
    nodes += [
        helper.make_node("Cast", [prefix + "acc"], [prefix + "acc_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [prefix + "acc_float", scale], [scaled]),
    ]
    if bias:
        nodes.append(helper.make_node("Add", [scaled, constants.keep(bias)], [out]))
    return nodes


def _qlinear_add(
    node: onnx.NodeProto, constants: _Constants, prefix: str, kernel: onnx.NodeProto
) -> list[onnx.NodeProto]:
    a, sa, za, b, sb, zb, sc, zc = node.input
    f32 = np.float32
    scale_c = _scalar(constants, sc)
    ratio_a, ratio_b = f32(_scalar(constants, sa) / scale_c), f32(_scalar(constants, sb) / scale_c)
    zero_a = _zero(constants, za, TensorProto.UINT8).astype(np.int32).reshape(-1)[0]
    zero_b = _zero(constants, zb, TensorProto.UINT8).astype(np.int32).reshape(-1)[0]
    zero_c = _zero(constants, zc, TensorProto.UINT8)
    # z_c - (r_a z_a + r_b z_b), as ORT's compiled kernel computes it: the compiler contracts
    # r_a z_a + (r_b z_b) into one fused multiply-add (exact in float64, then rounded once)
    fixed = f32(
        f32(zero_c.astype(np.int32).reshape(-1)[0])
        - f32(float(ratio_a) * float(zero_a) + float(f32(ratio_b * f32(zero_b))))
    )
    nodes: list[onnx.NodeProto] = []

    def spans_one(name: str, index: int) -> bool:
        """ORT's broadcast hands this side to the kernel one value per span (its scalar path):
        a single value, or a constant broadcast along the innermost axis, as ORT laid it out."""
        if not constants.has(name):
            return False
        shape = (
            constants.optimized_shape(kernel.input[index]) if len(kernel.input) > index else None
        )
        shape = shape if shape is not None else constants.array(name).shape
        return int(np.prod(shape)) == 1 or (len(shape) > 0 and shape[-1] == 1)

    def cast(tensor: str, name: str, to: int) -> str:
        source = constants.keep(tensor) if constants.has(tensor) else tensor
        nodes.append(helper.make_node("Cast", [source], [prefix + name], to=to))
        return prefix + name

    def double(value: float, name: str) -> str:
        return constants.add(prefix + name, np.array(value, np.float64))

    def to_f32(x: str, name: str) -> str:
        nodes.append(helper.make_node("Cast", [x], [prefix + name], to=TensorProto.FLOAT))
        nodes.append(
            helper.make_node(
                "Cast", [prefix + name], [prefix + name + "_double"], to=TensorProto.DOUBLE
            )
        )
        return prefix + name + "_double"

    def multiply_add(x: str, ratio: float | np.floating[Any], addend: str, name: str) -> str:
        """float32(x * ratio + addend) rounded once (a fused multiply-add): x is an integer of
        at most 16 bits and ratio a float32, so the product is exact in float64."""
        nodes.append(
            helper.make_node(
                "Mul", [x, double(float(ratio), name + "_ratio")], [prefix + name + "_product"]
            )
        )
        nodes.append(
            helper.make_node("Add", [prefix + name + "_product", addend], [prefix + name + "_sum"])
        )
        return to_f32(prefix + name + "_sum", name)

    one_a, one_b = spans_one(a, 0), spans_one(b, 3)
    if one_a and one_b:
        raise _Unsupported(a)
    fixed_name = double(float(fixed), "fixed")
    if one_a or one_b:
        # the scalar side is folded into the constant part first: multiply, round, add, round
        (one, one_ratio), (vector, vector_ratio) = ((a, ratio_a), (b, ratio_b))[
            :: 1 if one_a else -1
        ]
        product = prefix + "scalar_product"
        nodes.append(
            helper.make_node(
                "Mul",
                [cast(one, "scalar", TensorProto.DOUBLE), double(float(one_ratio), "scalar_ratio")],
                [product],
            )
        )
        nodes.append(
            helper.make_node(
                "Add", [to_f32(product, "scalar_f32"), fixed_name], [prefix + "folded_sum"]
            )
        )
        folded = to_f32(prefix + "folded_sum", "folded")
        result = multiply_add(cast(vector, "vector", TensorProto.DOUBLE), vector_ratio, folded, "c")
    else:
        partial = multiply_add(cast(b, "b", TensorProto.DOUBLE), ratio_b, fixed_name, "partial")
        result = multiply_add(cast(a, "a", TensorProto.DOUBLE), ratio_a, partial, "c")
    del result  # the float32 value is prefix + "c"
    nodes.append(_round_onto_output(node, constants, prefix, zero_c.dtype))
    return nodes


def _round_onto_output(
    node: onnx.NodeProto, constants: _Constants, prefix: str, dtype: np.dtype
) -> onnx.NodeProto:
    """``prefix + "c"`` already holds the output's integers as float32 (zero point added):
    QuantizeLinear with scale 1 and zero 0 rounds half to even and saturates to ``dtype``."""
    out_zero = constants.add(prefix + "out_zero", np.zeros((), dtype))
    one = constants.add(prefix + "one", np.array(1.0, np.float32))
    return helper.make_node("QuantizeLinear", [prefix + "c", one, out_zero], [node.output[0]])


def _qlinear_mul(
    node: onnx.NodeProto, constants: _Constants, prefix: str, kernel: onnx.NodeProto
) -> list[onnx.NodeProto]:
    """``float((a - z_a)(b - z_b)) * float32(s_a s_b / s_c) + z_c``, each step rounded to float32
    (MlasQLinearMulVectorS16 on x86), then round half to even and saturate."""
    a, sa, za, b, sb, zb, sc, zc = node.input
    f32 = np.float32
    ratio = f32(f32(_scalar(constants, sa) * _scalar(constants, sb)) / _scalar(constants, sc))
    zero_c = _zero(constants, zc, TensorProto.UINT8)
    nodes: list[onnx.NodeProto] = []

    def centred(tensor: str, zero: str, name: str) -> str:
        source = constants.keep(tensor) if constants.has(tensor) else tensor
        value = _zero(constants, zero, TensorProto.UINT8)
        nodes.append(_centred(source, value, prefix + name + "_centred", constants))
        return prefix + name + "_centred"

    # both factors are 8-bit integers (|product| <= 2^16): the float32 product is exact, as
    # the int32 one is
    nodes.append(
        helper.make_node(
            "Mul", [centred(a, za, "a"), centred(b, zb, "b")], [prefix + "product_float"]
        )
    )
    nodes.append(
        helper.make_node(
            "Mul",
            [
                prefix + "product_float",
                constants.add(prefix + "ratio", np.array(ratio, np.float32)),
            ],
            [prefix + "scaled"],
        )
    )
    zc_float = constants.add(
        prefix + "zc", np.array(f32(zero_c.astype(np.int32).reshape(-1)[0]), np.float32)
    )
    nodes.append(helper.make_node("Add", [prefix + "scaled", zc_float], [prefix + "c"]))
    nodes.append(_round_onto_output(node, constants, prefix, zero_c.dtype))
    return nodes


def _qgemm(
    node: onnx.NodeProto, constants: _Constants, prefix: str, kernel: onnx.NodeProto
) -> list[onnx.NodeProto]:
    """ORT's QGemm: ``float(A B' + C) * float32(alpha s_a s_b[n] / s_y)``, rounded, saturated."""
    a, sa, za, b, sb, zb, bias, sy, zy = node.input
    attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    if attrs.get("transA", 0) or float(attrs.get("beta", 1.0)) != 1.0 or not constants.has(b):
        raise _Unsupported(node.name)
    weights = constants.array(b)
    if attrs.get("transB", 0):
        weights = weights.T
    alpha = np.float32(attrs.get("alpha", 1.0))
    b_scale = constants.array(sb).astype(np.float32).reshape(-1)
    multiplier = ((alpha * _scalar(constants, sa)) * b_scale / _scalar(constants, sy)).astype(
        np.float32
    )
    b_zero = constants.array(zb).reshape(-1) if zb else np.zeros(1, weights.dtype)
    if np.any(b_zero != b_zero[0]):
        raise _Unsupported(zb)
    inputs = [
        a,
        constants.add(prefix + "weights", weights),
        constants.keep(za) if za else "",
        constants.add(prefix + "b_zero", b_zero[:1].reshape(())),
    ]
    nodes = [helper.make_node("MatMulInteger", inputs, [prefix + "acc"])]
    acc = prefix + "acc"
    if bias:
        values = constants.array(bias).astype(np.int32)
        nodes.append(
            helper.make_node(
                "Add", [acc, constants.add(prefix + "bias", values)], [prefix + "acc_bias"]
            )
        )
        acc = prefix + "acc_bias"
    zero = _zero(constants, zy, TensorProto.UINT8)
    return nodes + _requantize(acc, multiplier, zero, node.output[0], prefix, constants,
                               (-1,) if multiplier.size > 1 else ())  # fmt: skip


def _reduce(op: str, x: str, axes: list[int], out: str, constants: _Constants) -> onnx.NodeProto:
    """A Reduce* node keeping dims, its axes as the graph's opset wants them."""
    if op == "ReduceSum" and constants.opset >= 13 or constants.opset >= 18:
        name = constants.add(f"{out}_axes", np.array(axes, np.int64))
        return helper.make_node(op, [x, name], [out], keepdims=1)
    return helper.make_node(op, [x], [out], axes=axes, keepdims=1)


def _qlinear_softmax(
    node: onnx.NodeProto, constants: _Constants, prefix: str, kernel: onnx.NodeProto
) -> list[onnx.NodeProto]:
    """ORT's QLinearSoftmax (uint8, opset 13): a float32 table of
    ``exp((i - 255 + shift) * s_x)`` (shift keeping the row sum finite), indexed by
    ``x - max(x) + 255``; ``round(t * floor(1 / s_y) / sum(t)) + z_y``, saturated."""
    x, sx, zx, sy, zy = node.input
    # the exported Softmax's axis: ORT's layout passes may move transposes across the kernel
    # and renumber its own axis, not the exported graph's
    exported = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = int(exported.get("axis", -1))
    zero = _zero(constants, zy, TensorProto.UINT8)
    if constants.opset < 13 or zero.dtype != np.uint8:
        raise _Unsupported(node.name)  # opset 12 and below: softmax over flattened axes
    scale_x = float(_scalar(constants, sx))
    y_scale = np.float32(np.floor(np.float32(1.0) / _scalar(constants, sy)))
    n = prefix
    c = constants.add
    nodes = [
        # the table, for this row length D: shift = max(0, log(FLT_MAX / D) - 5) / s_x
        helper.make_node("Shape", [x], [n + "shape"]),
        helper.make_node(
            "Gather", [n + "shape", c(n + "axis", np.array(axis, np.int64))], [n + "d"]
        ),
        helper.make_node("Cast", [n + "d"], [n + "d_float"], to=TensorProto.FLOAT),
        helper.make_node(
            "Div",
            [c(n + "flt_max", np.array(np.finfo(np.float32).max, np.float32)), n + "d_float"],
            [n + "ratio"],
        ),
        helper.make_node("Log", [n + "ratio"], [n + "log"]),
        helper.make_node("Cast", [n + "log"], [n + "log_double"], to=TensorProto.DOUBLE),
        helper.make_node(
            "Sub", [n + "log_double", c(n + "reserve", np.array(5.0))], [n + "reserved"]
        ),
        helper.make_node(
            "Max", [n + "reserved", c(n + "zero_double", np.array(0.0))], [n + "kept"]
        ),
        helper.make_node("Div", [n + "kept", c(n + "scale_x", np.array(scale_x))], [n + "shift"]),
        helper.make_node(
            "Add",
            [c(n + "steps", np.arange(256, dtype=np.float64) - 255.0), n + "shift"],
            [n + "exponent_steps"],
        ),
        helper.make_node("Mul", [n + "exponent_steps", n + "scale_x"], [n + "exponent"]),
        helper.make_node("Exp", [n + "exponent"], [n + "exp"]),
        helper.make_node("Cast", [n + "exp"], [n + "table"], to=TensorProto.FLOAT),
        # each row: its values shifted so that its maximum reads the table's last entry
        helper.make_node("Cast", [x], [n + "x"], to=TensorProto.INT64),
        _reduce("ReduceMax", n + "x", [axis], n + "x_max", constants),
        helper.make_node("Sub", [n + "x", n + "x_max"], [n + "x_shifted"]),
        helper.make_node(
            "Add", [n + "x_shifted", c(n + "last", np.array(255, np.int64))], [n + "index"]
        ),
        helper.make_node("Gather", [n + "table", n + "index"], [n + "t"]),
        # ORT sums each row left to right in float32: a running sum's last element is that sum
        helper.make_node(
            "CumSum", [n + "t", c(n + "sum_axis", np.array(axis, np.int64))], [n + "running"]
        ),
        helper.make_node(
            "Slice",
            [
                n + "running",
                c(n + "sum_start", np.array([-1], np.int64)),
                c(n + "sum_end", np.array([np.iinfo(np.int64).max], np.int64)),
                c(n + "sum_axes", np.array([axis], np.int64)),
            ],
            [n + "sum"],
        ),
        helper.make_node(
            "Mul", [n + "t", c(n + "y_scale", np.array(y_scale, np.float32))], [n + "scaled"]
        ),
        helper.make_node("Div", [n + "scaled", n + "sum"], [n + "y"]),
        helper.make_node(
            "QuantizeLinear",
            [n + "y", c(n + "one", np.array(1.0, np.float32)), c(n + "out_zero", zero.reshape(()))],
            [node.output[0]],
        ),
    ]
    return nodes


def _qlinear_global_average_pool(
    node: onnx.NodeProto, constants: _Constants, prefix: str, kernel: onnx.NodeProto
) -> list[onnx.NodeProto]:
    """ORT's QLinearGlobalAveragePool on x86: ``sum(x) - z_x N`` in int32, times
    ``float32(s_x / (s_y * N))``, rounded, plus ``z_y``, saturated (MlasRequantizeOutput)."""
    x, sx, zx, sy, zy = node.input
    n = prefix
    c = constants.add
    zero_x = _zero(constants, zx, TensorProto.UINT8).astype(np.int32).reshape(())
    if constants.opset < 13:
        raise _Unsupported(node.name)  # ReduceSum takes its axes as an input from opset 13
    nodes = [
        helper.make_node("Shape", [x], [n + "shape"]),
        helper.make_node("Size", [n + "shape"], [n + "rank"]),
        helper.make_node(
            "Range",
            [c(n + "two", np.array(2, np.int64)), n + "rank", c(n + "step", np.array(1, np.int64))],
            [n + "axes"],
        ),
        helper.make_node("Gather", [n + "shape", n + "axes"], [n + "spatial"]),
        helper.make_node("ReduceProd", [n + "spatial"], [n + "size"], keepdims=0),
        helper.make_node("Cast", [n + "size"], [n + "size_int"], to=TensorProto.INT32),
        helper.make_node("Cast", [n + "size"], [n + "size_float"], to=TensorProto.FLOAT),
        helper.make_node(
            "Mul",
            [c(n + "scale_y", np.array(_scalar(constants, sy))), n + "size_float"],
            [n + "denominator"],
        ),
        helper.make_node(
            "Div",
            [c(n + "scale_x", np.array(_scalar(constants, sx))), n + "denominator"],
            [n + "multiplier"],
        ),
        helper.make_node("Mul", [c(n + "zero_x", zero_x), n + "size_int"], [n + "offset"]),
        helper.make_node("Cast", [x], [n + "x"], to=TensorProto.INT32),
        helper.make_node("ReduceSum", [n + "x", n + "axes"], [n + "sum"], keepdims=1),
        helper.make_node("Sub", [n + "sum", n + "offset"], [n + "acc"]),
        helper.make_node("Cast", [n + "acc"], [n + "acc_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [n + "acc_float", n + "multiplier"], [n + "scaled"]),
        helper.make_node(
            "QuantizeLinear",
            [
                n + "scaled",
                c(n + "one", np.array(1.0, np.float32)),
                c(n + "out_zero", _zero(constants, zy, TensorProto.UINT8).reshape(())),
            ],
            [node.output[0]],
        ),
    ]
    return nodes


_BUILDERS = {
    "QLinearSoftmax": _qlinear_softmax,
    "QLinearGlobalAveragePool": _qlinear_global_average_pool,
    "QGemm": _qgemm,
    "QLinearConv": _qlinear_conv,
    "QLinearMatMul": _qlinear_matmul,
    "MatMulIntegerToFloat": _matmul_to_float,
    "QLinearAdd": _qlinear_add,
    "QLinearMul": _qlinear_mul,
}


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Nodes that something downstream (or a graph output) still reads."""
    needed = set(outputs)
    for node in nodes:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                needed |= _subgraph_reads(attribute.g)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(name in needed for name in node.output if name):
            kept.append(node)
            needed.update(name for name in node.input if name)
    return kept[::-1]


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    reads = set()
    for node in graph.node:
        reads.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                reads |= _subgraph_reads(attribute.g)
    return reads
