"""Control flow at import: ``If`` on a constant condition becomes its branch; the rest is checked.

Exporters emit ``If`` for Python branches on values that are constant once the weights are
known (a flag, a shape fixed at export). Inlined, the branch is ordinary graph that the engine
quantizes. An ``If``/``Loop``/``Scan`` left on a runtime value keeps its subgraphs, which the
quantizer does not enter: a model whose quantizable work sits there is refused with that reason,
since a QDQ model with no Q/DQ where the work is would be a silent failure (ONNX Runtime's own
quantizer makes exactly that mistake).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qaas_engine.errors import UnsupportedOpError
from qaas_engine.weights_apart import inferred_skeleton

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
        for sub in _subgraphs(copy):  # a nested body may read the renamed names
            _rename_outer_reads(sub, rename)
        if copy.name:
            copy.name = prefix + copy.name
        nodes.append(copy)
    for value, output in zip(branch.output, node.output, strict=True):
        source = rename.get(value.name, value.name)
        nodes.append(
            onnx.helper.make_node("Identity", [source], [output], name=f"{prefix}{output}")
        )
    return nodes


def _rename_outer_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename the enclosing-scope names a subgraph reads, where it does not define its own."""
    local = {i.name for i in graph.input} | {init.name for init in graph.initializer}
    local.update(out for node in graph.node for out in node.output)
    outer = {old: new for old, new in rename.items() if old not in local and old != new}
    if not outer:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = outer.get(name, name)
        for sub in _subgraphs(node):
            _rename_outer_reads(sub, outer)
    for value in graph.output:
        value.name = outer.get(value.name, value.name)


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


def refuse_work_in_subgraphs(model: onnx.ModelProto, *, allow_fixable: bool = False) -> list[str]:
    """A control-flow node left in the graph may hold only float glue, never quantizable work.

    With ``allow_fixable``, a node decided only by single-value inputs (a sample rate) passes,
    since ``--fix-input`` can resolve it; the names of those inputs are returned (an upload is
    checked so, and a job on it must fix them)."""
    fixable: list[str] = []
    for node in model.graph.node:
        if node.op_type not in CONTROL_FLOW_OPS:
            continue
        work = sorted(_subgraph_ops(node) & QUANTIZABLE_WORK_OPS)
        if work:
            read = _inputs_read(model.graph, node) if node.op_type != "Scan" else []
            single = bool(read) and all(_single_value(model.graph, n) for n in read)
            if allow_fixable and single:
                fixable += [name for name in read if name not in fixable]
                continue
            fix = (
                f"; it is decided by input {', '.join(read)}: where that is constant in "
                f"deployment, --fix-input {read[0]}=VALUE (job field fixed_inputs) takes the "
                "branch"
                if single
                else ""
            )
            raise UnsupportedOpError(
                node.op_type,
                node.name or "<unnamed>",
                f"its subgraphs hold {', '.join(work)} on a condition or trip count known only "
                "at run time; qaas does not quantize inside control flow: export the model with "
                f"the branch resolved (e.g. torch.onnx.export of the traced path){fix}",
            )
    return fixable


def _single_value(graph: onnx.GraphProto, name: str) -> bool:
    """Whether input ``name`` holds one value (a scalar or a shape of ones), as fixable ones do."""
    value = next(v for v in graph.input if v.name == name)
    dims = value.type.tensor_type.shape.dim
    return all(d.HasField("dim_value") and d.dim_value == 1 for d in dims)


def _inputs_read(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[str]:
    """The graph inputs a control-flow node's condition (or trip count) is computed from."""
    producers = {out: n for n in graph.node for out in n.output if out}
    inputs = {value.name for value in graph.input}
    found: list[str] = []
    seen: set[str] = set()
    stack = [name for name in node.input[:2] if name]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.append(name)
        elif (producer := producers.get(name)) is not None:
            stack.extend(i for i in producer.input if i)
    return sorted(found)


def _subgraph_ops(node: onnx.NodeProto) -> set[str]:
    ops: set[str] = set()
    for sub in _subgraphs(node):
        for inner in sub.node:
            ops.add(inner.op_type)
            ops |= _subgraph_ops(inner)
    return ops


def fold_static_shape_conditions(model: onnx.ModelProto) -> int:
    """Turn into constants the ``Shape`` reads that decide an ``If`` and whose dims are static.

    Exporters branch on a tensor's shape (``if state.size(0)``, ``if x.dim(1) == 1``); where
    the dims read are fixed by the model's declared shapes, the condition is a constant in
    disguise, and :func:`inline_constant_ifs` can then take the branch. Only the cones of
    ``If`` conditions are touched, and only dims shape inference proves static, so the
    model computes exactly what it did. Returns how many Shape reads became constants.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output if out}
    cone = _condition_cone(graph, producers)
    shape_nodes = [node for node in cone if node.op_type == "Shape" and node.input]
    if not shape_nodes:
        return 0
    dims = _inferred_dims(model)
    outputs = {o.name for o in graph.output}
    constants: dict[str, np.ndarray] = {}
    for node in shape_nodes:
        known = dims.get(node.input[0])
        if known is None:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(known))
        picked = known[slice(start, end)]
        if all(d is not None for d in picked) and node.output[0] not in outputs:
            constants[node.output[0]] = np.array(picked, dtype=np.int64)
            continue
        for gather in cone:  # a static dim read out of a partly dynamic shape
            if gather.op_type != "Gather" or gather.input[0] != node.output[0]:
                continue
            index = _constant_int(graph, gather.input[1])
            if index is None or gather.output[0] in outputs:
                continue
            values = [known[slice(start, end)][i] for i in np.ravel(index)]
            if all(v is not None for v in values):
                constants[gather.output[0]] = np.array(values, np.int64).reshape(index.shape)
    if not constants:
        return 0
    kept = [node for node in graph.node if not any(o in constants for o in node.output)]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in constants.items())
    return len(constants)


def _condition_cone(
    graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto]
) -> list[onnx.NodeProto]:
    """The nodes an ``If`` condition of the top-level graph is computed from."""
    seen: dict[int, onnx.NodeProto] = {}
    stack = [node.input[0] for node in graph.node if node.op_type == "If" and node.input]
    while stack:
        producer = producers.get(stack.pop())
        if producer is None or id(producer) in seen:
            continue
        seen[id(producer)] = producer
        stack.extend(name for name in producer.input if name)
    return list(seen.values())


def _inferred_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each annotated tensor's dims, None where shape inference leaves one symbolic."""
    inferred = inferred_skeleton(model, strict_mode=False, data_prop=True).graph
    dims: dict[str, list[int | None]] = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
            ]
    for init in model.graph.initializer:
        dims[init.name] = list(init.dims)
    return dims


def _constant_int(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).astype(np.int64)
    return None
