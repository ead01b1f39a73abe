"""Model import: bytes on disk in, a checked ONNX graph the engine can compute out.

Uploads are untrusted. Nothing here unpickles, follows a path outside the upload's folder, or
trusts a declared structure without checking it; every refusal says what is wrong and where.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from qaas_engine.control_flow import (
    CONTROL_FLOW_OPS,
    fold_static_shape_conditions,
    inline_constant_ifs,
    refuse_work_in_subgraphs,
    used_names,
)
from qaas_engine.errors import ModelImportError, UnsupportedOpError
from qaas_engine.fixed_inputs import fix_inputs
from qaas_engine.graph.kernels import TORCH_KERNEL_OPS, default_opset, unsupported_nodes
from qaas_engine.sessions import session
from qaas_engine.weights_apart import check_model_apart, infer_shapes_apart, inferred_skeleton

MIN_OPSET = 13  # per-channel DequantizeLinear (its axis attribute) needs 13
ALREADY_QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QGemm",
}
PICKLE_PREFIXES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass
class ImportedModel:
    model: onnx.ModelProto
    source_format: str  # "onnx" or "pt2"
    original_opset: int
    notes: list[str] = field(default_factory=list)
    # inputs fixed by the spec (``fixed_inputs``): their declarations, and the constants that
    # replaced them, for the exported model to declare again as optional inputs
    fixed_inputs: dict[str, tuple[onnx.ValueInfoProto, onnx.TensorProto]] = field(
        default_factory=dict
    )
    # inputs that decide a branch holding quantizable work: a job must fix them (imported with
    # ``refuse_control_flow=False`` only, as an upload is checked)
    deciding_inputs: list[str] = field(default_factory=list)


def import_model(
    path: str | os.PathLike[str],
    fixed_inputs: Mapping[str, float] | None = None,
    *,
    refuse_control_flow: bool = True,
) -> ImportedModel:
    """Read an ONNX file or a torch.export archive and return a checked ONNX graph;
    ``fixed_inputs`` (name -> value) become constants before anything is folded. Without
    ``refuse_control_flow``, a branch on single-value inputs holding work is accepted and those
    inputs listed (``deciding_inputs``): what an upload check needs before any job fixes them."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"model file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(PICKLE_PREFIXES):
        raise ModelImportError(
            f"{path.name} is a Python pickle, not a model; qaas never unpickles uploads "
            "(save with torch.export.save or export to ONNX)"
        )
    if head.startswith(b"PK"):
        from qaas_engine.pt2 import convert_pt2

        model, base_dir, source_format = convert_pt2(path), None, "pt2"
    else:
        model, base_dir, source_format = (
            parse_onnx_bytes(path.read_bytes(), path.name),
            path.parent,
            "onnx",
        )
    return prepare_onnx(
        model,
        base_dir=base_dir,
        source_format=source_format,
        fixed_inputs=fixed_inputs,
        refuse_control_flow=refuse_control_flow,
    )


