"""ONNX's reference implementation (``onnx.reference``) as the executor's fallback kernel.

Some default-domain ops have no sensible torch kernel (string processing, FFTs, NMS, image
decoding, quantized matmuls) and some values torch cannot hold (float8, 4-bit types, sequences of
them). Rather than refuse a whole model, such a node runs in numpy through the reference
implementation: its values are right, but no gradient flows through it, so it stays float.

Left here on purpose, not written in torch: training-only ops (the loss ops, ``Dropout`` and
``BatchNormalization`` in training mode: random or batch-dependent, nothing to quantize at
inference), string ops (no tensors to quantize), random ops, ``SequenceMap``, detection
post-processing (``NonMaxSuppression``, ``RoiAlign``) and ops that are already quantized.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx.reference import ReferenceEvaluator

from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.dtypes import to_declared, to_torch


def _declared_elem_type(value_type: onnx.TypeProto | None) -> int:
    if value_type is None or not value_type.HasField("tensor_type"):
        return 0
    return value_type.tensor_type.elem_type


class ReferenceKernel:
    """One node wrapped in a one-node model (so the model's opset applies), run by numpy."""

    def __init__(
        self, node: onnx.NodeProto, name: str, opset: int, types: dict[str, onnx.TypeProto]
    ) -> None:
        self.op_type, self.name = node.op_type, name
        self.input_names = list(node.input)
        self.input_types = [_declared_elem_type(types.get(name)) for name in node.input]
        inputs = [
            onnx.helper.make_value_info(name, types.get(name, onnx.TypeProto()))
            for name in dict.fromkeys(n for n in node.input if n)
        ]
        outputs = [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in node.output]
        graph = onnx.helper.make_graph([node], "fallback", inputs, [o for o in outputs if o.name])
        model = onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=10
        )
        try:
            self.evaluator = ReferenceEvaluator(model)
        except Exception as error:  # onnx raises many unrelated types for a node it cannot run
            raise self._refusal(error) from None
        self.output_names = list(node.output)  # positions matter: '' marks one not requested

    def run(self, args: list[Any]) -> list[Any]:
        """Torch inputs in, torch outputs out (numpy where torch cannot hold the type)."""
        feeds = {}
        for name, value, elem_type in zip(self.input_names, args, self.input_types, strict=False):
            if name:
                feeds[name] = to_declared(value, elem_type) if value is not None else None
        requested = [name for name in self.output_names if name]
        try:
            computed = self.evaluator.run(None, feeds)
        except Exception as error:  # as above: a user-facing refusal, not an internal error
            raise self._refusal(error) from None
        results = dict(zip(requested, computed, strict=True))
        return [to_torch(results[name]) if name else None for name in self.output_names]

    def _refusal(self, error: Exception) -> UnsupportedOpError:
        lines = str(error).strip().splitlines()
        cause = lines[0][:200] if lines else type(error).__name__
        return UnsupportedOpError(self.op_type, self.name, f"onnx.reference failed: {cause}")
