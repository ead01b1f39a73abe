"""What the upload checker runs on an untrusted upload, always in a confined child process
(``app.core.inspector``), never in the API process: tiny ONNX files can exhaust memory or time
in shape inference, and a crash there must cost one child process, not the API."""

from __future__ import annotations

from typing import Any


def _inputs_meta(imported: Any) -> list[dict[str, Any]]:
    from qaas_engine import model_inputs

    deciding = set(imported.deciding_inputs)
    return [
        {"name": spec.name, "dtype": spec.dtype.name, "shape": list(spec.shape)}
        | ({"decides_control_flow": True} if spec.name in deciding else {})
        for spec in model_inputs(imported.model)
    ]


def inspect_model(
    path: str, converted_path: str, max_tensor_elements: int, list_external_data: bool = False
) -> dict[str, Any]:
    """Engine import checks; a ``.pt2`` archive is converted to ONNX here, once. With
    ``list_external_data``, also the external-data locations the model's tensors name."""
    import onnx

    from qaas_engine import QaasInputError, import_model

    try:
        # a branch on a sample rate is accepted here; the job must fix that input
        imported = import_model(path, refuse_control_flow=False)
    except QaasInputError as error:
        return {"error": str(error)}
    onnx_upload = imported.source_format == "onnx"
    locations = _external_locations(path) if list_external_data and onnx_upload else []
    oversized = _oversized_tensor(imported.model, max_tensor_elements)
    if oversized:
        return {"error": oversized}
    converted = None
    if imported.source_format != "onnx":
        onnx.save(imported.model, converted_path)
        converted = converted_path
    return {
        "source_format": imported.source_format,
        "opset": imported.original_opset,
        "inputs": _inputs_meta(imported),
        "notes": list(imported.notes),
        "converted_path": converted,
        "external_data": locations,
    }


def _external_locations(path: str) -> list[str]:
    """Where an ONNX file's tensors keep their data (read without loading it)."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load_model(path, load_external_data=False)
    return sorted(
        {
            external_data_helper.ExternalDataInfo(tensor).location
            for tensor in external_data_helper._get_all_tensors(model)
            if external_data_helper.uses_external_data(tensor)
        }
    )


def _oversized_tensor(model: Any, max_elements: int) -> str | None:
    """The first tensor whose inferred static shape is too large to ever compute, described."""
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        sizes = [d.dim_value for d in dims if d.HasField("dim_value")]
        elements = 1
        for size in sizes:
            elements *= size
        if sizes and elements > max_elements:
            return (
                f"tensor '{value.name}' would hold {elements} elements (shape {sizes}), more "
                f"than the limit of {max_elements}; the model declares dimensions too large to "
                "run (a shape-inference bomb or a wrong export)"
            )
    return None


def inspect_dataset(path: str, max_expanded_bytes: int) -> dict[str, Any]:
    """An ``.npz`` of plain numeric arrays, from its headers only (never expanded, never
    unpickled): names, shapes, dtypes and the bytes it expands to."""
    from qaas_engine import QaasInputError
    from qaas_engine.npz import scan_npz

    try:
        members = scan_npz(path, max_expanded_bytes=max_expanded_bytes, shown_as="the archive")
    except QaasInputError as error:
        return {"error": str(error)}
    arrays = {}
    for member in members:
        if not member.shape:
            return {"error": f"array '{member.key}' is not a numeric array with a sample axis"}
        arrays[member.key] = {"shape": list(member.shape), "dtype": member.dtype.name}
    return {"arrays": arrays, "expanded_bytes": sum(m.expanded_bytes for m in members)}


def check_dataset_fits(
    path: str,
    inputs: list[dict[str, Any]],
    role: str,
    max_expanded_bytes: int | None = None,
    fixed: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The engine's own data checks against a model's recorded inputs; a ``fixed`` input
    may be absent, or present with its fixed value only."""
    import numpy as np

    from qaas_engine import QaasInputError, load_npz
    from qaas_engine.data import InputSpec

    fixed = fixed or {}
    specs = [
        InputSpec(item["name"], np.dtype(item["dtype"]), tuple(item["shape"]))
        for item in inputs
        if item["name"] not in fixed
    ]
    try:
        dataset = load_npz(
            path, specs, role=role, max_expanded_bytes=max_expanded_bytes, fixed=fixed
        )
    except QaasInputError as error:
        return {"error": str(error)}
    return {"num_samples": dataset.num_samples, "labels": dataset.labels is not None}
