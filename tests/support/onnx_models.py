"""Small hand-built ONNX graphs shared by the engine tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize


def conv_chain_model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    name: str,
    opset: int = 17,
) -> onnx.ModelProto:
    """``nodes`` from input ``x`` to output ``y``, both [n, 4, 8, 8]: the shape the hand-built
    conv chains of the rewrite and scaled-grid tests take and give."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def quantize_on_noise(
    folder: Path,
    model: onnx.ModelProto,
    spec: QuantSpec | None = None,
    shape: tuple[int, ...] = (16, 4, 8, 8),
) -> Any:
    """``model`` (one input ``x``) saved in ``folder`` and quantized on seeded normal noise of
    ``shape`` as calibration data: the whole job, as the export tests check it."""
    path = folder / "model.onnx"
    onnx.save(model, path)
    data = folder / "calibration.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal(shape, np.float32))
    imported = import_model(path)
    calibration = load_npz(data, model_inputs(imported.model))
    return quantize(imported, spec or QuantSpec(), calibration=calibration)
