"""Control flow at import: ``If`` on a constant condition becomes its branch; the rest is checked.

Exporters emit ``If`` for Python branches on values that are constant once the weights are
known (a flag, a shape fixed at export). Inlined, the branch is ordinary graph that the engine
quantizes. An ``If``/``Loop``/``Scan`` left on a runtime value keeps its subgraphs, which the
quantizer does not enter: a model whose quantizable work sits there is refused with that reason,
since a QDQ model with no Q/DQ where the work is would be a silent failure (ONNX Runtime's own
quantizer makes exactly that mistake).
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from qaas_engine.errors import UnsupportedOpError

CONTROL_FLOW_OPS = {"If", "Loop", "Scan"}
# Ops whose weights the quantizer would quantize: work that must not hide inside a subgraph.
QUANTIZABLE_WORK_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN"}


def inline_constant_ifs(model: onnx.ModelProto) -> int:
    """Replace each top-level ``If`` whose condition is an initializer by the taken branch."""
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    taken_names = _all_names(graph)
    nodes: list[onnx.NodeProto] = []
    inlined = 0
    for index, node in enumerate(graph.node):
        condition = node.input[0] if node.op_type == "If" and node.input else ""
        if condition not in constants or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        taken = bool(numpy_helper.to_array(constants[condition]).reshape(-1)[0])
        branch_name = "then_branch" if taken else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == branch_name)
        prefix = f"{node.name or f'If_{index}'}/"
        nodes.extend(_branch_nodes(graph, branch, node, prefix, taken_names))
        inlined += 1
    if inlined:
        del graph.node[:]
        graph.node.extend(nodes)
    return inlined


def _branch_nodes(
    graph: onnx.GraphProto,
    branch: onnx.GraphProto,
    node: onnx.NodeProto,
    prefix: str,
    taken_names: set[str],
) -> list[onnx.NodeProto]:
    """The branch's nodes and initializers moved into ``graph``, local names made unique, its
    outputs bound to the ``If`` node's outputs by Identity nodes."""
    local = {init.name for init in branch.initializer}
    local.update(out for inner in branch.node for out in inner.output if out)
    rename = {name: prefix + name if name in taken_names else name for name in local}
    taken_names.update(rename.values())
    for init in branch.initializer:
        moved = onnx.TensorProto()
        moved.CopyFrom(init)
        moved.name = rename[init.name]
        graph.initializer.append(moved)
    nodes = []
    for inner in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        for i, name in enumerate(copy.input):
            copy.input[i] = rename.get(name, name)
        for i, name in enumerate(copy.output):
            copy.output[i] = rename.get(name, name)
        if copy.name:
            copy.name = prefix + copy.name
        nodes.append(copy)
    for value, output in zip(branch.output, node.output, strict=True):
        source = rename.get(value.name, value.name)
        nodes.append(
            onnx.helper.make_node("Identity", [source], [output], name=f"{prefix}{output}")
        )
    return nodes


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        for sub in _subgraphs(node):
            names |= _all_names(sub)
    return names


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a node reads, inside subgraphs too (they may read outer-scope constants)."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(name for name in node.input if name)
        for sub in _subgraphs(node):
            used |= used_names(sub)
    return used


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        graphs.extend([attr.g] if attr.HasField("g") else attr.graphs)
    return graphs


def refuse_work_in_subgraphs(model: onnx.ModelProto) -> None:
    """A control-flow node left in the graph may hold only float glue, never quantizable work."""
    for node in model.graph.node:
        if node.op_type not in CONTROL_FLOW_OPS:
            continue
        work = sorted(_subgraph_ops(node) & QUANTIZABLE_WORK_OPS)
        if work:
            raise UnsupportedOpError(
                node.op_type,
                node.name or "<unnamed>",
                f"its subgraphs hold {', '.join(work)} on a condition or trip count known only "
                "at run time; qaas does not quantize inside control flow: export the model with "
                "the branch resolved (e.g. torch.onnx.export of the traced path)",
            )


def _subgraph_ops(node: onnx.NodeProto) -> set[str]:
    ops: set[str] = set()
    for sub in _subgraphs(node):
        for inner in sub.node:
            ops.add(inner.op_type)
            ops |= _subgraph_ops(inner)
    return ops
