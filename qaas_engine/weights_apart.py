"""A model's graph with its large weights kept apart: what the checker, shape inference and ONNX
Runtime get instead of a whole copy of a large model.

Each of those tools takes a model by serializing it (the checker, shape inference) or by parsing
bytes into its own copy (ONNX Runtime), so a 340 MB model cost 340 MB more per call, twice for
shape inference, whose answer is a whole new model. None of them needs the values of large
float weights (shape inference reads only small integer tensors; the checker's test of a
tensor is the tensor alone), and ONNX Runtime reads them as well from a file. So the tools get
a *skeleton*: the graph, with each large initializer replaced by a stub of the same name, type
and shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import TensorProto, numpy_helper

# Initializers at least this large are kept apart (ONNX Runtime's own threshold for the weights
# it writes apart when saving a model).
APART_MIN_BYTES = 1024
# Float types: shape inference never reads their values (data propagation follows integer
# shape tensors only), so their stubs carry no data at all.
FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
)
STUB_LOCATION = "qaas-weight-kept-apart"
SUBGRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
FILE_ALIGNMENT = 4096  # each tensor starts on a page: ONNX Runtime may map it


def _copy_fields(source: onnx.ModelProto | onnx.GraphProto, target: object, skip: str) -> None:
    """Copy every set field of ``source`` but ``skip`` into ``target`` (same message type)."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if descriptor.is_repeated:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def tensor_bytes(tensor: TensorProto) -> int:
    """The bytes a tensor's values take: elements times element size, read from its type and
    shape. protobuf's upb ``ByteSize`` encodes the message to measure it (about 2 ms for a 1 MB
    weight), and sessions ask this of every initializer: 13.5 M parameters cost 0.1 s a
    session that way."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):  # a type numpy has no counterpart for
        return tensor.ByteSize()
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_bytes(size: int) -> int:
    """A length-delimited field of ``size`` bytes whose number is under 16 (tag, length, body)."""
    return 1 + _varint_bytes(size) + size


def serialized_bytes(model: onnx.ModelProto) -> int:
    """``model.ByteSize()``, counted a tensor at a time: upb's ``ByteSize`` encodes the message
    to measure it, a whole model's worth of memory for a 340 MB model."""
    if not model.graph.initializer:
        return model.ByteSize()
    bare = without_initializers(model)
    graph_before = bare.graph.ByteSize()
    # GraphProto.initializer is field 5, ModelProto.graph field 7: one-byte tags
    graph = graph_before + sum(_field_bytes(t.ByteSize()) for t in model.graph.initializer)
    return bare.ByteSize() - _field_bytes(graph_before) + _field_bytes(graph)


def large_initializers(
    model: onnx.ModelProto, min_bytes: int = APART_MIN_BYTES, floats_only: bool = False
) -> Iterator[TensorProto]:
    """The main graph's initializers worth keeping apart (never strings, never external ones)."""
    for tensor in model.graph.initializer:
        if (
            tensor.data_type != TensorProto.STRING
            and tensor.data_location != TensorProto.EXTERNAL
            and (not floats_only or tensor.data_type in FLOAT_TYPES)
            and tensor_bytes(tensor) >= min_bytes
        ):
            yield tensor


def apart_bytes(model: onnx.ModelProto, min_bytes: int = APART_MIN_BYTES) -> int:
    """Bytes a skeleton would leave out (from types and shapes: nothing is encoded)."""
    return sum(tensor_bytes(tensor) for tensor in large_initializers(model, min_bytes))


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with no main-graph initializer: what a rewrite that makes its own
    weights copies, not a whole model's worth it then throws away."""
    result = onnx.ModelProto()
    _copy_fields(model, result, skip="graph")
    _copy_fields(model.graph, result.graph, skip="initializer")
    return result


def skeleton(model: onnx.ModelProto, stub: dict[str, TensorProto]) -> onnx.ModelProto:
    """``model`` with each initializer named in ``stub`` replaced by its stub; the rest copied."""
    result = without_initializers(model)
    result.graph.initializer.extend(
        stub.get(tensor.name, tensor) for tensor in model.graph.initializer
    )
    return result


def _shape_stub(tensor: TensorProto) -> TensorProto:
    """Name, type and shape; the data said to lie elsewhere (shape inference never looks)."""
    stub = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    stub.data_location = TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", STUB_LOCATION
    return stub


def check_model_apart(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model`` without serializing the large weights with the graph: each
    is checked alone (its data fields against its type and shape), the graph with empty
    stand-ins in their place. Raises ``onnx.checker.ValidationError`` as the checker does."""
    stubs = {}
    for tensor in large_initializers(model):
        onnx.checker.check_tensor(tensor)
        stubs[tensor.name] = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=[0])
    onnx.checker.check_model(skeleton(model, stubs) if stubs else model)


def inferred_skeleton(model: onnx.ModelProto, **options: bool) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes(model, **options)`` with stubs for the large float
    weights: every annotation it makes, none of those weights' values."""
    stubs = {t.name: _shape_stub(t) for t in large_initializers(model, floats_only=True)}
    return onnx.shape_inference.infer_shapes(skeleton(model, stubs) if stubs else model, **options)


def infer_shapes_apart(model: onnx.ModelProto, **options: bool) -> onnx.ModelProto:
    """``model`` annotated, in place, as ``onnx.shape_inference.infer_shapes(model, **options)``
    would return it: inference runs on a skeleton (:func:`inferred_skeleton`), and its answer
    (value_info, graph input and output types, subgraph annotations) is carried back."""
    inferred = inferred_skeleton(model, **options)
    graph, answer = model.graph, inferred.graph
    for field in ("input", "output", "value_info"):
        del getattr(graph, field)[:]
        getattr(graph, field).extend(getattr(answer, field))
    for index, node in enumerate(answer.node):
        if any(a.type in SUBGRAPH_ATTRIBUTES for a in node.attribute):
            graph.node[index].CopyFrom(node)  # subgraph bodies get their own value_info
    return model


def write_apart(
    model: onnx.ModelProto,
    folder: Path,
    min_bytes: int = APART_MIN_BYTES,
    extra_outputs: Sequence[str] = (),
) -> Path:
    """``model`` saved in ``folder`` as ``model.onnx`` with its large initializers in
    ``weights.bin`` beside it (ONNX external data): for ONNX Runtime to read from the file,
    not from a serialized copy of the whole model. ``extra_outputs`` are added, untyped, to the
    saved graph's outputs."""
    stubs = {}
    with (folder / "weights.bin").open("wb") as weights:
        for tensor in large_initializers(model, min_bytes):
            offset = weights.tell()
            padding = -offset % FILE_ALIGNMENT
            weights.write(b"\0" * padding)
            offset += padding
            data = (
                tensor.raw_data
                if tensor.HasField("raw_data")
                else np.ascontiguousarray(numpy_helper.to_array(tensor)).tobytes()
            )
            weights.write(data)
            stub = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            stub.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", "weights.bin"),
                ("offset", offset),
                ("length", len(data)),
            ):
                entry = stub.external_data.add()
                entry.key, entry.value = key, str(value)
            stubs[tensor.name] = stub
            del data
    saved = skeleton(model, stubs)
    saved.graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra_outputs)
    path = folder / "model.onnx"
    path.write_bytes(saved.SerializeToString())
    return path