def parse_onnx_bytes(data: bytes, name: str = "model") -> onnx.ModelProto:
    if not data:
        raise ModelImportError(f"{name} is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as error:
        raise ModelImportError(
            f"{name} is not an ONNX model or is truncated (protobuf parse failed: {error})"
        ) from None
    if model.ir_version <= 0 or not model.graph.node or not model.opset_import:
        raise ModelImportError(
            f"{name} is not an ONNX model (no IR version, opset or graph nodes); "
            "a truncated or foreign file parses like this"
        )
    return model


def prepare_onnx(
    model: onnx.ModelProto,
    *,
    base_dir: Path | None,
    source_format: str = "onnx",
    fixed_inputs: Mapping[str, float] | None = None,
    refuse_control_flow: bool = True,
) -> ImportedModel:
    """Check, load external data safely, upgrade the opset and normalise constants."""
    notes: list[str] = []
    _refuse_quantized(model)
    _load_external_data(model, base_dir)
    fixed = fix_inputs(model, fixed_inputs or {})
    notes += [
        f"input {name} fixed at {numpy_helper.to_array(value).item()} (fixed_inputs): "
        "computed as a constant; the quantized model keeps it as an optional input it does "
        "not read"
        for name, (_, value) in fixed.items()
    ]
    original_opset = default_opset(model)
    if original_opset < MIN_OPSET:
        model = _upgrade_opset(model, original_opset)
        notes.append(f"opset upgraded from {original_opset} to {MIN_OPSET}")
    moved = _constants_to_initializers(model)
    if moved:
        notes.append(f"{moved} Constant nodes turned into initializers")
    _drop_initializers_from_inputs(model)
    _raise_ir_version(model)
    materialized = _materialize_constant_fills(model)
    if materialized:
        notes.append(f"{materialized} ConstantOfShape weights materialized as initializers")
    cast_like = _cast_like_to_cast(model)
    if cast_like:
        notes.append(f"{cast_like} CastLike nodes turned into Cast (their target type is known)")
    folded = _fold_constant_nodes(model)
    inlined = shape_reads = 0
    while True:  # a taken branch may hold another If, on a constant or on a static shape
        if read := fold_static_shape_conditions(model):
            shape_reads += read
            folded += _fold_constant_nodes(model)
        branches = inline_constant_ifs(model)
        if not branches:
            break
        inlined += branches
        _constants_to_initializers(model)
        folded += _fold_constant_nodes(model)
    if inlined:
        _drop_unused_initializers(model)
    if folded:
        notes.append(f"{folded} nodes computed from constants only were folded into initializers")
    if shape_reads:
        notes.append(f"{shape_reads} Shape reads of static dims that decide an If made constants")
    if inlined:
        notes.append(f"{inlined} If nodes on a constant condition replaced by their taken branch")
    deciding = refuse_work_in_subgraphs(model, allow_fixable=not refuse_control_flow)
    if deciding:
        notes.append(
            f"input(s) {', '.join(deciding)} decide a branch that holds quantizable work: a job "
            f"must fix them (fixed_inputs, --fix-input {deciding[0]}=VALUE)"
        )
    try:
        check_model_apart(model)  # the weights are not serialized with the graph
    except onnx.checker.ValidationError as error:
        raise ModelImportError(
            f"the ONNX checker rejects the model: {_first_line(error)}"
        ) from None
    try:
        model = infer_shapes_apart(model, strict_mode=True, data_prop=True)
    except Exception as error:  # onnx raises several unrelated types here
        raise ModelImportError(f"shape inference failed: {_first_line(error)}") from None
    bad = unsupported_nodes(model)
    if bad:
        node = bad[0]
        domain = f" (domain '{node.domain}')" if node.domain else ""
        reason = (
            "control flow on a value known only at run time is not computed yet; export the "
            "model with the branch resolved (e.g. torch.onnx.export of the traced path)"
            if node.op_type in CONTROL_FLOW_OPS
            else ""
        )
        raise UnsupportedOpError(node.op_type + domain, node.name or "<unnamed>", reason)
    _check_inputs(model)
    _check_declared_sizes(model)
    return ImportedModel(model, source_format, original_opset, notes, fixed, deciding)


MAX_TENSOR_ELEMENTS = 2**30


def _check_declared_sizes(model: onnx.ModelProto, limit: int = MAX_TENSOR_ELEMENTS) -> None:
    """A few bytes of ONNX can declare a tensor of 10^15 elements; refuse before computing."""
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        sizes = [d.dim_value for d in dims if d.HasField("dim_value")]
        elements = 1
        for size in sizes:
            elements *= max(size, 1)
        if elements > limit:
            raise ModelImportError(
                f"tensor '{value.name}' declares {elements:,} elements (over {limit:,}): "
                "a shape-inference bomb, not a model to compute"
            )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def _refuse_quantized(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.op_type in ALREADY_QUANTIZED_OPS:
            raise ModelImportError(
                f"the model is already quantized (node '{node.name}' is {node.op_type}); "
                "upload the float model"
            )


def _load_external_data(model: onnx.ModelProto, base_dir: Path | None) -> None:
    """Resolve external-data locations only inside ``base_dir`` (no absolute, '..', symlinks)."""
    tensors = [
        t
        for t in external_data_helper._get_all_tensors(model)
        if external_data_helper.uses_external_data(t)
    ]
    if not tensors:
        return
    if base_dir is None:
        raise ModelImportError("the model references external data but none was provided")
    root = base_dir.resolve()
    for tensor in tensors:
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        target = (root / location).resolve()
        if (
            os.path.isabs(location)
            or ".." in Path(location).parts
            or not target.is_relative_to(root)
        ):
            raise ModelImportError(
                f"initializer '{tensor.name}' points at external data '{location}' outside the "
                "upload; only files uploaded alongside the model are read"
            )
        if (root / location).is_symlink():
            raise ModelImportError(
                f"initializer '{tensor.name}': external data '{location}' is a symlink"
            )
        if not target.is_file():
            raise ModelImportError(
                f"initializer '{tensor.name}': external data file '{location}' is missing; "
                "upload it alongside the model"
            )
        size = target.stat().st_size
        if info.offset is not None and info.length is not None and info.offset + info.length > size:
            raise ModelImportError(
                f"initializer '{tensor.name}': external data '{location}' is truncated"
            )
    external_data_helper.load_external_data_for_model(model, str(root))


def _upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as error:
        raise ModelImportError(
            f"could not upgrade the model from opset {opset} to {MIN_OPSET}: {_first_line(error)}"
        ) from None


def _constants_to_initializers(model: onnx.ModelProto) -> int:
    """Paddle and others keep weights in Constant nodes; weights must be initializers."""
    kept, moved = [], 0
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.output:
            attr = node.attribute[0]
            array = None
            if attr.name == "value":
                array = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                import numpy as np

                value = onnx.helper.get_attribute_value(attr)
                dtype = np.float32 if "float" in attr.name else np.int64
                array = np.asarray(value, dtype=dtype)
            if array is not None:
                model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
                moved += 1
                continue
        kept.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return moved


# Ops whose output size is set by a value rather than an input size: never folded blindly.
_SIZE_GENERATING = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad"}


def _fold_constant_nodes(model: onnx.ModelProto) -> int:
    """Evaluate nodes whose inputs are all constants (an exporter's Unsqueeze of a PReLU slope,
    an Identity of a shared weight), so weights and slopes are initializers as algorithms expect.

    ONNX Runtime computes the folded values (the torch kernel where it refuses a node); from
    then on every engine reads the same initializers.
    """
    graph = model.graph
    values = {init.name: init for init in graph.initializer}
    kept, folded = [], 0
    opset = default_opset(model)
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        foldable = (
            inputs
            and all(name in values for name in inputs)
            and node.domain in ("", "ai.onnx")
            and node.op_type in TORCH_KERNEL_OPS
            and node.op_type not in _SIZE_GENERATING
            and not any(o in outputs for o in node.output)
            and not _touches_wide_unsigned(node, values)
        )
        if foldable:
            results = _evaluate_constant_node(node, values, opset)
            if results is not None:
                for name, value in zip(node.output, results, strict=False):
                    graph.initializer.append(numpy_helper.from_array(value, name))
                    values[name] = graph.initializer[-1]
                folded += 1
                continue
        kept.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unused_initializers(model)
    return folded


def _evaluate_constant_node(
    node: onnx.NodeProto, values: dict[str, onnx.TensorProto], opset: int
) -> list[np.ndarray] | None:
    """The node's outputs from its constant inputs: ONNX Runtime's (no torch to import), else
    the torch kernel's; None where both refuse (left to the runtime checks that follow) or an
    output is no tensor (sequences, optionals)."""
    names = list(dict.fromkeys(name for name in node.input if name))
    graph = onnx.helper.make_graph(
        [node],
        "fold",
        [],
        [onnx.ValueInfoProto(name=name) for name in node.output if name],
        [values[name] for name in names],
    )
    single = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    single.ir_version = min(single.ir_version, 10)  # what this ONNX Runtime reads
    try:
        results = session(single, optimized=False, threads=1).run(None, {})
    except Exception:
        return _evaluate_in_torch(node, values, opset)
    if not all(isinstance(value, np.ndarray) for value in results):
        return None
    return [np.asarray(value, order="C") for value in results]  # 0-d stays 0-d


def _evaluate_in_torch(
    node: onnx.NodeProto, values: dict[str, onnx.TensorProto], opset: int
) -> list[np.ndarray] | None:
    import torch

    import qaas_engine.graph.ops  # noqa: F401  (registers the torch kernels)
    from qaas_engine.graph.registry import NodeContext, parse_attributes, tensor_outputs

    args = [
        torch.from_numpy(np.array(numpy_helper.to_array(values[n]))) if n else None
        for n in node.input
    ]
    context = NodeContext(node.op_type, node.name, parse_attributes(node), opset, len(node.output))
    try:
        results = tensor_outputs(context, args)
    except Exception:
        return None
    if not all(isinstance(v, torch.Tensor) for v in results):
        return None
    return [value.detach().cpu().numpy() for value in results]


_WIDE_UNSIGNED = {
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
}


def _touches_wide_unsigned(node: onnx.NodeProto, values: dict[str, onnx.TensorProto]) -> bool:
    """torch computes uint16/32/64 widened (the executor wraps and restores the declared type);
    folded here, the initializer would carry the widened type, so such nodes are left to run."""
    if any(values[name].data_type in _WIDE_UNSIGNED for name in node.input if name in values):
        return True
    if node.op_type == "Cast":
        return any(a.name == "to" and a.i in _WIDE_UNSIGNED for a in node.attribute)
    return False


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Conditions of inlined ``If`` nodes and the branches not taken leave constants behind."""
    graph = model.graph
    used = used_names(graph)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _drop_initializers_from_inputs(model: onnx.ModelProto) -> None:
    """Old exporters list weights as graph inputs too; they are constants, not feeds."""
    names = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in names]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)


def _cast_like_to_cast(model: onnx.ModelProto) -> int:
    """torch's dynamo exporter (``optimize=False``) casts every Python scalar with ``CastLike``
    to the type of a runtime tensor; that type is known statically, so a plain ``Cast`` says the
    same, and a Cast of a constant folds into the initializer the algorithms expect."""
    cast_likes = [
        node
        for node in model.graph.node
        if node.op_type == "CastLike" and node.domain in ("", "ai.onnx") and len(node.input) > 1
    ]
    if not cast_likes:
        return 0
    try:
        inferred = inferred_skeleton(model)
    except Exception:  # the checks after this report a broken model with their own words
        return 0
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
        if value.type.HasField("tensor_type")
    }
    types.update({init.name: init.data_type for init in model.graph.initializer})
    replaced = 0
    for node in cast_likes:
        target = types.get(node.input[1], onnx.TensorProto.UNDEFINED)
        if target == onnx.TensorProto.UNDEFINED:
            continue
        node.op_type = "Cast"
        del node.input[1:]
        del node.attribute[:]  # CastLike's only attribute, saturate, is a float8 matter
        node.attribute.append(onnx.helper.make_attribute("to", target))
        replaced += 1
    return replaced


def _raise_ir_version(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be a graph input too; once the inputs list only feeds
    (and the opset was upgraded) the file is valid only at the IR version its opsets need."""
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(model.ir_version, needed, 4)


# Elements all ConstantOfShape weights of one model may expand to (1 GiB of float32): VGG-19
# stores its 143M weights this way; a few bytes must not declare terabytes.
MAX_MATERIALIZED_ELEMENTS = 2**28


def _materialize_constant_fills(
    model: onnx.ModelProto, budget: int = MAX_MATERIALIZED_ELEMENTS
) -> int:
    """Old model-zoo files (the onnx wheel's light nets) build weights with ``ConstantOfShape``
    of a constant shape; weights must be initializers for the algorithms to see them."""
    import numpy as np

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept, count, spent = [], 0, 0
    for node in graph.node:
        shape_name = node.input[0] if node.input else ""
        if (
            node.op_type != "ConstantOfShape"
            or node.domain not in ("", "ai.onnx")
            or shape_name not in initializers
            or node.output[0] in outputs
        ):
            kept.append(node)
            continue
        shape = [int(d) for d in numpy_helper.to_array(initializers[shape_name]).reshape(-1)]
        elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or spent + elements > budget:
            raise ModelImportError(
                f"ConstantOfShape node '{node.name or node.output[0]}' would expand to "
                f"{spent + elements:,} constant elements in all (over {budget:,}): a "
                "shape-inference bomb, not a model to compute"
            )
        spent += elements
        fill = np.zeros(1, np.float32)
        for attr in node.attribute:
            if attr.name == "value":
                fill = numpy_helper.to_array(attr.t).reshape(-1)[:1]
        graph.initializer.append(
            numpy_helper.from_array(np.full(shape, fill[0], dtype=fill.dtype), node.output[0])
        )
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unused_initializers(model)
    return count


def _check_inputs(model: onnx.ModelProto) -> None:
    if not model.graph.input:
        raise ModelImportError("the model has no inputs")
    for value in model.graph.input:
        if not value.type.HasField("tensor_type"):
            raise ModelImportError(
                f"input '{value.name}' is not a tensor (sequences/maps unsupported)"
            )
