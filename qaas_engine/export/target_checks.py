"""The exported model checked against a target's documented constraints.

We cannot run Qualcomm's HTP or NVIDIA's TensorRT here, so an export for them is read back (the
QDQ ONNX and the AIMET encodings, as the target's converter would read them) and every rule of
``qaas_engine.targets.TargetRules.constraints`` is checked. Each violation names the node or
tensor and the rule; the pipeline refuses an export that has any.
"""

from __future__ import annotations

from typing import Any

import onnx

from qaas_engine.export.checks_qnn_htp import check_qnn_htp
from qaas_engine.export.checks_tensorrt import check_tensorrt
from qaas_engine.export.qdq_readback import QdqGraph, Violation

__all__ = ["QdqGraph", "Violation", "check_export", "check_qnn_htp", "check_tensorrt"]


def check_export(target: str, model: onnx.ModelProto, encodings: dict[str, Any]) -> list[Violation]:
    """Every violation of ``target``'s documented constraints (empty: the export satisfies
    them). ``onnxruntime-cpu`` is run, not checked: nothing to report."""
    if target == "tensorrt":
        return check_tensorrt(model)
    if target == "qnn-htp":
        return check_qnn_htp(model, encodings)
    return []
