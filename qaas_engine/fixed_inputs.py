"""Inputs the user says never change where the model is deployed (``--fix-input sr=16000``).

Models exported from code that branches on a plain argument (silero-vad's sample rate) carry an
``If`` on a graph input; the quantizer cannot enter it, and only the user knows which branch is
deployed. A fixed input is computed as a constant at import, so the branch is taken like any
other constant ``If``; the calibration data may still hold the input, but only with that value;
the exported model declares the input again, optional (an initializer of the same name gives
its value), so callers that feed it keep working.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qaas_engine.errors import DataError, ModelImportError

FixedInputs = dict[str, tuple[onnx.ValueInfoProto, onnx.TensorProto]]


def fix_inputs(model: onnx.ModelProto, values: Mapping[str, float]) -> FixedInputs:
    """Replace each named graph input by a constant of its declared type and shape."""
    graph = model.graph
    declared = {value.name: value for value in graph.input}
    initializers = {init.name for init in graph.initializer}
    fixed: FixedInputs = {}
    for name, value in values.items():
        info = declared.get(name)
        if info is None or name in initializers:
            inputs = ", ".join(v.name for v in graph.input if v.name not in initializers)
            raise ModelImportError(f"fixed input '{name}' is not an input of the model ({inputs})")
        tensor_type = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if any(d != 1 for d in dims):
            raise ModelImportError(
                f"fixed input '{name}' has shape {_shape_text(dims)}; only a single value "
                "(a scalar or a shape of ones) can be fixed"
            )
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        array = np.full([d or 1 for d in dims], value).astype(dtype)
        if array.item() != value:
            raise ModelImportError(
                f"fixed input '{name}' is {np.dtype(dtype).name}: {value} is not one of its values"
            )
        constant = numpy_helper.from_array(array, name)
        saved = onnx.ValueInfoProto()
        saved.CopyFrom(info)
        fixed[name] = (saved, constant)
    if fixed:
        kept = [value for value in graph.input if value.name not in fixed]
        del graph.input[:]
        graph.input.extend(kept)
        graph.initializer.extend(constant for _, constant in fixed.values())
    return fixed


def redeclare_fixed_inputs(model: onnx.ModelProto, fixed: FixedInputs) -> None:
    """Declare the fixed inputs again, each with its value as the default, so feeds that name
    them still run (ONNX reads an initializer named like an input as that input's default)."""
    declared = {value.name for value in model.graph.input}
    present = {init.name for init in model.graph.initializer}
    for name, (info, constant) in fixed.items():
        if name not in declared:
            model.graph.input.append(info)
        if name not in present:
            model.graph.initializer.append(constant)


def drop_fixed_arrays(
    raw: dict[str, np.ndarray], fixed: Mapping[str, float], *, role: str, source: str
) -> None:
    """Take the fixed inputs' arrays out of a dataset, refusing any other value."""
    for name, value in fixed.items():
        if name not in raw:
            continue
        array = raw.pop(name)
        if array.size == 0 or not np.all(array == value):
            seen = ", ".join(str(v) for v in np.unique(array)[:5])
            raise DataError(
                f"{role} file {source}: input '{name}' is fixed at {value}, but the data holds "
                f"{seen}; the quantized model computes only the {name}={value} branch, so "
                f"calibrate with {name}={value} or leave the array out"
            )


def _shape_text(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
